//! helm-operator: FluxHelmRelease objects and charts in git become Helm releases.

mod charts;
mod config;
mod crd;
mod drift;
mod explain;
mod gitwatch;
mod helm;
mod metrics;
mod reconcile;
mod status;
mod storage;
mod values_from;

use anyhow::Context as _;
use clap::Parser;
use fhr_runtime::{Health, admin, shutdown};
use fhr_types::FluxHelmRelease;
use fhr_types::meta::RECONCILE_REQUEST_ANNOTATION;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let config = config::Config::parse();
    fhr_runtime::logging::init(&config.serve)?;
    shutdown::run(operate(config))
}

async fn operate(config: config::Config) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal();

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(metrics::Metrics::new(&mut registry));
    let health = Arc::new(Health::default());
    health.set_not_ready("starting");
    let admin = tokio::spawn(admin::serve(
        config.serve.listen,
        Arc::new(registry),
        health.clone(),
        axum::Router::new(),
        shutdown.clone(),
    ));

    // A temporary state folder lives as long as `_temporary`.
    let (state_dir, _temporary) =
        fhr_runtime::state_dir(config.state_dir.as_deref(), "helm-operator-")?;
    let source = config.git.source().context("--git-url")?;
    let mirror = Arc::new(fhr_git::Mirror::new(&state_dir.join("git"), source)?);
    let charts = charts::ChartCache::new(state_dir.join("charts"), fhr_git::Limits::default())?;

    let client = fhr_runtime::kube::client("helm-operator", env!("CARGO_PKG_VERSION"))
        .await
        .context("Kubernetes client configuration")?;
    let helm = helm::HelmCli::new(
        config.helm_bin.clone(),
        state_dir.join("helm"),
        Some(client.clone()),
        Some(metrics.clone()),
    )?;
    if !crd::wait_for_crd(&client, &health, &shutdown).await {
        return Ok(());
    }
    // One operator acts per scope: the Lease is named after the namespace it watches, if any.
    let lease = match &config.namespace {
        Some(namespace) => format!("helm-operator-{namespace}"),
        None => "helm-operator".to_owned(),
    };
    let lease_namespace = config.namespace.as_deref().unwrap_or("default");
    let Some(lost) = fhr_runtime::leader::lead(
        &client,
        &config.leader,
        lease_namespace,
        &lease,
        &health,
        &shutdown,
    )
    .await
    else {
        return Ok(());
    };
    fhr_runtime::leader::stop_when_lost(&lost, &shutdown);
    let api: Api<FluxHelmRelease> = match &config.namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    // Status writes change the object too; only what can change a decision starts a reconcile.
    let objects = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(decision_inputs, Default::default());
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
            .or_else(|| config.namespace.clone()),
        view_tx,
        wake,
        shutdown.clone(),
    ));

    let reporter = Reporter {
        controller: "helm-operator".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let client_for_watches = client.clone();
    let ctx = Arc::new(reconcile::Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        helm,
        charts,
        git: view_rx,
        metrics,
        confirmed: Default::default(),
        resources: Default::default(),
        store: reader.clone(),
        requeue: trigger_tx,
        locks: Default::default(),
        retries: Default::default(),
        settings: reconcile::Settings {
            charts_path: config.charts_path.clone(),
            default_timeout: config.helm_timeout,
            sync_interval: config.charts_sync_interval,
        },
    });
    tracing::info!(workers = config.workers, "controller starting");
    Controller::for_stream(objects, reader.clone())
        .reconcile_on(trigger_rx)
        // A change to a ConfigMap or Secret re-queues the resources whose valuesFrom names it;
        // metadata is enough to know, and keeps Secret contents out of the operator's memory.
        .watches_stream(
            watcher(
                scoped::<PartialObjectMeta<ConfigMap>>(&client_for_watches, &config.namespace),
                watcher::Config::default(),
            )
            .default_backoff()
            .touched_objects(),
            referencing(reader.clone(), |source| source.config_map_key_ref.as_ref()),
        )
        .watches_stream(
            watcher(
                scoped::<PartialObjectMeta<Secret>>(&client_for_watches, &config.namespace),
                watcher::Config::default(),
            )
            .default_backoff()
            .touched_objects(),
            referencing(reader, |source| source.secret_key_ref.as_ref()),
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
    health.set_not_ready("shutting down");
    shutdown.cancel();
    admin.await??;
    anyhow::ensure!(
        !lost.is_cancelled(),
        "leadership lost; exiting to restart as a standby"
    );
    tracing::info!("shutdown complete");
    Ok(())
}

/// What a reconcile decision depends on besides git and storage: the spec (generation), a
/// reconcile request, deletion and finalizers.
fn decision_inputs(fhr: &FluxHelmRelease) -> Option<u64> {
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    fhr.metadata.generation.hash(&mut hash);
    fhr.annotations()
        .get(RECONCILE_REQUEST_ANNOTATION)
        .hash(&mut hash);
    fhr.metadata.deletion_timestamp.is_some().hash(&mut hash);
    fhr.finalizers().hash(&mut hash);
    Some(hash.finish())
}

fn scoped<K>(client: &kube::Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Maps a changed ConfigMap or Secret to the resources in its namespace whose `valuesFrom` names it.
fn referencing<K: kube::Resource>(
    store: kube::runtime::reflector::Store<FluxHelmRelease>,
    reference: fn(&fhr_types::ValuesFromSource) -> Option<&fhr_types::KeyRef>,
) -> impl Fn(
    kube::core::PartialObjectMeta<K>,
) -> Vec<kube::runtime::reflector::ObjectRef<FluxHelmRelease>>
+ Send
+ Sync
+ 'static {
    move |object| {
        let (namespace, name) = (
            object.metadata.namespace.unwrap_or_default(),
            object.metadata.name.unwrap_or_default(),
        );
        store
            .state()
            .iter()
            .filter(|fhr| fhr.metadata.namespace.as_deref() == Some(namespace.as_str()))
            .filter(|fhr| {
                fhr.spec
                    .values_from
                    .iter()
                    .filter_map(reference)
                    .any(|r| r.name == name)
            })
            .map(|fhr| kube::runtime::reflector::ObjectRef::from_obj(&**fhr))
            .collect()
    }
}
