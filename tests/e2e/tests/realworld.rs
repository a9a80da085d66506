//! The system against a repository written the way public charts and Flux repositories are
//! (`fixtures/realworld`): zero values the API server drops, generated passwords, a removed API,
//! Namespaces kept beside releases, two resources asking for one release, and webhooks that must
//! reach charts. Real control plane, real helm, real git over HTTP.

use e2e::agent::AgentEnv;
use e2e::operator::{ACT_TIMEOUT, OperatorEnv, ready, ready_at, ready_message};
use e2e::{Daemon, copy_fixture, eventually, unique_name};
use fhr_testenv::http::hmac_sha256_hex;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The generated password of the zero-values release `release`, as stored.
async fn generated_password(env: &OperatorEnv, release: &str) -> Vec<u8> {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let secret = secrets
        .get(&format!("{release}-zero-values-generated"))
        .await
        .unwrap();
    secret.data.unwrap()["password"].0.clone()
}

async fn config_map_message(client: &kube::Client, namespace: &str, name: &str) -> String {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    match config_maps.get_opt(name).await {
        Ok(Some(c)) => c
            .data
            .unwrap_or_default()
            .remove("message")
            .unwrap_or_default(),
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn zero_values_are_not_drift_and_generated_passwords_survive_rechecks_and_restarts() {
    let mut env = OperatorEnv::new("rw-drift").await;
    copy_fixture(&env.repo, "realworld/charts", "charts", &[]);
    env.repo
        .commit("charts as public charts write them")
        .unwrap();
    env.start_operator(&["--charts-sync-interval=2s"]).await;
    env.apply(
        "zero",
        json!({"chartGitPath": "zero-values", "releaseName": "zero",
            "values": [{"name": "message", "value": "from git"}]}),
    )
    .await;
    env.wait_for("zero", "installed", ready_at(1)).await;
    let password = generated_password(&env, "zero").await;

    // Five re-checks, then two restarts (each followed by re-checks): every one compares the
    // objects, and `""`, `false`, `{}`, `[]`, `0` and `stringData` are not hand edits.
    env.reconciles(5.0).await;
    for _ in 0..2 {
        env.operator = None;
        env.start_operator(&["--charts-sync-interval=2s"]).await;
        env.reconciles(3.0).await;
        assert_eq!(
            env.helm_processes().await,
            0.0,
            "a restarted operator upgraded an untouched release\n{}",
            env.operator().log_tail()
        );
    }
    assert_eq!(env.helm_history("zero"), [(1, "deployed".to_owned())]);
    assert_eq!(
        generated_password(&env, "zero").await,
        password,
        "the generated password changed with nothing changed in git"
    );
    let fhr = env.api().get("zero").await.unwrap();
    assert_eq!(
        fhr.status.as_ref().and_then(|s| s.drift.clone()),
        None,
        "nothing was suspected of drift"
    );

    // A real hand edit is still corrected, by exactly one upgrade.
    let config_maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.namespace);
    config_maps
        .patch(
            "zero-zero-values",
            &PatchParams::default(),
            &Patch::Merge(&json!({"data": {"message": "edited by hand"}})),
        )
        .await
        .unwrap();
    env.wait_for("zero", "the hand edit corrected", ready_at(2))
        .await;
    assert_eq!(
        config_map_message(&env.client, &env.namespace, "zero-zero-values").await,
        "from git"
    );
    env.reconciles(3.0).await;
    assert_eq!(
        env.helm_history("zero").len(),
        2,
        "one upgrade for one hand edit"
    );
}

#[tokio::test]
async fn commits_every_few_seconds_do_not_postpone_undoing_a_hand_edit() {
    let mut env = AgentEnv::new("rw-resync").await;
    env.repo
        .write("releaseconfig/a.yaml", env.manifest("a", "webapp"))
        .unwrap();
    env.repo.commit("a").unwrap();
    let interval = Duration::from_secs(6);
    env.start_agent(&["--sync-interval=6s"]).await;
    let api = env.api(&env.namespace);
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"chartGitPath": "edited-by-hand"}})),
    )
    .await
    .unwrap();

    // Commits keep coming faster than the interval (each syncs only what it changed); the full
    // sync that undoes hand edits must still come within about one interval.
    let deadline = Instant::now() + interval * 3;
    let mut commits = 0;
    loop {
        let fhr = api.get("a").await.unwrap();
        if fhr.spec.chart_git_path.as_deref() == Some("webapp") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hand edit was not undone within {:?} while {commits} commits arrived\n{}",
            interval * 3,
            env.agent().log_tail()
        );
        commits += 1;
        env.repo
            .write("notes.txt", format!("commit {commits}\n"))
            .unwrap();
        let commit = env.repo.commit("an unrelated change").unwrap();
        env.wait_synced(&commit).await;
        // The pace of the commits, not a wait for the outcome (polled above with a deadline).
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(commits >= 1, "the commits under test were made");
}

