//! What every daemon sets up and takes down the same way, so that each `main.rs` is wiring only:
//! the shutdown signal, readiness, the admin server with the daemon's metrics and routes, the state
//! folder, the API client, the Lease, and an orderly stop.

use crate::cli::{LeaderArgs, ServeArgs};
use crate::{CancellationToken, Health, admin, leader, shutdown};
use axum::Router;
use prometheus_client::registry::Registry;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Why a daemon could not start, or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state folder could not be made.
    #[error("state folder: {0}")]
    StateDir(#[source] std::io::Error),
    /// No Kubernetes client could be configured.
    #[error("Kubernetes client configuration: {0}")]
    Client(#[source] kube::Error),
    /// The admin server failed.
    #[error("admin server: {0}")]
    Admin(#[source] std::io::Error),
    /// Another replica took the Lease: the daemon stopped so that two never act at once.
    #[error("leadership lost; exiting to restart as a standby")]
    LeadershipLost,
}

/// A running daemon's common parts.
pub struct Daemon {
    /// Readiness, as `/readyz` shows it.
    pub health: Arc<Health>,
    /// Cancelled on SIGTERM or SIGINT, or when the Lease is lost.
    pub shutdown: CancellationToken,
    /// The API client, naming the daemon in its User-Agent.
    pub client: kube::Client,
    /// The configuration `client` was made from.
    pub config: kube::Config,
    /// The state folder (`--state-dir`, or a temporary one removed on exit).
    pub state_dir: PathBuf,
    _temporary: Option<tempfile::TempDir>,
    admin: JoinHandle<std::io::Result<()>>,
    lost: Option<CancellationToken>,
}

impl Daemon {
    /// Starts the admin server (metrics from `registry`, plus `routes`) not ready, makes the
    /// state folder and the API client. `name` and `version` name the daemon to the API server.
    pub async fn start(
        name: &str,
        version: &str,
        serve: &ServeArgs,
        state_dir: Option<&Path>,
        registry: Registry,
        routes: Router,
    ) -> Result<Daemon, DaemonError> {
        let shutdown = shutdown::on_signal();
        let health = Arc::new(Health::default());
        health.set_not_ready("starting");
        // Bound here, so that a port already taken stops the daemon at once, naming it.
        let listener = tokio::net::TcpListener::bind(serve.listen)
            .await
            .map_err(|e| {
                DaemonError::Admin(std::io::Error::new(
                    e.kind(),
                    format!("--listen {}: {e}", serve.listen),
                ))
            })?;
        let admin = tokio::spawn(admin::serve(
            listener,
            Arc::new(registry),
            health.clone(),
            routes,
            shutdown.clone(),
        ));
        let (state_dir, temporary) =
            crate::state_dir(state_dir, &format!("{name}-")).map_err(DaemonError::StateDir)?;
        let config = crate::kube::config(name, version)
            .await
            .map_err(DaemonError::Client)?;
        let client = kube::Client::try_from(config.clone()).map_err(DaemonError::Client)?;
        Ok(Daemon {
            health,
            shutdown,
            client,
            config,
            state_dir,
            _temporary: temporary,
            admin,
            lost: None,
        })
    }

    /// Takes the Lease `namespace/lease` as `args` say, waiting as a standby (not ready) until
    /// then; losing it later stops the daemon. False when shutdown came first.
    pub async fn lead(&mut self, args: &LeaderArgs, namespace: &str, lease: &str) -> bool {
        let Some(lost) = leader::lead(
            &self.client,
            args,
            namespace,
            lease,
            &self.health,
            &self.shutdown,
        )
        .await
        else {
            return false;
        };
        leader::stop_when_lost(&lost, &self.shutdown);
        self.lost = Some(lost);
        true
    }

    /// Cancelled when this replica loses the Lease it leads by (`None` before [`Daemon::lead`]).
    pub fn leadership_lost(&self) -> Option<CancellationToken> {
        self.lost.clone()
    }

    /// Stops in order: not ready, every task told to stop, the admin server joined. An error if
    /// the daemon stopped because it lost the Lease, so that it restarts as a standby.
    pub async fn finish(self) -> Result<(), DaemonError> {
        self.health.set_not_ready("shutting down");
        self.shutdown.cancel();
        match self.admin.await {
            Ok(served) => served.map_err(DaemonError::Admin)?,
            Err(join) => return Err(DaemonError::Admin(std::io::Error::other(join))),
        }
        if self.lost.as_ref().is_some_and(|l| l.is_cancelled()) {
            return Err(DaemonError::LeadershipLost);
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}
