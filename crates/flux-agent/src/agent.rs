//! The agent's loop: fetch, and sync when the commit changed, the sync interval passed, or a sync
//! was requested. The last applied state stays when git is unreachable.

use crate::metrics::Metrics;
use crate::state::State;
use crate::sync::{Reapply, Syncer};
use fhr_git::Mirror;
use fhr_runtime::{CancellationToken, Health};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::{error, info, warn};

/// What the loop works with.
pub struct Agent {
    /// The git mirror.
    pub mirror: Arc<Mirror>,
    /// Deadline of one fetch.
    pub fetch_timeout: Duration,
    /// Time between fetches.
    pub poll_interval: Duration,
    /// Time after which everything is applied again even without a new commit.
    pub sync_interval: Duration,
    /// Applies and prunes.
    pub syncer: Syncer,
    /// Records syncs.
    pub state: State,
    /// Wakes the loop for an immediate sync.
    pub trigger: Arc<Notify>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Readiness.
    pub health: Arc<Health>,
}

impl Agent {
    /// Runs until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut last_commit: Option<String> = None;
        let mut last_sync: Option<Instant> = None;
        let mut failures: u32 = 0;
        let mut requested = true;
        loop {
            let started = Instant::now();
            match fhr_git::fetch(self.mirror.clone(), self.fetch_timeout).await {
                Ok(snapshot) => {
                    let commit = snapshot.commit();
                    self.metrics
                        .git
                        .fetched(Some(&commit), last_commit.as_deref(), started);
                    let due = last_sync.is_none_or(|t| t.elapsed() >= self.sync_interval);
                    let changed = last_commit.as_deref() != Some(commit.as_str());
                    if changed || due || requested || failures > 0 {
                        let why = if changed {
                            "new commit"
                        } else if requested {
                            "requested"
                        } else {
                            "sync interval"
                        };
                        // A new commit applies what it changed; the interval, a request without a
                        // new commit, and a retry apply everything.
                        let scope = if changed && !due && failures == 0 && last_sync.is_some() {
                            Reapply::Changed
                        } else {
                            Reapply::Everything
                        };
                        let sync_started = Instant::now();
                        match self.syncer.sync(&snapshot, scope).await {
                            Ok(report) => {
                                self.metrics.sync(&report, sync_started);
                                for problem in &report.manifest_errors {
                                    warn!(file = %problem.file, line = ?problem.line, error = %problem.message, "manifest not usable");
                                }
                                for refused in &report.refused_kinds {
                                    warn!(object = %refused, "kind not on the allow-list; not applied");
                                }
                                for problem in &report.apply_errors {
                                    warn!(error = %problem, "not applied");
                                }
                                info!(%commit, why, applied = report.applied, unchanged = report.unchanged, pruned = report.pruned,
                                    prune_skipped = ?report.prune_skipped, "synced");
                                if let Err(e) = self.state.record(&report).await {
                                    warn!(error = %e, "cannot record the sync in the state object");
                                }
                                last_commit = Some(commit);
                                last_sync = Some(Instant::now());
                                failures = 0;
                                requested = false;
                                self.health.set_ready();
                            }
                            Err(e) => {
                                failures += 1;
                                self.metrics.sync_failed(sync_started);
                                error!(error = %e, %commit, "sync failed; retrying");
                                self.health.set_not_ready(format!("sync failed: {e}"));
                            }
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    self.metrics.git.fetched(None, None, started);
                    self.metrics.not_synced();
                    warn!(error = %e, failures, "git fetch failed; the last applied state stays");
                    self.health
                        .set_not_ready(format!("not synced: git fetch failed: {e}"));
                }
            }
            let delay = if failures == 0 {
                self.poll_interval
            } else {
                Duration::from_secs(1 << failures.min(6)).min(self.poll_interval)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
                _ = self.trigger.notified() => {
                    info!("sync requested");
                    requested = true;
                }
            }
        }
    }
}
