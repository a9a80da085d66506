//! Gather: everything a decision needs, read once — the validated spec, the chart at the fetched
//! commit, the merged values, Helm's history, who may own the release, and (for a release in sync)
//! whether its objects drifted — ending in the release's named state. Anything that stops the
//! reconcile before a decision is a [`Blocked`], reported and never acted on.

use super::{Context, Error, short};
use crate::gitwatch::GitView;
use crate::identity::forbidden;
use crate::repositories::{Access, Credentials, FetchedChart};
use crate::{drift, storage, values_from};
use fhr_git::{ObjectId, Snapshot};
use fhr_release::desired::{self, ChartSource, Desired, SpecError};
use fhr_release::drift::Drifted;
use fhr_release::helm::Helm;
use fhr_release::record::{self, History};
use fhr_release::state::{self, Claim, Facts, Owner, ReleaseState};
use fhr_release::values_file::Redactor;
use fhr_types::{FluxHelmRelease, FluxHelmReleaseStatus};
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use serde_json::{Map, Value};
use tokio::sync::OwnedMutexGuard;
use tracing::warn;

/// Why a reconcile stops before deciding: each is reported on the resource, and nothing is done
/// to the release.
#[derive(Debug)]
pub enum Blocked {
    /// The spec is unusable: only editing it helps (Stalled).
    Stalled(SpecError),
    /// No commit fetched yet.
    GitNotSynced(String),
    /// The chart folder is not at the fetched commit.
    ChartNotFound(String),
    /// A valuesFrom source is missing or unusable.
    InvalidValuesFrom(String),
    /// The chart folder holds something refused (found when exporting it, before any Helm step).
    ChartRefused(String),
    /// Another resource owns, or has the prior claim to, the release.
    Claimed(String),
    /// The release's ServiceAccount may not read Helm's storage or a valuesFrom source.
    Forbidden(String),
    /// A repository chart is unavailable; `transient` when retrying may help (the network).
    ChartPullFailed {
        /// What went wrong.
        message: String,
        /// Retry with backoff rather than wait for a change.
        transient: bool,
    },
}

/// The chart a decision is made with.
pub enum GatheredChart {
    /// A folder of the fetched commit.
    Git {
        /// The commit.
        snapshot: Snapshot,
        /// The chart folder's tree at that commit.
        tree: ObjectId,
    },
    /// A repository chart, verified and unpacked.
    Repository(FetchedChart),
}

impl GatheredChart {
    /// What names the chart's content in the release digest: the git tree id (as always, so
    /// releases made before repository charts existed stay in sync), or the archive's digest.
    fn identity(&self) -> String {
        match self {
            GatheredChart::Git { tree, .. } => tree.to_string(),
            GatheredChart::Repository(fetched) => format!("sha256:{}", fetched.digest),
        }
    }

    /// `status.chartRevision`: the commit, or `<version>@sha256:<digest>`.
    pub fn revision(&self) -> String {
        match self {
            GatheredChart::Git { snapshot, .. } => snapshot.commit(),
            GatheredChart::Repository(fetched) => {
                format!("{}@sha256:{}", fetched.version, fetched.digest)
            }
        }
    }
}

/// What a decision is made from.
pub struct Gathered {
    /// The release the spec asks for.
    pub desired: Desired,
    /// The release namespace.
    pub namespace: String,
    /// The chart.
    pub chart: GatheredChart,
    /// The merged values.
    pub values: Map<String, Value>,
    /// Values from Secrets, to keep out of messages.
    pub redactor: Redactor,
    /// Digest of chart and values.
    pub digest: String,
    /// This resource, as an owner in Helm's storage.
    pub me: Owner,
    /// The API client acting for the release (as its ServiceAccount, if it has one).
    pub client: kube::Client,
    /// Helm's history of the release.
    pub history: History,
    /// The release's state.
    pub state: ReleaseState,
    /// The holder in storage no longer asks for the release.
    pub holder_left: bool,
    /// Held while this reconcile decides and acts: nothing else acts on the release meanwhile.
    _release_lock: OwnedMutexGuard<()>,
}

