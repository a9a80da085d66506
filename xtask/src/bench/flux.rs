//! Flux v2 as the benchmark's baseline: upstream source-controller and helm-controller, built
//! from pinned modules under tools/flux/, run outside the cluster against the same control plane,
//! the same git server and the same chart, for the same N releases.

use super::measure::ProcessSample;
use super::{release_name, step};
use anyhow::{Context, bail};
use fhr_testenv::tools::{FLUX_HELM_CONTROLLER, FLUX_SOURCE_CONTROLLER, ToolModule};
use fhr_testenv::{ControlPlane, OwnedChild};
use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How Flux was configured for a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Flux's defaults.
    Defaults,
    /// `install/upgrade.disableOpenAPIValidation: true`.
    NoOpenapi,
}

impl Variant {
    /// The name in the report.
    pub fn label(self) -> &'static str {
        match self {
            Variant::Defaults => "Flux (defaults)",
            Variant::NoOpenapi => "Flux (no OpenAPI validation)",
        }
    }
}

/// Flux converging N HelmReleases.
#[derive(Debug, Serialize, Deserialize, Clone, Copy)]
pub struct FluxRun {
    /// How Flux was configured.
    pub variant: Variant,
    /// From applying the HelmReleases to the last one Ready.
    pub seconds: f64,
    /// CPU seconds of helm-controller and source-controller.
    pub cpu_seconds: f64,
    /// Peak RSS of helm-controller plus source-controller, MiB.
    pub peak_rss_mib: f64,
}

/// Builds both controllers if needed; the folder of each binary.
pub fn build() -> anyhow::Result<(PathBuf, PathBuf)> {
    let go = crate::tools::which_go()?;
    let mut paths = Vec::new();
    for module in [FLUX_SOURCE_CONTROLLER, FLUX_HELM_CONTROLLER] {
        crate::tools::build_module(&go, &module, false)?;
        paths.push(module.cache_dir().join(module.binaries[0].0));
    }
    Ok((paths[0].clone(), paths[1].clone()))
}

/// The CRD files a controller's module carries, from the Go module cache.
fn crd_files(module: &ToolModule) -> anyhow::Result<Vec<PathBuf>> {
    let go = crate::tools::which_go()?;
    let output = Command::new(go)
        .current_dir(fhr_testenv::tools::repository_dir().join(module.dir))
        .args(["list", "-m", "-f", "{{.Dir}}", module.versioned_module])
        .env("GOFLAGS", "-mod=readonly")
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "go list {}",
        module.versioned_module
    );
    let dir = PathBuf::from(String::from_utf8(output.stdout)?.trim()).join("config/crd/bases");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

