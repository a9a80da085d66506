//! Charts from Helm chart repositories: real `helm package` and `helm repo index` publish into a
//! repository on loopback, and the operator installs, follows version ranges and shares fetches.

use e2e::eventually;
use e2e::operator::{OperatorEnv, ready, ready_at, ready_message};
use fhr_testenv::{ChartRepository, OciRegistry};
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Packages version `version` of the chart `cache` (one ConfigMap saying its version) into
/// `into`, as `helm package` does; the archive's path.
fn package(env: &OperatorEnv, version: &str, into: &std::path::Path) -> std::path::PathBuf {
    let source = env.dir.path().join(format!("src-{version}/cache"));
    std::fs::create_dir_all(source.join("templates")).unwrap();
    std::fs::write(
        source.join("Chart.yaml"),
        format!("apiVersion: v2\nname: cache\nversion: {version}\n"),
    )
    .unwrap();
    std::fs::write(
        source.join("templates/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cache\ndata:\n  version: {{ .Chart.Version | quote }}\n",
    )
    .unwrap();
    e2e::output_ok(
        env.cp
            .helm()
            .arg("package")
            .arg(&source)
            .arg("--destination")
            .arg(into),
    );
    into.join(format!("cache-{version}.tgz"))
}

/// Publishes version `version` of the chart `cache` into `repository` and indexes the
/// repository again, as a chart's maintainers do.
fn publish(env: &OperatorEnv, repository: &ChartRepository, version: &str) {
    package(env, version, repository.dir());
    e2e::output_ok(env.cp.helm().args(["repo", "index"]).arg(repository.dir()));
}

/// Pushes version `version` of the chart `cache` to `registry` under `charts/`, with `helm push`.
fn push(env: &OperatorEnv, registry: &OciRegistry, version: &str) {
    let out = env.dir.path().join("packages");
    std::fs::create_dir_all(&out).unwrap();
    let archive = package(env, version, &out);
    e2e::output_ok(
        env.cp
            .helm()
            .arg("push")
            .arg(&archive)
            .arg(format!("oci://{}/charts", registry.host()))
            .arg("--plain-http"),
    );
}

/// The operator's flags for the range tests: plain http on loopback, and intervals short enough
/// that a newly published version is found within seconds.
const FOLLOW_QUICKLY: [&str; 3] = [
    "--chart-allow-insecure-http",
    "--chart-repository-interval=1s",
    "--charts-sync-interval=2s",
];

/// Applies `spec` as `name`, waits for ChartPullFailed and checks that its message says
/// `expected`; the message.
async fn pull_fails(
    env: &OperatorEnv,
    name: &str,
    spec: serde_json::Value,
    expected: &str,
) -> String {
    env.apply(name, spec).await;
    let fhr = env.wait_condition(name, "False", "ChartPullFailed").await;
    let message = ready_message(&fhr);
    assert!(
        message.contains(expected),
        "{expected:?} not in {message:?}"
    );
    message
}

fn from_repository(repository: &ChartRepository, version: &str) -> serde_json::Value {
    json!({"chart": {"repository": repository.url(), "name": "cache", "version": version}})
}

/// The chart `helm list` shows for the test namespace's one release.
fn listed_chart(env: &OperatorEnv) -> String {
    let list = e2e::output_ok(env.cp.helm().args([
        "list",
        "--namespace",
        &env.namespace,
        "--output",
        "json",
    ]));
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    list[0]["chart"].as_str().unwrap_or_default().to_owned()
}

async fn deployed_version(env: &OperatorEnv, release: &str) -> String {
    let config_maps: kube::Api<ConfigMap> =
        kube::Api::namespaced(env.client.clone(), &env.namespace);
    let cm = config_maps.get(&format!("{release}-cache")).await.unwrap();
    cm.data.unwrap_or_default()["version"].clone()
}

#[tokio::test]
async fn a_repository_chart_installs_and_follows_its_version_range() {
    let repository = ChartRepository::start().await.unwrap();
    let mut env = OperatorEnv::new("repo-range").await;
    publish(&env, &repository, "1.2.0");
    env.start_operator(&FOLLOW_QUICKLY).await;
    env.apply("cache", from_repository(&repository, "~1.2.0"))
        .await;
    let fhr = env
        .wait_for("cache", "installed from the repository", ready)
        .await;
    let release = format!("{}-cache", env.namespace);
    assert_eq!(deployed_version(&env, &release).await, "1.2.0");

    // Status names the version and the archive's digest; helm list the chart version.
    let archive = std::fs::read(repository.dir().join("cache-1.2.0.tgz")).unwrap();
    let digest = hex(&Sha256::digest(&archive));
    let status = fhr.status.unwrap();
    assert_eq!(
        status.chart_revision.as_deref(),
        Some(format!("1.2.0@sha256:{digest}").as_str())
    );
    let fetched = status.condition("ChartFetched").unwrap();
    assert!(
        fetched.message.contains("resolved to version 1.2.0"),
        "{}",
        fetched.message
    );
    assert_eq!(listed_chart(&env), "cache-1.2.0");

    // A newer version inside the range upgrades; one outside does not.
    publish(&env, &repository, "1.2.4");
    env.wait_for("cache", "upgraded to 1.2.4", ready_at(2))
        .await;
    assert_eq!(deployed_version(&env, &release).await, "1.2.4");
    let events = env.events().await;
    assert!(
        events
            .iter()
            .any(|(reason, message)| reason == "ChartVersionResolved"
                && message.contains("now resolves to version 1.2.4 (was 1.2.0)")),
        "{events:?}"
    );
    publish(&env, &repository, "2.0.0");
    let index_fetches = repository.requests("index.yaml");
    eventually("the new index read", Duration::from_secs(30), || async {
        if repository.requests("index.yaml") >= index_fetches + 2 {
            Ok(())
        } else {
            Err(format!(
                "{} index fetches",
                repository.requests("index.yaml")
            ))
        }
    })
    .await;
    env.reconciles(2.0).await;
    assert_eq!(
        repository.requests("cache-2.0.0.tgz"),
        0,
        "2.0.0 is outside ~1.2.0"
    );
    assert_eq!(env.helm_history(&release).len(), 2);
    assert_eq!(deployed_version(&env, &release).await, "1.2.4");

    // A range nothing matches says what the repository has, and touches nothing.
    let spec = from_repository(&repository, "~3.0");
    let expected = "no version of chart \"cache\" matches \"~3.0\"; the newest is 2.0.0";
    pull_fails(&env, "cache", spec, expected).await;
    assert_eq!(env.helm_history(&release).len(), 2);
}

#[tokio::test]
async fn fifty_releases_of_one_chart_share_one_index_fetch_and_one_download() {
    let repository = ChartRepository::start().await.unwrap();
    let mut env = OperatorEnv::new("repo-share").await;
    publish(&env, &repository, "1.0.0");
    env.start_operator(&[
        "--chart-allow-insecure-http",
        "--chart-repository-interval=1h",
    ])
    .await;
    for i in 0..50 {
        env.apply(&format!("cache-{i}"), from_repository(&repository, "1.0.0"))
            .await;
    }
    for i in 0..50 {
        env.wait_for(&format!("cache-{i}"), "installed", ready)
            .await;
    }
    assert_eq!(repository.requests("index.yaml"), 1);
    assert_eq!(repository.requests("cache-1.0.0.tgz"), 1);
}

#[tokio::test]
async fn unsafe_or_oversized_repositories_are_refused_with_a_condition() {
    let repository = ChartRepository::start().await.unwrap();
    let mut env = OperatorEnv::new("repo-refused").await;
    publish(&env, &repository, "1.0.0");

    // Plain http without the operator's consent.
    env.start_operator(&[]).await;
    let spec = from_repository(&repository, "1.0.0");
    pull_fails(&env, "plain", spec, "--chart-allow-insecure-http").await;
    assert_eq!(repository.requests("index.yaml"), 0, "nothing was fetched");

    // A decompression bomb: a small archive whose template expands to 64 MiB.
    let bomb = {
        let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let mut builder = tar::Builder::new(encoder);
        let mut add = |name: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, data).unwrap();
        };
        add(
            "bomb/Chart.yaml",
            b"apiVersion: v2\nname: bomb\nversion: 1.0.0\n",
        );
        add("bomb/templates/big.yaml", &vec![b'#'; 64 << 20]);
        builder.into_inner().unwrap().finish().unwrap()
    };
    std::fs::write(repository.dir().join("bomb-1.0.0.tgz"), &bomb).unwrap();
    let index = std::fs::read_to_string(repository.dir().join("index.yaml")).unwrap();
    let index = index.replacen(
        "entries:\n",
        &format!(
            "entries:\n  bomb:\n  - name: bomb\n    version: 1.0.0\n    digest: {}\n    urls: [bomb-1.0.0.tgz]\n",
            hex(&Sha256::digest(&bomb))
        ),
        1,
    );
    std::fs::write(repository.dir().join("index.yaml"), index).unwrap();
    let mut env_open = OperatorEnv::new("repo-bomb").await;
    env_open
        .start_operator(&["--chart-allow-insecure-http"])
        .await;
    let spec = json!({"chart": {"repository": repository.url(), "name": "bomb", "version": "*"}});
    pull_fails(&env_open, "bomb", spec, "expands to more than").await;
    assert!(
        env_open
            .helm_history(&format!("{}-bomb", env_open.namespace))
            .is_empty()
    );

    // An index over the bound is refused before it is read into memory.
    let huge = ChartRepository::start().await.unwrap();
    let mut padding = String::from("apiVersion: v1\nentries: {}\n");
    while padding.len() <= 65 << 20 {
        padding.push_str(&format!("# {}\n", "x".repeat(1000)));
    }
    std::fs::write(huge.dir().join("index.yaml"), padding).unwrap();
    let spec = json!({"chart": {"repository": huge.url(), "name": "cache", "version": "*"}});
    pull_fails(&env_open, "huge", spec, "larger than 64 MiB").await;
    let rss = env_open.operator().peak_rss_mib();
    assert!(rss < 300.0, "the operator's peak RSS reached {rss} MiB");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn repository_credentials_are_used_and_never_shown() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, Patch, PatchParams};
    let repository = ChartRepository::start().await.unwrap();
    let mut env = OperatorEnv::new("repo-auth").await;
    publish(&env, &repository, "1.0.0");
    let password = format!("canary-{}", e2e::unique_name("repo-password"));
    let wrong = format!("canary-{}", e2e::unique_name("wrong-password"));
    repository.require_basic_auth("reader", &password);
    env.start_operator(&["--chart-allow-insecure-http"]).await;

    // No credentials: the condition says what to do.
    let mut spec = from_repository(&repository, "1.0.0");
    let message = pull_fails(
        &env,
        "auth",
        spec.clone(),
        "name a Secret in spec.chart.secretRef",
    )
    .await;
    assert!(message.contains("401"), "{message}");

    // Wrong credentials: the condition says which, and repeats no secret.
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let credentials = |password: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "repo-credentials"},
            "stringData": {"username": "reader", "password": password}})
    };
    let apply = PatchParams::apply(e2e::TEST_MANAGER).force();
    secrets
        .patch(
            "repo-credentials",
            &apply,
            &Patch::Apply(&credentials(&wrong)),
        )
        .await
        .unwrap();
    spec["chart"]["secretRef"] = json!({"name": "repo-credentials"});
    env.apply("auth", spec).await;
    eventually(
        "the wrong credentials reported",
        Duration::from_secs(60),
        || async {
            let fhr = env.api().get("auth").await.map_err(|e| e.to_string())?;
            let message = ready_message(&fhr);
            if message.contains("check the credentials in the Secret named by spec.chart.secretRef")
            {
                Ok(())
            } else {
                Err(message)
            }
        },
    )
    .await;

    // Fixing the Secret is enough: its change re-queues the release, which installs.
    secrets
        .patch(
            "repo-credentials",
            &apply,
            &Patch::Apply(&credentials(&password)),
        )
        .await
        .unwrap();
    env.wait_for("auth", "installed with the credentials", ready)
        .await;

    let status = serde_json::to_string(&env.api().get("auth").await.unwrap().status).unwrap();
    let events = format!("{:?}", env.events().await);
    let log = env.operator().log();
    for canary in [&password, &wrong] {
        assert!(!status.contains(canary.as_str()), "status: {status}");
        assert!(!events.contains(canary.as_str()), "events: {events}");
        assert!(
            !log.contains(canary.as_str()),
            "the operator's log repeats a password"
        );
    }
}

