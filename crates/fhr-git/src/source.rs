//! Where the repository is and how to authenticate, with credentials kept out of every message.

use crate::GitError;
use gix::bstr::ByteSlice;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How to authenticate to the git host.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// HTTPS basic auth (user and password or token), read from files at each fetch.
    Basic {
        /// File holding the user name.
        username_file: Option<PathBuf>,
        /// File holding the password or token.
        password_file: PathBuf,
    },
    /// SSH with a deploy key, checking the host key against a known_hosts file.
    Ssh {
        /// The private key.
        key_path: PathBuf,
        /// The known_hosts file that must hold the host's key.
        known_hosts_path: PathBuf,
    },
}

/// Answers gix's credential requests from the configured files; never prompts.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    auth: Arc<Auth>,
    /// Scheme, host and port of the configured URL: the only place credentials are sent to.
    origin: Option<Origin>,
}

/// Where a URL points, as far as sending credentials is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    fn of(url: &gix::url::Url) -> Option<Origin> {
        Some(Origin {
            scheme: url.scheme.as_str().to_owned(),
            host: url.host()?.to_ascii_lowercase(),
            port: url.port_or_default(),
        })
    }
}

impl Credentials {
    pub(crate) fn answer(
        &self,
        action: gix::credentials::helper::Action,
    ) -> gix::Result<Option<gix::credentials::protocol::Outcome>> {
        use gix::credentials::helper::Action;
        let Action::Get(context) = action else {
            // Store and Erase: nothing is cached, so nothing to do.
            return Ok(None);
        };
        // Credentials go only to the configured origin: never to wherever a redirect points.
        let asked_for = context
            .url
            .as_ref()
            .and_then(|url| gix::url::parse(url.as_bstr()).ok())
            .and_then(|url| Origin::of(&url));
        if asked_for.is_none() || asked_for != self.origin {
            return Ok(None);
        }
        let Auth::Basic {
            username_file,
            password_file,
        } = self.auth.as_ref()
        else {
            return Ok(None);
        };
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .ok()
        };
        let Some(password) = read(password_file) else {
            return Ok(None);
        };
        let username = username_file
            .as_ref()
            .and_then(read)
            .unwrap_or_else(|| "git".to_owned());
        Ok(Some(gix::credentials::protocol::Outcome {
            identity: gix::sec::identity::Account {
                username,
                password,
                oauth_refresh_token: None,
            },
            next: context.into(),
        }))
    }
}

/// A git repository's location, branch and credentials.
#[derive(Debug, Clone)]
pub struct Source {
    /// The URL, without any credentials.
    pub url: String,
    /// The branch to follow.
    pub branch: String,
    pub(crate) credentials: Credentials,
    auth: Arc<Auth>,
}

impl Source {
    /// Checks the URL and branch and pairs them with credentials.
    ///
    /// Credentials embedded in the URL are refused (they would end up in logs and error
    /// messages); so is sending credentials over plain `http://` unless `allow_insecure_http`.
    pub fn new(
        url: &str,
        branch: &str,
        auth: Auth,
        allow_insecure_http: bool,
    ) -> Result<Source, GitError> {
        let parsed = gix::url::parse(url.as_bytes().as_bstr())
            .map_err(|_| GitError::InvalidUrl("the URL does not parse".into()))?;
        if parsed.password().is_some() {
            return Err(GitError::InvalidUrl(
                "the URL holds a password; put it in --git-password-file instead".into(),
            ));
        }
        let has_credentials = !matches!(auth, Auth::None);
        match parsed.scheme {
            gix::url::Scheme::Http if has_credentials && !allow_insecure_http => {
                return Err(GitError::InvalidUrl(
                    "refusing to send credentials over plain http://; use https:// or --git-allow-insecure-http".into(),
                ));
            }
            gix::url::Scheme::Ssh if !matches!(auth, Auth::Ssh { .. }) => {
                return Err(GitError::InvalidUrl(
                    "an ssh:// URL needs --ssh-key-path and --known-hosts-path".into(),
                ));
            }
            gix::url::Scheme::Http | gix::url::Scheme::Https | gix::url::Scheme::Ssh => {}
            gix::url::Scheme::File if !has_credentials => {}
            _ => {
                return Err(GitError::InvalidUrl(
                    "only https://, http:// and ssh:// URLs are supported".into(),
                ));
            }
        }
        if branch.is_empty() || branch.contains("..") || branch.starts_with('-') {
            return Err(GitError::InvalidUrl(format!(
                "invalid branch name {branch:?}"
            )));
        }
        let auth = Arc::new(auth);
        Ok(Source {
            url: url.to_owned(),
            branch: branch.to_owned(),
            credentials: Credentials {
                auth: auth.clone(),
                origin: Origin::of(&parsed),
            },
            auth,
        })
    }

