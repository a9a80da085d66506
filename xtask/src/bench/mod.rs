//! `cargo xtask bench`: how fast and how frugal flux-helm is, and how that grows with the number
//! of releases, measured against what a user's script would do: `helm upgrade --install` in a loop.
//!
//! Each N gets a fresh control plane (with an audit log, to count API requests per client), a git
//! server on loopback, and release builds of both daemons. Results go to `target/bench/`.
//! How to run it and read it: docs/benchmarks.md.

mod flux;
mod measure;
mod report;

use anyhow::{Context, bail};
use fhr_testenv::{ControlPlane, ControlPlaneOptions, GitServer, GitServerOptions, OwnedChild};
use fhr_types::FluxHelmRelease;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::watcher;
use measure::{ApiClient, AuditCursor, ChildUsage, ProcessSample};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The User-Agent of the benchmark's own API client, so its polling is not counted as ours.
const USER_AGENT: &str = "flux-helm-bench";
/// Namespace of the FluxHelmRelease objects (and their releases).
const NAMESPACE: &str = "bench";
/// Namespace of the baseline loop's releases.
const BASELINE_NAMESPACE: &str = "bench-baseline";
/// How often both daemons fetch git: the poll-mode change latency is bounded by it.
const GIT_POLL: Duration = Duration::from_secs(5);
/// The replicas' lease duration with `--replicas`.
const SHARDING_LEASE: Duration = Duration::from_secs(5);
/// Changes per latency mode.
const LATENCY_ROUNDS: usize = 3;
const WEBHOOK_SECRET: &str = "bench-webhook-secret";

/// Which measurements to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// N releases committed at once → all Ready.
    Convergence,
    /// One value changed in git → release upgraded (poll mode and webhook).
    Latency,
    /// Nothing changing for several re-check periods.
    Steady,
    /// All of the above.
    All,
}

/// `cargo xtask bench` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Numbers of releases; each gets a fresh control plane (`--releases 10,100,1000`).
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    releases: Vec<usize>,
    /// Which measurement to take; convergence always runs, as the others start from it.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    scenario: Scenario,
    /// The operator's re-check period and the agent's re-apply period during the run.
    #[arg(long, default_value = "30s", value_parser = fhr_runtime::cli::parse_interval)]
    recheck: Duration,
    /// How many re-check periods the steady-state window lasts.
    #[arg(long, default_value_t = 3)]
    periods: u32,
    /// The operator's --workers.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// The operator's --helm-engine: `engine` (resident) or `cli` (a helm process per action).
    #[arg(long, default_value = "engine", value_parser = ["engine", "cli"])]
    engine: String,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Also converge N releases with each of these numbers of helm-operator replicas (`1,2,3`),
    /// each on a fresh control plane: one replica leads as deployed by default, several share
    /// the releases with `--sharding=auto`. On a machine of few cores the figure is what
    /// coordination costs, not a speed-up.
    #[arg(long, value_delimiter = ',')]
    replicas: Vec<usize>,
    /// Leave out the Flux v2 baseline (helm-controller and source-controller, built once from
    /// tools/flux/ on first use: several minutes).
    #[arg(long)]
    no_flux: bool,
}

impl Args {
    fn wants(&self, scenario: Scenario) -> bool {
        self.scenario == Scenario::All || self.scenario == scenario
    }
}

/// Everything measured for one N.
#[derive(Debug, Serialize, Deserialize)]
pub struct Run {
    releases: usize,
    /// The commit measured (`git describe --always --dirty`).
    commit: String,
    convergence: Convergence,
    baseline: Baseline,
    /// helm-operator's --helm-engine in this run (absent: runs from before the engine).
    #[serde(default)]
    engine: Option<String>,
    /// Flux v2 over the same releases: defaults, then without OpenAPI validation.
    #[serde(default)]
    flux: Vec<flux::FluxRun>,
    latency: Option<Latency>,
    steady: Option<Steady>,
    /// The same convergence with several operator replicas (`--replicas`).
    #[serde(default)]
    replicas: Vec<ReplicaRun>,
}

