//! An environment for flux-agent tests: a namespace, the CRD, a git repository behind basic auth,
//! and the agent process syncing it.

use crate::{Daemon, eventually, install_crd, shared_control_plane, unique_name};
use fhr_testenv::{ControlPlane, GitServer, GitServerOptions, TestRepo, WorkDir, create_namespace};
use fhr_types::FluxHelmRelease;
use kube::api::Api;
use std::time::Duration;

/// How long a test waits for the agent to sync.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// The git user the tests' server requires.
pub const GIT_USER: &str = "deploy";

/// One test's world.
pub struct AgentEnv {
    /// The control plane.
    pub cp: &'static ControlPlane,
    /// Admin client.
    pub client: kube::Client,
    /// The test's namespace (manifests name it; the state object lives there).
    pub namespace: String,
    /// The agent's sync set.
    pub sync_set: String,
    /// The git server (basic auth).
    pub git: GitServer,
    /// The repository.
    pub repo: TestRepo,
    /// Scratch folder.
    pub dir: WorkDir,
    /// The git password (a canary: it must never show up in any output).
    pub password: String,
    /// The running agent.
    pub agent: Option<Daemon>,
}

impl AgentEnv {
    /// A fresh namespace, sync set and repository (with an empty `releaseconfig/`).
    pub async fn new(prefix: &str) -> AgentEnv {
        let cp = shared_control_plane().await;
        let client = cp.client().await;
        install_crd(&client).await;
        let namespace = unique_name(prefix);
        create_namespace(&client, &namespace).await.unwrap();
        let password = format!("canary-{}", unique_name("pw"));
        let git = GitServer::start(GitServerOptions {
            basic_auth: Some((GIT_USER.into(), password.clone())),
            ..Default::default()
        })
        .await
        .unwrap();
        let repo = git.create_repo("config", "master").unwrap();
        repo.write("releaseconfig/.keep", "").unwrap();
        repo.commit("empty release configuration").unwrap();
        let dir = WorkDir::create(prefix).unwrap();
        std::fs::write(dir.path().join("git-user"), format!("{GIT_USER}\n")).unwrap();
        std::fs::write(dir.path().join("git-password"), format!("{password}\n")).unwrap();
        AgentEnv {
            cp,
            client,
            sync_set: namespace.clone(),
            namespace,
            git,
            repo,
            dir,
            password,
            agent: None,
        }
    }

    /// The git flags both daemons need for this environment's repository and its credentials.
    fn git_args(&self) -> Vec<String> {
        vec![
            format!("--git-url={}", self.git.url("config")),
            format!(
                "--git-username-file={}",
                self.dir.path().join("git-user").display()
            ),
            format!(
                "--git-password-file={}",
                self.dir.path().join("git-password").display()
            ),
            "--git-allow-insecure-http".into(),
            "--git-poll-interval=1s".into(),
        ]
    }

