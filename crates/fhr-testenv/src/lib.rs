//! A real local environment for end-to-end tests and the demo.
//!
//! - [`ControlPlane`]: etcd + kube-apiserver on loopback, RBAC on, admin kubeconfig, ServiceAccount
//!   tokens; [`shared_control_plane`] gives the tests of one binary a single instance.
//! - [`GitServer`]: repositories over smart HTTP with optional basic auth.
//! - [`ChartRepository`]: a Helm chart repository (static files) counting its requests.
//! - [`tools`]: where kube-apiserver, etcd and helm are found, and how `cargo xtask tools` caches them.
//!
//! Every process started here dies with the process that started it, panics included.

pub mod chart_repository;
pub mod control_plane;
pub mod git_server;
pub mod http;
pub mod pki;
pub mod process;
pub mod prometheus;
pub mod ssh_server;
pub mod tools;
pub mod workdir;

pub use chart_repository::{ChartRepository, OciRegistry};
pub use control_plane::{
    Audit, ControlPlane, Options as ControlPlaneOptions, StartError, client_from_kubeconfig,
    create_namespace, free_port, free_ports,
};
pub use git_server::{Behaviour as GitServerBehaviour, GitServer, GitServerOptions, TestRepo};
pub use process::OwnedChild;
pub use ssh_server::SshServer;
pub use tools::Tools;
pub use workdir::WorkDir;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The control plane shared by every test in this test binary, started on first use.
///
/// Panics with the reason (and the end of the failing process's log) when it cannot start: a
/// missing binary fails the test, it never skips it.
pub async fn shared_control_plane() -> &'static ControlPlane {
    static SHARED: tokio::sync::OnceCell<ControlPlane> = tokio::sync::OnceCell::const_new();
    SHARED
        .get_or_init(|| async {
            let options = ControlPlaneOptions {
                audit: Audit::ConfigMapAndSecretWrites,
            };
            match ControlPlane::start_with(options).await {
                Ok(cp) => cp,
                Err(e) => panic!("cannot start the test control plane: {e}"),
            }
        })
        .await
}

/// A name unique within this test process, for namespaces and releases: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The repository's `examples/` folder.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

impl ControlPlane {
    /// A `helm` (v4) command aimed at this control plane, with its own cache, config and data
    /// folders.
    pub fn helm(&self) -> std::process::Command {
        self.helm_of(&self.tools().helm)
    }

    /// The same with helm v3, which users still run.
    pub fn helm3(&self) -> std::process::Command {
        self.helm_of(&self.tools().helm3)
    }

    fn helm_of(&self, binary: &Path) -> std::process::Command {
        let home = self.dir().join("helm");
        let mut command = std::process::Command::new(binary);
        command
            .env("KUBECONFIG", self.kubeconfig())
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        command
    }
}
