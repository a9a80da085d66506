//! Helm chart repositories, the pure half: reading an `index.yaml` under bounds, choosing the
//! version a constraint asks for (Helm's constraint syntax), locating and verifying the archive.
//! Fetching is helm-operator's.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Largest `index.yaml` read: big public repositories are a few tens of MB; a larger one is
/// refused before it is parsed.
pub const MAX_INDEX_BYTES: usize = 64 << 20;
/// Largest chart archive downloaded (Helm's own default bound is 20 MiB).
pub const MAX_ARCHIVE_BYTES: usize = 20 << 20;

/// Why an index or a version could not be used; messages name the repository's content, never
/// credentials.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RepositoryError {
    /// The index does not parse, or exceeds the parsing budget.
    #[error("the repository index is not a valid index.yaml: {0}")]
    InvalidIndex(String),
    /// The chart is not in the index.
    #[error("chart {0:?} is not in the repository index")]
    NoChart(String),
    /// The version constraint does not parse.
    #[error("version {constraint:?} is neither a version nor a range: {reason}")]
    InvalidConstraint {
        /// As written.
        constraint: String,
        /// Why.
        reason: String,
    },
    /// No version of the chart matches.
    #[error("no version of chart {name:?} matches {constraint:?}; the newest is {newest}")]
    NoMatch {
        /// The chart.
        name: String,
        /// The constraint.
        constraint: String,
        /// The newest version the index has.
        newest: String,
    },
    /// The index entry names no archive.
    #[error("chart {name:?} {version} has no download URL in the index")]
    NoUrl {
        /// The chart.
        name: String,
        /// The version.
        version: String,
    },
    /// The archive is not the one the index describes.
    #[error("chart archive digest sha256:{actual} does not match the index's sha256:{expected}")]
    DigestMismatch {
        /// What the index says.
        expected: String,
        /// What was downloaded.
        actual: String,
    },
}

/// A repository's index: the versions of each chart.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Index {
    #[serde(default)]
    entries: BTreeMap<String, Vec<Entry>>,
}

/// One chart version in an index.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Entry {
    /// The chart's version.
    pub version: String,
    /// SHA-256 of the archive, hex, when the index has it.
    #[serde(default)]
    pub digest: Option<String>,
    /// Where the archive is: absolute, or relative to the repository URL.
    #[serde(default)]
    pub urls: Vec<String>,
}

/// Parses an `index.yaml` (already bounded to [`MAX_INDEX_BYTES`] by the fetcher) under a node
/// and alias budget, so a small file that expands cannot exhaust memory either.
pub fn parse_index(text: &str) -> Result<Index, RepositoryError> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! { max_nodes: 20_000_000, max_depth: 32 },
        alias_limits: serde_saphyr::alias_limits! { max_total_replayed_events: 100_000 },
    };
    serde_saphyr::from_str_with_options::<Index>(text, options).map_err(|e| {
        RepositoryError::InvalidIndex(match e.location() {
            Some(at) => format!("line {}", at.line()),
            None => e.to_string().lines().next().unwrap_or_default().to_owned(),
        })
    })
}

/// A version written in an index (`v1.2.3` is read as `1.2.3`, as Helm does).
fn version(text: &str) -> Option<semver::Version> {
    semver::Version::parse(text.strip_prefix('v').unwrap_or(text)).ok()
}

/// A constraint in Helm's syntax: alternatives separated by `||`, each a list of comparators
/// separated by spaces or commas; a bare version means exactly that version.
#[derive(Debug, Clone)]
pub struct Constraint {
    alternatives: Vec<semver::VersionReq>,
}

