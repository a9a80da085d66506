//! [`Engine`]: the Helm steps (`fhr_release::helm::Helm`) by one resident `fhr-helm-engine`
//! process on the Helm 4 SDK, which the operator starts, supervises and restarts.
//!
//! Supervision: a request that outlives its deadline, a reply that is malformed or too long, or
//! an engine that exits fails the requests in flight, and a new engine is started at once, with
//! exponential backoff between failed starts. Releases an engine left `pending-*` are
//! recovered by the reconciler's unlock step, as after an operator crash. The engine dies with
//! the operator (parent-death signal, and it exits when its stdin closes).

mod process;
pub mod protocol;

use crate::metrics::Metrics;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use fhr_release::helm::{Helm, HelmError, Landed, Rollback, Upgrade};
use process::{Fault, Process};
use protocol::{Op, Outcome, ReleaseRef, Request};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The engine's own deadline beyond Helm's `--timeout`: Helm's timeout should be what fails.
const ENGINE_SLACK: Duration = Duration::from_secs(15);
/// The operator's deadline beyond the engine's: then the engine counts as hung and is killed.
const KILL_SLACK: Duration = Duration::from_secs(15);
/// Deadline of steps that take no Helm timeout (unlock, history).
const SHORT_DEADLINE: Duration = Duration::from_secs(60);

/// The resident Helm engine.
pub struct Engine {
    binary: PathBuf,
    args: Vec<String>,
    kill_slack: Duration,
    next_id: AtomicU64,
    current: tokio::sync::Mutex<Supervised>,
    metrics: Option<Arc<Metrics>>,
    failed: tokio::sync::mpsc::UnboundedSender<()>,
    failures: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<()>>>,
}

/// The current process and the backoff between starts.
struct Supervised {
    process: Option<Arc<Process>>,
    backoff: ExponentialBackoff,
    not_before: Option<Instant>,
}

fn start_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

impl Engine {
    /// An engine run from `binary` with `workers` concurrent requests, rendering with or
    /// without Helm's `lookup`; started on first use.
    pub fn new(
        binary: PathBuf,
        workers: u16,
        allow_lookup: bool,
        metrics: Option<Arc<Metrics>>,
    ) -> Engine {
        let (failed, failures) = tokio::sync::mpsc::unbounded_channel();
        Engine {
            failed,
            failures: std::sync::Mutex::new(Some(failures)),
            binary,
            args: vec![
                format!("--workers={workers}"),
                format!("--allow-lookup={allow_lookup}"),
            ],
            kill_slack: KILL_SLACK,
            next_id: AtomicU64::new(1),
            current: tokio::sync::Mutex::new(Supervised {
                process: None,
                backoff: start_backoff(),
                not_before: None,
            }),
            metrics,
        }
    }

    /// Starts the engine now, so that a broken binary shows at start-up rather than at the
    /// first action, and supervises it from then on: an engine that fails is replaced at once,
    /// not at the next action. Returns the Helm version it runs.
    pub async fn start(self: &Arc<Self>) -> Result<String, HelmError> {
        let process = self.process().await.map_err(fault_error)?;
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut failures) = failures {
            let engine = Arc::downgrade(self);
            tokio::spawn(async move {
                while failures.recv().await.is_some() {
                    let Some(engine) = engine.upgrade() else {
                        return;
                    };
                    // process() waits out the backoff; a failed start is tried again.
                    while engine.process().await.is_err() {}
                }
            });
        }
        Ok(process.helm.clone())
    }

    /// The running process, started (again) when there is none or it failed.
    async fn process(&self) -> Result<Arc<Process>, Fault> {
        let mut current = self.current.lock().await;
        if let Some(process) = &current.process {
            match process.fault() {
                None => return Ok(process.clone()),
                Some(fault) => {
                    if let Some(metrics) = &self.metrics {
                        metrics.engine_restart(fault_reason(&fault));
                    }
                    current.process = None;
                    current.not_before = current.backoff.next().map(|d| Instant::now() + d);
                }
            }
        }
        if let Some(not_before) = current.not_before {
            tokio::time::sleep_until(not_before.into()).await;
        }
        match Process::start(&self.binary, &self.args, self.failed.clone()).await {
            Ok(process) => {
                let process = Arc::new(process);
                tracing::info!(helm = %process.helm, "Helm engine started");
                current.process = Some(process.clone());
                Ok(process)
            }
            Err(fault) => {
                if let Some(metrics) = &self.metrics {
                    metrics.engine_restart(fault_reason(&fault));
                }
                current.not_before = current.backoff.next().map(|d| Instant::now() + d);
                Err(fault)
            }
        }
    }

    /// Sends one request and waits for its outcome, at most `deadline` plus the kill slack.
    async fn call(
        &self,
        action: &'static str,
        op: Op<'_>,
        deadline: Duration,
    ) -> Result<Outcome, HelmError> {
        let started = Instant::now();
        let result = self.call_inner(op, deadline).await;
        if let Some(metrics) = &self.metrics {
            let ok = matches!(&result, Ok(outcome) if !matches!(outcome, Outcome::Error { .. }));
            metrics.helm_action(action, ok, started);
        }
        result
    }

    async fn call_inner(&self, op: Op<'_>, deadline: Duration) -> Result<Outcome, HelmError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let line = serde_json::to_vec(&Request {
            id,
            deadline_ms: millis(deadline),
            op,
        })
        .map_err(|e| HelmError::Io(format!("encoding the request: {e}")))?;
        let process = self.process().await.map_err(fault_error)?;
        let limit = deadline + self.kill_slack;
        let mut cancel = CancelOnDrop {
            process: Some(process.clone()),
            id,
        };
        let answer = tokio::time::timeout(limit, process.call(id, line)).await;
        cancel.process = None;
        match answer {
            Ok(Ok(reply)) => {
                // An engine that answers has started well: the next failed start backs off
                // from the beginning. Once per process, not a lock on every reply.
                if process.first_answer() {
                    let mut current = self.current.lock().await;
                    current.backoff = start_backoff();
                    current.not_before = None;
                }
                Ok(reply.outcome)
            }
            Ok(Err(fault)) => Err(fault_error(fault)),
            Err(_) => {
                let fault = Fault::Hung(limit);
                process.kill(fault.clone());
                Err(fault_error(fault))
            }
        }
    }
}

