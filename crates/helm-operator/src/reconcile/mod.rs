//! The FluxHelmRelease reconciler, read as its state machine: [`gather`] the facts (drift
//! included) into a named state, take the one step the state calls for (`fhr_release::actions`),
//! and [`report`] once. kube's `finalizer` chooses between applying and cleaning up.

mod gather;
mod report;

use crate::charts::ChartCache;
use crate::gitwatch::GitView;
use crate::identity::Identities;
use crate::metrics::Metrics;
use crate::{drift, storage};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use fhr_release::actions::{self, Plan};
use fhr_release::conditions::Truth;
use fhr_release::desired::Desired;
use fhr_release::helm::{Helm, HelmError};
use fhr_release::record;
use fhr_release::state::{ReleaseState, Step};
use fhr_runtime::shards::Decision;
use fhr_types::FluxHelmRelease;
use fhr_types::meta::{FINALIZER, condition, reason};
use futures::channel::mpsc::UnboundedSender;
use gather::{Blocked, Gather, Gathered, GatheredChart};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use report::Report;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, instrument, warn};

/// Settings the reconciler takes from flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The repository folder holding the charts.
    pub charts_path: String,
    /// Helm's timeout when a resource sets none.
    pub default_timeout: Duration,
    /// How often a release is checked again when nothing changed.
    pub sync_interval: Duration,
    /// The ServiceAccount releases act as when they name none (`--default-service-account`).
    pub default_service_account: Option<String>,
}

impl Settings {
    /// The ServiceAccount a resource's Helm actions run as: its own, else the default.
    pub fn service_account<'a>(&'a self, fhr: &'a FluxHelmRelease) -> Option<&'a str> {
        fhr.spec
            .service_account_name
            .as_deref()
            .or(self.default_service_account.as_deref())
    }
}

/// Everything a reconcile needs.
pub struct Context<H: Helm> {
    /// The operator's own API client: its resources, Events, discovery.
    pub client: kube::Client,
    /// Clients acting as a release's ServiceAccount, for everything done for the release.
    pub identities: Arc<Identities>,
    /// The Helm engine.
    pub helm: H,
    /// Exported charts.
    pub charts: ChartCache,
    /// Charts from Helm chart repositories.
    pub repositories: Arc<crate::repositories::Repositories>,
    /// The latest fetched commit.
    pub git: watch::Receiver<GitView>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Kubernetes Events.
    pub recorder: Recorder,
    /// Flags.
    pub settings: Settings,
    /// Chart objects a dry-run apply found clean, so they are not asked about again.
    pub confirmed: drift::Confirmed,
    /// API resources of chart objects, for drift detection.
    pub resources: drift::Resources,
    /// Every FluxHelmRelease the operator watches, to find all that ask for one release.
    pub store: Store<FluxHelmRelease>,
    /// Re-queues resources (those waiting for a release another resource gave up).
    pub requeue: UnboundedSender<ObjectRef<FluxHelmRelease>>,
    /// One action at a time per release.
    pub locks: ReleaseLocks,
    /// Backoff of each resource whose reconcile failed, until one succeeds.
    pub retries: Retries,
    /// Which releases this replica acts on.
    pub shards: Arc<crate::shards::Shards>,
}

/// Per-resource backoff after failed reconciles (the API or storage unreachable): 1 s doubling to
/// 5 minutes, jittered so that resources failing on one outage do not all return at once.
#[derive(Default)]
pub struct Retries {
    by_resource: std::sync::Mutex<HashMap<ObjectRef<FluxHelmRelease>, ExponentialBackoff>>,
}

impl Retries {
    /// The delay before retrying `resource` after one more failure.
    fn next(&self, resource: ObjectRef<FluxHelmRelease>) -> Duration {
        self.by_resource
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(resource)
            .or_insert_with(|| {
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_secs(1))
                    .with_max_delay(Duration::from_secs(300))
                    .with_jitter()
                    .without_max_times()
                    .build()
            })
            .next()
            .unwrap_or(Duration::from_secs(300))
    }

    /// Forgets `resource`'s failures (it reconciled).
    fn reset(&self, resource: &ObjectRef<FluxHelmRelease>) {
        self.by_resource
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(resource);
    }
}

