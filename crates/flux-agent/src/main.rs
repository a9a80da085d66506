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
use fhr_runtime::{Daemon, shutdown};
use kube::runtime::events::{Recorder, Reporter};
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let config = config::Config::parse();
    fhr_runtime::logging::init(&config.serve)?;
    shutdown::run(serve(config))
}

async fn serve(config: config::Config) -> anyhow::Result<()> {
    // Bad flags are refused before anything starts or is contacted.
    let source = config.git.source().context("--git-url")?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(metrics::Metrics::new(&mut registry));
    let trigger = Arc::new(tokio::sync::Notify::new());
    let routes = http::routes(
        trigger.clone(),
        config.webhook_secret_file.clone(),
        &config.git.git_branch,
        metrics.clone(),
    );
    let mut daemon = Daemon::start(
        "flux-agent",
        env!("CARGO_PKG_VERSION"),
        &config.serve,
        config.state_dir.as_deref(),
        registry,
        routes,
    )
    .await?;
    let mirror = Arc::new(fhr_git::Mirror::new(&daemon.state_dir.join("git"), source)?);
    let state_namespace = config
        .state_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "default".into());
    let lease = format!("flux-agent-{}", config.sync_set);
    if !daemon.lead(&config.leader, &state_namespace, &lease).await {
        return Ok(());
    }
    let client = daemon.client.clone();
    let reporter = Reporter {
        controller: "flux-agent".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let agent = agent::Agent {
        mirror,
        fetch_timeout: config.git.git_timeout,
        poll_interval: config.git.git_poll_interval,
        sync_interval: config.sync_interval,
        syncer: sync::Syncer::new(
            client.clone(),
            config
                .git_path
                .iter()
                .map(|p| p.trim_matches('/').to_owned())
                .collect(),
            config
                .allow_kind
                .iter()
                .map(|k| plan::AllowedKind::parse(k))
                .collect(),
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
        trigger_min_interval: config.trigger_min_interval,
        metrics: metrics.clone(),
        health: daemon.health.clone(),
    };
    tokio::spawn(agent.state.follow_requests(agent.trigger.clone()));
    tracing::info!(git_url = %config.git.git_url, branch = %config.git.git_branch, paths = ?config.git_path, "flux-agent starting");
    agent.run(daemon.shutdown.clone()).await;
    Ok(daemon.finish().await?)
}