/// Convergence with a number of helm-operator replicas.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplicaRun {
    replicas: usize,
    /// `--sharding`: `leader` for one replica, `auto` for several.
    sharding: String,
    convergence: Convergence,
}

/// Per-daemon figures.
#[derive(Debug, Default, Serialize, Deserialize, Clone, Copy)]
pub struct PerDaemon {
    operator: f64,
    agent: f64,
}

/// N releases committed at once → every one deployed and Ready.
#[derive(Debug, Serialize, Deserialize)]
pub struct Convergence {
    seconds: f64,
    helm_processes: f64,
    cpu_seconds: PerDaemon,
    /// CPU seconds of the Helm processes the operator started.
    helm_cpu_seconds: f64,
    peak_rss_mib: PerDaemon,
    api_requests: BTreeMap<ApiClient, u64>,
    /// Requests per client, verb and resource: where they go.
    #[serde(default)]
    api_calls: BTreeMap<String, u64>,
    /// Mean seconds per Helm action, from the operator's histogram.
    #[serde(default)]
    helm_action_seconds: f64,
}

/// One pass of `helm upgrade --install` over every release, as a user's script runs it.
#[derive(Debug, Serialize, Deserialize, Clone, Copy)]
pub struct LoopPass {
    seconds: f64,
    helm_processes: usize,
    cpu_seconds: f64,
    /// The largest peak RSS of any one Helm process.
    peak_rss_mib: f64,
    api_requests: u64,
}

/// The plain helm loop: the first pass installs, the second changes nothing (its cost is what
/// such a script pays at every period, and the time to pick up one change).
#[derive(Debug, Serialize, Deserialize)]
pub struct Baseline {
    install: LoopPass,
    rerun: Option<LoopPass>,
}

/// Seconds from a commit to the release's new revision.
#[derive(Debug, Serialize, Deserialize)]
pub struct Latency {
    poll_interval_seconds: f64,
    poll: Vec<f64>,
    webhook: Vec<f64>,
}

/// Nothing changing for `window_seconds`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Steady {
    window_seconds: f64,
    recheck_seconds: f64,
    helm_processes: f64,
    cpu_seconds: PerDaemon,
    api_requests: BTreeMap<ApiClient, u64>,
    /// Requests per client, verb and resource: where they go.
    #[serde(default)]
    api_calls: BTreeMap<String, u64>,
    rss_mib: PerDaemon,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.releases.is_empty() && args.releases.iter().all(|&n| n > 0),
        "--releases needs one or more positive numbers"
    );
    crate::tools::run(false, crate::tools::TestPackages::NotNeeded)?;
    let flux_binaries = if args.no_flux {
        None
    } else {
        Some(flux::build()?)
    };
    crate::build_daemons_with(&["--release"])?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = crate::root().join(&args.out);
    for &n in &args.releases {
        eprintln!("==> benchmark with {n} releases");
        let run = runtime
            .block_on(bench(n, args, flux_binaries.as_ref()))
            .with_context(|| format!("benchmark with {n} releases"))?;
        eprintln!("{}", report::summary(&run));
        // Written after every N, so a long run that fails later still leaves what it measured.
        report::write(&out, args, vec![run])?;
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    eprintln!(
        "==> report: {0}/bench.md, {0}/bench.json, {0}/bench.png",
        out.display()
    );
    Ok(())
}

/// The daemons under test and what they run against.
struct System {
    cp: ControlPlane,
    client: kube::Client,
    repo: fhr_testenv::TestRepo,
    /// helm-operator replicas and their admin addresses (one, unless `--replicas`).
    operators: Vec<(OwnedChild, SocketAddr)>,
    agent: OwnedChild,
    agent_admin: SocketAddr,
    audit: AuditCursor,
    // Held for the run: the git server stops when dropped.
    _git: GitServer,
}

