//! Security boundaries: what a request to the admin port can make a daemon do. Floods are sent on
//! loopback only, bounded in count, against a real agent, git server and control plane.

use e2e::agent::{AgentEnv, SYNC_TIMEOUT};
use e2e::eventually;
use fhr_testenv::http::hmac_sha256_hex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "hook-secret";

/// An agent with a webhook secret that polls hourly: only triggers explain its fetches.
async fn agent_with_secret(prefix: &str, extra: &[&str]) -> AgentEnv {
    let mut env = AgentEnv::new(prefix).await;
    let secret_flag = env.webhook_secret_flag(SECRET);
    let mut args = vec!["--git-poll-interval=1h", secret_flag.as_str()];
    args.extend_from_slice(extra);
    env.start_agent(&args).await;
    env
}

fn signed(body: &[u8]) -> String {
    format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), body))
}

#[tokio::test]
async fn sync_requests_need_the_secret_and_a_flood_costs_one_fetch_per_interval() {
    let env = agent_with_secret("ten-flood", &["--trigger-min-interval=2s"]).await;
    let agent = env.agent();
    let fetches = "fhr_agent_git_fetches_total";
    let before = agent.metric(fetches).await;

    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("X-Hub-Signature-256", "sha256=00ff")],
    ] {
        let code = agent.post("/api/v1/sync", &headers, b"").await;
        assert_eq!(code, 401, "{headers:?}");
    }
    assert_eq!(
        agent.metric(fetches).await,
        before,
        "refused requests fetched"
    );

    let token = format!("Bearer {SECRET}");
    let started = Instant::now();
    for _ in 0..2000 {
        let code = agent
            .post("/api/v1/sync", &[("Authorization", &token)], b"")
            .await;
        assert_eq!(code, 202);
    }
    // At most one fetch per 2 s of the flood, plus the first (at once) and one coalesced at the end.
    let allowed = |elapsed: Duration| (elapsed.as_secs_f64() / 2.0).floor() + 2.0;
    let after_flood = agent.metric(fetches).await - before;
    assert!(
        after_flood <= allowed(started.elapsed()),
        "{after_flood} fetches for 2000 triggers in {:?}",
        started.elapsed()
    );
    eventually("the flood's coalesced fetch", SYNC_TIMEOUT, || async {
        let done = agent.metric(fetches).await - before;
        if done >= 1.0 {
            Ok(done)
        } else {
            Err(agent.log_tail())
        }
    })
    .await;
    let total = agent.metric(fetches).await - before;
    eprintln!(
        "2000 triggers over {:?}: {total} fetches",
        started.elapsed()
    );
    assert!(total <= allowed(started.elapsed()), "{total} fetches");
    assert_eq!(
        agent
            .metric("fhr_agent_trigger_requests_total{result=\"accepted\"}")
            .await,
        2000.0
    );
    assert_eq!(
        agent
            .metric("fhr_agent_trigger_requests_total{result=\"unauthorized\"}")
            .await,
        3.0
    );
}

#[tokio::test]
async fn bad_signatures_are_counted_and_logged_at_a_bounded_rate() {
    let env = agent_with_secret("ten-badsig", &[]).await;
    let agent = env.agent();
    let body = br#"{"ref":"refs/heads/master"}"#;
    let started = Instant::now();
    for _ in 0..2000 {
        let code = agent
            .post(
                "/api/v1/webhook",
                &[("X-Hub-Signature-256", "sha256=00ff")],
                body,
            )
            .await;
        assert_eq!(code, 401);
    }
    let elapsed = started.elapsed();
    assert_eq!(
        agent
            .metric(
                "fhr_agent_trigger_requests_total{endpoint=\"webhook\",result=\"unauthorized\"}"
            )
            .await,
        2000.0
    );
    let lines = agent.log().matches("sync request refused").count();
    eprintln!("2000 bad signatures over {elapsed:?}: {lines} log lines");
    // One line per 10 s at most (each with the count of those not logged).
    let bound = (elapsed.as_secs() / 10 + 1) as usize;
    assert!(
        (1..=bound).contains(&lines),
        "{lines} log lines for 2000 refusals in {elapsed:?}"
    );
}

