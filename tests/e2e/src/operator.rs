//! An environment for helm-operator tests: a namespace, the CRD, a git repository seeded with the
//! example charts and served over HTTP, and the operator process watching that namespace.

use crate::{Daemon, eventually, install_crd, shared_control_plane, unique_name};
use fhr_testenv::{ControlPlane, GitServer, GitServerOptions, TestRepo, WorkDir, create_namespace};
use fhr_types::FluxHelmRelease;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use std::time::Duration;

/// How long a test waits for the operator to act: installs on a loaded 2-core machine.
pub const ACT_TIMEOUT: Duration = Duration::from_secs(90);

/// One test's world.
pub struct OperatorEnv {
    /// The control plane.
    pub cp: &'static ControlPlane,
    /// Admin client.
    pub client: kube::Client,
    /// The test's namespace.
    pub namespace: String,
    /// The git server.
    pub git: GitServer,
    /// The repository the operator reads charts from.
    pub repo: TestRepo,
    /// Scratch folder (operator state, logs).
    pub dir: WorkDir,
    /// The running operator, if started.
    pub operator: Option<Daemon>,
}

impl OperatorEnv {
    /// A fresh namespace and repository holding `examples/charts` under `charts/`.
    pub async fn new(prefix: &str) -> OperatorEnv {
        OperatorEnv::on(shared_control_plane().await, prefix).await
    }

    /// The same world on control plane `cp` (a test that restarts its API server has its own).
    pub async fn on(cp: &'static ControlPlane, prefix: &str) -> OperatorEnv {
        let client = cp.client().await;
        install_crd(&client).await;
        let namespace = unique_name(prefix);
        create_namespace(&client, &namespace).await.unwrap();
        let git = GitServer::start(GitServerOptions::default()).await.unwrap();
        let repo = git.create_repo("config", "master").unwrap();
        repo.copy_dir(&fhr_testenv::examples_dir().join("charts"), "charts")
            .unwrap();
        repo.write("README.md", "test repository\n").unwrap();
        repo.commit("charts from examples").unwrap();
        let dir = WorkDir::create(prefix).unwrap();
        OperatorEnv {
            cp,
            client,
            namespace,
            git,
            repo,
            dir,
            operator: None,
        }
    }

