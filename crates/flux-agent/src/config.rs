//! flux-agent's command line.

use clap::Parser;
use fhr_git::GitArgs;
use fhr_runtime::cli::{LeaderArgs, ServeArgs, parse_interval};
use std::path::PathBuf;
use std::time::Duration;

/// Applies the release configuration kept in a git repository (FluxHelmRelease manifests) to the
/// cluster, and removes what left git.
#[derive(Parser, Debug, Clone)]
#[command(name = "flux-agent", version)]
pub struct Config {
    #[command(flatten)]
    pub git: GitArgs,

    /// Folder(s) of the repository holding the manifests; repeat the flag or separate with commas.
    #[arg(
        long,
        env = "GIT_PATH",
        default_value = "releaseconfig",
        value_delimiter = ','
    )]
    pub git_path: Vec<String>,

    /// How often everything is applied again even without a new commit, undoing hand edits.
    #[arg(long, env = "SYNC_INTERVAL", default_value = "5m", value_parser = parse_interval)]
    pub sync_interval: Duration,

    /// Delete objects this agent applied that are no longer in git.
    #[arg(long, env = "SYNC_GARBAGE_COLLECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub sync_garbage_collection: bool,

    /// Name of this agent's sync set: the value of the label marking what it applied, so that
    /// several agents never prune each other's objects.
    #[arg(long, env = "SYNC_SET", default_value = "flux-agent")]
    pub sync_set: String,

    /// Kinds that may be applied (`Kind` or `group/Kind`); others are reported, not applied.
    #[arg(
        long,
        env = "ALLOW_KIND",
        default_value = "FluxHelmRelease",
        value_delimiter = ','
    )]
    pub allow_kind: Vec<String>,

    /// File holding the shared secret that signs push webhooks (X-Hub-Signature-256). When set,
    /// `POST /api/v1/sync` needs it too: the same signature, or `Authorization: Bearer <secret>`.
    #[arg(long, env = "WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,

    /// Least time between two fetches started by sync requests or webhooks; more requests
    /// meanwhile are coalesced into one fetch (the first after a quiet spell fetches at once).
    #[arg(long, env = "TRIGGER_MIN_INTERVAL", default_value = "5s", value_parser = parse_interval)]
    pub trigger_min_interval: Duration,

    /// Namespace of the agent's state object (default: the pod's namespace, else `default`).
    #[arg(long, env = "STATE_NAMESPACE")]
    pub state_namespace: Option<String>,

    /// Folder for the git mirror (default: a temporary folder).
    #[arg(long, env = "STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    #[command(flatten)]
    pub leader: LeaderArgs,

    #[command(flatten)]
    pub serve: ServeArgs,
}
