//! `kubectl fhr history`: the release's revisions as Helm's storage holds them (the same Secrets
//! `helm history` reads), with the digest of chart and values helm-operator labelled each with.

use crate::{Output, encode, table};
use anyhow::Context as _;
use fhr_types::FluxHelmRelease;
use fhr_types::meta::release_label;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use serde::Serialize;
use serde_json::Value;

/// One revision, with `helm history -o json`'s field names (and the digest).
#[derive(Serialize, Debug, PartialEq)]
pub struct Revision {
    /// Helm's revision number.
    pub revision: i64,
    /// When it was last deployed or attempted.
    pub updated: String,
    /// Helm's status.
    pub status: String,
    /// `name-version` of the chart.
    pub chart: String,
    /// The chart's appVersion.
    pub app_version: String,
    /// Helm's description of what happened.
    pub description: String,
    /// Digest of chart and values, if helm-operator made the revision.
    pub digest: String,
}

/// Reads the history of `name`'s release.
pub async fn run(
    client: &kube::Client,
    api: &Api<FluxHelmRelease>,
    namespace: &str,
    name: &str,
    output: Output,
) -> anyhow::Result<String> {
    let fhr = api
        .get(name)
        .await
        .with_context(|| format!("FluxHelmRelease {name}"))?;
    let release = match fhr.status.as_ref().and_then(|s| s.release_name.clone()) {
        Some(release) => release,
        None => fhr_types::naming::release_name(namespace, name, fhr.spec.release_name.as_deref())?,
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let records = secrets
        .list(&ListParams::default().labels(&format!("owner=helm,name={release}")))
        .await
        .with_context(|| format!("reading the Helm records of release {release}"))?;
    let mut revisions = Vec::new();
    for secret in records.items {
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        let Some(data) = secret.data.as_ref().and_then(|d| d.get("release")) else {
            continue;
        };
        let record = fhr_release::record::decode(&data.0).with_context(|| {
            format!(
                "Helm record {}",
                secret.metadata.name.clone().unwrap_or_default()
            )
        })?;
        let digest = labels
            .get(release_label::DIGEST)
            .cloned()
            .unwrap_or_default();
        revisions.push(revision(&record, digest));
    }
    revisions.sort_by_key(|r| r.revision);
    if output != Output::Table {
        return encode(&revisions, output);
    }
    if revisions.is_empty() {
        return Ok(format!("release {release} has no revisions\n"));
    }
    Ok(render(&revisions))
}

/// A revision from a decoded Helm record.
pub fn revision(record: &Value, digest: String) -> Revision {
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    let chart = &record["chart"]["metadata"];
    Revision {
        revision: record["version"].as_i64().unwrap_or_default(),
        updated: text(&record["info"]["last_deployed"]),
        status: text(&record["info"]["status"]),
        chart: format!("{}-{}", text(&chart["name"]), text(&chart["version"])),
        app_version: text(&chart["appVersion"]),
        description: text(&record["info"]["description"]),
        digest,
    }
}

/// The table, oldest first as `helm history` prints it.
pub fn render(revisions: &[Revision]) -> String {
    let rows: Vec<Vec<String>> = revisions
        .iter()
        .map(|r| {
            vec![
                r.revision.to_string(),
                r.updated.clone(),
                r.status.clone(),
                r.chart.clone(),
                r.digest.chars().take(12).collect(),
                r.description.clone(),
            ]
        })
        .collect();
    table::render(
        &[
            "REVISION",
            "UPDATED",
            "STATUS",
            "CHART",
            "DIGEST",
            "DESCRIPTION",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_gives_helms_fields_and_the_digest() {
        let record = serde_json::json!({
            "name": "web", "version": 2,
            "info": {"status": "deployed", "last_deployed": "2026-11-30T12:00:00Z",
                     "description": "Upgrade complete"},
            "chart": {"metadata": {"name": "webapp", "version": "1.2.0", "appVersion": "2.0"}},
        });
        let revision = revision(&record, "sha256:0123456789abcdef".into());
        assert_eq!(revision.revision, 2);
        assert_eq!(revision.chart, "webapp-1.2.0");
        assert_eq!(revision.app_version, "2.0");
        let table = render(&[revision]);
        assert!(
            table.contains("deployed   webapp-1.2.0   sha256:01234"),
            "{table}"
        );
        assert!(table.ends_with("Upgrade complete\n"), "{table}");
    }
}
