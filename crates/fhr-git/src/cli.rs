//! The git flags both daemons take: one definition, so `--help` and `docs/flags.md` agree.

use clap::Args;
use fhr_types::duration::parse_interval;
use std::path::PathBuf;
use std::time::Duration;

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
    pub fn source(&self) -> Result<crate::Source, crate::GitError> {
        let auth = match (
            &self.ssh_key_path,
            &self.known_hosts_path,
            &self.git_password_file,
        ) {
            (Some(key), Some(known_hosts), _) => crate::Auth::Ssh {
                key_path: key.clone(),
                known_hosts_path: known_hosts.clone(),
            },
            (Some(_), None, _) | (None, Some(_), _) => {
                return Err(crate::GitError::InvalidUrl(
                    "--ssh-key-path and --known-hosts-path go together".into(),
                ));
            }
            (None, None, Some(password)) => crate::Auth::Basic {
                username_file: self.git_username_file.clone(),
                password_file: password.clone(),
            },
            (None, None, None) => crate::Auth::None,
        };
        crate::Source::new(
            &self.git_url,
            &self.git_branch,
            auth,
            self.git_allow_insecure_http,
        )
    }
}
