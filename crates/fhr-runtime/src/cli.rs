//! Flags both daemons take. Each flag has one definition here; `--help` and `docs/` describe it.

use clap::{Args, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Longest interval a flag accepts: longer is a typo, not a wish.
const MAX_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Parses a positive duration such as `30s`, `5m` or `1h30m` (at most a week).
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    fhr_types::duration::parse_duration(text, MAX_INTERVAL).map_err(|e| e.to_string())
}

/// Where the git repository is and how to reach it.
#[derive(Args, Debug, Clone)]
pub struct GitArgs {
    /// URL of the git repository (https://, ssh:// or user@host:path).
    #[arg(long, env = "GIT_URL")]
    pub git_url: String,

    /// Branch to follow.
    #[arg(long, env = "GIT_BRANCH", default_value = "master")]
    pub git_branch: String,

    /// How often to fetch the branch.
    #[arg(long, env = "GIT_POLL_INTERVAL", default_value = "1m", value_parser = parse_interval)]
    pub git_poll_interval: Duration,

    /// How long one fetch may take before it is abandoned and retried.
    #[arg(long, env = "GIT_TIMEOUT", default_value = "60s", value_parser = parse_interval)]
    pub git_timeout: Duration,

    /// File holding the HTTPS user name (basic auth); read at each fetch so it can be rotated.
    #[arg(long, env = "GIT_USERNAME_FILE")]
    pub git_username_file: Option<PathBuf>,

    /// File holding the HTTPS password or token; read at each fetch, never logged.
    #[arg(long, env = "GIT_PASSWORD_FILE")]
    pub git_password_file: Option<PathBuf>,

    /// SSH private key (a deploy key) for ssh:// URLs.
    #[arg(long, env = "SSH_KEY_PATH")]
    pub ssh_key_path: Option<PathBuf>,

    /// known_hosts file that must hold the git host's key for ssh:// URLs (no trust on first use).
    #[arg(long, env = "KNOWN_HOSTS_PATH")]
    pub known_hosts_path: Option<PathBuf>,

    /// Allow credentials over plain http:// (only for a git server on a trusted network).
    #[arg(long, env = "GIT_ALLOW_INSECURE_HTTP")]
    pub git_allow_insecure_http: bool,
}

impl GitArgs {
    /// The git source these flags describe; refuses credentials in the URL, over plain http://
    /// without `--git-allow-insecure-http`, and ssh:// without a key and known_hosts.
    pub fn source(&self) -> Result<fhr_git::Source, fhr_git::GitError> {
        let auth = match (
            &self.ssh_key_path,
            &self.known_hosts_path,
            &self.git_password_file,
        ) {
            (Some(key), Some(known_hosts), _) => fhr_git::Auth::Ssh {
                key_path: key.clone(),
                known_hosts_path: known_hosts.clone(),
            },
            (Some(_), None, _) | (None, Some(_), _) => {
                return Err(fhr_git::GitError::InvalidUrl(
                    "--ssh-key-path and --known-hosts-path go together".into(),
                ));
            }
            (None, None, Some(password)) => fhr_git::Auth::Basic {
                username_file: self.git_username_file.clone(),
                password_file: password.clone(),
            },
            (None, None, None) => fhr_git::Auth::None,
        };
        fhr_git::Source::new(
            &self.git_url,
            &self.git_branch,
            auth,
            self.git_allow_insecure_http,
        )
    }
}

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
