//! The deploy/ manifests against a real control plane: they apply server-side, and each daemon,
//! run with a token of its own ServiceAccount from deploy/ (not the admin's), does its job —
//! and no more: the agent cannot read Secrets.

use e2e::agent::AgentEnv;
use e2e::operator::ACT_TIMEOUT;
use e2e::{Daemon, eventually};
use fhr_testenv::ControlPlane;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, ListParams};
use std::path::Path;
use tokio::sync::OnceCell;

/// `kubectl apply --server-side -k deploy/`, once per test binary; returns kubectl's output.
async fn apply_deploy(cp: &ControlPlane) -> &'static str {
    static APPLIED: OnceCell<String> = OnceCell::const_new();
    APPLIED
        .get_or_init(|| async {
            let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
            let output = tokio::process::Command::new("kubectl")
                .args(["apply", "--server-side", "--force-conflicts", "-k"])
                .arg(&deploy)
                .env("KUBECONFIG", cp.kubeconfig())
                .output()
                .await
                .expect("run kubectl");
            assert!(
                output.status.success(),
                "kubectl apply -k deploy/ failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8_lossy(&output.stdout).into_owned()
        })
        .await
}

#[tokio::test]
async fn the_kustomization_applies_server_side() {
    let cp = e2e::shared_control_plane().await;
    let output = apply_deploy(cp).await;
    assert!(output.contains("serverside-applied"), "{output}");
    let client = cp.client().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "flux-helm");
    let mut names: Vec<_> = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|d| d.metadata.name)
        .collect();
    names.sort();
    assert_eq!(names, ["flux-agent", "helm-operator"]);
    for deployment in deployments.list(&ListParams::default()).await.unwrap() {
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        let security = pod.security_context.unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        let container = &pod.containers[0];
        let context = container.security_context.as_ref().unwrap();
        assert_eq!(context.allow_privilege_escalation, Some(false));
        assert_eq!(context.read_only_root_filesystem, Some(true));
        assert!(container.liveness_probe.is_some() && container.readiness_probe.is_some());
        assert!(
            container
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .is_some()
        );
    }
    // The sharded variant renders: three replicas sharing the releases.
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let sharded = e2e::output_ok(
        std::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(deploy.join("variants/sharded")),
    );
    let sharded = String::from_utf8_lossy(&sharded.stdout);
    assert!(
        sharded.contains("--sharding=auto") && sharded.contains("replicas: 3"),
        "{sharded}"
    );
    let accounts: Api<ServiceAccount> = Api::namespaced(client, "flux-helm");
    for account in ["flux-agent", "helm-operator"] {
        assert!(
            accounts.get_opt(account).await.unwrap().is_some(),
            "{account}"
        );
    }
}

#[tokio::test]
async fn each_daemon_does_its_job_with_its_own_service_account_and_the_agent_cannot_read_secrets() {
    let cp = e2e::shared_control_plane().await;
    apply_deploy(cp).await;
    let env = AgentEnv::new("least").await;
    env.commit_example_release("web");
    let agent_kubeconfig = cp
        .service_account_kubeconfig("flux-helm", "flux-agent")
        .await
        .unwrap();
    let operator_kubeconfig = cp
        .service_account_kubeconfig("flux-helm", "helm-operator")
        .await
        .unwrap();

    // The agent keeps its state object in its own namespace, as its Role allows.
    let agent_args = env.agent_args(&["--state-namespace=flux-helm"]);
    let agent = Daemon::start("flux-agent", &agent_kubeconfig, env.dir.path(), &agent_args);
    agent.wait_ready().await;
    // Its Role grants Leases in its own namespace only: enough for the replicas' own Leases of
    // automatic sharding (deploy/variants/sharded) too.
    let operator_args = env.operator_args(
        cp.tools(),
        &[
            "--leader-election-namespace=flux-helm",
            "--sharding=auto",
            "--lease-duration=5s",
        ],
    );
    let operator = Daemon::start(
        "helm-operator",
        &operator_kubeconfig,
        env.dir.path(),
        &operator_args,
    );
    operator.wait_ready().await;

    let api = env.api(&env.namespace);
    eventually(
        "the agent's object to be installed by the operator",
        ACT_TIMEOUT,
        || async {
            let fhr = api.get_opt("web").await.map_err(|e| e.to_string())?;
            match fhr.as_ref().and_then(|f| f.condition("Ready")) {
                Some(c) if c.status == "True" => Ok(()),
                _ => Err(format!(
                    "{:?}\n{}\n{}",
                    fhr.and_then(|f| f.status),
                    agent.log_tail(),
                    operator.log_tail()
                )),
            }
        },
    )
    .await;
    let release = format!("{}-web", env.namespace);
    e2e::output_ok(
        cp.helm()
            .args(["status", &release, "--namespace", &env.namespace]),
    );
    assert!(
        !agent.log().contains("forbidden"),
        "the agent hit RBAC:\n{}",
        agent.log_tail()
    );
    assert!(
        !operator.log().contains("forbidden"),
        "the operator hit RBAC:\n{}",
        operator.log_tail()
    );

    // Least privilege, proven: the agent's own credentials cannot read Secrets anywhere.
    let as_agent = fhr_testenv::client_from_kubeconfig(&agent_kubeconfig)
        .await
        .unwrap();
    for namespace in ["flux-helm", env.namespace.as_str()] {
        let secrets: Api<Secret> = Api::namespaced(as_agent.clone(), namespace);
        match secrets.list(&ListParams::default()).await {
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
            other => panic!("flux-agent listed Secrets in {namespace}: {other:?}"),
        }
    }
    let all_secrets: Api<Secret> = Api::all(as_agent.clone());
    assert!(
        matches!(all_secrets.list(&ListParams::default()).await, Err(kube::Error::Api(e)) if e.code == 403)
    );
    let deployments: Api<Deployment> = Api::namespaced(as_agent, "flux-helm");
    assert!(
        matches!(deployments.list(&ListParams::default()).await, Err(kube::Error::Api(e)) if e.code == 403),
        "flux-agent may only touch FluxHelmRelease objects, its state object, Events and its Lease"
    );
}
