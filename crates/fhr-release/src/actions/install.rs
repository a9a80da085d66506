//! Install: `helm upgrade --install` of a release that does not exist; a failed first install is
//! uninstalled first, since Helm cannot upgrade a release that was never deployed.

use super::{Plan, Told, upgrade};
use crate::helm::{Helm, HelmError, Landed};
use fhr_types::meta::reason;

/// The Event action and the word in messages.
pub(super) const VERB: &str = "install";
/// The reason of a failed install.
pub(super) const FAILED: &str = reason::INSTALL_FAILED;

pub(super) async fn run<H: Helm>(
    helm: &H,
    plan: &Plan<'_>,
    reinstall: bool,
) -> Result<Option<Landed>, HelmError> {
    let request = upgrade::request(plan, true)?;
    if reinstall {
        helm.uninstall(
            request.release,
            request.namespace,
            request.timeout,
            request.service_account,
        )
        .await?;
    }
    helm.upgrade(&request).await
}

pub(super) fn succeeded(release: &str, revision: i64) -> Told {
    Told {
        warning: false,
        reason: reason::INSTALL_SUCCEEDED,
        verb: VERB,
        message: format!("helm install succeeded: release {release} is at revision {revision}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{now, with_plan};
    use super::*;
    use crate::helm::fake::{Call, FakeHelm};

    #[test]
    fn a_failed_first_install_is_removed_before_installing_again() {
        with_plan(|plan| {
            let helm = FakeHelm::default();
            now(run(&helm, plan, true)).unwrap();
            let calls = helm.calls();
            assert!(
                matches!(
                    &calls[..],
                    [Call::Uninstall { .. }, Call::Upgrade { install: true, .. }]
                ),
                "{calls:?}"
            );
        });
    }

    #[test]
    fn when_removing_fails_nothing_is_installed() {
        with_plan(|plan| {
            let helm = FakeHelm::default();
            helm.fail(
                "uninstall",
                HelmError::Timeout(std::time::Duration::from_secs(1)),
            );
            assert!(now(run(&helm, plan, true)).is_err());
            assert!(matches!(&helm.calls()[..], [Call::Uninstall { .. }]));
        });
    }
}
