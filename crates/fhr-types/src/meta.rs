//! Names of finalizers, labels, annotations and condition types: the contract between the daemons.

/// Finalizer helm-operator puts on every resource so that deleting it uninstalls the release.
pub const FINALIZER: &str = "helm.integrations.flux.weave.works/uninstall";

/// Label flux-agent puts on what it applied; the value names the agent's sync set.
pub const SYNC_SET_LABEL: &str = "helm.integrations.flux.weave.works/sync-set";
/// Annotation flux-agent puts on what it applied: the git commit it came from.
pub const SOURCE_COMMIT_ANNOTATION: &str = "helm.integrations.flux.weave.works/source-commit";
/// Annotation flux-agent puts on what it applied: the file it came from.
pub const SOURCE_PATH_ANNOTATION: &str = "helm.integrations.flux.weave.works/source-path";
/// Label on flux-agent's state object (the value names its sync set): helm-operator watches
/// objects with it to learn of new commits, so a webhook to the agent reaches charts too.
pub const AGENT_STATE_LABEL: &str = "helm.integrations.flux.weave.works/agent-state";
/// Annotation on flux-agent's state object: the commit it synced last.
pub const AGENT_COMMIT_ANNOTATION: &str = "helm.integrations.flux.weave.works/commit";
/// Annotation a user sets (to any new value, e.g. a timestamp) to ask for an immediate reconcile.
pub const RECONCILE_REQUEST_ANNOTATION: &str = "helm.integrations.flux.weave.works/reconcile-at";
/// Key of flux-agent's state object holding the last reconcile-at request a sync handled.
pub const LAST_HANDLED_RECONCILE_KEY: &str = "lastHandledReconcileAt";

/// Condition types written to `status.conditions`.
pub mod condition {
    /// The release is deployed as the spec asks.
    pub const READY: &str = "Ready";
    /// The last Helm action succeeded.
    pub const RELEASED: &str = "Released";
    /// A chart repository could not be read, or has no version matching `spec.chart.version`, or
    /// its archive was refused.
    pub const CHART_PULL_FAILED: &str = "ChartPullFailed";
    /// A repository chart's version range resolves to a newer version (an Event; an upgrade
    /// follows).
    pub const CHART_VERSION_RESOLVED: &str = "ChartVersionResolved";
    /// The chart folder was read from git.
    pub const CHART_FETCHED: &str = "ChartFetched";
    /// kstatus: work is in progress.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: progress stopped on an error that retrying alone will not fix.
    pub const STALLED: &str = "Stalled";
}

/// Labels helm-operator puts on every Helm release record it writes (through `helm --labels`),
/// so that ownership and "in sync" are read from Helm's own storage.
pub mod release_label {
    /// Namespace of the FluxHelmRelease that manages the release.
    pub const OWNER_NAMESPACE: &str = "helm.integrations.flux.weave.works/owner-namespace";
    /// Name of the FluxHelmRelease that manages the release (hashed when longer than a label value).
    pub const OWNER_NAME: &str = "helm.integrations.flux.weave.works/owner-name";
    /// Digest of the chart tree and values this revision was made from.
    pub const DIGEST: &str = "helm.integrations.flux.weave.works/digest";
    /// The helm-operator replica that wrote this revision (hashed when longer than a label
    /// value): with automatic sharding, a revision left pending by a replica still live is
    /// that replica's action in flight, not an interrupted one.
    pub const ACTOR: &str = "helm.integrations.flux.weave.works/actor";
}

/// Condition reasons: CamelCase, stable, documented in docs/troubleshooting.md.
pub mod reason {
    /// The release is deployed from the current chart and values.
    pub const RELEASE_IN_SYNC: &str = "ReleaseInSync";
    /// `helm upgrade --install` installed the release.
    pub const INSTALL_SUCCEEDED: &str = "InstallSucceeded";
    /// Installing failed.
    pub const INSTALL_FAILED: &str = "InstallFailed";
    /// `helm upgrade` upgraded the release.
    pub const UPGRADE_SUCCEEDED: &str = "UpgradeSucceeded";
    /// Upgrading failed.
    pub const UPGRADE_FAILED: &str = "UpgradeFailed";
    /// The release was rolled back after a failed upgrade.
    pub const ROLLED_BACK: &str = "RolledBack";
    /// Rolling back failed.
    pub const ROLLBACK_FAILED: &str = "RollbackFailed";
    /// Uninstalling failed (the resource keeps its finalizer until it succeeds).
    pub const UNINSTALL_FAILED: &str = "UninstallFailed";
    /// A release left pending by an interrupted action was unlocked.
    pub const UNLOCKED: &str = "Unlocked";
    /// A Helm action is running.
    pub const PROGRESSING: &str = "Progressing";
    /// `spec.chartGitPath` is not a safe relative path.
    pub const INVALID_CHART_PATH: &str = "InvalidChartPath";
    /// The release name is not valid.
    pub const INVALID_RELEASE_NAME: &str = "InvalidReleaseName";
    /// `spec.values` does not make a values tree.
    pub const INVALID_VALUES: &str = "InvalidValues";
    /// A `valuesFrom` source is missing (and not optional) or not a values map.
    pub const INVALID_VALUES_FROM: &str = "InvalidValuesFrom";
    /// Another field of the spec is unusable (a timeout, …).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The chart folder does not exist at the fetched commit.
    pub const CHART_NOT_FOUND: &str = "ChartNotFound";
    /// The chart folder holds something refused (a symlink leaving it, a file too large, …).
    pub const CHART_REFUSED: &str = "ChartRefused";
    /// A chart repository could not be read, or has no version matching `spec.chart.version`, or
    /// its archive was refused.
    pub const CHART_PULL_FAILED: &str = "ChartPullFailed";
    /// A repository chart's version range resolves to a newer version (an Event; an upgrade
    /// follows).
    pub const CHART_VERSION_RESOLVED: &str = "ChartVersionResolved";
    /// The chart folder was read from git.
    pub const CHART_FETCHED: &str = "ChartFetched";
    /// No commit has been fetched yet.
    pub const GIT_NOT_SYNCED: &str = "GitNotSynced";
    /// The release belongs to another FluxHelmRelease, or to nobody and adoption was not asked for.
    pub const RELEASE_CONFLICT: &str = "ReleaseConflict";
    /// The release's ServiceAccount may not read Helm's storage or a valuesFrom source (retried
    /// with backoff until RBAC allows it).
    pub const FORBIDDEN: &str = "Forbidden";
    /// Objects of an in-sync release were changed or deleted by hand (an Event; an upgrade restores them).
    pub const DRIFT_DETECTED: &str = "DriftDetected";
}
