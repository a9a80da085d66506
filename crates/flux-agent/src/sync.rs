//! One sync: read the manifests of a commit, apply the allowed ones with server-side apply under
//! the agent's field manager, and prune what this agent applied before that left git.

use fhr_git::{Limits, Snapshot};
use fhr_manifests::{self as manifests, Manifest, ManifestError};
use fhr_types::meta::{SOURCE_COMMIT_ANNOTATION, SOURCE_PATH_ANNOTATION, SYNC_SET_LABEL};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use tokio::sync::Mutex;

/// Field manager of everything the agent applies.
pub const MANAGER: &str = "flux-agent";
/// Annotation holding the digest of an object's manifest as it is in git: an unchanged manifest
/// keeps its source-commit annotation, so a new commit rewrites only what it changed.
pub const SOURCE_DIGEST_ANNOTATION: &str = "helm.integrations.flux.weave.works/source-digest";

/// Largest manifest file read (a larger one is refused, and the round prunes nothing).
const MAX_MANIFEST_FILE: u64 = 4 << 20;

/// A kind the agent may apply: `Kind`, or `group/Kind` for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedKind {
    group: Option<String>,
    kind: String,
}

impl AllowedKind {
    /// Parses `Kind` or `group/Kind` (`core/ConfigMap` for the core group).
    pub fn parse(text: &str) -> AllowedKind {
        match text.rsplit_once('/') {
            Some((group, kind)) => AllowedKind {
                group: Some(if group == "core" {
                    String::new()
                } else {
                    group.to_owned()
                }),
                kind: kind.to_owned(),
            },
            None => AllowedKind {
                group: None,
                kind: text.to_owned(),
            },
        }
    }

    fn matches(&self, group: &str, kind: &str) -> bool {
        self.kind == kind && self.group.as_deref().is_none_or(|g| g == group)
    }
}

/// What one sync did, for logs, Events, metrics and the state object.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// The commit synced.
    pub commit: String,
    /// Objects applied (created, changed or confirmed).
    pub applied: usize,
    /// Objects left alone in an incremental sync: unchanged in git since they were applied.
    pub unchanged: usize,
    /// Objects deleted because they left git.
    pub pruned: usize,
    /// Files or documents that could not be read.
    pub manifest_errors: Vec<ManifestError>,
    /// Objects of kinds not on the allow-list (file, kind, name).
    pub refused_kinds: Vec<String>,
    /// Objects the API server refused (kind/namespace/name: message).
    pub apply_errors: Vec<String>,
    /// Why pruning was skipped, if it was.
    pub prune_skipped: Option<String>,
}

impl Report {
    /// Whether everything in git was applied.
    pub fn clean(&self) -> bool {
        self.manifest_errors.is_empty() && self.apply_errors.is_empty()
    }
}

/// How much of git a sync applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reapply {
    /// Every manifest: undoes hand edits (the first sync, the sync interval, a request).
    Everything,
    /// Only manifests that changed in git since their object was applied (a new commit): the
    /// cost of a commit follows what it changed, not the size of the repository.
    Changed,
}

/// The agent's sync settings and its cache of API discovery.
pub struct Syncer {
    client: kube::Client,
    paths: Vec<String>,
    allowed: Vec<AllowedKind>,
    sync_set: String,
    prune: bool,
    // Allowed kinds resolved to API resources; re-resolved when a manifest names an unknown one.
    resources: Mutex<HashMap<(String, String), (ApiResource, ApiCapabilities)>>,
}

impl Syncer {
    /// A syncer for the given git paths, allowed kinds and sync set.
    pub fn new(
        client: kube::Client,
        paths: Vec<String>,
        allowed: Vec<AllowedKind>,
        sync_set: String,
        prune: bool,
    ) -> Syncer {
        Syncer {
            client,
            paths,
            allowed,
            sync_set,
            prune,
            resources: Mutex::default(),
        }
    }

