//! Chart folders exported from git once per tree id, shared by every release that uses them.

use fhr_git::{GitError, Limits, Snapshot};
use std::path::{Path, PathBuf};

/// The export cache.
#[derive(Debug)]
pub struct ChartCache {
    dir: PathBuf,
    limits: Limits,
}

impl ChartCache {
    /// A cache in `dir`.
    pub fn new(dir: PathBuf, limits: Limits) -> std::io::Result<ChartCache> {
        std::fs::create_dir_all(&dir)?;
        Ok(ChartCache { dir, limits })
    }

    /// The exported folder of tree `tree` (a chart folder at `snapshot`), exporting it first if
    /// needed. A tree id names its contents, so an export never goes stale.
    pub async fn chart_dir(
        &self,
        snapshot: &Snapshot,
        tree: fhr_git::ObjectId,
    ) -> Result<PathBuf, GitError> {
        let dest = self.dir.join(tree.to_string());
        if dest.is_dir() {
            return Ok(dest);
        }
        let snapshot = snapshot.clone();
        let limits = self.limits;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || export(&snapshot, tree, &dir, &dest, &limits))
            .await
            .map_err(|e| GitError::Repository(e.into()))?
    }
}

fn export(
    snapshot: &Snapshot,
    tree: fhr_git::ObjectId,
    dir: &Path,
    dest: &Path,
    limits: &Limits,
) -> Result<PathBuf, GitError> {
    // Export beside the destination, then rename: a reader never sees half a chart, and two
    // concurrent exports of one tree both end with the same complete folder.
    let staging = tempfile::Builder::new()
        .prefix(".export-")
        .tempdir_in(dir)
        .map_err(|e| GitError::Io(dir.to_owned(), e))?;
    let out = staging.path().join("chart");
    snapshot.export_tree(tree, &out, limits)?;
    fhr_release::chart_archives::check_chart(
        &out,
        fhr_release::chart_archives::ArchiveLimits::default(),
    )
    .map_err(|refused| GitError::Refused {
        path: refused.archive,
        reason: refused.reason,
    })?;
    match std::fs::rename(&out, dest) {
        Ok(()) => Ok(dest.to_owned()),
        Err(_) if dest.is_dir() => Ok(dest.to_owned()),
        Err(e) => Err(GitError::Io(dest.to_owned(), e)),
    }
}
