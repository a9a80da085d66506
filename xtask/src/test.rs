//! `cargo xtask test`: the README's test command, and what CI runs.

use std::process::Command;

pub fn run(cargo_test_args: &[String]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    crate::tools::run(false, crate::tools::TestPackages::Install)?;
    crate::run_step(
        "cargo fmt --check",
        Command::new(&cargo).args(["fmt", "--all", "--", "--check"]),
    )?;
    crate::run_step(
        "cargo clippy",
        Command::new(&cargo).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    go_checks()?;
    // Advisories need the RustSec database from the internet; see docs/security.md.
    crate::run_step(
        "cargo deny check licenses bans sources",
        crate::tools::CARGO_DENY
            .command(None)?
            .args(["check", "licenses", "bans", "sources"]),
    )?;
    eprintln!("==> cargo xtask crd --check");
    crate::crd::run(true)?;
    eprintln!("==> cargo xtask chart --check");
    crate::chart::run(true)?;
    eprintln!("==> cargo xtask docs --check");
    crate::docs::run(true)?;
    crate::run_step(
        "cargo test (unit and end-to-end)",
        Command::new(&cargo)
            .args(["test", "--workspace"])
            .args(cargo_test_args),
    )?;
    eprintln!("==> cargo xtask demo --once");
    crate::demo::run(true)?;
    Ok(())
}

/// `gofmt`, `go vet` and `go test` over the Helm engine, the repository's one Go program.
fn go_checks() -> anyhow::Result<()> {
    let engine = fhr_testenv::tools::repository_dir().join("engine");
    eprintln!("==> gofmt -l engine");
    let gofmt = Command::new("gofmt").arg("-l").arg(&engine).output()?;
    let unformatted = String::from_utf8_lossy(&gofmt.stdout);
    if !gofmt.status.success() || !unformatted.trim().is_empty() {
        anyhow::bail!("gofmt: these files need `gofmt -w`:\n{unformatted}");
    }
    let go = std::env::var("GO").unwrap_or_else(|_| "go".into());
    for check in ["vet", "test"] {
        crate::run_step(
            &format!("go {check} (engine)"),
            Command::new(&go)
                // run_step runs from the repository root; -C moves go into the engine's module.
                .arg("-C")
                .arg(&engine)
                .args([check, "./..."])
                .env("GOFLAGS", "-mod=readonly -buildvcs=false"),
        )?;
    }
    Ok(())
}
