//! `cargo xtask fuzz`: runs each cargo-fuzz target under fuzz/ for a while (libFuzzer, address
//! sanitizer, nightly). Committed seeds live in fuzz/corpus/<target>; what the fuzzer finds goes
//! to target/fuzz-corpus/<target>, so the repository only changes when someone adds a seed.

use anyhow::{Context, bail};
use std::process::Command;

/// Every fuzz target.
pub const TARGETS: [&str; 7] = [
    "manifests",
    "values_names",
    "chart_path",
    "values_merge",
    "release_record",
    "chart_archive",
    "values_file",
];

pub fn run(seconds: u64, targets: &[String]) -> anyhow::Result<()> {
    let targets: Vec<String> = if targets.is_empty() {
        TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        targets.to_vec()
    };
    for target in &targets {
        if !TARGETS.contains(&target.as_str()) {
            bail!("unknown fuzz target {target:?}; the targets are {TARGETS:?}");
        }
    }
    ensure_nightly()?;
    let root = crate::root();
    for target in &targets {
        let found = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&found)?;
        let seeds = root.join("fuzz/corpus").join(target);
        let mut command = crate::tools::CARGO_FUZZ.command(Some("nightly"))?;
        command
            .args(["run", target])
            .arg(&found)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            // Bound memory and time per input: a parser that blows up on one input is a finding.
            .args(["-rss_limit_mb=2048", "-timeout=10"]);
        crate::run_step(&format!("fuzz {target} for {seconds} s"), &mut command).with_context(
            || format!("fuzz target {target}: a crash input is under fuzz/artifacts/{target}/"),
        )?;
    }
    eprintln!("==> every target ran {seconds} s without a crash");
    Ok(())
}

/// cargo-fuzz needs a nightly toolchain (sanitizer flags); install a minimal one if missing.
fn ensure_nightly() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if installed {
        return Ok(());
    }
    crate::run_step(
        "rustup toolchain install nightly",
        Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]),
    )
}