/// Tells the engine to stop a request whose caller went away.
struct CancelOnDrop {
    process: Option<Arc<Process>>,
    id: u64,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            let line = serde_json::to_vec(&Request {
                id: 0,
                deadline_ms: 0,
                op: Op::Cancel { target: self.id },
            });
            if let (Ok(line), Ok(runtime)) = (line, tokio::runtime::Handle::try_current()) {
                runtime.spawn(async move { process.send(&line).await });
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn fault_reason(fault: &Fault) -> &'static str {
    match fault {
        Fault::Start(_) => "start",
        Fault::Exited(_) => "exited",
        Fault::Malformed(_) => "malformed",
        Fault::Hung(_) => "hung",
    }
}

fn fault_error(fault: Fault) -> HelmError {
    match fault {
        Fault::Hung(limit) => HelmError::Timeout(limit),
        fault => HelmError::Io(fault.to_string()),
    }
}

/// An outcome as the trait's answer: the revision left, or the error.
fn landed(outcome: Outcome, timeout: Duration) -> Result<Option<Landed>, HelmError> {
    match outcome {
        Outcome::Landed { revision, status } => Ok(Some(Landed { revision, status })),
        Outcome::Done {} => Ok(None),
        Outcome::Error { kind, message } => Err(match kind.as_str() {
            "timeout" => HelmError::Timeout(timeout),
            "unreachable" => HelmError::Io(message),
            _ => HelmError::Failed(message),
        }),
    }
}

impl Helm for Engine {
    async fn upgrade(&self, request: &Upgrade<'_>) -> Result<Option<Landed>, HelmError> {
        let chart_dir = request.chart_dir.to_string_lossy();
        let op = Op::Upgrade {
            release: ReleaseRef {
                release: request.release,
                namespace: request.namespace,
                service_account: request.service_account,
            },
            install: request.install,
            chart_dir: &chart_dir,
            values: request.values,
            labels: request.labels,
            timeout_ms: millis(request.timeout),
            wait: request.wait,
            max_history: request.max_history.unwrap_or(0),
            redact: request.secret_values,
        };
        let action = if request.install {
            "install"
        } else {
            "upgrade"
        };
        let outcome = self
            .call(action, op, request.timeout + ENGINE_SLACK)
            .await?;
        landed(outcome, request.timeout)
    }

    async fn rollback(&self, request: &Rollback<'_>) -> Result<Option<Landed>, HelmError> {
        let op = Op::Rollback {
            release: ReleaseRef {
                release: request.release,
                namespace: request.namespace,
                service_account: request.service_account,
            },
            revision: request.revision,
            timeout_ms: millis(request.timeout),
            wait: request.wait,
            disable_hooks: request.disable_hooks,
        };
        let outcome = self
            .call("rollback", op, request.timeout + ENGINE_SLACK)
            .await?;
        landed(outcome, request.timeout)
    }

    async fn uninstall(
        &self,
        release: &str,
        namespace: &str,
        timeout: Duration,
        service_account: Option<&str>,
    ) -> Result<(), HelmError> {
        let op = Op::Uninstall {
            release: ReleaseRef {
                release,
                namespace,
                service_account,
            },
            timeout_ms: millis(timeout),
        };
        let outcome = self.call("uninstall", op, timeout + ENGINE_SLACK).await?;
        landed(outcome, timeout).map(drop)
    }

    async fn unlock(
        &self,
        release: &str,
        namespace: &str,
        revision: i64,
        service_account: Option<&str>,
    ) -> Result<(), HelmError> {
        let op = Op::Unlock {
            release: ReleaseRef {
                release,
                namespace,
                service_account,
            },
            revision,
        };
        let outcome = self.call("unlock", op, SHORT_DEADLINE).await?;
        landed(outcome, SHORT_DEADLINE).map(drop)
    }
}

#[cfg(test)]
mod tests;