impl Constraint {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Constraint, RepositoryError> {
        let invalid = |reason: String| RepositoryError::InvalidConstraint {
            constraint: text.to_owned(),
            reason,
        };
        let mut alternatives = Vec::new();
        for alternative in text.split("||") {
            let mut comparators: Vec<String> = Vec::new();
            let mut pending_operator = String::new();
            for token in alternative
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|t| !t.is_empty())
            {
                // `>= 1.2` is one comparator written in two tokens.
                if token.chars().all(|c| "<>=~^!".contains(c)) {
                    pending_operator.push_str(token);
                    continue;
                }
                let token = format!("{}{token}", std::mem::take(&mut pending_operator));
                let token = token.replace('v', "");
                let bare = token.starts_with(|c: char| c.is_ascii_digit())
                    && !token.contains(['*', 'x', 'X']);
                comparators.push(if bare { format!("={token}") } else { token });
            }
            if comparators.is_empty() {
                return Err(invalid("an empty alternative".into()));
            }
            let requirement = semver::VersionReq::parse(&comparators.join(", "))
                .map_err(|e| invalid(e.to_string()))?;
            alternatives.push(requirement);
        }
        Ok(Constraint { alternatives })
    }

    /// Whether `version` satisfies the constraint.
    pub fn matches(&self, version: &semver::Version) -> bool {
        self.alternatives.iter().any(|r| r.matches(version))
    }
}

/// The newest version of chart `name` that `constraint` accepts.
pub fn resolve<'a>(
    index: &'a Index,
    name: &str,
    constraint: &str,
) -> Result<&'a Entry, RepositoryError> {
    let constraint_parsed = Constraint::parse(constraint)?;
    let versions = index
        .entries
        .get(name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| RepositoryError::NoChart(name.to_owned()))?;
    let parsed = || {
        versions
            .iter()
            .filter_map(|e| Some((version(&e.version)?, e)))
    };
    parsed()
        .filter(|(v, _)| constraint_parsed.matches(v))
        .max_by(|(a, _), (b, _)| a.cmp(b))
        .map(|(_, entry)| entry)
        .ok_or_else(|| RepositoryError::NoMatch {
            name: name.to_owned(),
            constraint: constraint.to_owned(),
            newest: parsed()
                .max_by(|(a, _), (b, _)| a.cmp(b))
                .map(|(v, _)| v.to_string())
                .unwrap_or_else(|| "none".into()),
        })
}

/// The newest of `versions` (an OCI repository's tags, as versions) that `constraint` accepts.
pub fn resolve_version(
    versions: &[String],
    name: &str,
    constraint: &str,
) -> Result<String, RepositoryError> {
    let entries: Vec<Entry> = versions
        .iter()
        .map(|v| Entry {
            version: v.clone(),
            digest: None,
            urls: Vec::new(),
        })
        .collect();
    let index = Index {
        entries: BTreeMap::from([(name.to_owned(), entries)]),
    };
    resolve(&index, name, constraint).map(|e| e.version.clone())
}

/// The archive's URL: the entry's first URL, resolved against the repository's URL when
/// relative (as Helm resolves it against the index's URL).
pub fn archive_url(repository: &str, name: &str, entry: &Entry) -> Result<String, RepositoryError> {
    let url = entry.urls.first().ok_or_else(|| RepositoryError::NoUrl {
        name: name.to_owned(),
        version: entry.version.clone(),
    })?;
    if url.contains("://") {
        return Ok(url.clone());
    }
    let base = repository.trim_end_matches('/');
    if let Some(absolute_path) = url.strip_prefix('/') {
        // scheme://host[:port] of the repository, then the path.
        let host_end = base
            .find("://")
            .and_then(|at| base[at + 3..].find('/').map(|slash| at + 3 + slash))
            .unwrap_or(base.len());
        return Ok(format!("{}/{absolute_path}", &base[..host_end]));
    }
    Ok(format!("{base}/{}", url.trim_start_matches("./")))
}

