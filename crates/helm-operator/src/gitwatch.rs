//! The fetch loop: keeps the latest commit for the reconciler and re-queues exactly the
//! resources whose chart folder changed. A commit elsewhere in the repository re-queues nothing.
//! Besides its own interval, it fetches at once when flux-agent announces a commit it has not
//! fetched yet (the agent's state object): a webhook to the agent reaches charts too, and the
//! daemons still talk only through the API server.

use crate::metrics::Metrics;
use fhr_git::{Mirror, OnFetch, Poller, Snapshot, Turn};
use fhr_runtime::{CancellationToken, Health};
use fhr_types::FluxHelmRelease;
use fhr_types::meta::{AGENT_COMMIT_ANNOTATION, AGENT_STATE_LABEL};
use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

/// The latest git state the reconciler works from.
#[derive(Debug, Clone, Default)]
pub struct GitView {
    /// The last commit fetched, if any fetch succeeded yet.
    pub snapshot: Option<Snapshot>,
    /// Why the last fetch failed, if it did.
    pub error: Option<String>,
    /// A commit flux-agent announced that is being fetched now.
    pub announced: Option<String>,
}

/// What the fetch loop works with.
pub struct GitWatch {
    /// The mirror.
    pub mirror: Arc<Mirror>,
    /// Deadline of one fetch.
    pub timeout: Duration,
    /// Time between fetches.
    pub interval: Duration,
    /// The repository folder holding the charts.
    pub charts_path: String,
    /// Where the latest commit is published.
    pub view: Arc<watch::Sender<GitView>>,
    /// Wakes the loop for a fetch now.
    pub wake: Arc<Notify>,
    /// The resources, to find those whose chart changed.
    pub store: Store<FluxHelmRelease>,
    /// Where re-queues go.
    pub trigger: UnboundedSender<ObjectRef<FluxHelmRelease>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Readiness: ready after the first fetch.
    pub health: Arc<Health>,
}

impl GitWatch {
    /// Runs the shared poll loop until shutdown, publishing what it fetches.
    pub async fn run(self, shutdown: CancellationToken) {
        let poller = Poller {
            mirror: self.mirror.clone(),
            timeout: self.timeout,
            interval: self.interval,
            metrics: self.metrics.git.clone(),
            wake: self.wake.clone(),
            // Announcements come at the pace of commits; this only bounds a burst of them.
            min_wake_interval: Duration::from_secs(1),
        };
        let mut watch = self;
        poller.run(shutdown.cancelled(), &mut watch).await;
    }
}

impl OnFetch for GitWatch {
    async fn on_fetch(&mut self, turn: Turn) -> Option<Duration> {
        match turn.fetched {
            Ok(snapshot) => {
                let commit = snapshot.commit();
                let previous_commit = turn.previous.as_ref().map(Snapshot::commit);
                if previous_commit.as_deref() != Some(commit.as_str()) {
                    info!(%commit, "fetched a new commit");
                    self.view.send_replace(GitView {
                        snapshot: Some(snapshot.clone()),
                        error: None,
                        announced: None,
                    });
                    let requeue = match &turn.previous {
                        Some(previous) => self.changed(previous, &snapshot),
                        // The first commit: everyone waiting for git goes now.
                        None => self
                            .store
                            .state()
                            .iter()
                            .map(|f| ObjectRef::from_obj(&**f))
                            .collect(),
                    };
                    for object in requeue {
                        let _ = self.trigger.unbounded_send(object);
                    }
                } else {
                    self.view.send_if_modified(|view| {
                        let error = view.error.take().is_some();
                        let announced = view.announced.take().is_some();
                        error || announced
                    });
                }
                self.health.set_ready();
            }
            Err(error) => {
                let message = error.to_string();
                warn!(error = %message, failures = turn.failures, "git fetch failed; the last fetched commit stays in use");
                if turn.previous.is_none() {
                    self.health
                        .set_not_ready(format!("no commit fetched yet: {message}"));
                }
                self.view.send_modify(|view| view.error = Some(message));
            }
        }
        None
    }
}

impl GitWatch {
    /// Resources whose chart folder's tree differs between two commits.
    fn changed(&self, previous: &Snapshot, next: &Snapshot) -> Vec<ObjectRef<FluxHelmRelease>> {
        let mut by_path: HashMap<String, bool> = HashMap::new();
        let mut requeue = Vec::new();
        for fhr in self.store.state() {
            // Repository charts do not come from git.
            let Some(Ok(path)) = fhr
                .spec
                .chart_git_path
                .as_deref()
                .map(|p| fhr_release::desired::chart_path(&self.charts_path, p))
            else {
                continue;
            };
            let changed = *by_path.entry(path.clone()).or_insert_with(|| {
                let before = previous.tree_id(&path).ok().flatten();
                let after = next.tree_id(&path).ok().flatten();
                before != after
            });
            if changed {
                requeue.push(ObjectRef::from_obj(&*fhr));
            }
        }
        info!(
            changed_charts = by_path.values().filter(|c| **c).count(),
            requeued = requeue.len(),
            "chart folders compared"
        );
        requeue
    }
}

/// Follows flux-agent's state objects in `namespace` (all namespaces when `None`) and wakes the
/// fetch loop when one names a commit other than the one fetched. Metadata only: the commit is an
/// annotation, so the operator needs no more than it already has on ConfigMaps.
pub async fn follow_agent(
    client: kube::Client,
    namespace: Option<String>,
    view: Arc<watch::Sender<GitView>>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let api: Api<PartialObjectMeta<ConfigMap>> = match &namespace {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    };
    let announcements = watcher(api, watcher::Config::default().labels(AGENT_STATE_LABEL))
        .default_backoff()
        .touched_objects()
        .filter_map(|object| async move {
            object
                .ok()?
                .metadata
                .annotations?
                .remove(AGENT_COMMIT_ANNOTATION)
        });
    let mut announcements = std::pin::pin!(announcements.take_until(shutdown.cancelled_owned()));
    while let Some(commit) = announcements.next().await {
        let fetched = view
            .borrow()
            .snapshot
            .as_ref()
            .is_some_and(|s| s.commit() == commit);
        if !fetched {
            info!(%commit, "flux-agent announced a commit not fetched yet; fetching now");
            view.send_modify(|view| view.announced = Some(commit));
            wake.notify_one();
        }
    }
}
