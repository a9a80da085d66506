//! Drift: objects of an in-sync release changed or deleted by someone else. Detection only reads
//! the cluster (Helm's stored manifest and the live objects) and asks the API server what applying
//! the manifest would change; Helm runs only when something really drifted.
//!
//! Drift is what applying the stored manifest would change, as the API server itself would apply
//! it. Charts render zero values the API server drops or rewrites (`imagePullPolicy: ""`,
//! `hostNetwork: false`, `nodeSelector: {}`, `stringData`, …), so a field-by-field comparison alone
//! reports hand edits nobody made, and each needless upgrade re-renders `randAlphaNum` passwords.
//! A cheap comparison finds the suspects; a server-side dry-run apply of the stored object, diffed
//! against the live one, decides. Defaulting, empty values and omitted fields come out the same on
//! both sides, and a mutating webhook runs on both.

use fhr_types::DriftMemory;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Scope};
use serde_json::Value;
use std::collections::HashMap;
use tokio::sync::Mutex;

/// Most differences named in one message.
const MAX_LISTED: usize = 5;
/// Most differences remembered per list in status (a bound on a hostile or huge chart).
const MAX_REMEMBERED: usize = 50;
/// Field manager of the dry-run applies; nothing is ever written under it.
const DRY_RUN_MANAGER: &str = "helm-operator-drift-check";

/// What drifted: `Kind/name` and the field paths that differ (empty when the object is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drifted {
    /// `Kind namespace/name`.
    pub object: String,
    /// Paths like `data.message`; empty means the object was deleted.
    pub fields: Vec<String>,
}

impl Drifted {
    fn keys(&self) -> impl Iterator<Item = String> + '_ {
        let deleted = self
            .fields
            .is_empty()
            .then(|| format!("{} (deleted)", self.object));
        deleted
            .into_iter()
            .chain(self.fields.iter().map(|f| format!("{} {f}", self.object)))
    }
}

/// Describes drift for a condition message or Event.
pub fn describe(drift: &[Drifted]) -> String {
    let keys: Vec<String> = drift.iter().flat_map(|d| d.keys()).collect();
    let mut text = keys
        .iter()
        .take(MAX_LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > MAX_LISTED {
        text.push_str(&format!(" and {} more", keys.len() - MAX_LISTED));
    }
    text
}

/// Sorts drift found for a release at `digest` against what the release's status remembers: what
/// persisted through the last correction is ignored from now on (returned second, to be reported
/// once); the rest is to be corrected now and remembered as such. The memory lives in status, so a
/// restart or failover neither forgets what to ignore nor upgrades again to find out.
pub fn triage(
    memory: &mut Option<DriftMemory>,
    digest: &str,
    drift: Vec<Drifted>,
) -> (Vec<Drifted>, Vec<String>) {
    let memory_for_digest = memory.take().filter(|m| m.digest == digest);
    let mut entry = memory_for_digest.unwrap_or_else(|| DriftMemory {
        digest: digest.to_owned(),
        ..Default::default()
    });
    let mut newly_ignored = Vec::new();
    let mut act_on = Vec::new();
    for d in drift {
        let mut kept = Drifted {
            object: d.object.clone(),
            fields: Vec::new(),
        };
        let mut deleted = false;
        for key in d.keys() {
            if entry.ignored.contains(&key) {
                continue;
            }
            if entry.correcting.contains(&key) {
                if entry.ignored.len() < MAX_REMEMBERED {
                    entry.ignored.push(key.clone());
                }
                newly_ignored.push(key);
                continue;
            }
            if key.ends_with(" (deleted)") {
                deleted = true;
            } else if let Some(field) = key.strip_prefix(&format!("{} ", d.object)) {
                kept.fields.push(field.to_owned());
            }
        }
        if deleted || !kept.fields.is_empty() {
            act_on.push(kept);
        }
    }
    entry.correcting = act_on
        .iter()
        .flat_map(|d| d.keys())
        .take(MAX_REMEMBERED)
        .collect();
    *memory = (!entry.correcting.is_empty() || !entry.ignored.is_empty()).then_some(entry);
    (act_on, newly_ignored)
}

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

/// The paths where `live` lacks or differs from what `desired` sets, spelled as text: candidates
/// for drift, to be confirmed. Fields `desired` does not set (defaults the API server added) are
/// not compared.
fn suspects(desired: &Value, live: &Value) -> Vec<String> {
    let mut fields = Vec::new();
    for (key, value) in desired.as_object().into_iter().flatten() {
        match key.as_str() {
            "apiVersion" | "kind" | "status" => {}
            "metadata" => {
                for part in ["labels", "annotations"] {
                    compare(
                        &value[part],
                        &live["metadata"][part],
                        &format!("metadata.{part}"),
                        &mut fields,
                    );
                }
            }
            _ => compare(value, &live[key], key, &mut fields),
        }
    }
    fields
}

/// Records the paths where `live` lacks or differs from what `desired` sets.
fn compare(desired: &Value, live: &Value, path: &str, out: &mut Vec<String>) {
    match (desired, live) {
        (Value::Null, _) => {}
        (Value::Object(want), Value::Object(have)) => {
            for (key, value) in want {
                compare(
                    value,
                    have.get(key).unwrap_or(&Value::Null),
                    &format!("{path}.{key}"),
                    out,
                );
            }
        }
        (Value::Array(want), Value::Array(have)) if want.len() == have.len() => {
            for (i, (w, h)) in want.iter().zip(have).enumerate() {
                compare(w, h, &format!("{path}[{i}]"), out);
            }
        }
        (want, have) if scalar_text(want).is_some() && scalar_text(want) == scalar_text(have) => {}
        _ => out.push(path.to_owned()),
    }
}

/// A scalar as text, so that `8080` and `"8080"` compare equal, as YAML rendering and the API
/// server disagree on such spellings.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An object without what an apply changes by itself: status (another writer's), and the
/// bookkeeping of the write (resourceVersion, generation, managedFields).
fn comparable(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
        if let Some(metadata) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for volatile in ["resourceVersion", "generation", "managedFields"] {
                metadata.remove(volatile);
            }
        }
    }
    object
}

