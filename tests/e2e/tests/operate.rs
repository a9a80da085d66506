//! Operating flux-helm like the tools people already use: `kubectl fhr` against the real control
//! plane and daemons, and the Grafana dashboard and Prometheus alerts in deploy/monitoring using
//! only metrics the daemons really serve.

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

/// What one `kubectl fhr` command did.
struct Ran {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `kubectl-fhr` with the control plane's kubeconfig, as a user would through kubectl.
async fn kubectl_fhr(env: &AgentEnv, args: &[&str]) -> Ran {
    let output = tokio::process::Command::new(e2e::daemon_binary("kubectl-fhr"))
        .env("KUBECONFIG", env.cp.kubeconfig())
        .args(["--namespace", &env.namespace])
        .args(args)
        .output()
        .await
        .unwrap();
    Ran {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test]
async fn kubectl_fhr_follows_reconciles_suspends_and_reads_history_and_events() {
    use std::time::Duration;
    let mut env = AgentEnv::new("cli").await;
    env.commit_example_release("web");
    // The agent polls hourly: only `reconcile --with-source` makes it sync a new commit.
    env.start_agent(&["--git-poll-interval=1h"]).await;
    let args = env.operator_args(env.cp.tools(), &[]);
    let operator = Daemon::start("helm-operator", env.cp.kubeconfig(), env.dir.path(), &args);
    operator.wait_ready().await;
    let release = format!("{}-web", env.namespace);

    // get: the table, and JSON a script can read.
    let ready = e2e::eventually(
        "web Ready in kubectl fhr get",
        Duration::from_secs(90),
        || async {
            let ran = kubectl_fhr(&env, &["get", "web", "-o", "json"]).await;
            let fhr: Value = serde_json::from_str(&ran.stdout)
                .map_err(|e| format!("{e}: {}{}", ran.stdout, ran.stderr))?;
            let ready = fhr["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned());
            match ready {
                Some(c) if c["status"] == "True" => Ok(fhr),
                _ => Err(fhr.to_string()),
            }
        },
    )
    .await;
    assert_eq!(ready["status"]["revision"], 1);
    let table = kubectl_fhr(&env, &["get"]).await;
    assert!(table.success, "{}", table.stderr);
    let row = table.stdout.lines().nth(1).unwrap_or_default().to_owned();
    for cell in [
        "web",
        release.as_str(),
        "webapp",
        " 1 ",
        "True",
        "InstallSucceeded",
    ] {
        assert!(row.contains(cell), "{cell:?} in\n{}", table.stdout);
    }
    let all = kubectl_fhr(&env, &["get", "--all-namespaces"]).await;
    assert!(all.stdout.starts_with("NAMESPACE"), "{}", all.stdout);
    assert!(all.stdout.contains(&env.namespace), "{}", all.stdout);

    // reconcile: waits for the operator to handle this very request.
    let ran = kubectl_fhr(&env, &["reconcile", "web"]).await;
    assert!(ran.success, "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains("✔")
            && ran.stdout.contains("ReleaseInSync")
            && ran.stdout.contains("(revision 1)"),
        "{}",
        ran.stdout
    );

    // --with-source: a commit the agent would not fetch for an hour is synced and upgraded.
    env.repo
        .write(
            "releaseconfig/web.yaml",
            format!(
                "{}  values:\n    - name: message\n      value: from the CLI\n",
                env.manifest("web", "webapp")
            ),
        )
        .unwrap();
    let commit = env.repo.commit("a new message").unwrap();
    let ran = kubectl_fhr(
        &env,
        &["reconcile", "web", "--with-source", "--timeout", "3m"],
    )
    .await;
    assert!(ran.success, "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout
            .contains(&format!("flux-agent synced commit {}", &commit[..12])),
        "{}",
        ran.stdout
    );
    // Upgraded by this request, or by the operator's own re-queue on fetching the commit first.
    assert!(
        ran.stdout.contains("✔") && ran.stdout.contains("(revision 2)"),
        "{}",
        ran.stdout
    );

    // history matches helm's own.
    let ran = kubectl_fhr(&env, &["history", "web", "-o", "json"]).await;
    assert!(ran.success, "{}", ran.stderr);
    let ours: Vec<Value> = serde_json::from_str(&ran.stdout).unwrap();
    let helm = e2e::output_ok(env.cp.helm().args([
        "history",
        &release,
        "--namespace",
        &env.namespace,
        "-o",
        "json",
    ]));
    let helms: Vec<Value> = serde_json::from_slice(&helm.stdout).unwrap();
    assert_eq!(ours.len(), 2);
    let fields = |r: &Value| {
        ["revision", "status", "chart", "app_version", "description"].map(|k| r[k].to_string())
    };
    assert_eq!(
        ours.iter().map(fields).collect::<Vec<_>>(),
        helms.iter().map(fields).collect::<Vec<_>>()
    );
    assert!(
        ours.iter()
            .all(|r| !r["digest"].as_str().unwrap_or_default().is_empty()),
        "{ours:?}"
    );

    // events: the install and the upgrade.
    let ran = kubectl_fhr(&env, &["events", "web"]).await;
    assert!(
        ran.stdout.contains("InstallSucceeded") && ran.stdout.contains("UpgradeSucceeded"),
        "{}",
        ran.stdout
    );

    // suspend stops every action: a hand edit stays and reconcile refuses; resume restores it.
    let ran = kubectl_fhr(&env, &["suspend", "web"]).await;
    assert!(ran.success, "{}", ran.stderr);
    let ran = kubectl_fhr(&env, &["reconcile", "web"]).await;
    assert!(
        !ran.success && ran.stderr.contains("suspended"),
        "{}",
        ran.stderr
    );
    let get = kubectl_fhr(&env, &["get"]).await;
    assert!(get.stdout.contains("Suspended"), "{}", get.stdout);
    let config_maps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(env.client.clone(), &env.namespace);
    let name = format!("{release}-webapp");
    let edit = serde_json::json!({"data": {"message": "edited by hand"}});
    config_maps
        .patch(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&edit),
        )
        .await
        .unwrap();
    // A requested reconcile of a suspended resource is not handled: the hand edit stays.
    let before = operator.metric("fhr_operator_reconciles_total").await;
    let annotate = serde_json::json!({"metadata": {"annotations": {fhr_types::meta::RECONCILE_REQUEST_ANNOTATION: "while-suspended"}}});
    env.api(&env.namespace)
        .patch(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&annotate),
        )
        .await
        .unwrap();
    operator
        .wait_metric("fhr_operator_reconciles_total", before + 1.0)
        .await;
    let message = || async {
        let data = config_maps.get(&name).await.unwrap().data;
        data.unwrap_or_default()["message"].clone()
    };
    assert_eq!(message().await, "edited by hand");
    let ran = kubectl_fhr(&env, &["resume", "web"]).await;
    assert!(ran.success, "{}", ran.stderr);
    let ran = kubectl_fhr(&env, &["reconcile", "web"]).await;
    assert!(ran.success, "{}{}", ran.stdout, ran.stderr);
    assert_eq!(
        message().await,
        "from the CLI",
        "resumed, the drift check restored the object"
    );

    // A failing release: reconcile exits non-zero with the reason.
    env.repo
        .write(
            "releaseconfig/broken.yaml",
            format!(
                "{}  values:\n    - name: ingress.enabled\n      value: true\n",
                env.manifest("broken", "webapp")
            ),
        )
        .unwrap();
    env.repo
        .commit("a release missing a required value")
        .unwrap();
    // Added in git and reconciled at once: the agent syncs first, then the new resource exists.
    // It names no agent yet (other tests' agents run beside this one), so the user names it.
    let agent_namespace = format!("--agent-namespace={}", env.namespace);
    let ran = kubectl_fhr(
        &env,
        &[
            "reconcile",
            "broken",
            "--with-source",
            &agent_namespace,
            "--timeout",
            "3m",
        ],
    )
    .await;
    assert!(!ran.success, "{}", ran.stdout);
    assert!(
        ran.stderr.contains("InstallFailed") && ran.stderr.contains("ingress.host is required"),
        "{}{}",
        ran.stdout,
        ran.stderr
    );

    // Completion for the usual shells.
    let ran = kubectl_fhr(&env, &["completion", "bash"]).await;
    assert!(
        ran.success && ran.stdout.contains("kubectl-fhr"),
        "{}",
        ran.stderr
    );
}

/// Where two values first differ: the path, and both sides there.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x.keys().chain(y.keys()).find_map(|k| {
            first_difference(
                &x.get(k).cloned().unwrap_or(Value::Null),
                &y.get(k).cloned().unwrap_or(Value::Null),
                &format!("{path}.{k}"),
            )
        }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, &format!("{path}[{i}]"))),
        (x, y) if x == y => None,
        // kustomize rewrites `1000.0` as `1000`; Helm keeps the file's text.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        (x, y) => Some(format!("{path} = {x}, the kustomization {y}")),
    }
}

