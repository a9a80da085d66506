//! helm-operator where operators hurt their users: ownership, failure policy, suspend and
//! reconcile requests, against a real control plane and the real helm.

use e2e::eventually;
use e2e::operator::{OperatorEnv, ready_at, ready_message};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use std::time::Duration;

fn helm_install(env: &OperatorEnv, release: &str) {
    let chart = fhr_testenv::examples_dir().join("charts/webapp");
    e2e::output_ok(
        env.cp
            .helm()
            .args(["install", release, "--namespace", &env.namespace])
            .arg(&chart),
    );
}

#[tokio::test]
async fn a_release_installed_by_hand_is_adopted_only_when_named_explicitly() {
    let mut env = OperatorEnv::new("adopt").await;
    helm_install(&env, "handmade");
    let default_name = format!("{}-unnamed", env.namespace);
    helm_install(&env, &default_name);
    env.start_operator(&[]).await;

    // Named explicitly: adopted and upgraded (revision 2 carries the operator's labels).
    env.apply(
        "adopter",
        json!({"chartGitPath": "webapp", "releaseName": "handmade",
        "values": [{"name": "message", "value": "adopted"}]}),
    )
    .await;
    env.wait_for("adopter", "the adopted release upgraded", ready_at(2))
        .await;
    assert_eq!(
        env.helm_history("handmade").last(),
        Some(&(2, "deployed".to_owned()))
    );

    // Not named: the existing release of the default name is left alone and reported.
    env.apply("unnamed", json!({"chartGitPath": "webapp"}))
        .await;
    let fhr = env
        .wait_condition("unnamed", "False", "ReleaseConflict")
        .await;
    assert!(
        ready_message(&fhr).contains("set spec.releaseName"),
        "{}",
        ready_message(&fhr)
    );
    env.reconciles(2.0).await;
    assert_eq!(
        env.helm_history(&default_name),
        vec![(1, "deployed".to_owned())]
    );
}

#[tokio::test]
async fn two_resources_naming_one_release_do_not_fight() {
    let mut env = OperatorEnv::new("pingpong").await;
    env.start_operator(&["--charts-sync-interval=2s"]).await;
    env.apply(
        "first",
        json!({"chartGitPath": "webapp", "releaseName": "shared",
        "values": [{"name": "message", "value": "first"}]}),
    )
    .await;
    env.wait_for("first", "installed", ready_at(1)).await;
    env.apply(
        "second",
        json!({"chartGitPath": "webapp", "releaseName": "shared",
        "values": [{"name": "message", "value": "second"}]}),
    )
    .await;
    let second = env
        .wait_condition("second", "False", "ReleaseConflict")
        .await;
    assert!(
        ready_message(&second).contains(&format!("{}/first", env.namespace)),
        "{}",
        ready_message(&second)
    );
    // Several re-checks of both: the release never moves.
    env.reconciles(8.0).await;
    assert_eq!(env.helm_history("shared"), vec![(1, "deployed".to_owned())]);
    let first = env.api().get("first").await.unwrap();
    assert!(first.condition("Ready").is_some_and(|c| c.status == "True"));
}

/// A chart whose Service port comes from values: port 99999 makes the API server refuse it.
fn add_port_chart(env: &OperatorEnv) {
    env.repo
        .write(
            "charts/ported/Chart.yaml",
            "apiVersion: v2\nname: ported\nversion: 0.1.0\n",
        )
        .unwrap();
    env.repo
        .write(
            "charts/ported/templates/svc.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {{ .Release.Name }}\nspec:\n  ports:\n    - port: {{ .Values.port }}\n",
        )
        .unwrap();
    env.repo
        .write("charts/ported/values.yaml", "port: 80\n")
        .unwrap();
    env.repo
        .commit("a chart whose port comes from values")
        .unwrap();
}

