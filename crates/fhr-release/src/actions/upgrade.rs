//! Upgrade: `helm upgrade` of a release that exists, to the chart and values the spec asks for
//! (also how an adopted release gets the operator's labels, and how drift is corrected).

use super::{Plan, Told};
use crate::helm::{Helm, HelmError, Landed, Upgrade};
use fhr_types::meta::reason;

/// The Event action and the word in messages.
pub(super) const VERB: &str = "upgrade";
/// The reason of a failed upgrade.
pub(super) const FAILED: &str = reason::UPGRADE_FAILED;

/// The request an install or upgrade sends.
pub(super) fn request<'a>(plan: &Plan<'a>, install: bool) -> Result<Upgrade<'a>, HelmError> {
    let chart_dir = plan
        .chart_dir
        .ok_or_else(|| HelmError::Io("no chart exported for an install or upgrade".into()))?;
    Ok(Upgrade {
        release: &plan.desired.release,
        namespace: plan.namespace,
        install,
        chart_dir,
        values: plan.values,
        labels: plan.labels,
        timeout: plan.desired.timeout,
        wait: plan.desired.wait,
        max_history: plan.desired.max_history,
        secret_values: plan.redactor.values(),
        service_account: plan.desired.service_account.as_deref(),
    })
}

pub(super) async fn run<H: Helm>(helm: &H, plan: &Plan<'_>) -> Result<Option<Landed>, HelmError> {
    helm.upgrade(&request(plan, false)?).await
}

pub(super) fn succeeded(release: &str, revision: i64) -> Told {
    Told {
        warning: false,
        reason: reason::UPGRADE_SUCCEEDED,
        verb: VERB,
        message: format!("helm upgrade succeeded: release {release} is at revision {revision}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{now, with_plan};
    use super::*;
    use crate::helm::fake::{Call, FakeHelm};

    #[test]
    fn an_upgrade_sends_the_values_and_the_owner_labels() {
        with_plan(|plan| {
            let helm = FakeHelm::default();
            now(run(&helm, plan)).unwrap();
            let [
                Call::Upgrade {
                    install,
                    values,
                    labels,
                    ..
                },
            ] = &helm.calls()[..]
            else {
                panic!("{:?}", helm.calls());
            };
            assert!(!install);
            assert_eq!(values, plan.values);
            assert_eq!(labels, plan.labels);
        });
    }

    #[test]
    fn without_an_exported_chart_nothing_is_asked_of_helm() {
        with_plan(|plan| {
            let helm = FakeHelm::default();
            let plan = Plan {
                chart_dir: None,
                ..*plan
            };
            assert!(matches!(now(run(&helm, &plan)), Err(HelmError::Io(_))));
            assert!(helm.calls().is_empty());
        });
    }
}