    async fn discover(&self) -> Result<(), kube::Error> {
        let discovery = Discovery::new(self.client.clone()).run_aggregated().await?;
        let mut resources = self.resources.lock().await;
        for group in discovery.groups() {
            for (resource, capabilities) in group.recommended_resources() {
                if self
                    .allowed
                    .iter()
                    .any(|a| a.matches(&resource.group, &resource.kind))
                {
                    resources.insert(
                        (resource.group.clone(), resource.kind.clone()),
                        (resource, capabilities),
                    );
                }
            }
        }
        Ok(())
    }

    /// The API resource of an allowed kind. An unknown one may be a CRD installed since the last
    /// discovery, so discovery runs again — at most once per sync (`rediscovered`), however many
    /// manifests name kinds the API server does not serve.
    async fn resource(
        &self,
        group: &str,
        kind: &str,
        rediscovered: &mut bool,
    ) -> Result<Option<(ApiResource, ApiCapabilities)>, kube::Error> {
        let key = (group.to_owned(), kind.to_owned());
        if let Some(found) = self.resources.lock().await.get(&key) {
            return Ok(Some(found.clone()));
        }
        if !*rediscovered {
            *rediscovered = true;
            self.discover().await?;
        }
        Ok(self.resources.lock().await.get(&key).cloned())
    }

    /// Syncs one commit.
    pub async fn sync(&self, snapshot: &Snapshot, scope: Reapply) -> Result<Report, kube::Error> {
        let mut report = Report {
            commit: snapshot.commit(),
            ..Report::default()
        };
        let manifests = self.read(snapshot, &mut report).await;

        // Which objects git holds now, and what the cluster has of this sync set.
        let mut desired: BTreeSet<(String, String, String, String)> = BTreeSet::new();
        let mut existing = self.existing().await?;
        let mut rediscovered = false;
        let mut planned = Vec::new();
        for manifest in manifests {
            let (group, version) = split_api_version(manifest.api_version());
            if !self
                .allowed
                .iter()
                .any(|a| a.matches(group, manifest.kind()))
            {
                report.refused_kinds.push(format!(
                    "{}: {} {}",
                    manifest.file,
                    manifest.kind(),
                    manifest.name()
                ));
                continue;
            }
            let Some((resource, capabilities)) = self
                .resource(group, manifest.kind(), &mut rediscovered)
                .await?
            else {
                report.apply_errors.push(format!(
                    "{}:{}: the API server does not serve {} in {}",
                    manifest.file,
                    manifest.line,
                    manifest.kind(),
                    manifest.api_version()
                ));
                continue;
            };
            let namespace = match capabilities.scope {
                Scope::Namespaced => Some(manifest.namespace().unwrap_or("default").to_owned()),
                Scope::Cluster => None,
            };
            let key = (
                group.to_owned(),
                manifest.kind().to_owned(),
                namespace.clone().unwrap_or_default(),
                manifest.name().to_owned(),
            );
            if !desired.insert(key.clone()) {
                report.apply_errors.push(format!(
                    "{}:{}: {} {} is defined more than once; the first definition is applied",
                    manifest.file,
                    manifest.line,
                    manifest.kind(),
                    manifest.name()
                ));
                continue;
            }
            let resource = ApiResource {
                version: version.to_owned(),
                api_version: manifest.api_version().to_owned(),
                ..resource
            };
            planned.push((manifest, resource, namespace, key));
        }
        // What namespaced objects need goes first: a FluxHelmRelease committed together with its
        // Namespace must not wait for a retry.
        planned.sort_by_key(|(manifest, resource, namespace, _)| {
            apply_order(&resource.group, manifest.kind(), namespace.is_some())
        });

        for (manifest, resource, namespace, key) in planned {
            let previous = existing.remove(&key);
            let digest = digest(&manifest.object);
            let applied_digest = previous
                .as_ref()
                .and_then(|(_, o)| o.metadata.annotations.as_ref())
                .and_then(|a| a.get(SOURCE_DIGEST_ANNOTATION));
            if scope == Reapply::Changed && applied_digest == Some(&digest) {
                report.unchanged += 1;
                continue;
            }
            match self
                .apply(
                    &manifest,
                    &resource,
                    namespace.as_deref(),
                    previous.as_ref(),
                    digest,
                    &report.commit,
                )
                .await
            {
                Ok(()) => report.applied += 1,
                Err(e) => report.apply_errors.push(format!(
                    "{}:{}: {} {}: {}",
                    manifest.file,
                    manifest.line,
                    manifest.kind(),
                    manifest.name(),
                    api_message(&e)
                )),
            }
        }

        if !self.prune {
            report.prune_skipped = Some("garbage collection is off".into());
        } else if !report.manifest_errors.is_empty() {
            report.prune_skipped = Some("some manifests could not be read".into());
        } else {
            for ((_, _, namespace, name), (resource, object)) in existing {
                let api: Api<DynamicObject> = match namespace.as_str() {
                    "" => Api::all_with(self.client.clone(), &resource),
                    ns => Api::namespaced_with(self.client.clone(), ns, &resource),
                };
                // Only what still carries this sync set's label, checked again at delete time.
                let precondition = object.metadata.resource_version.clone();
                let params = DeleteParams {
                    preconditions: Some(kube::api::Preconditions {
                        resource_version: precondition,
                        uid: object.metadata.uid.clone(),
                    }),
                    ..DeleteParams::background()
                };
                match api.delete(&name, &params).await {
                    Ok(_) => {
                        tracing::info!(kind = %resource.kind, %namespace, %name, "pruned: no longer in git");
                        report.pruned += 1;
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) => report.apply_errors.push(format!(
                        "pruning {} {namespace}/{name}: {}",
                        resource.kind,
                        api_message(&e)
                    )),
                }
            }
        }
        Ok(report)
    }