/// The objects of a multi-document YAML stream, sorted by kind, namespace and name.
fn objects(yaml: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(yaml);
    let mut objects: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    objects.retain(Value::is_object);
    objects.sort_by_key(|o| {
        (
            o["kind"].to_string(),
            o["metadata"]["namespace"].to_string(),
            o["metadata"]["name"].to_string(),
        )
    });
    objects
}

#[tokio::test]
async fn the_chart_renders_the_kustomization_lints_and_installs() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    let cp = e2e::shared_control_plane().await;
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let chart = deploy.join("chart");
    e2e::output_ok(cp.helm().arg("lint").arg(&chart).arg("--strict"));

    // With its defaults the chart is the kustomization, less the Namespace Helm provides.
    let rendered = e2e::output_ok(
        cp.helm()
            .args([
                "template",
                "flux-helm",
                "--namespace",
                "flux-helm",
                "--include-crds",
            ])
            .arg(&chart),
    );
    let kustomized = e2e::output_ok(
        std::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(&deploy),
    );
    let mut expected = objects(&kustomized.stdout);
    expected.retain(|o| o["kind"] != "Namespace");
    let rendered = objects(&rendered.stdout);
    assert_eq!(rendered.len(), expected.len());
    for (chart_object, base_object) in rendered.iter().zip(&expected) {
        if let Some(difference) = first_difference(chart_object, base_object, "") {
            panic!(
                "{} {}: the chart renders {difference}",
                base_object["kind"], base_object["metadata"]["name"]
            );
        }
    }

    // Installed into another namespace, with the user's values.
    let client = cp.client().await;
    let namespace = e2e::unique_name("chart");
    e2e::output_ok(
        cp.helm()
            .args([
                "install",
                "flux-helm",
                "--namespace",
                &namespace,
                "--create-namespace",
            ])
            .args(["--set", "git.url=https://git.example.com/cluster.git"])
            .args([
                "--set",
                "helmOperator.image=registry.example.com/helm-operator:1.0",
            ])
            .arg(&chart),
    );
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), &namespace);
    let operator = deployments.get("helm-operator").await.unwrap();
    let container = &operator.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("registry.example.com/helm-operator:1.0")
    );
    assert!(
        container
            .args
            .iter()
            .flatten()
            .any(|a| a == "--git-url=https://git.example.com/cluster.git")
    );
    assert!(deployments.get_opt("flux-agent").await.unwrap().is_some());
    // The operator's cluster-wide rights name the release namespace's ServiceAccount.
    let bindings: kube::Api<ClusterRoleBinding> = kube::Api::all(client);
    let binding = bindings.get("flux-helm-operator").await.unwrap();
    assert_eq!(
        binding.subjects.unwrap()[0].namespace.as_deref(),
        Some(namespace.as_str())
    );
    e2e::output_ok(
        cp.helm()
            .args(["uninstall", "flux-helm", "--namespace", &namespace]),
    );
    assert!(
        bindings
            .get_opt("flux-helm-operator")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn cargo_xtask_image_builds_both_images_and_they_pass_their_checks() {
    // buildah comes with `cargo xtask test` (apt-get); mounting and chroot need root.
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !std::path::Path::new("/usr/bin/buildah").is_file() || !root {
        eprintln!(
            "SKIPPED: the image checks need Debian's buildah and root (the 2-core CI machines have both)"
        );
        return;
    }
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = tokio::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .args([
            "run",
            "--quiet",
            "-p",
            "xtask",
            "--",
            "image",
            "--profile",
            "dev",
        ])
        .current_dir(&workspace)
        .output()
        .await
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    for (image, versions) in [
        ("flux-agent", &["flux-agent 0.1.0"][..]),
        (
            "helm-operator",
            &[
                "helm-operator 0.1.0",
                "fhr-helm-engine protocol 1",
                "v4.3.1",
            ][..],
        ),
    ] {
        assert!(
            log.contains(&format!("flux-helm/{image}:0.1.0 checked")),
            "{log}"
        );
        for version in versions {
            assert!(log.contains(version), "{version} in\n{log}");
        }
        // An OCI image layout a registry tool can copy.
        let archive = workspace.join(format!("target/images/{image}-0.1.0.oci.tar"));
        let listing = e2e::output_ok(std::process::Command::new("tar").arg("tf").arg(&archive));
        let listing = String::from_utf8_lossy(&listing.stdout);
        assert!(
            listing.contains("oci-layout") && listing.contains("index.json"),
            "{listing}"
        );
    }
    assert!(log.contains("ssh -V: OpenSSH"), "{log}");
}
