//! Spreading releases over several operators: Flux-style manual sharding, where each operator
//! watches only the resources its label selector matches; automatic sharding, where replicas
//! split the releases among themselves and hand them over as they come and go; and faults under
//! load, with the API server, etcd, git and replicas failing while 300 releases converge.

use e2e::Daemon;
use e2e::operator::{OperatorEnv, ready, ready_at};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const SHARD_KEY: &str = "sharding.fluxcd.io/key";

/// Labels `name` for a shard (no label when `shard` is `None`).
async fn label(env: &OperatorEnv, name: &str, shard: Option<&str>) {
    let patch = json!({"metadata": {"labels": {SHARD_KEY: shard}}});
    env.api()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Runs the operator with `flags`, which it must refuse at once; its standard error.
fn refused(env: &OperatorEnv, flags: &[&str]) -> String {
    let output = std::process::Command::new(e2e::daemon_binary("helm-operator"))
        .args(env.operator_args(flags))
        .arg("--listen=127.0.0.1:0")
        .env("KUBECONFIG", env.cp.kubeconfig())
        .output()
        .unwrap();
    assert!(!output.status.success(), "{flags:?} accepted");
    String::from_utf8_lossy(&output.stderr).into_owned()
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
    let stderr = refused(&env, &["--watch-label-selector=in (("]);
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

/// Releases of the automatic sharding and chaos tests.
const RELEASES: usize = 300;
/// The replicas' lease duration: short, so that handovers are quick to watch.
const LEASE: Duration = Duration::from_secs(6);
/// How long 300 releases may take to converge (3 replicas and their engines on 2 cores).
const CONVERGE: Duration = Duration::from_secs(600);

/// The two 300-release tests run one at a time: together they would starve each other.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A chart as small as charts come (one ConfigMap), so that 300 releases measure coordination,
/// not rendering.
fn add_tiny_chart(env: &OperatorEnv) {
    env.repo
        .write(
            "charts/tiny/Chart.yaml",
            "apiVersion: v2\nname: tiny\nversion: 0.1.0\n",
        )
        .unwrap();
    env.repo
        .write("charts/tiny/values.yaml", "generation: \"1\"\n")
        .unwrap();
    env.repo
        .write(
            "charts/tiny/templates/configmap.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\ndata:\n  generation: {{ .Values.generation | quote }}\n",
        )
        .unwrap();
    env.repo.commit("tiny chart").unwrap();
}

fn release(i: usize) -> String {
    format!("r{i:03}")
}

/// Applies (or changes) the 300 resources at `generation`, a few at a time.
async fn apply_all(env: &OperatorEnv, generation: u32) {
    futures::stream::iter(0..RELEASES)
        .for_each_concurrent(16, |i| async move {
            env.apply(
                &release(i),
                json!({
                    "chartGitPath": "tiny",
                    "releaseName": release(i),
                    "values": [{"name": "generation", "value": generation.to_string()}],
                }),
            )
            .await
        })
        .await;
}

/// Waits until all 300 resources are Ready at `revision`.
async fn wait_all_ready_at(env: &OperatorEnv, revision: i64, replicas: &[&Daemon]) {
    let api = env.api();
    e2e::eventually(
        &format!("{RELEASES} releases Ready at revision {revision}"),
        CONVERGE,
        || async {
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let done = list.items.iter().filter(|f| ready_at(revision)(f)).count();
            if list.items.len() == RELEASES && done == RELEASES {
                Ok(())
            } else {
                let logs: Vec<String> = replicas.iter().map(|r| r.log_tail()).collect();
                Err(format!(
                    "{done} of {} Ready at {revision}\n{}",
                    list.items.len(),
                    logs.join("\n---\n")
                ))
            }
        },
    )
    .await
}

/// Every release's revisions in Helm's storage, as (revision, status) pairs, oldest first.
async fn storage_revisions(env: &OperatorEnv) -> BTreeMap<String, Vec<(i64, String)>> {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let list = secrets
        .list_metadata(&ListParams::default().labels("owner=helm"))
        .await
        .unwrap();
    let mut releases: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for item in list.items {
        let labels = item.metadata.labels.unwrap_or_default();
        releases
            .entry(labels["name"].clone())
            .or_default()
            .push((labels["version"].parse().unwrap(), labels["status"].clone()));
    }
    for revisions in releases.values_mut() {
        revisions.sort();
    }
    releases
}

/// Asserts that every release has exactly revisions 1..=`latest`, the last deployed and the
/// others superseded: each was acted on once per change, by one replica.
async fn assert_acted_on_once_per_change(env: &OperatorEnv, latest: i64) {
    let revisions = storage_revisions(env).await;
    assert_eq!(revisions.len(), RELEASES, "releases in Helm's storage");
    for (name, history) in &revisions {
        let expected: Vec<(i64, String)> = (1..=latest)
            .map(|n| {
                let status = if n == latest {
                    "deployed"
                } else {
                    "superseded"
                };
                (n, status.to_owned())
            })
            .collect();
        assert_eq!(history, &expected, "{name}: Helm history");
    }
}

/// A replica sharing the releases automatically, with its own state folder.
fn start_replica(env: &OperatorEnv, name: &str, extra: &[&str]) -> Daemon {
    let mut flags = vec![
        "--sharding=auto".to_owned(),
        format!("--lease-duration={}s", LEASE.as_secs()),
        format!("--state-dir={}", env.dir.path().join(name).display()),
    ];
    flags.extend(extra.iter().map(|f| f.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Daemon::start(
        "helm-operator",
        env.cp.kubeconfig(),
        env.dir.path(),
        &env.operator_args(&flags),
    )
}

/// A replica's identity as it writes it into status: host name and process id (no POD_NAME).
fn identity(replica: &Daemon) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    format!("{}-{}", host.trim(), replica.process.id())
}

/// Helm actions a replica has taken.
async fn actions(replica: &Daemon) -> f64 {
    replica.metric("fhr_operator_helm_actions_total").await
}

/// Waits until the replicas' shares add up to every release, with none counted twice; the
/// shares.
async fn wait_shares_settle(replicas: &[&Daemon], members: usize) -> Vec<f64> {
    e2e::eventually(
        "the replicas' shares to add up to every release",
        CONVERGE,
        || async {
            let mut shares = Vec::new();
            for replica in replicas {
                if replica.metric("fhr_operator_shard_members").await != members as f64 {
                    return Err(format!(
                        "{} does not see {members} members",
                        identity(replica)
                    ));
                }
                shares.push(replica.metric("fhr_operator_shard_releases").await);
            }
            if shares.iter().sum::<f64>() == RELEASES as f64 {
                Ok(shares)
            } else {
                Err(format!("shares {shares:?}"))
            }
        },
    )
    .await
}

#[tokio::test]
async fn replicas_split_releases_and_hand_them_over_without_acting_twice() {
    let _heavy = HEAVY.lock().await;
    let env = OperatorEnv::new("auto").await;
    add_tiny_chart(&env);
    let mut a = start_replica(&env, "a", &[]);
    let b = start_replica(&env, "b", &[]);
    let c = start_replica(&env, "c", &[]);
    for replica in [&a, &b, &c] {
        replica.wait_ready().await;
    }
    // --sharding=auto needs Leases: refused with election turned off, naming the flag.
    let stderr = refused(&env, &["--sharding=auto", "--leader-election=false"]);
    assert!(stderr.contains("--sharding=auto"), "{stderr}");

    // Three replicas, 300 releases: each acts on its share, about a third.
    apply_all(&env, 1).await;
    wait_all_ready_at(&env, 1, &[&a, &b, &c]).await;
    let shares = wait_shares_settle(&[&a, &b, &c], 3).await;
    let installs = [actions(&a).await, actions(&b).await, actions(&c).await];
    eprintln!("shares {shares:?}, installs {installs:?}");
    for (share, acted) in shares.iter().zip(installs) {
        assert!(
            (70.0..=130.0).contains(share),
            "share {share} of {RELEASES}"
        );
        assert_eq!(acted, *share, "a replica acted outside its share");
    }
    assert_acted_on_once_per_change(&env, 1).await;
    let live = [identity(&a), identity(&b), identity(&c)];
    for fhr in env.api().list(&ListParams::default()).await.unwrap() {
        let by = fhr.status.as_ref().and_then(|s| s.last_action_by.clone());
        assert!(
            by.as_ref().is_some_and(|by| live.contains(by)),
            "lastActionBy {by:?}"
        );
    }

    // SIGKILL one, and change every release at once: the survivors take its releases over
    // within the lease duration, and every release is upgraded exactly once.
    let before = [actions(&b).await, actions(&c).await];
    a.process.kill();
    let killed = Instant::now();
    apply_all(&env, 2).await;
    let shares = wait_shares_settle(&[&b, &c], 2).await;
    let takeover = killed.elapsed();
    eprintln!("takeover after SIGKILL: {takeover:?}; shares {shares:?}");
    // The lease, plus this test's polling of two metrics endpoints.
    assert!(
        takeover <= LEASE + Duration::from_secs(3),
        "takeover took {takeover:?}"
    );
    wait_all_ready_at(&env, 2, &[&b, &c]).await;
    assert_acted_on_once_per_change(&env, 2).await;
    let upgrades = actions(&b).await - before[0] + actions(&c).await - before[1];
    assert_eq!(upgrades, RELEASES as f64, "upgrades after the kill");

    // A fourth replica joins while every release changes again: releases move to it, and
    // still none is acted on twice.
    let before = [actions(&b).await, actions(&c).await];
    let d = start_replica(&env, "d", &[]);
    d.wait_ready().await;
    apply_all(&env, 3).await;
    wait_all_ready_at(&env, 3, &[&b, &c, &d]).await;
    let shares = wait_shares_settle(&[&b, &c, &d], 3).await;
    assert_acted_on_once_per_change(&env, 3).await;
    let moved = [
        actions(&b).await - before[0],
        actions(&c).await - before[1],
        actions(&d).await,
    ];
    eprintln!("after a 4th joined: shares {shares:?}, upgrades {moved:?}");
    assert!(
        (70.0..=130.0).contains(&shares[2]),
        "the new replica's share {shares:?}"
    );
    assert_eq!(
        moved.iter().sum::<f64>(),
        RELEASES as f64,
        "upgrades {moved:?}"
    );
    assert!(moved[2] > 0.0, "the new replica acted on nothing");
    let lost = b
        .metric("fhr_operator_shard_handovers_total{direction=\"lost\"}")
        .await
        + c.metric("fhr_operator_shard_handovers_total{direction=\"lost\"}")
            .await;
    assert!(lost >= shares[2], "handovers counted: {lost}");
}

/// Every `fhr-helm-engine` process whose parent is not a running helm-operator: an engine left
/// behind by a replica that died.
fn orphaned_engines() -> Vec<u32> {
    use fhr_testenv::process::stat;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat(*pid).is_some_and(|s| {
                s.comm == "fhr-helm-engine"
                    && s.state != 'Z'
                    && stat(s.ppid).is_none_or(|parent| parent.comm != "helm-operator")
            })
        })
        .collect()
}

/// Helm release records (storage Secrets) created in `namespace`, by the API server's audit
/// log: one per install or upgrade that got as far as Helm's storage. Only Helm writes Secrets
/// there.
fn release_records_created(cp: &e2e::ControlPlane, namespace: &str) -> usize {
    std::fs::read_to_string(cp.audit_log())
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|e| {
            e["verb"] == "create"
                && e["objectRef"]["resource"] == "secrets"
                && e["objectRef"]["namespace"] == namespace
                && e["responseStatus"]["code"].as_i64() == Some(201)
        })
        .count()
}

