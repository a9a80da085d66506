//! One running engine process: its pipes, the requests waiting for a reply, and the tasks that
//! read its replies and forward its log.

use super::protocol::{self, Hello, Reply};
use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::oneshot;

/// Longest reply line accepted: replies carry no manifests, so anything near this is a fault.
pub const MAX_REPLY: usize = 1 << 20;
/// Longest engine log line forwarded.
const MAX_LOG_LINE: usize = 4096;
/// How long a starting engine may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variables the engine inherits: what it needs to find the cluster, nothing else.
const PASSED_ENV: &[&str] = &[
    "KUBECONFIG",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "HOME",
    "PATH",
    "TMPDIR",
];

/// Why the engine failed as a whole (as opposed to one request failing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// It could not be started, or did not say hello.
    #[error("the Helm engine did not start: {0}")]
    Start(String),
    /// It exited or closed its stdout.
    #[error("the Helm engine exited ({0})")]
    Exited(String),
    /// It wrote something that is not a reply.
    #[error("the Helm engine sent a malformed reply ({0}) and was restarted")]
    Malformed(String),
    /// A request outlived its deadline and the engine was stopped.
    #[error("the Helm engine did not answer within {0:?} and was restarted")]
    Hung(Duration),
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Reply, Fault>>>>>;

/// A running engine.
pub struct Process {
    stdin: tokio::sync::Mutex<ChildStdin>,
    waiters: Waiters,
    /// Set once the process is known broken; no new request is sent to it.
    broken: Arc<Mutex<Option<Fault>>>,
    stop: Arc<tokio::sync::Notify>,
    /// Set at its first answer: from then on it counts as a good start.
    answered: std::sync::atomic::AtomicBool,
    /// The Helm version the engine reported.
    pub helm: String,
}

