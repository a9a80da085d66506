//! Charts from Helm chart repositories, the I/O half: each repository's `index.yaml` is fetched
//! at most once per interval and shared by every release that uses it; each chart archive is
//! downloaded once per digest, verified, checked as vendored subcharts are, unpacked, and kept
//! on disk (least recently used first out). What an index means is
//! `fhr_release::chart_repository`'s business.

use crate::metrics::Metrics;
use fhr_release::chart_archives::{ArchiveLimits, unpack_chart};
use fhr_release::chart_repository::{
    self as repository, Index, MAX_ARCHIVE_BYTES, MAX_INDEX_BYTES, RepositoryError,
};
use fhr_types::RepositoryChart;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How many unpacked charts stay on disk.
const MAX_CACHED_CHARTS: usize = 256;

/// Why a repository chart is not available.
#[derive(Debug, thiserror::Error)]
pub enum ChartSourceError {
    /// The URL is refused by the operator's settings (plain http).
    #[error(
        "repository {0} is plain http; use https, or run the operator with --chart-allow-insecure-http"
    )]
    InsecureUrl(String),
    /// The repository could not be reached or answered with an error.
    #[error("fetching {url}: {message}")]
    Fetch {
        /// What was fetched.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The repository refused the request: no or wrong credentials.
    #[error("fetching {url}: the server answered {status}; {}", if *had_credentials {
        "check the credentials in the Secret named by spec.chart.secretRef"
    } else {
        "the repository needs credentials: name a Secret in spec.chart.secretRef"
    })]
    Unauthorized {
        /// What was fetched.
        url: String,
        /// The answer.
        status: String,
        /// Whether credentials were sent.
        had_credentials: bool,
    },
    /// The index or the version choice is unusable.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    /// The archive was refused by the checks.
    #[error("chart archive {url} refused: {reason}")]
    Refused {
        /// The archive.
        url: String,
        /// Why.
        reason: String,
    },
    /// The local cache could not be written.
    #[error("chart cache: {0}")]
    Cache(String),
}

impl ChartSourceError {
    /// Whether retrying may help (the network), as opposed to a problem with the repository's
    /// content or the spec.
    pub fn transient(&self) -> bool {
        matches!(
            self,
            ChartSourceError::Fetch { .. } | ChartSourceError::Cache(_)
        )
    }
}

/// How a repository is authenticated (from `spec.chart.secretRef`). Never shown: its Debug
/// form is a placeholder, and no message repeats it.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// HTTP basic auth.
    Basic {
        /// The user.
        username: String,
        /// The password.
        password: String,
    },
    /// A bearer token.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(***)")
    }
}

impl Credentials {
    /// Reads credentials from a Secret's data: `username` and `password`, or `token`.
    pub fn from_secret_data(
        data: &std::collections::BTreeMap<String, k8s_openapi::ByteString>,
    ) -> Option<Credentials> {
        let text = |key: &str| {
            data.get(key)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .map(|v| v.trim_end_matches(['\n', '\r']).to_owned())
        };
        match (text("username"), text("password"), text("token")) {
            (Some(username), Some(password), _) => Some(Credentials::Basic { username, password }),
            (_, _, Some(token)) => Some(Credentials::Bearer(token)),
            _ => None,
        }
    }

    /// A key that tells credentials apart without holding them (indexes are cached per
    /// repository and credentials, so releases without them never read an index fetched with
    /// someone else's).
    fn cache_key(&self) -> String {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        match self {
            Credentials::Basic { username, password } => {
                hash.update(b"basic\0");
                hash.update(username.as_bytes());
                hash.update(b"\0");
                hash.update(password.as_bytes());
            }
            Credentials::Bearer(token) => {
                hash.update(b"bearer\0");
                hash.update(token.as_bytes());
            }
        }
        hex::encode(hash.finalize())
    }

    fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Credentials::Basic { username, password } => {
                request.basic_auth(username, Some(password))
            }
            Credentials::Bearer(token) => request.bearer_auth(token),
        }
    }
}

/// `scheme://host[:port]` of a URL: credentials go only to the repository's own origin.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    match url[after_scheme..].find('/') {
        Some(slash) => &url[..after_scheme + slash],
        None => url,
    }
}

/// A repository chart ready for Helm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedChart {
    /// The version the constraint resolved to.
    pub version: String,
    /// SHA-256 of the archive (hex).
    pub digest: String,
    /// The unpacked chart folder.
    pub dir: PathBuf,
}

struct CachedIndex {
    fetched: Instant,
    index: Arc<Index>,
}

