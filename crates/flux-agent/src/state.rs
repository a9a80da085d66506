//! The agent's state object: a ConfigMap recording the last sync, and the object its Events name.

use crate::sync::{MANAGER, Report};
use fhr_types::meta::{AGENT_COMMIT_ANNOTATION, AGENT_STATE_LABEL};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};

/// Most errors listed in the state object and in one Event.
const MAX_LISTED: usize = 10;

/// Where the agent records its syncs.
pub struct State {
    api: Api<ConfigMap>,
    name: String,
    sync_set: String,
    recorder: Recorder,
}

impl State {
    /// The state object `<sync-set>-state` in `namespace`.
    pub fn new(client: kube::Client, namespace: &str, sync_set: &str, recorder: Recorder) -> State {
        State {
            api: Api::namespaced(client, namespace),
            name: format!("{sync_set}-state"),
            sync_set: sync_set.to_owned(),
            recorder,
        }
    }

    /// Writes the outcome of a sync and publishes an Event about it.
    pub async fn record(&self, report: &Report) -> Result<(), kube::Error> {
        let errors: Vec<String> = report
            .manifest_errors
            .iter()
            .map(ToString::to_string)
            .chain(report.apply_errors.iter().cloned())
            .collect();
        let listed = |items: &[String]| {
            items
                .iter()
                .take(MAX_LISTED)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        };
        let state = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "labels": {AGENT_STATE_LABEL: self.sync_set},
                "annotations": {AGENT_COMMIT_ANNOTATION: report.commit},
            },
            "data": {
                "commit": report.commit,
                "applied": report.applied.to_string(),
                "unchanged": report.unchanged.to_string(),
                "pruned": report.pruned.to_string(),
                "errors": listed(&errors),
                "refusedKinds": listed(&report.refused_kinds),
                "pruneSkipped": report.prune_skipped.clone().unwrap_or_default(),
            }
        });
        let config_map = self
            .api
            .patch(
                &self.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&state),
            )
            .await?;
        let short = &report.commit[..report.commit.len().min(12)];
        let (type_, reason, note) = if errors.is_empty() && report.refused_kinds.is_empty() {
            (
                EventType::Normal,
                "Synced",
                format!(
                    "synced commit {short}: {} applied, {} pruned",
                    report.applied, report.pruned
                ),
            )
        } else {
            let mut note = format!(
                "synced commit {short} with problems: {} applied, {} pruned",
                report.applied, report.pruned
            );
            if let Some(skipped) = &report.prune_skipped {
                note.push_str(&format!("; nothing pruned: {skipped}"));
            }
            for line in errors
                .iter()
                .chain(report.refused_kinds.iter())
                .take(MAX_LISTED)
            {
                note.push('\n');
                note.push_str(line);
            }
            (EventType::Warning, "SyncProblems", note)
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Sync".into(),
            secondary: None,
        };
        if let Err(e) = self
            .recorder
            .publish(&event, &config_map.object_ref(&()))
            .await
        {
            tracing::warn!(error = %e, state = %config_map.name_any(), "cannot publish event");
        }
        Ok(())
    }
}
