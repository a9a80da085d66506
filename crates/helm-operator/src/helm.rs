//! [`HelmCli`]: the Helm steps (`fhr_release::helm::Helm`) by the `helm` (v4) binary, one
//! process per action, each counted in the metrics: the fallback for users who must pin a helm
//! binary (`--helm-engine=cli`). [`Backend`] is whichever of it and the engine was chosen.
//!
//! Every call has a deadline, its own `HELM_*_HOME` folders, and its values in a private file
//! (mode 0600) that is removed afterwards. Values never reach argv, the environment or a log line.

use crate::identity::Identities;
use crate::metrics::Metrics;
use fhr_release::helm::{Helm, HelmError, Landed, Rollback, Upgrade};
use serde_json::{Map, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// Time given to helm beyond its own `--timeout` before the process is killed.
const GRACE: Duration = Duration::from_secs(30);
/// Longest error text kept from helm's stderr.
const MAX_MESSAGE: usize = 2000;

/// The `helm` command-line tool.
#[derive(Clone)]
pub struct HelmCli {
    binary: PathBuf,
    home: PathBuf,
    grace: Duration,
    /// Unlocking is a compare-and-swap on Helm's storage, not a helm command.
    identities: Option<Arc<Identities>>,
    metrics: Option<Arc<Metrics>>,
}

impl HelmCli {
    /// Runs `binary` with its cache, config and data folders and values files under `home`;
    /// `identities` reach Helm's storage (to unlock), `metrics` count the processes.
    pub fn new(
        binary: PathBuf,
        home: PathBuf,
        identities: Option<Arc<Identities>>,
        metrics: Option<Arc<Metrics>>,
    ) -> std::io::Result<HelmCli> {
        for sub in ["cache", "config", "data", "values"] {
            std::fs::create_dir_all(home.join(sub))?;
        }
        Ok(HelmCli {
            binary,
            home,
            grace: GRACE,
            identities,
            metrics,
        })
    }

    /// Runs one helm process for `action` (the metric label), with a deadline.
    async fn run(
        &self,
        action: &'static str,
        args: Vec<String>,
        timeout: Duration,
    ) -> Result<(), HelmError> {
        let started = Instant::now();
        if let Some(metrics) = &self.metrics {
            metrics.helm_process();
        }
        let result = self.run_process(args, timeout).await;
        if let Some(metrics) = &self.metrics {
            metrics.helm_action(action, result.is_ok(), started);
        }
        result
    }

    async fn run_process(&self, args: Vec<String>, timeout: Duration) -> Result<(), HelmError> {
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .args(&args)
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // helm dies with the operator, as in a crashed container, instead of going on unsupervised:
        // the restarted operator finds the release pending and recovers it.
        let child = fhr_runtime::child::spawn(command)
            .await
            .map_err(|e| HelmError::Io(e.to_string()))?;
        let deadline = timeout + self.grace;
        let output = match tokio::time::timeout(deadline, child.wait_with_output()).await {
            Ok(output) => output.map_err(|e| HelmError::Io(e.to_string()))?,
            Err(_) => return Err(HelmError::Timeout(deadline)),
        };
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(HelmError::Failed(clean_message(&stderr)))
    }

    fn values_file(
        &self,
        values: &Map<String, Value>,
    ) -> Result<tempfile::NamedTempFile, HelmError> {
        // NamedTempFile is created with mode 0600 and removed when dropped.
        let mut file = tempfile::Builder::new()
            .prefix("values-")
            .suffix(".json")
            .tempfile_in(self.home.join("values"))
            .map_err(|e| HelmError::Io(e.to_string()))?;
        // JSON is YAML: helm reads it as a values file.
        serde_json::to_writer(&mut file, values).map_err(|e| HelmError::Io(e.to_string()))?;
        file.flush().map_err(|e| HelmError::Io(e.to_string()))?;
        Ok(file)
    }
}

impl Helm for HelmCli {
    async fn upgrade(&self, request: &Upgrade<'_>) -> Result<Option<Landed>, HelmError> {
        let values = self.values_file(request.values)?;
        let mut args: Vec<String> = vec![
            "upgrade".into(),
            "--install".into(),
            request.release.into(),
            request.chart_dir.display().to_string(),
            "--namespace".into(),
            request.namespace.into(),
            "--values".into(),
            values.path().display().to_string(),
            "--timeout".into(),
            fhr_types::duration::to_go_duration(request.timeout),
            // Each upgrade starts from the chart's values plus ours, never from the last release's.
            "--reset-values".into(),
            // The API server validates strictly (server-side apply); the client-side OpenAPI
            // validation would download and parse the cluster's schema in every process.
            "--disable-openapi-validation".into(),
            // Git is the authority: fields changed by hand are taken back, not a conflict.
            "--force-conflicts".into(),
        ];
        if !request.labels.is_empty() {
            let labels: Vec<String> = request
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            args.push("--labels".into());
            args.push(labels.join(","));
        }
        args.extend(impersonation(request.namespace, request.service_account));
        if request.wait {
            args.push("--wait".into());
        }
        if let Some(max) = request.max_history {
            args.push("--history-max".into());
            args.push(max.to_string());
        }
        let action = if request.install {
            "install"
        } else {
            "upgrade"
        };
        let result = self.run(action, args, request.timeout).await;
        drop(values);
        result.map(|()| None)
    }

    async fn rollback(&self, request: &Rollback<'_>) -> Result<Option<Landed>, HelmError> {
        let mut args: Vec<String> = vec![
            "rollback".into(),
            request.release.into(),
            request.revision.to_string(),
            "--namespace".into(),
            request.namespace.into(),
            "--timeout".into(),
            fhr_types::duration::to_go_duration(request.timeout),
        ];
        if request.wait {
            args.push("--wait".into());
        }
        if request.disable_hooks {
            args.push("--no-hooks".into());
        }
        args.push("--force-conflicts".into());
        args.extend(impersonation(request.namespace, request.service_account));
        self.run("rollback", args, request.timeout)
            .await
            .map(|()| None)
    }

    async fn uninstall(
        &self,
        release: &str,
        namespace: &str,
        timeout: Duration,
        service_account: Option<&str>,
    ) -> Result<(), HelmError> {
        let mut args = vec![
            "uninstall".into(),
            release.into(),
            "--namespace".into(),
            namespace.into(),
            "--ignore-not-found".into(),
            "--timeout".into(),
            fhr_types::duration::to_go_duration(timeout),
        ];
        args.extend(impersonation(namespace, service_account));
        self.run("uninstall", args, timeout).await
    }

    /// Marks the revision failed in Helm's storage, as `service_account` like every other step.
    async fn unlock(
        &self,
        release: &str,
        namespace: &str,
        revision: i64,
        service_account: Option<&str>,
    ) -> Result<(), HelmError> {
        let client = self
            .identities
            .as_ref()
            .ok_or_else(|| HelmError::Io("no API client to reach Helm's storage".into()))?
            .client(namespace, service_account)
            .map_err(|e| HelmError::Io(e.to_string()))?;
        crate::storage::mark_failed(&client, namespace, release, revision)
            .await
            .map_err(|e| HelmError::Io(e.to_string()))
    }
}

/// The Helm steps as configured: the resident engine, or the CLI.
pub enum Backend {
    /// `fhr-helm-engine`, one resident process.
    Engine(Arc<crate::engine::Engine>),
    /// One `helm` process per action.
    Cli(HelmCli),
}

impl Helm for Backend {
    async fn upgrade(&self, request: &Upgrade<'_>) -> Result<Option<Landed>, HelmError> {
        match self {
            Backend::Engine(engine) => engine.upgrade(request).await,
            Backend::Cli(cli) => cli.upgrade(request).await,
        }
    }

    async fn rollback(&self, request: &Rollback<'_>) -> Result<Option<Landed>, HelmError> {
        match self {
            Backend::Engine(engine) => engine.rollback(request).await,
            Backend::Cli(cli) => cli.rollback(request).await,
        }
    }

    async fn uninstall(
        &self,
        release: &str,
        namespace: &str,
        timeout: Duration,
        service_account: Option<&str>,
    ) -> Result<(), HelmError> {
        match self {
            Backend::Engine(engine) => {
                engine
                    .uninstall(release, namespace, timeout, service_account)
                    .await
            }
            Backend::Cli(cli) => {
                cli.uninstall(release, namespace, timeout, service_account)
                    .await
            }
        }
    }

    async fn unlock(
        &self,
        release: &str,
        namespace: &str,
        revision: i64,
        service_account: Option<&str>,
    ) -> Result<(), HelmError> {
        match self {
            Backend::Engine(engine) => {
                engine
                    .unlock(release, namespace, revision, service_account)
                    .await
            }
            Backend::Cli(cli) => {
                cli.unlock(release, namespace, revision, service_account)
                    .await
            }
        }
    }
}

/// helm's flag to act as a ServiceAccount of `namespace` (the API server adds its groups).
fn impersonation(namespace: &str, service_account: Option<&str>) -> Vec<String> {
    service_account
        .map(|account| {
            vec![
                "--kube-as-user".to_owned(),
                crate::identity::user(namespace, account),
            ]
        })
        .unwrap_or_default()
}

/// Helm's error output as a short message: the `Error:` line(s), trimmed and bounded.
fn clean_message(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("WARNING:") && !l.starts_with("walk.go"))
        .collect();
    let text = lines.join("; ");
    let text = text.strip_prefix("Error: ").unwrap_or(&text);
    match text.char_indices().nth(MAX_MESSAGE) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None if text.is_empty() => "helm failed without an error message".to_owned(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_the_error_and_drop_noise() {
        let stderr = "WARNING: Kubernetes configuration file is group-readable\nError: UPGRADE FAILED: template: web/templates/cm.yaml:3:4: executing \"x\" at <required>: error calling required: schedule is required\n";
        assert_eq!(
            clean_message(stderr),
            "UPGRADE FAILED: template: web/templates/cm.yaml:3:4: executing \"x\" at <required>: error calling required: schedule is required"
        );
        assert_eq!(clean_message(""), "helm failed without an error message");
        assert!(clean_message(&"x".repeat(10_000)).chars().count() <= MAX_MESSAGE + 1);
    }

    #[tokio::test]
    async fn values_files_are_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let helm = HelmCli::new("helm".into(), home.path().to_owned(), None, None).unwrap();
        let mut values = Map::new();
        values.insert("password".into(), Value::String("secret".into()));
        let file = helm.values_file(&values).unwrap();
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let path = file.path().to_owned();
        drop(file);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_helm_that_hangs_is_stopped_at_the_deadline() {
        let home = tempfile::tempdir().unwrap();
        let script = home.path().join("slow-helm");
        std::fs::write(&script, "#!/bin/sh\nsleep 30\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut helm = HelmCli::new(script, home.path().join("home"), None, None).unwrap();
        helm.grace = Duration::from_millis(200);
        let err = tokio::time::timeout(
            Duration::from_secs(20),
            helm.uninstall("r", "ns", Duration::from_millis(100), None),
        )
        .await
        .expect("the deadline stops helm long before the script's 30 s")
        .unwrap_err();
        assert!(matches!(err, HelmError::Timeout(_)), "{err}");
    }
}