#[tokio::test]
async fn a_failed_upgrade_rolls_back_when_enabled_and_then_waits_for_a_change() {
    let mut env = OperatorEnv::new("rollback").await;
    add_port_chart(&env);
    // The helm CLI fallback rolls back too.
    env.start_operator(&["--charts-sync-interval=2s", "--helm-engine=cli"])
        .await;
    let spec = |port: u32| {
        json!({"chartGitPath": "ported", "releaseName": "rb", "rollback": {"enable": true},
        "values": [{"name": "port", "value": port}]})
    };
    env.apply("rb", spec(80)).await;
    env.wait_for("rb", "installed", ready_at(1)).await;

    env.apply("rb", spec(99999)).await;
    let fhr = env.wait_condition("rb", "False", "RolledBack").await;
    assert!(
        ready_message(&fhr).contains("rolled back to revision 1"),
        "{}",
        ready_message(&fhr)
    );
    assert!(fhr.status.unwrap().failures >= Some(1));
    let history = env.helm_history("rb");
    assert_eq!(
        history.last(),
        Some(&(3, "deployed".to_owned())),
        "{history:?}"
    );
    assert!(history.contains(&(2, "failed".to_owned())), "{history:?}");

    // No upgrade loop: re-checks leave the rolled-back release alone until something changes.
    let helm = env.helm_processes().await;
    env.reconciles(4.0).await;
    assert_eq!(
        env.helm_processes().await,
        helm,
        "the failed upgrade was retried in a loop"
    );
    env.apply("rb", spec(8080)).await;
    env.wait_for("rb", "upgraded after the fix", ready_at(4))
        .await;
}

#[tokio::test]
async fn a_failed_upgrade_without_rollback_stays_failed_and_is_retried_with_backoff() {
    let mut env = OperatorEnv::new("retry").await;
    add_port_chart(&env);
    env.start_operator(&[]).await;
    env.apply(
        "retry",
        json!({"chartGitPath": "ported", "releaseName": "retry"}),
    )
    .await;
    env.wait_for("retry", "installed", ready_at(1)).await;
    env.apply(
        "retry",
        json!({"chartGitPath": "ported", "releaseName": "retry",
        "values": [{"name": "port", "value": 99999}]}),
    )
    .await;
    let fhr = env
        .wait_for("retry", "two failed attempts", |f| {
            f.status.as_ref().and_then(|s| s.failures) >= Some(2)
        })
        .await;
    assert_eq!(fhr.condition("Ready").unwrap().reason, "UpgradeFailed");
    let history = env.helm_history("retry");
    assert!(
        history.contains(&(1, "deployed".to_owned())),
        "the last good revision stays deployed: {history:?}"
    );
    let failed = env
        .operator()
        .metric("fhr_operator_helm_actions_total{result=\"failure\"}")
        .await;
    assert!(failed >= 2.0, "failures are counted in metrics: {failed}");
}

#[tokio::test]
async fn a_failed_first_install_is_cleaned_up_so_the_next_attempt_succeeds() {
    let mut env = OperatorEnv::new("firstfail").await;
    add_port_chart(&env);
    env.start_operator(&[]).await;
    env.apply(
        "first",
        json!({"chartGitPath": "ported", "releaseName": "first",
        "values": [{"name": "port", "value": 99999}]}),
    )
    .await;
    env.wait_condition("first", "False", "InstallFailed").await;
    assert_eq!(env.helm_history("first"), vec![(1, "failed".to_owned())]);
    env.apply(
        "first",
        json!({"chartGitPath": "ported", "releaseName": "first"}),
    )
    .await;
    env.wait_for(
        "first",
        "installed after the failed install was removed",
        ready_at(1),
    )
    .await;
    assert_eq!(env.helm_history("first"), vec![(1, "deployed".to_owned())]);
}

