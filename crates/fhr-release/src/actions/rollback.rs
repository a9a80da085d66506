//! Rollback: `helm rollback` to the last deployed revision after an upgrade to this digest failed
//! and `spec.rollback.enable` asks for it. Rolled back is not ready: it waits for a change.

use super::{Plan, Told};
use crate::helm::{Helm, HelmError, Landed, Rollback};
use fhr_types::meta::reason;

/// The Event action and the word in messages.
pub(super) const VERB: &str = "rollback";
/// The reason of a failed rollback.
pub(super) const FAILED: &str = reason::ROLLBACK_FAILED;

pub(super) async fn run<H: Helm>(
    helm: &H,
    plan: &Plan<'_>,
    to: i64,
) -> Result<Option<Landed>, HelmError> {
    let policy = &plan.desired.rollback;
    helm.rollback(&Rollback {
        release: &plan.desired.release,
        namespace: plan.namespace,
        revision: to,
        timeout: policy.timeout,
        wait: policy.wait,
        disable_hooks: policy.disable_hooks,
        service_account: plan.desired.service_account.as_deref(),
    })
    .await
}

pub(super) fn succeeded(release: &str, to: i64, revision: i64) -> Told {
    Told {
        warning: false,
        reason: reason::ROLLED_BACK,
        verb: VERB,
        message: format!(
            "upgrade failed; release {release} rolled back to revision {to} (now revision {revision}); waiting for a change in git or the spec"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{now, with_plan};
    use super::super::{Done, take};
    use crate::helm::fake::{Call, FakeHelm};
    use crate::state::Step;
    use fhr_types::FluxHelmReleaseStatus;
    use fhr_types::meta::reason;

    fn rolled_back(helm: &FakeHelm) -> (Done, FluxHelmReleaseStatus, super::Told) {
        let mut result = None;
        with_plan(|plan| {
            let done = now(take(helm, &Step::Rollback(1), plan)).unwrap();
            let mut status = FluxHelmReleaseStatus::default();
            let told = done.record(&mut status, plan, Some((3, "deployed".into())), None, None);
            result = Some((done, status, told));
        });
        result.unwrap()
    }

    #[test]
    fn a_rollback_restores_the_revision_but_is_not_ready() {
        let helm = FakeHelm::default();
        let (done, status, told) = rolled_back(&helm);
        assert_eq!(done.verb(), "rollback");
        assert_eq!(told.reason, reason::ROLLED_BACK);
        assert!(
            told.message
                .contains("rolled back to revision 1 (now revision 3)")
        );
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reason::ROLLED_BACK)
        );
        // The failed upgrade counts; the digest it tried is remembered, so it is not retried.
        assert_eq!(status.failures, Some(1));
        assert_eq!(status.last_attempted_digest.as_deref(), Some("d1"));
        assert_eq!(status.last_applied_digest, None);
        assert!(matches!(
            &helm.calls()[..],
            [Call::Rollback { revision: 1, .. }]
        ));
    }

    #[test]
    fn a_failed_rollback_says_so() {
        let helm = FakeHelm::default();
        helm.fail("rollback", crate::helm::HelmError::Failed("no".into()));
        let (_, status, told) = rolled_back(&helm);
        assert!(told.warning);
        assert_eq!(told.reason, reason::ROLLBACK_FAILED);
        assert_eq!(status.failures, Some(1));
    }
}