/// A replica's Helm actions so far, by kind.
async fn actions_by_kind(replica: &Daemon) -> BTreeMap<&'static str, f64> {
    let mut by_kind = BTreeMap::new();
    for kind in ["install", "upgrade", "rollback", "uninstall", "unlock"] {
        let series = format!("fhr_operator_helm_actions_total{{action=\"{kind}\"}}");
        // `+ 0.0`: a sum of nothing is -0.0.
        let count = replica.try_metric(&series).await.unwrap_or(0.0) + 0.0;
        by_kind.insert(kind, count);
    }
    by_kind
}

/// One fault, when it ended, and how many releases were Ready then.
struct Fault {
    what: &'static str,
    ended: Instant,
    ready: usize,
}

/// Records that fault `what` ended now.
async fn record(faults: &mut Vec<Fault>, what: &'static str, env: &OperatorEnv) {
    let ended = Instant::now();
    let ready = ready_count(env).await;
    faults.push(Fault { what, ended, ready });
}

/// Waits until at least `count` resources are Ready.
async fn wait_ready_count(env: &OperatorEnv, count: usize) {
    e2e::eventually(&format!("{count} releases Ready"), CONVERGE, || async {
        match ready_count(env).await {
            n if n >= count => Ok(()),
            n => Err(format!("{n} Ready")),
        }
    })
    .await
}

