//! flux-agent against a real control plane and a real git server on loopback (smart HTTP, basic
//! auth): apply, change, prune, broken YAML, allow-list, git outages, sync triggers, bombs.

use e2e::agent::{AgentEnv, SYNC_TIMEOUT};
use e2e::{eventually, unique_name};
use fhr_testenv::http::hmac_sha256_hex;
use fhr_types::FluxHelmRelease;
use fhr_types::meta::{SOURCE_COMMIT_ANNOTATION, SYNC_SET_LABEL};
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

async fn names(api: &Api<FluxHelmRelease>) -> Vec<String> {
    let mut names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|f| f.metadata.name)
        .collect();
    names.sort();
    names
}

/// Waits until the namespace holds exactly these FluxHelmRelease objects.
async fn wait_names(api: &Api<FluxHelmRelease>, expected: &[&str]) {
    eventually(&format!("objects {expected:?}"), SYNC_TIMEOUT, || async {
        let now = names(api).await;
        if now == expected {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    })
    .await
}

async fn resource_versions(api: &Api<FluxHelmRelease>) -> BTreeMap<String, String> {
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|f| {
            (
                f.metadata.name.unwrap(),
                f.metadata.resource_version.unwrap(),
            )
        })
        .collect()
}

/// Events the agent published about its state object.
async fn event_notes(env: &AgentEnv) -> String {
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.namespace);
    let list = events.list(&ListParams::default()).await.unwrap();
    list.items
        .iter()
        .filter_map(|e| e.message.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn every_resource_under_the_path_is_applied_over_http_with_basic_auth() {
    let mut env = AgentEnv::new("apply").await;
    let default_name = unique_name("no-namespace");
    env.repo.write("releaseconfig/mongodb.yaml", format!(
        "---\n  apiVersion: helm.integrations.flux.weave.works/v1alpha\n  kind: FluxHelmRelease\n  metadata:\n    name: mongodb\n    namespace: {}\n    labels:\n      chart: mongodb\n  spec:\n    chartGitPath: mongodb\n    releaseName: mongo-database\n    values:\n      - name: image\n        value: bitnami/mongodb:3.7.1-r1\n", env.namespace)).unwrap();
    env.repo
        .write(
            "releaseconfig/apps.yml",
            format!(
                "{}---\n{}",
                env.manifest("front", "webapp"),
                env.manifest("back", "webapp")
            ),
        )
        .unwrap();
    env.repo
        .write(
            "releaseconfig/team/nested/deep.yaml",
            env.manifest("deep", "cronjob"),
        )
        .unwrap();
    env.repo.write("releaseconfig/default.yaml", format!(
        "apiVersion: helm.integrations.flux.weave.works/v1alpha\nkind: FluxHelmRelease\nmetadata:\n  name: {default_name}\nspec:\n  chartGitPath: webapp\n")).unwrap();
    env.repo
        .write("releaseconfig/README.md", "not a manifest\n")
        .unwrap();
    env.repo
        .write("elsewhere/ignored.yaml", env.manifest("ignored", "webapp"))
        .unwrap();
    let commit = env.repo.commit("release configuration").unwrap();
    env.start_agent(&[]).await;
    let state = env.wait_synced(&commit).await;
    assert_eq!(state["applied"], "5", "{state:?}");
    assert_eq!(state["errors"], "");

    let api = env.api(&env.namespace);
    assert_eq!(names(&api).await, ["back", "deep", "front", "mongodb"]);
    let mongodb = api.get("mongodb").await.unwrap();
    assert_eq!(mongodb.spec.release_name.as_deref(), Some("mongo-database"));
    assert_eq!(
        mongodb.metadata.labels.as_ref().unwrap()["chart"],
        "mongodb"
    );
    assert_eq!(
        mongodb.metadata.labels.as_ref().unwrap()[SYNC_SET_LABEL],
        env.sync_set
    );
    assert_eq!(mongodb.annotations_commit(), commit);
    let managers: Vec<_> = mongodb
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.contains(&"flux-agent".to_owned()), "{managers:?}");
    let default = env.api("default").get(&default_name).await.unwrap();
    assert_eq!(
        default.spec.chart_git_path.as_deref(),
        Some("webapp"),
        "no namespace lands in default"
    );
    env.api("default")
        .delete(&default_name, &Default::default())
        .await
        .unwrap();
}