#[tokio::test]
async fn suspend_stops_every_action_and_an_annotation_requests_a_reconcile() {
    let mut env = OperatorEnv::new("suspend").await;
    env.start_operator(&["--charts-sync-interval=1h"]).await;
    env.apply("s", json!({"chartGitPath": "webapp", "releaseName": "s"}))
        .await;
    env.wait_for("s", "installed", ready_at(1)).await;

    let before = env.operator().metric("fhr_operator_reconciles_total").await;
    env.apply(
        "s",
        json!({"chartGitPath": "webapp", "releaseName": "s", "suspend": true,
        "values": [{"name": "message", "value": "not while suspended"}]}),
    )
    .await;
    env.reconciles_since(before, 1.0).await;
    assert_eq!(
        env.helm_history("s"),
        vec![(1, "deployed".to_owned())],
        "acted while suspended"
    );

    env.apply(
        "s",
        json!({"chartGitPath": "webapp", "releaseName": "s",
        "values": [{"name": "message", "value": "resumed"}]}),
    )
    .await;
    env.wait_for("s", "upgraded once resumed", ready_at(2))
        .await;

    // With an hour between re-checks, only the annotation explains another reconcile.
    let before = env.operator().metric("fhr_operator_reconciles_total").await;
    let patch = json!({"metadata": {"annotations": {fhr_types::meta::RECONCILE_REQUEST_ANNOTATION: "now"}}});
    env.api()
        .patch("s", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    env.reconciles_since(before, 1.0).await;
    assert!(env.operator().metric("fhr_operator_reconciles_total").await > before);
}

#[tokio::test]
async fn only_the_leader_acts_and_a_standby_takes_over_when_it_dies() {
    let env = OperatorEnv::new("leader").await;
    let args = env.operator_args(&["--lease-duration=3s"]);
    let mut leader =
        e2e::Daemon::start("helm-operator", env.cp.kubeconfig(), env.dir.path(), &args);
    leader.wait_ready().await;
    let standby = e2e::Daemon::start("helm-operator", env.cp.kubeconfig(), env.dir.path(), &args);
    eventually(
        "the second operator to stand by",
        Duration::from_secs(30),
        || async {
            match standby.get("/readyz").await {
                Ok((503, body)) if body.contains("standby") => Ok(()),
                other => Err(format!("{other:?}\n{}", standby.log_tail())),
            }
        },
    )
    .await;

    env.apply(
        "one",
        json!({"chartGitPath": "webapp", "releaseName": "one"}),
    )
    .await;
    env.wait_for("one", "installed by the leader", ready_at(1))
        .await;
    assert_eq!(leader.metric("fhr_operator_helm_actions_total").await, 1.0);
    assert_eq!(
        standby.metric("fhr_operator_helm_actions_total").await,
        0.0,
        "the standby acted"
    );
    assert_eq!(
        standby.metric("fhr_operator_reconciles_total").await,
        0.0,
        "the standby reconciled"
    );

    // A crash: the Lease is not released, so the standby waits for it to expire.
    leader.process.kill();
    standby.wait_ready().await;
    env.apply(
        "two",
        json!({"chartGitPath": "webapp", "releaseName": "two"}),
    )
    .await;
    env.wait_for("two", "installed by the new leader", ready_at(1))
        .await;
    assert_eq!(standby.metric("fhr_operator_helm_actions_total").await, 1.0);
}

/// A chart with a pre-install/pre-upgrade hook Pod: Helm waits for it, so the release stays
/// `pending-*` until the test, standing in for the kubelet, marks the Pod Succeeded.
async fn add_hook_chart(env: &OperatorEnv) {
    env.repo
        .write(
            "charts/hooked/Chart.yaml",
            "apiVersion: v2\nname: hooked\nversion: 0.1.0\n",
        )
        .unwrap();
    env.repo
        .write(
            "charts/hooked/templates/hook.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {{ .Release.Name }}-hook\n  annotations:\n    helm.sh/hook: pre-install,pre-upgrade\n    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded\nspec:\n  restartPolicy: Never\n  containers:\n    - name: hook\n      image: busybox:1.36\n",
        )
        .unwrap();
    env.repo
        .write(
            "charts/hooked/templates/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\ndata:\n  message: {{ .Values.message | quote }}\n",
        )
        .unwrap();
    env.repo
        .write("charts/hooked/values.yaml", "message: first\n")
        .unwrap();
    env.repo.commit("a chart with a hook").unwrap();
    // Pods need the namespace's default ServiceAccount, which no controller-manager creates here.
    let accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
        kube::Api::namespaced(env.client.clone(), &env.namespace);
    let account = serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    let _ = accounts.create(&Default::default(), &account).await;
}

/// Plays the kubelet for hook Pods: marks every Pod in the namespace Succeeded, until dropped.
fn complete_hook_pods(env: &OperatorEnv) -> tokio::task::JoinHandle<()> {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(env.client.clone(), &env.namespace);
    tokio::spawn(async move {
        loop {
            if let Ok(list) = pods.list(&Default::default()).await {
                for pod in list {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    if pod.status.and_then(|s| s.phase).as_deref() != Some("Succeeded") {
                        let status = json!({"status": {"phase": "Succeeded"}});
                        let _ = pods
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                            .await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Waits until the newest revision of `release` has `status`.
async fn wait_release_status(env: &OperatorEnv, release: &str, status: &str) -> Vec<(i64, String)> {
    eventually(
        &format!("release {release} to be {status}"),
        Duration::from_secs(60),
        || async {
            let history = env.helm_history(release);
            if history.last().is_some_and(|(_, s)| s == status) {
                Ok(history)
            } else {
                Err(format!("{history:?}"))
            }
        },
    )
    .await
}

#[tokio::test]
async fn an_operator_killed_mid_install_or_mid_upgrade_recovers_the_pending_release_by_itself() {
    let mut env = OperatorEnv::new("crash").await;
    add_hook_chart(&env).await;
    env.start_operator(&[]).await;
    env.apply(
        "crash",
        json!({"chartGitPath": "hooked", "releaseName": "crash"}),
    )
    .await;
    wait_release_status(&env, "crash", "pending-install").await;

    // SIGKILL mid-install: the Helm engine dies with the operator, the release stays
    // pending-install.
    let mut operator = env.operator.take().unwrap();
    let engines = e2e::children_named(operator.process.id(), "fhr-helm-engine");
    assert_eq!(engines.len(), 1, "the operator runs one engine");
    operator.process.kill();
    eventually(
        "the engine to die with the operator",
        Duration::from_secs(10),
        || async {
            match engines
                .iter()
                .filter(|pid| e2e::process_alive(**pid))
                .count()
            {
                0 => Ok(()),
                n => Err(format!("{n} engine processes left")),
            }
        },
    )
    .await;
    assert_eq!(
        env.helm_history("crash"),
        vec![(1, "pending-install".to_owned())]
    );

    // Restarted, it unlocks the release and converges once the hook runs.
    let kubelet = complete_hook_pods(&env);
    env.start_operator(&[]).await;
    env.wait_for("crash", "installed after the crash", ready_at(1))
        .await;
    kubelet.abort();

    // SIGKILL mid-upgrade.
    env.apply(
        "crash",
        json!({"chartGitPath": "hooked", "releaseName": "crash",
        "values": [{"name": "message", "value": "second"}]}),
    )
    .await;
    wait_release_status(&env, "crash", "pending-upgrade").await;
    let mut operator = env.operator.take().unwrap();
    operator.process.kill();
    let kubelet = complete_hook_pods(&env);
    env.start_operator(&[]).await;
    let fhr = env
        .wait_for("crash", "upgraded after the crash", |f| {
            f.condition("Ready").is_some_and(|c| c.status == "True")
                && f.status.as_ref().and_then(|s| s.revision) >= Some(3)
        })
        .await;
    kubelet.abort();
    let history = env.helm_history("crash");
    assert!(
        history.contains(&(2, "failed".to_owned())),
        "the interrupted revision was marked failed: {history:?}"
    );
    assert_eq!(
        history.last().map(|(_, s)| s.as_str()),
        Some("deployed"),
        "{history:?}"
    );
    assert!(
        !history.iter().any(|(_, s)| s.starts_with("pending")),
        "{history:?}"
    );
    assert!(fhr.status.unwrap().revision >= Some(3));
}

#[tokio::test]
async fn sigterm_during_an_action_never_leaves_the_release_pending() {
    let mut env = OperatorEnv::new("sigterm").await;
    add_hook_chart(&env).await;
    env.start_operator(&[]).await;
    // A short Helm timeout: the hook never completes, so helm fails the install cleanly.
    env.apply(
        "term",
        json!({"chartGitPath": "hooked", "releaseName": "term", "timeout": "10s"}),
    )
    .await;
    wait_release_status(&env, "term", "pending-install").await;
    let mut operator = env.operator.take().unwrap();
    let exit = operator.process.terminate(Duration::from_secs(90));
    assert!(
        exit.is_some_and(|s| s.success()),
        "a clean exit after the action: {exit:?}\n{}",
        operator.log_tail()
    );
    let history = env.helm_history("term");
    assert!(
        !history.iter().any(|(_, s)| s.starts_with("pending")),
        "left pending: {history:?}"
    );
    assert_eq!(
        history.last().map(|(_, s)| s.as_str()),
        Some("failed"),
        "{history:?}"
    );
}

#[tokio::test]
async fn values_from_config_maps_and_secrets_merge_in_order_and_secrets_never_leak() {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let mut env = OperatorEnv::new("valuesfrom").await;
    let canary = format!("canary-{}", e2e::unique_name("secret"));
    let config_maps: kube::Api<ConfigMap> =
        kube::Api::namespaced(env.client.clone(), &env.namespace);
    let secrets: kube::Api<Secret> = kube::Api::namespaced(env.client.clone(), &env.namespace);
    let apply = PatchParams::apply(e2e::TEST_MANAGER).force();
    let base = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "base"},
        "data": {"values.yaml": "message: from-configmap\nreplicaCount: 2\nsettings:\n  logLevel: info\n"}});
    config_maps
        .patch("base", &apply, &Patch::Apply(&base))
        .await
        .unwrap();
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "stringData": {"extra.yaml": format!("settings:\n  token: {canary}\n")}});
    secrets
        .patch("creds", &apply, &Patch::Apply(&secret))
        .await
        .unwrap();
    env.start_operator(&[]).await;

    let spec = |extra: serde_json::Value| {
        let mut spec = json!({"chartGitPath": "webapp", "releaseName": "vf",
            "valuesFrom": [
                {"configMapKeyRef": {"name": "base"}},
                {"secretKeyRef": {"name": "creds", "key": "extra.yaml"}},
                {"configMapKeyRef": {"name": "absent", "optional": true}},
            ],
            "values": [{"name": "replicaCount", "value": 3}]});
        if let Some(extra) = extra.as_object() {
            spec.as_object_mut().unwrap().extend(extra.clone());
        }
        spec
    };
    env.apply("vf", spec(json!(null))).await;
    env.wait_for("vf", "installed", ready_at(1)).await;
    let data = config_maps.get("vf-webapp").await.unwrap().data.unwrap();
    assert_eq!(data["message"], "from-configmap");
    assert_eq!(data["replicas"], "3", "spec.values wins over valuesFrom");
    assert!(
        data["settings.yaml"].contains("logLevel: info"),
        "{}",
        data["settings.yaml"]
    );
    assert!(
        data["settings.yaml"].contains(&canary),
        "the Secret's values reach the chart"
    );

    // Changing a referenced object upgrades the release.
    let changed = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "base"},
        "data": {"values.yaml": "message: changed-in-configmap\n"}});
    config_maps
        .patch("base", &apply, &Patch::Apply(&changed))
        .await
        .unwrap();
    env.wait_for("vf", "upgraded after the ConfigMap changed", ready_at(2))
        .await;
    assert_eq!(
        config_maps.get("vf-webapp").await.unwrap().data.unwrap()["message"],
        "changed-in-configmap"
    );

    // A missing required source is a clear condition; nothing is lost.
    env.apply(
        "vf",
        spec(json!({"valuesFrom": [{"secretKeyRef": {"name": "missing"}}]})),
    )
    .await;
    let fhr = env.wait_condition("vf", "False", "InvalidValuesFrom").await;
    assert!(
        ready_message(&fhr).contains("Secret"),
        "{}",
        ready_message(&fhr)
    );
    assert!(
        ready_message(&fhr).contains("missing"),
        "{}",
        ready_message(&fhr)
    );
    assert_eq!(
        env.helm_history("vf").last(),
        Some(&(2, "deployed".to_owned()))
    );

    // A Secret value the API server refuses shows up in no message.
    let refused = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "stringData": {"extra.yaml": format!("service:\n  port: {canary}\n")}});
    secrets
        .patch("creds", &apply, &Patch::Apply(&refused))
        .await
        .unwrap();
    env.apply("vf", spec(json!(null))).await;
    env.wait_condition("vf", "False", "UpgradeFailed").await;
    let fhr = env.api().get("vf").await.unwrap();
    let status = serde_json::to_string(&fhr.status).unwrap();
    assert!(
        !status.contains(&canary),
        "secret value in status: {status}"
    );
    // Helm's error quotes the refused value: the redaction, not luck, keeps it out.
    assert!(
        ready_message(&fhr).contains("***"),
        "{}",
        ready_message(&fhr)
    );
    let notes: String = env
        .events()
        .await
        .into_iter()
        .map(|(_, message)| message)
        .collect();
    assert!(!notes.contains(&canary), "secret value in an Event");
    assert!(
        !env.operator().log().contains(&canary),
        "secret value in the log"
    );
}

