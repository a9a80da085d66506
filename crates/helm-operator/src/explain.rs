//! Where the cluster serves a kind now, for `fhr_release::explain`'s message about an apiVersion a
//! chart uses that the cluster no longer serves.

use kube::discovery::Discovery;

/// The apiVersions in which the cluster serves `kind` now.
pub async fn served_versions(client: &kube::Client, kind: &str) -> Vec<String> {
    let Ok(discovery) = Discovery::new(client.clone()).run_aggregated().await else {
        return Vec::new();
    };
    let mut versions: Vec<String> = discovery
        .groups()
        .flat_map(|group| group.recommended_resources())
        .filter(|(resource, _)| resource.kind == kind)
        .map(|(resource, _)| resource.api_version)
        .collect();
    versions.sort();
    versions.dedup();
    versions
}
