//! The resident Helm engine against the real control plane and git server: every Helm step runs
//! through it with no helm process, what it writes reads back with the helm CLI (v4 and v3), the
//! API server validates strictly, and its faults (killed, hung) leave no release pending.

use e2e::operator::{ACT_TIMEOUT, OperatorEnv, ready, ready_at, ready_message};
use e2e::{children_named, eventually, output_ok, process_alive};
use serde_json::{Value, json};
use std::time::Duration;

const CLI_PROCESSES: &str = "fhr_operator_helm_cli_processes_total";
const RESTARTS: &str = "fhr_operator_helm_engine_restarts_total";

/// A chart the way public charts write a Deployment: replicas and the port from values, plus a
/// switch that misspells `replicas` (a typo only the API server's strict validation catches).
fn add_app_chart(env: &OperatorEnv) {
    env.repo
        .write(
            "charts/app/Chart.yaml",
            "apiVersion: v2\nname: app\nversion: 1.0.0\nappVersion: \"1.0\"\n",
        )
        .unwrap();
    env.repo
        .write(
            "charts/app/values.yaml",
            "replicas: 1\nport: 80\ntypo: false\nannotations: {}\n",
        )
        .unwrap();
    env.repo
        .write(
            "charts/app/templates/deployment.yaml",
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
  annotations:
{{ toYaml .Values.annotations | indent 4 }}
spec:
  {{- if .Values.typo }}
  replica: {{ .Values.replicas }}
  {{- else }}
  replicas: {{ .Values.replicas }}
  {{- end }}
  selector:
    matchLabels: {app: {{ .Release.Name }}}
  template:
    metadata:
      labels: {app: {{ .Release.Name }}}
    spec:
      containers:
        - name: app
          image: "registry.invalid/app:1.0"
          ports:
            - containerPort: {{ .Values.port }}
"#,
        )
        .unwrap();
    env.repo.commit("the app chart").unwrap();
}

fn spec(release: &str, values: Value) -> Value {
    let values: Vec<Value> = values
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    json!({"chartGitPath": "app", "releaseName": release, "values": values})
}

/// The helm-operator's engine process, found as its child.
fn engine_pid(env: &OperatorEnv) -> u32 {
    let engines = children_named(env.operator().process.id(), "fhr-helm-engine");
    assert_eq!(engines.len(), 1, "one engine runs: {engines:?}");
    engines[0]
}

fn helm_json(command: &mut std::process::Command) -> Value {
    serde_json::from_slice(&output_ok(command).stdout).unwrap()
}