#[tokio::test]
async fn stalled_connections_are_closed_while_health_keeps_answering() {
    let mut env = AgentEnv::new("ten-stall").await;
    env.start_agent(&[]).await;
    let agent = env.agent();
    let mut stalled = Vec::new();
    for _ in 0..500 {
        let mut stream = tokio::net::TcpStream::connect(agent.admin).await.unwrap();
        // A request head that never ends.
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: agent\r\n")
            .await
            .unwrap();
        stalled.push(stream);
    }
    let (code, body) = agent.get("/healthz").await.unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, "ok"),
        "with 500 stalled connections"
    );

    // The header-read timeout (10 s) closes every one of them.
    let deadline = Instant::now() + Duration::from_secs(40);
    for (i, stream) in stalled.iter_mut().enumerate() {
        let mut rest = Vec::new();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let closed = tokio::time::timeout(remaining, stream.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "stalled connection {i} still open at the deadline"
        );
    }
    let (code, _) = agent.get("/healthz").await.unwrap();
    assert_eq!(code, 200);
    assert!(agent.process.is_running());
}

#[tokio::test]
async fn a_twenty_megabyte_push_syncs_and_pings_or_other_branches_sync_nothing() {
    // An hour between triggered fetches: had a ping or another branch's push woken the loop, the
    // push that follows would wait an hour instead of syncing at once.
    let env = agent_with_secret("ten-push", &["--trigger-min-interval=1h"]).await;
    let agent = env.agent();
    env.repo
        .write("releaseconfig/a.yaml", env.manifest("a", "webapp"))
        .unwrap();
    let commit = env.repo.commit("a release").unwrap();

    let ping = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    let code = agent
        .post(
            "/api/v1/webhook",
            &[
                ("X-GitHub-Event", "ping"),
                ("X-Hub-Signature-256", &signed(ping)),
            ],
            ping,
        )
        .await;
    assert_eq!(code, 200);
    let other = br#"{"ref":"refs/heads/feature"}"#;
    let code = agent
        .post(
            "/api/v1/webhook",
            &[
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", &signed(other)),
            ],
            other,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        agent
            .metric("fhr_agent_trigger_requests_total{result=\"ignored\"}")
            .await,
        2.0
    );

    // GitHub sends push payloads of up to 25 MB.
    let mut push = br#"{"ref":"refs/heads/master","padding":""#.to_vec();
    push.extend(std::iter::repeat_n(b'x', 20 << 20));
    push.extend(br#""}"#);
    let code = agent
        .post(
            "/api/v1/webhook",
            &[
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", &signed(&push)),
            ],
            &push,
        )
        .await;
    assert_eq!(code, 202);
    env.wait_synced(&commit).await;
}

/// A chart that looks up a Secret of another namespace and fails if it finds it.
fn add_peeking_chart(env: &e2e::operator::OperatorEnv, victim: &str) {
    env.repo
        .write(
            "charts/peek/Chart.yaml",
            "apiVersion: v2\nname: peek\nversion: 0.1.0\n",
        )
        .unwrap();
    env.repo
        .write(
            "charts/peek/templates/cm.yaml",
            format!(
                "{{{{- $found := lookup \"v1\" \"Secret\" \"{victim}\" \"canary\" }}}}\n\
                 {{{{- if $found }}}}{{{{ fail (printf \"the chart read %s from another namespace\" (index $found.data \"token\" | b64dec)) }}}}{{{{ end }}}}\n\
                 apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{{{ .Release.Name }}}}\ndata:\n  ok: \"yes\"\n"
            ),
        )
        .unwrap();
    env.repo.commit("a chart that peeks").unwrap();
}

#[tokio::test]
async fn without_lookup_a_chart_reads_nothing_of_the_cluster() {
    use e2e::operator::{OperatorEnv, ready, ready_message};
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, PostParams};
    let victim = e2e::unique_name("victim");
    let client = e2e::shared_control_plane().await.client().await;
    fhr_testenv::create_namespace(&client, &victim)
        .await
        .unwrap();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "canary"}, "stringData": {"token": "tenant-canary-value"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client, &victim)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let spec = serde_json::json!({"chartGitPath": "peek", "releaseName": "peek"});

    // With lookup (the default), the template reads the other namespace's Secret.
    let mut open = OperatorEnv::new("lookup-on").await;
    add_peeking_chart(&open, &victim);
    open.start_operator(&[]).await;
    open.apply("peek", spec.clone()).await;
    let fhr = open.wait_condition("peek", "False", "InstallFailed").await;
    // The value it read and passed to `fail` is in no status, Event or log line.
    assert!(
        ready_message(&fhr).contains("the chart read *** from another namespace"),
        "{}",
        ready_message(&fhr)
    );
    let status = serde_json::to_string(&fhr.status).unwrap();
    let events = format!("{:?}", open.events().await);
    for (place, text) in [
        ("status", status),
        ("Events", events),
        ("log", open.operator().log()),
    ] {
        assert!(
            !text.contains("tenant-canary-value"),
            "the canary reached the {place}"
        );
    }

    // With --allow-lookup=false the same chart finds nothing and installs.
    let mut closed = OperatorEnv::new("lookup-off").await;
    add_peeking_chart(&closed, &victim);
    closed.start_operator(&["--allow-lookup=false"]).await;
    closed.apply("peek", spec).await;
    closed.wait_for("peek", "installed", ready).await;
}