    async fn read(&self, snapshot: &Snapshot, report: &mut Report) -> Vec<Manifest> {
        let limits = Limits {
            max_file_bytes: MAX_MANIFEST_FILE,
            ..Limits::default()
        };
        let mut manifests = Vec::new();
        for path in &self.paths {
            let files = {
                let snapshot = snapshot.clone();
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    snapshot.read_files(&path, &[".yaml", ".yml"], &limits)
                })
                .await
            };
            let files = match files
                .map_err(|e| e.to_string())
                .and_then(|read| read.map_err(|e| e.to_string()))
            {
                Ok(files) => files,
                Err(message) => {
                    report.manifest_errors.push(ManifestError {
                        file: path.clone(),
                        line: None,
                        message,
                    });
                    continue;
                }
            };
            for file in files {
                let name = if path.is_empty() {
                    file.path.clone()
                } else {
                    format!("{}/{}", path.trim_end_matches('/'), file.path)
                };
                match file.contents {
                    Ok(bytes) => {
                        let (found, errors) = manifests::parse_file(&name, &bytes);
                        manifests.extend(found);
                        report.manifest_errors.extend(errors);
                    }
                    Err(reason) => report.manifest_errors.push(ManifestError {
                        file: name,
                        line: None,
                        message: reason,
                    }),
                }
            }
        }
        manifests
    }

    /// Every object of an allowed kind carrying this sync set's label.
    async fn existing(
        &self,
    ) -> Result<HashMap<(String, String, String, String), (ApiResource, DynamicObject)>, kube::Error>
    {
        if self.resources.lock().await.is_empty() {
            self.discover().await?;
        }
        let resources: Vec<_> = self.resources.lock().await.values().cloned().collect();
        let selector = format!("{SYNC_SET_LABEL}={}", self.sync_set);
        let mut existing = HashMap::new();
        for (resource, _) in resources {
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
            for object in api.list(&ListParams::default().labels(&selector)).await? {
                let key = (
                    resource.group.clone(),
                    resource.kind.clone(),
                    object.metadata.namespace.clone().unwrap_or_default(),
                    object.metadata.name.clone().unwrap_or_default(),
                );
                existing.insert(key, (resource.clone(), object));
            }
        }
        Ok(existing)
    }

    async fn apply(
        &self,
        manifest: &Manifest,
        resource: &ApiResource,
        namespace: Option<&str>,
        previous: Option<&(ApiResource, DynamicObject)>,
        digest: String,
        commit: &str,
    ) -> Result<(), kube::Error> {
        let previous_annotations = previous.and_then(|(_, o)| o.metadata.annotations.as_ref());
        // An unchanged manifest keeps the commit it last changed in; so its apply is a no-op.
        let source_commit = match previous_annotations {
            Some(a) if a.get(SOURCE_DIGEST_ANNOTATION) == Some(&digest) => a
                .get(SOURCE_COMMIT_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| commit.to_owned()),
            _ => commit.to_owned(),
        };
        let mut object = manifest.object.clone();
        let metadata = object["metadata"]
            .as_object_mut()
            .expect("checked when parsed");
        if let Some(namespace) = namespace {
            metadata.insert("namespace".into(), namespace.into());
        }
        let labels = metadata
            .entry("labels")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(labels) = labels.as_object_mut() {
            labels.insert(SYNC_SET_LABEL.into(), self.sync_set.clone().into());
        }
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(annotations) = annotations.as_object_mut() {
            annotations.insert(SOURCE_COMMIT_ANNOTATION.into(), source_commit.into());
            annotations.insert(SOURCE_PATH_ANNOTATION.into(), manifest.file.clone().into());
            annotations.insert(SOURCE_DIGEST_ANNOTATION.into(), digest.into());
        }
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, resource),
            None => Api::all_with(self.client.clone(), resource),
        };
        api.patch(
            manifest.name(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await?;
        Ok(())
    }
}

