//! A bare, shallow mirror of one branch, fetched with gix.

use crate::snapshot::Snapshot;
use crate::{GitError, Source};
use gix::remote::Direction;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A local bare mirror of the source's branch.
pub struct Mirror {
    dir: PathBuf,
    source: Source,
    // One fetch at a time: gix takes file locks, and a second fetch would only repeat the first.
    fetching: Mutex<()>,
}

impl Mirror {
    /// Opens (or creates) a mirror in `dir`.
    pub fn new(dir: &Path, source: Source) -> Result<Mirror, GitError> {
        // reqwest is built without a crypto provider; ring serves the whole process. An error
        // only means a provider is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        std::fs::create_dir_all(dir).map_err(|e| GitError::Io(dir.to_owned(), e))?;
        Ok(Mirror {
            dir: dir.to_owned(),
            source,
            fetching: Mutex::new(()),
        })
    }

    /// The source this mirror follows.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Fetches the branch tip (depth 1) and returns a snapshot of it. Blocking: run it on a
    /// blocking thread. Setting `interrupt` makes it stop at the next chance; every HTTP request
    /// is abandoned after `request_timeout`.
    pub fn fetch(
        &self,
        interrupt: &AtomicBool,
        request_timeout: Duration,
    ) -> Result<Snapshot, GitError> {
        let _guard = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        match self.fetch_once(interrupt, request_timeout) {
            Ok(snapshot) => Ok(snapshot),
            // A crash mid-fetch can leave a lock or a broken repository behind: start over once.
            Err(GitError::Repository(_)) => {
                let _ = std::fs::remove_dir_all(self.repo_dir());
                self.fetch_once(interrupt, request_timeout)
            }
            Err(e) => Err(e),
        }
    }

    /// A fetch error with its whole cause chain (gix's Debug form), credentials removed.
    fn fetch_error(&self, error: impl std::fmt::Debug) -> GitError {
        GitError::Fetch(self.source.redact(&format!("{error:?}")))
    }

    fn repo_dir(&self) -> PathBuf {
        self.dir.join("mirror.git")
    }

    fn open_or_init(&self) -> Result<gix::Repository, GitError> {
        let dir = self.repo_dir();
        // Stale locks from a killed fetch would fail every later fetch.
        for lock in ["shallow.lock", "HEAD.lock", "config.lock"] {
            let _ = std::fs::remove_file(dir.join(lock));
        }
        let overrides = self.source.config_overrides();
        let options = gix::open::Options::isolated().config_overrides(overrides);
        if dir.join("HEAD").is_file() {
            return gix::open_opts(&dir, options).map_err(|e| GitError::Repository(e.into()));
        }
        gix::init_bare(&dir).map_err(|e| GitError::Repository(e.into()))?;
        gix::open_opts(&dir, options).map_err(|e| GitError::Repository(e.into()))
    }

    fn fetch_once(
        &self,
        interrupt: &AtomicBool,
        request_timeout: Duration,
    ) -> Result<Snapshot, GitError> {
        let repo = self.open_or_init()?;
        let branch = &self.source.branch;
        let tracking = format!("refs/remotes/origin/{branch}");
        let remote = repo
            .remote_at(self.source.url.as_str())
            .map_err(|e| self.fetch_error(e))?
            .with_refspecs(
                Some(format!("+refs/heads/{branch}:{tracking}").as_str()),
                Direction::Fetch,
            )
            .map_err(|e| self.fetch_error(e))?;
        let connection = remote
            .connect(Direction::Fetch)
            .map_err(|e| self.fetch_error(e))?;
        let credentials = self.source.credentials.clone();
        let mut connection = connection.with_credentials(move |action| credentials.answer(action));
        if let Some(options) = self.source.http_options(&repo, request_timeout)? {
            connection = connection.with_transport_options(options);
        }
        let outcome = connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| self.fetch_error(e))?
            .with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(
                NonZeroU32::new(1).expect("1 is not zero"),
            ))
            .receive(gix::progress::Discard, interrupt)
            .map_err(|e| self.fetch_error(e))?;
        drop(outcome);
        let mut reference = repo
            .find_reference(tracking.as_str())
            .map_err(|_| GitError::BranchNotFound(branch.clone()))?;
        let commit = reference
            .peel_to_id()
            .map_err(|e| GitError::Repository(e.into()))?
            .detach();
        Snapshot::new(Arc::new(repo.into_sync()), commit)
    }
}
