//! helm-operator: FluxHelmRelease objects and charts in git become Helm releases.

mod charts;
mod config;
mod crd;
mod drift;
mod engine;
mod explain;
mod gitwatch;
mod helm;
mod identity;
mod metrics;
mod reconcile;
mod repositories;
mod shards;
mod status;
mod storage;
mod values_from;
mod watches;

use anyhow::Context as _;
use clap::Parser;
use fhr_runtime::{Daemon, shutdown};
use fhr_types::FluxHelmRelease;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use sha2::Digest as _;
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let config = config::Config::parse();
    fhr_runtime::logging::init(&config.serve)?;
    shutdown::run(operate(config))
}

async fn operate(config: config::Config) -> anyhow::Result<()> {
    // Bad flags are refused before anything starts or is contacted.
    let source = config.git.source().context("--git-url")?;
    let sharding = match (config.sharding, config.leader.leader_election) {
        (sharding, true) => sharding,
        (config::Sharding::Auto, false) => anyhow::bail!(
            "--sharding=auto needs the replicas' Leases: drop --leader-election=false"
        ),
        (_, false) => config::Sharding::Off,
    };
    anyhow::ensure!(
        config.allow_lookup || config.helm_engine == config::HelmEngine::Engine,
        "--allow-lookup=false needs --helm-engine=engine: the helm CLI cannot turn lookup off"
    );
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(metrics::Metrics::new(&mut registry));
    let mut daemon = Daemon::start(
        "helm-operator",
        env!("CARGO_PKG_VERSION"),
        &config.serve,
        config.state_dir.as_deref(),
        registry,
        axum::Router::new(),
    )
    .await?;
    let (client, health, shutdown) = (
        daemon.client.clone(),
        daemon.health.clone(),
        daemon.shutdown.clone(),
    );
    let state_dir = daemon.state_dir.clone();
    let identities = Arc::new(identity::Identities::new(
        daemon.config.clone(),
        client.clone(),
    ));
    let mirror = Arc::new(fhr_git::Mirror::new(&state_dir.join("git"), source)?);
    let charts = charts::ChartCache::new(state_dir.join("charts"), fhr_git::Limits::default())?;
    let repositories = Arc::new(repositories::Repositories::new(
        state_dir.join("repository-charts"),
        config.chart_repository_interval,
        config.chart_allow_insecure_http,
        Some(metrics.clone()),
    )?);
    if !crd::wait_for_crd(&client, &health, &shutdown).await {
        return Ok(());
    }
    let api: Api<FluxHelmRelease> = match &config.namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let mut selected = watcher::Config::default();
    if let Some(selector) = &config.watch_label_selector {
        // A selector the API server cannot parse is refused now, not retried by a watch forever.
        api.list_metadata(&ListParams::default().labels(selector).limit(1))
            .await
            .with_context(|| format!("--watch-label-selector {selector:?}"))?;
        selected = selected.labels(selector);
    }
    // One operator acts per scope: the Lease is named after the namespace it watches, if any,
    // and after its shard's selector, if any.
    let mut lease = match &config.namespace {
        Some(namespace) => format!("helm-operator-{namespace}"),
        None => "helm-operator".to_owned(),
    };
    if let Some(selector) = &config.watch_label_selector {
        let digest = sha2::Sha256::digest(selector.as_bytes());
        lease.push_str(&format!("-shard-{}", hex::encode(&digest[..6])));
    }
    let lease_namespace = config.namespace.as_deref().unwrap_or("default");
    let replica = fhr_runtime::leader::Elector::default_identity();
    let mut membership = None;
    let shards = match sharding {
        config::Sharding::Leader => {
            if !daemon.lead(&config.leader, lease_namespace, &lease).await {
                return Ok(());
            }
            let (acting, leading) = tokio::sync::watch::channel(true);
            if let Some(lost) = daemon.leadership_lost() {
                tokio::spawn(async move {
                    lost.cancelled().await;
                    let _ = acting.send(false);
                });
            }
            shards::Shards::all(&replica, leading)
        }
        config::Sharding::Off => shards::Shards::all(&replica, tokio::sync::watch::channel(true).1),
        config::Sharding::Auto => {
            let joined = fhr_runtime::membership::Membership::new(
                client.clone(),
                &fhr_runtime::leader::lease_namespace(&config.leader, lease_namespace),
                &lease,
                &replica,
                config.leader.lease_duration,
            );
            let (ring, member) = (joined.ring(), joined.member());
            membership = Some(joined);
            shards::Shards::auto(&replica, ring, config.leader.lease_duration, member)
        }
    };
    // Started once this replica leads: a standby runs no engine.
    let helm = match config.helm_engine {
        config::HelmEngine::Engine => {
            let engine = Arc::new(engine::Engine::new(
                config.helm_engine_bin.clone(),
                config.workers,
                config.allow_lookup,
                Some(metrics.clone()),
            ));
            // A missing or incompatible engine is a start-up error, not a failure per release.
            let version = engine
                .start()
                .await
                .with_context(|| format!("starting {}", config.helm_engine_bin.display()))?;
            tracing::info!(helm = %version, "Helm engine ready");
            helm::Backend::Engine(engine)
        }
        config::HelmEngine::Cli => helm::Backend::Cli(helm::HelmCli::new(
            config.helm_bin.clone(),
            state_dir.join("helm"),
            Some(identities.clone()),
            Some(metrics.clone()),
        )?),
    };
    let (reader, writer) = reflector::store();
    // Status writes change the object too; only what can change a decision starts a reconcile.
    let objects = watcher(api, selected)
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(watches::decision_inputs, Default::default());
    let (view_tx, view_rx) = tokio::sync::watch::channel(gitwatch::GitView::default());
    let view_tx = Arc::new(view_tx);
    let (trigger_tx, trigger_rx) = futures::channel::mpsc::unbounded();
    let wake = Arc::new(tokio::sync::Notify::new());
    let git = gitwatch::GitWatch {
        mirror,
        timeout: config.git.git_timeout,
        interval: config.git.git_poll_interval,
        charts_path: config.charts_path.clone(),
        view: view_tx.clone(),
        wake: wake.clone(),
        store: reader.clone(),
        trigger: trigger_tx.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
    };
    tokio::spawn(git.run(shutdown.clone()));
    tokio::spawn(gitwatch::follow_agent(
        client.clone(),
        config
            .agent_state_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .or_else(|| config.namespace.clone()),
        view_tx,
        wake,
        shutdown.clone(),
    ));

    let shards = Arc::new(shards);
    let changed = Arc::new(tokio::sync::Notify::new());
    if let Some(membership) = membership.clone() {
        let changed = changed.clone();
        tokio::spawn(membership.run(move || changed.notify_one(), shutdown.clone()));
    }
    {
        let (shards, store, trigger, metrics) = (
            shards.clone(),
            reader.clone(),
            trigger_tx.clone(),
            metrics.clone(),
        );
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shards
                .rebalance(store, changed, trigger, metrics, shutdown)
                .await
        });
    }
    let reporter = Reporter {
        controller: "helm-operator".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let client_for_watches = client.clone();
    let ctx = Arc::new(reconcile::Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        identities,
        helm,
        charts,
        repositories,
        git: view_rx,
        metrics,
        confirmed: Default::default(),
        resources: Default::default(),
        store: reader.clone(),
        requeue: trigger_tx,
        locks: Default::default(),
        retries: Default::default(),
        shards,
        settings: reconcile::Settings {
            charts_path: config.charts_path.clone(),
            default_timeout: config.helm_timeout,
            sync_interval: config.charts_sync_interval,
            default_service_account: config.default_service_account.clone(),
        },
    });
    tracing::info!(workers = config.workers, "controller starting");
    Controller::for_stream(objects, reader.clone())
        .reconcile_on(trigger_rx)
        // A change to a ConfigMap or Secret re-queues the resources that name it (valuesFrom, a
        // chart repository's credentials);
        // metadata is enough to know, and keeps Secret contents out of the operator's memory.
        .watches_stream(
            watcher(
                watches::scoped::<PartialObjectMeta<ConfigMap>>(
                    &client_for_watches,
                    &config.namespace,
                ),
                watcher::Config::default(),
            )
            .default_backoff()
            .touched_objects(),
            watches::referencing(reader.clone(), watches::names_config_map),
        )
        .watches_stream(
            watcher(
                watches::scoped::<PartialObjectMeta<Secret>>(
                    &client_for_watches,
                    &config.namespace,
                ),
                watcher::Config::default(),
            )
            .default_backoff()
            .touched_objects(),
            watches::referencing(reader, watches::names_secret),
        )
        .with_config(kube::runtime::controller::Config::default().concurrency(config.workers))
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile error");
            }
        })
        .await;
    tracing::info!("controller stopped");
    // Only now that nothing is in flight may the others take this replica's releases at once.
    if let Some(membership) = membership {
        membership.leave().await;
    }
    Ok(daemon.finish().await?)
}