/// Where an object goes in a sync: Namespaces, then CRDs, then other cluster-scoped objects, then
/// namespaced ones (the sort is stable, so file order holds within each).
fn apply_order(group: &str, kind: &str, namespaced: bool) -> u8 {
    match (group, kind, namespaced) {
        ("", "Namespace", _) => 0,
        ("apiextensions.k8s.io", "CustomResourceDefinition", _) => 1,
        (_, _, false) => 2,
        (_, _, true) => 3,
    }
}

fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", api_version),
    }
}

fn digest(object: &Value) -> String {
    let hash = Sha256::digest(serde_json::to_vec(object).expect("JSON serialises"));
    hex::encode(&hash[..16])
}

fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_kinds_match_by_kind_or_group_and_kind() {
        let any = AllowedKind::parse("FluxHelmRelease");
        assert!(any.matches("helm.integrations.flux.weave.works", "FluxHelmRelease"));
        assert!(!any.matches("helm.integrations.flux.weave.works", "Other"));
        let grouped = AllowedKind::parse("rbac.authorization.k8s.io/ClusterRoleBinding");
        assert!(grouped.matches("rbac.authorization.k8s.io", "ClusterRoleBinding"));
        assert!(!grouped.matches("evil.example.com", "ClusterRoleBinding"));
        let core = AllowedKind::parse("core/ConfigMap");
        assert!(core.matches("", "ConfigMap"));
    }

    #[test]
    fn namespaces_and_other_prerequisites_are_applied_before_namespaced_objects() {
        let mut kinds = [
            (
                "helm.integrations.flux.weave.works",
                "FluxHelmRelease",
                true,
            ),
            ("rbac.authorization.k8s.io", "ClusterRole", false),
            ("", "Namespace", false),
            ("apiextensions.k8s.io", "CustomResourceDefinition", false),
            ("", "ConfigMap", true),
        ];
        kinds.sort_by_key(|(g, k, n)| apply_order(g, k, *n));
        let order: Vec<_> = kinds.iter().map(|(_, k, _)| *k).collect();
        assert_eq!(
            order,
            [
                "Namespace",
                "CustomResourceDefinition",
                "ClusterRole",
                "FluxHelmRelease",
                "ConfigMap"
            ]
        );
    }

    #[test]
    fn api_versions_split_into_group_and_version() {
        assert_eq!(split_api_version("v1"), ("", "v1"));
        assert_eq!(
            split_api_version("helm.integrations.flux.weave.works/v1alpha"),
            ("helm.integrations.flux.weave.works", "v1alpha")
        );
    }

    #[test]
    fn digests_follow_content() {
        let a = serde_json::json!({"kind": "A", "spec": {"x": 1}});
        let b = serde_json::json!({"spec": {"x": 1}, "kind": "A"});
        let c = serde_json::json!({"kind": "A", "spec": {"x": 2}});
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&c));
    }
}