/// A tenant's set-up in `namespace`: ServiceAccount `deployer` with every right in that
/// namespace and none outside. (A real cluster would bind the built-in `admin` role, as
/// docs/security.md shows; here no controller-manager aggregates its rules, so a Role says the
/// same explicitly.)
async fn tenant_account(client: &kube::Client, namespace: &str) {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    use kube::api::{Api, PostParams};
    let account: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "deployer"}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "namespace-admin"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
    }))
    .unwrap();
    Api::<Role>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "deployer-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "namespace-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": namespace}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

/// A chart that makes a ConfigMap and, when asked, binds its ServiceAccount to cluster-admin.
fn add_escalating_chart(env: &e2e::operator::OperatorEnv) {
    env.repo
        .write(
            "charts/escalate/Chart.yaml",
            "apiVersion: v2\nname: escalate\nversion: 0.1.0\n",
        )
        .unwrap();
    env.repo
        .write("charts/escalate/values.yaml", "escalate: false\n")
        .unwrap();
    env.repo
        .write(
            "charts/escalate/templates/objects.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\ndata:\n  ok: \"yes\"\n\
             {{- if .Values.escalate }}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n\
             metadata:\n  name: {{ .Release.Name }}-{{ .Release.Namespace }}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  \
             kind: ClusterRole\n  name: cluster-admin\nsubjects:\n  - kind: ServiceAccount\n    name: deployer\n    \
             namespace: {{ .Release.Namespace }}\n{{- end }}\n\
             {{- with .Values.elsewhere }}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: planted\n  \
             namespace: {{ . }}\ndata:\n  ok: \"no\"\n{{- end }}\n",
        )
        .unwrap();
    env.repo.commit("a chart that may escalate").unwrap();
}

