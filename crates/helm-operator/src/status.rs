//! Writing status with server-side apply; what goes into it is `fhr_release::conditions`'.

use fhr_types::{FluxHelmRelease, FluxHelmReleaseStatus};
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};

/// Field manager for everything helm-operator writes.
pub const MANAGER: &str = "helm-operator";

/// Writes `status` with server-side apply, unless it equals what the object already has.
pub async fn write(
    api: &Api<FluxHelmRelease>,
    fhr: &FluxHelmRelease,
    status: &FluxHelmReleaseStatus,
) -> Result<(), kube::Error> {
    if fhr.status.as_ref() == Some(status) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": FluxHelmRelease::api_version(&()),
        "kind": FluxHelmRelease::kind(&()),
        "status": status,
    });
    api.patch_status(
        &fhr.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}
