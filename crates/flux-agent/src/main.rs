//! flux-agent: the release configuration in git becomes FluxHelmRelease objects in the cluster.

mod config;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let config = config::Config::parse();
    fhr_runtime::logging::init(&config.serve)?;
    tracing::info!(git_url = %config.git.git_url, branch = %config.git.git_branch, "flux-agent configured");
    anyhow::bail!("the sync loop is not built yet")
}
