//! Operating flux-helm like the tools people already use. This target: the Grafana dashboard and
//! the Prometheus alerts in deploy/monitoring use only metrics the daemons really serve.

use e2e::Daemon;
use e2e::agent::AgentEnv;
use serde_json::Value;
use std::collections::BTreeSet;

/// The `fhr_` series names a PromQL expression uses.
fn used(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("fhr_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every `expr` in a JSON or YAML document.
fn exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => exprs(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_use_is_served() {
    let monitoring =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/monitoring");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring.join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let rules: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(monitoring.join("prometheusrule.yaml")).unwrap(),
    )
    .unwrap();
    let mut expressions = Vec::new();
    exprs(&dashboard, &mut expressions);
    exprs(&rules, &mut expressions);
    let referenced: BTreeSet<String> = expressions.iter().flat_map(|e| used(e)).collect();
    assert!(
        referenced.len() >= 15,
        "the dashboard and the alerts name only {referenced:?}"
    );

    // Both daemons, with a release installed, so that every family has been touched.
    let mut env = AgentEnv::new("operate").await;
    env.commit_example_release("web");
    env.start_agent(&[]).await;
    let args = env.operator_args(env.cp.tools(), &[]);
    let operator = Daemon::start("helm-operator", env.cp.kubeconfig(), env.dir.path(), &args);
    operator.wait_ready().await;
    operator
        .wait_metric("fhr_operator_helm_actions_total", 1.0)
        .await;
    // A labelled family has no series until something happens to it: ask the agent for a sync.
    let (code, _) = fhr_testenv::http::request(env.agent().admin, "POST", "/api/v1/sync", &[], b"")
        .await
        .unwrap();
    assert_eq!(code, 202);
    let mut served_names = BTreeSet::new();
    for daemon in [env.agent(), &operator] {
        let (code, scrape) = daemon.get("/metrics").await.unwrap();
        assert_eq!(code, 200);
        served_names.extend(fhr_testenv::prometheus::series_names(&scrape));
    }
    let missing: Vec<_> = referenced.difference(&served_names).collect();
    assert!(
        missing.is_empty(),
        "used by deploy/monitoring but not served: {missing:?}\nserved: {served_names:?}"
    );
}

#[test]
fn names_are_read_from_expressions() {
    assert_eq!(
        used("sum by (le) (rate(fhr_a_seconds_bucket[5m])) / fhr_b"),
        ["fhr_a_seconds_bucket", "fhr_b"]
    );
}
