//! The Helm actions, one file each: what it asks Helm, its verb, its reasons and messages, and the
//! status it leaves. An action is pure but for the [`Helm`] it is given, so each is tested against
//! [`crate::helm::fake::FakeHelm`].

mod install;
mod rollback;
mod uninstall;
mod unlock;
mod upgrade;

pub use uninstall::uninstall;
pub use unlock::unlock;

use crate::conditions::{Truth, set_condition};
use crate::desired::Desired;
use crate::helm::{Helm, HelmError, Landed};
use crate::state::Step;
use crate::values_file::Redactor;
use fhr_types::FluxHelmReleaseStatus;
use fhr_types::meta::condition;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// What an install, upgrade or rollback works from.
#[derive(Debug)]
pub struct Plan<'a> {
    /// The release as the spec asks for it.
    pub desired: &'a Desired,
    /// The release namespace.
    pub namespace: &'a str,
    /// The exported chart (a rollback needs none).
    pub chart_dir: Option<&'a Path>,
    /// The merged values.
    pub values: &'a Map<String, Value>,
    /// Labels for the release record (owner and digest).
    pub labels: &'a BTreeMap<String, String>,
    /// Digest of chart and values.
    pub digest: &'a str,
    /// The commit the chart comes from.
    pub chart_revision: &'a str,
    /// Removes values read from Secrets from every message.
    pub redactor: &'a Redactor,
}

/// What to tell about an action: its Event (and log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Told {
    /// A Warning rather than a Normal Event.
    pub warning: bool,
    /// The Event's reason (and the conditions', where it sets them).
    pub reason: &'static str,
    /// The Event's action.
    pub verb: &'static str,
    /// The message, with values from Secrets redacted.
    pub message: String,
}

/// Which Helm action ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Install,
    Upgrade,
    Rollback(i64),
}

/// An action that ran, and Helm's answer.
#[derive(Debug)]
pub struct Done {
    kind: Kind,
    /// Helm's answer.
    pub result: Result<Option<Landed>, HelmError>,
}

/// The verb of `step` if it is a Helm action (for the `Reconciling` message before it runs).
pub fn verb(step: &Step) -> Option<&'static str> {
    match step {
        Step::Install | Step::Reinstall => Some(install::VERB),
        Step::Upgrade => Some(upgrade::VERB),
        Step::Rollback(_) => Some(rollback::VERB),
        Step::Unlock | Step::Nothing | Step::Conflict(_) => None,
    }
}

/// Takes `step` with `helm` if it is a Helm action (install, reinstall, upgrade, rollback).
pub async fn take<H: Helm>(helm: &H, step: &Step, plan: &Plan<'_>) -> Option<Done> {
    let (kind, result) = match step {
        Step::Install => (Kind::Install, install::run(helm, plan, false).await),
        Step::Reinstall => (Kind::Install, install::run(helm, plan, true).await),
        Step::Upgrade => (Kind::Upgrade, upgrade::run(helm, plan).await),
        Step::Rollback(to) => (Kind::Rollback(*to), rollback::run(helm, plan, *to).await),
        Step::Unlock | Step::Nothing | Step::Conflict(_) => return None,
    };
    Some(Done { kind, result })
}

