//! `cargo xtask demo`: the whole system on a local control plane and the example repository.
//!
//! Starts kube-apiserver + etcd, serves a git repository made from `examples/` on loopback, runs
//! flux-agent and helm-operator against them, shows progress until every example release is
//! deployed, prints the result, then keeps running until Ctrl-C (`--once` exits instead).

use anyhow::{Context, bail};
use fhr_testenv::{ControlPlane, GitServer, GitServerOptions, OwnedChild, create_namespace};
use fhr_types::FluxHelmRelease;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long the demo waits for every release before it gives up.
const DEADLINE: Duration = Duration::from_secs(300);

pub fn run(once: bool) -> anyhow::Result<()> {
    crate::tools::run(false, crate::tools::TestPackages::NotNeeded)?;
    crate::build_daemons()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(demo(once));
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

fn step(message: &str) {
    eprintln!("==> {message}");
}

async fn demo(once: bool) -> anyhow::Result<()> {
    step("starting etcd and kube-apiserver on loopback");
    let cp = ControlPlane::start()
        .await
        .context("start the control plane")?;
    let client = cp.client().await;
    eprintln!(
        "    kube-apiserver {} · kubeconfig {}",
        cp.server(),
        cp.kubeconfig().display()
    );

    step("installing the FluxHelmRelease CRD");
    install_crd(&client).await?;

    let examples = crate::root().join("examples");
    let expected = expected_releases(&examples)?;
    for namespace in expected
        .keys()
        .map(|(ns, _)| ns.as_str())
        .collect::<std::collections::BTreeSet<_>>()
    {
        create_namespace(&client, namespace).await?;
    }

    step("serving a git repository made from examples/ over smart HTTP");
    let git = GitServer::start(GitServerOptions::default()).await?;
    let repo = git.create_repo("flux-helm-examples", "master")?;
    repo.copy_dir(&examples.join("charts"), "charts")?;
    repo.copy_dir(&examples.join("releaseconfig"), "releaseconfig")?;
    let commit = repo.commit("examples")?;
    eprintln!("    {} at {}", git.url("flux-helm-examples"), &commit[..12]);

    step("starting flux-agent and helm-operator");
    let binaries = target_dir("debug");
    let logs = cp.dir().join("logs");
    std::fs::create_dir_all(&logs)?;
    let url = git.url("flux-helm-examples");
    // Free ports, not fixed ones: the demo runs inside the test command, beside anything else.
    let (agent_port, operator_port) = fhr_testenv::free_ports::<2>().map(|[a, b]| (a, b))?;
    let agent = spawn_daemon(
        &binaries,
        "flux-agent",
        &cp,
        &logs,
        &[
            format!("--git-url={url}"),
            "--git-poll-interval=5s".into(),
            format!("--listen=127.0.0.1:{agent_port}"),
            format!("--state-dir={}", cp.dir().join("agent").display()),
        ],
    )?;
    let operator = spawn_daemon(
        &binaries,
        "helm-operator",
        &cp,
        &logs,
        &[
            format!("--git-url={url}"),
            "--git-poll-interval=5s".into(),
            format!("--listen=127.0.0.1:{operator_port}"),
            format!("--helm-engine-bin={}", cp.tools().engine.display()),
            format!("--helm-bin={}", cp.tools().helm.display()),
            format!("--state-dir={}", cp.dir().join("operator").display()),
        ],
    )?;
    eprintln!("    logs in {}", logs.display());

    step(&format!("waiting for {} example releases", expected.len()));
    let api: Api<FluxHelmRelease> = Api::all(client.clone());
    let started = Instant::now();
    let mut shown: BTreeMap<(String, String), String> = BTreeMap::new();
    let items = loop {
        for (name, child) in [("flux-agent", &agent), ("helm-operator", &operator)] {
            if !child.is_running() {
                bail!("{name} exited:\n{}", child.log_tail(30));
            }
        }
        let items = api.list(&ListParams::default()).await?.items;
        for fhr in &items {
            let key = (
                fhr.metadata.namespace.clone().unwrap_or_default(),
                fhr.metadata.name.clone().unwrap_or_default(),
            );
            let line = progress(fhr);
            if shown.get(&key) != Some(&line) {
                eprintln!("    {}/{}: {line}", key.0, key.1);
                shown.insert(key, line);
            }
        }
        let ready = expected
            .keys()
            .filter(|key| items.iter().any(|f| same(f, key) && is_ready(f)))
            .count();
        if ready == expected.len() {
            break items;
        }
        if started.elapsed() > DEADLINE {
            eprintln!("{}", operator.log_tail(30));
            bail!(
                "only {ready} of {} releases became ready within {DEADLINE:?}",
                expected.len()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    println!(
        "\nEvery example release is deployed ({:.0?}):\n",
        started.elapsed()
    );
    print_table(&items);
    println!();
    let output = cp.helm().args(["list", "--all-namespaces"]).output()?;
    print!("{}", String::from_utf8_lossy(&output.stdout));

    if once {
        return Ok(());
    }
    println!(
        "\nThe demo keeps running. Try:\n  export KUBECONFIG={}\n  kubectl get fhr -A\n  curl -s 127.0.0.1:{operator_port}/metrics | grep fhr_operator\n  curl -X POST 127.0.0.1:{agent_port}/api/v1/sync\nPress Ctrl-C to stop.",
        cp.kubeconfig().display()
    );
    tokio::signal::ctrl_c().await?;
    step("stopping");
    drop((agent, operator));
    Ok(())
}

/// Applies the FluxHelmRelease CRD (the daemons wait until it is Established).
pub async fn install_crd(client: &kube::Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = fhr_types::crd();
    crds.patch(
        crd.metadata.name.as_deref().expect("named"),
        &PatchParams::apply("flux-helm-xtask").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    Ok(())
}

/// Where cargo puts the binaries of a profile (`debug` or `release`).
pub fn target_dir(profile: &str) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::root().join("target"))
        .join(profile)
}

/// Starts one of the daemons against the control plane, its output in `<logs>/<name>.log`.
pub fn spawn_daemon(
    bin: &Path,
    name: &str,
    cp: &ControlPlane,
    logs: &Path,
    args: &[String],
) -> anyhow::Result<OwnedChild> {
    let mut command = Command::new(bin.join(name));
    command
        .args(args)
        .env("KUBECONFIG", cp.kubeconfig())
        .env("RUST_LOG", "info");
    OwnedChild::spawn(name, command, &logs.join(format!("{name}.log")))
        .with_context(|| format!("start {name}"))
}

/// (namespace, name) of every FluxHelmRelease in the example release configuration.
fn expected_releases(examples: &Path) -> anyhow::Result<BTreeMap<(String, String), ()>> {
    let mut found = BTreeMap::new();
    let mut stack = vec![examples.join("releaseconfig")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if !path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
                .with_context(|| format!("{}", path.display()))?;
            for doc in documents
                .into_iter()
                .filter(|d| d["kind"] == "FluxHelmRelease")
            {
                let namespace = doc["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_owned();
                let name = doc["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                found.insert((namespace, name), ());
            }
        }
    }
    Ok(found)
}

fn same(fhr: &FluxHelmRelease, (namespace, name): &(String, String)) -> bool {
    fhr.metadata.namespace.as_deref() == Some(namespace)
        && fhr.metadata.name.as_deref() == Some(name)
}

fn is_ready(fhr: &FluxHelmRelease) -> bool {
    fhr.condition("Ready").is_some_and(|c| c.status == "True")
}

fn progress(fhr: &FluxHelmRelease) -> String {
    match fhr.condition("Ready") {
        Some(c) => format!("Ready={} {}: {}", c.status, c.reason, c.message),
        None => "applied by flux-agent, waiting for helm-operator".into(),
    }
}

fn print_table(items: &[FluxHelmRelease]) {
    let rows: Vec<[String; 6]> = items
        .iter()
        .map(|f| {
            let s = f.status.clone().unwrap_or_default();
            [
                f.metadata.namespace.clone().unwrap_or_default(),
                f.metadata.name.clone().unwrap_or_default(),
                s.release_name.unwrap_or_default(),
                s.release_status.unwrap_or_default(),
                s.revision.map(|r| r.to_string()).unwrap_or_default(),
                f.condition("Ready")
                    .map(|c| c.status.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let header = [
        "NAMESPACE",
        "NAME",
        "RELEASE",
        "STATUS",
        "REVISION",
        "READY",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