#[tokio::test]
async fn namespaces_committed_with_releases_or_created_later_need_no_full_sync() {
    let env = AgentEnv::new("rw-ns").await;
    let committed = unique_name("rw-committed");
    let later = unique_name("rw-later");
    copy_fixture(
        &env.repo,
        "realworld/namespaces",
        "namespaces",
        &[("${NAMESPACE}", &committed)],
    );
    copy_fixture(
        &env.repo,
        "realworld/releaseconfig",
        "releaseconfig",
        &[("${NAMESPACE}", &committed)],
    );
    env.repo
        .write("releaseconfig/late.yaml", {
            let manifest = env.manifest("late", "webapp");
            manifest.replace(
                &format!("namespace: {}", env.namespace),
                &format!("namespace: {later}"),
            )
        })
        .unwrap();
    let commit = env.repo.commit("releases beside their namespace").unwrap();
    // The release folder is read first: the Namespace must still be applied before them. An
    // hour between full syncs: only a retry explains the late namespace's release.
    let args = env.agent_args(&[
        "--allow-kind=FluxHelmRelease,Namespace",
        "--git-path=releaseconfig",
        "--git-path=namespaces",
        "--sync-interval=1h",
    ]);
    let agent = Daemon::start("flux-agent", env.cp.kubeconfig(), env.dir.path(), &args);
    let state = env.wait_synced(&commit).await;

    // The first sync applied the Namespace first, then both releases in it (list and map form).
    let in_committed = env.api(&committed);
    for name in ["zero-values", "legacy-web"] {
        let fhr = in_committed.get_opt(name).await.unwrap();
        assert!(
            fhr.is_some(),
            "{name} was not applied in the first sync: {state:?}"
        );
    }
    let errors = state.get("errors").cloned().unwrap_or_default();
    assert!(!errors.contains(&committed), "{errors}");
    assert!(errors.contains(&later), "{errors}");

    // Not ready while the first sync is incomplete, and /readyz says why.
    let (code, body) = agent.get("/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not applied"), "{body}");

    fhr_testenv::create_namespace(&env.client, &later)
        .await
        .unwrap();
    let in_later = env.api(&later);
    eventually(
        "the release in the late namespace to be applied by a retry",
        Duration::from_secs(60),
        || async {
            match in_later.get_opt("late").await {
                Ok(Some(_)) => Ok(()),
                other => Err(format!("{other:?}\n{}", agent.log_tail())),
            }
        },
    )
    .await;
    agent.wait_ready().await;
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    assert!(namespaces.get_opt(&committed).await.unwrap().is_some());
}