#[tokio::test]
async fn every_helm_step_runs_in_the_engine_and_the_helm_cli_reads_what_it_wrote() {
    let mut env = OperatorEnv::new("engine").await;
    add_app_chart(&env);
    env.start_operator(&["--charts-sync-interval=5s"]).await;
    let engine = engine_pid(&env);

    // Install, then upgrade with typed values.
    env.apply("app", spec("app", json!({}))).await;
    env.wait_for("app", "installed", ready_at(1)).await;
    env.apply(
        "app",
        spec("app", json!({"replicas": 3, "annotations": {"team": "a"}})),
    )
    .await;
    env.wait_for("app", "upgraded", ready_at(2)).await;
    let values = helm_json(env.cp.helm().args([
        "get",
        "values",
        "app",
        "--namespace",
        &env.namespace,
        "--output",
        "json",
    ]));
    assert_eq!(values["replicas"], json!(3), "a number stays a number");
    assert_eq!(values["annotations"]["team"], json!("a"));

    // A failing upgrade (a port the API server refuses) rolls back through the engine.
    let mut failing = spec("app", json!({"port": 99999}));
    failing["rollback"] = json!({"enable": true});
    env.apply("app", failing).await;
    env.wait_condition("app", "False", "RolledBack").await;
    let refusals: Vec<String> = env
        .events()
        .await
        .into_iter()
        .filter(|(reason, _)| reason == "UpgradeFailed")
        .map(|(_, message)| message)
        .collect();
    assert!(
        refusals.iter().any(|m| m.contains("99999")),
        "the API server's refusal reaches the user: {refusals:?}"
    );

    // What the engine wrote is Helm's own storage: helm v4 and helm v3 read it, and v3 can
    // roll it back.
    let statuses = |command: &mut std::process::Command| -> Vec<(i64, String)> {
        helm_json(command)
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["revision"].as_i64().unwrap(),
                    r["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let history_args = [
        "history",
        "app",
        "--namespace",
        &env.namespace,
        "--output",
        "json",
    ];
    let v4 = statuses(env.cp.helm().args(history_args));
    assert_eq!(
        v4,
        vec![
            (1, "superseded".to_owned()),
            (2, "superseded".to_owned()),
            (3, "failed".to_owned()),
            (4, "deployed".to_owned())
        ]
    );
    let helm3 = || env.cp.helm3();
    assert_eq!(statuses(helm3().args(history_args)), v4, "helm v3 reads it");
    output_ok(helm3().args(["rollback", "app", "1", "--namespace", &env.namespace]));
    assert_eq!(
        statuses(helm3().args(history_args)).last(),
        Some(&(5, "deployed".to_owned()))
    );

    // Uninstall when the resource goes.
    env.delete("app").await;
    eventually("the release to be uninstalled", ACT_TIMEOUT, || async {
        let output = env
            .cp
            .helm()
            .args(["status", "app", "--namespace", &env.namespace])
            .output()
            .unwrap();
        if output.status.success() {
            Err(env.operator().log_tail())
        } else {
            Ok(())
        }
    })
    .await;

    let operator = env.operator();
    assert_eq!(operator.metric(CLI_PROCESSES).await, 0.0, "no helm process");
    for action in ["install", "upgrade", "rollback", "uninstall"] {
        let series = format!("fhr_operator_helm_actions_total{{action=\"{action}\"}}");
        assert!(operator.metric(&series).await >= 1.0, "{series}");
    }
    assert_eq!(
        engine_pid(&env),
        engine,
        "the same engine served every step"
    );
    assert_eq!(operator.metric(RESTARTS).await, 0.0);
}

#[tokio::test]
async fn a_misspelled_field_fails_with_the_api_servers_message() {
    let mut env = OperatorEnv::new("strict").await;
    add_app_chart(&env);
    env.start_operator(&[]).await;
    env.apply("typo", spec("typo", json!({"typo": true}))).await;
    let fhr = env.wait_condition("typo", "False", "InstallFailed").await;
    let message = ready_message(&fhr);
    assert!(
        message.contains("spec.replica") && message.contains("field not declared in schema"),
        "the API server names the field: {message}"
    );
    // Fixing the value installs.
    env.apply("typo", spec("typo", json!({"typo": false})))
        .await;
    env.wait_for("typo", "installed after the fix", ready).await;
}

/// A running operator whose engine is in the middle of installing `release` (its name is the
/// test's prefix too), and that engine's pid.
async fn operator_mid_install(release: &str) -> (OperatorEnv, u32) {
    let mut env = OperatorEnv::new(release).await;
    add_app_chart(&env);
    env.start_operator(&[]).await;
    let engine = engine_pid(&env);
    start_waiting_install(&env, release).await;
    (env, engine)
}

/// Installs `release` with `wait` on a Deployment that never becomes ready (no kubelet here),
/// so the install stays `pending-install` in the engine until its timeout.
async fn start_waiting_install(env: &OperatorEnv, release: &str) {
    let mut waiting = spec(release, json!({}));
    waiting["wait"] = json!(true);
    waiting["timeout"] = json!("10s");
    env.apply(release, waiting).await;
    eventually("the install to be pending", ACT_TIMEOUT, || async {
        match env.helm_history(release).last() {
            Some((1, status)) if status == "pending-install" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// After a fault, an install without `wait` must converge: the interrupted revision is
/// recovered by the engine (unlock, reinstall), never left pending.
async fn converges_without_wait(env: &OperatorEnv, release: &str) {
    env.apply(release, spec(release, json!({}))).await;
    env.wait_for(release, "installed after the fault", ready)
        .await;
    let history = env.helm_history(release);
    assert!(
        !history.iter().any(|(_, s)| s.starts_with("pending")),
        "{history:?}"
    );
    assert_eq!(
        history.last().map(|(_, s)| s.as_str()),
        Some("deployed"),
        "{history:?}"
    );
    assert_eq!(env.operator().metric(CLI_PROCESSES).await, 0.0);
    // Exactly one live engine: nothing was left behind.
    engine_pid(env);
}

#[tokio::test]
async fn a_killed_engine_is_restarted_and_its_release_does_not_stay_pending() {
    let (env, engine) = operator_mid_install("killed").await;

    // SIGKILL the engine in the middle of the install.
    nix_kill(engine, "KILL");
    env.operator()
        .wait_metric(&format!("{RESTARTS}{{reason=\"exited\"}}"), 1.0)
        .await;
    converges_without_wait(&env, "killed").await;
    assert!(
        fhr_testenv::process::stat(engine).is_none(),
        "the killed engine was reaped, not left a zombie"
    );
    let replacement = engine_pid(&env);
    assert_ne!(replacement, engine);
}

#[tokio::test]
async fn a_hung_engine_is_killed_at_the_deadline_and_replaced() {
    let (env, engine) = operator_mid_install("hung").await;

    // Stopped, the engine answers nothing: the request's deadline (Helm's 10 s timeout plus
    // the engine's and the operator's slack) kills it.
    nix_kill(engine, "STOP");
    eventually(
        "the hung engine to be killed",
        Duration::from_secs(90),
        || async {
            let restarts = env
                .operator()
                .try_metric(&format!("{RESTARTS}{{reason=\"hung\"}}"))
                .await?;
            if restarts >= 1.0 && !process_alive(engine) {
                Ok(())
            } else {
                Err(format!(
                    "{restarts} restarts\n{}",
                    env.operator().log_tail()
                ))
            }
        },
    )
    .await;
    converges_without_wait(&env, "hung").await;
}

#[tokio::test]
async fn a_malformed_reply_restarts_the_engine_and_loses_nothing() {
    let mut env = OperatorEnv::new("garbled").await;
    add_app_chart(&env);
    // The first engine's first reply is replaced by garbage; later engines are left alone.
    let marker = env.dir.path().join("garbled-once");
    let wrapper = env.dir.path().join("garbling-engine.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ -e '{marker}' ]; then exec '{engine}' \"$@\"; fi\ntouch '{marker}'\n\
             '{engine}' \"$@\" | {{ IFS= read -r hello; printf '%s\\n' \"$hello\"; IFS= read -r reply; \
             echo '{{\"id\": garbage'; cat; }}\n",
            marker = marker.display(),
            engine = env.cp.tools().engine.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    let engine_flag = format!("--helm-engine-bin={}", wrapper.display());
    env.start_operator(&[&engine_flag]).await;
    env.apply("garbled", spec("garbled", json!({}))).await;
    env.operator()
        .wait_metric(&format!("{RESTARTS}{{reason=\"malformed\"}}"), 1.0)
        .await;
    // The install itself went through; the next reconcile finds it and does nothing again.
    env.wait_for("garbled", "ready at revision 1", ready_at(1))
        .await;
    assert_eq!(
        env.helm_history("garbled"),
        vec![(1, "deployed".to_owned())]
    );
}

#[tokio::test]
async fn a_killed_operator_takes_its_engine_along_and_the_next_one_recovers() {
    let (mut env, engine) = operator_mid_install("orphan").await;

    let mut operator = env.operator.take().unwrap();
    operator.process.kill();
    eventually(
        "the engine to die with the operator",
        Duration::from_secs(10),
        || async {
            if process_alive(engine) {
                Err(format!("engine {engine} still runs"))
            } else {
                Ok(())
            }
        },
    )
    .await;
    env.start_operator(&[]).await;
    converges_without_wait(&env, "orphan").await;
}

/// Sends a signal with kill(1): the tests need no signal crate for two signals.
fn nix_kill(pid: u32, signal: &str) {
    output_ok(std::process::Command::new("kill").args([format!("-{signal}"), pid.to_string()]));
}

#[tokio::test]
async fn a_crd_installed_after_the_engine_started_still_maps() {
    let mut env = OperatorEnv::new("crdlater").await;
    add_app_chart(&env);
    let group = format!("{}.example.com", env.namespace);
    env.repo
        .write(
            "charts/widget-crd/Chart.yaml",
            "apiVersion: v2\nname: widget-crd\nversion: 1.0.0\n",
        )
        .unwrap();
    env.repo
        .write(
            "charts/widget-crd/templates/crd.yaml",
            format!(
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.{group}\nspec:\n  group: {group}\n  scope: Namespaced\n  names: {{plural: widgets, singular: widget, kind: Widget}}\n  versions:\n    - name: v1\n      served: true\n      storage: true\n      schema:\n        openAPIV3Schema:\n          type: object\n          properties:\n            spec: {{type: object, properties: {{size: {{type: integer}}}}}}\n"
            ),
        )
        .unwrap();
    env.repo
        .write(
            "charts/widget/Chart.yaml",
            "apiVersion: v2\nname: widget\nversion: 1.0.0\n",
        )
        .unwrap();
    env.repo
        .write(
            "charts/widget/templates/widget.yaml",
            format!(
                "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: {{{{ .Release.Name }}}}\nspec:\n  size: 3\n"
            ),
        )
        .unwrap();
    env.repo.commit("a CRD and a chart that uses it").unwrap();
    env.start_operator(&[]).await;
    let engine = engine_pid(&env);

    // The engine learns the cluster's kinds at its first action, before the CRD exists.
    env.apply("app", spec("app", json!({}))).await;
    env.wait_for("app", "installed", ready_at(1)).await;
    env.apply(
        "widget-crd",
        json!({"chartGitPath": "widget-crd", "releaseName": "widget-crd"}),
    )
    .await;
    env.wait_for("widget-crd", "installed", ready_at(1)).await;
    env.apply(
        "widget",
        json!({"chartGitPath": "widget", "releaseName": "widget"}),
    )
    .await;
    env.wait_for("widget", "installed with the new kind", ready_at(1))
        .await;
    assert_eq!(engine_pid(&env), engine, "the same engine, no restart");
    assert_eq!(env.operator().metric(RESTARTS).await, 0.0);
}
