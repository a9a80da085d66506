//! A Helm chart repository on loopback: a static folder (an `index.yaml` and chart archives, as
//! `helm package` and `helm repo index` write them) served over HTTP, counting the requests for
//! each file so that tests can tell how often the operator fetched what.

use crate::WorkDir;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

struct Shared {
    root: PathBuf,
    scheme: &'static str,
    requests: Mutex<HashMap<String, usize>>,
    /// `Authorization` header values accepted; none: anyone.
    accepted: Mutex<Vec<String>>,
}

/// The running repository; stops when dropped.
pub struct ChartRepository {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    _dir: WorkDir,
}

impl Drop for ChartRepository {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ChartRepository {
    /// Starts an empty repository on a free loopback port in the current tokio runtime.
    pub async fn start() -> std::io::Result<ChartRepository> {
        Self::start_with(None).await
    }

    /// Starts an empty repository served over HTTPS with a certificate for 127.0.0.1 signed by
    /// a fresh CA; the repository and the CA's PEM.
    pub async fn start_tls() -> std::io::Result<(ChartRepository, String)> {
        use rustls::pki_types::pem::PemObject;
        let pki = crate::pki::Pki::generate().map_err(std::io::Error::other)?;
        let certificates =
            rustls::pki_types::CertificateDer::pem_slice_iter(pki.serving_cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(std::io::Error::other)?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pki.serving_key.as_bytes())
            .map_err(std::io::Error::other)?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(std::io::Error::other)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let repository = Self::start_with(Some(acceptor)).await?;
        Ok((repository, pki.ca_cert))
    }

    async fn start_with(
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<ChartRepository> {
        let dir = WorkDir::create("chart-repository")?;
        let root = dir.path().join("srv");
        std::fs::create_dir_all(&root)?;
        let shared = Arc::new(Shared {
            root,
            scheme: if tls.is_some() { "https" } else { "http" },
            requests: Mutex::default(),
            accepted: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .fallback(serve)
            .with_state(shared.clone());
        let task = match tls {
            None => tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }),
            Some(acceptor) => tokio::spawn(async move {
                let _ = axum::serve(
                    TlsListener {
                        tcp: listener,
                        acceptor,
                    },
                    app,
                )
                .await;
            }),
        };
        Ok(ChartRepository {
            addr,
            shared,
            task,
            _dir: dir,
        })
    }

    /// The repository's URL (where `index.yaml` is).
    pub fn url(&self) -> String {
        format!("{}://{}/charts", self.shared.scheme, self.addr)
    }

    /// The folder served as the repository: put archives here and index it.
    pub fn dir(&self) -> &Path {
        &self.shared.root
    }

    /// From now on, answer 401 unless the request carries basic auth with `user` and `password`.
    pub fn require_basic_auth(&self, user: &str, password: &str) {
        use base64::Engine;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.shared
            .accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("Basic {encoded}"));
    }

    /// How many times `file` (`index.yaml`, `webapp-1.2.0.tgz`) was requested.
    pub fn requests(&self, file: &str) -> usize {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(file)
            .copied()
            .unwrap_or(0)
    }
}

/// TLS on accepted connections; a failed handshake (a client that does not trust the CA) only
/// drops that connection.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

async fn serve(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let Some(file) = request.uri().path().strip_prefix("/charts/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let relative = Path::new(file);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    let accepted = shared
        .accepted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !accepted.is_empty() && !given.is_some_and(|g| accepted.iter().any(|a| a == g)) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    *shared
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(file.to_owned())
        .or_default() += 1;
    match tokio::fs::read(shared.root.join(relative)).await {
        Ok(bytes) => bytes.into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// An OCI registry on loopback (`crane registry serve`, from the pinned go-containerregistry),
/// to which tests push charts with `helm push`.
pub struct OciRegistry {
    addr: SocketAddr,
    _process: crate::OwnedChild,
    _dir: WorkDir,
}

impl OciRegistry {
    /// Starts a registry on a free loopback port and waits until it answers. crane comes from
    /// `CRANE_BIN`, else the tool cache (`cargo xtask tools` builds it).
    pub async fn start() -> std::io::Result<OciRegistry> {
        let crane = std::env::var_os("CRANE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::tools::REGISTRY.cache_dir().join("crane"));
        if !crane.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{} is missing: run `cargo xtask tools` (or set CRANE_BIN)",
                    crane.display()
                ),
            ));
        }
        let dir = WorkDir::create("oci-registry")?;
        let port = crate::free_port()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut command = std::process::Command::new(&crane);
        command.args(["registry", "serve", "--address", &addr.to_string()]);
        let process = crate::OwnedChild::spawn("crane", command, &dir.path().join("crane.log"))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if std::time::Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "crane registry serve did not listen on {addr}: {}",
                    std::fs::read_to_string(dir.path().join("crane.log")).unwrap_or_default()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok(OciRegistry {
            addr,
            _process: process,
            _dir: dir,
        })
    }

    /// `host:port`, for `oci://<host>/<path>` references and `helm push`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}
