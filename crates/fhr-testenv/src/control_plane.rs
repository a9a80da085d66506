//! A real Kubernetes control plane on loopback: etcd plus kube-apiserver, RBAC on, ServiceAccount
//! token signing set up, admin credentials in a kubeconfig file.

use crate::pki::Pki;
use crate::process::OwnedChild;
use crate::tools::{MissingTool, Tools};
use crate::workdir::WorkDir;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long the control plane may take to become ready; generous for a loaded 2-core machine.
const START_DEADLINE: Duration = Duration::from_secs(120);
/// Start attempts: a free port found by binding can be taken by another process before we use it.
const START_ATTEMPTS: usize = 3;

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A binary is missing.
    #[error(transparent)]
    MissingTool(#[from] MissingTool),
    /// Files or processes could not be created.
    #[error("control plane: {0}")]
    Io(#[from] std::io::Error),
    /// Certificates could not be generated.
    #[error("control plane certificates: {0}")]
    Pki(#[from] rcgen::Error),
    /// A process ended or never became ready.
    #[error("{process} did not become ready: {reason}\n--- last lines of {log} ---\n{tail}")]
    NotReady {
        /// Which process.
        process: String,
        /// What was seen.
        reason: String,
        /// Its log file.
        log: String,
        /// The end of its log.
        tail: String,
    },
    /// The kubeconfig could not be turned into a client.
    #[error("control plane client: {0}")]
    Client(String),
}

/// How a control plane is started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// What the audit log ([`ControlPlane::audit_log`]) records.
    pub audit: Audit,
}

/// Which requests the API server writes to its audit log (metadata only: who asked for what,
/// never a body), one JSON line each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Audit {
    /// No audit log.
    #[default]
    Off,
    /// Writes to ConfigMaps and Secrets (chart objects and Helm's release records): enough to
    /// see as whom a release was installed, at little cost (the tests' shared control plane).
    ConfigMapAndSecretWrites,
    /// Every request, to tell clients apart by User-Agent (the benchmark).
    Everything,
}

impl Audit {
    /// The audit policy, if any.
    fn policy(self) -> Option<String> {
        let head =
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n";
        let rules = match self {
            Audit::Off => return None,
            Audit::ConfigMapAndSecretWrites => concat!(
                "- level: Metadata\n  verbs: [create, update, patch, delete]\n",
                "  resources: [{group: \"\", resources: [configmaps, secrets]}]\n",
                "- level: None\n",
            ),
            Audit::Everything => "- level: Metadata\n",
        };
        Some(format!("{head}{rules}"))
    }
}

/// The audit log's file name in the control plane's folder.
const AUDIT_LOG: &str = "audit.log";

