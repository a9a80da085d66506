//! helm-operator: FluxHelmRelease objects and charts in git become Helm releases.

mod config;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let config = config::Config::parse();
    fhr_runtime::logging::init(&config.serve)?;
    tracing::info!(git_url = %config.git.git_url, branch = %config.git.git_branch, "helm-operator configured");
    anyhow::bail!("the release controller is not built yet")
}