/// The archive's SHA-256 (hex), checked against the index's digest when it has one.
pub fn verify(archive: &[u8], expected: Option<&str>) -> Result<String, RepositoryError> {
    let actual = hex::encode(Sha256::digest(archive));
    match expected {
        Some(expected) if !expected.eq_ignore_ascii_case(&actual) => {
            Err(RepositoryError::DigestMismatch {
                expected: expected.to_owned(),
                actual,
            })
        }
        _ => Ok(actual),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "apiVersion: v1\nentries:\n  webapp:\n  - name: webapp\n    version: 1.2.0\n    digest: aa\n    urls: [webapp-1.2.0.tgz]\n  - name: webapp\n    version: 1.2.4\n    urls: [https://cdn.example.com/webapp-1.2.4.tgz]\n  - name: webapp\n    version: 2.0.0\n    urls: [/charts/webapp-2.0.0.tgz]\n  - name: webapp\n    version: 1.3.0-rc.1\n    urls: [webapp-1.3.0-rc.1.tgz]\n  - name: webapp\n    version: not-semver\n    urls: [x.tgz]\ngenerated: 2026-11-30T00:00:00Z\n";

    fn pick(constraint: &str) -> Result<String, RepositoryError> {
        let index = parse_index(INDEX).unwrap();
        resolve(&index, "webapp", constraint).map(|e| e.version.clone())
    }

    #[test]
    fn helm_constraints_choose_the_newest_match() {
        assert_eq!(pick("~1.2.0").unwrap(), "1.2.4");
        assert_eq!(pick("1.2.0").unwrap(), "1.2.0", "a bare version is exact");
        assert_eq!(pick(">= 1.2, < 2").unwrap(), "1.2.4");
        assert_eq!(pick(">=1.2 <2").unwrap(), "1.2.4");
        assert_eq!(pick("1.2.x").unwrap(), "1.2.4");
        assert_eq!(pick("^1 || ^2").unwrap(), "2.0.0");
        assert_eq!(
            pick("*").unwrap(),
            "2.0.0",
            "prereleases only when asked for"
        );
        assert_eq!(pick(">=1.3.0-rc.0 <1.4").unwrap(), "1.3.0-rc.1");
        assert_eq!(pick("v1.2.0").unwrap(), "1.2.0");
    }

    #[test]
    fn misses_say_what_there_is() {
        assert_eq!(
            pick("~3.0").unwrap_err().to_string(),
            "no version of chart \"webapp\" matches \"~3.0\"; the newest is 2.0.0"
        );
        assert!(matches!(
            pick(">>1").unwrap_err(),
            RepositoryError::InvalidConstraint { .. }
        ));
        let index = parse_index(INDEX).unwrap();
        assert_eq!(
            resolve(&index, "other", "*").unwrap_err(),
            RepositoryError::NoChart("other".into())
        );
    }

    #[test]
    fn archive_urls_resolve_against_the_repository() {
        let index = parse_index(INDEX).unwrap();
        let url = |constraint: &str| {
            let entry = resolve(&index, "webapp", constraint).unwrap();
            archive_url("http://127.0.0.1:8080/repo/", "webapp", entry).unwrap()
        };
        assert_eq!(url("1.2.0"), "http://127.0.0.1:8080/repo/webapp-1.2.0.tgz");
        assert_eq!(url("1.2.4"), "https://cdn.example.com/webapp-1.2.4.tgz");
        assert_eq!(
            url("2.0.0"),
            "http://127.0.0.1:8080/charts/webapp-2.0.0.tgz"
        );
    }

    #[test]
    fn archives_are_verified_against_the_index() {
        let digest = hex::encode(Sha256::digest(b"archive"));
        assert_eq!(verify(b"archive", Some(&digest)).unwrap(), digest);
        assert_eq!(verify(b"archive", None).unwrap(), digest);
        assert!(matches!(
            verify(b"tampered", Some(&digest)),
            Err(RepositoryError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn an_index_that_expands_is_refused() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8 {
            bomb.push_str(&format!(
                "b{i}: &b{i} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n",
                p = if i == 0 {
                    "a".to_owned()
                } else {
                    format!("b{}", i - 1)
                }
            ));
        }
        assert!(matches!(
            parse_index(&bomb),
            Err(RepositoryError::InvalidIndex(_))
        ));
    }
}
