//! `kubectl fhr`: FluxHelmRelease at the command line, with the user's own kubeconfig and RBAC
//! (no port-forward, nothing of the daemons' but what they write to the API).

mod events;
mod get;
mod history;
mod reconcile;
mod table;

use anyhow::Context as _;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use fhr_types::FluxHelmRelease;
use kube::api::{Api, Patch, PatchParams};
use std::process::ExitCode;
use std::time::Duration;

/// Field manager of the changes this plugin makes (the suspend flag, the reconcile-at annotation).
const MANAGER: &str = "kubectl-fhr";

/// FluxHelmRelease at the command line: see releases, ask for a reconcile and wait for its
/// outcome, suspend and resume, read Helm's history and the Events.
#[derive(Parser, Debug)]
#[command(name = "kubectl fhr", bin_name = "kubectl fhr", version)]
struct Cli {
    #[command(flatten)]
    cluster: Cluster,
    #[command(subcommand)]
    command: Command,
}

/// Which cluster and namespace, as kubectl takes them.
#[derive(Args, Debug)]
struct Cluster {
    /// The namespace (default: the context's, else `default`).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List FluxHelmReleases: release, chart, revision, Ready, reason, message, last action's age.
    Get {
        /// One resource only.
        name: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Ask helm-operator to reconcile NAME now and wait for the outcome; exits non-zero when the
    /// release is not Ready afterwards.
    Reconcile {
        /// The FluxHelmRelease.
        name: String,
        /// First have flux-agent fetch git and apply the release configuration (through its
        /// state object), so that the newest commit is what is reconciled.
        #[arg(long)]
        with_source: bool,
        /// Namespace of flux-agent's state object (default: found by its label).
        #[arg(long, requires = "with_source")]
        agent_namespace: Option<String>,
        /// How long to wait.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Stop every Helm action for NAME (git can still change the spec; nothing is applied).
    Suspend {
        /// The FluxHelmRelease.
        name: String,
    },
    /// Let helm-operator act on NAME again.
    Resume {
        /// The FluxHelmRelease.
        name: String,
    },
    /// Helm's revisions of NAME's release, from Helm's storage: status, chart, digest, time.
    History {
        /// The FluxHelmRelease.
        name: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// The Events about NAME, oldest first.
    Events {
        /// The FluxHelmRelease.
        name: String,
    },
    /// Print a shell completion script (bash, zsh, fish, …) for `kubectl-fhr`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// How results are printed.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    /// A table, as `kubectl get` prints.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    fhr_types::duration::parse_interval(text)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Completion { shell } = cli.command {
        let mut command = Cli::command();
        clap_complete::generate(shell, &mut command, "kubectl-fhr", &mut std::io::stdout());
        return Ok(ExitCode::SUCCESS);
    }
    let (client, default_namespace) = connect(&cli.cluster).await?;
    let namespace = cli.cluster.namespace.unwrap_or(default_namespace);
    let api: Api<FluxHelmRelease> = Api::namespaced(client.clone(), &namespace);
    match cli.command {
        Command::Get {
            name,
            all_namespaces,
            output,
        } => {
            let api = if all_namespaces {
                Api::all(client)
            } else {
                api
            };
            print!(
                "{}",
                get::run(&api, name.as_deref(), all_namespaces, output).await?
            );
        }
        Command::Reconcile {
            name,
            with_source,
            agent_namespace,
            timeout,
        } => {
            let source = with_source.then_some(agent_namespace);
            return reconcile::run(&client, &api, &name, source, timeout).await;
        }
        Command::Suspend { name } => {
            suspend(&api, &name, true).await?;
            println!("FluxHelmRelease {namespace}/{name} suspended");
        }
        Command::Resume { name } => {
            suspend(&api, &name, false).await?;
            println!("FluxHelmRelease {namespace}/{name} resumed");
        }
        Command::History { name, output } => {
            print!(
                "{}",
                history::run(&client, &api, &namespace, &name, output).await?
            );
        }
        Command::Events { name } => {
            print!("{}", events::run(&client, &namespace, &name).await?);
        }
        Command::Completion { .. } => unreachable!("handled before connecting"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A client and the context's namespace, from the kubeconfig as kubectl would read it.
async fn connect(cluster: &Cluster) -> anyhow::Result<(kube::Client, String)> {
    let options = kube::config::KubeConfigOptions {
        context: cluster.context.clone(),
        ..Default::default()
    };
    let config = match &cluster.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options).await?
        }
        None if cluster.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer().await?,
    };
    let namespace = config.default_namespace.clone();
    Ok((kube::Client::try_from(config)?, namespace))
}

/// Sets `spec.suspend`. helm-operator does nothing at all for a suspended resource; flux-agent
/// leaves the field alone unless the file in git sets it.
async fn suspend(api: &Api<FluxHelmRelease>, name: &str, suspend: bool) -> anyhow::Result<()> {
    let patch = serde_json::json!({"spec": {"suspend": suspend}});
    api.patch(
        name,
        &PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        },
        &Patch::Merge(&patch),
    )
    .await
    .with_context(|| format!("FluxHelmRelease {name}"))?;
    Ok(())
}

/// Prints `value` as JSON or YAML.
fn encode(value: &impl serde::Serialize, output: Output) -> anyhow::Result<String> {
    Ok(match output {
        Output::Yaml => serde_saphyr::to_string(value)?,
        _ => serde_json::to_string_pretty(value)? + "\n",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn kubectl_habits_parse() {
        let cli = Cli::try_parse_from([
            "kubectl-fhr",
            "get",
            "-A",
            "-o",
            "yaml",
            "--context",
            "prod",
        ])
        .unwrap();
        assert_eq!(cli.cluster.context.as_deref(), Some("prod"));
        assert!(matches!(
            cli.command,
            Command::Get {
                all_namespaces: true,
                output: Output::Yaml,
                ..
            }
        ));
        let cli = Cli::try_parse_from([
            "kubectl-fhr",
            "-n",
            "team",
            "reconcile",
            "web",
            "--with-source",
            "--timeout",
            "90s",
        ])
        .unwrap();
        assert_eq!(cli.cluster.namespace.as_deref(), Some("team"));
        assert!(matches!(
            cli.command,
            Command::Reconcile { with_source: true, timeout, .. } if timeout == Duration::from_secs(90)
        ));
        // The agent's namespace only means something with --with-source.
        assert!(
            Cli::try_parse_from(["kubectl-fhr", "reconcile", "web", "--agent-namespace", "x"])
                .is_err()
        );
    }
}