trait CommitAnnotation {
    fn annotations_commit(&self) -> String;
}

impl CommitAnnotation for FluxHelmRelease {
    fn annotations_commit(&self) -> String {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SOURCE_COMMIT_ANNOTATION))
            .cloned()
            .unwrap_or_default()
    }
}

#[tokio::test]
async fn a_commit_changes_only_its_object_and_an_idle_sync_writes_nothing() {
    let mut env = AgentEnv::new("change").await;
    env.repo
        .write("releaseconfig/a.yaml", env.manifest("a", "webapp"))
        .unwrap();
    env.repo
        .write("releaseconfig/b.yaml", env.manifest("b", "webapp"))
        .unwrap();
    let first = env.repo.commit("two resources").unwrap();
    env.start_agent(&["--sync-interval=2s"]).await;
    env.wait_synced(&first).await;
    let api = env.api(&env.namespace);
    let before = resource_versions(&api).await;

    // Periodic syncs with nothing changed write nothing.
    let syncs = env.agent().metric("fhr_agent_syncs_total").await;
    env.agent()
        .wait_metric("fhr_agent_syncs_total", syncs + 2.0)
        .await;
    assert_eq!(
        resource_versions(&api).await,
        before,
        "an idle sync changed objects"
    );

    // A commit that changes b only.
    env.repo
        .write("releaseconfig/b.yaml", env.manifest("b", "mongodb"))
        .unwrap();
    let second = env.commit_and_sync("b moves to mongodb").await;
    // Applied incrementally (b), or in full when the 2 s interval fell due at the same time.
    assert!(
        (second["applied"] == "1" && second["unchanged"] == "1")
            || (second["applied"] == "2" && second["unchanged"] == "0"),
        "{second:?}"
    );
    let after = resource_versions(&api).await;
    assert_eq!(after["a"], before["a"], "a was rewritten");
    assert_ne!(after["b"], before["b"]);
    assert_eq!(
        api.get("b").await.unwrap().spec.chart_git_path.as_deref(),
        Some("mongodb")
    );
    assert_eq!(
        api.get("a").await.unwrap().annotations_commit(),
        first,
        "a keeps the commit it last changed in"
    );
}

#[tokio::test]
async fn removed_resources_are_pruned_and_nothing_else_is_touched() {
    let mut env = AgentEnv::new("prune").await;
    env.repo
        .write("releaseconfig/keep.yaml", env.manifest("keep", "webapp"))
        .unwrap();
    env.repo
        .write("releaseconfig/drop.yaml", env.manifest("drop", "webapp"))
        .unwrap();
    env.repo.commit("two").unwrap();
    env.start_agent(&[]).await;
    let api = env.api(&env.namespace);
    wait_names(&api, &["drop", "keep"]).await;

    // Objects this agent never marked, and objects of another sync set.
    let unmarked: FluxHelmRelease = serde_json::from_value(json!({
        "apiVersion": "helm.integrations.flux.weave.works/v1alpha", "kind": "FluxHelmRelease",
        "metadata": {"name": "by-hand"}, "spec": {"chartGitPath": "webapp"}}))
    .unwrap();
    api.create(&PostParams::default(), &unmarked).await.unwrap();
    let other: FluxHelmRelease = serde_json::from_value(json!({
        "apiVersion": "helm.integrations.flux.weave.works/v1alpha", "kind": "FluxHelmRelease",
        "metadata": {"name": "other-agent", "labels": {SYNC_SET_LABEL: "another-agent"}},
        "spec": {"chartGitPath": "webapp"}}))
    .unwrap();
    api.create(&PostParams::default(), &other).await.unwrap();

    env.repo.remove("releaseconfig/drop.yaml").unwrap();
    let state = env.commit_and_sync("drop one").await;
    assert_eq!(state["pruned"], "1", "{state:?}");
    // A commit applies what it changed: keep.yaml did not change, so keep is left alone (the
    // sync interval re-applies it).
    assert_eq!(
        (state["applied"].as_str(), state["unchanged"].as_str()),
        ("0", "1")
    );
    assert_eq!(names(&api).await, ["by-hand", "keep", "other-agent"]);

    // With garbage collection off, nothing is deleted.
    let mut agent = env.agent.take().unwrap();
    agent.process.terminate(Duration::from_secs(20));
    env.start_agent(&["--sync-garbage-collection=false"]).await;
    env.repo.remove("releaseconfig/keep.yaml").unwrap();
    let state = env.commit_and_sync("drop the other").await;
    assert_eq!(state["pruned"], "0");
    assert_eq!(state["pruneSkipped"], "garbage collection is off");
    assert_eq!(names(&api).await, ["by-hand", "keep", "other-agent"]);
}

