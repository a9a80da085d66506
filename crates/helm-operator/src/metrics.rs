//! The operator's metrics, in one place; the reconciler calls methods, never the registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionOnly {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadyLabels {
    ready: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    source: &'static str,
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Why an engine is replaced: the `reason` label of `fhr_operator_helm_engine_restarts_total`.
const ENGINE_FAULTS: [&str; 4] = ["exited", "hung", "malformed", "start"];

/// The values of the Ready condition, as the `ready` label of `fhr_operator_releases`.
const READY_STATES: [&str; 3] = ["True", "False", "Unknown"];

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// Counters, histograms and gauges of helm-operator.
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    reconcile_seconds: Histogram,
    helm_actions: Family<ActionLabels, Counter>,
    helm_seconds: Family<ActionOnly, Histogram, fn() -> Histogram>,
    releases: Family<ReadyLabels, Gauge>,
    helm_processes: Counter,
    engine_restarts: Family<ReasonLabels, Counter>,
    chart_fetches: Family<FetchLabels, Counter>,
    readiness: Mutex<HashMap<String, &'static str>>,
    owned: Gauge,
    members: Gauge,
    handovers: Family<DirectionLabels, Counter>,
    /// The poll loop's metrics.
    pub git: std::sync::Arc<fhr_git::GitMetrics>,
}

impl Metrics {
    /// Creates the metrics and registers them (prefix `fhr_operator`).
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            reconciles: Family::default(),
            reconcile_seconds: seconds_histogram(),
            helm_actions: Family::default(),
            helm_seconds: Family::new_with_constructor(seconds_histogram),
            releases: Family::default(),
            helm_processes: Counter::default(),
            engine_restarts: Family::default(),
            chart_fetches: Family::default(),
            readiness: Mutex::default(),
            owned: Gauge::default(),
            members: Gauge::default(),
            handovers: Family::default(),
            git: std::sync::Arc::new(fhr_git::GitMetrics::new(
                registry.sub_registry_with_prefix("fhr_operator"),
            )),
        };
        let r = registry.sub_registry_with_prefix("fhr_operator");
        r.register(
            "reconciles",
            "Reconciles of FluxHelmRelease objects, by result",
            m.reconciles.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time per reconcile",
            m.reconcile_seconds.clone(),
        );
        r.register(
            "helm_actions",
            "Helm actions taken, by action and result",
            m.helm_actions.clone(),
        );
        r.register(
            "helm_cli_processes",
            "helm CLI processes started (only with --helm-engine=cli)",
            m.helm_processes.clone(),
        );
        r.register(
            "helm_engine_restarts",
            "Helm engine processes replaced, by why the last one failed",
            m.engine_restarts.clone(),
        );
        r.register(
            "chart_fetches",
            "Chart repository requests (kind index or archive) by result: fetched, cached (an archive already on disk), error",
            m.chart_fetches.clone(),
        );
        r.register(
            "helm_action_duration_seconds",
            "Time per Helm action",
            m.helm_seconds.clone(),
        );
        r.register(
            "releases",
            "FluxHelmRelease objects by their Ready condition",
            m.releases.clone(),
        );
        r.register(
            "shard_releases",
            "FluxHelmRelease objects this replica acts on (all it watches, unless --sharding=auto)",
            m.owned.clone(),
        );
        r.register(
            "shard_members",
            "Live replicas sharing the releases, as this replica sees them (--sharding=auto)",
            m.members.clone(),
        );
        r.register(
            "shard_handovers",
            "Releases that moved to this replica (gained) or away from it (lost) as replicas came and went",
            m.handovers.clone(),
        );
        for direction in ["gained", "lost"] {
            m.handovers
                .get_or_create(&DirectionLabels { direction })
                .inc_by(0);
        }
        // Every reason is exported from the start, so that alerts on increase() see the first.
        for reason in ENGINE_FAULTS {
            m.engine_restarts
                .get_or_create(&ReasonLabels { reason })
                .inc_by(0);
        }
        // Every state is exported from the start, at 0 until a release is in it.
        for ready in READY_STATES {
            m.releases.get_or_create(&ReadyLabels { ready }).set(0);
        }
        m
    }

    /// Counts a chart source request.
    pub fn chart_fetch(&self, source: &'static str, kind: &'static str, result: &'static str) {
        self.chart_fetches
            .get_or_create(&FetchLabels {
                source,
                kind,
                result,
            })
            .inc();
    }

    /// Starts timing a reconcile; call [`ReconcileTimer::finish`] with the result.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            started: Instant::now(),
        }
    }

    /// Counts one helm CLI process.
    pub fn helm_process(&self) {
        self.helm_processes.inc();
    }

    /// Counts one engine restart (or failed start) and why.
    pub fn engine_restart(&self, reason: &'static str) {
        self.engine_restarts
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Records one Helm action.
    pub fn helm_action(&self, action: &'static str, ok: bool, started: Instant) {
        let result = if ok { "success" } else { "failure" };
        self.helm_actions
            .get_or_create(&ActionLabels { action, result })
            .inc();
        self.helm_seconds
            .get_or_create(&ActionOnly { action })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Records this replica's share: releases it acts on, live replicas, and how many releases
    /// moved to it and away from it since the last call.
    pub fn shard(&self, owned: usize, members: usize, gained: usize, lost: usize) {
        self.owned.set(i64::try_from(owned).unwrap_or(i64::MAX));
        self.members.set(i64::try_from(members).unwrap_or(i64::MAX));
        for (direction, count) in [("gained", gained), ("lost", lost)] {
            self.handovers
                .get_or_create(&DirectionLabels { direction })
                .inc_by(count as u64);
        }
    }

    /// Records a resource's Ready condition (`None` when the resource is gone).
    pub fn set_ready(&self, key: String, ready: Option<&'static str>) {
        // Counted as they change, not by scanning every release: this runs at every reconcile,
        // and a scan made each re-check period O(N²) (it led the benchmark's profile at N = 1000).
        let mut map = self.readiness.lock().unwrap_or_else(|e| e.into_inner());
        let previous = match ready {
            Some(r) => map.insert(key, r),
            None => map.remove(&key),
        };
        if previous == ready {
            return;
        }
        if let Some(ready) = previous {
            self.releases.get_or_create(&ReadyLabels { ready }).dec();
        }
        if let Some(ready) = ready {
            self.releases.get_or_create(&ReadyLabels { ready }).inc();
        }
    }
}

/// Times one reconcile.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    started: Instant,
}

impl ReconcileTimer<'_> {
    /// Records the reconcile's result.
    pub fn finish(self, result: &'static str) {
        self.metrics
            .reconcile_seconds
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics
            .reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(m: &Metrics) -> Vec<i64> {
        READY_STATES
            .iter()
            .map(|&ready| m.releases.get_or_create(&ReadyLabels { ready }).get())
            .collect()
    }

    #[test]
    fn release_counts_follow_each_release_as_it_changes_and_goes() {
        let m = Metrics::new(&mut Registry::default());
        assert_eq!(counts(&m), [0, 0, 0]);
        m.set_ready("ns/a".into(), Some("Unknown"));
        m.set_ready("ns/b".into(), Some("True"));
        m.set_ready("ns/a".into(), Some("True"));
        m.set_ready("ns/a".into(), Some("True"));
        assert_eq!(counts(&m), [2, 0, 0]);
        m.set_ready("ns/b".into(), Some("False"));
        assert_eq!(counts(&m), [1, 1, 0]);
        m.set_ready("ns/b".into(), None);
        m.set_ready("ns/gone".into(), None);
        assert_eq!(counts(&m), [1, 0, 0]);
    }
}
