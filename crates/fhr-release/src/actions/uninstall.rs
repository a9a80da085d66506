//! Uninstall: `helm uninstall` when a resource is deleted (its finalizer), for a release it manages.

use super::Told;
use crate::helm::{Helm, HelmError};
use fhr_types::meta::reason;
use std::time::Duration;

/// The Event action.
const VERB: &str = "uninstall";

/// Uninstalls `release`; if that failed, what to tell and Helm's error (the finalizer stays until
/// it succeeds).
pub async fn uninstall<H: Helm>(
    helm: &H,
    release: &str,
    namespace: &str,
    timeout: Duration,
    service_account: Option<&str>,
) -> Result<(), (Told, HelmError)> {
    helm.uninstall(release, namespace, timeout, service_account)
        .await
        .map_err(|e| {
            let told = Told {
                warning: true,
                reason: reason::UNINSTALL_FAILED,
                verb: VERB,
                message: format!("uninstalling release {release} failed: {e}"),
            };
            (told, e)
        })
}

#[cfg(test)]
mod tests {
    use super::super::tests::now;
    use super::*;
    use crate::helm::fake::FakeHelm;

    #[test]
    fn a_failed_uninstall_names_the_release_and_the_error() {
        let helm = FakeHelm::default();
        assert!(
            now(uninstall(
                &helm,
                "team-web",
                "team",
                Duration::from_secs(1),
                None
            ))
            .is_ok()
        );
        helm.fail("uninstall", HelmError::Failed("forbidden".into()));
        let (told, _) = now(uninstall(
            &helm,
            "team-web",
            "team",
            Duration::from_secs(1),
            None,
        ))
        .unwrap_err();
        assert_eq!(told.reason, reason::UNINSTALL_FAILED);
        assert_eq!(
            told.message,
            "uninstalling release team-web failed: forbidden"
        );
    }
}