#[tokio::test]
async fn broken_yaml_applies_the_valid_documents_prunes_nothing_and_heals() {
    let mut env = AgentEnv::new("broken").await;
    env.repo
        .write("releaseconfig/old.yaml", env.manifest("old", "webapp"))
        .unwrap();
    env.repo.commit("one").unwrap();
    env.start_agent(&[]).await;
    let api = env.api(&env.namespace);
    wait_names(&api, &["old"]).await;

    // old.yaml is removed in the same commit that breaks another file: nothing may be pruned.
    env.repo.remove("releaseconfig/old.yaml").unwrap();
    env.repo.write("releaseconfig/mixed.yaml", format!(
        "{}---\napiVersion: helm.integrations.flux.weave.works/v1alpha\nkind: FluxHelmRelease\nmetadata:\n  name: [unclosed\n",
        env.manifest("good", "webapp"))).unwrap();
    let state = env.commit_and_sync("break a file").await;
    assert!(
        state["errors"].contains("releaseconfig/mixed.yaml:"),
        "{state:?}"
    );
    assert_eq!(state["pruneSkipped"], "some manifests could not be read");
    assert_eq!(
        names(&api).await,
        ["good", "old"],
        "valid documents applied, nothing pruned"
    );
    assert!(env.agent().metric("fhr_agent_manifest_errors").await >= 1.0);
    assert!(
        env.agent().log().contains("releaseconfig/mixed.yaml"),
        "the log names the file"
    );
    eventually(
        "a Warning Event naming the file and line",
        SYNC_TIMEOUT,
        || async {
            let notes = event_notes(&env).await;
            if notes.contains("releaseconfig/mixed.yaml:") {
                Ok(())
            } else {
                Err(notes)
            }
        },
    )
    .await;

    env.repo
        .write("releaseconfig/mixed.yaml", env.manifest("good", "webapp"))
        .unwrap();
    let state = env.commit_and_sync("fix it").await;
    assert_eq!(state["errors"], "");
    assert_eq!(state["pruned"], "1");
    assert_eq!(names(&api).await, ["good"]);
    assert_eq!(env.agent().metric("fhr_agent_manifest_errors").await, 0.0);
}

