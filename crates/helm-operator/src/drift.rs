//! Drift detection, the I/O half: reads the live objects of an in-sync release and asks the API
//! server what applying the stored manifest would change (a server-side dry-run apply). What
//! counts as drift, and the memory of corrections, is `fhr_release::drift`.

use fhr_release::drift::{Drifted, comparable, differences, suspects};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Scope};
use serde_json::Value;
use std::collections::HashMap;
use tokio::sync::Mutex;

/// Field manager of the dry-run applies; nothing is ever written under it.
const DRY_RUN_MANAGER: &str = "helm-operator-drift-check";

/// API resources by group/version/kind, discovered once each.
#[derive(Default)]
pub struct Resources {
    cache: Mutex<HashMap<GroupVersionKind, (ApiResource, Scope)>>,
}

impl Resources {
    async fn resolve(
        &self,
        client: &kube::Client,
        gvk: &GroupVersionKind,
    ) -> Result<(ApiResource, Scope), kube::Error> {
        if let Some(found) = self.cache.lock().await.get(gvk) {
            return Ok(found.clone());
        }
        let (resource, capabilities) = kube::discovery::pinned_kind(client, gvk).await?;
        let found = (resource, capabilities.scope);
        self.cache.lock().await.insert(gvk.clone(), found.clone());
        Ok(found)
    }
}

/// Objects a dry-run apply found clean, by `release/object`, with the resourceVersion and
/// revision it was found clean at: an object nobody touched since is not asked about again, so
/// a chart with zero values costs one GET per object and re-check, as a clean chart does.
#[derive(Default)]
pub struct Confirmed {
    clean: Mutex<HashMap<String, (String, i64)>>,
}

impl Confirmed {
    /// Forgets a release's objects (it is gone).
    pub async fn forget(&self, release_key: &str) {
        let prefix = format!("{release_key} ");
        self.clean
            .lock()
            .await
            .retain(|k, _| !k.starts_with(&prefix));
    }
}

/// One release's stored manifest to check against the cluster.
pub struct Check<'a> {
    /// `namespace/release`, for the confirmation cache.
    pub release_key: &'a str,
    /// The release's namespace (objects without one live there).
    pub namespace: &'a str,
    /// The revision the manifest belongs to.
    pub revision: i64,
    /// Helm's rendered manifest of that revision.
    pub manifest: &'a str,
}

/// Compares every object of the manifest with the cluster.
pub async fn detect(
    client: &kube::Client,
    resources: &Resources,
    confirmed: &Confirmed,
    check: &Check<'_>,
) -> Result<Vec<Drifted>, kube::Error> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(check.manifest).unwrap_or_default();
    let mut drift = Vec::new();
    for desired in documents.into_iter().filter(Value::is_object) {
        let (Some(api_version), Some(kind), Some(name)) = (
            desired["apiVersion"].as_str(),
            desired["kind"].as_str(),
            desired["metadata"]["name"].as_str(),
        ) else {
            continue;
        };
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, scope) = resources.resolve(client, &gvk).await?;
        let object_namespace = desired["metadata"]["namespace"]
            .as_str()
            .unwrap_or(check.namespace);
        let api: Api<DynamicObject> = match scope {
            Scope::Namespaced => Api::namespaced_with(client.clone(), object_namespace, &resource),
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let label = match scope {
            Scope::Namespaced => format!("{kind} {object_namespace}/{name}"),
            Scope::Cluster => format!("{kind} {name}"),
        };
        let Some(live) = api.get_opt(name).await? else {
            drift.push(Drifted {
                object: label,
                fields: Vec::new(),
            });
            continue;
        };
        let live_version = live.metadata.resource_version.clone().unwrap_or_default();
        let live = serde_json::to_value(&live).unwrap_or_default();
        if suspects(&desired, &live).is_empty() {
            continue;
        }
        let cache_key = format!("{} {label}", check.release_key);
        let already_clean = confirmed.clean.lock().await.get(&cache_key)
            == Some(&(live_version.clone(), check.revision));
        if already_clean {
            continue;
        }
        let fields = match api
            .patch(
                name,
                &PatchParams::apply(DRY_RUN_MANAGER).force().dry_run(),
                &Patch::Apply(&desired),
            )
            .await
        {
            Ok(applied) => {
                let applied = serde_json::to_value(&applied).unwrap_or_default();
                let mut fields = Vec::new();
                differences(&comparable(&live), &comparable(&applied), "", &mut fields);
                fields
            }
            // The API server refuses the stored object as it is now (a webhook, a removed field):
            // an upgrade with it would not restore anything, so this is not drift to act on.
            Err(kube::Error::Api(e)) if (400..500).contains(&e.code) => {
                tracing::warn!(object = %label, error = %e.message, "cannot check this object for drift: the API server refuses a dry-run apply of it");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        if fields.is_empty() {
            confirmed
                .clean
                .lock()
                .await
                .insert(cache_key, (live_version, check.revision));
        } else {
            drift.push(Drifted {
                object: label,
                fields,
            });
        }
    }
    Ok(drift)
}
