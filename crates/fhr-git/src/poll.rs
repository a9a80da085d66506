//! The poll loop both daemons run: fetch now, then every interval; sooner after a failure (with
//! backoff), at once when woken (a sync request, a webhook, a commit another daemon announced), and
//! at the latest when the daemon asks (a retry it has scheduled). What a fetch means is the
//! daemon's business: it gets each [`Turn`].

use crate::{GitError, Mirror, Snapshot, metrics::GitMetrics};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// First delay after a failed fetch; it doubles up to [`MAX_RETRY`] (and never beyond the interval).
const MIN_RETRY: Duration = Duration::from_secs(1);
/// Longest delay between fetches after failures.
const MAX_RETRY: Duration = Duration::from_secs(64);

/// One fetch, as the daemon sees it.
#[derive(Debug)]
pub struct Turn {
    /// The tip of the branch, or why fetching failed.
    pub fetched: Result<Snapshot, GitError>,
    /// The last commit fetched before this turn, if any.
    pub previous: Option<Snapshot>,
    /// Failed fetches in a row, this one included (0 after a success).
    pub failures: u32,
    /// The loop was woken rather than its interval passing.
    pub woken: bool,
}

/// What a daemon does with each fetch.
pub trait OnFetch {
    /// Handles one turn; returns how soon the next fetch is wanted at the latest (`None`: the
    /// interval, or the failure backoff).
    fn on_fetch(&mut self, turn: Turn) -> impl Future<Output = Option<Duration>> + Send;
}

/// Fetches one branch for a daemon.
pub struct Poller {
    /// The mirror.
    pub mirror: Arc<Mirror>,
    /// Deadline of one fetch.
    pub timeout: Duration,
    /// Time between fetches.
    pub interval: Duration,
    /// Fetch counts, durations, the commit fetched.
    pub metrics: Arc<GitMetrics>,
    /// Wakes the loop for a fetch now; wakes while a fetch runs are kept for after it.
    pub wake: Arc<Notify>,
    /// Least time between two fetches that wake-ups started: wake-ups meanwhile are coalesced
    /// into one fetch at the end of it, so a flood of triggers costs a fetch per interval. The
    /// first wake-up after a quiet spell fetches at once.
    pub min_wake_interval: Duration,
}

impl Poller {
    /// Runs until `shutdown` completes, handing every fetch to `daemon`.
    pub async fn run(self, shutdown: impl Future<Output = ()>, daemon: &mut impl OnFetch) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut previous: Option<Snapshot> = None;
        let mut retry: Option<ExponentialBackoff> = None;
        let mut failures = 0;
        let mut woken = false;
        let mut last_woken: Option<Instant> = None;
        loop {
            if woken {
                if let Some(wait) = last_woken
                    .map(|at| self.min_wake_interval.saturating_sub(at.elapsed()))
                    .filter(|wait| !wait.is_zero())
                {
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                last_woken = Some(Instant::now());
            }
            let started = Instant::now();
            let fetched = crate::fetch(self.mirror.clone(), self.timeout).await;
            let previous_commit = previous.as_ref().map(Snapshot::commit);
            let snapshot = match &fetched {
                Ok(snapshot) => {
                    let commit = snapshot.commit();
                    self.metrics
                        .fetched(Some(&commit), previous_commit.as_deref(), started);
                    failures = 0;
                    Some(snapshot.clone())
                }
                Err(_) => {
                    self.metrics.fetched(None, None, started);
                    failures += 1;
                    None
                }
            };
            let turn = Turn {
                fetched,
                previous: previous.clone(),
                failures,
                woken,
            };
            let asked = daemon.on_fetch(turn).await;
            if snapshot.is_some() {
                previous = snapshot;
            }
            let delay = next_delay(self.interval, failures, &mut retry, asked);
            woken = tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(delay) => false,
                _ = self.wake.notified() => true,
            };
        }
    }
}

/// The wait before the next fetch: the interval, or the failure backoff (1 s doubling to 64 s,
/// never beyond the interval) while fetches fail, or what the daemon asked if that is sooner.
fn next_delay(
    interval: Duration,
    failures: u32,
    retry: &mut Option<ExponentialBackoff>,
    asked: Option<Duration>,
) -> Duration {
    let base = if failures == 0 {
        *retry = None;
        interval
    } else {
        retry
            .get_or_insert_with(|| {
                ExponentialBuilder::default()
                    .with_min_delay(MIN_RETRY)
                    .with_max_delay(MAX_RETRY)
                    .without_max_times()
                    .build()
            })
            .next()
            .unwrap_or(MAX_RETRY)
            .min(interval)
    };
    asked.map_or(base, |asked| asked.min(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_up_to_a_bound_and_a_success_resets() {
        let hour = Duration::from_secs(3600);
        let mut retry = None;
        let delays: Vec<u64> = (1..=9)
            .map(|n| next_delay(hour, n, &mut retry, None).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
        assert_eq!(next_delay(hour, 0, &mut retry, None), hour);
        assert_eq!(next_delay(hour, 1, &mut retry, None), MIN_RETRY);
    }

    #[test]
    fn never_beyond_the_interval_and_sooner_when_asked() {
        let mut retry = None;
        let five = Duration::from_secs(5);
        for n in 1..=8 {
            assert!(next_delay(five, n, &mut retry, None) <= five);
        }
        let asked = Some(Duration::from_millis(300));
        assert_eq!(
            next_delay(five, 0, &mut None, asked),
            Duration::from_millis(300)
        );
        assert_eq!(next_delay(five, 0, &mut None, Some(five * 2)), five);
    }
}
