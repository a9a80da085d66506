//! Helm's errors made into messages a user can act on. Helm reports an object whose
//! apiVersion/kind the cluster does not serve as "no matches for kind … ensure CRDs are installed
//! first", which sends a user with a chart from 2018 (`extensions/v1beta1` Deployments) looking
//! for a CRD. Say instead what is not served, which template declares it, and where the kind is
//! served now (the operator asks discovery for that).

use std::path::Path;

/// Templates listed in one message at most.
const MAX_TEMPLATES: usize = 3;
/// Largest template file searched.
const MAX_TEMPLATE_BYTES: u64 = 1 << 20;

/// An object of a kind the cluster does not serve in the apiVersion the chart uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnservedKind {
    /// The kind, e.g. `Deployment`.
    pub kind: String,
    /// The apiVersion the chart uses, e.g. `extensions/v1beta1`.
    pub api_version: String,
    /// The object's name, when Helm says it.
    pub name: Option<String>,
}

/// Finds Helm's "no matches for kind" error in its message.
pub fn unserved_kind(message: &str) -> Option<UnservedKind> {
    let rest = &message[message.find("no matches for kind \"")? + "no matches for kind \"".len()..];
    let (kind, rest) = rest.split_once('"')?;
    let rest = rest.strip_prefix(" in version \"")?;
    let (api_version, _) = rest.split_once('"')?;
    let name = message
        .find("for name: \"")
        .map(|at| &message[at + "for name: \"".len()..])
        .and_then(|rest| rest.split_once('"'))
        .map(|(name, _)| name.to_owned())
        .filter(|name| !name.is_empty());
    Some(UnservedKind {
        kind: kind.to_owned(),
        api_version: api_version.to_owned(),
        name,
    })
}

/// The chart's templates (paths relative to the chart) that declare `api_version` and `kind`.
pub fn templates_declaring(chart_dir: &Path, unserved: &UnservedKind) -> Vec<String> {
    let mut found = Vec::new();
    let mut folders = vec![chart_dir.join("templates")];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                folders.push(path);
            } else if meta.is_file()
                && meta.len() <= MAX_TEMPLATE_BYTES
                && std::fs::read_to_string(&path)
                    .is_ok_and(|text| declares(&text, &unserved.api_version, &unserved.kind))
                && let Ok(relative) = path.strip_prefix(chart_dir)
            {
                found.push(relative.display().to_string());
            }
        }
    }
    found.sort();
    found.truncate(MAX_TEMPLATES);
    found
}

fn declares(template: &str, api_version: &str, kind: &str) -> bool {
    let has = |key: &str, value: &str| {
        template.lines().any(|line| {
            line.trim()
                .strip_prefix(key)
                .is_some_and(|v| v.trim().trim_matches(['"', '\'']) == value)
        })
    };
    has("apiVersion:", api_version) && has("kind:", kind)
}

/// The message for an unserved kind.
pub fn describe(unserved: &UnservedKind, templates: &[String], served: &[String]) -> String {
    let mut message = format!(
        "the cluster does not serve {} in {}",
        unserved.kind, unserved.api_version
    );
    let mut origin = Vec::new();
    if let Some(name) = &unserved.name {
        origin.push(format!("object {name:?}"));
    }
    if !templates.is_empty() {
        origin.push(format!("declared in {}", templates.join(", ")));
    }
    if !origin.is_empty() {
        message.push_str(&format!(" ({})", origin.join(", ")));
    }
    if served.is_empty() {
        message.push_str(
            "; the cluster serves no version of that kind: its API was removed or its CRD is not installed",
        );
    } else {
        message.push_str(&format!(
            "; it serves {} in {}: update the chart's apiVersion",
            unserved.kind,
            served.join(", ")
        ));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELM_ERROR: &str = "Error: INSTALLATION FAILED: unable to build kubernetes objects from release manifest: resource mapping not found for name: \"legacy-web\" namespace: \"\" from \"\": no matches for kind \"Deployment\" in version \"extensions/v1beta1\"\nensure CRDs are installed first";

    #[test]
    fn helms_no_matches_error_is_recognised() {
        assert_eq!(
            unserved_kind(HELM_ERROR),
            Some(UnservedKind {
                kind: "Deployment".into(),
                api_version: "extensions/v1beta1".into(),
                name: Some("legacy-web".into()),
            })
        );
        assert_eq!(
            unserved_kind("Error: timed out waiting for the condition"),
            None
        );
    }

    #[test]
    fn the_template_that_declares_the_kind_is_named() {
        let chart = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(chart.path().join("templates/sub")).unwrap();
        std::fs::write(
            chart.path().join("templates/deployment.yaml"),
            "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata:\n  name: x\n",
        )
        .unwrap();
        std::fs::write(
            chart.path().join("templates/sub/ingress.yaml"),
            "apiVersion: \"extensions/v1beta1\"\nkind: Ingress\n",
        )
        .unwrap();
        std::fs::write(
            chart.path().join("templates/service.yaml"),
            "apiVersion: v1\nkind: Service\n",
        )
        .unwrap();
        let unserved = unserved_kind(HELM_ERROR).unwrap();
        assert_eq!(
            templates_declaring(chart.path(), &unserved),
            ["templates/deployment.yaml"]
        );
        let message = describe(
            &unserved,
            &["templates/deployment.yaml".into()],
            &["apps/v1".into()],
        );
        assert_eq!(
            message,
            "the cluster does not serve Deployment in extensions/v1beta1 (object \"legacy-web\", declared in templates/deployment.yaml); it serves Deployment in apps/v1: update the chart's apiVersion"
        );
        assert!(!message.contains("CRDs are installed"));
    }
}