async fn install_crds(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for module in [FLUX_SOURCE_CONTROLLER, FLUX_HELM_CONTROLLER] {
        for file in crd_files(&module)? {
            let crd: CustomResourceDefinition =
                serde_saphyr::from_str(&std::fs::read_to_string(&file)?)
                    .with_context(|| format!("parse {}", file.display()))?;
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(
                &name,
                &PatchParams::apply("flux-helm-bench").force(),
                &Patch::Apply(&crd),
            )
            .await
            .with_context(|| format!("apply CRD {name}"))?;
            names.push(name);
        }
    }
    for name in names {
        let established = kube::runtime::wait::conditions::is_crd_established();
        tokio::time::timeout(
            Duration::from_secs(60),
            kube::runtime::wait::await_condition(api.clone(), &name, established),
        )
        .await
        .with_context(|| format!("CRD {name} not established"))??;
    }
    Ok(())
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn ready(object: &DynamicObject) -> bool {
    object.data["status"]["conditions"]
        .as_array()
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Runs Flux over N releases of the chart at `charts/bench` of `git_url`, in `namespace`, and
/// stops it again.
#[allow(clippy::too_many_arguments)]
pub async fn converge(
    cp: &ControlPlane,
    client: &kube::Client,
    binaries: &(PathBuf, PathBuf),
    git_url: &str,
    n: usize,
    workers: usize,
    variant: Variant,
    logs: &Path,
) -> anyhow::Result<FluxRun> {
    install_crds(client).await?;
    let namespace = match variant {
        Variant::Defaults => "flux-defaults",
        Variant::NoOpenapi => "flux-no-openapi",
    };
    fhr_testenv::create_namespace(client, namespace).await?;
    let [
        storage_port,
        source_metrics,
        source_health,
        helm_metrics,
        helm_health,
    ] = fhr_testenv::free_ports::<5>()?;
    let storage = cp.dir().join(format!("flux-storage-{namespace}"));
    std::fs::create_dir_all(&storage)?;
    let start = |name: &str, binary: &Path, args: Vec<String>| -> anyhow::Result<OwnedChild> {
        let mut command = Command::new(binary);
        command
            .args(args)
            .env("KUBECONFIG", cp.kubeconfig())
            .env("RUNTIME_NAMESPACE", namespace);
        Ok(OwnedChild::spawn(
            name,
            command,
            &logs.join(format!("{name}-{namespace}.log")),
        )?)
    };
    let common = |metrics: u16, health: u16| {
        vec![
            format!("--metrics-addr=127.0.0.1:{metrics}"),
            format!("--health-addr=127.0.0.1:{health}"),
            "--enable-leader-election=false".to_owned(),
            // Each variant's controllers see only their own namespace: the HelmReleases an
            // earlier variant left would otherwise be reconciled again, against artifacts gone.
            "--watch-all-namespaces=false".to_owned(),
            format!("--concurrent={workers}"),
            "--log-level=error".to_owned(),
        ]
    };
    let mut source_args = common(source_metrics, source_health);
    source_args.extend([
        format!("--storage-path={}", storage.display()),
        format!("--storage-addr=127.0.0.1:{storage_port}"),
        format!("--storage-adv-addr=127.0.0.1:{storage_port}"),
    ]);
    let mut source = start("source-controller", &binaries.0, source_args)?;
    let mut helm = start(
        "helm-controller",
        &binaries.1,
        common(helm_metrics, helm_health),
    )?;

    let git_repositories: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace,
        &resource(
            "source.toolkit.fluxcd.io",
            "v1",
            "GitRepository",
            "gitrepositories",
        ),
    );
    let repository = json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"name": "bench", "namespace": namespace},
        "spec": {"interval": "10m", "url": git_url, "ref": {"branch": "master"}},
    });
    git_repositories
        .patch(
            "bench",
            &PatchParams::apply("flux-helm-bench"),
            &Patch::Apply(&repository),
        )
        .await?;
    // The repository's first fetch is not timed, as the agent's is not.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if git_repositories.get("bench").await.is_ok_and(|r| ready(&r)) {
            break;
        }
        if Instant::now() > deadline || !source.is_running() {
            bail!(
                "the GitRepository never became Ready:\n{}",
                source.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    step(&format!("{}: {n} HelmReleases at once", variant.label()));
    let releases: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace,
        &resource(
            "helm.toolkit.fluxcd.io",
            "v2",
            "HelmRelease",
            "helmreleases",
        ),
    );
    let (source_before, helm_before) = (
        ProcessSample::read(source.id())?,
        ProcessSample::read(helm.id())?,
    );
    let mut events = watcher(releases.clone(), watcher::Config::default()).boxed();
    let started = Instant::now();
    for i in 0..n {
        let name = release_name(i);
        let mut spec = json!({
            "interval": "30m",
            "releaseName": name,
            "chart": {"spec": {
                "chart": "charts/bench",
                "sourceRef": {"kind": "GitRepository", "name": "bench"},
                "interval": "30m",
            }},
            "values": {"index": i},
        });
        if variant == Variant::NoOpenapi {
            spec["install"] = json!({"disableOpenAPIValidation": true});
            spec["upgrade"] = json!({"disableOpenAPIValidation": true});
        }
        let object = json!({
            "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        });
        releases
            .patch(
                &name,
                &PatchParams::apply("flux-helm-bench"),
                &Patch::Apply(&object),
            )
            .await?;
    }
    let mut ready_set = BTreeSet::new();
    let limit = Duration::from_secs(120 + 3 * n as u64);
    while ready_set.len() < n {
        let event = tokio::time::timeout(limit.saturating_sub(started.elapsed()), events.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{}: {} of {n} Ready after {limit:?}\n{}",
                    variant.label(),
                    ready_set.len(),
                    helm.log_tail(20)
                )
            })?;
        let Some(event) = event else { break };
        if let watcher::Event::Apply(object) | watcher::Event::InitApply(object) = event? {
            let name = object.metadata.name.clone().unwrap_or_default();
            if ready(&object) {
                ready_set.insert(name);
            } else {
                ready_set.remove(&name);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let (source_after, helm_after) = (
        ProcessSample::read(source.id())?,
        ProcessSample::read(helm.id())?,
    );
    helm.terminate(Duration::from_secs(10));
    source.terminate(Duration::from_secs(10));
    Ok(FluxRun {
        variant,
        seconds,
        cpu_seconds: (source_after.cpu_seconds - source_before.cpu_seconds)
            + (helm_after.cpu_seconds - helm_before.cpu_seconds),
        peak_rss_mib: source_after.peak_rss_mib + helm_after.peak_rss_mib,
    })
}
