//! Flags both daemons take (the git flags are `fhr_git::GitArgs`). Each flag has one definition;
//! `--help` and `docs/` describe it.

use clap::{Args, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;

pub use fhr_types::duration::parse_interval;

/// Log output format.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The admin HTTP server and logging.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:3030")]
    pub listen: SocketAddr,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, as in RUST_LOG (e.g. `info`, `helm_operator=debug,info`).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Leader election, so that of several replicas only one acts.
#[derive(Args, Debug, Clone)]
pub struct LeaderArgs {
    /// Take a Lease before acting; turn off only when exactly one replica runs.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Namespace of the Lease (default: the namespace this pod runs in, else `default`).
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// How long a Lease lasts without renewal before another replica may take over.
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = parse_interval)]
    pub lease_duration: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_and_absurd_ones_are_refused() {
        assert_eq!(parse_interval("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_interval("-5m").is_err());
        assert!(parse_interval("999999h").is_err());
    }
}
