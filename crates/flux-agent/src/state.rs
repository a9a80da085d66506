//! The agent's state object: a ConfigMap recording the last sync, and the object its Events name.

use crate::sync::{MANAGER, Report};
use fhr_types::meta::{
    AGENT_COMMIT_ANNOTATION, AGENT_STATE_LABEL, LAST_HANDLED_RECONCILE_KEY,
    RECONCILE_REQUEST_ANNOTATION,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Most errors listed in the state object and in one Event.
const MAX_LISTED: usize = 10;

/// Where the agent records its syncs.
pub struct State {
    api: Api<ConfigMap>,
    name: String,
    sync_set: String,
    recorder: Recorder,
    /// The newest sync request (the reconcile-at annotation's value) seen on the state object.
    requested: Arc<Mutex<Option<String>>>,
}

impl State {
    /// The state object `<sync-set>-state` in `namespace`.
    pub fn new(client: kube::Client, namespace: &str, sync_set: &str, recorder: Recorder) -> State {
        State {
            api: Api::namespaced(client, namespace),
            name: format!("{sync_set}-state"),
            sync_set: sync_set.to_owned(),
            recorder,
            requested: Arc::default(),
        }
    }

    /// The newest sync request not yet handled, to record as handled once the sync it starts
    /// is recorded.
    pub fn pending_request(&self) -> Option<String> {
        self.requested
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Watches the state object for sync requests (`kubectl fhr reconcile --with-source` sets the
    /// reconcile-at annotation) and wakes the loop for each new one. The loop's minimum interval
    /// between triggered fetches applies, as to webhooks.
    pub fn follow_requests(&self, trigger: Arc<Notify>) -> impl Future<Output = ()> + use<> {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let objects = watcher(self.api.clone(), config)
            .default_backoff()
            .applied_objects();
        let requested = self.requested.clone();
        async move {
            futures::pin_mut!(objects);
            while let Some(object) = objects.next().await {
                let Ok(state) = object else { continue };
                let asked = state
                    .annotations()
                    .get(RECONCILE_REQUEST_ANNOTATION)
                    .cloned();
                let handled = state
                    .data
                    .as_ref()
                    .and_then(|d| d.get(LAST_HANDLED_RECONCILE_KEY));
                let Some(asked) = asked.filter(|a| Some(a) != handled) else {
                    continue;
                };
                let mut latest = requested.lock().unwrap_or_else(|e| e.into_inner());
                if latest.as_ref() != Some(&asked) {
                    tracing::info!(request = %asked, "sync requested on the state object");
                    *latest = Some(asked);
                    trigger.notify_one();
                }
            }
        }
    }

    /// Writes the outcome of a sync and publishes an Event about it; `handled` is the sync request
    /// that was pending when the sync started.
    pub async fn record(&self, report: &Report, handled: Option<&str>) -> Result<(), kube::Error> {
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
                LAST_HANDLED_RECONCILE_KEY: handled.unwrap_or_default(),
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
