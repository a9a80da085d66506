//! Runtime plumbing that flux-agent and helm-operator share, written once: command-line flags
//! common to both, logging setup, and (as the daemons grow) the admin HTTP server, the Kubernetes
//! client, leader election and graceful shutdown.

pub mod cli;
pub mod logging;
