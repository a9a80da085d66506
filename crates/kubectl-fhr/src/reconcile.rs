//! `kubectl fhr reconcile`: ask for a reconcile through the reconcile-at annotation, then follow
//! the resource until helm-operator reports that it handled that very request.

use crate::MANAGER;
use anyhow::{Context as _, bail};
use fhr_types::meta::{
    AGENT_STATE_LABEL, LAST_HANDLED_RECONCILE_KEY, RECONCILE_REQUEST_ANNOTATION, SYNC_SET_LABEL,
    condition,
};
use fhr_types::{FluxHelmRelease, FluxHelmReleaseStatus};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use std::process::ExitCode;
use std::time::Duration;
use tokio::time::Instant;

/// How often flux-agent's state object is read while waiting for its sync.
const AGENT_POLL: Duration = Duration::from_millis(500);

/// Requests a reconcile of `name` (after a sync by flux-agent when `source` is given, with the
/// agent's namespace if known) and waits for its outcome.
pub async fn run(
    client: &kube::Client,
    api: &Api<FluxHelmRelease>,
    name: &str,
    source: Option<Option<String>>,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + timeout;
    // The source first: a release just added in git exists only once the agent applied it.
    // One that exists names the agent that applied it (its sync-set label).
    let synced_commit = match source {
        Some(agent_namespace) => {
            let existing = api.get_opt(name).await?;
            let sync_set = existing.and_then(|f| f.labels().get(SYNC_SET_LABEL).cloned());
            Some(sync_source(client, agent_namespace, sync_set, deadline).await?)
        }
        None => None,
    };
    let fhr = api
        .get(name)
        .await
        .with_context(|| format!("FluxHelmRelease {name}"))?;
    let label = format!("{}/{name}", fhr.namespace().unwrap_or_default());
    if fhr.spec.suspend == Some(true) {
        bail!("FluxHelmRelease {label} is suspended; `kubectl fhr resume {name}` first");
    }
    loop {
        let token = Timestamp::now().to_string();
        println!("► asking helm-operator to reconcile FluxHelmRelease {label}");
        request(api, name, &token).await?;
        let status = match tokio::time::timeout_at(deadline, handled(api, name, &token)).await {
            Ok(status) => status?,
            Err(_) => {
                let last = api.get(name).await.ok().and_then(|f| f.status);
                bail!(
                    "timed out after {timeout:?} waiting for helm-operator to reconcile {label}{}",
                    last.map(|s| format!("; last: {}", summary(&s)))
                        .unwrap_or_default()
                );
            }
        };
        // The operator follows flux-agent's commits on its own; a reconcile that raced ahead of
        // its fetch is asked for again, so the outcome is that of the synced commit.
        if let Some(commit) = &synced_commit
            && let Some(used) = chart_commit(&status)
            && !commit.starts_with(&used)
        {
            println!("◎ helm-operator reconciled commit {used}; waiting for it to fetch {commit}");
            tokio::time::sleep_until((Instant::now() + AGENT_POLL).min(deadline)).await;
            continue;
        }
        return Ok(report(&label, &status));
    }
}

/// Sets the reconcile-at annotation to `token`.
async fn request<K>(api: &Api<K>, name: &str, token: &str) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch =
        serde_json::json!({"metadata": {"annotations": {RECONCILE_REQUEST_ANNOTATION: token}}});
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    api.patch(name, &params, &Patch::Merge(&patch))
        .await
        .with_context(|| format!("annotating {name}"))?;
    Ok(())
}

/// Follows the resource until its status says it handled `token` and no action is running,
/// printing each step the operator reports on the way.
async fn handled(
    api: &Api<FluxHelmRelease>,
    name: &str,
    token: &str,
) -> anyhow::Result<FluxHelmReleaseStatus> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let objects = watcher(api.clone(), config)
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(objects);
    let mut shown = String::new();
    while let Some(object) = objects.next().await {
        let Ok(fhr) = object else { continue };
        let status = fhr.status.unwrap_or_default();
        if status.last_handled_reconcile_at.as_deref() != Some(token) {
            continue;
        }
        let progressing = status
            .condition(condition::RECONCILING)
            .filter(|c| c.status == "True");
        match progressing {
            Some(c) => {
                if c.message != shown {
                    println!("◎ {}", c.message);
                    shown = c.message.clone();
                }
            }
            None => return Ok(status),
        }
    }
    bail!("the watch of {name} ended")
}