/// A running etcd + kube-apiserver, stopped (and its files removed) when dropped.
pub struct ControlPlane {
    // Field order is drop order: the apiserver stops before etcd, and files go last.
    // In a Mutex so that a test holding the control plane shared can restart it.
    apiserver: std::sync::Mutex<OwnedChild>,
    etcd: OwnedChild,
    /// The apiserver's command line, to start it again (`restart_apiserver`).
    apiserver_args: Vec<String>,
    restarts: std::sync::atomic::AtomicU32,
    kubeconfig: PathBuf,
    server: String,
    tools: Tools,
    dir: WorkDir,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.server)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl ControlPlane {
    /// Starts a control plane and waits until the apiserver reports ready.
    pub async fn start() -> Result<ControlPlane, StartError> {
        Self::start_with(Options::default()).await
    }

    /// Starts a control plane with the given options.
    pub async fn start_with(options: Options) -> Result<ControlPlane, StartError> {
        let tools = Tools::locate()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(tools.clone(), &options).await {
                Ok(cp) => return Ok(cp),
                Err(e @ StartError::NotReady { .. })
                    if e.to_string().contains("address already in use") =>
                {
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    async fn start_once(tools: Tools, options: &Options) -> Result<ControlPlane, StartError> {
        let dir = WorkDir::create("control-plane")?;
        let pki = Pki::generate()?;
        let write = |name: &str, contents: &str| -> std::io::Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, contents)?;
            Ok(path)
        };
        let ca = write("ca.crt", &pki.ca_cert)?;
        let serving_cert = write("apiserver.crt", &pki.serving_cert)?;
        let serving_key = write("apiserver.key", &pki.serving_key)?;
        let sa_key = write("service-account.key", &pki.service_account_key)?;
        let sa_pub = write("service-account.pub", &pki.service_account_public_key)?;

        let [etcd_client, etcd_peer, apiserver_port] = free_ports()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let mut etcd_cmd = Command::new(&tools.etcd);
        etcd_cmd.args([
            "--name=default",
            &format!("--data-dir={}", dir.path().join("etcd").display()),
            &format!("--listen-client-urls={etcd_url}"),
            &format!("--advertise-client-urls={etcd_url}"),
            &format!("--listen-peer-urls={peer_url}"),
            &format!("--initial-advertise-peer-urls={peer_url}"),
            &format!("--initial-cluster=default={peer_url}"),
            // Durability across power loss is worthless for a throwaway store, and fsync is slow.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]);
        let mut etcd = OwnedChild::spawn("etcd", etcd_cmd, &dir.path().join("etcd.log"))?;
        wait_for_port(&mut etcd, etcd_client).await?;

        let server = format!("https://127.0.0.1:{apiserver_port}");
        let mut apiserver_args: Vec<String> = [
            &format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            &format!("--secure-port={apiserver_port}"),
            &format!("--tls-cert-file={}", serving_cert.display()),
            &format!("--tls-private-key-file={}", serving_key.display()),
            &format!("--client-ca-file={}", ca.display()),
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            &format!("--service-account-key-file={}", sa_pub.display()),
            &format!("--service-account-signing-key-file={}", sa_key.display()),
            "--service-cluster-ip-range=10.96.0.0/16",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=0",
        ]
        .map(|arg| arg.to_string())
        .to_vec();
        if let Some(policy) = options.audit.policy() {
            let policy = write("audit-policy.yaml", &policy)?;
            apiserver_args.extend([
                format!("--audit-policy-file={}", policy.display()),
                format!("--audit-log-path={}", dir.path().join(AUDIT_LOG).display()),
                "--audit-log-format=json".to_owned(),
            ]);
        }
        let mut apiserver = spawn_apiserver(&tools, &apiserver_args, dir.path(), 0)?;

        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &server,
            &pki.ca_cert,
            Credentials::Certificate {
                cert: &pki.admin_cert,
                key: &pki.admin_key,
            },
        )?;
        let client = client_from_kubeconfig(&kubeconfig).await?;
        wait_ready(&client, &mut apiserver).await?;
        Ok(ControlPlane {
            apiserver: std::sync::Mutex::new(apiserver),
            etcd,
            apiserver_args,
            restarts: Default::default(),
            kubeconfig,
            server,
            tools,
            dir,
        })
    }

    /// Kills kube-apiserver as a crash would (SIGKILL) and starts it again on the same port and
    /// etcd, as a kubelet restarting a static pod does; returns once it is ready.
    pub async fn restart_apiserver(&self) -> Result<(), StartError> {
        self.apiserver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kill();
        let restart = 1 + self
            .restarts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut apiserver =
            spawn_apiserver(&self.tools, &self.apiserver_args, self.dir.path(), restart)?;
        let client = client_from_kubeconfig(&self.kubeconfig).await?;
        wait_ready(&client, &mut apiserver).await?;
        *self.apiserver.lock().unwrap_or_else(|e| e.into_inner()) = apiserver;
        Ok(())
    }

    /// The admin kubeconfig file (for `kubectl`, `helm` and the daemons under test).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The apiserver URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The binaries this control plane was started with (and the `helm` the tests use).
    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// A folder owned by this control plane, removed with it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The running apiserver's log file.
    pub fn apiserver_log(&self) -> PathBuf {
        self.apiserver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .log_path()
            .to_owned()
    }

    /// The apiserver's audit log (as [`Options::audit`] says).
    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join(AUDIT_LOG)
    }

    /// The etcd process id (tests use it to check the process is gone).
    pub fn etcd_pid(&self) -> u32 {
        self.etcd.id()
    }

    /// The kube-apiserver process id.
    pub fn apiserver_pid(&self) -> u32 {
        self.apiserver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .id()
    }

    /// An admin client. Made anew per call: a client belongs to the async runtime that made it.
    pub async fn client(&self) -> kube::Client {
        client_from_kubeconfig(&self.kubeconfig)
            .await
            .expect("the control plane's own kubeconfig is valid")
    }

    /// Mints a token for a ServiceAccount (creating it if needed) and writes a kubeconfig that
    /// uses it, so a daemon under test runs with that account's rights instead of the admin's.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<PathBuf, kube::Error> {
        let client = self.client().await;
        let accounts: Api<ServiceAccount> = Api::namespaced(client, namespace);
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Some(vec!["https://kubernetes.default.svc".into()]),
                expiration_seconds: Some(24 * 3600),
                ..Default::default()
            }
            .into(),
            ..Default::default()
        };
        let token = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await?
            .status
            .and_then(|s| s.token)
            .unwrap_or_default();
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{namespace}-{name}"));
        let ca = std::fs::read_to_string(self.dir.path().join("ca.crt"))
            .expect("the control plane's CA file exists");
        write_kubeconfig(&path, &self.server, &ca, Credentials::Token(&token))
            .expect("write a kubeconfig into the control plane's folder");
        Ok(path)
    }
}

