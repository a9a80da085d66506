//! The fetch loop: keeps the latest commit for the reconciler and re-queues exactly the
//! resources whose chart folder changed. A commit elsewhere in the repository re-queues nothing.

use crate::desired;
use crate::metrics::Metrics;
use crate::reconcile::GitView;
use fhr_git::{Mirror, Snapshot};
use fhr_runtime::{CancellationToken, Health};
use fhr_types::FluxHelmRelease;
use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{info, warn};

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
    pub view: watch::Sender<GitView>,
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
    /// Fetches every `interval` (sooner after a failure) until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut previous: Option<Snapshot> = None;
        let mut failures: u32 = 0;
        loop {
            let started = Instant::now();
            match fhr_git::fetch(self.mirror.clone(), self.timeout).await {
                Ok(snapshot) => {
                    failures = 0;
                    let previous_commit = previous.as_ref().map(Snapshot::commit);
                    let commit = snapshot.commit();
                    self.metrics
                        .git
                        .fetched(Some(&commit), previous_commit.as_deref(), started);
                    if previous_commit.as_deref() != Some(commit.as_str()) {
                        info!(%commit, "fetched a new commit");
                        self.view.send_replace(GitView {
                            snapshot: Some(snapshot.clone()),
                            error: None,
                        });
                        let requeue = match &previous {
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
                        previous = Some(snapshot);
                    } else {
                        self.view
                            .send_if_modified(|view| view.error.take().is_some());
                    }
                    self.health.set_ready();
                }
                Err(error) => {
                    failures += 1;
                    self.metrics.git.fetched(None, None, started);
                    let message = error.to_string();
                    warn!(error = %message, failures, "git fetch failed; the last fetched commit stays in use");
                    if previous.is_none() {
                        self.health
                            .set_not_ready(format!("no commit fetched yet: {message}"));
                    }
                    self.view.send_modify(|view| view.error = Some(message));
                }
            }
            let delay = if failures == 0 {
                self.interval
            } else {
                Duration::from_secs(1 << failures.min(6)).min(self.interval)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Resources whose chart folder's tree differs between two commits.
    fn changed(&self, previous: &Snapshot, next: &Snapshot) -> Vec<ObjectRef<FluxHelmRelease>> {
        let mut by_path: HashMap<String, bool> = HashMap::new();
        let mut requeue = Vec::new();
        for fhr in self.store.state() {
            let Ok(path) = desired::chart_path(&self.charts_path, &fhr.spec.chart_git_path) else {
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
