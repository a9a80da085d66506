//! The admin HTTP server: `/metrics` (Prometheus text), `/healthz`, `/readyz`, plus any routes a
//! daemon adds (flux-agent's sync trigger and webhook). It faces whatever can reach the port, so
//! connections are capped and timed out: stalled clients cannot hold it.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Readiness as the daemon sees it: ready once its first sync is done, not ready while waiting
/// for the API server or the CRD, and not ready again once shutdown starts.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    reason: std::sync::Mutex<String>,
}

impl Health {
    /// Marks the daemon ready.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Marks the daemon not ready, saying why (shown by `/readyz`).
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.ready.store(false, Ordering::Relaxed);
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason.into();
    }

    /// Whether the daemon is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    health: Arc<Health>,
}

/// Most connections served at once: more are closed as they arrive, so a flood of idle or stalled
/// connections cannot exhaust the daemon's file descriptors.
pub const MAX_CONNECTIONS: usize = 512;
/// How long a client may take to send a request's headers (also the idle time allowed between
/// requests on a kept-alive connection) before the connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection may stay open, body reads included: a client trickling a body is cut
/// off, and a scraper simply reconnects.
pub const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves the admin endpoints (and `extra` routes) on `addr` until `shutdown` is cancelled, with
/// at most [`MAX_CONNECTIONS`] connections, each closed after [`HEADER_READ_TIMEOUT`] without a
/// complete request head or after [`MAX_CONNECTION_LIFETIME`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    health: Arc<Health>,
    extra: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "admin server listening");
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState { registry, health })
        .merge(extra);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refused: u64 = 0;
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors or a connection reset before accept: keep serving.
                Err(e) => {
                    tracing::warn!(error = %e, "admin server cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    refused,
                    max = MAX_CONNECTIONS,
                    "admin server full; closing new connections"
                );
            }
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(MAX_CONNECTION_LIFETIME, connection).await;
            drop(slot);
        });
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ok".to_owned())
    } else {
        let reason = state
            .health
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        )
    }
}