async fn bench(
    n: usize,
    args: &Args,
    flux_binaries: Option<&(PathBuf, PathBuf)>,
) -> anyhow::Result<Run> {
    let (cp, client) = bench_control_plane(&[NAMESPACE, BASELINE_NAMESPACE]).await?;
    let chart = crate::root().join("xtask/bench/charts/bench");
    let mut audit = AuditCursor::at_end(&cp.audit_log());

    step(&format!(
        "baseline: helm upgrade --install × {n}, one after another"
    ));
    let install = helm_loop(&cp, &chart, n, &mut audit)?;
    let rerun = if args.wants(Scenario::Latency) || args.wants(Scenario::Steady) {
        step("baseline: the same loop again, nothing changed");
        Some(helm_loop(&cp, &chart, n, &mut audit)?)
    } else {
        None
    };

    // One repository for Flux and flux-helm alike: the chart, and later the release config.
    let (git, repo) = bench_repository().await?;
    let mut flux = Vec::new();
    if let Some(binaries) = flux_binaries {
        // Flux's logs (errors only) stay beside the report.
        let logs = crate::root().join(&args.out).join("logs");
        std::fs::create_dir_all(&logs)?;
        for variant in [flux::Variant::Defaults, flux::Variant::NoOpenapi] {
            let run = flux::converge(
                &cp,
                &client,
                binaries,
                &git.url("bench"),
                n,
                args.workers,
                variant,
                &logs,
            )
            .await?;
            flux.push(run);
        }
        audit.take()?;
    }

    let mut system = System::start(cp, client, args, audit, git, repo, 1).await?;
    let convergence = system.convergence(n).await?;
    let steady = if args.wants(Scenario::Steady) {
        Some(system.steady(args).await?)
    } else {
        None
    };
    let latency = if args.wants(Scenario::Latency) {
        Some(system.latency(n).await?)
    } else {
        None
    };
    drop(system);
    let mut replicas = Vec::new();
    for &k in &args.replicas {
        replicas.push(replica_run(n, k, args).await?);
    }
    Ok(Run {
        replicas,
        releases: n,
        commit: report::commit(),
        engine: Some(args.engine.clone()),
        convergence,
        baseline: Baseline { install, rerun },
        flux,
        latency,
        steady,
    })
}

/// A fresh control plane auditing every request, with the CRD and `namespaces`, and a client.
async fn bench_control_plane(namespaces: &[&str]) -> anyhow::Result<(ControlPlane, kube::Client)> {
    let cp = ControlPlane::start_with(ControlPlaneOptions {
        audit: fhr_testenv::Audit::Everything,
    })
    .await
    .context("start the control plane")?;
    let client = bench_client(&cp).await?;
    crate::demo::install_crd(&client).await?;
    for namespace in namespaces {
        fhr_testenv::create_namespace(&client, namespace).await?;
    }
    Ok((cp, client))
}

/// A git server with the bench chart under `charts/` and an empty `releaseconfig/`.
async fn bench_repository() -> anyhow::Result<(GitServer, fhr_testenv::TestRepo)> {
    let git = GitServer::start(GitServerOptions::default()).await?;
    let repo = git.create_repo("bench", "master")?;
    repo.copy_dir(&crate::root().join("xtask/bench/charts"), "charts")?;
    repo.write(
        "releaseconfig/README.md",
        "FluxHelmRelease manifests go here.\n",
    )?;
    repo.commit("the chart")?;
    Ok((git, repo))
}

/// N releases converged by `k` operator replicas on a fresh control plane.
async fn replica_run(n: usize, k: usize, args: &Args) -> anyhow::Result<ReplicaRun> {
    anyhow::ensure!(k > 0, "--replicas needs positive numbers");
    step(&format!(
        "replicas: {n} releases, {k} helm-operator replica(s)"
    ));
    let (cp, client) = bench_control_plane(&[NAMESPACE]).await?;
    let audit = AuditCursor::at_end(&cp.audit_log());
    let (git, repo) = bench_repository().await?;
    let mut system = System::start(cp, client, args, audit, git, repo, k).await?;
    Ok(ReplicaRun {
        replicas: k,
        sharding: if k > 1 { "auto" } else { "leader" }.to_owned(),
        convergence: system.convergence(n).await?,
    })
}