#[tokio::test]
async fn two_resources_asking_for_one_release_the_older_deploys_and_the_other_takes_over() {
    let mut env = OperatorEnv::new("rw-twice").await;
    // Both exist before the operator starts: it sees them at the same moment.
    env.apply(
        "first",
        json!({"chartGitPath": "webapp", "releaseName": "shared",
            "values": {"message": "first"}}),
    )
    .await;
    env.apply(
        "second",
        json!({"chartGitPath": "webapp", "releaseName": "shared",
            "values": {"message": "second"}}),
    )
    .await;
    // An hour between re-checks: only the owner leaving explains a takeover.
    env.start_operator(&["--charts-sync-interval=1h"]).await;
    env.wait_for("first", "installed", ready_at(1)).await;
    let second = env
        .wait_condition("second", "False", "ReleaseConflict")
        .await;
    let status = second.status.clone().unwrap();
    assert_eq!(status.revision, None, "{status:?}");
    assert_eq!(status.release_status, None, "{status:?}");
    assert!(ready_message(&second).contains("first"), "{status:?}");
    assert_eq!(env.helm_history("shared"), [(1, "deployed".to_owned())]);
    assert_eq!(
        config_map_message(&env.client, &env.namespace, "shared-webapp").await,
        "first"
    );
    assert_eq!(env.helm_processes().await, 1.0, "one install, no race");

    env.delete("first").await;
    env.wait_for("second", "taken over", ready_at(1)).await;
    assert_eq!(
        config_map_message(&env.client, &env.namespace, "shared-webapp").await,
        "second"
    );
    eventually("first to be gone", ACT_TIMEOUT, || async {
        match env.api().get_opt("first").await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn a_signed_webhook_after_a_chart_only_commit_upgrades_the_release() {
    let mut env = AgentEnv::new("rw-hook").await;
    env.commit_example_release("web");
    let secret_flag = env.webhook_secret_flag("hook-secret");
    // An hour between either daemon's polls: only the webhook can explain the upgrade.
    env.start_agent(&["--git-poll-interval=1h", &secret_flag])
        .await;
    let args = env.operator_args(
        env.cp.tools(),
        &["--git-poll-interval=1h", "--charts-sync-interval=1h"],
    );
    let operator = Daemon::start("helm-operator", env.cp.kubeconfig(), env.dir.path(), &args);
    operator.wait_ready().await;
    let api = env.api(&env.namespace);
    let wait_revision = |revision: i64| {
        let (api, operator) = (&api, &operator);
        async move {
            eventually(
                &format!("web at revision {revision}"),
                ACT_TIMEOUT,
                || async {
                    let fhr = api.get("web").await.map_err(|e| e.to_string())?;
                    if ready_at(revision)(&fhr) {
                        Ok(fhr)
                    } else {
                        Err(format!("{:?}\n{}", fhr.status, operator.log_tail()))
                    }
                },
            )
            .await
        }
    };
    wait_revision(1).await;

    let values = std::fs::read_to_string(env.repo.path().join("charts/webapp/values.yaml"))
        .unwrap()
        .replace("hello from webapp", "hello after the webhook");
    env.repo.write("charts/webapp/values.yaml", values).unwrap();
    let commit = env.repo.commit("chart only").unwrap();
    let body = br#"{"ref":"refs/heads/master"}"#;
    let signature = format!("sha256={}", hmac_sha256_hex(b"hook-secret", body));
    let code = env
        .agent()
        .post(
            "/api/v1/webhook",
            &[("X-Hub-Signature-256", &signature)],
            body,
        )
        .await;
    assert_eq!(code, 202);
    env.wait_synced(&commit).await;
    let fhr = wait_revision(2).await;
    assert_eq!(
        fhr.status.unwrap().chart_revision.as_deref(),
        Some(commit.as_str())
    );
    assert_eq!(
        config_map_message(
            &env.client,
            &env.namespace,
            &format!("{}-web-webapp", env.namespace)
        )
        .await,
        "hello after the webhook"
    );
}

#[tokio::test]
async fn a_removed_api_is_named_with_its_template_and_wide_output_shows_why() {
    let mut env = OperatorEnv::new("rw-messages").await;
    copy_fixture(&env.repo, "realworld/charts", "charts", &[]);
    env.repo.commit("a chart from 2018").unwrap();
    env.start_operator(&[]).await;
    env.apply("legacy", json!({"chartGitPath": "legacy-web"}))
        .await;
    let fhr = env.wait_condition("legacy", "False", "InstallFailed").await;
    let message = ready_message(&fhr);
    for expected in [
        "does not serve Deployment in extensions/v1beta1",
        "templates/deployment.yaml",
        "apps/v1",
    ] {
        assert!(
            message.contains(expected),
            "{expected:?} not in {message:?}"
        );
    }
    assert!(!message.contains("ensure CRDs"), "{message}");
    // Counted once the reconcile ends, just after its status write: waited for, not read at once.
    env.operator()
        .wait_metric(
            "fhr_operator_reconciles_total{result=\"action_failed\"}",
            1.0,
        )
        .await;

    // `kubectl get fhr -o wide` asks for a Table and shows the columns of priority 1.
    let request = http::Request::get(format!(
        "/apis/{}/v1alpha/namespaces/{}/fluxhelmreleases",
        fhr_types::api::GROUP,
        env.namespace
    ))
    .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    .body(Vec::new())
    .unwrap();
    let table: Value = env.client.request(request).await.unwrap();
    let columns: Vec<(String, i64)> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["priority"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    for wide in ["Reason", "Message"] {
        assert!(
            columns.contains(&(wide.to_owned(), 1)),
            "{wide} is not a wide column: {columns:?}"
        );
    }
    let cells = table["rows"][0]["cells"].to_string();
    assert!(cells.contains("InstallFailed"), "{cells}");
    assert!(cells.contains("does not serve Deployment"), "{cells}");

    // The chart moved to apps/v1: the failed install is replaced.
    let template = std::fs::read_to_string(
        env.repo
            .path()
            .join("charts/legacy-web/templates/deployment.yaml"),
    )
    .unwrap()
    .replace("apiVersion: extensions/v1beta1", "apiVersion: apps/v1")
    .replace(
        "  template:\n",
        "  selector:\n    matchLabels:\n      app: {{ .Chart.Name }}\n      release: {{ .Release.Name }}\n  template:\n",
    );
    env.repo
        .write("charts/legacy-web/templates/deployment.yaml", template)
        .unwrap();
    env.repo.commit("legacy-web on apps/v1").unwrap();
    let fhr = env.wait_for("legacy", "installed on apps/v1", ready).await;
    assert_eq!(
        fhr.condition("Ready").unwrap().reason,
        "InstallSucceeded",
        "{:?}",
        fhr.status
    );
}