    /// gix configuration for this source: no system or user config, no prompts, and for SSH an
    /// ssh command pinned to the deploy key and known_hosts with strict host key checking.
    pub(crate) fn config_overrides(&self) -> Vec<String> {
        let mut overrides = vec![
            "core.askPass=".to_owned(),
            "credential.helper=".to_owned(),
            "protocol.version=2".to_owned(),
        ];
        if let Auth::Ssh {
            key_path,
            known_hosts_path,
        } = self.auth.as_ref()
        {
            overrides.push(format!(
                "core.sshCommand=ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=15",
                shell_quote(key_path),
                shell_quote(known_hosts_path),
            ));
        }
        overrides
    }

    /// HTTP transport settings: every request abandoned after `timeout` (a server that never ends
    /// or trickles its response cannot hold a fetch), and no redirects followed when credentials
    /// are configured, so they can never be replayed to another host. `None` for non-HTTP URLs.
    pub(crate) fn http_options(
        &self,
        repo: &gix::Repository,
        timeout: Duration,
    ) -> Result<Option<Box<dyn std::any::Any>>, GitError> {
        use gix::protocol::transport::client::blocking_io::http;
        let Some(mut options) = repo
            .transport_options(self.url.as_str(), None)
            .map_err(|e| GitError::InvalidUrl(self.redact(&e.to_string())))?
        else {
            return Ok(None);
        };
        let Some(http_options) = options.downcast_mut::<http::Options>() else {
            return Ok(Some(options));
        };
        if !matches!(self.auth.as_ref(), Auth::None) {
            http_options.follow_redirects = http::options::FollowRedirects::None;
        }
        http_options.connect_timeout = Some(timeout.min(Duration::from_secs(20)));
        let backend = http::reqwest::Options {
            configure_client: Some(Box::new(move |builder| Ok(builder.timeout(timeout)))),
            configure_request: None,
        };
        http_options.backend = Some(Arc::new(std::sync::Mutex::new(backend)));
        Ok(Some(options))
    }

    /// Removes anything secret from a message before it is logged or reported.
    pub fn redact(&self, message: &str) -> String {
        let mut message = message.to_owned();
        if let Auth::Basic { password_file, .. } = self.auth.as_ref()
            && let Ok(password) = std::fs::read_to_string(password_file)
        {
            let password = password.trim_end_matches(['\r', '\n']);
            if !password.is_empty() {
                message = message.replace(password, "***");
            }
        }
        message
    }
}

fn shell_quote(path: &std::path::Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_url_are_refused() {
        let err = Source::new(
            "https://user:token@example.com/r.git",
            "main",
            Auth::None,
            false,
        )
        .unwrap_err();
        assert!(!err.to_string().contains("token"), "{err}");
    }

    #[test]
    fn credentials_over_plain_http_need_the_flag() {
        let auth = Auth::Basic {
            username_file: None,
            password_file: "/nonexistent".into(),
        };
        assert!(Source::new("http://127.0.0.1/r.git", "main", auth.clone(), false).is_err());
        assert!(Source::new("http://127.0.0.1/r.git", "main", auth, true).is_ok());
        assert!(Source::new("http://127.0.0.1/r.git", "main", Auth::None, false).is_ok());
    }

    #[test]
    fn credentials_are_given_only_to_the_configured_origin() {
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, "hunter2\n").unwrap();
        let auth = Auth::Basic {
            username_file: None,
            password_file,
        };
        let source = Source::new("https://git.example.com/r.git", "main", auth, false).unwrap();
        let ask = |url: &str| {
            let context = gix::credentials::protocol::Context {
                url: Some(url.into()),
                ..Default::default()
            };
            source
                .credentials
                .answer(gix::credentials::helper::Action::Get(context))
                .unwrap()
                .map(|outcome| outcome.identity.password)
        };
        assert_eq!(
            ask("https://git.example.com/r.git/info/refs"),
            Some("hunter2".into())
        );
        assert_eq!(
            ask("https://GIT.example.com/other.git"),
            Some("hunter2".into())
        );
        for elsewhere in [
            "https://evil.example.com/r.git",
            "https://git.example.com:8443/r.git",
            "http://git.example.com/r.git",
            "not a url",
        ] {
            assert_eq!(ask(elsewhere), None, "{elsewhere}");
        }
    }

    #[test]
    fn ssh_urls_need_a_key_and_known_hosts() {
        assert!(Source::new("ssh://git@example.com/r.git", "main", Auth::None, false).is_err());
        let auth = Auth::Ssh {
            key_path: "/k".into(),
            known_hosts_path: "/kh".into(),
        };
        let source = Source::new("ssh://git@example.com/r.git", "main", auth, false).unwrap();
        let ssh = source
            .config_overrides()
            .into_iter()
            .find(|o| o.starts_with("core.sshCommand"))
            .unwrap();
        assert!(ssh.contains("StrictHostKeyChecking=yes"), "{ssh}");
        assert!(ssh.contains("UserKnownHostsFile='/kh'"), "{ssh}");
    }

    #[test]
    fn bad_branches_are_refused() {
        for branch in ["", "-x", "a..b"] {
            assert!(Source::new("https://example.com/r.git", branch, Auth::None, false).is_err());
        }
    }
}
