//! The FluxHelmRelease reconciler: validate → gather facts → decide → act → write status.
//! Apply and cleanup are two plain functions; kube's `finalizer` chooses between them.

use crate::charts::ChartCache;
use crate::drift;
use crate::gitwatch::GitView;
use crate::helm::{self, Helm, HelmError};
use crate::metrics::Metrics;
use crate::status::{self, Truth, set_condition};
use crate::storage::{self, StorageError};
use crate::values_from::{self, SourceError};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use fhr_git::Snapshot;
use fhr_release::desired::{self, Desired, SpecError};
use fhr_release::record::{self, History};
use fhr_release::state::{self, Facts, Owner, ReleaseState, Step};
use fhr_release::values_file::Redactor;
use fhr_types::meta::{FINALIZER, condition, reason};
use fhr_types::{FluxHelmRelease, FluxHelmReleaseStatus};
use futures::channel::mpsc::UnboundedSender;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
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
}

/// Everything a reconcile needs.
pub struct Context<H: Helm> {
    /// API client.
    pub client: kube::Client,
    /// The Helm engine.
    pub helm: H,
    /// Exported charts.
    pub charts: ChartCache,
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
    Storage(#[from] StorageError),
    /// The local git mirror could not be read.
    #[error(transparent)]
    Git(#[from] fhr_git::GitError),
    /// Uninstalling on delete failed; the finalizer stays until it succeeds.
    #[error("uninstalling release {release} failed: {message}")]
    Uninstall {
        /// The release.
        release: String,
        /// Helm's message.
        message: String,
    },
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "api_error",
            Error::Storage(_) => "storage_error",
            Error::Git(_) => "git_error",
            Error::Uninstall { .. } => "uninstall_error",
            Error::Finalizer(_) => "finalizer_error",
        }
    }
}

/// Reconciles one FluxHelmRelease.
#[instrument(skip_all, fields(namespace = %fhr.namespace().unwrap_or_default(), name = %fhr.name_any()))]
pub async fn reconcile<H: Helm>(
    fhr: Arc<FluxHelmRelease>,
    ctx: Arc<Context<H>>,
) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile_started();
    let resource = ObjectRef::from_obj(&*fhr);
    let namespace = fhr.namespace().unwrap_or_else(|| "default".into());
    let api: Api<FluxHelmRelease> = Api::namespaced(ctx.client.clone(), &namespace);
    let outcome = Mutex::new(Outcome::Success);
    let result = finalizer(&api, FINALIZER, fhr, |event| async {
        match event {
            Finalizer::Apply(fhr) => apply(&fhr, &api, &ctx, &outcome).await,
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
        Ok(_) => outcome
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

/// How a reconcile that raised no error ended, for the reconciles metric: a failed Helm action or a
/// problem only the user can fix is not a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// In sync, or the action taken succeeded.
    Success,
    /// The Helm action failed (reported in status; retried with backoff).
    ActionFailed,
    /// Blocked on something only a change can fix: the spec, the chart, values, a conflict.
    Blocked,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ActionFailed => "action_failed",
            Outcome::Blocked => "blocked",
        }
    }
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

/// One reconcile's view of a resource while it builds the new status.
struct Run<'a, H: Helm> {
    fhr: &'a FluxHelmRelease,
    api: &'a Api<FluxHelmRelease>,
    ctx: &'a Context<H>,
    status: FluxHelmReleaseStatus,
    generation: Option<i64>,
    outcome: &'a Mutex<Outcome>,
}

impl<'a, H: Helm> Run<'a, H> {
    fn set_outcome(&self, outcome: Outcome) {
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = outcome;
    }

    fn condition(&mut self, type_: &str, value: Option<(Truth, &str, &str)>) {
        set_condition(&mut self.status, type_, value, self.generation);
    }