/// One lock per release (`namespace/name`): actions on a release never overlap, whichever
/// resources ask for it.
#[derive(Default)]
pub struct ReleaseLocks {
    by_release: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ReleaseLocks {
    /// Waits for the release's lock.
    async fn lock(&self, namespace: &str, release: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .by_release
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(format!("{namespace}/{release}"))
            .or_default()
            .clone();
        lock.lock_owned().await
    }
}

/// Errors that retrying may fix (the API or storage was unreachable, an uninstall failed).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("API: {0}")]
    Kube(#[from] kube::Error),
    /// Helm's storage could not be read.
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    /// The local git mirror could not be read.
    #[error(transparent)]
    Git(#[from] fhr_git::GitError),
    /// Unlocking an interrupted revision failed.
    #[error("unlocking release {release} failed: {source}")]
    Unlock {
        /// The release.
        release: String,
        /// Why.
        #[source]
        source: HelmError,
    },
    /// Uninstalling on delete failed; the finalizer stays until it succeeds.
    #[error("uninstalling release {release} failed: {source}")]
    Uninstall {
        /// The release.
        release: String,
        /// Why.
        #[source]
        source: HelmError,
    },
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// The release's ServiceAccount may not read what the reconcile needs (reported in status;
    /// retried with backoff, as RBAC may be granted later).
    #[error("{0}")]
    Forbidden(String),
    /// A chart repository could not be reached (reported in status; retried with backoff).
    #[error("{0}")]
    ChartPull(String),
    /// This replica stopped acting on the release before or during its uninstall (it moved to
    /// another replica, or this one lost its Lease): an error, so that the finalizer stays for
    /// whoever acts on it now.
    #[error("this replica no longer acts on the release")]
    Moved,
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "api_error",
            Error::Storage(_) => "storage_error",
            Error::Git(_) => "git_error",
            Error::Unlock { .. } => "unlock_error",
            Error::Uninstall { .. } => "uninstall_error",
            Error::Finalizer(_) => "finalizer_error",
            Error::Forbidden(_) => "forbidden",
            Error::ChartPull(_) => "chart_pull_error",
            Error::Moved => "moved",
        }
    }
}

/// How a reconcile that raised no error counts in the reconciles metric: a failed Helm action or
/// a problem only the user can fix is not a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultLabel {
    /// In sync, or the action taken succeeded.
    Success,
    /// The Helm action failed (reported in status; retried with backoff).
    ActionFailed,
    /// Blocked on something only a change can fix: the spec, the chart, values, a conflict.
    Blocked,
}

impl ResultLabel {
    fn label(self) -> &'static str {
        match self {
            ResultLabel::Success => "success",
            ResultLabel::ActionFailed => "action_failed",
            ResultLabel::Blocked => "blocked",
        }
    }
}