/// How gathering ended.
pub enum Gather {
    /// Everything a decision needs.
    Facts(Box<Gathered>),
    /// Stopped before deciding.
    Blocked(Blocked),
    /// `spec.suspend`: nothing is done at all.
    Suspended,
}

/// Gathers the facts for `fhr`; `status` is the status being built (the spec's release name is
/// recorded, and drift's memory lives there).
pub async fn gather<H: Helm>(
    fhr: &FluxHelmRelease,
    ctx: &Context<H>,
    status: &mut FluxHelmReleaseStatus,
) -> Result<Gather, Error> {
    let settings = &ctx.settings;
    let mut desired =
        match Desired::from_resource(fhr, &settings.charts_path, settings.default_timeout) {
            Ok(desired) => desired,
            Err(e) => return Ok(Gather::Blocked(Blocked::Stalled(e))),
        };
    desired.service_account = settings.service_account(fhr).map(str::to_owned);
    if desired.suspend {
        return Ok(Gather::Suspended);
    }
    status.release_name = Some(desired.release.clone());
    let namespace = fhr.namespace().unwrap_or_else(|| "default".into());
    let account = desired.service_account.as_deref();
    let client = ctx.identities.client(&namespace, account)?;

    let chart = match &desired.chart {
        ChartSource::Git { path } => {
            let git = ctx.git.borrow().clone();
            let Some(snapshot) = git.snapshot.clone() else {
                let message = match &git.error {
                    Some(e) => format!("no commit fetched yet: {e}"),
                    None => "no commit fetched yet".to_owned(),
                };
                return Ok(Gather::Blocked(Blocked::GitNotSynced(message)));
            };
            let Some(tree) = snapshot.tree_id(path)? else {
                return Ok(Gather::Blocked(Blocked::ChartNotFound(chart_not_found(
                    path, &snapshot, &git,
                ))));
            };
            GatheredChart::Git { snapshot, tree }
        }
        ChartSource::Repository(source) => {
            let access = match repository_access(&client, &namespace, account, source).await {
                Ok(access) => access,
                Err(blocked) => return Ok(Gather::Blocked(blocked)),
            };
            match ctx.repositories.chart(source, &access).await {
                Ok(fetched) => GatheredChart::Repository(fetched),
                Err(e) => {
                    return Ok(Gather::Blocked(Blocked::ChartPullFailed {
                        message: format!("chart {}: {e}", desired.chart.describe()),
                        transient: e.transient(),
                    }));
                }
            }
        }
    };

    let resolved = match values_from::resolve(&client, fhr, &namespace, &desired.values).await {
        Ok(resolved) => resolved,
        Err(values_from::SourceError::Api(e)) => return Err(Error::Kube(e)),
        Err(values_from::SourceError::Invalid(message)) => {
            return Ok(Gather::Blocked(Blocked::InvalidValuesFrom(message)));
        }
        Err(values_from::SourceError::Forbidden { what, message }) => {
            return Ok(Gather::Blocked(Blocked::Forbidden(format!(
                "{} may not read {what}: {message}",
                acting(&namespace, account)
            ))));
        }
    };
    let digest = desired::digest(&chart.identity(), &resolved.values);
    let me = record::owner(&namespace, &fhr.name_any());

    let release_lock = ctx.locks.lock(&namespace, &desired.release).await;
    // Claims are read from the watch's store: it must hold every resource before they count
    // (immediate once the first list is in).
    let _ = ctx.store.wait_until_ready().await;
    let history = match release_history(&client, &namespace, account, &desired.release).await {
        Ok(history) => history,
        Err(Error::Forbidden(message)) => return Ok(Gather::Blocked(Blocked::Forbidden(message))),
        Err(e) => return Err(e),
    };
    let claims = claims(&ctx.store, fhr, &namespace, &desired.release);
    let holder = history.latest().and_then(|r| r.owner.as_ref());
    match state::rightful(&claims, holder) {
        Some(owner) if *owner == me => {}
        Some(owner) => {
            return Ok(Gather::Blocked(Blocked::Claimed(format!(
                "release {} is claimed by FluxHelmRelease {owner}, which holds it or is older; this resource takes over only when that one leaves",
                desired.release
            ))));
        }
        None => {
            return Ok(Gather::Blocked(Blocked::Claimed(format!(
                "release {} is being uninstalled",
                desired.release
            ))));
        }
    }
    let holder_left = holder.is_some_and(|h| !claims.iter().any(|c| &c.owner == h));
    let facts = Facts {
        me: &me,
        adopt: desired.adopt,
        desired_digest: &digest,
        latest: history.latest(),
        last_deployed: history.last_deployed(),
        rollback_enabled: desired.rollback.enable,
        last_attempted_digest: status.last_attempted_digest.as_deref(),
        holder_left,
        recorded_revision: status.revision,
    };
    let mut state = state::classify(&facts);
    if state == ReleaseState::InSync
        && let Some(latest) = history.latest()
    {
        let found = detect_drift(ctx, &client, &namespace, &desired.release, latest.number).await;
        let (act_on, ignored) = fhr_release::drift::triage(&mut status.drift, &digest, found);
        if !ignored.is_empty() {
            warn!(fields = ?ignored, "drift that an upgrade did not correct (something else keeps changing these values); ignoring it until the chart or values change");
        }
        state = state.with_drift(act_on);
    }
    Ok(Gather::Facts(Box::new(Gathered {
        desired,
        namespace,
        chart,
        values: resolved.values,
        redactor: resolved.secrets,
        digest,
        me,
        client,
        history,
        state,
        holder_left,
        _release_lock: release_lock,
    })))
}

