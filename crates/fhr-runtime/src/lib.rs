//! Runtime plumbing that flux-agent and helm-operator share, written once: command-line flags
//! common to both, logging, the admin HTTP server and readiness, waiting for the API, shutdown.

pub mod admin;
pub mod cli;
pub mod kube;
pub mod logging;
pub mod shutdown;

pub use admin::Health;
pub use tokio_util::sync::CancellationToken;