#[tokio::test]
async fn a_release_acts_as_its_service_account_and_cannot_escalate() {
    use e2e::operator::{OperatorEnv, ready, ready_message};
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    let mut env = OperatorEnv::new("tenant").await;
    add_escalating_chart(&env);
    tenant_account(&env.client, &env.namespace).await;
    env.start_operator(&[]).await;
    let as_deployer = |escalate: bool| {
        serde_json::json!({"chartGitPath": "escalate", "serviceAccountName": "deployer",
            "values": [{"name": "escalate", "value": escalate}]})
    };
    env.apply("ok", as_deployer(false)).await;
    env.wait_for("ok", "installed as the tenant", ready).await;
    let user = format!("system:serviceaccount:{}:deployer", env.namespace);
    let release = format!("{}-ok", env.namespace);
    let record = |revision: i64| format!("sh.helm.release.v1.{release}.v{revision}");
    // The API server authorised every write of the install as the tenant: the chart's object
    // and Helm's release record.
    let only_tenant = |writers: Vec<(String, String, bool)>| {
        if !writers.is_empty() && writers.iter().all(|(who, _, _)| *who == user) {
            Ok(())
        } else {
            Err(format!("{writers:?}"))
        }
    };
    eventually(
        "the install audited as the tenant",
        Duration::from_secs(30),
        || async {
            only_tenant(e2e::audited_writers("configmaps", &env.namespace, &release).await)?;
            only_tenant(e2e::audited_writers("secrets", &env.namespace, &record(1)).await)
        },
    )
    .await;

    // A hand edit: the drift check (a dry-run apply) and the upgrade that restores the object
    // run as the tenant too; the edit is the only other write.
    let config_maps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(env.client.clone(), &env.namespace);
    let edit = serde_json::json!({"data": {"ok": "edited by hand"}});
    config_maps
        .patch(
            &release,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&edit),
        )
        .await
        .unwrap();
    env.wait_for("ok", "restored at revision 2", e2e::operator::ready_at(2))
        .await;
    let writers = e2e::audited_writers("configmaps", &env.namespace, &release).await;
    assert!(
        writers
            .iter()
            .any(|(who, verb, dry_run)| *who == user && verb == "patch" && *dry_run),
        "the drift check's dry run, as the tenant: {writers:?}"
    );
    assert_eq!(
        writers.iter().filter(|(who, _, _)| *who != user).count(),
        1,
        "only the hand edit is not the tenant's: {writers:?}"
    );
    only_tenant(e2e::audited_writers("secrets", &env.namespace, &record(2)).await).unwrap();

    // The same chart asking for cluster-admin is refused by the API server, as the tenant.
    env.apply("grab", as_deployer(true)).await;
    let fhr = env.wait_condition("grab", "False", "InstallFailed").await;
    let message = ready_message(&fhr);
    let user = format!("system:serviceaccount:{}:deployer", env.namespace);
    assert!(
        message.contains(&user) && message.contains("clusterrolebindings"),
        "the condition names the account and what it may not do: {message}"
    );
    let bindings: kube::Api<ClusterRoleBinding> = kube::Api::all(env.client.clone());
    let name = format!("{}-grab-{}", env.namespace, env.namespace);
    assert!(bindings.get_opt(&name).await.unwrap().is_none());
    // The tenant's other release carries on.
    env.wait_for("ok", "still ready", ready).await;

    // An object in another namespace is refused the same way, and nothing is planted there.
    let other = e2e::unique_name("other");
    fhr_testenv::create_namespace(&env.client, &other)
        .await
        .unwrap();
    env.apply(
        "plant",
        serde_json::json!({"chartGitPath": "escalate", "serviceAccountName": "deployer",
            "values": [{"name": "elsewhere", "value": other}]}),
    )
    .await;
    let fhr = env.wait_condition("plant", "False", "InstallFailed").await;
    let message = ready_message(&fhr);
    assert!(
        message.contains(&user) && message.contains("configmaps") && message.contains(&other),
        "names the account, the resource and the namespace: {message}"
    );
    let planted: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(env.client.clone(), &other);
    assert!(planted.get_opt("planted").await.unwrap().is_none());
    assert!(
        env.helm_history(&format!("{}-plant", env.namespace))
            .iter()
            .all(|(_, status)| !status.starts_with("pending")),
        "no release left pending"
    );

    // Deleting the resource uninstalls as the tenant.
    env.delete("ok").await;
    eventually(
        "the uninstall audited as the tenant",
        Duration::from_secs(60),
        || async {
            let writers = e2e::audited_writers("configmaps", &env.namespace, &release).await;
            if writers
                .iter()
                .any(|(who, verb, _)| *who == user && verb == "delete")
            {
                Ok(())
            } else {
                Err(format!("{writers:?}"))
            }
        },
    )
    .await;

    // Lookup runs with the tenant's rights too: another namespace's Secret is forbidden.
    let victim = e2e::unique_name("victim");
    fhr_testenv::create_namespace(&env.client, &victim)
        .await
        .unwrap();
    add_peeking_chart(&env, &victim);
    env.apply(
        "peek",
        serde_json::json!({"chartGitPath": "peek", "serviceAccountName": "deployer"}),
    )
    .await;
    let fhr = env.wait_condition("peek", "False", "InstallFailed").await;
    assert!(
        ready_message(&fhr).contains("forbidden"),
        "{}",
        ready_message(&fhr)
    );
}