/// How many of the resources are Ready now (0 while the API server cannot say).
async fn ready_count(env: &OperatorEnv) -> usize {
    env.api()
        .list(&ListParams::default())
        .await
        .map(|list| list.items.iter().filter(|f| ready(f)).count())
        .unwrap_or(0)
}

#[tokio::test]
async fn faults_under_load_leave_nothing_stuck_and_nothing_done_twice() {
    let _heavy = HEAVY.lock().await;
    // Its own control plane: this test kills the API server and stops etcd.
    // Auditing Secret writes: each Helm install writes a release record, which counts the
    // installs of every replica, the killed one's included, whatever their metrics could say.
    let options = fhr_testenv::ControlPlaneOptions {
        audit: fhr_testenv::Audit::ConfigMapAndSecretWrites,
    };
    let cp: &'static e2e::ControlPlane = Box::leak(Box::new(
        e2e::ControlPlane::start_with(options)
            .await
            .expect("a control plane"),
    ));
    let env = OperatorEnv::on(cp, "chaos").await;
    add_tiny_chart(&env);
    // One worker each, so that convergence lasts through the faults.
    let mut a = start_replica(&env, "a", &["--workers=1"]);
    let b = start_replica(&env, "b", &["--workers=1"]);
    let c = start_replica(&env, "c", &["--workers=1"]);
    for replica in [&a, &b, &c] {
        replica.wait_ready().await;
    }
    let started = Instant::now();
    apply_all(&env, 1).await;
    let mut faults: Vec<Fault> = Vec::new();
    // Each fault strikes once installs are under way again after the one before.
    let mut under_way = 20;
    wait_ready_count(&env, under_way).await;

    // The API server crashes and comes back on the same port and etcd.
    cp.restart_apiserver()
        .await
        .expect("the API server restarts");
    record(&mut faults, "SIGKILL kube-apiserver, restarted", &env).await;

    under_way = faults.last().unwrap().ready + 20;
    wait_ready_count(&env, under_way).await;
    // etcd stops answering for 10 s: the API server hangs, no Lease is renewed.
    fhr_testenv::process::signal(cp.etcd_pid(), libc::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(10)).await;
    fhr_testenv::process::signal(cp.etcd_pid(), libc::SIGCONT);
    record(&mut faults, "SIGSTOP etcd for 10 s", &env).await;

    // git answers 503 for 30 s, and meanwhile a replica is killed in the middle of its work.
    under_way = faults.last().unwrap().ready + 20;
    wait_ready_count(&env, under_way).await;
    env.git
        .set_behaviour(fhr_testenv::GitServerBehaviour::Unavailable);
    let git_down = Instant::now();
    let actions_by_a = actions_by_kind(&a).await;
    a.process.kill();
    record(&mut faults, "SIGKILL one replica", &env).await;
    // A fourth replica joins while git is still down and releases still converge.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let d = start_replica(&env, "d", &["--workers=1"]);
    record(&mut faults, "a 4th replica added", &env).await;
    // The faults hit releases still converging, or this test proves little.
    assert!(
        faults.iter().all(|f| f.ready < RELEASES),
        "converged before the faults: {:?}",
        faults.iter().map(|f| f.ready).collect::<Vec<_>>()
    );
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(git_down.elapsed())).await;
    env.git
        .set_behaviour(fhr_testenv::GitServerBehaviour::Normal);
    record(&mut faults, "git 503 for 30 s", &env).await;
    d.wait_ready().await;

    wait_all_ready_at(&env, 1, &[&b, &c, &d]).await;
    let last = faults.iter().map(|f| f.ended).max().unwrap();
    let recovery = last.elapsed();

    // Nothing lost, nothing stuck, nothing done twice.
    let resources = env.api().list(&ListParams::default()).await.unwrap();
    assert_eq!(resources.items.len(), RELEASES, "FluxHelmRelease objects");
    assert!(resources.items.iter().all(ready));
    assert_acted_on_once_per_change(&env, 1).await;
    assert_eq!(
        orphaned_engines(),
        Vec::<u32>::new(),
        "engines without their operator"
    );
    // The killed replica's as last scraped before its kill; an action it had in flight then is
    // counted by nobody, its redo by its successor.
    let mut taken = actions_by_a;
    for replica in [&b, &c, &d] {
        for (kind, count) in actions_by_kind(replica).await {
            *taken.entry(kind).or_default() += count;
        }
    }
    let records = release_records_created(cp, &env.namespace);
    eprintln!(
        "chaos: {} faults ({}); all {RELEASES} Ready {:.1} s after the last fault ({:.1} s after \
         the first apply); Helm release records written {records} for {RELEASES} installs: \
         repeated {} (an install interrupted by the SIGKILL, unlocked and redone, counts here); \
         Helm actions by kind {taken:?} (the killed replica's as last scraped)",
        faults.len(),
        faults
            .iter()
            .map(|f| format!("{} [{} Ready after it]", f.what, f.ready))
            .collect::<Vec<_>>()
            .join(", "),
        recovery.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        records.saturating_sub(RELEASES),
    );
}
