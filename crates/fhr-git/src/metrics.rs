//! Metrics of the poll loop, the same in both daemons.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommitLabels {
    commit: String,
}

/// Fetch counts, durations, and the commit last fetched.
pub struct GitMetrics {
    fetches: Family<ResultLabels, Counter>,
    seconds: Histogram,
    commit: Family<CommitLabels, Gauge>,
    last_success: Gauge<f64, AtomicU64>,
}

impl GitMetrics {
    /// Registers the metrics under `<prefix>_git_…`.
    pub fn new(registry: &mut Registry) -> GitMetrics {
        let m = GitMetrics {
            fetches: Family::default(),
            seconds: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
            commit: Family::default(),
            last_success: Gauge::default(),
        };
        registry.register(
            "git_fetches",
            "Fetches of the git repository, by result",
            m.fetches.clone(),
        );
        registry.register(
            "git_fetch_duration_seconds",
            "Time per git fetch",
            m.seconds.clone(),
        );
        registry.register(
            "git_commit",
            "The commit last fetched (value 1)",
            m.commit.clone(),
        );
        registry.register(
            "git_last_fetch_timestamp_seconds",
            "Unix time of the last successful fetch",
            m.last_success.clone(),
        );
        m
    }

    /// Records a fetch: the commit it got (`None` when it failed) and the one before it.
    pub fn fetched(&self, commit: Option<&str>, previous: Option<&str>, started: Instant) {
        self.seconds.observe(started.elapsed().as_secs_f64());
        let result = if commit.is_some() {
            "success"
        } else {
            "failure"
        };
        self.fetches.get_or_create(&ResultLabels { result }).inc();
        let Some(commit) = commit else { return };
        if let Some(previous) = previous.filter(|p| *p != commit) {
            self.commit.remove(&CommitLabels {
                commit: previous.to_owned(),
            });
        }
        self.commit
            .get_or_create(&CommitLabels {
                commit: commit.to_owned(),
            })
            .set(1);
        self.last_success.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default(),
        );
    }
}
