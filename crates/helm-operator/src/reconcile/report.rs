//! Report: the status a reconcile builds, written once when it ends, and its Events. The one other
//! write is an action announcing itself (`Reconciling`) before a Helm run that may take minutes,
//! so that `kubectl get` shows what is happening meanwhile.

use super::gather::Blocked;
use super::{Context, Error, ResultLabel, without_commits};
use crate::status;
use fhr_release::actions::Told;
use fhr_release::conditions::{Truth, ready_of, set_condition};
use fhr_release::helm::Helm;
use fhr_release::record::History;
use fhr_release::state::ReleaseState;
use fhr_types::meta::{RECONCILE_REQUEST_ANNOTATION, condition, reason};
use fhr_types::{FluxHelmRelease, FluxHelmReleaseStatus};
use kube::api::Api;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use std::sync::Mutex;
use tracing::{info, warn};

/// One reconcile's status and Events.
pub struct Report<'a, H: Helm> {
    fhr: &'a FluxHelmRelease,
    api: &'a Api<FluxHelmRelease>,
    ctx: &'a Context<H>,
    /// The status being built.
    pub status: FluxHelmReleaseStatus,
    generation: Option<i64>,
    result: &'a Mutex<ResultLabel>,
}

impl<'a, H: Helm> Report<'a, H> {
    /// Starts from the resource's current status.
    pub fn new(
        fhr: &'a FluxHelmRelease,
        api: &'a Api<FluxHelmRelease>,
        ctx: &'a Context<H>,
        result: &'a Mutex<ResultLabel>,
    ) -> Self {
        let mut status = fhr.status.clone().unwrap_or_default();
        // Whatever this reconcile writes answers the request that started it.
        if let Some(asked) = fhr.annotations().get(RECONCILE_REQUEST_ANNOTATION) {
            status.last_handled_reconcile_at = Some(asked.clone());
        }
        Report {
            fhr,
            api,
            ctx,
            status,
            generation: fhr.metadata.generation,
            result,
        }
    }

