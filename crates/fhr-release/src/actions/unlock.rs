//! Unlock: a revision left `pending-*` by an interrupted action (a crash, a SIGKILL) is marked
//! failed, as Helm would have had it finished, so that the failure handling remediates it.

use super::Told;
use crate::helm::{Helm, HelmError};
use crate::state::Revision;
use fhr_types::meta::reason;

/// The Event action.
const VERB: &str = "unlock";

/// Marks `latest` of `release` failed and says what happened.
pub async fn unlock<H: Helm>(
    helm: &H,
    release: &str,
    namespace: &str,
    latest: &Revision,
    service_account: Option<&str>,
) -> Result<Told, HelmError> {
    helm.unlock(release, namespace, latest.number, service_account)
        .await?;
    Ok(Told {
        warning: true,
        reason: reason::UNLOCKED,
        verb: VERB,
        message: format!(
            "revision {} of release {release} was left {} by an interrupted action; marked failed to recover",
            latest.number, latest.status
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::now;
    use super::*;
    use crate::helm::fake::{Call, FakeHelm};
    use crate::state::HelmStatus;

    #[test]
    fn the_pending_revision_is_marked_failed_and_reported() {
        let helm = FakeHelm::default();
        let latest = Revision {
            number: 4,
            status: HelmStatus::parse("pending-upgrade"),
            owner: None,
            digest: None,
            actor: None,
            written: None,
        };
        let told = now(unlock(&helm, "team-web", "team", &latest, None)).unwrap();
        assert_eq!(told.reason, reason::UNLOCKED);
        assert!(told.message.contains("revision 4"), "{}", told.message);
        assert!(told.message.contains("pending-upgrade"), "{}", told.message);
        assert!(matches!(
            &helm.calls()[..],
            [Call::Unlock { revision: 4, .. }]
        ));
    }
}
