//! One sync, executed: read the manifests of a commit, plan (`plan.rs`), apply with server-side
//! apply under the agent's field manager, and prune what this agent applied before that left git.

use crate::plan::{self, AllowedKind, Kinds, Live, Reapply};
use fhr_git::{Limits, Snapshot};
use fhr_manifests::{self as manifests, Manifest, ManifestError};
use fhr_types::meta::SYNC_SET_LABEL;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::{ApiResource, Discovery};
use std::collections::HashMap;
use tokio::sync::Mutex;

/// Field manager of everything the agent applies.
pub const MANAGER: &str = "flux-agent";

/// Largest manifest file read (a larger one is refused, and the round prunes nothing).
const MAX_MANIFEST_FILE: u64 = 4 << 20;

/// Why a sync could not run at all (single objects the API server refuses are in the [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The API server's discovery failed.
    #[error("API discovery failed: {0}")]
    Discovery(#[source] kube::Error),
    /// Listing what the cluster has of this sync set failed.
    #[error("listing the {kind} objects of sync set {sync_set} failed: {source}")]
    List {
        /// The kind listed.
        kind: String,
        /// The sync set.
        sync_set: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
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

/// The agent's sync settings and its cache of API discovery.
pub struct Syncer {
    client: kube::Client,
    paths: Vec<String>,
    allowed: Vec<AllowedKind>,
    sync_set: String,
    prune: bool,
    // Allowed kinds resolved to API resources; re-resolved when a manifest names an unknown one.
    resources: Mutex<Kinds>,
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

    async fn discover(&self) -> Result<(), SyncError> {
        let discovery = Discovery::new(self.client.clone())
            .run_aggregated()
            .await
            .map_err(SyncError::Discovery)?;
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

    /// Syncs one commit: plans it, applies what the plan says, prunes what left git.
    pub async fn sync(&self, snapshot: &Snapshot, scope: Reapply) -> Result<Report, SyncError> {
        let mut report = Report {
            commit: snapshot.commit(),
            ..Report::default()
        };
        let manifests = self.read(snapshot, &mut report).await;
        // An unknown allowed kind may be a CRD installed since the last discovery: discovery runs
        // again, at most once per sync however many manifests name kinds nobody serves.
        let stale = {
            let kinds = self.resources.lock().await;
            kinds.is_empty() || plan::needs_discovery(&manifests, &self.allowed, &kinds)
        };
        if stale {
            self.discover().await?;
        }
        let live = self.existing().await?;
        let plan = plan::plan(
            manifests,
            !report.manifest_errors.is_empty(),
            &*self.resources.lock().await,
            live,
            plan::Settings {
                allowed: &self.allowed,
                sync_set: &self.sync_set,
                scope,
                prune: self.prune,
                commit: &report.commit,
            },
        );
        report.unchanged = plan.unchanged;
        report.refused_kinds = plan.refused_kinds;
        report.apply_errors = plan.errors;
        report.prune_skipped = plan.prune_skipped;

        for apply in plan.apply {
            let api: Api<DynamicObject> = match &apply.namespace {
                Some(ns) => Api::namespaced_with(self.client.clone(), ns, &apply.resource),
                None => Api::all_with(self.client.clone(), &apply.resource),
            };
            // Strict, as kubectl validates: a field the schema lacks (a typo, or a `namespace`
            // on a valuesFrom reference) is an error naming the file, not silently dropped.
            match api
                .patch(
                    &apply.name,
                    &PatchParams::apply(MANAGER).force().validation_strict(),
                    &Patch::Apply(&apply.object),
                )
                .await
            {
                Ok(_) => report.applied += 1,
                Err(e) => {
                    report
                        .apply_errors
                        .push(format!("{}: {}", apply.origin, api_message(&e)))
                }
            }
        }
        for prune in plan.prune {
            let api: Api<DynamicObject> = match prune.namespace.as_str() {
                "" => Api::all_with(self.client.clone(), &prune.resource),
                ns => Api::namespaced_with(self.client.clone(), ns, &prune.resource),
            };
            // Only what still carries this sync set's label, checked again at delete time.
            let params = DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    resource_version: prune.resource_version.clone(),
                    uid: prune.uid.clone(),
                }),
                ..DeleteParams::background()
            };
            let (kind, namespace, name) = (&prune.resource.kind, &prune.namespace, &prune.name);
            match api.delete(name, &params).await {
                Ok(_) => {
                    tracing::info!(%kind, %namespace, %name, "pruned: no longer in git");
                    report.pruned += 1;
                }
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => report.apply_errors.push(format!(
                    "pruning {kind} {namespace}/{name}: {}",
                    api_message(&e)
                )),
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
    async fn existing(&self) -> Result<Live, SyncError> {
        let resources: Vec<ApiResource> = self
            .resources
            .lock()
            .await
            .values()
            .map(|(resource, _)| resource.clone())
            .collect();
        let selector = format!("{SYNC_SET_LABEL}={}", self.sync_set);
        let mut existing = HashMap::new();
        for resource in resources {
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
            let listed = api
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|source| SyncError::List {
                    kind: resource.kind.clone(),
                    sync_set: self.sync_set.clone(),
                    source,
                })?;
            for object in listed {
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
}

fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}