    /// The agent's command line for this environment; a flag in `extra` replaces the default.
    pub fn agent_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = self.git_args();
        args.extend([
            "--sync-interval=5m".into(),
            format!("--sync-set={}", self.sync_set),
            format!("--state-namespace={}", self.namespace),
            format!(
                "--state-dir={}",
                self.dir.path().join("agent-state").display()
            ),
        ]);
        crate::with_flags(args, extra)
    }

    /// A helm-operator command line for this environment: its repository with its credentials,
    /// its namespace; a flag in `extra` replaces the default.
    pub fn operator_args(&self, tools: &fhr_testenv::Tools, extra: &[&str]) -> Vec<String> {
        let mut args = self.git_args();
        args.extend(tools.operator_flags());
        args.extend([
            format!("--namespace={}", self.namespace),
            format!(
                "--state-dir={}",
                self.dir.path().join("operator-state").display()
            ),
        ]);
        crate::with_flags(args, extra)
    }

    /// The agent's command line for fetching this environment's repository over SSH from
    /// `ssh`, trusting the host keys in `known_hosts` (no basic auth flags).
    pub fn ssh_agent_args(
        &self,
        ssh: &fhr_testenv::SshServer,
        known_hosts: &std::path::Path,
    ) -> Vec<String> {
        self.agent_args(&[
            &format!("--git-url={}", ssh.url(&self.git.repo_path("config"))),
            &format!("--ssh-key-path={}", ssh.deploy_key().display()),
            &format!("--known-hosts-path={}", known_hosts.display()),
        ])
        .into_iter()
        .filter(|a| !a.starts_with("--git-password-file") && !a.starts_with("--git-username-file"))
        .collect()
    }

    /// Starts the agent with the admin kubeconfig and waits for its first sync.
    pub async fn start_agent(&mut self, extra: &[&str]) -> &Daemon {
        let args = self.agent_args(extra);
        self.start_agent_with(&args).await
    }

    /// Starts the agent with exactly `args` and waits for its first sync.
    pub async fn start_agent_with(&mut self, args: &[String]) -> &Daemon {
        let agent = Daemon::start("flux-agent", self.cp.kubeconfig(), self.dir.path(), args);
        agent.wait_ready().await;
        self.agent = Some(agent);
        self.agent.as_ref().unwrap()
    }

    /// The running agent.
    pub fn agent(&self) -> &Daemon {
        self.agent.as_ref().expect("the agent was started")
    }

    /// Writes `secret` into a file (with the newline an editor leaves) and returns the agent's flag
    /// naming it.
    pub fn webhook_secret_flag(&self, secret: &str) -> String {
        let file = self.dir.path().join("webhook-secret");
        std::fs::write(&file, format!("{secret}\n")).unwrap();
        format!("--webhook-secret-file={}", file.display())
    }

    /// Commits the example charts and one release `name` of chart `webapp`; the commit.
    pub fn commit_example_release(&self, name: &str) -> String {
        self.repo
            .copy_dir(&fhr_testenv::examples_dir().join("charts"), "charts")
            .unwrap();
        self.repo
            .write(
                &format!("releaseconfig/{name}.yaml"),
                self.manifest(name, "webapp"),
            )
            .unwrap();
        self.repo
            .commit("the example charts and a release")
            .unwrap()
    }

    /// A FluxHelmRelease manifest for the test's namespace.
    pub fn manifest(&self, name: &str, chart: &str) -> String {
        format!(
            "apiVersion: helm.integrations.flux.weave.works/v1alpha\nkind: FluxHelmRelease\nmetadata:\n  name: {name}\n  namespace: {}\nspec:\n  chartGitPath: {chart}\n",
            self.namespace
        )
    }

    /// FluxHelmRelease objects in a namespace.
    pub fn api(&self, namespace: &str) -> Api<FluxHelmRelease> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Waits until the agent reports `commit` in its state object, and returns its data.
    pub async fn wait_synced(&self, commit: &str) -> std::collections::BTreeMap<String, String> {
        let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let name = format!("{}-state", self.sync_set);
        eventually(
            &format!("the agent to sync {commit}"),
            SYNC_TIMEOUT,
            || async {
                let state = config_maps
                    .get_opt(&name)
                    .await
                    .map_err(|e| e.to_string())?;
                let data = state.and_then(|s| s.data).unwrap_or_default();
                if data.get("commit").map(String::as_str) == Some(commit) {
                    Ok(data)
                } else {
                    Err(format!(
                        "{data:?}\n{}",
                        self.agent
                            .as_ref()
                            .map(|a| a.log_tail())
                            .unwrap_or_default()
                    ))
                }
            },
        )
        .await
    }

    /// Commits the working copy and waits for the agent to sync it.
    pub async fn commit_and_sync(
        &self,
        message: &str,
    ) -> std::collections::BTreeMap<String, String> {
        let commit = self.repo.commit(message).unwrap();
        self.wait_synced(&commit).await
    }
}
