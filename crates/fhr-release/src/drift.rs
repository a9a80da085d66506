//! Drift as data: which fields of a live object differ from what applying the stored manifest
//! would make them, and the memory of corrections that did not hold. The operator does the I/O
//! (GET, dry-run apply); this compares and decides.
//!
//! Charts render zero values the API server drops or rewrites (`imagePullPolicy: ""`,
//! `hostNetwork: false`, `nodeSelector: {}`, `stringData`, …), so a field-by-field comparison of
//! manifest and live object ([`suspects`]) only finds candidates; the API server's answer to a
//! dry-run apply, compared with the live object ([`differences`] of [`comparable`] forms), decides.

use fhr_types::DriftMemory;
use serde_json::Value;

/// Most differences named in one message.
const MAX_LISTED: usize = 5;
/// Most differences remembered per list in status (a bound on a hostile or huge chart).
const MAX_REMEMBERED: usize = 50;

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

/// The paths where `live` lacks or differs from what `desired` sets, spelled as text: candidates
/// for drift, to be confirmed. Fields `desired` does not set (defaults the API server added) are
/// not compared.
pub fn suspects(desired: &Value, live: &Value) -> Vec<String> {
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
pub fn comparable(object: &Value) -> Value {
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
pub fn differences(before: &Value, after: &Value, path: &str, out: &mut Vec<String>) {
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