impl Done {
    /// The action's verb.
    pub fn verb(&self) -> &'static str {
        match self.kind {
            Kind::Install => install::VERB,
            Kind::Upgrade => upgrade::VERB,
            Kind::Rollback(_) => rollback::VERB,
        }
    }

    /// Records the action in `status` (what was attempted and applied, failures, `Released` and
    /// `Ready`) and says what to tell. `revision` is the newest after it (number and Helm's
    /// status), `error` Helm's error as a user should read it.
    pub fn record(
        &self,
        status: &mut FluxHelmReleaseStatus,
        plan: &Plan<'_>,
        revision: Option<(i64, String)>,
        error: Option<&str>,
        generation: Option<i64>,
    ) -> Told {
        let release = plan.desired.release.as_str();
        status.last_attempted_digest = Some(plan.digest.to_owned());
        if let Some((number, helm_status)) = &revision {
            status.revision = Some(*number);
            status.release_status = Some(helm_status.clone());
        }
        set_condition(status, condition::RECONCILING, None, generation);
        let number = revision.map(|(n, _)| n).unwrap_or_default();
        let (truth, told) = match (&self.result, self.kind) {
            (Ok(_), Kind::Rollback(to)) => {
                // Rolled back, not ready: the upgrade this digest asked for failed.
                status.failures = Some(status.failures.unwrap_or(0) + 1);
                (Truth::False, rollback::succeeded(release, to, number))
            }
            (Ok(_), kind) => {
                status.failures = None;
                status.last_applied_digest = Some(plan.digest.to_owned());
                status.chart_revision = Some(plan.chart_revision.to_owned());
                let told = match kind {
                    Kind::Install => install::succeeded(release, number),
                    _ => upgrade::succeeded(release, number),
                };
                (Truth::True, told)
            }
            (Err(e), kind) => {
                status.failures = Some(status.failures.unwrap_or(0) + 1);
                let shown = error.map(str::to_owned).unwrap_or_else(|| e.to_string());
                let message = format!("helm {} of release {release} failed: {shown}", self.verb());
                let reason = match kind {
                    Kind::Install => install::FAILED,
                    Kind::Upgrade => upgrade::FAILED,
                    Kind::Rollback(_) => rollback::FAILED,
                };
                let told = Told {
                    warning: true,
                    reason,
                    verb: self.verb(),
                    message,
                };
                (Truth::False, told)
            }
        };
        let told = Told {
            message: plan.redactor.redact(&told.message),
            ..told
        };
        for type_ in [condition::RELEASED, condition::READY] {
            set_condition(
                status,
                type_,
                Some((truth, told.reason, &told.message)),
                generation,
            );
        }
        told
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::RollbackPolicy;
    use crate::helm::fake::{Call, FakeHelm};
    use fhr_types::meta::reason;
    use std::time::Duration;

    pub(super) fn desired() -> Desired {
        Desired {
            release: "team-web".into(),
            adopt: false,
            chart: crate::desired::ChartSource::Git {
                path: "charts/web".into(),
            },
            values: Map::new(),
            timeout: Duration::from_secs(60),
            wait: false,
            max_history: None,
            rollback: RollbackPolicy {
                enable: true,
                wait: false,
                timeout: Duration::from_secs(60),
                disable_hooks: false,
            },
            suspend: false,
            service_account: None,
        }
    }

    /// Runs a test with the plan every action test uses: values holding a secret password.
    pub(super) fn with_plan(test: impl FnOnce(&Plan<'_>)) {
        let desired = desired();
        let values: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"password": "s3cret-canary"})).unwrap();
        let mut redactor = Redactor::default();
        redactor.remember(&Value::Object(values.clone()));
        let labels = BTreeMap::from([("digest".to_owned(), "d1".to_owned())]);
        let plan = Plan {
            desired: &desired,
            namespace: "team",
            chart_dir: Some(Path::new("/charts/web")),
            values: &values,
            labels: &labels,
            digest: "d1",
            chart_revision: "c0ffee",
            redactor: &redactor,
        };
        test(&plan);
    }

    /// Runs a future that the fake completes at once.
    pub(super) fn now<F: std::future::Future>(future: F) -> F::Output {
        futures::executor::block_on(future)
    }

    fn condition<'a>(status: &'a FluxHelmReleaseStatus, type_: &str) -> (&'a str, &'a str) {
        let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn a_successful_install_records_what_was_applied_and_is_ready() {
        with_plan(|plan| {
            let helm = FakeHelm::default();
            let done = now(take(&helm, &Step::Install, plan)).unwrap();
            let mut status = FluxHelmReleaseStatus {
                failures: Some(2),
                ..Default::default()
            };
            let told = done.record(
                &mut status,
                plan,
                Some((1, "deployed".into())),
                None,
                Some(3),
            );
            assert_eq!(told.reason, reason::INSTALL_SUCCEEDED);
            assert!(!told.warning);
            assert_eq!(
                condition(&status, "Ready"),
                ("True", reason::INSTALL_SUCCEEDED)
            );
            assert_eq!(
                condition(&status, "Released"),
                ("True", reason::INSTALL_SUCCEEDED)
            );
            assert_eq!(status.revision, Some(1));
            assert_eq!(status.failures, None);
            assert_eq!(status.last_applied_digest.as_deref(), Some("d1"));
            assert_eq!(status.chart_revision.as_deref(), Some("c0ffee"));
            assert!(matches!(
                &helm.calls()[..],
                [Call::Upgrade { install: true, .. }]
            ));
        });
    }

    #[test]
    fn a_failed_upgrade_counts_a_failure_keeps_the_last_applied_digest_and_redacts_secrets() {
        with_plan(|plan| {
            let helm = FakeHelm::default();
            helm.fail(
                "upgrade",
                HelmError::Failed("template error near s3cret-canary".into()),
            );
            let done = now(take(&helm, &Step::Upgrade, plan)).unwrap();
            let mut status = FluxHelmReleaseStatus {
                last_applied_digest: Some("d0".into()),
                ..Default::default()
            };
            let told = done.record(&mut status, plan, Some((2, "failed".into())), None, None);
            assert!(told.warning);
            assert_eq!(told.reason, reason::UPGRADE_FAILED);
            assert!(told.message.contains("***"), "{}", told.message);
            assert!(!told.message.contains("s3cret-canary"), "{}", told.message);
            assert_eq!(
                condition(&status, "Ready"),
                ("False", reason::UPGRADE_FAILED)
            );
            assert_eq!(status.failures, Some(1));
            assert_eq!(status.last_applied_digest.as_deref(), Some("d0"));
            assert_eq!(status.last_attempted_digest.as_deref(), Some("d1"));
        });
    }

    #[test]
    fn steps_that_are_not_helm_actions_run_nothing() {
        with_plan(|plan| {
            let helm = FakeHelm::default();
            for step in [Step::Nothing, Step::Unlock, Step::Conflict("x".into())] {
                assert!(now(take(&helm, &step, plan)).is_none());
            }
            assert!(helm.calls().is_empty());
        });
    }
}