#[tokio::test]
async fn objects_edited_or_deleted_by_hand_are_restored_and_no_drift_runs_no_helm() {
    use k8s_openapi::api::core::v1::{ConfigMap, Service};
    let mut env = OperatorEnv::new("drift").await;
    env.start_operator(&["--charts-sync-interval=2s"]).await;
    env.apply(
        "d",
        json!({"chartGitPath": "webapp", "releaseName": "d",
        "values": [{"name": "message", "value": "declared"}]}),
    )
    .await;
    env.wait_for("d", "installed", ready_at(1)).await;

    // Detection reads the cluster: re-checks of untouched objects (with the API server's
    // defaults added to them) start no Helm process.
    let helm = env.helm_processes().await;
    env.reconciles(4.0).await;
    assert_eq!(
        env.helm_processes().await,
        helm,
        "re-checks without drift ran helm"
    );

    let config_maps: kube::Api<ConfigMap> =
        kube::Api::namespaced(env.client.clone(), &env.namespace);
    let edit = json!({"data": {"message": "edited by hand"}});
    config_maps
        .patch("d-webapp", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    eventually(
        "the hand edit to be undone",
        Duration::from_secs(60),
        || async {
            let data = config_maps
                .get("d-webapp")
                .await
                .map_err(|e| e.to_string())?
                .data
                .unwrap_or_default();
            if data.get("message").map(String::as_str) == Some("declared") {
                Ok(())
            } else {
                Err(format!("{data:?}"))
            }
        },
    )
    .await;

    let services: kube::Api<Service> = kube::Api::namespaced(env.client.clone(), &env.namespace);
    services
        .delete("d-webapp", &Default::default())
        .await
        .unwrap();
    eventually(
        "the deleted Service to be recreated",
        Duration::from_secs(60),
        || async {
            match services.get_opt("d-webapp").await {
                Ok(Some(_)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    env.wait_for("d", "in sync again", |f| {
        f.condition("Ready").is_some_and(|c| c.status == "True")
    })
    .await;
    assert_eq!(
        env.helm_processes().await,
        helm + 2.0,
        "one upgrade per drift"
    );
    let reasons: Vec<String> = env.events().await.into_iter().map(|(r, _)| r).collect();
    assert!(reasons.iter().any(|r| r == "DriftDetected"), "{reasons:?}");
}
