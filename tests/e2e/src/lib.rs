//! Support for the end-to-end tests: installing the CRD, waiting for conditions with a deadline,
//! and reading the example repository.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use serde_json::Value;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use fhr_testenv::{ControlPlane, create_namespace, shared_control_plane, unique_name};

/// Field manager the tests apply with.
pub const TEST_MANAGER: &str = "e2e-test";

/// Polls `check` until it returns `Ok`, or panics after `timeout` with the last `Err` it gave,
/// which the caller makes the state a reader needs (the object's status, the command output).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(50);
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen:\n{last}")
            }
            Err(_) => {}
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(500));
    }
}

/// Applies the generated CRD (server-side) and waits until the apiserver serves it.
pub async fn install_crd(client: &kube::Client) -> CustomResourceDefinition {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = fhr_types::crd();
    let name = crd.metadata.name.clone().expect("the CRD has a name");
    crds.patch(
        &name,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply the CRD");
    eventually(
        "the CRD to be Established",
        Duration::from_secs(30),
        || async {
            let crd = crds.get(&name).await.map_err(|e| e.to_string())?;
            let established = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                Ok(crd)
            } else {
                Err(format!("{:#?}", crd.status))
            }
        },
    )
    .await
}

/// One YAML document of the example release configuration.
#[derive(Debug, Clone)]
pub struct ExampleDocument {
    /// File it came from, relative to `examples/releaseconfig`.
    pub file: PathBuf,
    /// The document.
    pub value: Value,
}

/// Every document of every `*.yaml`/`*.yml` file under `examples/releaseconfig`, nested folders
/// included, in path order.
pub fn example_release_config() -> Vec<ExampleDocument> {
    let root = fhr_testenv::examples_dir().join("releaseconfig");
    let mut files = Vec::new();
    collect_yaml(&root, &mut files);
    files.sort();
    let mut documents = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read an example file");
        let values: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        for value in values.into_iter().filter(|v| !v.is_null()) {
            documents.push(ExampleDocument {
                file: path.strip_prefix(&root).expect("below root").to_owned(),
                value,
            });
        }
    }
    documents
}

fn collect_yaml(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read an examples folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            collect_yaml(&path, files);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
}
