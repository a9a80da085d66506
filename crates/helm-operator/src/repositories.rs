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

/// How many HTTP or OCI clients with their own CA or credentials are kept; past this many the
/// cache starts again rather than grow without bound.
const MAX_CLIENTS: usize = 256;

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
    /// The CA of `spec.chart.caSecretRef` is not a PEM certificate bundle.
    #[error("the CA in the Secret named by spec.chart.caSecretRef is unusable: {0}")]
    InvalidCa(String),
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

/// What a release brings to reach its repository: credentials, and a CA to trust.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// From `spec.chart.secretRef`.
    pub credentials: Option<Credentials>,
    /// PEM certificates from `spec.chart.caSecretRef`, trusted besides the system's.
    pub ca: Option<Vec<u8>>,
}

impl Access {
    /// Tells accesses apart without holding their secrets: what was fetched with one is
    /// cached apart from what was fetched with another, or with none.
    fn cache_key(&self) -> String {
        use sha2::Digest;
        let credentials = self
            .credentials
            .as_ref()
            .map(Credentials::cache_key)
            .unwrap_or_default();
        let ca = self
            .ca
            .as_ref()
            .map(|ca| hex::encode(sha2::Sha256::digest(ca)))
            .unwrap_or_default();
        format!("{credentials}/{ca}")
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

/// Values fetched at most once per interval per key, shared: concurrent callers for one key wait
/// for a single fetch and all use its result (an error is not kept: the next caller tries again).
struct PerInterval<T> {
    interval: Duration,
    slots: std::sync::Mutex<HashMap<String, Slot<T>>>,
}

/// One key's last value and when it was fetched; its lock serialises the fetches.
type Slot<T> = Arc<Mutex<Option<(Instant, Arc<T>)>>>;

impl<T> PerInterval<T> {
    fn new(interval: Duration) -> Self {
        PerInterval {
            interval,
            slots: Default::default(),
        }
    }

    async fn get<E>(
        &self,
        key: String,
        fetch: impl Future<Output = Result<T, E>>,
    ) -> Result<Arc<T>, E> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some((fetched, value)) = slot.as_ref()
            && fetched.elapsed() < self.interval
        {
            return Ok(value.clone());
        }
        let value = Arc::new(fetch.await?);
        *slot = Some((Instant::now(), value.clone()));
        Ok(value)
    }
}

/// The repositories' indexes and the chart cache, shared by all reconciles.
pub struct Repositories {
    http: reqwest::Client,
    dir: PathBuf,
    allow_http: bool,
    metrics: Option<Arc<Metrics>>,
    /// Each repository's index (per access), fetched at most once per interval and shared.
    indexes: PerInterval<Index>,
    /// Per archive digest: one download at a time.
    downloads: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// HTTP clients that also trust a release's CA, by the CA's digest.
    with_ca: std::sync::Mutex<HashMap<String, reqwest::Client>>,
    /// OCI clients, by access.
    oci_clients: std::sync::Mutex<HashMap<String, oci_client::Client>>,
    /// The chart layer of each OCI reference (and access), read at most once per interval.
    manifests: PerInterval<oci_client::manifest::OciDescriptor>,
    /// Per OCI repository (and credentials): the last tag list and when it was listed.
    tags: PerInterval<Vec<String>>,
}

/// The media type of the layer holding a chart archive in an OCI image (`helm push`).
const HELM_CHART_LAYER: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";

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
        let http = http_builder().build()?;
        Ok(Repositories {
            http,
            dir,
            allow_http,
            metrics,
            indexes: PerInterval::new(interval),
            downloads: Default::default(),
            tags: PerInterval::new(interval),
            with_ca: Default::default(),
            oci_clients: Default::default(),
            manifests: PerInterval::new(interval),
        })
    }

    /// Resolves `chart`'s version in its repository or registry and returns the unpacked chart,
    /// fetching the index or tag list (at most once per interval) and the archive (once per
    /// digest) as needed.
    pub async fn chart(
        &self,
        chart: &RepositoryChart,
        access: &Access,
    ) -> Result<FetchedChart, ChartSourceError> {
        match (&chart.repository, &chart.name, &chart.oci) {
            (Some(repository), Some(name), None) => {
                self.repository_chart(repository, name, &chart.version, access)
                    .await
            }
            (None, None, Some(oci)) => self.oci_chart(oci, &chart.version, access).await,
            _ => Err(ChartSourceError::Repository(RepositoryError::InvalidIndex(
                "spec.chart sets neither repository and name nor oci".into(),
            ))),
        }
    }

    async fn repository_chart(
        &self,
        repository: &str,
        name: &str,
        version: &str,
        access: &Access,
    ) -> Result<FetchedChart, ChartSourceError> {
        if repository.starts_with("http://") && !self.allow_http {
            return Err(ChartSourceError::InsecureUrl(repository.to_owned()));
        }
        let index = self.index(repository, access).await?;
        let entry = repository::resolve(&index, name, version)?;
        let url = repository::archive_url(repository, name, entry)?;
        let key = match &entry.digest {
            Some(digest) => digest.to_ascii_lowercase(),
            // No digest in the index: the URL names the cache entry, and the download is
            // verified against nothing but what it is.
            None => hex::encode(<sha2::Sha256 as sha2::Digest>::digest(url.as_bytes())),
        };
        // Credentials go to the repository's origin only, as Helm sends them by default.
        let to_archive = Access {
            credentials: access
                .credentials
                .clone()
                .filter(|_| origin(&url) == origin(repository)),
            ca: access.ca.clone(),
        };
        let download = self.get(&url, MAX_ARCHIVE_BYTES, "archive", &to_archive);
        self.archive(
            &key,
            &entry.version,
            &url,
            entry.digest.as_deref(),
            download,
        )
        .await
    }

    /// The chart archive `key` names, from the cache, or downloaded by `download`, verified
    /// against `expected` (hex SHA-256) and unpacked; one download per key at a time.
    async fn archive(
        &self,
        key: &str,
        version: &str,
        url: &str,
        expected: Option<&str>,
        download: impl Future<Output = Result<Vec<u8>, ChartSourceError>>,
    ) -> Result<FetchedChart, ChartSourceError> {
        let lock = self
            .downloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_default()
            .clone();
        let _downloading = lock.lock().await;
        let entry_dir = self.dir.join(key);
        if let Some((dir, digest)) = cached_chart(&entry_dir) {
            self.count("archive", "cached");
            touch(&entry_dir);
            return Ok(FetchedChart {
                version: version.to_owned(),
                digest,
                dir,
            });
        }
        let archive = download.await?;
        let digest = repository::verify(&archive, expected)?;
        let dir = self.unpack(&entry_dir, url, &digest, archive).await?;
        self.evict();
        Ok(FetchedChart {
            version: version.to_owned(),
            digest,
            dir,
        })
    }

    /// A chart in an OCI registry (as `helm push` stores it): the newest tag matching
    /// `version`, its manifest, and the chart layer.
    async fn oci_chart(
        &self,
        oci: &str,
        version: &str,
        access: &Access,
    ) -> Result<FetchedChart, ChartSourceError> {
        let credentials = access.credentials.as_ref();
        let (registry, repository) = oci
            .strip_prefix("oci://")
            .and_then(|rest| rest.split_once('/'))
            .ok_or_else(|| ChartSourceError::Fetch {
                url: oci.to_owned(),
                message: "not an oci://<registry>/<path> reference".into(),
            })?;
        let auth = match credentials {
            Some(Credentials::Basic { username, password }) => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
            Some(Credentials::Bearer(token)) => {
                oci_client::secrets::RegistryAuth::Bearer(token.clone())
            }
            None => oci_client::secrets::RegistryAuth::Anonymous,
        };
        let client = self.oci_client(access)?;
        let fail = |what: &str, e: oci_client::errors::OciDistributionError| {
            use oci_client::errors::OciDistributionError as E;
            let refused = match &e {
                E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => true,
                E::ServerError { code, .. } => matches!(code, 401 | 403),
                _ => false,
            };
            if refused {
                ChartSourceError::Unauthorized {
                    url: format!("{oci} ({what})"),
                    status: e.to_string(),
                    had_credentials: credentials.is_some(),
                }
            } else {
                ChartSourceError::Fetch {
                    url: format!("{oci} ({what})"),
                    message: e.to_string(),
                }
            }
        };
        let tags = self
            .oci_tags(&client, registry, repository, &auth, access)
            .await
            .map_err(|e| fail("tags", e))?;
        // Helm stores `+` of a version as `_` in a tag.
        let versions: Vec<String> = tags.iter().map(|t| t.replace('_', "+")).collect();
        let chosen = repository::resolve_version(&versions, oci, version)?;
        let tag = chosen.replace('+', "_");
        let reference =
            oci_client::Reference::with_tag(registry.to_owned(), repository.to_owned(), tag);
        // A tag's manifest is read once per interval too: a chart already on disk costs no
        // request per reconcile.
        let key = format!("{reference} {}", access.cache_key());
        let layer = self
            .manifests
            .get(key, async {
                let (manifest, _) = client
                    .pull_image_manifest(&reference, &auth)
                    .await
                    .map_err(|e| fail("manifest", e))?;
                manifest
                    .layers
                    .into_iter()
                    .find(|l| l.media_type == HELM_CHART_LAYER)
                    .ok_or_else(|| ChartSourceError::Refused {
                        url: format!("{oci}:{chosen}"),
                        reason: format!(
                            "the image has no {HELM_CHART_LAYER} layer: it is not a Helm chart"
                        ),
                    })
            })
            .await?;
        if layer.size < 0 || layer.size as u64 > MAX_ARCHIVE_BYTES as u64 {
            return Err(ChartSourceError::Fetch {
                url: format!("{oci}:{chosen}"),
                message: format!(
                    "the chart layer is larger than {} MiB",
                    MAX_ARCHIVE_BYTES >> 20
                ),
            });
        }
        let expected = layer
            .digest
            .strip_prefix("sha256:")
            .map(str::to_owned)
            .ok_or_else(|| ChartSourceError::Refused {
                url: format!("{oci}:{chosen}"),
                reason: format!("unsupported layer digest {}", layer.digest),
            })?;
        let url = format!("{oci}:{chosen}");
        let download = async {
            let result = async {
                let mut blob = client
                    .pull_blob_stream(&reference, &*layer)
                    .await
                    .map_err(|e| fail("chart layer", e))?;
                let mut body = Vec::new();
                while let Some(chunk) = futures::StreamExt::next(&mut blob.stream).await {
                    let chunk = chunk.map_err(|e| ChartSourceError::Fetch {
                        url: url.clone(),
                        message: e.to_string(),
                    })?;
                    append_bounded(&mut body, &chunk, MAX_ARCHIVE_BYTES, &url)?;
                }
                Ok(body)
            }
            .await;
            self.count("archive", if result.is_ok() { "fetched" } else { "error" });
            result
        };
        self.archive(&expected, &chosen, &url, Some(&expected), download)
            .await
    }

    /// The tags of an OCI repository, listed at most once per interval (per credentials).
    async fn oci_tags(
        &self,
        client: &oci_client::Client,
        registry: &str,
        repository: &str,
        auth: &oci_client::secrets::RegistryAuth,
        access: &Access,
    ) -> Result<Arc<Vec<String>>, oci_client::errors::OciDistributionError> {
        let key = format!("oci://{registry}/{repository} {}", access.cache_key());
        self.tags
            .get(key, async {
                let reference = oci_client::Reference::with_tag(
                    registry.to_owned(),
                    repository.to_owned(),
                    "latest".to_owned(),
                );
                let result = client.list_tags(&reference, auth, None, None).await;
                self.count("index", if result.is_ok() { "fetched" } else { "error" });
                result.map(|response| response.tags)
            })
            .await
    }

    /// The OCI client for `access`: plain http only where the operator allows it; the release's
    /// CA trusted. Kept per access (credentials and CA), because a client keeps the first
    /// credentials it is given for a registry: one shared client would lend them to others.
    fn oci_client(&self, access: &Access) -> Result<oci_client::Client, ChartSourceError> {
        let key = access.cache_key();
        let mut clients = self.oci_clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let protocol = if self.allow_http {
            oci_client::client::ClientProtocol::Http
        } else {
            oci_client::client::ClientProtocol::Https
        };
        let extra_root_certificates = match &access.ca {
            Some(ca) => {
                // Refuse a CA that does not parse here, with the same message as for http.
                certificates(ca)?;
                vec![oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: ca.clone(),
                }]
            }
            None => Vec::new(),
        };
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol,
            extra_root_certificates,
            ..Default::default()
        });
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// The HTTP client for `access`: the shared one, or one that also trusts its CA (kept per
    /// CA, so that its connections are reused).
    fn http_client(&self, access: &Access) -> Result<reqwest::Client, ChartSourceError> {
        let Some(ca) = &access.ca else {
            return Ok(self.http.clone());
        };
        use sha2::Digest;
        let key = hex::encode(sha2::Sha256::digest(ca));
        let mut clients = self.with_ca.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = http_builder()
            .tls_certs_merge(certificates(ca)?)
            .build()
            .map_err(|e| ChartSourceError::InvalidCa(e.to_string()))?;
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// The repository's index, fetched unless it was within the interval.
    async fn index(
        &self,
        repository_url: &str,
        access: &Access,
    ) -> Result<Arc<Index>, ChartSourceError> {
        let key = format!("{repository_url} {}", access.cache_key());
        self.indexes
            .get(key, async {
                let url = format!("{}/index.yaml", repository_url.trim_end_matches('/'));
                let bytes = self.get(&url, MAX_INDEX_BYTES, "index", access).await?;
                let text = String::from_utf8(bytes).map_err(|_| {
                    ChartSourceError::Repository(RepositoryError::InvalidIndex("not UTF-8".into()))
                })?;
                tokio::task::spawn_blocking(move || repository::parse_index(&text))
                    .await
                    .map_err(|e| ChartSourceError::Cache(e.to_string()))?
                    .map_err(ChartSourceError::from)
            })
            .await
    }

    /// GETs `url` (with `access`), refusing a body over `max` bytes without reading more than
    /// that.
    async fn get(
        &self,
        url: &str,
        max: usize,
        kind: &'static str,
        access: &Access,
    ) -> Result<Vec<u8>, ChartSourceError> {
        let result = self.get_bounded(url, max, access).await;
        self.count(kind, if result.is_ok() { "fetched" } else { "error" });
        result
    }

    async fn get_bounded(
        &self,
        url: &str,
        max: usize,
        access: &Access,
    ) -> Result<Vec<u8>, ChartSourceError> {
        let fail = |message: String| ChartSourceError::Fetch {
            url: url.to_owned(),
            message,
        };
        let mut request = self.http_client(access)?.get(url);
        if let Some(credentials) = &access.credentials {
            request = credentials.apply(request);
        }
        let mut response = request.send().await.map_err(|e| fail(error_chain(&e)))?;
        let status = response.status();
        if matches!(status.as_u16(), 401 | 403) {
            return Err(ChartSourceError::Unauthorized {
                url: url.to_owned(),
                status: status.to_string(),
                had_credentials: access.credentials.is_some(),
            });
        }
        if !status.is_success() {
            return Err(fail(format!("the server answered {status}")));
        }
        if response.content_length().is_some_and(|n| n > max as u64) {
            return Err(fail(format!("larger than {} MiB", max >> 20)));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| fail(error_chain(&e)))? {
            append_bounded(&mut body, &chunk, max, url)?;
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

/// The HTTP client's settings, for the shared client and those trusting a CA.
fn http_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .user_agent(concat!("helm-operator/", env!("CARGO_PKG_VERSION")))
}

/// The certificates of a PEM bundle.
fn certificates(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, ChartSourceError> {
    match reqwest::Certificate::from_pem_bundle(pem) {
        Ok(certificates) if !certificates.is_empty() => Ok(certificates),
        Ok(_) => Err(ChartSourceError::InvalidCa("no certificate in it".into())),
        Err(e) => Err(ChartSourceError::InvalidCa(e.to_string())),
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

/// Appends `chunk` unless the body would grow past `max` bytes (the whole body is never held
/// beyond the bound, whatever the server claimed).
fn append_bounded(
    body: &mut Vec<u8>,
    chunk: &[u8],
    max: usize,
    url: &str,
) -> Result<(), ChartSourceError> {
    if body.len() + chunk.len() > max {
        return Err(ChartSourceError::Fetch {
            url: url.to_owned(),
            message: format!("larger than {} MiB", max >> 20),
        });
    }
    body.extend_from_slice(chunk);
    Ok(())
}

/// reqwest's error with its causes (connection refused, timed out, …).
fn error_chain(error: &reqwest::Error) -> String {
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