#[tokio::test]
async fn a_default_service_account_locks_down_releases_that_name_none() {
    use e2e::operator::{OperatorEnv, ready, ready_message};
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, PostParams};
    let mut env = OperatorEnv::new("lockdown").await;
    add_escalating_chart(&env);
    env.start_operator(&["--default-service-account=deployer"])
        .await;
    // Values from a Secret the operator could read, but the account cannot.
    let values: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "app-values"}, "stringData": {"values.yaml": "escalate: false\n"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(env.client.clone(), &env.namespace)
        .create(&PostParams::default(), &values)
        .await
        .unwrap();
    // No such account yet: the release reads and does nothing, and says as whom it tried.
    env.apply(
        "app",
        serde_json::json!({"chartGitPath": "escalate",
            "valuesFrom": [{"secretKeyRef": {"name": "app-values"}}]}),
    )
    .await;
    let fhr = env.wait_condition("app", "False", "Forbidden").await;
    let user = format!("system:serviceaccount:{}:deployer", env.namespace);
    let message = ready_message(&fhr);
    assert!(
        message.contains(&user)
            && message.contains("Secret")
            && message.contains("app-values")
            && message.contains("cannot get resource \"secrets\""),
        "names the account, the verb and the resource refused: {message}"
    );
    assert!(
        env.helm_history(&format!("{}-app", env.namespace))
            .is_empty(),
        "nothing was installed"
    );
    // Once the tenant's account exists, the retry (with backoff) installs as it.
    tenant_account(&env.client, &env.namespace).await;
    env.wait_for("app", "installed once the account exists", ready)
        .await;
}

#[tokio::test]
async fn a_values_source_in_another_namespace_is_refused() {
    // The API has no field for one; strict validation (kubectl's default, and flux-agent's)
    // refuses the field rather than dropping it and reading this namespace's Secret instead.
    let mut env = AgentEnv::new("elsewhere").await;
    env.start_agent(&[]).await;
    env.repo
        .write(
            "releaseconfig/peek.yaml",
            format!(
                "{}  valuesFrom:\n    - secretKeyRef:\n        name: canary\n        namespace: kube-system\n",
                env.manifest("peek", "webapp")
            ),
        )
        .unwrap();
    env.repo
        .write(
            "releaseconfig/borrow.yaml",
            format!(
                "{}  serviceAccountName: kube-system:admin\n",
                env.manifest("borrow", "webapp")
            ),
        )
        .unwrap();
    let state = env.commit_and_sync("sources elsewhere").await;
    let errors = &state["errors"];
    assert!(
        errors.contains("releaseconfig/peek.yaml")
            && errors.contains("secretKeyRef.namespace: field not declared in schema"),
        "{errors}"
    );
    assert!(
        errors.contains("releaseconfig/borrow.yaml") && errors.contains("serviceAccountName"),
        "{errors}"
    );
    let api = env.api(&env.namespace);
    assert!(api.get_opt("peek").await.unwrap().is_none());
    assert!(api.get_opt("borrow").await.unwrap().is_none());
}
