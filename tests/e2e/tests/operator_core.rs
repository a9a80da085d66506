//! helm-operator's core flow against a real control plane, the real helm and a git server:
//! install, upgrade on values change, targeted upgrades on chart change, no Helm process when
//! nothing changed, uninstall on delete (also after downtime), bad input, waiting for the CRD.

use e2e::operator::{OperatorEnv, ready_message};
use e2e::{Daemon, eventually, install_crd};
use fhr_testenv::{ControlPlane, WorkDir, create_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use serde_json::json;
use std::time::Duration;

fn deployed(release: &'static str, revision: i64) -> impl Fn(&fhr_types::FluxHelmRelease) -> bool {
    move |f| {
        let s = f.status.clone().unwrap_or_default();
        s.release_name.as_deref() == Some(release)
            && s.release_status.as_deref() == Some("deployed")
            && s.revision == Some(revision)
            && f.condition("Ready").is_some_and(|c| c.status == "True")
    }
}

#[tokio::test]
async fn a_new_resource_installs_its_release_and_reports_ready() {
    let mut env = OperatorEnv::new("install").await;
    env.start_operator(&[]).await;
    // The original integration's example, as written (but for the namespace).
    env.apply(
        "mongodb",
        json!({
            "chartGitPath": "mongodb",
            "releaseName": "mongo-database",
            "values": [
                {"name": "image", "value": "bitnami/mongodb:3.7.1-r1"},
                {"name": "imagePullPolicy", "value": "IfNotPresent"},
            ]
        }),
    )
    .await;
    let fhr = env
        .wait_for(
            "mongodb",
            "deployed at revision 1",
            deployed("mongo-database", 1),
        )
        .await;
    let status = fhr.status.unwrap();
    assert_eq!(status.chart_revision, Some(env.repo.head().unwrap()));
    assert_eq!(status.observed_generation, fhr.metadata.generation);
    assert!(status.last_applied_digest.is_some());
    assert_eq!(status.last_applied_digest, status.last_attempted_digest);
    let released = fhr.metadata.finalizers.unwrap_or_default();
    assert_eq!(released, vec![fhr_types::meta::FINALIZER.to_owned()]);

    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    let deployment = deployments.get("mongo-database-mongodb").await.unwrap();
    let container = &deployment.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(container.image.as_deref(), Some("bitnami/mongodb:3.7.1-r1"));
    assert_eq!(
        env.helm_history("mongo-database"),
        vec![(1, "deployed".to_owned())]
    );

    // Without releaseName the release is named <namespace>-<name>.
    env.apply("web", json!({"chartGitPath": "webapp"})).await;
    let default_name: &'static str = Box::leak(format!("{}-web", env.namespace).into_boxed_str());
    env.wait_for(
        "web",
        "deployed under the default name",
        deployed(default_name, 1),
    )
    .await;
}

#[tokio::test]
async fn changing_values_upgrades_in_list_and_map_form_with_typed_values() {
    let mut env = OperatorEnv::new("values").await;
    // The helm CLI fallback: the core tests cover it as well as the engine.
    env.start_operator(&["--helm-engine=cli"]).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.namespace);
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);

    // The original list form.
    env.apply(
        "list",
        json!({"chartGitPath": "webapp", "releaseName": "list", "values": [
            {"name": "message", "value": "first"},
        ]}),
    )
    .await;
    env.wait_for("list", "revision 1", deployed("list", 1))
        .await;
    env.apply(
        "list",
        json!({"chartGitPath": "webapp", "releaseName": "list", "values": [
            {"name": "message", "value": "second"},
            {"name": "replicaCount", "value": 3},
            {"name": "settings.features", "value": ["a", "b"]},
            {"name": "service.enabled", "value": false},
        ]}),
    )
    .await;
    env.wait_for("list", "revision 2", deployed("list", 2))
        .await;
    let data = config_maps.get("list-webapp").await.unwrap().data.unwrap();
    assert_eq!(data["message"], "second");
    assert_eq!(data["replicas"], "3");
    assert!(
        data["settings.yaml"].contains("- a\n"),
        "{}",
        data["settings.yaml"]
    );
    let replicas = deployments
        .get("list-webapp")
        .await
        .unwrap()
        .spec
        .unwrap()
        .replicas;
    assert_eq!(replicas, Some(3), "an integer value stays an integer");
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(env.client.clone(), &env.namespace);
    assert!(
        services.get_opt("list-webapp").await.unwrap().is_none(),
        "a boolean value stays a boolean"
    );

    // The map form, through the v1alpha2 API.
    env.apply_version(
        "map",
        "v1alpha2",
        json!({"chartGitPath": "webapp", "releaseName": "map", "values": {
            "message": "from a map", "settings": {"logLevel": "debug", "features": ["x"]},
        }}),
    )
    .await;
    env.wait_for("map", "revision 1", deployed("map", 1)).await;
    env.apply_version(
        "map",
        "v1alpha2",
        json!({"chartGitPath": "webapp", "releaseName": "map", "values": {
            "message": "changed map", "replicaCount": 2, "settings": {"logLevel": "warn"},
        }}),
    )
    .await;
    env.wait_for("map", "revision 2", deployed("map", 2)).await;
    let data = config_maps.get("map-webapp").await.unwrap().data.unwrap();
    assert_eq!(data["message"], "changed map");
    assert!(
        data["settings.yaml"].contains("logLevel: warn"),
        "{}",
        data["settings.yaml"]
    );
    assert_eq!(data["replicas"], "2");
    assert!(
        env.operator()
            .metric("fhr_operator_helm_cli_processes_total")
            .await
            >= 4.0,
        "the helm CLI took the four actions"
    );
}

