//! The agent's loop: fetch, and sync when the commit changed, the sync interval passed, a sync was
//! requested, or objects the API server refused are due for another try. The last applied state
//! stays when git is unreachable.

use crate::metrics::Metrics;
use crate::plan::Reapply;
use crate::state::State;
use crate::sync::{Report, Syncer};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use fhr_git::{Mirror, OnFetch, Poller, Turn};
use fhr_runtime::{CancellationToken, Health};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::{error, info, warn};

/// First delay before applying refused objects again; it doubles up to [`MAX_APPLY_RETRY`].
const MIN_APPLY_RETRY: Duration = Duration::from_secs(1);
/// Longest delay between tries of refused objects: a namespace created by hand, or by a later
/// commit, is picked up within this, not at the next full sync.
const MAX_APPLY_RETRY: Duration = Duration::from_secs(30);

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
    /// Least time between two triggered fetches.
    pub trigger_min_interval: Duration,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Readiness.
    pub health: Arc<Health>,
}

/// When the next sync is due, and how much it applies.
struct Schedule {
    /// The commit last synced.
    last_commit: Option<String>,
    /// When everything was last applied. Counted from the last *full* sync: commit syncs apply
    /// only what changed, so they must not postpone the one that undoes hand edits.
    last_full_sync: Option<Instant>,
    /// A sync was requested (trigger or webhook).
    requested: bool,
    /// The last sync failed as a whole; the next applies everything.
    sync_failed: bool,
    /// When to try again what failed (refused objects or a whole sync), with its backoff.
    retry: Option<(Instant, ExponentialBackoff)>,
}

impl Schedule {
    /// Whether to sync `commit` now, and with what scope.
    fn due(&self, commit: &str, sync_interval: Duration) -> Option<(Reapply, &'static str)> {
        let changed = self.last_commit.as_deref() != Some(commit);
        let interval = self
            .last_full_sync
            .is_none_or(|t| t.elapsed() >= sync_interval);
        let retry = self
            .retry
            .as_ref()
            .is_some_and(|(at, _)| Instant::now() >= *at);
        if interval || self.sync_failed || (self.requested && !changed) {
            let why = if self.requested {
                "requested"
            } else if self.sync_failed {
                "retrying a failed sync"
            } else {
                "sync interval"
            };
            Some((Reapply::Everything, why))
        } else if changed {
            Some((Reapply::Changed, "new commit"))
        } else if retry {
            // What failed to apply has no up-to-date digest on the cluster, so an incremental
            // sync tries exactly those objects again.
            Some((Reapply::Changed, "retrying objects the API server refused"))
        } else {
            None
        }
    }

    /// Records a finished sync.
    fn synced(&mut self, commit: String, scope: Reapply, report: &Report) {
        self.last_commit = Some(commit);
        if scope == Reapply::Everything {
            self.last_full_sync = Some(Instant::now());
        }
        self.requested = false;
        self.sync_failed = false;
        if report.apply_errors.is_empty() {
            self.retry = None;
        } else {
            self.retry_later();
        }
    }

    /// Records a sync that failed as a whole: the next one applies everything, after a backoff.
    fn failed(&mut self) {
        self.sync_failed = true;
        self.retry_later();
    }

    /// Schedules the next try after the next delay of the backoff (1 s doubling to 30 s).
    fn retry_later(&mut self) {
        let mut backoff = self.retry.take().map(|(_, b)| b).unwrap_or_else(|| {
            ExponentialBuilder::default()
                .with_min_delay(MIN_APPLY_RETRY)
                .with_max_delay(MAX_APPLY_RETRY)
                .without_max_times()
                .build()
        });
        let delay = backoff.next().unwrap_or(MAX_APPLY_RETRY);
        self.retry = Some((Instant::now() + delay, backoff));
    }

    /// How long until refused objects are due for another try, if any are.
    fn retry_in(&self) -> Option<Duration> {
        self.retry
            .as_ref()
            .map(|(at, _)| at.saturating_duration_since(Instant::now()))
    }
}

impl Agent {
    /// Runs until shutdown: the shared poll loop fetches, this syncs.
    pub async fn run(self, shutdown: CancellationToken) {
        let poller = Poller {
            mirror: self.mirror.clone(),
            timeout: self.fetch_timeout,
            interval: self.poll_interval,
            metrics: self.metrics.git.clone(),
            wake: self.trigger.clone(),
            min_wake_interval: self.trigger_min_interval,
        };
        let mut syncing = Syncing {
            agent: &self,
            schedule: Schedule {
                last_commit: None,
                last_full_sync: None,
                requested: true,
                sync_failed: false,
                retry: None,
            },
        };
        poller.run(shutdown.cancelled(), &mut syncing).await;
    }

    fn log(&self, report: &Report, why: &str) {
        for problem in &report.manifest_errors {
            warn!(file = %problem.file, line = ?problem.line, error = %problem.message, "manifest not usable");
        }
        for refused in &report.refused_kinds {
            warn!(object = %refused, "kind not on the allow-list; not applied");
        }
        for problem in &report.apply_errors {
            warn!(error = %problem, "not applied; will retry");
        }
        info!(commit = %report.commit, why, applied = report.applied, unchanged = report.unchanged, pruned = report.pruned,
            prune_skipped = ?report.prune_skipped, "synced");
    }

