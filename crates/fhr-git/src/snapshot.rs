//! One fetched commit: folder lookups, chart export and manifest reading, straight from git trees
//! (no worktree), with every path and size checked before anything is written or read.

use crate::GitError;
use gix::ObjectId;
use gix::objs::tree::EntryKind;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

/// Bounds on what one export or read may hold: a hostile repository must not exhaust memory or disk.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest single file.
    pub max_file_bytes: u64,
    /// Largest total of all files.
    pub max_total_bytes: u64,
    /// Most entries (files and folders).
    pub max_entries: usize,
    /// Deepest folder nesting.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 8 << 20,
            max_total_bytes: 64 << 20,
            max_entries: 10_000,
            max_depth: 32,
        }
    }
}

/// A file read from a tree, or why it was refused.
#[derive(Debug, Clone)]
pub struct TreeFile {
    /// Path relative to the folder that was read.
    pub path: String,
    /// The contents, or the reason the file was not read.
    pub contents: Result<Vec<u8>, String>,
}

/// A commit of the mirror, cheap to clone and share between threads.
#[derive(Clone)]
pub struct Snapshot {
    repo: Arc<gix::ThreadSafeRepository>,
    commit: ObjectId,
    root_tree: ObjectId,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("commit", &self.commit)
            .finish()
    }
}

impl Snapshot {
    pub(crate) fn new(
        repo: Arc<gix::ThreadSafeRepository>,
        commit: ObjectId,
    ) -> Result<Snapshot, GitError> {
        let local = repo.to_thread_local();
        let root_tree = local
            .find_commit(commit)
            .map_err(|e| GitError::Repository(e.into()))?
            .tree_id()
            .map_err(|e| GitError::Repository(e.into()))?
            .detach();
        Ok(Snapshot {
            repo,
            commit,
            root_tree,
        })
    }

    /// The commit id, as hex.
    pub fn commit(&self) -> String {
        self.commit.to_string()
    }

    /// The tree id of the folder at `path` (segments joined by `/`), or `None` when there is no
    /// folder there. The path must already be validated (no `..`, no empty segment).
    pub fn tree_id(&self, path: &str) -> Result<Option<ObjectId>, GitError> {
        let repo = self.repo.to_thread_local();
        let mut current = self.root_tree;
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            let tree = repo
                .find_tree(current)
                .map_err(|e| GitError::Repository(e.into()))?;
            let entry = tree
                .decode()
                .map_err(|e| GitError::Repository(e.into()))?
                .entries
                .iter()
                .find(|e| e.filename == segment.as_bytes())
                .map(|e| (e.mode.kind(), e.oid.to_owned()));
            match entry {
                Some((EntryKind::Tree, oid)) => current = oid,
                _ => return Ok(None),
            }
        }
        Ok(Some(current))
    }

    /// Writes the tree `tree` into the new folder `dest` (which must not exist): regular files only,
    /// symlinks resolved inside the tree or refused, sizes bounded by `limits`.
    pub fn export_tree(
        &self,
        tree: ObjectId,
        dest: &Path,
        limits: &Limits,
    ) -> Result<(), GitError> {
        let mut walker = Walker::new(&self.repo, tree, limits);
        std::fs::create_dir(dest).map_err(|e| GitError::Io(dest.to_owned(), e))?;
        let mut files = Vec::new();
        walker.walk(tree, "", 0, &mut |path, contents| {
            files.push((path.to_owned(), contents));
        })?;
        for (path, file) in files {
            let (bytes, executable) = file.map_err(|reason| GitError::Refused {
                path: path.clone(),
                reason,
            })?;
            let target = dest.join(&path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| GitError::Io(parent.to_owned(), e))?;
            }
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(if executable { 0o755 } else { 0o644 })
                .open(&target)
                .map_err(|e| GitError::Io(target.clone(), e))?;
            out.write_all(&bytes)
                .map_err(|e| GitError::Io(target.clone(), e))?;
        }
        Ok(())
    }

    /// Reads every file under `path` whose name ends with one of `extensions`, nested folders
    /// included, in path order. A refused file is reported in its entry; the rest are still read.
    pub fn read_files(
        &self,
        path: &str,
        extensions: &[&str],
        limits: &Limits,
    ) -> Result<Vec<TreeFile>, GitError> {
        let Some(tree) = self.tree_id(path)? else {
            return Err(GitError::PathNotFound(path.to_owned()));
        };
        let mut walker = Walker::new(&self.repo, tree, limits);
        let mut files = Vec::new();
        walker.walk(tree, "", 0, &mut |file, contents| {
            if extensions.iter().any(|ext| file.ends_with(ext)) {
                files.push(TreeFile {
                    path: file.to_owned(),
                    contents: contents.map(|(bytes, _)| bytes),
                });
            }
        })?;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }
}

type FileContents = Result<(Vec<u8>, bool), String>;

struct Walker<'a> {
    repo: gix::Repository,
    root: ObjectId,
    limits: &'a Limits,
    entries: usize,
    total_bytes: u64,
}

impl<'a> Walker<'a> {
    fn new(repo: &gix::ThreadSafeRepository, root: ObjectId, limits: &'a Limits) -> Self {
        Walker {
            repo: repo.to_thread_local(),
            root,
            limits,
            entries: 0,
            total_bytes: 0,
        }
    }