#[tokio::test]
async fn only_releases_of_a_changed_chart_upgrade_and_nothing_else_starts_helm() {
    let mut env = OperatorEnv::new("targeted").await;
    env.start_operator(&["--charts-sync-interval=2s"]).await;
    env.apply(
        "web-a",
        json!({"chartGitPath": "webapp", "releaseName": "web-a"}),
    )
    .await;
    env.apply(
        "web-b",
        json!({"chartGitPath": "webapp", "releaseName": "web-b"}),
    )
    .await;
    env.apply(
        "db",
        json!({"chartGitPath": "mongodb", "releaseName": "db"}),
    )
    .await;
    for (name, release) in [("web-a", "web-a"), ("web-b", "web-b"), ("db", "db")] {
        env.wait_for(name, "revision 1", deployed(release, 1)).await;
    }
    let installs = env.helm_processes().await;
    assert_eq!(installs, 3.0, "one helm process per install");

    // Periodic re-checks with nothing changed start no Helm process.
    let reconciles = env.operator().metric("fhr_operator_reconciles_total").await;
    env.operator()
        .wait_metric("fhr_operator_reconciles_total", reconciles + 6.0)
        .await;
    assert_eq!(
        env.helm_processes().await,
        installs,
        "re-checks of in-sync releases ran helm"
    );

    // A commit outside every chart folder starts no Helm process.
    env.repo
        .write("README.md", "changed, but no chart\n")
        .unwrap();
    env.repo
        .write("releaseconfig/other.yaml", "kind: Nothing\n")
        .unwrap();
    let elsewhere = env.repo.commit("docs only").unwrap();
    env.wait_fetched(&elsewhere).await;
    let reconciles = env.operator().metric("fhr_operator_reconciles_total").await;
    env.operator()
        .wait_metric("fhr_operator_reconciles_total", reconciles + 3.0)
        .await;
    assert_eq!(
        env.helm_processes().await,
        installs,
        "a commit elsewhere ran helm"
    );

    // A commit to the webapp chart upgrades exactly the two webapp releases.
    env.repo
        .write("charts/webapp/templates/extra.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-extra\ndata:\n  added: \"yes\"\n")
        .unwrap();
    let chart_change = env.repo.commit("webapp: add a ConfigMap").unwrap();
    env.wait_for("web-a", "revision 2", deployed("web-a", 2))
        .await;
    let web_b = env
        .wait_for("web-b", "revision 2", deployed("web-b", 2))
        .await;
    assert_eq!(web_b.status.unwrap().chart_revision, Some(chart_change));
    let config_maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.namespace);
    assert!(config_maps.get_opt("web-a-extra").await.unwrap().is_some());
    assert_eq!(
        env.helm_processes().await,
        installs + 2.0,
        "exactly two upgrades"
    );
    let db = env.api().get("db").await.unwrap();
    assert_eq!(
        db.status.unwrap().revision,
        Some(1),
        "the mongodb release was not touched"
    );
    assert_eq!(env.helm_history("db"), vec![(1, "deployed".to_owned())]);
}