    /// Ready once a sync has applied everything the API server was given; until then `/readyz`
    /// says what is missing. Files that do not parse are the repository's problem, reported in
    /// the state object, and do not hold readiness back; after the first complete sync, later
    /// refusals are retried and reported without taking the webhook endpoint out of service.
    fn report_readiness(&self, report: &Report) {
        if report.apply_errors.is_empty() || self.health.is_ready() {
            self.health.set_ready();
        } else {
            self.health.set_not_ready(format!(
                "first sync incomplete: {} object(s) not applied yet, retrying: {}",
                report.apply_errors.len(),
                report.apply_errors[0]
            ));
        }
    }
}

/// The agent's side of the poll loop: each fetch, decide whether to sync and how much.
struct Syncing<'a> {
    agent: &'a Agent,
    schedule: Schedule,
}

impl OnFetch for Syncing<'_> {
    async fn on_fetch(&mut self, turn: Turn) -> Option<Duration> {
        let agent = self.agent;
        if turn.woken {
            info!("sync requested");
            self.schedule.requested = true;
        }
        match turn.fetched {
            Ok(snapshot) => {
                let commit = snapshot.commit();
                if let Some((scope, why)) = self.schedule.due(&commit, agent.sync_interval) {
                    let request = agent.state.pending_request();
                    let started = Instant::now();
                    match agent.syncer.sync(&snapshot, scope).await {
                        Ok(report) => {
                            agent.metrics.sync(&report, started);
                            agent.log(&report, why);
                            if let Err(e) = agent.state.record(&report, request.as_deref()).await {
                                warn!(error = %e, "cannot record the sync in the state object");
                            }
                            agent.report_readiness(&report);
                            self.schedule.synced(commit, scope, &report);
                        }
                        Err(e) => {
                            self.schedule.failed();
                            agent.metrics.sync_failed(started);
                            error!(error = %e, %commit, "sync failed; retrying");
                            agent.health.set_not_ready(format!("sync failed: {e}"));
                        }
                    }
                }
            }
            Err(e) => {
                agent.metrics.not_synced();
                warn!(error = %e, failures = turn.failures, "git fetch failed; the last applied state stays");
                agent
                    .health
                    .set_not_ready(format!("not synced: git fetch failed: {e}"));
            }
        }
        self.schedule.retry_in()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Schedule {
        Schedule {
            last_commit: Some("a".into()),
            last_full_sync: Some(Instant::now()),
            requested: false,
            sync_failed: false,
            retry: None,
        }
    }

    fn report(apply_errors: usize) -> Report {
        Report {
            apply_errors: vec!["x".into(); apply_errors],
            ..Report::default()
        }
    }

    #[test]
    fn commit_syncs_do_not_postpone_the_full_sync() {
        let mut s = schedule();
        s.last_full_sync = Some(Instant::now() - Duration::from_secs(50));
        for commit in ["b", "c", "d"] {
            assert_eq!(
                s.due(commit, Duration::from_secs(60)).map(|d| d.0),
                Some(Reapply::Changed)
            );
            s.synced(commit.into(), Reapply::Changed, &report(0));
        }
        // Ten more seconds of commits: the full sync is due however often commits come.
        s.last_full_sync = Some(Instant::now() - Duration::from_secs(61));
        assert_eq!(
            s.due("e", Duration::from_secs(60)).map(|d| d.0),
            Some(Reapply::Everything)
        );
    }

    #[test]
    fn nothing_is_due_without_a_reason() {
        let s = schedule();
        assert!(s.due("a", Duration::from_secs(60)).is_none());
    }

    #[test]
    fn refused_objects_are_retried_with_a_growing_delay_until_they_apply() {
        let mut s = schedule();
        s.synced("a".into(), Reapply::Changed, &report(1));
        let first = s.retry.as_ref().unwrap().0;
        assert!(s.retry_in().unwrap() <= MIN_APPLY_RETRY);
        s.retry.as_mut().unwrap().0 = Instant::now() - Duration::from_millis(1);
        assert_eq!(
            s.due("a", Duration::from_secs(3600)).map(|d| d.0),
            Some(Reapply::Changed)
        );
        s.synced("a".into(), Reapply::Changed, &report(1));
        let second = s.retry.as_ref().unwrap().0;
        assert!(second - Instant::now() > first.saturating_duration_since(Instant::now()));
        assert!(s.retry_in().unwrap() <= MAX_APPLY_RETRY);
        s.synced("a".into(), Reapply::Changed, &report(0));
        assert!(s.retry.is_none());
        assert!(s.due("a", Duration::from_secs(3600)).is_none());
    }

    #[test]
    fn a_request_without_a_new_commit_applies_everything() {
        let mut s = schedule();
        s.requested = true;
        assert_eq!(
            s.due("a", Duration::from_secs(3600)).map(|d| d.0),
            Some(Reapply::Everything)
        );
        assert_eq!(
            s.due("b", Duration::from_secs(3600)).map(|d| d.0),
            Some(Reapply::Changed)
        );
    }
}