    async fn event(&self, type_: EventType, reason: &str, action: &str, note: String) {
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

    async fn save(&mut self) -> Result<(), Error> {
        self.status.observed_generation = self.generation;
        status::write(self.api, self.fhr, &self.status).await?;
        let key = format!(
            "{}/{}",
            self.fhr.namespace().unwrap_or_default(),
            self.fhr.name_any()
        );
        self.ctx
            .metrics
            .set_ready(key, Some(status::ready_of(&self.status)));
        Ok(())
    }

    /// A problem only the user can fix: report it, touch nothing, wait for a change.
    async fn stalled(&mut self, error: &SpecError) -> Result<Action, Error> {
        self.condition(condition::RECONCILING, None);
        self.condition(
            condition::STALLED,
            Some((Truth::True, error.reason, &error.message)),
        );
        self.blocked(None, error.reason, &error.message, "Validate")
            .await?;
        Ok(Action::await_change())
    }

    /// Reports what keeps the release from its desired state: `Ready=False` (and the same on
    /// `companion`, if given) with `reason` and `message`. The log line and the Warning Event come
    /// once per change, not at every re-check of an unchanged problem.
    async fn blocked(
        &mut self,
        companion: Option<&str>,
        reason: &'static str,
        message: &str,
        action: &str,
    ) -> Result<(), Error> {
        self.set_outcome(Outcome::Blocked);
        // The same problem at a newer commit is not news: no Event for every commit.
        let changed = !self.status.conditions.iter().any(|c| {
            c.type_ == condition::READY
                && c.reason == reason
                && without_commits(&c.message) == without_commits(message)
        });
        if let Some(companion) = companion {
            self.condition(companion, Some((Truth::False, reason, message)));
        }
        self.condition(condition::READY, Some((Truth::False, reason, message)));
        self.save().await?;
        if changed {
            warn!(reason, %message, "not ready");
            self.event(EventType::Warning, reason, action, message.to_owned())
                .await;
        }
        Ok(())
    }
}

async fn apply<H: Helm>(
    fhr: &FluxHelmRelease,
    api: &Api<FluxHelmRelease>,
    ctx: &Context<H>,
    outcome: &Mutex<Outcome>,
) -> Result<Action, Error> {
    let mut run = Run {
        fhr,
        api,
        ctx,
        status: fhr.status.clone().unwrap_or_default(),
        generation: fhr.metadata.generation,
        outcome,
    };
    let settings = &ctx.settings;
    let desired = match Desired::from_resource(fhr, &settings.charts_path, settings.default_timeout)
    {
        Ok(d) => d,
        Err(e) => return run.stalled(&e).await,
    };
    if desired.suspend {
        info!("suspended; no action");
        return Ok(Action::await_change());
    }
    run.condition(condition::STALLED, None);
    run.status.release_name = Some(desired.release.clone());

    let git = ctx.git.borrow().clone();
    let Some(snapshot) = git.snapshot else {
        let message = match git.error {
            Some(e) => format!("no commit fetched yet: {e}"),
            None => "no commit fetched yet".to_owned(),
        };
        run.condition(
            condition::CHART_FETCHED,
            Some((Truth::False, reason::GIT_NOT_SYNCED, &message)),
        );
        run.condition(
            condition::READY,
            Some((Truth::Unknown, reason::GIT_NOT_SYNCED, &message)),
        );
        run.save().await?;
        return Ok(Action::requeue(Duration::from_secs(5)));
    };
    let tree = match snapshot.tree_id(&desired.chart_path) {
        Ok(Some(tree)) => tree,
        Ok(None) => {
            let mut message = format!(
                "chart folder {:?} does not exist at commit {}, the newest fetched",
                desired.chart_path,
                short(&snapshot.commit())
            );
            if let Some(announced) = &git.announced {
                message.push_str(&format!(
                    "; commit {}, announced by flux-agent, is being fetched",
                    short(announced)
                ));
            }
            run.blocked(
                Some(condition::CHART_FETCHED),
                reason::CHART_NOT_FOUND,
                &message,
                "FetchChart",
            )
            .await?;
            // A commit that adds the folder re-queues this resource.
            return Ok(Action::requeue(settings.sync_interval));
        }
        Err(e) => return Err(Error::Git(e)),
    };
    run.condition(
        condition::CHART_FETCHED,
        Some((
            Truth::True,
            reason::CHART_FETCHED,
            &format!(
                "chart {:?} at commit {}",
                desired.chart_path,
                short(&snapshot.commit())
            ),
        )),
    );

    let namespace = fhr.namespace().unwrap_or_else(|| "default".into());
    let resolved = match values_from::resolve(&ctx.client, fhr, &namespace, &desired.values).await {
        Ok(resolved) => resolved,
        Err(SourceError::Api(e)) => return Err(Error::Kube(e)),
        Err(SourceError::Invalid(message)) => {
            run.blocked(None, reason::INVALID_VALUES_FROM, &message, "ReadValues")
                .await?;
            // Creating or changing the source re-queues this resource.
            return Ok(Action::requeue(settings.sync_interval));
        }
    };
    let values = resolved.values;
    let digest = desired::digest(&tree.to_string(), &values);
    let me = record::owner(&namespace, &fhr.name_any());
    // Held until this reconcile ends: what is decided below stays true while it acts.
    let _release_lock = ctx.locks.lock(&namespace, &desired.release).await;
    // Claims are read from the watch's store: it must hold every resource before they count
    // (immediate once the first list is in).
    let _ = ctx.store.wait_until_ready().await;
    let history = storage::history(&ctx.client, &namespace, &desired.release).await?;
    let claims = claims(&ctx.store, fhr, &namespace, &desired.release);
    let holder = history.latest().and_then(|r| r.owner.as_ref());
    match state::rightful(&claims, holder) {
        Some(owner) if *owner == me => {}
        other => {
            let message = match other {
                Some(owner) => format!(
                    "release {} is claimed by FluxHelmRelease {owner}, which holds it or is older; this resource takes over only when that one leaves",
                    desired.release
                ),
                None => format!("release {} is being uninstalled", desired.release),
            };
            // Never show the other resource's release as this one's.
            run.status.release_status = None;
            run.status.revision = None;
            run.blocked(
                Some(condition::RELEASED),
                reason::RELEASE_CONFLICT,
                &message,
                "Decide",
            )
            .await?;
            // The owner's cleanup re-queues this resource when it leaves.
            return Ok(Action::requeue(settings.sync_interval));
        }
    }
    let facts = Facts {
        me: &me,
        adopt: desired.adopt,
        desired_digest: &digest,
        latest: history.latest(),
        last_deployed: history.last_deployed(),
        rollback_enabled: desired.rollback.enable,
        last_attempted_digest: run.status.last_attempted_digest.as_deref(),
        holder_left: holder.is_some_and(|h| !claims.iter().any(|c| &c.owner == h)),
        recorded_revision: run.status.revision,
    };
    let state = state::classify(&facts);
    let step = state.step(&desired.release);
    tracing::debug!(?state, ?step, "decided");

    let plan = Plan {
        desired: &desired,
        namespace: &namespace,
        snapshot: &snapshot,
        digest: &digest,
        me: &me,
        values: &values,
        redactor: &resolved.secrets,
    };
    match step {
        Step::Nothing => {
            if state == ReleaseState::InSync
                && let Some(latest) = history.latest()
            {
                let drifted = drift(
                    &mut run,
                    &namespace,
                    &desired.release,
                    latest.number,
                    &digest,
                )
                .await;
                if !drifted.is_empty() {
                    let message = format!(
                        "objects changed by hand: {}; upgrading to restore them",
                        fhr_release::drift::describe(&drifted)
                    );
                    warn!(%message, "drift");
                    run.event(
                        EventType::Warning,
                        reason::DRIFT_DETECTED,
                        "DetectDrift",
                        message,
                    )
                    .await;
                    return export_and_act(&mut run, &plan, Step::Upgrade, tree).await;
                }
            }
            in_sync_status(&mut run, &history, &state);
            run.save().await?;
            Ok(Action::requeue(settings.sync_interval))
        }
        Step::Conflict(message) => {
            run.status.release_status = None;
            run.status.revision = None;
            run.blocked(
                Some(condition::RELEASED),
                reason::RELEASE_CONFLICT,
                &message,
                "Decide",
            )
            .await?;
            Ok(Action::requeue(settings.sync_interval))
        }
        Step::Unlock => {
            let Some(latest) = history.latest() else {
                return Ok(Action::requeue(Duration::from_secs(1)));
            };
            storage::mark_failed(&ctx.client, &namespace, &desired.release, latest.number).await?;
            let message = format!(
                "revision {} of release {} was left {} by an interrupted action; marked failed to recover",
                latest.number, desired.release, latest.status
            );
            info!(%message);
            run.event(EventType::Warning, reason::UNLOCKED, "Unlock", message)
                .await;
            Ok(Action::requeue(Duration::from_millis(100)))
        }
        Step::Rollback(_) => act(&mut run, &plan, step, None).await,
        step => export_and_act(&mut run, &plan, step, tree).await,
    }
}

/// Exports the chart, then acts. The chart is exported before any Helm process starts: a
/// refused chart is the repository's problem, reported as such, not a failed Helm action.
async fn export_and_act<H: Helm>(
    run: &mut Run<'_, H>,
    plan: &Plan<'_>,
    step: Step,
    tree: fhr_git::ObjectId,
) -> Result<Action, Error> {
    match run.ctx.charts.chart_dir(plan.snapshot, tree).await {
        Ok(chart_dir) => act(run, plan, step, Some(&chart_dir)).await,
        Err(e) => {
            let message = format!("chart {:?} refused: {e}", plan.desired.chart_path);
            run.blocked(
                Some(condition::CHART_FETCHED),
                reason::CHART_REFUSED,
                &message,
                "FetchChart",
            )
            .await?;
            // A commit that changes the chart folder re-queues this resource.
            Ok(Action::requeue(run.ctx.settings.sync_interval))
        }
    }
}

/// Compares an in-sync release's objects with the cluster; what drifted (after the corrections
/// that did not hold are set aside, as the status remembers them). Detection problems are logged,
/// never fatal: the release is in sync as far as Helm knows.
async fn drift<H: Helm>(
    run: &mut Run<'_, H>,
    namespace: &str,
    release: &str,
    revision: i64,
    digest: &str,
) -> Vec<fhr_release::drift::Drifted> {
    let ctx = run.ctx;
    let manifest = match storage::manifest(&ctx.client, namespace, release, revision).await {
        Ok(manifest) => manifest,
        Err(e) => {
            warn!(error = %e, "cannot read the release manifest to look for drift");
            return Vec::new();
        }
    };
    let check = drift::Check {
        release_key: &format!("{namespace}/{release}"),
        namespace,
        revision,
        manifest: &manifest,
    };
    let found = match drift::detect(&ctx.client, &ctx.resources, &ctx.confirmed, &check).await {
        Ok(found) => found,
        Err(e) => {
            warn!(error = %e, "cannot compare the release's objects with the cluster");
            return Vec::new();
        }
    };
    let (act_on, ignored) = fhr_release::drift::triage(&mut run.status.drift, digest, found);
    if !ignored.is_empty() {
        warn!(fields = ?ignored, "drift that an upgrade did not correct (something else keeps changing these values); ignoring it until the chart or values change");
    }
    act_on
}

/// What an action works from.
struct Plan<'a> {
    desired: &'a Desired,
    namespace: &'a str,
    snapshot: &'a Snapshot,
    digest: &'a str,
    me: &'a Owner,
    values: &'a serde_json::Map<String, serde_json::Value>,
    /// Removes values read from Secrets from every message.
    redactor: &'a Redactor,
}

