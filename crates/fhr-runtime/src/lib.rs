//! Runtime plumbing that flux-agent and helm-operator share, written once: command-line flags
//! common to both, logging, the admin HTTP server and readiness, the API client, leader election
//! and automatic sharding, child processes and shutdown. Nothing of git or of releases: those are
//! fhr-git's and the daemons'.

pub mod admin;
pub mod child;
pub mod cli;
pub mod daemon;
pub mod kube;
pub mod leader;
pub mod logging;
pub mod membership;
pub mod shards;
pub mod shutdown;

pub use admin::Health;
pub use daemon::{Daemon, DaemonError};
pub use tokio_util::sync::CancellationToken;

/// Seconds since the Unix epoch, for timestamp metrics and state records.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// The daemon's state folder: `--state-dir` if given, else a temporary folder that lives (and is
/// removed) with the returned guard.
pub fn state_dir(
    configured: Option<&std::path::Path>,
    prefix: &str,
) -> std::io::Result<(std::path::PathBuf, Option<tempfile::TempDir>)> {
    match configured {
        Some(dir) => Ok((dir.to_owned(), None)),
        None => {
            let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
            Ok((dir.path().to_owned(), Some(dir)))
        }
    }
}
