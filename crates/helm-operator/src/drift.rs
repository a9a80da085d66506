//! Drift: objects of an in-sync release edited or deleted by hand. Detection only reads the
//! cluster (Helm's stored manifest and the live objects); Helm runs only when something drifted.

use kube::api::{Api, DynamicObject};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Scope};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use tokio::sync::Mutex;

/// Most differences named in one message.
const MAX_LISTED: usize = 5;

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

/// Remembers corrections, so that a difference Helm cannot correct (the API server normalises
/// the value) is ignored instead of upgrading at every re-check.
#[derive(Default)]
pub struct Corrections {
    by_release: Mutex<HashMap<String, ReleaseCorrections>>,
}

/// One release's corrections, valid for one digest (chart and values).
#[derive(Default)]
struct ReleaseCorrections {
    digest: String,
    /// Drift the last upgrade was meant to correct.
    corrected: BTreeSet<String>,
    /// Drift that survived a correction: left alone.
    ignored: BTreeSet<String>,
}

impl Corrections {
    /// Filters `drift` for release `key` at `digest`: what persisted through the last correction is
    /// ignored from now on (and returned second, to be reported once); the rest is recorded as
    /// being corrected now.
    pub async fn decide(
        &self,
        key: &str,
        digest: &str,
        drift: Vec<Drifted>,
    ) -> (Vec<Drifted>, Vec<String>) {
        let mut by_release = self.by_release.lock().await;
        let entry = by_release.entry(key.to_owned()).or_default();
        if entry.digest != digest {
            *entry = ReleaseCorrections {
                digest: digest.to_owned(),
                ..Default::default()
            };
        }
        let mut newly_ignored = Vec::new();
        let mut act_on = Vec::new();
        for d in drift {
            let keys: Vec<String> = d.keys().collect();
            let mut kept = Drifted {
                object: d.object.clone(),
                fields: Vec::new(),
            };
            let mut deleted = false;
            for key in keys {
                if entry.ignored.contains(&key) {
                    continue;
                }
                if entry.corrected.contains(&key) {
                    entry.ignored.insert(key.clone());
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
        entry.corrected = act_on.iter().flat_map(|d| d.keys()).collect();
        (act_on, newly_ignored)
    }

    /// Forgets a release (it is gone).
    pub async fn forget(&self, key: &str) {
        self.by_release.lock().await.remove(key);
    }
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

/// Compares every object of `manifest` (Helm's rendered manifest) with the cluster.
pub async fn detect(
    client: &kube::Client,
    resources: &Resources,
    namespace: &str,
    manifest: &str,
) -> Result<Vec<Drifted>, kube::Error> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(manifest).unwrap_or_default();
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
            .unwrap_or(namespace);
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
        let live = serde_json::to_value(&live).unwrap_or_default();
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
        if !fields.is_empty() {
            drift.push(Drifted {
                object: label,
                fields,
            });
        }
    }
    Ok(drift)
}

/// Records the paths where `live` lacks or differs from what `desired` sets. Fields `desired`
/// does not set (defaults the API server added) are not compared.
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_fields_the_manifest_sets_are_compared() {
        let desired = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}});
        let live = json!({"spec": {"replicas": 2, "strategy": {"type": "RollingUpdate"},
            "template": {"spec": {"containers": [{"name": "a", "image": "x:1", "imagePullPolicy": "IfNotPresent"}]}}}});
        let mut out = Vec::new();
        compare(&desired["spec"], &live["spec"], "spec", &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn edits_and_removals_are_found_and_spellings_of_numbers_are_not() {
        let desired = json!({"data": {"message": "hi", "port": 8080}, "list": [1, 2]});
        let live = json!({"data": {"message": "edited", "port": "8080"}, "list": [1]});
        let mut out = Vec::new();
        for key in ["data", "list"] {
            compare(&desired[key], &live[key], key, &mut out);
        }
        assert_eq!(out, ["data.message", "list"]);
    }

    #[tokio::test]
    async fn a_difference_that_survives_a_correction_is_ignored_afterwards() {
        let corrections = Corrections::default();
        let drift = || {
            vec![Drifted {
                object: "Service ns/web".into(),
                fields: vec!["spec.x".into()],
            }]
        };
        let (act, ignored) = corrections.decide("ns/web", "d1", drift()).await;
        assert_eq!(act.len(), 1);
        assert!(ignored.is_empty());
        // Still there after the correction: ignored from now on, reported once.
        let (act, ignored) = corrections.decide("ns/web", "d1", drift()).await;
        assert!(act.is_empty());
        assert_eq!(ignored, ["Service ns/web spec.x"]);
        let (act, ignored) = corrections.decide("ns/web", "d1", drift()).await;
        assert!(act.is_empty() && ignored.is_empty());
        // A new digest (chart or values changed) starts afresh.
        let (act, _) = corrections.decide("ns/web", "d2", drift()).await;
        assert_eq!(act.len(), 1);
        // A deletion is acted on.
        let gone = vec![Drifted {
            object: "ConfigMap ns/c".into(),
            fields: vec![],
        }];
        let (act, _) = corrections.decide("ns/other", "d1", gone).await;
        assert_eq!(act.len(), 1);
    }
}