impl Gathered {
    /// Classifies again after Helm's history changed under this reconcile (an unlock), without
    /// gathering everything again.
    pub fn reclassify(&mut self, history: History, status: &FluxHelmReleaseStatus) {
        let facts = Facts {
            me: &self.me,
            adopt: self.desired.adopt,
            desired_digest: &self.digest,
            latest: history.latest(),
            last_deployed: history.last_deployed(),
            rollback_enabled: self.desired.rollback.enable,
            last_attempted_digest: status.last_attempted_digest.as_deref(),
            holder_left: self.holder_left,
            recorded_revision: status.revision,
        };
        self.state = state::classify(&facts);
        self.history = history;
    }
}

fn chart_not_found(path: &str, snapshot: &Snapshot, git: &GitView) -> String {
    let mut message = format!(
        "chart folder {path:?} does not exist at commit {}, the newest fetched",
        short(&snapshot.commit())
    );
    if let Some(announced) = &git.announced {
        message.push_str(&format!(
            "; commit {}, announced by flux-agent, is being fetched",
            short(announced)
        ));
    }
    message
}

/// Compares an in-sync release's objects with the cluster. Detection problems are logged, never
/// fatal: the release is in sync as far as Helm knows.
async fn detect_drift<H: Helm>(
    ctx: &Context<H>,
    client: &kube::Client,
    namespace: &str,
    release: &str,
    revision: i64,
) -> Vec<Drifted> {
    let manifest = match storage::manifest(client, namespace, release, revision).await {
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
    match drift::detect(client, &ctx.resources, &ctx.confirmed, &check).await {
        Ok(found) => found,
        Err(e) => {
            warn!(error = %e, "cannot compare the release's objects with the cluster");
            Vec::new()
        }
    }
}

/// Every resource in `namespace` that asks for `release` (this one included, even before the
/// watch has shown it), as claims for [`state::rightful`].
pub fn claims(
    store: &Store<FluxHelmRelease>,
    me: &FluxHelmRelease,
    namespace: &str,
    release: &str,
) -> Vec<Claim> {
    let claim = |fhr: &FluxHelmRelease| Claim {
        owner: record::owner(namespace, &fhr.name_any()),
        created: fhr
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        deleting: fhr.metadata.deletion_timestamp.is_some(),
    };
    let mut claims: Vec<Claim> = store
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

/// What `spec.chart.secretRef` and `caSecretRef` name, read as whoever acts for the release (a
/// tenant cannot use a Secret its account may not read).
async fn repository_access(
    client: &kube::Client,
    namespace: &str,
    account: Option<&str>,
    source: &fhr_types::RepositoryChart,
) -> Result<Access, Blocked> {
    let mut access = Access::default();
    if let Some(reference) = &source.secret_ref {
        let what = format!(
            "Secret {namespace}/{} (spec.chart.secretRef)",
            reference.name
        );
        let data = secret_data(client, namespace, account, &reference.name, &what).await?;
        access.credentials =
            Some(
                Credentials::from_secret_data(&data).ok_or_else(|| Blocked::ChartPullFailed {
                    message: format!("{what} holds neither username and password nor token"),
                    transient: false,
                })?,
            );
    }
    if let Some(reference) = &source.ca_secret_ref {
        let what = format!(
            "Secret {namespace}/{} (spec.chart.caSecretRef)",
            reference.name
        );
        let mut data = secret_data(client, namespace, account, &reference.name, &what).await?;
        access.ca = Some(
            data.remove("ca.crt")
                .ok_or_else(|| Blocked::ChartPullFailed {
                    message: format!("{what} has no ca.crt"),
                    transient: false,
                })?
                .0,
        );
    }
    Ok(access)
}

/// The data of Secret `name`, read as whoever acts for the release.
async fn secret_data(
    client: &kube::Client,
    namespace: &str,
    account: Option<&str>,
    name: &str,
    what: &str,
) -> Result<std::collections::BTreeMap<String, k8s_openapi::ByteString>, Blocked> {
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), namespace);
    match secrets.get_opt(name).await {
        Ok(Some(secret)) => Ok(secret.data.unwrap_or_default()),
        Ok(None) => Err(Blocked::ChartPullFailed {
            message: format!("{what} does not exist"),
            transient: false,
        }),
        Err(e) => match forbidden(&e) {
            Some(message) => Err(Blocked::Forbidden(format!(
                "{} may not read {what}: {message}",
                acting(namespace, account)
            ))),
            None => Err(Blocked::ChartPullFailed {
                message: format!("reading {what}: {e}"),
                transient: true,
            }),
        },
    }
}