/// Creates a namespace (no error if it exists).
pub async fn create_namespace(client: &kube::Client, name: &str) -> Result<(), kube::Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// A kube client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, StartError> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| StartError::Client(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| StartError::Client(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| StartError::Client(e.to_string()))
}

enum Credentials<'a> {
    Certificate { cert: &'a str, key: &'a str },
    Token(&'a str),
}

/// Writes a kubeconfig (JSON, which every YAML reader accepts) with the file mode 0600.
fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    credentials: Credentials<'_>,
) -> std::io::Result<()> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let user = match credentials {
        Credentials::Certificate { cert, key } => serde_json::json!({
            "client-certificate-data": b64(cert),
            "client-key-data": b64(key),
        }),
        Credentials::Token(token) => serde_json::json!({ "token": token }),
    };
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "flux-helm-test", "cluster": {
            "server": server,
            "certificate-authority-data": b64(ca_pem),
        }}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "flux-helm-test", "context": {"cluster": "flux-helm-test", "user": "user"}}],
        "current-context": "flux-helm-test",
    });
    crate::workdir::write_private(path, kubeconfig.to_string().as_bytes())
}

/// A free loopback port (a race with another process taking it remains; callers that start a
/// server on it retry or fail clearly).
pub fn free_port() -> std::io::Result<u16> {
    free_ports::<1>().map(|[port]| port)
}

/// `N` distinct free loopback ports.
pub fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    // Hold every listener until all ports are chosen so that the N ports differ.
    let listeners = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

fn not_ready(child: &OwnedChild, reason: impl Into<String>) -> StartError {
    StartError::NotReady {
        process: child.name().to_owned(),
        reason: reason.into(),
        log: child.log_path().display().to_string(),
        tail: child.log_tail(30),
    }
}

async fn wait_for_port(child: &mut OwnedChild, port: u16) -> Result<(), StartError> {
    let deadline = Instant::now() + START_DEADLINE;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if let Some(status) = child.try_wait() {
            return Err(not_ready(child, format!("exited with {status}")));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(not_ready(
                child,
                format!("port {port} not open after {START_DEADLINE:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts kube-apiserver with `args`; its log is `kube-apiserver.log` (`-<restart>` after the first).
fn spawn_apiserver(
    tools: &Tools,
    args: &[String],
    dir: &Path,
    restart: u32,
) -> std::io::Result<OwnedChild> {
    let mut command = Command::new(&tools.kube_apiserver);
    command.args(args);
    let log = match restart {
        0 => "kube-apiserver.log".to_owned(),
        n => format!("kube-apiserver-{n}.log"),
    };
    OwnedChild::spawn("kube-apiserver", command, &dir.join(log))
}

async fn wait_ready(client: &kube::Client, apiserver: &mut OwnedChild) -> Result<(), StartError> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Some(status) = apiserver.try_wait() {
            return Err(not_ready(apiserver, format!("exited with {status}")));
        }
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .expect("a static request");
        let last = match client.request_text(request).await {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            Ok(body) => body,
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(not_ready(
                apiserver,
                format!("/readyz not ok after {START_DEADLINE:?}: {last}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
