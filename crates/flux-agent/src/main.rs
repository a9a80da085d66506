//! flux-agent: the release configuration in git becomes FluxHelmRelease objects in the cluster.

mod agent;
mod config;
mod http;
mod metrics;
mod plan;
mod state;
mod sync;

use anyhow::Context as _;
use clap::Parser;
use fhr_runtime::{Health, admin, shutdown};
use kube::runtime::events::{Recorder, Reporter};
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let config = config::Config::parse();
    fhr_runtime::logging::init(&config.serve)?;
    shutdown::run(serve(config))
}

async fn serve(config: config::Config) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(metrics::Metrics::new(&mut registry));
    let health = Arc::new(Health::default());
    health.set_not_ready("starting");
    let trigger = Arc::new(tokio::sync::Notify::new());
    let admin = tokio::spawn(admin::serve(
        config.serve.listen,
        Arc::new(registry),
        health.clone(),
        http::routes(trigger.clone(), config.webhook_secret_file.clone()),
        shutdown.clone(),
    ));

    // A temporary state folder lives as long as `_temporary`.
    let (state_dir, _temporary) =
        fhr_runtime::state_dir(config.state_dir.as_deref(), "flux-agent-")?;
    let source = config.git.source().context("--git-url")?;
    let mirror = Arc::new(fhr_git::Mirror::new(&state_dir.join("git"), source)?);
    let client = fhr_runtime::kube::client("flux-agent", env!("CARGO_PKG_VERSION"))
        .await
        .context("Kubernetes client configuration")?;
    let state_namespace = config
        .state_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "default".into());
    let reporter = Reporter {
        controller: "flux-agent".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let paths = config
        .git_path
        .iter()
        .map(|p| p.trim_matches('/').to_owned())
        .collect();
    let allowed = config
        .allow_kind
        .iter()
        .map(|k| plan::AllowedKind::parse(k))
        .collect();
    let lease = format!("flux-agent-{}", config.sync_set);
    let Some(lost) = fhr_runtime::leader::lead(
        &client,
        &config.leader,
        &state_namespace,
        &lease,
        &health,
        &shutdown,
    )
    .await
    else {
        return Ok(());
    };
    fhr_runtime::leader::stop_when_lost(&lost, &shutdown);
    let agent = agent::Agent {
        mirror,
        fetch_timeout: config.git.git_timeout,
        poll_interval: config.git.git_poll_interval,
        sync_interval: config.sync_interval,
        syncer: sync::Syncer::new(
            client.clone(),
            paths,
            allowed,
            config.sync_set.clone(),
            config.sync_garbage_collection,
        ),
        state: state::State::new(
            client.clone(),
            &state_namespace,
            &config.sync_set,
            Recorder::new(client, reporter),
        ),
        trigger,
        metrics,
        health: health.clone(),
    };
    tracing::info!(git_url = %config.git.git_url, branch = %config.git.git_branch, paths = ?config.git_path, "flux-agent starting");
    agent.run(shutdown.clone()).await;
    health.set_not_ready("shutting down");
    admin.await??;
    anyhow::ensure!(
        !lost.is_cancelled(),
        "leadership lost; exiting to restart as a standby"
    );
    tracing::info!("shutdown complete");
    Ok(())
}