/// Who acts for a release, as messages name it.
fn acting(namespace: &str, service_account: Option<&str>) -> String {
    match service_account {
        Some(account) => format!("ServiceAccount {namespace}/{account}"),
        None => "the operator".to_owned(),
    }
}

/// Helm's history of `release`, read as whoever acts for it (`client`, `account`). A refusal is
/// `Error::Forbidden`, naming the account and quoting the API server (which names the user, the
/// verb and the resource).
pub async fn release_history(
    client: &kube::Client,
    namespace: &str,
    account: Option<&str>,
    release: &str,
) -> Result<History, Error> {
    storage::history(client, namespace, release)
        .await
        .map_err(|e| match e {
            storage::StorageError::Api(api) if forbidden(&api).is_some() => {
                Error::Forbidden(format!(
                    "{} may not read the Helm records of release {release}: {}",
                    acting(namespace, account),
                    forbidden(&api).unwrap_or_default()
                ))
            }
            other => other.into(),
        })
}

/// What ChartFetched says when the chart was found.
pub fn chart_fetched(gathered: &Gathered) -> String {
    match &gathered.chart {
        GatheredChart::Git { snapshot, .. } => format!(
            "chart {} at commit {}",
            gathered.desired.chart.describe(),
            short(&snapshot.commit())
        ),
        GatheredChart::Repository(fetched) => format!(
            "chart {} resolved to version {} (sha256:{})",
            gathered.desired.chart.describe(),
            fetched.version,
            fetched.digest
        ),
    }
}
