//! `cargo xtask`: the project's own commands.
//!
//! - `crd [--check]`: write (or verify) `deploy/crds/` from the Rust types.
//! - `docs [--check]`: write (or verify) docs/flags.md from the daemons' `--help`.
//! - `tools`: build and cache kube-apiserver, etcd and helm from the pinned Go modules.
//! - `demo [--once]`: the whole system on a local control plane and the example repository.
//! - `test`: every check and test, as CI runs it.
//! - `fuzz [--seconds N] [TARGET…]`: the cargo-fuzz targets, each for N seconds.
//! - `bench`: convergence, change latency and steady-state cost against a plain helm loop.

mod bench;
mod chart;
mod crd;
mod demo;
mod docs;
mod fuzz;
mod image;
mod test;
mod tools;

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "flux-helm's project commands")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Write deploy/crds/ from the Rust types (or, with --check, fail if it is stale).
    Crd {
        /// Fail instead of writing when the committed YAML differs from the generated YAML.
        #[arg(long)]
        check: bool,
    },
    /// Write deploy/chart/ (the Helm chart for flux-helm) from deploy/base and deploy/crds (or,
    /// with --check, fail if it is stale).
    Chart {
        /// Fail instead of writing when the committed chart differs.
        #[arg(long)]
        check: bool,
    },
    /// Write docs/flags.md from the daemons' --help (or, with --check, fail if it is stale).
    Docs {
        /// Fail instead of writing when the committed file differs.
        #[arg(long)]
        check: bool,
    },
    /// Run the whole system on a local control plane and the example repository.
    Demo {
        /// Exit once every example release is deployed (non-zero if that fails) instead of
        /// running until Ctrl-C.
        #[arg(long)]
        once: bool,
    },
    /// Build and cache kube-apiserver, etcd and helm from the pinned Go modules under tools/.
    Tools {
        /// Rebuild even when the cache already holds the binaries.
        #[arg(long)]
        force: bool,
    },
    /// Run the cargo-fuzz targets under fuzz/ (nightly; not part of `test`).
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// Build both container images with buildah from local binaries, and check them.
    Image(image::Args),
    /// Measure convergence, change latency and steady-state cost against a plain helm loop.
    Bench(bench::Args),
    /// Run every check and test: formatting, lints, CRD drift, unit and end-to-end tests.
    Test {
        /// Arguments passed on to `cargo test` (e.g. `-- --nocapture`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_test_args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::Crd { check } => crd::run(check),
        Task::Chart { check } => chart::run(check),
        Task::Demo { once } => demo::run(once),
        Task::Docs { check } => docs::run(check),
        Task::Tools { force } => tools::run(force, tools::TestPackages::Install),
        Task::Test { cargo_test_args } => test::run(&cargo_test_args),
        Task::Bench(args) => bench::run(&args),
        Task::Image(args) => image::run(&args),
        Task::Fuzz { seconds, targets } => fuzz::run(seconds, &targets),
    }
}

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_owned()
}

/// Runs a command from the workspace root, failing with its name when it fails.
fn run_step(name: &str, command: &mut std::process::Command) -> anyhow::Result<()> {
    eprintln!("==> {name}");
    let status = command
        .current_dir(root())
        .status()
        .map_err(|e| anyhow::anyhow!("{name}: cannot start {:?}: {e}", command.get_program()))?;
    anyhow::ensure!(status.success(), "{name} failed ({status})");
    Ok(())
}

/// Builds the two daemons (debug), as the demo and the flags documentation run them.
fn build_daemons() -> anyhow::Result<()> {
    build_daemons_with(&[])
}

/// Builds the two daemons with extra `cargo build` arguments (e.g. `--release`).
fn build_daemons_with(extra: &[&str]) -> anyhow::Result<()> {
    run_step(
        "build flux-agent and helm-operator",
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            // Cargo's own progress shows what is compiled and how far along it is.
            .args(["build", "-p", "flux-agent", "-p", "helm-operator"])
            .args(extra),
    )
}
