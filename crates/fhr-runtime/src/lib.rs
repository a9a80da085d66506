//! Runtime plumbing that flux-agent and helm-operator share, written once: command-line flags
//! common to both, logging, the admin HTTP server and readiness, waiting for the API, shutdown.

pub mod admin;
pub mod cli;
pub mod git_metrics;
pub mod kube;
pub mod leader;
pub mod logging;
pub mod shutdown;

pub use admin::Health;
pub use tokio_util::sync::CancellationToken;

/// Seconds since the Unix epoch, for timestamp metrics and state records.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}
