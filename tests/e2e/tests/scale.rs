//! Spreading releases over several operators. This target: Flux-style manual sharding, where each
//! operator watches only the resources its label selector matches.

use e2e::Daemon;
use e2e::operator::{OperatorEnv, ready_at};
use kube::api::{Patch, PatchParams};
use serde_json::json;

const SHARD_KEY: &str = "sharding.fluxcd.io/key";

/// Labels `name` for a shard (no label when `shard` is `None`).
async fn label(env: &OperatorEnv, name: &str, shard: Option<&str>) {
    let patch = json!({"metadata": {"labels": {SHARD_KEY: shard}}});
    env.api()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test]
async fn two_operators_with_disjoint_selectors_each_act_only_on_their_own_releases() {
    let mut env = OperatorEnv::new("shards").await;
    for (name, shard) in [
        ("a1", Some("shard1")),
        ("a2", Some("shard1")),
        ("b1", Some("shard2")),
        ("main", None),
    ] {
        env.apply(name, json!({"chartGitPath": "webapp"})).await;
        label(&env, name, shard).await;
    }
    // A selector the API server cannot parse stops the operator at once, naming the flag.
    let refused = std::process::Command::new(e2e::daemon_binary("helm-operator"))
        .args(env.operator_args(&["--watch-label-selector=in (("]))
        .arg("--listen=127.0.0.1:0")
        .env("KUBECONFIG", env.cp.kubeconfig())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--watch-label-selector"), "{stderr}");

    env.start_operator(&[&format!("--watch-label-selector={SHARD_KEY} in (shard1)")])
        .await;
    let second_args = env.operator_args(&[
        &format!("--watch-label-selector={SHARD_KEY} in (shard2)"),
        &format!(
            "--state-dir={}",
            env.dir.path().join("second-operator").display()
        ),
    ]);
    let second = Daemon::start(
        "helm-operator",
        env.cp.kubeconfig(),
        env.dir.path(),
        &second_args,
    );
    // Its own Lease: it leads at once instead of standing by for the first shard.
    second.wait_ready().await;

    for name in ["a1", "a2", "b1"] {
        env.wait_for(name, "installed by its shard", ready_at(1))
            .await;
    }
    assert_eq!(
        env.operator()
            .metric("fhr_operator_helm_actions_total")
            .await,
        2.0
    );
    assert_eq!(second.metric("fhr_operator_helm_actions_total").await, 1.0);
    // Neither shard watches the unlabelled release: a third instance with
    // `!sharding.fluxcd.io/key` would. Both have reconciled what they watch meanwhile.
    let main = env.api().get("main").await.unwrap();
    assert_eq!(main.status, None, "an operator acted outside its shard");
    assert!(
        env.helm_history(&format!("{}-main", env.namespace))
            .is_empty()
    );
    assert!(env.operator().metric("fhr_operator_reconciles_total").await >= 2.0);
    assert!(second.metric("fhr_operator_reconciles_total").await >= 1.0);
}
