//! `cargo xtask tools`: build kube-apiserver, etcd, the Helm engine, helm v4, helm v3 and (for
//! the tests) crane's OCI registry from the pinned Go modules under tools/ and engine/.
//!
//! Binaries go to a cache outside the repository (see `fhr_testenv::tools`), one folder per pin,
//! written under a temporary name and renamed so that an interrupted build never looks complete.

use anyhow::{Context, bail};
use fhr_testenv::tools::{CONTROL_PLANE, HELM, HELM_ENGINE, REGISTRY, ToolModule, repository_dir};
use std::process::Command;

/// Whether the Debian packages only the tests use are wanted: the SSH server for the SSH git
/// tests and buildah for the image checks (the demo and the benchmark use neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestPackages {
    /// Install them with apt-get when missing.
    Install,
    /// Leave the machine as it is.
    NotNeeded,
}

pub fn run(force: bool, packages: TestPackages) -> anyhow::Result<()> {
    if packages == TestPackages::Install {
        ensure_package(
            fhr_testenv::ssh_server::SSHD,
            "openssh-server",
            "the SSH git tests",
        )?;
        ensure_package("/usr/bin/buildah", "buildah", "the image checks")?;
    }
    let go = which_go()?;
    for module in [CONTROL_PLANE, HELM_ENGINE, HELM] {
        build_module(&go, &module, force)?;
    }
    // The OCI registry only the chart-source tests use.
    if packages == TestPackages::Install {
        build_module(&go, &REGISTRY, force)?;
    }
    Ok(())
}

pub fn which_go() -> anyhow::Result<String> {
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

/// Builds `module`'s binaries into its cache folder unless they are there (or `force`).
pub fn build_module(go: &str, module: &ToolModule, force: bool) -> anyhow::Result<()> {
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
    let source = repository_dir().join(module.dir);
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

/// Installs a Debian package the tests need when `path` is missing (CI starts on a fresh machine).
fn ensure_package(path: &str, package: &str, why: &str) -> anyhow::Result<()> {
    if std::path::Path::new(path).is_file() {
        return Ok(());
    }
    eprintln!("installing Debian's {package} for {why}");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let install = ["install", "-y", "-qq", "--no-install-recommends", package];
    let installed = apt(&install) || (apt(&["update", "-qq"]) && apt(&install));
    if !installed {
        bail!(
            "installing {package} with apt-get failed; install it (it provides {path}) and run again"
        );
    }
    Ok(())
}

/// A cargo subcommand the project's commands use, pinned and installed from crates.io into the
/// tool cache (never into the user's ~/.cargo), so CI and a fresh machine get the same one.
pub struct CargoTool {
    /// The crate (and binary) name.
    pub name: &'static str,
    /// The pinned version.
    pub version: &'static str,
}

/// `cargo deny`: licence, ban and source checks in the test command.
pub const CARGO_DENY: CargoTool = CargoTool {
    name: "cargo-deny",
    version: "0.20.2",
};

/// `cargo fuzz`: the fuzz targets under fuzz/.
pub const CARGO_FUZZ: CargoTool = CargoTool {
    name: "cargo-fuzz",
    version: "0.13.2",
};

impl CargoTool {
    /// The folder holding the binary (put it first on PATH to run it as `cargo <sub>`),
    /// installing it first when missing.
    pub fn ensure(&self) -> anyhow::Result<std::path::PathBuf> {
        let root = fhr_testenv::tools::cache_root()
            .join("tools")
            .join(format!("{}-{}", self.name, self.version));
        let bin = root.join("bin");
        if bin.join(self.name).is_file() {
            return Ok(bin);
        }
        eprintln!(
            "installing {} {} from crates.io into {} (once; a few minutes)",
            self.name,
            self.version,
            root.display()
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["install", "--locked", "--quiet", "--version", self.version])
            .arg("--root")
            .arg(&root)
            .arg(self.name)
            // Its own target folder: never the workspace's, whose lock it would wait on.
            .env("CARGO_TARGET_DIR", root.join("build"))
            .status()
            .with_context(|| format!("run cargo install {}", self.name))?;
        let _ = std::fs::remove_dir_all(root.join("build"));
        if !status.success() {
            bail!("installing {} failed ({status})", self.name);
        }
        Ok(bin)
    }

    /// A `cargo <subcommand>` command that finds this tool.
    pub fn command(&self, toolchain: Option<&str>) -> anyhow::Result<Command> {
        let bin = self.ensure()?;
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![bin];
        paths.extend(std::env::split_paths(&path));
        // The rustup proxy, so that `+nightly` works; CARGO points at one toolchain's cargo.
        let mut command = Command::new("cargo");
        command.env("PATH", std::env::join_paths(paths)?);
        command
            .env_remove("CARGO")
            .env_remove("RUSTC")
            .env_remove("RUSTUP_TOOLCHAIN");
        if let Some(toolchain) = toolchain {
            command.arg(format!("+{toolchain}"));
        }
        command.arg(self.name.trim_start_matches("cargo-"));
        Ok(command)
    }
}
