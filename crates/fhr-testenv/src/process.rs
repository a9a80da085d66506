//! Child processes that never outlive the process that started them.
//!
//! Tests share one control plane per test binary through a `static`, whose destructor never runs,
//! and a panicking or killed test must not leave an etcd behind. Linux's parent-death signal kills
//! a child when the *thread* that forked it exits, so every child is forked from one thread that
//! lives as long as the process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("fhr-testenv-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start the spawner thread");
        Mutex::new(tx)
    })
}

/// A running child process with its output in a log file; stopped when dropped.
#[derive(Debug)]
pub struct OwnedChild {
    name: String,
    child: Child,
    log: PathBuf,
}

impl OwnedChild {
    /// Starts `command`, its stdout and stderr appended to `log`, killed if this process dies.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> std::io::Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        fhr_runtime::child::die_with_forking_thread(&mut command);
        let (tx, rx) = mpsc::channel();
        spawner()
            .lock()
            .expect("spawner lock")
            .send((command, tx))
            .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
        let child = rx
            .recv()
            .map_err(|_| std::io::Error::other("spawner thread is gone"))??;
        Ok(OwnedChild {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The process's name as given to [`OwnedChild::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log file path.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether the process is still running (an exited child not yet reaped counts as ended).
    pub fn is_running(&self) -> bool {
        alive(self.child.id())
    }

    /// The exit status if the process has ended.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Sends SIGKILL at once, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `grace` for the process to end, then SIGKILL.
    pub fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Some(status) = self.try_wait() {
            return Some(status);
        }
        signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(10));
    }
}

/// Sends a signal to a process (SIGTERM, SIGKILL, SIGSTOP, …).
#[allow(unsafe_code)]
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a pid we own; the worst case is ESRCH for a process already gone.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// The last `lines` lines of a text file, or a note that it could not be read.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// The fields of /proc/<pid>/stat that tests and the benchmark read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// The command name (cut to 15 bytes by the kernel).
    pub comm: String,
    /// The state letter (`R`, `S`, `T`, `Z`, …).
    pub state: char,
    /// The parent's pid.
    pub ppid: u32,
    /// User and system clock ticks of the process itself.
    pub ticks: u64,
    /// User and system clock ticks of its children that were reaped.
    pub children_ticks: u64,
}

/// /proc/<pid>/stat; `None` when there is no such process (a reaped one included).
pub fn stat(pid: u32) -> Option<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces; fields are counted after it.
    let open = stat.find('(')?;
    let (name, rest) = stat[open + 1..].rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let number = |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
    // After the name: state (0), ppid (1), …, utime (11), stime (12), cutime (13), cstime (14).
    Some(Stat {
        comm: name.to_owned(),
        state: fields.first()?.chars().next()?,
        ppid: u32::try_from(number(1)).ok()?,
        ticks: number(11) + number(12),
        children_ticks: number(13) + number(14),
    })
}

/// Whether `pid` is a live process: neither gone nor a zombie.
pub fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// The live processes whose parent is `parent`.
pub fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| stat(*pid).is_some_and(|s| s.ppid == parent) && alive(*pid))
                .collect()
        })
        .unwrap_or_default()
}

/// The first number after `key` (`VmHWM:`, `Threads:`, …) in /proc/<pid>/status; memory
/// figures are in KiB. `None` when the process is gone or has no such line.
pub fn status_value(pid: u32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod stat_tests {
    use super::*;

    #[test]
    fn this_process_reads_as_alive_with_its_parent() {
        let me = stat(std::process::id()).unwrap();
        assert!(alive(std::process::id()));
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert!(children(me.ppid).contains(&std::process::id()));
        assert!(stat(u32::MAX).is_none());
    }
}