/// Every path at which two objects differ, in either direction.
fn differences(before: &Value, after: &Value, path: &str, out: &mut Vec<String>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                differences(
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    &join(key),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differences(x, y, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        _ => out.push(path.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_fields_the_manifest_sets_are_suspects() {
        let desired = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}});
        let live = json!({"spec": {"replicas": 2, "strategy": {"type": "RollingUpdate"},
            "template": {"spec": {"containers": [{"name": "a", "image": "x:1", "imagePullPolicy": "IfNotPresent"}]}}}});
        assert!(suspects(&desired, &live).is_empty());
    }

    #[test]
    fn edits_and_removals_are_suspects_and_spellings_of_numbers_are_not() {
        let desired = json!({"data": {"message": "hi", "port": 8080}, "list": [1, 2]});
        let live = json!({"data": {"message": "edited", "port": "8080"}, "list": [1]});
        assert_eq!(suspects(&desired, &live), ["data.message", "list"]);
    }

    #[test]
    fn zero_values_the_api_server_drops_are_suspects_only() {
        // These reach the dry-run apply, which decides; the cheap comparison cannot.
        let desired =
            json!({"spec": {"hostNetwork": false, "nodeSelector": {}, "imagePullPolicy": ""}});
        let live = json!({"spec": {"imagePullPolicy": "IfNotPresent"}});
        assert_eq!(
            suspects(&desired, &live),
            [
                "spec.hostNetwork",
                "spec.imagePullPolicy",
                "spec.nodeSelector"
            ]
        );
    }

    #[test]
    fn an_apply_that_changes_nothing_shows_no_difference() {
        let live = json!({"metadata": {"name": "a", "resourceVersion": "7", "managedFields": [1]},
            "spec": {"x": 1}, "status": {"ready": 1}});
        let applied = json!({"metadata": {"name": "a", "resourceVersion": "7", "managedFields": [1, 2]},
            "spec": {"x": 1}, "status": {"ready": 2}});
        let mut out = Vec::new();
        differences(&comparable(&live), &comparable(&applied), "", &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn an_apply_that_restores_a_value_names_its_path() {
        let live = json!({"data": {"a": "edited", "b": "same"}, "spec": {"list": [1, 2]}});
        let applied = json!({"data": {"a": "chart", "b": "same"}, "spec": {"list": [1, 3]},
            "metadata": {"labels": {"x": "y"}}});
        let mut out = Vec::new();
        differences(&live, &applied, "", &mut out);
        assert_eq!(out, ["data.a", "metadata", "spec.list[1]"]);
    }

    #[test]
    fn a_difference_that_survives_a_correction_is_ignored_afterwards() {
        let mut memory = None;
        let drift = || {
            vec![Drifted {
                object: "Service ns/web".into(),
                fields: vec!["spec.x".into()],
            }]
        };
        let (act, ignored) = triage(&mut memory, "d1", drift());
        assert_eq!(act.len(), 1);
        assert!(ignored.is_empty());
        assert_eq!(
            memory.as_ref().unwrap().correcting,
            ["Service ns/web spec.x"]
        );
        // Still there after the correction: ignored from now on, reported once.
        let (act, ignored) = triage(&mut memory, "d1", drift());
        assert!(act.is_empty());
        assert_eq!(ignored, ["Service ns/web spec.x"]);
        let (act, ignored) = triage(&mut memory, "d1", drift());
        assert!(act.is_empty() && ignored.is_empty());
        // The memory is plain data (status): a restarted operator reads the same.
        let mut reread: Option<DriftMemory> =
            serde_json::from_value(serde_json::to_value(&memory).unwrap()).unwrap();
        let (act, _) = triage(&mut reread, "d1", drift());
        assert!(act.is_empty());
        // A new digest (chart or values changed) starts afresh.
        let (act, _) = triage(&mut memory, "d2", drift());
        assert_eq!(act.len(), 1);
        // A deletion is acted on.
        let gone = vec![Drifted {
            object: "ConfigMap ns/c".into(),
            fields: vec![],
        }];
        let (act, _) = triage(&mut None, "d1", gone);
        assert_eq!(act.len(), 1);
    }

    #[test]
    fn no_drift_leaves_no_memory() {
        let mut memory = Some(DriftMemory {
            digest: "d1".into(),
            correcting: vec!["Service ns/web spec.x".into()],
            ignored: vec![],
        });
        let (act, ignored) = triage(&mut memory, "d1", Vec::new());
        assert!(act.is_empty() && ignored.is_empty());
        assert_eq!(memory, None);
    }

    #[test]
    fn memory_is_bounded() {
        let mut memory = None;
        let many = vec![Drifted {
            object: "ConfigMap ns/c".into(),
            fields: (0..500).map(|i| format!("data.k{i}")).collect(),
        }];
        triage(&mut memory, "d1", many.clone());
        assert_eq!(memory.as_ref().unwrap().correcting.len(), MAX_REMEMBERED);
        triage(&mut memory, "d1", many);
        assert!(memory.as_ref().unwrap().ignored.len() <= MAX_REMEMBERED);
    }
}