#[tokio::test]
async fn deleting_a_resource_uninstalls_its_release_even_if_the_operator_was_down() {
    let mut env = OperatorEnv::new("delete").await;
    // The helm CLI fallback, here and after the restart below.
    env.start_operator(&["--helm-engine=cli"]).await;
    env.apply(
        "gone",
        json!({"chartGitPath": "webapp", "releaseName": "gone"}),
    )
    .await;
    env.apply(
        "later",
        json!({"chartGitPath": "webapp", "releaseName": "later"}),
    )
    .await;
    env.wait_for("gone", "revision 1", deployed("gone", 1))
        .await;
    env.wait_for("later", "revision 1", deployed("later", 1))
        .await;

    env.delete("gone").await;
    let api = env.api();
    eventually(
        "the resource and its release to be gone",
        Duration::from_secs(60),
        || async {
            let resource = api.get_opt("gone").await.map_err(|e| e.to_string())?;
            let history = env.helm_history("gone");
            if resource.is_none() && history.is_empty() {
                Ok(())
            } else {
                Err(format!("{resource:?} {history:?}"))
            }
        },
    )
    .await;
    let config_maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.namespace);
    assert!(
        config_maps.get_opt("gone-webapp").await.unwrap().is_none(),
        "the chart's objects are gone"
    );

    // Stopped operator: the finalizer holds the resource until the operator is back.
    let mut operator = env.operator.take().unwrap();
    let exit = operator.process.terminate(Duration::from_secs(30));
    assert!(
        exit.is_some_and(|s| s.success()),
        "a clean SIGTERM exit, got {exit:?}\n{}",
        operator.log_tail()
    );
    env.delete("later").await;
    let held = api.get("later").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(env.helm_history("later"), vec![(1, "deployed".to_owned())]);
    env.start_operator(&["--helm-engine=cli"]).await;
    eventually(
        "the release deleted while the operator was down to be uninstalled",
        Duration::from_secs(60),
        || async {
            let resource = api.get_opt("later").await.map_err(|e| e.to_string())?;
            let history = env.helm_history("later");
            if resource.is_none() && history.is_empty() {
                Ok(())
            } else {
                Err(format!("{history:?}"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn bad_input_is_reported_on_the_resource_and_loses_nothing() {
    let mut env = OperatorEnv::new("bad").await;
    // A chart whose objects the apiserver refuses, and one whose template breaks on upgrade.
    env.repo
        .write(
            "charts/refused/Chart.yaml",
            "apiVersion: v2\nname: refused\nversion: 0.1.0\n",
        )
        .unwrap();
    env.repo
        .write("charts/refused/templates/svc.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: {{ .Release.Name }}\nspec:\n  ports:\n    - port: {{ .Values.port }}\n")
        .unwrap();
    env.repo
        .write("charts/refused/values.yaml", "port: 80\n")
        .unwrap();
    // A chart with a template that is a symlink out of the repository.
    env.repo
        .write(
            "charts/escaping/Chart.yaml",
            "apiVersion: v2\nname: escaping\nversion: 0.1.0\n",
        )
        .unwrap();
    std::fs::create_dir_all(env.repo.path().join("charts/escaping/templates")).unwrap();
    std::os::unix::fs::symlink(
        "/etc/passwd",
        env.repo
            .path()
            .join("charts/escaping/templates/passwd.yaml"),
    )
    .unwrap();
    env.repo
        .commit("a chart whose port comes from values")
        .unwrap();
    env.start_operator(&[]).await;

    env.apply(
        "healthy",
        json!({"chartGitPath": "webapp", "releaseName": "healthy"}),
    )
    .await;
    env.apply("traversal", json!({"chartGitPath": "../../etc"}))
        .await;
    env.apply("absolute", json!({"chartGitPath": "/etc"})).await;
    env.apply("missing", json!({"chartGitPath": "no-such-chart"}))
        .await;
    env.apply(
        "template",
        json!({"chartGitPath": "cronjob", "releaseName": "template"}),
    )
    .await;
    env.apply(
        "refused",
        json!({"chartGitPath": "refused", "releaseName": "refused"}),
    )
    .await;
    env.apply(
        "escaping",
        json!({"chartGitPath": "escaping", "releaseName": "escaping"}),
    )
    .await;

    env.wait_for("healthy", "deployed", deployed("healthy", 1))
        .await;
    for name in ["traversal", "absolute"] {
        let fhr = env.wait_condition(name, "False", "InvalidChartPath").await;
        assert!(fhr.condition("Stalled").is_some_and(|c| c.status == "True"));
        assert!(
            !ready_message(&fhr).contains("root:"),
            "no file contents in messages"
        );
    }
    let missing = env
        .wait_condition("missing", "False", "ChartNotFound")
        .await;
    assert!(
        ready_message(&missing).contains("charts/no-such-chart"),
        "{}",
        ready_message(&missing)
    );
    let template = env
        .wait_condition("template", "False", "InstallFailed")
        .await;
    assert!(
        ready_message(&template).contains("schedule is required"),
        "{}",
        ready_message(&template)
    );
    assert!(template.status.unwrap().failures >= Some(1));
    env.wait_for("refused", "deployed", deployed("refused", 1))
        .await;
    let escaping = env
        .wait_condition("escaping", "False", "ChartRefused")
        .await;
    let message = ready_message(&escaping);
    assert!(message.contains("templates/passwd.yaml"), "{message}");
    assert!(!message.contains("root:"), "no file bytes in messages");
    assert!(
        env.helm_history("escaping").is_empty(),
        "no Helm process for a refused chart"
    );

    // An upgrade the apiserver refuses (port out of range) fails; revision 1 stays deployed.
    env.apply(
        "refused",
        json!({"chartGitPath": "refused", "releaseName": "refused",
        "values": [{"name": "port", "value": 99999}]}),
    )
    .await;
    let refused = env
        .wait_condition("refused", "False", "UpgradeFailed")
        .await;
    assert!(
        ready_message(&refused).contains("port"),
        "{}",
        ready_message(&refused)
    );
    let history = env.helm_history("refused");
    assert!(
        history.contains(&(1, "deployed".to_owned())),
        "the last good revision stays deployed: {history:?}"
    );

    // A chart change that breaks the template: the upgrade fails before Helm writes anything.
    env.repo
        .write(
            "charts/webapp/templates/broken.yaml",
            "{{ required \"broken.value is required\" .Values.broken.value }}\n",
        )
        .unwrap();
    env.repo.commit("break the webapp chart").unwrap();
    let healthy = env
        .wait_condition("healthy", "False", "UpgradeFailed")
        .await;
    assert!(
        ready_message(&healthy).contains("broken"),
        "{}",
        ready_message(&healthy)
    );
    assert_eq!(
        env.helm_history("healthy"),
        vec![(1, "deployed".to_owned())]
    );

    // Other releases keep reconciling, and nothing crash-looped.
    env.apply(
        "late",
        json!({"chartGitPath": "mongodb", "releaseName": "late"}),
    )
    .await;
    env.wait_for("late", "deployed", deployed("late", 1)).await;
    let mut operator = env.operator.take().unwrap();
    assert!(
        operator.process.try_wait().is_none(),
        "the operator is still running"
    );
    // Fixing git heals the broken release.
    env.repo
        .remove("charts/webapp/templates/broken.yaml")
        .unwrap();
    env.repo.commit("fix the webapp chart").unwrap();
    env.operator = Some(operator);
    env.wait_condition("healthy", "True", "ReleaseInSync").await;
}

#[tokio::test]
async fn started_before_the_crd_exists_the_operator_waits_then_works() {
    // A control plane of its own: the shared one has the CRD already.
    let cp = ControlPlane::start()
        .await
        .expect("a control plane without the CRD");
    let client = cp.client().await;
    let dir = WorkDir::create("no-crd").unwrap();
    let git = fhr_testenv::GitServer::start(Default::default())
        .await
        .unwrap();
    let repo = git.create_repo("config", "master").unwrap();
    repo.copy_dir(&fhr_testenv::examples_dir().join("charts"), "charts")
        .unwrap();
    repo.commit("charts").unwrap();
    let mut args = vec![
        format!("--git-url={}", git.url("config")),
        "--git-poll-interval=1s".to_owned(),
        format!("--state-dir={}", dir.path().join("state").display()),
    ];
    args.extend(cp.tools().operator_flags());
    let mut operator = Daemon::start("helm-operator", cp.kubeconfig(), dir.path(), &args);
    eventually(
        "the operator to report the missing CRD",
        Duration::from_secs(30),
        || async {
            match operator.get("/readyz").await {
                Ok((503, body)) if body.contains("not installed") => Ok(()),
                other => Err(format!("{other:?}\n{}", operator.log_tail())),
            }
        },
    )
    .await;
    assert!(
        operator.process.try_wait().is_none(),
        "waiting, not crashing"
    );
    assert!(
        operator
            .get("/healthz")
            .await
            .is_ok_and(|(code, _)| code == 200)
    );

    install_crd(&client).await;
    operator.wait_ready().await;
    create_namespace(&client, "late-crd").await.unwrap();
    let api: Api<fhr_types::FluxHelmRelease> = Api::namespaced(client.clone(), "late-crd");
    let fhr: fhr_types::FluxHelmRelease = serde_json::from_value(json!({
        "apiVersion": "helm.integrations.flux.weave.works/v1alpha", "kind": "FluxHelmRelease",
        "metadata": {"name": "web"}, "spec": {"chartGitPath": "webapp"}
    }))
    .unwrap();
    api.create(&Default::default(), &fhr).await.unwrap();
    eventually(
        "the release to install once the CRD exists",
        Duration::from_secs(90),
        || async {
            let fhr = api.get("web").await.map_err(|e| e.to_string())?;
            match fhr.condition("Ready") {
                Some(c) if c.status == "True" => Ok(()),
                _ => Err(format!("{:?}\n{}", fhr.status, operator.log_tail())),
            }
        },
    )
    .await;
}