    /// The operator's command line for this environment, plus `extra`.
    pub fn operator_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            format!("--git-url={}", self.git.url("config")),
            "--git-poll-interval=1s".into(),
            "--charts-sync-interval=30s".into(),
            format!("--namespace={}", self.namespace),
            format!(
                "--state-dir={}",
                self.dir.path().join("operator-state").display()
            ),
            "--helm-timeout=60s".into(),
        ];
        args.extend(self.cp.tools().operator_flags());
        crate::with_flags(args, extra)
    }

    /// Starts the operator (with admin credentials) and waits until it is ready.
    pub async fn start_operator(&mut self, extra: &[&str]) -> &Daemon {
        let args = self.operator_args(extra);
        let operator = Daemon::start(
            "helm-operator",
            self.cp.kubeconfig(),
            self.dir.path(),
            &args,
        );
        operator.wait_ready().await;
        self.operator = Some(operator);
        self.operator.as_ref().unwrap()
    }

    /// The running operator.
    pub fn operator(&self) -> &Daemon {
        self.operator.as_ref().expect("the operator was started")
    }

    /// The FluxHelmRelease API of the test's namespace.
    pub fn api(&self) -> Api<FluxHelmRelease> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Applies a FluxHelmRelease `name` with `spec` (v1alpha) in the test's namespace.
    pub async fn apply(&self, name: &str, spec: Value) {
        self.apply_version(name, "v1alpha", spec).await
    }

    /// Applies a FluxHelmRelease in the given API version.
    pub async fn apply_version(&self, name: &str, version: &str, spec: Value) {
        let resource = kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk(fhr_types::api::GROUP, version, "FluxHelmRelease"),
            "fluxhelmreleases",
        );
        let api: Api<kube::core::DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.namespace, &resource);
        let object = json!({
            "apiVersion": format!("{}/{version}", fhr_types::api::GROUP),
            "kind": "FluxHelmRelease",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec,
        });
        api.patch(
            name,
            &PatchParams::apply(crate::TEST_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {name}: {e}"));
    }

    /// Deletes a FluxHelmRelease.
    pub async fn delete(&self, name: &str) {
        self.api()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }

    /// Waits until `check` accepts the resource, showing its status (and the operator log) if not.
    pub async fn wait_for(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&FluxHelmRelease) -> bool,
    ) -> FluxHelmRelease {
        let api = self.api();
        eventually(&format!("{name}: {what}"), ACT_TIMEOUT, || async {
            let fhr = api.get(name).await.map_err(|e| e.to_string())?;
            if check(&fhr) {
                Ok(fhr)
            } else {
                Err(format!(
                    "status: {}\n{}",
                    serde_json::to_string_pretty(&fhr.status).unwrap(),
                    self.operator
                        .as_ref()
                        .map(|o| o.log_tail())
                        .unwrap_or_default()
                ))
            }
        })
        .await
    }

    /// Waits for the Ready condition to have `status` and `reason`.
    pub async fn wait_condition(&self, name: &str, status: &str, reason: &str) -> FluxHelmRelease {
        self.wait_for(name, &format!("Ready={status} reason {reason}"), |f| {
            f.condition("Ready")
                .is_some_and(|c| c.status == status && c.reason == reason)
        })
        .await
    }

    /// `helm history` of a release in the test's namespace: (revision, status) pairs.
    pub fn helm_history(&self, release: &str) -> Vec<(i64, String)> {
        let output = self
            .cp
            .helm()
            .args([
                "history",
                release,
                "--namespace",
                &self.namespace,
                "--output",
                "json",
            ])
            .output()
            .unwrap();
        if !output.status.success() {
            return Vec::new();
        }
        let history: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
        history
            .iter()
            .map(|r| {
                (
                    r["revision"].as_i64().unwrap(),
                    r["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// The Events of the test's namespace, as (reason, message) pairs.
    pub async fn events(&self) -> Vec<(String, String)> {
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.client.clone(), &self.namespace);
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect()
    }

    /// Waits until the operator has reconciled at least `count` more times than now.
    pub async fn reconciles(&self, count: f64) {
        let start = self
            .operator()
            .metric("fhr_operator_reconciles_total")
            .await;
        self.reconciles_since(start, count).await
    }

    /// Waits until the operator has reconciled `count` times more than `start`.
    pub async fn reconciles_since(&self, start: f64, count: f64) {
        self.operator()
            .wait_metric("fhr_operator_reconciles_total", start + count)
            .await
    }

    /// Helm actions the operator has taken so far.
    pub async fn helm_processes(&self) -> f64 {
        self.operator()
            .metric("fhr_operator_helm_actions_total")
            .await
    }

    /// Waits until the operator has fetched `commit`.
    pub async fn wait_fetched(&self, commit: &str) {
        let operator = self.operator();
        eventually(
            &format!("the operator to fetch {commit}"),
            ACT_TIMEOUT,
            || async {
                let (_, body) = operator.get("/metrics").await?;
                if body.contains(&format!("commit=\"{commit}\"")) {
                    Ok(())
                } else {
                    Err(operator.log_tail())
                }
            },
        )
        .await
    }
}

/// Whether the resource is Ready.
pub fn ready(fhr: &FluxHelmRelease) -> bool {
    fhr.condition("Ready").is_some_and(|c| c.status == "True")
}

/// Ready at Helm revision `revision`.
pub fn ready_at(revision: i64) -> impl Fn(&FluxHelmRelease) -> bool {
    move |f| f.status.as_ref().and_then(|s| s.revision) == Some(revision) && ready(f)
}

/// A resource's status condition message, or "".
pub fn ready_message(fhr: &FluxHelmRelease) -> String {
    fhr.condition("Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Unique resource names within a test.
pub fn name(prefix: &str) -> String {
    unique_name(prefix)
}