/// Reconciles one FluxHelmRelease.
#[instrument(skip_all, fields(namespace = %fhr.namespace().unwrap_or_default(), name = %fhr.name_any()))]
pub async fn reconcile<H: Helm>(
    fhr: Arc<FluxHelmRelease>,
    ctx: Arc<Context<H>>,
) -> Result<Action, Error> {
    // Another replica's release is not reconciled here at all, not even counted.
    match ctx.shards.decide(&fhr) {
        Decision::Act => {}
        Decision::Wait(handover) => return Ok(Action::requeue(handover)),
        Decision::Elsewhere(_) => return Ok(Action::await_change()),
    }
    let timer = ctx.metrics.reconcile_started();
    let resource = ObjectRef::from_obj(&*fhr);
    let namespace = fhr.namespace().unwrap_or_else(|| "default".into());
    let api: Api<FluxHelmRelease> = Api::namespaced(ctx.client.clone(), &namespace);
    let result_label = Mutex::new(ResultLabel::Success);
    let result = finalizer(&api, FINALIZER, fhr, |event| async {
        match event {
            Finalizer::Apply(fhr) => apply(&fhr, &api, &ctx, &result_label).await,
            Finalizer::Cleanup(fhr) => cleanup(&fhr, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    timer.finish(match &result {
        Ok(_) => result_label
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .label(),
        Err(e) => e.metric_label(),
    });
    if result.is_ok() {
        ctx.retries.reset(&resource);
    }
    result
}

/// Transient errors: retry with this resource's own backoff.
pub fn error_policy<H: Helm>(
    fhr: Arc<FluxHelmRelease>,
    error: &Error,
    ctx: Arc<Context<H>>,
) -> Action {
    let delay = ctx.retries.next(ObjectRef::from_obj(&*fhr));
    warn!(namespace = %fhr.namespace().unwrap_or_default(), name = %fhr.name_any(), %error, retry_in = ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// Backoff after a failed Helm action, by the failures counted in status (so it survives a
/// restart): 10 s, 20 s, 40 s, … at most 10 minutes.
fn backoff(failures: i64) -> Duration {
    let max = Duration::from_secs(600);
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(10))
        .with_max_delay(max)
        .without_max_times()
        .build()
        .nth(failures.clamp(1, 64) as usize - 1)
        .unwrap_or(max)
}

/// Gather, decide, act, report.
async fn apply<H: Helm>(
    fhr: &FluxHelmRelease,
    api: &Api<FluxHelmRelease>,
    ctx: &Context<H>,
    result_label: &Mutex<ResultLabel>,
) -> Result<Action, Error> {
    let settings = &ctx.settings;
    let mut report = Report::new(fhr, api, ctx, result_label);
    let gathered = match gather::gather(fhr, ctx, &mut report.status).await? {
        Gather::Suspended => {
            info!("suspended; no action");
            return Ok(Action::await_change());
        }
        Gather::Blocked(blocked) => {
            report.blocked(&blocked).await?;
            return match blocked {
                // As an error, so that it is retried with this resource's backoff.
                Blocked::Forbidden(message) => Err(Error::Forbidden(message)),
                Blocked::ChartPullFailed {
                    message,
                    transient: true,
                } => Err(Error::ChartPull(message)),
                blocked => Ok(requeue_blocked(&blocked, settings)),
            };
        }
        Gather::Facts(gathered) => *gathered,
    };
    report.set(condition::STALLED, None);
    let fetched = gather::chart_fetched(&gathered);
    report.set(
        condition::CHART_FETCHED,
        Some((Truth::True, reason::CHART_FETCHED, &fetched)),
    );
    decide_and_act(report, gathered).await
}

/// When a blocked resource is looked at again.
fn requeue_blocked(blocked: &Blocked, settings: &Settings) -> Action {
    match blocked {
        // Only editing the spec helps.
        Blocked::Stalled(_) => Action::await_change(),
        Blocked::GitNotSynced(_) => Action::requeue(Duration::from_secs(5)),
        // A commit that changes the chart folder, a change to a valuesFrom source, or the
        // owner leaving re-queues this resource; the interval is the safety net.
        _ => Action::requeue(settings.sync_interval),
    }
}

/// Decides the step from the gathered facts (unlocking first when an action was interrupted),
/// takes it, and reports.
async fn decide_and_act<H: Helm>(
    mut report: Report<'_, H>,
    mut gathered: Gathered,
) -> Result<Action, Error> {
    let ctx = report.ctx();
    let settings = &ctx.settings;
    let mut step = gathered.state.step(&gathered.desired.release);
    tracing::debug!(state = ?gathered.state, ?step, "decided");
    if step == Step::Unlock {
        // Mark the interrupted revision failed, then decide again from Helm's history alone.
        let Some(latest) = gathered.history.latest().cloned() else {
            return Ok(Action::requeue(Duration::from_secs(1)));
        };
        if !ctx.shards.may_unlock(&latest, gathered.desired.timeout) {
            // Another replica's action in flight: it finishes, or that replica's Lease expires.
            info!(
                revision = latest.number,
                status = %latest.status,
                actor = latest.actor.as_deref().unwrap_or("unknown"),
                "release pending by a live replica; waiting for it"
            );
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
        let release = gathered.desired.release.clone();
        let told = actions::unlock(
            &ctx.helm,
            &release,
            &gathered.namespace,
            &latest,
            gathered.desired.service_account.as_deref(),
        )
        .await
        .map_err(|source| Error::Unlock { release, source })?;
        report.tell(&told).await;
        let history = storage::history(
            &gathered.client,
            &gathered.namespace,
            &gathered.desired.release,
        )
        .await?;
        gathered.reclassify(history, &report.status);
        step = gathered.state.step(&gathered.desired.release);
        tracing::debug!(state = ?gathered.state, ?step, "decided after unlocking");
    }
    match step {
        Step::Nothing => {
            report.in_sync(&gathered.history, &gathered.state);
            report.write().await?;
            Ok(Action::requeue(settings.sync_interval))
        }
        Step::Conflict(message) => {
            report.blocked(&Blocked::Claimed(message)).await?;
            Ok(Action::requeue(settings.sync_interval))
        }
        // Still locked after unlocking: another writer; look again soon.
        Step::Unlock => Ok(Action::requeue(Duration::from_secs(1))),
        step => act(&mut report, &gathered, step).await,
    }
}

/// Takes a Helm action and reports its outcome. The chart is exported first: a refused chart is
/// the repository's problem, reported as such, not a failed Helm action.
async fn act<H: Helm>(
    report: &mut Report<'_, H>,
    gathered: &Gathered,
    step: Step,
) -> Result<Action, Error> {
    let ctx = report.ctx();
    let chart_dir = match (&step, &gathered.chart) {
        (Step::Rollback(_), _) => None,
        (_, GatheredChart::Repository(fetched)) => Some(fetched.dir.clone()),
        (_, GatheredChart::Git { snapshot, tree }) => {
            match ctx.charts.chart_dir(snapshot, *tree).await {
                Ok(dir) => Some(dir),
                Err(e) => {
                    let message =
                        format!("chart {} refused: {e}", gathered.desired.chart.describe());
                    report.blocked(&Blocked::ChartRefused(message)).await?;
                    // A commit that changes the chart folder re-queues this resource.
                    return Ok(Action::requeue(ctx.settings.sync_interval));
                }
            }
        }
    };
    if let ReleaseState::Drifted(drifted) = &gathered.state {
        let message = format!(
            "objects changed by hand: {}; upgrading to restore them",
            fhr_release::drift::describe(drifted)
        );
        warn!(%message, "drift");
        report
            .event(
                EventType::Warning,
                reason::DRIFT_DETECTED,
                "DetectDrift",
                message,
            )
            .await;
    }
    if let (Step::Upgrade, GatheredChart::Repository(fetched)) = (&step, &gathered.chart)
        && let Some((previous, _)) = report
            .status
            .chart_revision
            .as_deref()
            .and_then(|r| r.split_once('@'))
        && previous != fetched.version
    {
        let message = format!(
            "chart {} now resolves to version {} (was {previous}); upgrading",
            gathered.desired.chart.describe(),
            fetched.version
        );
        info!(%message, "new chart version");
        report
            .event(
                EventType::Normal,
                reason::CHART_VERSION_RESOLVED,
                "FetchChart",
                message,
            )
            .await;
    }
    let labels = record::labels(&gathered.me, &gathered.digest, &ctx.shards.replica);
    let chart_revision = gathered.chart.revision();
    let plan = Plan {
        desired: &gathered.desired,
        namespace: &gathered.namespace,
        chart_dir: chart_dir.as_deref(),
        values: &gathered.values,
        labels: &labels,
        digest: &gathered.digest,
        chart_revision: &chart_revision,
        redactor: &gathered.redactor,
    };
    // Fencing: the membership may have changed while the facts were gathered.
    if ctx.shards.decide(report.resource()) != Decision::Act {
        info!("release moved to another replica; not acting");
        return Ok(Action::await_change());
    }
    report.status.last_action_by = Some(ctx.shards.replica.clone());
    if let Some(verb) = actions::verb(&step) {
        report.progressing(verb).await?;
    }
    let taken = tokio::select! {
        taken = actions::take(&ctx.helm, &step, &plan) => taken,
        () = ctx.shards.fenced() => {
            warn!(?step, "this replica lost its Lease mid-action; the action is abandoned");
            return Ok(Action::await_change());
        }
    };
    let Some(done) = taken else {
        return Ok(Action::requeue(ctx.settings.sync_interval));
    };
    let revision = match &done.result {
        // The engine's answer says which revision the action left; the CLI's does not.
        Ok(Some(landed)) => Some((landed.revision, landed.status.clone())),
        _ => storage::history(
            &gathered.client,
            &gathered.namespace,
            &gathered.desired.release,
        )
        .await?
        .latest()
        .map(|latest| (latest.number, latest.status.to_string())),
    };
    let error = match &done.result {
        Ok(_) => None,
        Err(e) => Some(explain(ctx, chart_dir.as_deref(), e).await),
    };
    let generation = report.generation();
    let told = done.record(
        &mut report.status,
        &plan,
        revision,
        error.as_deref(),
        generation,
    );
    report.write().await?;
    report.tell(&told).await;
    if done.result.is_ok() {
        Ok(Action::requeue(ctx.settings.sync_interval))
    } else {
        report.count_as(ResultLabel::ActionFailed);
        Ok(Action::requeue(backoff(
            report.status.failures.unwrap_or(1),
        )))
    }
}

/// Helm's error, or a message a user can act on where Helm's misleads.
async fn explain<H: Helm>(
    ctx: &Context<H>,
    chart_dir: Option<&std::path::Path>,
    error: &HelmError,
) -> String {
    let text = error.to_string();
    let Some(unserved) = fhr_release::explain::unserved_kind(&text) else {
        return text;
    };
    let templates = chart_dir
        .map(|dir| fhr_release::explain::templates_declaring(dir, &unserved))
        .unwrap_or_default();
    let served = crate::explain::served_versions(&ctx.client, &unserved.kind).await;
    fhr_release::explain::describe(&unserved, &templates, &served)
}

/// Uninstalls the release on delete; only a release this resource manages is touched.
async fn cleanup<H: Helm>(fhr: &FluxHelmRelease, ctx: &Context<H>) -> Result<Action, Error> {
    let namespace = fhr.namespace().unwrap_or_else(|| "default".into());
    let key = format!("{namespace}/{}", fhr.name_any());
    ctx.metrics.set_ready(key, None);
    // The spec may have become invalid since the release was made: prefer the recorded name.
    let release = fhr
        .status
        .as_ref()
        .and_then(|s| s.release_name.clone())
        .or_else(|| {
            fhr_types::naming::release_name(
                &namespace,
                &fhr.name_any(),
                fhr.spec.release_name.as_deref(),
            )
            .ok()
        });
    let Some(release) = release else {
        return Ok(Action::await_change());
    };
    let _release_lock = ctx.locks.lock(&namespace, &release).await;
    let service_account = ctx.settings.service_account(fhr);
    let as_release = ctx.identities.client(&namespace, service_account)?;
    let history =
        gather::release_history(&as_release, &namespace, service_account, &release).await?;
    let me = record::owner(&namespace, &fhr.name_any());
    let ours = history
        .latest()
        .is_some_and(|r| r.owner.as_ref() == Some(&me));
    if !ours {
        info!(%release, "release is absent or not managed by this resource; nothing to uninstall");
        return Ok(Action::await_change());
    }
    let timeout =
        Desired::from_resource(fhr, &ctx.settings.charts_path, ctx.settings.default_timeout)
            .map(|d| d.timeout)
            .unwrap_or(ctx.settings.default_timeout);
    if ctx.shards.decide(fhr) != Decision::Act {
        return Err(Error::Moved);
    }
    let uninstalled = tokio::select! {
        result = actions::uninstall(&ctx.helm, &release, &namespace, timeout, service_account) => result,
        () = ctx.shards.fenced() => return Err(Error::Moved),
    };
    if let Err((told, source)) = uninstalled {
        let event = kube::runtime::events::Event {
            type_: EventType::Warning,
            reason: told.reason.into(),
            note: Some(told.message),
            action: told.verb.into(),
            secondary: None,
        };
        let _ = ctx
            .recorder
            .publish(&event, &kube::Resource::object_ref(fhr, &()))
            .await;
        return Err(Error::Uninstall { release, source });
    }
    ctx.confirmed
        .forget(&format!("{namespace}/{release}"))
        .await;
    info!(%release, "release uninstalled");
    // Whoever else asks for this release goes now, not at its next re-check.
    for claim in gather::claims(&ctx.store, fhr, &namespace, &release) {
        if claim.owner != me && !claim.deleting {
            let waiting = ObjectRef::new(&claim.owner.name).within(&namespace);
            let _ = ctx.requeue.unbounded_send(waiting);
        }
    }
    Ok(Action::await_change())
}

/// A message with commit ids (12 or more hex digits) and what follows a `;` left out, to tell one
/// problem from another.
fn without_commits(message: &str) -> String {
    let message = message.split(';').next().unwrap_or_default();
    message
        .split(' ')
        .map(|word| {
            let hex = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
            if hex.len() >= 12 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
                "…"
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::backoff;

    use std::time::Duration;

    #[test]
    fn the_same_problem_at_another_commit_is_the_same_problem() {
        use super::without_commits;
        let a = "chart folder \"x\" does not exist at commit 0123456789ab, the newest fetched";
        let b = "chart folder \"x\" does not exist at commit ba9876543210, the newest fetched; commit ffffffffffff, announced by flux-agent, is being fetched";
        assert_eq!(without_commits(a), without_commits(b));
        assert_ne!(
            without_commits(a),
            without_commits("chart folder \"y\" does not exist at commit 0123456789ab")
        );
    }

    #[test]
    fn each_resource_backs_off_on_its_own_until_it_reconciles() {
        use super::Retries;
        use kube::runtime::reflector::ObjectRef;
        let retries = Retries::default();
        let a = ObjectRef::new("a").within("team");
        let b = ObjectRef::new("b").within("team");
        let first = retries.next(a.clone());
        let mut last = first;
        for _ in 0..12 {
            last = retries.next(a.clone());
        }
        assert!(last > first, "{first:?} then {last:?}");
        assert!(last <= Duration::from_secs(600), "{last:?}");
        // Another resource starts from the beginning; a success resets.
        assert!(retries.next(b) <= Duration::from_secs(2));
        retries.reset(&a);
        assert!(retries.next(a) <= Duration::from_secs(2));
    }

    #[test]
    fn backoff_doubles_up_to_ten_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(4), Duration::from_secs(80));
        assert_eq!(backoff(50), Duration::from_secs(600));
    }
}
