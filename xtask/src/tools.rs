//! `cargo xtask tools`: build kube-apiserver, etcd and helm from the pinned Go modules under tools/.
//!
//! Binaries go to a cache outside the repository (see `fhr_testenv::tools`), one folder per pin,
//! written under a temporary name and renamed so that an interrupted build never looks complete.

use anyhow::{Context, bail};
use fhr_testenv::tools::{CONTROL_PLANE, HELM, ToolModule, tools_source_dir};
use std::process::Command;

pub fn run(force: bool) -> anyhow::Result<()> {
    ensure_sshd()?;
    let go = which_go()?;
    for module in [CONTROL_PLANE, HELM] {
        build_module(&go, &module, force)?;
    }
    Ok(())
}

fn which_go() -> anyhow::Result<String> {
    let go = std::env::var("GO").unwrap_or_else(|_| "go".into());
    let ok = Command::new(&go)
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        bail!(
            "`{go} version` failed: the Go toolchain is needed to build kube-apiserver, etcd and helm (set GO to its path)"
        );
    }
    Ok(go)
}

fn build_module(go: &str, module: &ToolModule, force: bool) -> anyhow::Result<()> {
    let dir = module.cache_dir();
    let complete = module
        .binaries
        .iter()
        .all(|(binary, _)| dir.join(binary).is_file());
    if complete && !force {
        eprintln!(
            "{} {} cached in {}",
            module.name,
            module.version(),
            dir.display()
        );
        return Ok(());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let source = tools_source_dir().join(module.dir);
    for (binary, package) in module.binaries {
        eprintln!(
            "building {binary} ({} {}) from the Go module proxy; a first build takes minutes",
            module.versioned_module,
            module.version()
        );
        let partial = dir.join(format!(".{binary}.partial"));
        let status = Command::new(go)
            .current_dir(&source)
            .args(["build", "-trimpath", "-o"])
            .arg(&partial)
            .arg(format!("-ldflags={}", module.ldflags()))
            .arg(package)
            // The pinned go.sum is the source of truth: never rewrite it during a build.
            .env("GOFLAGS", "-mod=readonly -buildvcs=false")
            .status()
            .with_context(|| format!("run {go} build"))?;
        if !status.success() {
            bail!("building {binary} failed ({status}); see the Go output above");
        }
        std::fs::rename(&partial, dir.join(binary))?;
    }
    eprintln!(
        "{} {} built into {}",
        module.name,
        module.version(),
        dir.display()
    );
    prune_superseded(module, &dir);
    Ok(())
}

/// Removes cache folders of earlier pins of the same module: each is over 100 MB.
fn prune_superseded(module: &ToolModule, current: &std::path::Path) {
    let Some(parent) = current.parent() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let prefix = format!("{}-v", module.name);
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path != current && name.starts_with(&prefix) {
            eprintln!("removing superseded {}", path.display());
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// The SSH tests run Debian's sshd; install it when missing (CI starts on a fresh machine).
fn ensure_sshd() -> anyhow::Result<()> {
    if std::path::Path::new(fhr_testenv::ssh_server::SSHD).is_file() {
        return Ok(());
    }
    eprintln!("installing Debian's openssh-server for the SSH git tests");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let install = [
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "openssh-server",
    ];
    let installed = apt(&install) || (apt(&["update", "-qq"]) && apt(&install));
    if !installed {
        bail!(
            "installing openssh-server with apt-get failed; install it (it provides /usr/sbin/sshd) and run again"
        );
    }
    Ok(())
}