impl Process {
    /// Starts `binary`, checks its hello, and starts the tasks that read its output; `failed`
    /// hears once when the process fails.
    pub async fn start(
        binary: &Path,
        args: &[String],
        failed: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> Result<Process, Fault> {
        let mut command = tokio::process::Command::new(binary);
        command
            .args(args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for name in PASSED_ENV {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        let mut child = fhr_runtime::child::spawn(command)
            .await
            .map_err(|e| Fault::Start(format!("{}: {e}", binary.display())))?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        tokio::spawn(forward_log(stderr));
        let mut lines = BufReader::new(stdout);
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, read_line(&mut lines)).await {
            Ok(Ok(Some(line))) => serde_json::from_slice::<Hello>(&line)
                .map_err(|e| Fault::Start(format!("no hello: {e}")))?,
            Ok(Ok(None)) => return Err(Fault::Start(exit_reason(&mut child).await)),
            Ok(Err(fault)) => return Err(fault),
            Err(_) => return Err(Fault::Start(format!("no hello within {HELLO_TIMEOUT:?}"))),
        };
        if hello.hello.protocol != protocol::VERSION {
            return Err(Fault::Start(format!(
                "it speaks protocol {}, this operator {}",
                hello.hello.protocol,
                protocol::VERSION
            )));
        }
        let waiters: Waiters = Arc::default();
        let broken = Arc::new(Mutex::new(None));
        let stop = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(read_replies(
            lines,
            child,
            waiters.clone(),
            broken.clone(),
            stop.clone(),
            failed,
        ));
        Ok(Process {
            stdin: tokio::sync::Mutex::new(stdin),
            waiters,
            broken,
            stop,
            answered: std::sync::atomic::AtomicBool::new(false),
            helm: hello.hello.helm,
        })
    }

    /// True the first time it is called after an answer came back, false afterwards.
    pub fn first_answer(&self) -> bool {
        !self
            .answered
            .swap(true, std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the process has failed and must be replaced.
    pub fn fault(&self) -> Option<Fault> {
        self.broken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sends one request line and waits for its reply.
    pub async fn call(&self, id: u64, line: Vec<u8>) -> Result<Reply, Fault> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        if let Some(fault) = self.fault() {
            self.waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(fault);
        }
        if let Err(e) = self.send(&line).await {
            self.waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(Fault::Exited(format!("writing a request: {e}")));
        }
        rx.await
            .unwrap_or_else(|_| Err(Fault::Exited("reply channel closed".into())))
    }

    /// Writes one line without waiting for a reply (a cancel).
    pub async fn send(&self, line: &[u8]) -> std::io::Result<()> {
        let mut stdin = self.stdin.lock().await;
        stdin.write_all(line).await?;
        stdin.write_all(b"\n").await?;
        stdin.flush().await
    }

    /// Kills the process: every waiting request fails with `fault`.
    pub fn kill(&self, fault: Fault) {
        fail_all(&self.waiters, &self.broken, fault);
        // The reader task owns the child: it kills (SIGKILL: a hung engine ignores gentler
        // signals) and reaps it. notify_one keeps the wake-up if the task is not waiting yet.
        self.stop.notify_one();
    }
}

/// Reads replies until the engine's stdout ends or a line is not a reply; then the process is
/// broken, killed and reaped, and every waiting request fails.
async fn read_replies(
    mut lines: BufReader<tokio::process::ChildStdout>,
    mut child: Child,
    waiters: Waiters,
    broken: Arc<Mutex<Option<Fault>>>,
    stop: Arc<tokio::sync::Notify>,
    failed: tokio::sync::mpsc::UnboundedSender<()>,
) {
    let fault = loop {
        let line = tokio::select! {
            line = read_line(&mut lines) => line,
            () = stop.notified() => break Fault::Exited("stopped by the operator".into()),
        };
        match line {
            Ok(Some(line)) => match serde_json::from_slice::<Reply>(&line) {
                Ok(reply) if reply.id != 0 => {
                    let waiter = waiters
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&reply.id);
                    // No waiter: the request was given up on (deadline); drop its late answer.
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(Ok(reply));
                    }
                }
                Ok(_) => break Fault::Malformed("the engine could not read a request".into()),
                Err(e) => break Fault::Malformed(e.to_string()),
            },
            Ok(None) => {
                let _ = child.start_kill();
                break Fault::Exited(exit_reason(&mut child).await);
            }
            Err(fault) => break fault,
        }
    };
    tracing::warn!(%fault, "Helm engine failed");
    fail_all(&waiters, &broken, fault);
    let _ = child.start_kill();
    let _ = child.wait().await;
    let _ = failed.send(());
}

fn fail_all(waiters: &Waiters, broken: &Mutex<Option<Fault>>, fault: Fault) {
    broken
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert(fault.clone());
    let waiting: Vec<_> = waiters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .collect();
    for (_, waiter) in waiting {
        let _ = waiter.send(Err(fault.clone()));
    }
}

/// One line, at most [`MAX_REPLY`] bytes; `None` at the end of the stream.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Vec<u8>>, Fault> {
    let mut line = Vec::new();
    let read = reader
        .take(MAX_REPLY as u64 + 1)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| Fault::Exited(format!("reading its output: {e}")))?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        if line.len() > MAX_REPLY {
            return Err(Fault::Malformed(format!(
                "a reply line over {MAX_REPLY} bytes"
            )));
        }
        // The last line without its newline: the stream ended in the middle of it.
        return Err(Fault::Malformed("a reply cut short".into()));
    }
    line.pop();
    Ok(Some(line))
}

async fn exit_reason(child: &mut Child) -> String {
    match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(Ok(status)) => status.to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "stdout closed".into(),
    }
}

/// Forwards the engine's log lines (JSON from Go's slog) to ours, bounded.
async fn forward_log(stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line: String = line.chars().take(MAX_LOG_LINE).collect();
        tracing::warn!(target: "helm_engine", "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_must_end() {
        let mut ok = &b"{\"id\":1}\nrest"[..];
        assert_eq!(read_line(&mut ok).await.unwrap().unwrap(), b"{\"id\":1}");
        assert!(matches!(read_line(&mut ok).await, Err(Fault::Malformed(_))));
        let long = vec![b'x'; MAX_REPLY + 10];
        assert!(matches!(
            read_line(&mut &long[..]).await,
            Err(Fault::Malformed(_))
        ));
        assert_eq!(read_line(&mut &b""[..]).await.unwrap(), None);
    }
}
