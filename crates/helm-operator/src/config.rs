//! helm-operator's command line.

use clap::Parser;
use fhr_git::GitArgs;
use fhr_runtime::cli::{LeaderArgs, ServeArgs, parse_interval};
use std::path::PathBuf;
use std::time::Duration;

/// Installs, upgrades, rolls back and uninstalls the Helm releases that FluxHelmRelease objects
/// describe, with charts taken from a git repository.
/// What takes the Helm actions.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelmEngine {
    /// One resident engine process.
    Engine,
    /// One helm CLI process per action.
    Cli,
}

/// How replicas share the releases.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharding {
    /// One replica (the Lease holder) acts on every release; the others stand by.
    Leader,
    /// Every replica acts, each on its share: replicas find each other through one Lease each
    /// and split the releases by rendezvous hashing, with no labels needed.
    Auto,
    /// No coordination: run exactly one replica (per `--watch-label-selector` shard).
    Off,
}

#[derive(Parser, Debug, Clone)]
#[command(name = "helm-operator", version)]
pub struct Config {
    #[command(flatten)]
    pub git: GitArgs,

    /// Folder of the repository holding one folder per chart.
    #[arg(long, env = "CHARTS_PATH", default_value = "charts")]
    pub charts_path: String,

    /// How often every release is checked again even when nothing changed (drift, lost events).
    #[arg(long, env = "CHARTS_SYNC_INTERVAL", default_value = "3m", value_parser = parse_interval)]
    pub charts_sync_interval: Duration,

    /// How often a chart repository's `index.yaml` is fetched again (one fetch serves every
    /// release using that repository); a newer version matching a release's range is found
    /// within this plus `--charts-sync-interval`.
    #[arg(long, env = "CHART_REPOSITORY_INTERVAL", default_value = "5m", value_parser = parse_interval)]
    pub chart_repository_interval: Duration,

    /// Allow chart repositories on plain `http://`, and speak to OCI registries over plain http
    /// (anyone on the path can change the charts).
    #[arg(long, env = "CHART_ALLOW_INSECURE_HTTP")]
    pub chart_allow_insecure_http: bool,

    /// How many releases are reconciled at once (and Helm actions the engine runs at once).
    #[arg(long, env = "WORKERS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,

    /// What takes the Helm actions: `engine`, one resident `fhr-helm-engine` process on the
    /// Helm 4 SDK, or `cli`, one `helm` (v4) process per action, for those who must pin a binary.
    #[arg(long, env = "HELM_ENGINE", value_enum, default_value_t = HelmEngine::Engine)]
    pub helm_engine: HelmEngine,

    /// The engine binary (`--helm-engine=engine`).
    #[arg(long, env = "HELM_ENGINE_BIN", default_value = "fhr-helm-engine")]
    pub helm_engine_bin: PathBuf,

    /// The ServiceAccount (of each release's own namespace) that releases naming no
    /// `spec.serviceAccountName` act as. Unset, such releases act with the operator's own
    /// rights: set it to lock a shared cluster down.
    #[arg(long, env = "DEFAULT_SERVICE_ACCOUNT")]
    pub default_service_account: Option<String>,

    /// Let chart templates read the cluster with Helm's `lookup`, with the operator's rights.
    /// `false` renders with no cluster access: `lookup` finds nothing, as in `helm template`
    /// (charts that keep a generated password by looking up their own Secret then make a new
    /// one at each upgrade). Needs `--helm-engine=engine`: the helm CLI cannot turn lookup off.
    #[arg(long, env = "ALLOW_LOOKUP", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_lookup: bool,

    /// The helm (v4) binary (`--helm-engine=cli`).
    #[arg(long, env = "HELM_BIN", default_value = "helm")]
    pub helm_bin: PathBuf,

    /// How long a Helm action may take when the resource sets no `timeout`.
    #[arg(long, env = "HELM_TIMEOUT", default_value = "5m", value_parser = parse_interval)]
    pub helm_timeout: Duration,

    /// Only watch FluxHelmRelease objects in this namespace (default: all namespaces).
    #[arg(long, env = "NAMESPACE")]
    pub namespace: Option<String>,

    /// Only FluxHelmRelease objects matching this label selector (Flux's sharding: for example
    /// `sharding.fluxcd.io/key in (shard1)` here, `!sharding.fluxcd.io/key` on the main
    /// instance). Each selector takes its own Lease, so shards run side by side.
    #[arg(long, env = "WATCH_LABEL_SELECTOR")]
    pub watch_label_selector: Option<String>,

    /// Namespace of flux-agent's state object, whose announced commits make the operator fetch at
    /// once (default: the pod's namespace, where deploy/ puts both daemons; outside a pod the
    /// --namespace watched, or all namespaces). Announcements of another repository only cost a
    /// fetch that finds nothing new.
    #[arg(long, env = "AGENT_STATE_NAMESPACE")]
    pub agent_state_namespace: Option<String>,

    /// Folder for the git mirror, exported charts and Helm's cache (default: a temporary folder).
    #[arg(long, env = "STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// How replicas share the releases: `leader` (one acts, the others stand by), `auto` (all
    /// act, each on its share, split by rendezvous hashing) or `off` (a single replica).
    /// `--leader-election=false` is the older spelling of `off`.
    #[arg(long, env = "SHARDING", value_enum, default_value_t = Sharding::Leader)]
    pub sharding: Sharding,

    #[command(flatten)]
    pub leader: LeaderArgs,

    #[command(flatten)]
    pub serve: ServeArgs,
}