/// Prints the outcome; failure unless Ready is True.
fn report(label: &str, status: &FluxHelmReleaseStatus) -> ExitCode {
    let ready = status
        .condition(condition::READY)
        .is_some_and(|c| c.status == "True");
    if ready {
        println!("✔ {label}: {}", summary(status));
        ExitCode::SUCCESS
    } else {
        eprintln!("✗ {label}: {}", summary(status));
        ExitCode::FAILURE
    }
}

/// Ready's reason and message, and the revision.
fn summary(status: &FluxHelmReleaseStatus) -> String {
    let ready = status.condition(condition::READY);
    let mut text = match ready {
        Some(c) => format!("{}: {}", c.reason, c.message),
        None => "no Ready condition yet".to_owned(),
    };
    if let Some(revision) = status.revision {
        text.push_str(&format!(" (revision {revision})"));
    }
    text
}

/// The commit the last reconcile read the chart at, from ChartFetched (`… at commit <short>`).
fn chart_commit(status: &FluxHelmReleaseStatus) -> Option<String> {
    let fetched = status.condition(condition::CHART_FETCHED)?;
    let (_, commit) = fetched.message.rsplit_once("at commit ")?;
    let commit: String = commit.chars().take_while(char::is_ascii_hexdigit).collect();
    (!commit.is_empty()).then_some(commit)
}

/// Asks flux-agent for a sync through its state object (the one of `sync_set`, if known) and
/// waits until it recorded one for this request; the synced commit.
async fn sync_source(
    client: &kube::Client,
    agent_namespace: Option<String>,
    sync_set: Option<String>,
    deadline: Instant,
) -> anyhow::Result<String> {
    let api: Api<ConfigMap> = match &agent_namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let selector = match &sync_set {
        Some(set) => format!("{AGENT_STATE_LABEL}={set}"),
        None => AGENT_STATE_LABEL.to_owned(),
    };
    let states = api
        .list(&ListParams::default().labels(&selector))
        .await
        .context("finding flux-agent's state object")?
        .items;
    let [state] = states.as_slice() else {
        let found: Vec<String> = states
            .iter()
            .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()))
            .collect();
        bail!(
            "expected one flux-agent state object (ConfigMap labelled {selector}){}, found {}: {found:?}; name its namespace with --agent-namespace",
            agent_namespace
                .map(|n| format!(" in namespace {n}"))
                .unwrap_or_default(),
            found.len()
        );
    };
    let (namespace, name) = (state.namespace().unwrap_or_default(), state.name_any());
    let token = Timestamp::now().to_string();
    println!("► asking flux-agent to sync (state object {namespace}/{name})");
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    request(&api, &name, &token).await?;
    loop {
        let state = api.get(&name).await?;
        let data = state.data.unwrap_or_default();
        if data.get(LAST_HANDLED_RECONCILE_KEY) == Some(&token) {
            let commit = data.get("commit").cloned().unwrap_or_default();
            println!(
                "✔ flux-agent synced commit {}",
                &commit[..commit.len().min(12)]
            );
            if let Some(errors) = data.get("errors").filter(|e| !e.is_empty()) {
                eprintln!("! flux-agent could not apply everything:\n{errors}");
            }
            return Ok(commit);
        }
        if Instant::now() + AGENT_POLL > deadline {
            bail!("timed out waiting for flux-agent to sync (state object {namespace}/{name})");
        }
        tokio::time::sleep(AGENT_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(conditions: serde_json::Value) -> FluxHelmReleaseStatus {
        serde_json::from_value(serde_json::json!({"revision": 2, "conditions": conditions}))
            .unwrap()
    }

    #[test]
    fn the_commit_a_reconcile_used_is_read_from_chart_fetched() {
        let s = status(
            serde_json::json!([{"type": "ChartFetched", "status": "True",
            "reason": "ChartFetched", "message": "chart \"webapp\" at commit 0123456789ab",
            "lastTransitionTime": "2026-11-30T12:00:00Z"}]),
        );
        assert_eq!(chart_commit(&s).as_deref(), Some("0123456789ab"));
        assert_eq!(chart_commit(&status(serde_json::json!([]))), None);
    }

    #[test]
    fn the_summary_gives_reason_message_and_revision() {
        let s = status(serde_json::json!([{"type": "Ready", "status": "False",
            "reason": "UpgradeFailed", "message": "boom",
            "lastTransitionTime": "2026-11-30T12:00:00Z"}]));
        assert_eq!(summary(&s), "UpgradeFailed: boom (revision 2)");
        assert_eq!(report("ns/web", &s), ExitCode::FAILURE);
    }
}
