//! `kubectl fhr get`: what each release is doing, in one line.

use crate::{Output, encode, table};
use fhr_types::FluxHelmRelease;
use fhr_types::meta::condition;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

/// Lists the resources (or the one named) and formats them.
pub async fn run(
    api: &Api<FluxHelmRelease>,
    name: Option<&str>,
    all_namespaces: bool,
    output: Output,
) -> anyhow::Result<String> {
    let items = match name {
        Some(name) => vec![api.get(name).await?],
        None => api.list(&ListParams::default()).await?.items,
    };
    if output != Output::Table {
        let value = match name {
            Some(_) => serde_json::to_value(&items[0])?,
            None => serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
        };
        return encode(&value, output);
    }
    if items.is_empty() {
        return Ok("No FluxHelmReleases found.\n".to_owned());
    }
    Ok(render(&items, all_namespaces, Timestamp::now()))
}

/// The table: one row per resource, sorted by namespace and name.
pub fn render(items: &[FluxHelmRelease], all_namespaces: bool, now: Timestamp) -> String {
    let mut items: Vec<&FluxHelmRelease> = items.iter().collect();
    items.sort_by_key(|fhr| (fhr.namespace(), fhr.name_any()));
    let mut headers = vec![
        "NAME", "RELEASE", "CHART", "REVISION", "READY", "REASON", "AGE", "MESSAGE",
    ];
    if all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|fhr| {
            let status = fhr.status.clone().unwrap_or_default();
            let ready = status.condition(condition::READY);
            let suspended = fhr.spec.suspend == Some(true);
            // The age of the last thing that happened: the newest condition change.
            let last = status
                .conditions
                .iter()
                .map(|c| c.last_transition_time.0)
                .max();
            let mut row = vec![
                fhr.name_any(),
                status.release_name.clone().unwrap_or_default(),
                match (&fhr.spec.chart_git_path, &fhr.spec.chart) {
                    (Some(path), _) => path.clone(),
                    (None, Some(chart)) => {
                        let name = chart.oci.as_deref().or(chart.name.as_deref());
                        format!("{}@{}", name.unwrap_or_default(), chart.version)
                    }
                    (None, None) => String::new(),
                },
                status.revision.map(|r| r.to_string()).unwrap_or_default(),
                ready.map(|c| c.status.clone()).unwrap_or("Unknown".into()),
                match (suspended, ready) {
                    (true, _) => "Suspended".to_owned(),
                    (false, Some(c)) => c.reason.clone(),
                    (false, None) => String::new(),
                },
                table::age(last, now),
                ready.map(|c| c.message.clone()).unwrap_or_default(),
            ];
            if all_namespaces {
                row.insert(0, fhr.namespace().unwrap_or_default());
            }
            row
        })
        .collect();
    table::render(&headers, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fhr(namespace: &str, name: &str, status: serde_json::Value) -> FluxHelmRelease {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "helm.integrations.flux.weave.works/v1alpha",
            "kind": "FluxHelmRelease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"chartGitPath": "webapp"},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_row_says_release_revision_readiness_and_why() {
        let now: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        let ready = fhr(
            "team",
            "web",
            serde_json::json!({"releaseName": "team-web", "revision": 3, "conditions": [
                {"type": "Ready", "status": "True", "reason": "UpgradeSucceeded",
                 "message": "release team-web upgraded", "lastTransitionTime": "2026-11-30T11:55:00Z"},
                {"type": "Released", "status": "True", "reason": "UpgradeSucceeded",
                 "message": "", "lastTransitionTime": "2026-11-30T11:50:00Z"}]}),
        );
        let new = fhr("apps", "db", serde_json::json!({}));
        let table = render(&[ready, new], true, now);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("NAMESPACE   NAME   RELEASE"),
            "{table}"
        );
        // Sorted by namespace: apps before team; nothing known yet reads Unknown.
        assert!(lines[1].starts_with("apps        db"), "{table}");
        assert!(lines[1].contains("Unknown"), "{table}");
        assert!(lines[2].contains("team-web"), "{table}");
        assert!(lines[2].contains("   3   "), "{table}");
        assert!(lines[2].contains("UpgradeSucceeded   5m"), "{table}");
        assert!(lines[2].ends_with("release team-web upgraded"), "{table}");
    }
}
