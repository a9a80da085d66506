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
                 {{{{- if $found }}}}{{{{ fail \"the chart read a Secret of another namespace\" }}}}{{{{ end }}}}\n\
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
    assert!(ready_message(&fhr).contains("read a Secret of another namespace"));

    // With --allow-lookup=false the same chart finds nothing and installs.
    let mut closed = OperatorEnv::new("lookup-off").await;
    add_peeking_chart(&closed, &victim);
    closed.start_operator(&["--allow-lookup=false"]).await;
    closed.apply("peek", spec).await;
    closed.wait_for("peek", "installed", ready).await;
}