#[tokio::test]
async fn kinds_off_the_allow_list_are_reported_not_applied() {
    let mut env = AgentEnv::new("allow").await;
    let binding = unique_name("escalate");
    env.repo
        .write("releaseconfig/fhr.yaml", env.manifest("fine", "webapp"))
        .unwrap();
    env.repo.write("releaseconfig/crb.yaml", format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {binding}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: cluster-admin\nsubjects:\n  - kind: ServiceAccount\n    name: default\n    namespace: default\n")).unwrap();
    let commit = env.repo.commit("sneak in a binding").unwrap();
    env.start_agent(&[]).await;
    let state = env.wait_synced(&commit).await;
    assert!(
        state["refusedKinds"].contains("ClusterRoleBinding"),
        "{state:?}"
    );
    let bindings: Api<ClusterRoleBinding> = Api::all(env.client.clone());
    assert!(
        bindings.get_opt(&binding).await.unwrap().is_none(),
        "the binding was applied"
    );
    assert_eq!(names(&env.api(&env.namespace)).await, ["fine"]);
    assert_eq!(env.agent().metric("fhr_agent_refused_kinds").await, 1.0);
}

#[tokio::test]
async fn with_git_down_the_applied_state_stays_and_the_agent_recovers() {
    let mut env = AgentEnv::new("outage").await;
    env.repo
        .write("releaseconfig/a.yaml", env.manifest("a", "webapp"))
        .unwrap();
    env.repo.commit("one").unwrap();
    env.start_agent(&[]).await;
    let api = env.api(&env.namespace);
    wait_names(&api, &["a"]).await;

    env.git.set_available(false);
    let agent = env.agent();
    eventually("readiness to say not synced", SYNC_TIMEOUT, || async {
        match agent.get("/readyz").await {
            Ok((503, body)) if body.contains("not synced") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(agent.metric("fhr_agent_synced").await, 0.0);
    let failures = agent.metric("fhr_agent_git_fetches_total").await;
    eventually("fetches to be retried", SYNC_TIMEOUT, || async {
        let now = agent.metric("fhr_agent_git_fetches_total").await;
        if now > failures {
            Ok(())
        } else {
            Err(format!("{now}"))
        }
    })
    .await;
    assert_eq!(names(&api).await, ["a"], "the applied state stays");

    env.repo
        .write("releaseconfig/b.yaml", env.manifest("b", "webapp"))
        .unwrap();
    let commit = env.repo.commit("while down").unwrap();
    env.git.set_available(true);
    env.wait_synced(&commit).await;
    agent.wait_ready().await;
    assert_eq!(agent.metric("fhr_agent_synced").await, 1.0);
    assert_eq!(names(&api).await, ["a", "b"]);
    assert!(
        !agent.log().contains(&env.password),
        "the git password reached the log"
    );
}

#[tokio::test]
async fn sync_requests_and_signed_webhooks_trigger_a_sync_and_bad_signatures_do_not() {
    let mut env = AgentEnv::new("trigger").await;
    let secret_flag = env.webhook_secret_flag("hook-secret");
    // An hour between polls: only a trigger can explain a sync.
    env.start_agent(&["--git-poll-interval=1h", &secret_flag])
        .await;
    let agent = env.agent();
    let api = env.api(&env.namespace);

    env.repo
        .write("releaseconfig/a.yaml", env.manifest("a", "webapp"))
        .unwrap();
    let commit = env.repo.commit("a").unwrap();
    // With a secret set, a sync request needs it too (see the tenancy target for refusals).
    let code = agent
        .post(
            "/api/v1/sync",
            &[("Authorization", "Bearer hook-secret")],
            b"",
        )
        .await;
    assert_eq!(code, 202);
    env.wait_synced(&commit).await;

    let body = br#"{"ref":"refs/heads/master"}"#;
    env.repo
        .write("releaseconfig/bad.yaml", env.manifest("unsigned", "webapp"))
        .unwrap();
    let unsigned = env.repo.commit("pushed with a bad signature").unwrap();
    let code = agent
        .post(
            "/api/v1/webhook",
            &[("X-Hub-Signature-256", "sha256=00ff")],
            body,
        )
        .await;
    assert_eq!(code, 401);
    let code = agent.post("/api/v1/webhook", &[], body).await;
    assert_eq!(code, 401);
    let syncs = agent.metric("fhr_agent_syncs_total").await;

    let signature = hmac_sha256_hex(b"hook-secret", body);
    let code = agent
        .post(
            "/api/v1/webhook",
            &[("X-Hub-Signature-256", &format!("sha256={signature}"))],
            body,
        )
        .await;
    assert_eq!(code, 202);
    env.wait_synced(&unsigned).await;
    assert_eq!(
        agent.metric("fhr_agent_syncs_total").await,
        syncs + 1.0,
        "the bad signatures synced nothing"
    );
    assert_eq!(names(&api).await, ["a", "unsigned"]);
}

#[tokio::test]
async fn huge_files_alias_bombs_and_escaping_symlinks_are_refused_and_the_rest_syncs() {
    let mut env = AgentEnv::new("bombs").await;
    env.repo
        .write("releaseconfig/fine.yaml", env.manifest("fine", "webapp"))
        .unwrap();
    let huge = format!(
        "{}# {}\n",
        env.manifest("huge", "webapp"),
        "x".repeat(50 << 20)
    );
    env.repo.write("releaseconfig/huge.yaml", huge).unwrap();
    env.repo
        .write("releaseconfig/laughs.yaml", e2e::billion_laughs())
        .unwrap();
    std::os::unix::fs::symlink(
        "/etc/passwd",
        env.repo.path().join("releaseconfig/passwd.yaml"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "../../../../etc/hostname",
        env.repo.path().join("releaseconfig/up.yaml"),
    )
    .unwrap();
    let commit = env.repo.commit("hostile files").unwrap();
    env.start_agent(&[]).await;
    let state = env.wait_synced(&commit).await;
    let errors = &state["errors"];
    for file in ["huge.yaml", "laughs.yaml", "passwd.yaml", "up.yaml"] {
        assert!(
            errors.contains(&format!("releaseconfig/{file}")),
            "{file} not reported: {errors}"
        );
    }
    assert!(
        !errors.contains("root:"),
        "file contents leaked into the report"
    );
    assert_eq!(names(&env.api(&env.namespace)).await, ["fine"]);
    let peak = env.agent().peak_rss_mib();
    assert!(
        peak < 200.0,
        "peak RSS {peak:.0} MiB: the 50 MB file was read into memory"
    );
}

#[tokio::test]
async fn a_manual_edit_is_undone_at_the_next_periodic_sync() {
    let mut env = AgentEnv::new("edit").await;
    env.repo
        .write("releaseconfig/a.yaml", env.manifest("a", "webapp"))
        .unwrap();
    env.repo.commit("a").unwrap();
    env.start_agent(&["--sync-interval=2s"]).await;
    let api = env.api(&env.namespace);
    wait_names(&api, &["a"]).await;
    let patch = json!({"spec": {"chartGitPath": "edited-by-hand"}});
    api.patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually("the hand edit to be undone", SYNC_TIMEOUT, || async {
        let a = api.get("a").await.map_err(|e| e.to_string())?;
        if a.spec.chart_git_path.as_deref() == Some("webapp") {
            Ok(())
        } else {
            Err(format!("{:?}", a.spec.chart_git_path))
        }
    })
    .await;
}

#[tokio::test]
async fn the_agent_syncs_over_ssh_with_a_deploy_key_checked_against_known_hosts() {
    let mut env = AgentEnv::new("ssh").await;
    let ssh = fhr_testenv::SshServer::start().expect("start sshd");
    env.repo
        .write(
            "releaseconfig/over-ssh.yaml",
            env.manifest("over-ssh", "webapp"),
        )
        .unwrap();
    let commit = env.repo.commit("over ssh").unwrap();
    let args = env.ssh_agent_args(&ssh, &ssh.known_hosts().unwrap());
    env.start_agent_with(&args).await;
    env.wait_synced(&commit).await;
    assert_eq!(names(&env.api(&env.namespace)).await, ["over-ssh"]);
}

#[tokio::test]
async fn a_wrong_ssh_host_key_is_refused_with_a_clear_error_and_no_key_material() {
    let env = AgentEnv::new("hostkey").await;
    let ssh = fhr_testenv::SshServer::start().expect("start sshd");
    env.repo
        .write("releaseconfig/never.yaml", env.manifest("never", "webapp"))
        .unwrap();
    env.repo.commit("must not sync").unwrap();
    let args = env.ssh_agent_args(&ssh, &ssh.wrong_known_hosts().unwrap());
    let agent = e2e::Daemon::start("flux-agent", env.cp.kubeconfig(), env.dir.path(), &args);
    eventually("the host key to be refused", SYNC_TIMEOUT, || async {
        let log = agent.log();
        if log.contains("Host key verification failed")
            || log.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        {
            Ok(())
        } else {
            Err(agent.log_tail())
        }
    })
    .await;
    let (code, body) = agent.get("/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        names(&env.api(&env.namespace)).await.is_empty(),
        "nothing synced from an unverified host"
    );
    let private_key = std::fs::read_to_string(ssh.deploy_key()).unwrap();
    let key_body = private_key.lines().nth(1).unwrap();
    assert!(!agent.log().contains(key_body), "key material in the log");
    assert!(!body.contains(key_body));
}
