//! flux-agent's metrics, in one place.

use crate::sync::Report;
use fhr_git::GitMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    endpoint: &'static str,
    result: &'static str,
}

/// Sync counts and outcomes, and the fetch loop's metrics.
pub struct Metrics {
    syncs: Family<ResultLabels, Counter>,
    sync_seconds: Histogram,
    applied: Counter,
    pruned: Counter,
    manifest_errors: Gauge,
    refused_kinds: Gauge,
    apply_errors: Gauge,
    synced: Gauge,
    last_sync: Gauge<f64, AtomicU64>,
    trigger_requests: Family<TriggerLabels, Counter>,
    /// The poll loop's metrics.
    pub git: Arc<GitMetrics>,
}

impl Metrics {
    /// Registers the metrics (prefix `fhr_agent`).
    pub fn new(registry: &mut Registry) -> Metrics {
        let r = registry.sub_registry_with_prefix("fhr_agent");
        let m = Metrics {
            syncs: Family::default(),
            sync_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
            applied: Counter::default(),
            pruned: Counter::default(),
            manifest_errors: Gauge::default(),
            refused_kinds: Gauge::default(),
            apply_errors: Gauge::default(),
            synced: Gauge::default(),
            last_sync: Gauge::default(),
            trigger_requests: Family::default(),
            git: Arc::new(GitMetrics::new(r)),
        };
        r.register(
            "syncs",
            "Syncs, by result (success, partial, failure)",
            m.syncs.clone(),
        );
        r.register(
            "sync_duration_seconds",
            "Time per sync",
            m.sync_seconds.clone(),
        );
        r.register("objects_applied", "Objects applied", m.applied.clone());
        r.register(
            "objects_pruned",
            "Objects deleted because they left git",
            m.pruned.clone(),
        );
        r.register(
            "manifest_errors",
            "Files or documents the last sync could not read",
            m.manifest_errors.clone(),
        );
        r.register(
            "refused_kinds",
            "Objects of kinds not on the allow-list in the last sync",
            m.refused_kinds.clone(),
        );
        r.register(
            "apply_errors",
            "Objects the API server refused in the last sync",
            m.apply_errors.clone(),
        );
        r.register(
            "synced",
            "1 when the last fetch and sync succeeded, else 0",
            m.synced.clone(),
        );
        r.register(
            "last_sync_timestamp_seconds",
            "Unix time of the last sync",
            m.last_sync.clone(),
        );
        r.register(
            "trigger_requests",
            "Sync requests and webhooks, by endpoint and result (accepted, unauthorized, ignored)",
            m.trigger_requests.clone(),
        );
        m
    }

    /// Counts a request to a sync endpoint.
    pub fn trigger_request(&self, endpoint: &'static str, result: &'static str) {
        self.trigger_requests
            .get_or_create(&TriggerLabels { endpoint, result })
            .inc();
    }

    /// Records a finished sync.
    pub fn sync(&self, report: &Report, started: Instant) {
        self.sync_seconds.observe(started.elapsed().as_secs_f64());
        let result = if report.clean() { "success" } else { "partial" };
        self.syncs.get_or_create(&ResultLabels { result }).inc();
        self.applied.inc_by(report.applied as u64);
        self.pruned.inc_by(report.pruned as u64);
        self.manifest_errors
            .set(report.manifest_errors.len() as i64);
        self.refused_kinds.set(report.refused_kinds.len() as i64);
        self.apply_errors.set(report.apply_errors.len() as i64);
        self.synced.set(i64::from(report.clean()));
        self.last_sync.set(fhr_runtime::unix_now());
    }

    /// Records a sync that could not run (the API was unreachable).
    pub fn sync_failed(&self, started: Instant) {
        self.sync_seconds.observe(started.elapsed().as_secs_f64());
        self.syncs
            .get_or_create(&ResultLabels { result: "failure" })
            .inc();
        self.synced.set(0);
    }

    /// Records that git could not be fetched: not synced.
    pub fn not_synced(&self) {
        self.synced.set(0);
    }
}