/// The repositories' indexes and the chart cache, shared by all reconciles.
pub struct Repositories {
    http: reqwest::Client,
    dir: PathBuf,
    interval: Duration,
    allow_http: bool,
    metrics: Option<Arc<Metrics>>,
    /// Per repository URL: the lock serialises fetches (concurrent reconciles wait for one
    /// fetch and share it), the value is the last index.
    indexes: std::sync::Mutex<HashMap<String, Arc<Mutex<Option<CachedIndex>>>>>,
    /// Per archive digest: one download at a time.
    downloads: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Repositories {
    /// Repositories whose charts are kept under `dir`, indexes fetched at most every `interval`.
    pub fn new(
        dir: PathBuf,
        interval: Duration,
        allow_http: bool,
        metrics: Option<Arc<Metrics>>,
    ) -> anyhow::Result<Repositories> {
        std::fs::create_dir_all(&dir)?;
        // One process-wide TLS provider (ring, as kube's), if nothing installed one yet.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("helm-operator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Repositories {
            http,
            dir,
            interval,
            allow_http,
            metrics,
            indexes: Default::default(),
            downloads: Default::default(),
        })
    }

    /// Resolves `chart`'s version in its repository and returns the unpacked chart, fetching the
    /// index (at most once per interval) and the archive (once per digest) as needed.
    pub async fn chart(
        &self,
        chart: &RepositoryChart,
        credentials: Option<&Credentials>,
    ) -> Result<FetchedChart, ChartSourceError> {
        if chart.repository.starts_with("http://") && !self.allow_http {
            return Err(ChartSourceError::InsecureUrl(chart.repository.clone()));
        }
        let index = self.index(&chart.repository, credentials).await?;
        let entry = repository::resolve(&index, &chart.name, &chart.version)?;
        let url = repository::archive_url(&chart.repository, &chart.name, entry)?;
        let key = match &entry.digest {
            Some(digest) => digest.to_ascii_lowercase(),
            // No digest in the index: the URL names the cache entry, and the download is
            // verified against nothing but what it is.
            None => hex::encode(sha2::Digest::finalize(
                <sha2::Sha256 as sha2::Digest>::new_with_prefix(url.as_bytes()),
            )),
        };
        let lock = self
            .downloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let _downloading = lock.lock().await;
        let entry_dir = self.dir.join(&key);
        if let Some(cached) = cached_chart(&entry_dir) {
            self.count("archive", "cached");
            touch(&entry_dir);
            return Ok(FetchedChart {
                version: entry.version.clone(),
                digest: cached.1,
                dir: cached.0,
            });
        }
        // Credentials go to the repository's origin only, as Helm sends them by default.
        let to_archive = credentials.filter(|_| origin(&url) == origin(&chart.repository));
        let archive = self
            .get(&url, MAX_ARCHIVE_BYTES, "archive", to_archive)
            .await?;
        let digest = repository::verify(&archive, entry.digest.as_deref())?;
        let dir = self.unpack(&entry_dir, &url, &digest, archive).await?;
        self.evict();
        Ok(FetchedChart {
            version: entry.version.clone(),
            digest,
            dir,
        })
    }

    /// The repository's index, fetched unless it was within the interval.
    async fn index(
        &self,
        repository_url: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Arc<Index>, ChartSourceError> {
        let key = match credentials {
            Some(credentials) => format!("{repository_url} {}", credentials.cache_key()),
            None => repository_url.to_owned(),
        };
        let slot = self
            .indexes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(cached) = slot.as_ref()
            && cached.fetched.elapsed() < self.interval
        {
            return Ok(cached.index.clone());
        }
        let url = format!("{}/index.yaml", repository_url.trim_end_matches('/'));
        let bytes = self
            .get(&url, MAX_INDEX_BYTES, "index", credentials)
            .await?;
        let text = String::from_utf8(bytes).map_err(|_| {
            ChartSourceError::Repository(RepositoryError::InvalidIndex("not UTF-8".into()))
        })?;
        let index = Arc::new(
            tokio::task::spawn_blocking(move || repository::parse_index(&text))
                .await
                .map_err(|e| ChartSourceError::Cache(e.to_string()))??,
        );
        *slot = Some(CachedIndex {
            fetched: Instant::now(),
            index: index.clone(),
        });
        Ok(index)
    }

    /// GETs `url` (with `credentials`), refusing a body over `max` bytes without reading more
    /// than that.
    async fn get(
        &self,
        url: &str,
        max: usize,
        kind: &'static str,
        credentials: Option<&Credentials>,
    ) -> Result<Vec<u8>, ChartSourceError> {
        let result = self.get_bounded(url, max, credentials).await;
        self.count(kind, if result.is_ok() { "fetched" } else { "error" });
        result
    }

    async fn get_bounded(
        &self,
        url: &str,
        max: usize,
        credentials: Option<&Credentials>,
    ) -> Result<Vec<u8>, ChartSourceError> {
        let fail = |message: String| ChartSourceError::Fetch {
            url: url.to_owned(),
            message,
        };
        let mut request = self.http.get(url);
        if let Some(credentials) = credentials {
            request = credentials.apply(request);
        }
        let mut response = request.send().await.map_err(|e| fail(without_url(&e)))?;
        let status = response.status();
        if matches!(status.as_u16(), 401 | 403) {
            return Err(ChartSourceError::Unauthorized {
                url: url.to_owned(),
                status: status.to_string(),
                had_credentials: credentials.is_some(),
            });
        }
        if !status.is_success() {
            return Err(fail(format!("the server answered {status}")));
        }
        if response.content_length().is_some_and(|n| n > max as u64) {
            return Err(fail(format!("larger than {} MiB", max >> 20)));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| fail(without_url(&e)))? {
            if body.len() + chunk.len() > max {
                return Err(fail(format!("larger than {} MiB", max >> 20)));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Unpacks a verified archive into `entry_dir` (through a staging folder, so that a reader
    /// never sees half a chart).
    async fn unpack(
        &self,
        entry_dir: &Path,
        url: &str,
        digest: &str,
        archive: Vec<u8>,
    ) -> Result<PathBuf, ChartSourceError> {
        let cache = |e: std::io::Error| ChartSourceError::Cache(e.to_string());
        let staging = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(&self.dir)
            .map_err(cache)?;
        let into = staging.path().join("chart");
        std::fs::create_dir_all(&into).map_err(cache)?;
        let unpacked = {
            let into = into.clone();
            tokio::task::spawn_blocking(move || {
                unpack_chart(&archive, &into, ArchiveLimits::default())
            })
            .await
            .map_err(|e| ChartSourceError::Cache(e.to_string()))?
        };
        let chart = unpacked.map_err(|reason| ChartSourceError::Refused {
            url: url.to_owned(),
            reason,
        })?;
        let folder = chart
            .file_name()
            .map(|n| n.to_owned())
            .ok_or_else(|| ChartSourceError::Cache("an unnamed chart folder".into()))?;
        std::fs::write(staging.path().join("digest"), digest).map_err(cache)?;
        match std::fs::rename(staging.path(), entry_dir) {
            Ok(()) => {
                // The staging folder is now the entry; nothing left to remove.
                let _ = staging.keep();
            }
            Err(_) if entry_dir.is_dir() => {}
            Err(e) => return Err(cache(e)),
        }
        Ok(entry_dir.join("chart").join(folder))
    }

    /// Removes the least recently used charts beyond the bound.
    fn evict(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut charts: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if charts.len() <= MAX_CACHED_CHARTS {
            return;
        }
        charts.sort();
        for (_, path) in &charts[..charts.len() - MAX_CACHED_CHARTS] {
            let _ = std::fs::remove_dir_all(path);
        }
    }

    fn count(&self, kind: &'static str, result: &'static str) {
        if let Some(metrics) = &self.metrics {
            metrics.chart_fetch("repository", kind, result);
        }
    }
}

/// A cache entry's chart folder and digest, if it is complete.
fn cached_chart(entry_dir: &Path) -> Option<(PathBuf, String)> {
    let digest = std::fs::read_to_string(entry_dir.join("digest")).ok()?;
    let folder = std::fs::read_dir(entry_dir.join("chart"))
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| e.path().is_dir())?;
    Some((folder.path(), digest))
}

/// Marks a cache entry as just used (its modification time orders eviction).
fn touch(entry_dir: &Path) {
    let _ =
        std::fs::File::open(entry_dir).and_then(|f| f.set_modified(std::time::SystemTime::now()));
}

/// reqwest's error with its causes (connection refused, timed out, …).
fn without_url(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_read_from_secret_keys_and_never_shown() {
        let data = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        k8s_openapi::ByteString(v.as_bytes().to_vec()),
                    )
                })
                .collect()
        };
        let basic =
            Credentials::from_secret_data(&data(&[("username", "u"), ("password", "p4ss\n")]));
        assert_eq!(
            basic,
            Some(Credentials::Basic {
                username: "u".into(),
                password: "p4ss".into()
            })
        );
        assert_eq!(format!("{basic:?}"), "Some(Credentials(***))");
        assert_eq!(
            Credentials::from_secret_data(&data(&[("token", "t")])),
            Some(Credentials::Bearer("t".into()))
        );
        assert_eq!(
            Credentials::from_secret_data(&data(&[("username", "u")])),
            None
        );
        let other = Credentials::Bearer("u".into());
        assert_ne!(basic.unwrap().cache_key(), other.cache_key());
    }

    #[test]
    fn credentials_stay_with_the_repository_origin() {
        assert_eq!(
            origin("https://charts.example.com/stable"),
            "https://charts.example.com"
        );
        assert_eq!(
            origin("http://127.0.0.1:8080/charts/x.tgz"),
            "http://127.0.0.1:8080"
        );
        assert_ne!(
            origin("https://cdn.example.net/x.tgz"),
            origin("https://charts.example.com/stable")
        );
    }
}
