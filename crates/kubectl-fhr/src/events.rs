//! `kubectl fhr events`: the Events helm-operator published about one resource, oldest first.

use crate::table;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};

/// Lists and formats the Events about `name`.
pub async fn run(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let selector = format!("involvedObject.kind=FluxHelmRelease,involvedObject.name={name}");
    let events = api
        .list(&ListParams::default().fields(&selector))
        .await?
        .items;
    if events.is_empty() {
        return Ok(format!(
            "No events about FluxHelmRelease {namespace}/{name}.\n"
        ));
    }
    Ok(render(events, Timestamp::now()))
}

/// When an Event last happened: the series' last time, else the last timestamp, else the event
/// time (events.k8s.io Events, as the operator writes them, set only that one).
fn last_seen(event: &Event) -> Option<Timestamp> {
    event
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(|t| t.0)
        .or(event.last_timestamp.as_ref().map(|t| t.0))
        .or(event.event_time.as_ref().map(|t| t.0))
        .or(event.first_timestamp.as_ref().map(|t| t.0))
}

/// The table: last seen, type, reason, count and message, oldest first.
pub fn render(mut events: Vec<Event>, now: Timestamp) -> String {
    events.sort_by_key(last_seen);
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let count = e
                .series
                .as_ref()
                .and_then(|s| s.count)
                .or(e.count)
                .unwrap_or(1);
            vec![
                table::age(last_seen(e), now),
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                count.to_string(),
                e.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table::render(&["LAST SEEN", "TYPE", "REASON", "COUNT", "MESSAGE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_listed_oldest_first_with_their_counts() {
        let now: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        let event = |reason: &str, time: &str, series: Option<i32>| -> Event {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": reason.to_lowercase()},
                "involvedObject": {"kind": "FluxHelmRelease", "name": "web"},
                "type": "Normal", "reason": reason, "message": format!("{reason} happened"),
                "eventTime": time,
                "series": series.map(|count| serde_json::json!({"count": count, "lastObservedTime": time})),
            }))
            .unwrap()
        };
        let table = render(
            vec![
                event("UpgradeSucceeded", "2026-11-30T11:59:00.000000Z", None),
                event("InstallSucceeded", "2026-11-30T11:00:00.000000Z", Some(3)),
            ],
            now,
        );
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].starts_with("60m"), "{table}");
        assert!(lines[1].contains("InstallSucceeded   3 "), "{table}");
        assert!(lines[2].starts_with("60s"), "{table}");
    }
}