fn in_sync_status<H: Helm>(run: &mut Run<'_, H>, history: &History, state: &ReleaseState) {
    let Some(latest) = history.latest() else {
        return;
    };
    run.status.release_status = Some(latest.status.to_string());
    run.status.revision = Some(latest.number);
    run.condition(condition::RECONCILING, None);
    if *state == ReleaseState::RolledBack {
        let message = format!(
            "upgrade failed and release {} was rolled back to revision {}; waiting for a change in git or the spec",
            run.status.release_name.as_deref().unwrap_or_default(),
            latest.number
        );
        run.condition(
            condition::READY,
            Some((Truth::False, reason::ROLLED_BACK, &message)),
        );
    } else {
        let message = format!(
            "release {} is {} at revision {}",
            run.status.release_name.as_deref().unwrap_or_default(),
            latest.status,
            latest.number
        );
        run.condition(
            condition::RELEASED,
            Some((Truth::True, reason::RELEASE_IN_SYNC, &message)),
        );
        run.condition(
            condition::READY,
            Some((Truth::True, reason::RELEASE_IN_SYNC, &message)),
        );
    }
}

/// Runs a Helm action and records its outcome; `chart_dir` is the exported chart (not needed to
/// roll back).
async fn act<H: Helm>(
    run: &mut Run<'_, H>,
    plan: &Plan<'_>,
    step: Step,
    chart_dir: Option<&std::path::Path>,
) -> Result<Action, Error> {
    let ctx = run.ctx;
    let release = plan.desired.release.as_str();
    let (verb, ok_reason, failed_reason) = match step {
        Step::Install | Step::Reinstall => {
            ("install", reason::INSTALL_SUCCEEDED, reason::INSTALL_FAILED)
        }
        Step::Rollback(_) => ("rollback", reason::ROLLED_BACK, reason::ROLLBACK_FAILED),
        _ => ("upgrade", reason::UPGRADE_SUCCEEDED, reason::UPGRADE_FAILED),
    };
    let progress = format!("running helm {verb} for release {release}");
    run.condition(
        condition::RECONCILING,
        Some((Truth::True, reason::PROGRESSING, &progress)),
    );
    run.save().await?;

    let outcome = match step {
        Step::Rollback(revision) => {
            let request = helm::Rollback {
                release,
                namespace: plan.namespace,
                revision,
                timeout: plan.desired.rollback.timeout,
                wait: plan.desired.rollback.wait,
                disable_hooks: plan.desired.rollback.disable_hooks,
            };
            timed(ctx, "rollback", ctx.helm.rollback(&request)).await
        }
        ref step => {
            // A failed first install must go before a new install can succeed.
            let removed = match step {
                Step::Reinstall => {
                    timed(
                        ctx,
                        "uninstall",
                        ctx.helm
                            .uninstall(release, plan.namespace, plan.desired.timeout),
                    )
                    .await
                }
                _ => Ok(()),
            };
            match removed {
                Ok(()) => match chart_dir {
                    Some(chart_dir) => upgrade(ctx, plan, chart_dir, verb).await,
                    None => Err(HelmError::Io(
                        "no chart exported for an install or upgrade".into(),
                    )),
                },
                Err(e) => Err(e),
            }
        }
    };
    run.status.last_attempted_digest = Some(plan.digest.to_owned());
    let history = storage::history(&ctx.client, plan.namespace, release).await?;
    if let Some(latest) = history.latest() {
        run.status.release_status = Some(latest.status.to_string());
        run.status.revision = Some(latest.number);
    }
    run.condition(condition::RECONCILING, None);
    match outcome {
        Ok(()) => {
            let revision = run.status.revision.unwrap_or_default();
            let message = match step {
                Step::Rollback(to) => format!(
                    "upgrade failed; release {release} rolled back to revision {to} (now revision {revision}); waiting for a change in git or the spec"
                ),
                _ => format!("helm {verb} succeeded: release {release} is at revision {revision}"),
            };
            run.status.failures = None;
            if matches!(step, Step::Rollback(_)) {
                run.status.failures = Some(run.status.failures.unwrap_or(0) + 1);
                run.condition(
                    condition::RELEASED,
                    Some((Truth::False, ok_reason, &message)),
                );
                run.condition(condition::READY, Some((Truth::False, ok_reason, &message)));
            } else {
                run.status.last_applied_digest = Some(plan.digest.to_owned());
                run.status.chart_revision = Some(plan.snapshot.commit());
                run.condition(
                    condition::RELEASED,
                    Some((Truth::True, ok_reason, &message)),
                );
                run.condition(condition::READY, Some((Truth::True, ok_reason, &message)));
            }
            run.save().await?;
            info!(%message);
            run.event(EventType::Normal, ok_reason, verb, message).await;
            Ok(Action::requeue(ctx.settings.sync_interval))
        }
        Err(error) => {
            run.set_outcome(Outcome::ActionFailed);
            let failures = run.status.failures.unwrap_or(0) + 1;
            run.status.failures = Some(failures);
            let explained = explain(ctx, chart_dir, &error).await;
            let message = plan.redactor.redact(&format!(
                "helm {verb} of release {release} failed: {explained}"
            ));
            run.condition(
                condition::RELEASED,
                Some((Truth::False, failed_reason, &message)),
            );
            run.condition(
                condition::READY,
                Some((Truth::False, failed_reason, &message)),
            );
            run.save().await?;
            warn!(%message, failures, "helm action failed");
            run.event(EventType::Warning, failed_reason, verb, message)
                .await;
            Ok(Action::requeue(backoff(failures)))
        }
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

async fn upgrade<H: Helm>(
    ctx: &Context<H>,
    plan: &Plan<'_>,
    chart_dir: &std::path::Path,
    verb: &'static str,
) -> Result<(), HelmError> {
    let labels = record::labels(plan.me, plan.digest);
    let request = helm::Upgrade {
        release: &plan.desired.release,
        namespace: plan.namespace,
        chart_dir,
        values: plan.values,
        labels: &labels,
        timeout: plan.desired.timeout,
        wait: plan.desired.wait,
        max_history: plan.desired.max_history,
    };
    timed(ctx, verb, ctx.helm.upgrade(&request)).await
}

async fn timed<H: Helm>(
    ctx: &Context<H>,
    action: &'static str,
    future: impl std::future::Future<Output = Result<(), HelmError>>,
) -> Result<(), HelmError> {
    let started = Instant::now();
    let result = future.await;
    ctx.metrics.helm_action(action, result.is_ok(), started);
    result
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
    let history = storage::history(&ctx.client, &namespace, &release).await?;
    let me = record::owner(&namespace, &fhr.name_any());
    let ours = history
        .latest()
        .is_some_and(|r| r.owner.as_ref() == Some(&me));
    if !ours {
        info!(%release, "release is absent or not managed by this resource; nothing to uninstall");
        return Ok(Action::await_change());
    }
    let waiting = |ctx: &Context<H>| {
        for claim in claims(&ctx.store, fhr, &namespace, &release) {
            if claim.owner != me && !claim.deleting {
                let waiting = ObjectRef::new(&claim.owner.name).within(&namespace);
                let _ = ctx.requeue.unbounded_send(waiting);
            }
        }
    };
    let timeout =
        Desired::from_resource(fhr, &ctx.settings.charts_path, ctx.settings.default_timeout)
            .map(|d| d.timeout)
            .unwrap_or(ctx.settings.default_timeout);
    match timed(
        ctx,
        "uninstall",
        ctx.helm.uninstall(&release, &namespace, timeout),
    )
    .await
    {
        Ok(()) => {
            ctx.confirmed
                .forget(&format!("{namespace}/{release}"))
                .await;
            info!(%release, "release uninstalled");
            // Whoever else asks for this release goes now, not at its next re-check.
            waiting(ctx);
            Ok(Action::await_change())
        }
        Err(e) => {
            let event = Event {
                type_: EventType::Warning,
                reason: reason::UNINSTALL_FAILED.into(),
                note: Some(format!("uninstalling release {release} failed: {e}")),
                action: "uninstall".into(),
                secondary: None,
            };
            let _ = ctx.recorder.publish(&event, &fhr.object_ref(&())).await;
            Err(Error::Uninstall {
                release,
                message: e.to_string(),
            })
        }
    }
}

/// Every resource in `namespace` that asks for `release` (this one included, even before the
/// watch has shown it), as claims for [`decide::rightful`].
fn claims(
    store: &Store<FluxHelmRelease>,
    me: &FluxHelmRelease,
    namespace: &str,
    release: &str,
) -> Vec<state::Claim> {
    let claim = |fhr: &FluxHelmRelease| state::Claim {
        owner: record::owner(namespace, &fhr.name_any()),
        created: fhr
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        deleting: fhr.metadata.deletion_timestamp.is_some(),
    };
    let mut claims: Vec<state::Claim> = store
        .state()
        .iter()
        .filter(|fhr| fhr.namespace().as_deref() == Some(namespace))
        .filter(|fhr| fhr.name_any() != me.name_any())
        .filter(|fhr| {
            fhr_types::naming::release_name(
                namespace,
                &fhr.name_any(),
                fhr.spec.release_name.as_deref(),
            )
            .is_ok_and(|name| name == release)
        })
        .map(|fhr| claim(fhr))
        .collect();
    claims.push(claim(me));
    claims
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