fn step(message: &str) {
    eprintln!("    {message}");
}

/// An admin client that names itself, so the audit log can leave its requests out.
async fn bench_client(cp: &ControlPlane) -> anyhow::Result<kube::Client> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let kubeconfig = Kubeconfig::read_from(cp.kubeconfig())?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    ));
    Ok(kube::Client::try_from(config)?)
}

/// One pass of `helm upgrade --install` over N releases, measured.
fn helm_loop(
    cp: &ControlPlane,
    chart: &Path,
    n: usize,
    audit: &mut AuditCursor,
) -> anyhow::Result<LoopPass> {
    audit.take()?;
    let started = Instant::now();
    let mut total = ChildUsage::default();
    for i in 0..n {
        let mut helm = cp.helm();
        helm.args(["upgrade", "--install", &release_name(i)])
            .arg(chart)
            .args(["--namespace", BASELINE_NAMESPACE])
            .args(["--set", &format!("index={i}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let (status, usage) = measure::run_measured(&mut helm)?;
        anyhow::ensure!(status.success(), "helm upgrade --install failed ({status})");
        total.cpu_seconds += usage.cpu_seconds;
        total.peak_rss_mib = total.peak_rss_mib.max(usage.peak_rss_mib);
    }
    let seconds = started.elapsed().as_secs_f64();
    let requests = audit.take()?;
    Ok(LoopPass {
        seconds,
        helm_processes: n,
        cpu_seconds: total.cpu_seconds,
        peak_rss_mib: total.peak_rss_mib,
        api_requests: requests.get(&ApiClient::Helm).copied().unwrap_or(0),
    })
}

fn release_name(i: usize) -> String {
    format!("bench-{i:04}")
}

/// The release configuration: N resources in one file, release 0 carrying `note`.
fn release_config(n: usize, note: &str) -> String {
    let mut yaml = String::with_capacity(n * 300);
    for i in 0..n {
        let note = if i == 0 { note } else { "" };
        yaml.push_str(&format!(
            "---\napiVersion: helm.integrations.flux.weave.works/v1alpha\nkind: FluxHelmRelease\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\nspec:\n  chartGitPath: bench\n  releaseName: {name}\n  values:\n    - name: index\n      value: {i}\n    - name: note\n      value: \"{note}\"\n",
            name = release_name(i)
        ));
    }
    yaml
}

/// The sum of every sample of a metric of the daemon at `admin`.
async fn metric(admin: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let (code, body) = fhr_testenv::http::request(admin, "GET", "/metrics", &[], b"")
        .await
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(code == 200, "/metrics answered {code}");
    Ok(fhr_testenv::prometheus::sum(&body, name))
}

fn is_ready(fhr: &FluxHelmRelease) -> bool {
    fhr.condition("Ready").is_some_and(|c| c.status == "True")
        && fhr.status.as_ref().is_some_and(|s| s.revision.is_some())
}

impl System {
    async fn start(
        cp: ControlPlane,
        client: kube::Client,
        args: &Args,
        audit: AuditCursor,
        git: GitServer,
        repo: fhr_testenv::TestRepo,
        replicas: usize,
    ) -> anyhow::Result<System> {
        let url = git.url("bench");
        let binaries = crate::demo::target_dir("release");
        let logs = cp.dir().join("logs");
        std::fs::create_dir_all(&logs)?;
        let secret = cp.dir().join("webhook-secret");
        std::fs::write(&secret, WEBHOOK_SECRET)?;
        let agent_admin = SocketAddr::from(([127, 0, 0, 1], fhr_testenv::free_port()?));
        let poll = format!("--git-poll-interval={}s", GIT_POLL.as_secs());
        let recheck = format!("{}s", args.recheck.as_secs());
        step(&format!(
            "starting flux-agent and {replicas} helm-operator replica(s) (release builds)"
        ));
        let agent = crate::demo::spawn_daemon(
            &binaries,
            "flux-agent",
            &cp,
            &logs,
            &[
                format!("--git-url={url}"),
                poll.clone(),
                format!("--sync-interval={recheck}"),
                format!("--listen={agent_admin}"),
                format!("--webhook-secret-file={}", secret.display()),
                // The latency scenario pushes a few seconds apart: measure the pipeline, not the
                // coalescing of a flood of triggers.
                "--trigger-min-interval=1s".into(),
                format!("--state-dir={}", cp.dir().join("agent").display()),
            ],
        )?;
        let mut operators = Vec::new();
        for replica in 0..replicas {
            let admin = SocketAddr::from(([127, 0, 0, 1], fhr_testenv::free_port()?));
            let mut flags = vec![
                format!("--git-url={url}"),
                poll.clone(),
                format!("--charts-sync-interval={recheck}"),
                format!("--workers={}", args.workers),
                format!("--listen={admin}"),
                format!("--helm-engine={}", args.engine),
                format!("--helm-engine-bin={}", cp.tools().engine.display()),
                format!("--helm-bin={}", cp.tools().helm.display()),
                format!(
                    "--state-dir={}",
                    cp.dir().join(format!("operator-{replica}")).display()
                ),
            ];
            if replicas > 1 {
                flags.extend([
                    "--sharding=auto".to_owned(),
                    format!("--lease-duration={}s", SHARDING_LEASE.as_secs()),
                ]);
            }
            let operator =
                crate::demo::spawn_daemon(&binaries, "helm-operator", &cp, &logs, &flags)?;
            operators.push((operator, admin));
        }
        let system = System {
            cp,
            client,
            repo,
            operators,
            agent,
            agent_admin,
            audit,
            _git: git,
        };
        system.wait_ready().await?;
        if replicas > 1 {
            system.wait_shared(replicas).await?;
        }
        Ok(system)
    }

    /// Waits until every replica sees all `replicas` members, then one lease duration more, for
    /// the fence every joining replica keeps: set-up, not part of what is measured.
    async fn wait_shared(&self, replicas: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        for (operator, admin) in &self.operators {
            loop {
                self.check_running()?;
                if metric(*admin, "fhr_operator_shard_members").await.ok() == Some(replicas as f64)
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{replicas} replicas never saw each other:\n{}",
                        operator.log_tail(20)
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        tokio::time::sleep(SHARDING_LEASE).await;
        Ok(())
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let daemons = std::iter::once((&self.agent, self.agent_admin)).chain(
            self.operators
                .iter()
                .map(|(operator, admin)| (operator, *admin)),
        );
        for (daemon, admin) in daemons {
            loop {
                self.check_running()?;
                if let Ok((200, _)) =
                    fhr_testenv::http::request(admin, "GET", "/readyz", &[], b"").await
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{} not ready:\n{}", daemon.name(), daemon.log_tail(20));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    fn check_running(&self) -> anyhow::Result<()> {
        for daemon in std::iter::once(&self.agent).chain(self.operators.iter().map(|(o, _)| o)) {
            if !daemon.is_running() {
                bail!("{} exited:\n{}", daemon.name(), daemon.log_tail(30));
            }
        }
        Ok(())
    }

    fn samples(&self) -> anyhow::Result<(ProcessSample, ProcessSample)> {
        // The engine is the operator's child: its CPU and memory count as the operator's. With
        // several replicas, their CPU and memory add up: what the cluster pays.
        let mut operators = ProcessSample::default();
        for (operator, _) in &self.operators {
            operators.add(&ProcessSample::read_with_children(operator.id())?);
        }
        Ok((operators, ProcessSample::read(self.agent.id())?))
    }

    /// The sum of every sample of an operator metric (all label sets, all replicas).
    async fn operator_metric(&self, name: &str) -> anyhow::Result<f64> {
        let mut sum = 0.0;
        for (_, admin) in &self.operators {
            sum += metric(*admin, name).await?;
        }
        Ok(sum)
    }

    /// Helm processes the operator has started so far.
    async fn helm_processes(&self) -> anyhow::Result<f64> {
        self.operator_metric("fhr_operator_helm_actions_total")
            .await
    }

    /// (total seconds, count) of the operator's Helm actions so far.
    async fn helm_time(&self) -> anyhow::Result<(f64, f64)> {
        Ok((
            self.operator_metric("fhr_operator_helm_action_duration_seconds_sum")
                .await?,
            self.operator_metric("fhr_operator_helm_action_duration_seconds_count")
                .await?,
        ))
    }

    async fn convergence(&mut self, n: usize) -> anyhow::Result<Convergence> {
        step(&format!(
            "convergence: committing {n} FluxHelmRelease resources at once"
        ));
        let helm_before = self.helm_processes().await?;
        let helm_time_before = self.helm_time().await?;
        let (operator_before, agent_before) = self.samples()?;
        self.audit.take()?;
        let api: Api<FluxHelmRelease> = Api::namespaced(self.client.clone(), NAMESPACE);
        // Watch from before the commit, so no transition is missed and nothing is polled.
        let mut events = watcher(api, watcher::Config::default()).boxed();
        let mut ready = BTreeSet::new();
        self.repo
            .write("releaseconfig/bench.yaml", release_config(n, ""))?;
        self.repo.commit(&format!("{n} releases"))?;
        let started = Instant::now();
        // Ask the agent to fetch now rather than at its next poll: this measures the system, not
        // the poll interval (which the latency scenario measures on its own).
        let token = format!("Bearer {WEBHOOK_SECRET}");
        let (code, _) = fhr_testenv::http::request(
            self.agent_admin,
            "POST",
            "/api/v1/sync",
            &[("Authorization", &token)],
            b"",
        )
        .await
        .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(code == 202, "agent /api/v1/sync answered {code}");
        let deadline = Duration::from_secs(120) + Duration::from_secs(2) * n as u32;
        while ready.len() < n {
            let remaining = deadline.saturating_sub(started.elapsed());
            let event = tokio::time::timeout(remaining, events.next()).await;
            let Ok(Some(event)) = event else {
                self.check_running()?;
                bail!(
                    "only {} of {n} releases Ready after {deadline:?}; operator log:\n{}",
                    ready.len(),
                    self.operators[0].0.log_tail(20)
                );
            };
            match event? {
                watcher::Event::Apply(fhr) | watcher::Event::InitApply(fhr) => {
                    let name = fhr.metadata.name.clone().unwrap_or_default();
                    if is_ready(&fhr) {
                        ready.insert(name);
                    } else {
                        ready.remove(&name);
                    }
                }
                watcher::Event::Delete(fhr) => {
                    ready.remove(&fhr.metadata.name.clone().unwrap_or_default());
                }
                watcher::Event::Init | watcher::Event::InitDone => {}
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let (operator_after, agent_after) = self.samples()?;
        let (api_requests, api_calls) = self.audit.take_detailed()?;
        let helm_time = self.helm_time().await?;
        let helm_actions = helm_time.1 - helm_time_before.1;
        Ok(Convergence {
            seconds,
            helm_processes: self.helm_processes().await? - helm_before,
            cpu_seconds: PerDaemon {
                operator: operator_after.cpu_seconds - operator_before.cpu_seconds,
                agent: agent_after.cpu_seconds - agent_before.cpu_seconds,
            },
            helm_cpu_seconds: operator_after.children_cpu_seconds
                - operator_before.children_cpu_seconds,
            peak_rss_mib: PerDaemon {
                operator: operator_after.peak_rss_mib,
                agent: agent_after.peak_rss_mib,
            },
            api_requests,
            api_calls,
            helm_action_seconds: if helm_actions > 0.0 {
                (helm_time.0 - helm_time_before.0) / helm_actions
            } else {
                0.0
            },
        })
    }

    async fn steady(&mut self, args: &Args) -> anyhow::Result<Steady> {
        let window = args.recheck * args.periods;
        step(&format!(
            "steady state: nothing changes for {window:?} ({} re-check periods)",
            args.periods
        ));
        let helm_before = self.helm_processes().await?;
        let (operator_before, agent_before) = self.samples()?;
        self.audit.take()?;
        // A measurement window, not a wait for a condition: the cost of time passing is the figure.
        tokio::time::sleep(window).await;
        self.check_running()?;
        let (operator_after, agent_after) = self.samples()?;
        let (api_requests, api_calls) = self.audit.take_detailed()?;
        Ok(Steady {
            window_seconds: window.as_secs_f64(),
            recheck_seconds: args.recheck.as_secs_f64(),
            helm_processes: self.helm_processes().await? - helm_before,
            cpu_seconds: PerDaemon {
                operator: (operator_after.cpu_seconds + operator_after.children_cpu_seconds)
                    - (operator_before.cpu_seconds + operator_before.children_cpu_seconds),
                agent: agent_after.cpu_seconds - agent_before.cpu_seconds,
            },
            api_requests,
            api_calls,
            rss_mib: PerDaemon {
                operator: operator_after.rss_mib,
                agent: agent_after.rss_mib,
            },
        })
    }

    async fn latency(&mut self, n: usize) -> anyhow::Result<Latency> {
        let api: Api<FluxHelmRelease> = Api::namespaced(self.client.clone(), NAMESPACE);
        let name = release_name(0);
        let mut poll = Vec::new();
        let mut webhook = Vec::new();
        for round in 0..LATENCY_ROUNDS * 2 {
            let by_webhook = round >= LATENCY_ROUNDS;
            let before = api
                .get(&name)
                .await?
                .status
                .and_then(|s| s.revision)
                .unwrap_or(0);
            if !by_webhook {
                // Commit at a different point of the agent's poll cycle each round: back to back,
                // every commit would land just after a poll and always wait the full interval.
                let phase = (round * 7 + 3) % 10;
                tokio::time::sleep(GIT_POLL * phase as u32 / 10).await;
            }
            self.repo.write(
                "releaseconfig/bench.yaml",
                release_config(n, &format!("change {round}")),
            )?;
            self.repo.commit(&format!("change {round}"))?;
            let started = Instant::now();
            if by_webhook {
                let body = br#"{"ref":"refs/heads/master"}"#;
                let signature = format!(
                    "sha256={}",
                    fhr_testenv::http::hmac_sha256_hex(WEBHOOK_SECRET.as_bytes(), body)
                );
                let (code, _) = fhr_testenv::http::request(
                    self.agent_admin,
                    "POST",
                    "/api/v1/webhook",
                    &[("X-Hub-Signature-256", &signature)],
                    body,
                )
                .await
                .map_err(anyhow::Error::msg)?;
                anyhow::ensure!(code == 202, "agent webhook answered {code}");
            }
            let deadline = GIT_POLL + Duration::from_secs(60);
            loop {
                let fhr = api.get(&name).await?;
                if fhr.status.as_ref().and_then(|s| s.revision).unwrap_or(0) > before
                    && is_ready(&fhr)
                {
                    break;
                }
                if started.elapsed() > deadline {
                    self.check_running()?;
                    bail!("{name} was not upgraded within {deadline:?} of a commit");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let seconds = started.elapsed().as_secs_f64();
            step(&format!(
                "change latency ({}): {seconds:.2} s",
                if by_webhook { "webhook" } else { "poll" }
            ));
            if by_webhook {
                webhook.push(seconds);
            } else {
                poll.push(seconds);
            }
        }
        Ok(Latency {
            poll_interval_seconds: GIT_POLL.as_secs_f64(),
            poll,
            webhook,
        })
    }
}

impl Drop for System {
    fn drop(&mut self) {
        // Keep the logs of a failed run where they can be read after the control plane is gone.
        let keep = crate::root().join("target/bench/logs");
        if std::fs::create_dir_all(&keep).is_ok() {
            for daemon in ["flux-agent", "helm-operator"] {
                let from = self.cp.dir().join("logs").join(format!("{daemon}.log"));
                let _ = std::fs::copy(from, keep.join(format!("{daemon}.log")));
            }
        }
    }
}