#[tokio::test]
async fn an_oci_chart_installs_and_follows_its_version_range() {
    let registry = OciRegistry::start().await.unwrap();
    let mut env = OperatorEnv::new("oci-range").await;
    push(&env, &registry, "1.2.0");
    env.start_operator(&FOLLOW_QUICKLY).await;
    let oci = format!("oci://{}/charts/cache", registry.host());
    env.apply("cache", json!({"chart": {"oci": oci, "version": "~1.2.0"}}))
        .await;
    let fhr = env
        .wait_for("cache", "installed from the registry", ready)
        .await;
    let release = format!("{}-cache", env.namespace);
    assert_eq!(deployed_version(&env, &release).await, "1.2.0");
    // The digest in status is the chart layer's, as helm push stored it.
    let archive = std::fs::read(env.dir.path().join("packages/cache-1.2.0.tgz")).unwrap();
    let digest = hex(&Sha256::digest(&archive));
    assert_eq!(
        fhr.status.unwrap().chart_revision.as_deref(),
        Some(format!("1.2.0@sha256:{digest}").as_str())
    );

    push(&env, &registry, "1.2.4");
    env.wait_for("cache", "upgraded to 1.2.4", ready_at(2))
        .await;
    assert_eq!(deployed_version(&env, &release).await, "1.2.4");
    push(&env, &registry, "2.0.0");
    env.reconciles(3.0).await;
    assert_eq!(
        env.helm_history(&release).len(),
        2,
        "2.0.0 is outside ~1.2.0"
    );
    assert_eq!(listed_chart(&env), "cache-1.2.4");
}

#[tokio::test]
async fn an_https_repository_signed_by_a_private_ca_needs_its_ca_secret() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, Patch, PatchParams};
    let (repository, ca) = ChartRepository::start_tls().await.unwrap();
    let mut env = OperatorEnv::new("repo-ca").await;
    publish(&env, &repository, "1.0.0");
    // No --chart-allow-insecure-http: this repository is https.
    env.start_operator(&[]).await;
    let mut spec = from_repository(&repository, "1.0.0");
    // An unknown CA is named as the problem.
    pull_fails(&env, "private", spec.clone(), "certificate").await;
    assert!(
        env.helm_history(&format!("{}-private", env.namespace))
            .is_empty()
    );

    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "repo-ca"},
        "stringData": {"ca.crt": ca}});
    Api::<Secret>::namespaced(env.client.clone(), &env.namespace)
        .patch(
            "repo-ca",
            &PatchParams::apply(e2e::TEST_MANAGER),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap();
    spec["chart"]["caSecretRef"] = json!({"name": "repo-ca"});
    env.apply("private", spec).await;
    env.wait_for("private", "installed over https with its CA", ready)
        .await;
}