    /// The resource being reconciled.
    pub fn resource(&self) -> &'a FluxHelmRelease {
        self.fhr
    }

    /// The reconciler's context.
    pub fn ctx(&self) -> &'a Context<H> {
        self.ctx
    }

    /// The resource's generation (for conditions' observedGeneration).
    pub fn generation(&self) -> Option<i64> {
        self.generation
    }

    /// Sets (or, with `None`, removes) a condition.
    pub fn set(&mut self, type_: &str, value: Option<(Truth, &str, &str)>) {
        set_condition(&mut self.status, type_, value, self.generation);
    }

    /// How the reconcile counts in the metrics when it raised no error.
    pub fn count_as(&self, result: ResultLabel) {
        *self.result.lock().unwrap_or_else(|e| e.into_inner()) = result;
    }

    /// Reports what keeps the release from its desired state, touching nothing: `Ready` (and the
    /// companion condition of the problem) with its reason and message. The log line and the
    /// Warning Event come once per problem, not at every re-check or commit.
    pub async fn blocked(&mut self, blocked: &Blocked) -> Result<(), Error> {
        self.count_as(ResultLabel::Blocked);
        // Per problem: its reason and message, the condition it belongs to (with that condition's
        // status), Ready's status, and the Event's action (none while waiting for the first fetch).
        let (reason, message, companion, truth, action) = match blocked {
            Blocked::Stalled(e) => (
                e.reason,
                &e.message,
                Some((condition::STALLED, Truth::True)),
                Truth::False,
                Some("Validate"),
            ),
            Blocked::GitNotSynced(m) => (
                reason::GIT_NOT_SYNCED,
                m,
                Some((condition::CHART_FETCHED, Truth::False)),
                Truth::Unknown,
                None,
            ),
            Blocked::ChartNotFound(m) => (
                reason::CHART_NOT_FOUND,
                m,
                Some((condition::CHART_FETCHED, Truth::False)),
                Truth::False,
                Some("FetchChart"),
            ),
            Blocked::ChartRefused(m) => (
                reason::CHART_REFUSED,
                m,
                Some((condition::CHART_FETCHED, Truth::False)),
                Truth::False,
                Some("FetchChart"),
            ),
            Blocked::InvalidValuesFrom(m) => (
                reason::INVALID_VALUES_FROM,
                m,
                None,
                Truth::False,
                Some("ReadValues"),
            ),
            Blocked::Claimed(m) => (
                reason::RELEASE_CONFLICT,
                m,
                Some((condition::RELEASED, Truth::False)),
                Truth::False,
                Some("Decide"),
            ),
            Blocked::Forbidden(m) => (reason::FORBIDDEN, m, None, Truth::False, Some("Authorize")),
            Blocked::ChartPullFailed { message, .. } => (
                reason::CHART_PULL_FAILED,
                message,
                Some((condition::CHART_FETCHED, Truth::False)),
                Truth::False,
                Some("FetchChart"),
            ),
        };
        let changed = !self.status.conditions.iter().any(|c| {
            c.type_ == condition::READY
                && c.reason == reason
                && without_commits(&c.message) == without_commits(message)
        });
        match blocked {
            Blocked::Stalled(_) => self.set(condition::RECONCILING, None),
            // Never show another resource's release as this one's.
            Blocked::Claimed(_) => {
                self.status.release_status = None;
                self.status.revision = None;
            }
            _ => {}
        }
        if let Some((companion, companion_truth)) = companion {
            self.set(companion, Some((companion_truth, reason, message)));
        }
        self.set(condition::READY, Some((truth, reason, message)));
        self.write().await?;
        if let Some(action) = action.filter(|_| changed) {
            warn!(reason, %message, "not ready");
            self.event(EventType::Warning, reason, action, message.clone())
                .await;
        }
        Ok(())
    }

    /// An in-sync (or rolled-back) release: revision and readiness as Helm's storage says.
    pub fn in_sync(&mut self, history: &History, state: &ReleaseState) {
        let Some(latest) = history.latest() else {
            return;
        };
        let release = self.status.release_name.clone().unwrap_or_default();
        self.status.release_status = Some(latest.status.to_string());
        self.status.revision = Some(latest.number);
        self.set(condition::RECONCILING, None);
        if *state == ReleaseState::RolledBack {
            let message = format!(
                "upgrade failed and release {release} was rolled back to revision {}; waiting for a change in git or the spec",
                latest.number
            );
            self.set(
                condition::READY,
                Some((Truth::False, reason::ROLLED_BACK, &message)),
            );
        } else {
            let message = format!(
                "release {release} is {} at revision {}",
                latest.status, latest.number
            );
            for type_ in [condition::RELEASED, condition::READY] {
                self.set(
                    type_,
                    Some((Truth::True, reason::RELEASE_IN_SYNC, &message)),
                );
            }
        }
    }

    /// Announces a Helm action before it runs (the one early write).
    pub async fn progressing(&mut self, verb: &str) -> Result<(), Error> {
        let message = format!(
            "running helm {verb} for release {}",
            self.status.release_name.as_deref().unwrap_or_default()
        );
        self.set(
            condition::RECONCILING,
            Some((Truth::True, reason::PROGRESSING, &message)),
        );
        self.write().await
    }

    /// Logs and publishes what an action has to tell.
    pub async fn tell(&self, told: &Told) {
        let message = &told.message;
        let type_ = if told.warning {
            warn!(%message, reason = told.reason, "helm action");
            EventType::Warning
        } else {
            info!(%message);
            EventType::Normal
        };
        self.event(type_, told.reason, told.verb, message.clone())
            .await;
    }

    /// Publishes an Event about the resource.
    pub async fn event(&self, type_: EventType, reason: &str, action: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self
            .ctx
            .recorder
            .publish(&event, &self.fhr.object_ref(&()))
            .await
        {
            warn!(error = %e, "cannot publish event");
        }
    }

    /// Writes the status (nothing when it did not change) and the readiness metric.
    pub async fn write(&mut self) -> Result<(), Error> {
        self.status.observed_generation = self.generation;
        status::write(self.api, self.fhr, &self.status).await?;
        let key = format!(
            "{}/{}",
            self.fhr.namespace().unwrap_or_default(),
            self.fhr.name_any()
        );
        self.ctx
            .metrics
            .set_ready(key, Some(ready_of(&self.status)));
        Ok(())
    }
}
