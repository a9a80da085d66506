//! A git server over SSH: Debian's `sshd` on a loopback port, with its own host key, one
//! authorised deploy key, and `git-upload-pack` run for fetches as on any git host.

use crate::process::OwnedChild;
use crate::workdir::WorkDir;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where sshd is expected (Debian's openssh-server, which `cargo xtask tools` installs).
pub const SSHD: &str = "/usr/sbin/sshd";

/// A running sshd serving the repositories under a folder; stopped when dropped.
pub struct SshServer {
    _sshd: OwnedChild,
    port: u16,
    dir: WorkDir,
    user: String,
}

impl SshServer {
    /// Starts sshd on a free loopback port with fresh host and deploy keys.
    pub fn start() -> std::io::Result<SshServer> {
        if !Path::new(SSHD).is_file() {
            return Err(std::io::Error::other(format!(
                "{SSHD} not found: run `cargo xtask tools`, which installs Debian's openssh-server"
            )));
        }
        let dir = WorkDir::create("sshd")?;
        let path = |name: &str| dir.path().join(name);
        for key in ["host_key", "deploy_key", "other_host_key"] {
            keygen(&path(key))?;
        }
        std::fs::copy(path("deploy_key.pub"), path("authorized_keys"))?;
        // sshd's privilege separation needs this folder.
        std::fs::create_dir_all("/run/sshd")?;
        let port = crate::free_port()?;
        let user = current_user()?;
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {keys}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nAllowUsers {user}\nPidFile none\nLogLevel VERBOSE\n",
            host = path("host_key").display(),
            keys = path("authorized_keys").display(),
        );
        std::fs::write(path("sshd_config"), config)?;
        let mut command = Command::new(SSHD);
        command.args(["-D", "-e", "-f"]).arg(path("sshd_config"));
        let mut sshd = OwnedChild::spawn("sshd", command, &path("sshd.log"))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if sshd.try_wait().is_some() || std::time::Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "sshd did not start:\n{}",
                    sshd.log_tail(20)
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(SshServer {
            _sshd: sshd,
            port,
            dir,
            user,
        })
    }

    /// The ssh:// URL of a bare repository on this machine.
    pub fn url(&self, bare_repo: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            bare_repo.display()
        )
    }

    /// The private deploy key the server accepts.
    pub fn deploy_key(&self) -> PathBuf {
        self.dir.path().join("deploy_key")
    }

    /// A known_hosts file holding this server's real host key.
    pub fn known_hosts(&self) -> std::io::Result<PathBuf> {
        self.known_hosts_with("host_key.pub", "known_hosts")
    }

    /// A known_hosts file holding a different key for this server's address, as after a
    /// man-in-the-middle or a host key change.
    pub fn wrong_known_hosts(&self) -> std::io::Result<PathBuf> {
        self.known_hosts_with("other_host_key.pub", "wrong_known_hosts")
    }

    fn known_hosts_with(&self, public_key: &str, file: &str) -> std::io::Result<PathBuf> {
        let key = std::fs::read_to_string(self.dir.path().join(public_key))?;
        let mut fields = key.split_whitespace();
        let (kind, body) = (
            fields.next().unwrap_or_default(),
            fields.next().unwrap_or_default(),
        );
        let path = self.dir.path().join(file);
        std::fs::write(&path, format!("[127.0.0.1]:{} {kind} {body}\n", self.port))?;
        Ok(path)
    }
}

fn keygen(path: &Path) -> std::io::Result<()> {
    let status = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "flux-helm-test",
            "-f",
        ])
        .arg(path)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("ssh-keygen failed"))
    }
}

fn current_user() -> std::io::Result<String> {
    let output = Command::new("id").arg("-un").output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
