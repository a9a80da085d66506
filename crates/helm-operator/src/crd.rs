//! The operator waits for its API: the FluxHelmRelease CRD being served.

use fhr_runtime::{CancellationToken, Health};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use std::time::Duration;

/// Waits until the API server answers and the FluxHelmRelease CRD is Established, reporting
/// not-ready with the reason meanwhile. Returns false when shutdown came first.
pub async fn wait_for_crd(
    client: &kube::Client,
    health: &Health,
    shutdown: &CancellationToken,
) -> bool {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = format!("fluxhelmreleases.{}", fhr_types::api::GROUP);
    let mut delay = Duration::from_millis(250);
    loop {
        let reason = match crds.get_opt(&name).await {
            Ok(Some(crd)) if established(&crd) => return true,
            Ok(Some(_)) => format!("CRD {name} is not Established yet"),
            Ok(None) => format!("CRD {name} is not installed"),
            Err(kube::Error::Api(e)) if e.code == 403 => {
                // Without rights to read CRDs, look for the API itself.
                match probe_resource(client).await {
                    Ok(()) => return true,
                    Err(reason) => reason,
                }
            }
            Err(e) => format!("API server not reachable: {e}"),
        };
        if !health.is_ready() {
            health.set_not_ready(reason.clone());
        }
        tracing::info!(%reason, retry_in = ?delay, "waiting before starting");
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Established" && c.status == "True")
}

async fn probe_resource(client: &kube::Client) -> Result<(), String> {
    let api: Api<fhr_types::FluxHelmRelease> = Api::all(client.clone());
    match api
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(()),
        Err(e) => Err(format!("FluxHelmRelease API not served: {e}")),
    }
}
