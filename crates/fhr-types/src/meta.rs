//! Names of finalizers, labels, annotations and condition types: the contract between the daemons.

/// Finalizer helm-operator puts on every resource so that deleting it uninstalls the release.
pub const FINALIZER: &str = "helm.integrations.flux.weave.works/uninstall";

/// Label flux-agent puts on what it applied; the value names the agent's sync set.
pub const SYNC_SET_LABEL: &str = "helm.integrations.flux.weave.works/sync-set";
/// Annotation flux-agent puts on what it applied: the git commit it came from.
pub const SOURCE_COMMIT_ANNOTATION: &str = "helm.integrations.flux.weave.works/source-commit";
/// Annotation flux-agent puts on what it applied: the file it came from.
pub const SOURCE_PATH_ANNOTATION: &str = "helm.integrations.flux.weave.works/source-path";
/// Annotation a user sets (to any new value, e.g. a timestamp) to ask for an immediate reconcile.
pub const RECONCILE_REQUEST_ANNOTATION: &str = "helm.integrations.flux.weave.works/reconcile-at";

/// Condition types written to `status.conditions`.
pub mod condition {
    /// The release is deployed as the spec asks.
    pub const READY: &str = "Ready";
    /// The last Helm action succeeded.
    pub const RELEASED: &str = "Released";
    /// The chart folder was read from git.
    pub const CHART_FETCHED: &str = "ChartFetched";
    /// kstatus: work is in progress.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: progress stopped on an error that retrying alone will not fix.
    pub const STALLED: &str = "Stalled";
}