    fn walk(
        &mut self,
        tree: ObjectId,
        prefix: &str,
        depth: usize,
        visit: &mut dyn FnMut(&str, FileContents),
    ) -> Result<(), GitError> {
        if depth > self.limits.max_depth {
            return Err(GitError::Refused {
                path: prefix.to_owned(),
                reason: format!("folders nest deeper than {}", self.limits.max_depth),
            });
        }
        let entries: Vec<(EntryKind, Vec<u8>, ObjectId)> = self
            .repo
            .find_tree(tree)
            .map_err(|e| GitError::Repository(e.into()))?
            .decode()
            .map_err(|e| GitError::Repository(e.into()))?
            .entries
            .iter()
            .map(|e| (e.mode.kind(), e.filename.to_vec(), e.oid.to_owned()))
            .collect();
        for (kind, name, oid) in entries {
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(GitError::Refused {
                    path: prefix.to_owned(),
                    reason: format!("more than {} files and folders", self.limits.max_entries),
                });
            }
            let name = checked_name(&name).map_err(|reason| GitError::Refused {
                path: prefix.to_owned(),
                reason,
            })?;
            let path = if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}/{name}")
            };
            match kind {
                EntryKind::Tree => self.walk(oid, &path, depth + 1, visit)?,
                EntryKind::Blob | EntryKind::BlobExecutable => {
                    let contents = self
                        .read_blob(oid)
                        .map(|b| (b, kind == EntryKind::BlobExecutable));
                    visit(&path, contents);
                }
                EntryKind::Link => {
                    let contents = self.resolve_link(&path, oid).map(|b| (b, false));
                    visit(&path, contents);
                }
                EntryKind::Commit => visit(&path, Err("submodules are not supported".into())),
            }
        }
        Ok(())
    }

    fn read_blob(&mut self, oid: ObjectId) -> Result<Vec<u8>, String> {
        let size = self
            .repo
            .find_header(oid)
            .map_err(|e| e.to_string())?
            .size();
        if size > self.limits.max_file_bytes {
            return Err(format!(
                "file is {size} bytes, more than the limit of {}",
                self.limits.max_file_bytes
            ));
        }
        if self.total_bytes + size > self.limits.max_total_bytes {
            return Err(format!(
                "files add up to more than the limit of {} bytes",
                self.limits.max_total_bytes
            ));
        }
        self.total_bytes += size;
        let blob = self.repo.find_blob(oid).map_err(|e| e.to_string())?;
        Ok(blob.data.clone())
    }

    /// A symlink is followed only to a regular file inside the same tree; its target's contents
    /// are used, so nothing outside the tree is ever read.
    fn resolve_link(&mut self, path: &str, oid: ObjectId) -> Result<Vec<u8>, String> {
        let target = self
            .repo
            .find_blob(oid)
            .map_err(|e| e.to_string())?
            .data
            .clone();
        let target =
            String::from_utf8(target).map_err(|_| "symlink target is not UTF-8".to_owned())?;
        if target.starts_with('/') {
            return Err("symlink points outside the folder (absolute target)".into());
        }
        let mut resolved: Vec<&str> = path.split('/').collect();
        resolved.pop();
        for segment in target.split('/') {
            match segment {
                "" | "." => {}
                ".." => {
                    if resolved.pop().is_none() {
                        return Err("symlink points outside the folder".into());
                    }
                }
                s => resolved.push(s),
            }
        }
        let mut current = self.root;
        let (last, folders) = resolved
            .split_last()
            .ok_or_else(|| "symlink points at its own folder".to_owned())?;
        for segment in folders {
            match self.lookup(current, segment)? {
                Some((EntryKind::Tree, oid)) => current = oid,
                _ => return Err("symlink target does not exist in the folder".into()),
            }
        }
        match self.lookup(current, last)? {
            Some((EntryKind::Blob | EntryKind::BlobExecutable, oid)) => self.read_blob(oid),
            Some((EntryKind::Tree, _)) => Err("symlinks to folders are not supported".into()),
            Some((EntryKind::Link, _)) => Err("symlinks to symlinks are not supported".into()),
            _ => Err("symlink target does not exist in the folder".into()),
        }
    }

    fn lookup(&self, tree: ObjectId, name: &str) -> Result<Option<(EntryKind, ObjectId)>, String> {
        let tree = self.repo.find_tree(tree).map_err(|e| e.to_string())?;
        let decoded = tree.decode().map_err(|e| e.to_string())?;
        Ok(decoded
            .entries
            .iter()
            .find(|e| e.filename == name.as_bytes())
            .map(|e| (e.mode.kind(), e.oid.to_owned())))
    }
}

/// A tree entry name is used as a path segment only when it cannot mean anything but itself.
fn checked_name(name: &[u8]) -> Result<&str, String> {
    let name = std::str::from_utf8(name).map_err(|_| "a file name is not UTF-8".to_owned())?;
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\\', '\0'])
        || name.eq_ignore_ascii_case(".git")
    {
        return Err(format!(
            "refusing the file name {:?}",
            name.escape_debug().to_string()
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::checked_name;

    #[test]
    fn names_that_could_escape_are_refused() {
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0b", ".git", ".GIT"] {
            assert!(checked_name(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert_eq!(checked_name(b"values.yaml"), Ok("values.yaml"));
        assert_eq!(checked_name(b".helmignore"), Ok(".helmignore"));
    }
}
