//! The git mirror flux-agent and helm-operator share.
//!
//! A bare repository holding a depth-1 fetch of one branch ([`Mirror`]); each fetch yields a
//! [`Snapshot`] of the tip, from which folders are looked up, exported and read straight from the
//! trees. gix is blocking: [`fetch`] runs it on a blocking thread with a deadline. Both daemons
//! take the same flags ([`GitArgs`]), run the same loop ([`Poller`]) and export the same metrics
//! ([`GitMetrics`]).

mod cli;
mod metrics;
mod mirror;
mod poll;
mod snapshot;
mod source;

pub use cli::GitArgs;
pub use gix::ObjectId;
pub use metrics::GitMetrics;
pub use mirror::Mirror;
pub use poll::{OnFetch, Poller, Turn};
pub use snapshot::{Limits, Snapshot, TreeFile};
pub use source::{Auth, Source};

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What went wrong with git. Messages never hold credentials.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The URL or branch is unusable.
    #[error("git URL: {0}")]
    InvalidUrl(String),
    /// Fetching failed (network, auth, protocol). A string on purpose: the transport's error is
    /// redacted of credentials before it becomes a value, and a kept source would print it whole.
    #[error("git fetch failed: {0}")]
    Fetch(String),
    /// The fetch took longer than allowed.
    #[error("git fetch timed out after {0:?}")]
    Timeout(Duration),
    /// The branch does not exist on the remote.
    #[error("branch {0:?} not found on the remote")]
    BranchNotFound(String),
    /// The local mirror is unusable (a local error: no credentials in it, so its source is kept).
    #[error("git mirror: {0}")]
    Repository(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A folder does not exist at the commit.
    #[error("folder {0:?} does not exist in the repository")]
    PathNotFound(String),
    /// Content was refused (a symlink leaving the folder, a file too large, a hostile name).
    #[error("{path}: {reason}")]
    Refused {
        /// Where, relative to the folder.
        path: String,
        /// Why.
        reason: String,
    },
    /// A local file operation failed.
    #[error("{path}: {1}", path = .0.display())]
    Io(PathBuf, std::io::Error),
}

/// Fetches on a blocking thread, giving up after `timeout`. Each HTTP request carries the same
/// deadline, so a server that never ends its response, or trickles it, cannot keep the thread
/// (or the mirror's lock) past it.
pub async fn fetch(mirror: Arc<Mirror>, timeout: Duration) -> Result<Snapshot, GitError> {
    let interrupt = Arc::new(AtomicBool::new(false));
    let task = tokio::task::spawn_blocking({
        let interrupt = interrupt.clone();
        move || mirror.fetch(&interrupt, timeout)
    });
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(GitError::Repository(
            format!("fetch task failed: {join}").into(),
        )),
        Err(_) => {
            interrupt.store(true, Ordering::Relaxed);
            Err(GitError::Timeout(timeout))
        }
    }
}
