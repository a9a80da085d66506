//! The foundation against a real control plane: the pinned kube-apiserver runs, the generated CRD
//! is accepted and enforces its schema, every example resource round-trips in both versions, the
//! real helm installs a chart, and RBAC is enforced for ServiceAccount tokens.

use e2e::{eventually, install_crd, shared_control_plane, unique_name};
use fhr_testenv::tools::CONTROL_PLANE;
use fhr_testenv::{ControlPlane, create_namespace};
use fhr_types::api::{VERSION, VERSION_V1ALPHA2, api_resource_v1alpha2};
use fhr_types::{FluxHelmRelease, FluxHelmReleaseSpec, FluxHelmReleaseStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, Object};
use serde_json::{Value, json};
use std::time::Duration;

type FluxHelmReleaseV1alpha2 = Object<FluxHelmReleaseSpec, FluxHelmReleaseStatus>;

#[tokio::test]
async fn control_plane_is_the_pinned_kube_apiserver() {
    let cp = shared_control_plane().await;
    let version = cp.client().await.apiserver_version().await.unwrap();
    eprintln!(
        "end-to-end tests run against kube-apiserver {} at {}",
        version.git_version,
        cp.server()
    );
    assert_eq!(version.git_version, CONTROL_PLANE.version());
}

#[tokio::test]
async fn generated_crd_becomes_established_with_both_versions_served() {
    let client = shared_control_plane().await.client().await;
    let crd = install_crd(&client).await;
    let status = crd.status.expect("an Established CRD has status");
    let conditions = status.conditions.unwrap_or_default();
    for wanted in ["Established", "NamesAccepted"] {
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == wanted && c.status == "True"),
            "{wanted} not True: {conditions:#?}"
        );
    }
    assert_eq!(status.stored_versions, Some(vec![VERSION.to_owned()]));
    let short_names = status.accepted_names.and_then(|n| n.short_names);
    assert_eq!(short_names, Some(vec!["fhr".to_owned()]));
}

#[tokio::test]
async fn every_example_resource_applies_and_reads_back_typed_in_both_versions() {
    let client = shared_control_plane().await.client().await;
    install_crd(&client).await;
    let namespace = unique_name("examples");
    create_namespace(&client, &namespace).await.unwrap();
    let documents = e2e::example_release_config();
    assert!(
        documents.len() >= 4,
        "expected the example resources, found {documents:#?}"
    );

    for doc in documents {
        let api_version = doc.value["apiVersion"].as_str().expect("apiVersion");
        let name = doc.value["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_owned();
        let expected: FluxHelmReleaseSpec = serde_json::from_value(doc.value["spec"].clone())
            .unwrap_or_else(|e| {
                panic!(
                    "{}: spec does not read as the typed spec: {e}",
                    doc.file.display()
                )
            });

        // Apply as written (v1alpha or v1alpha2), in the test's namespace.
        let (group, version) = api_version.split_once('/').expect("group/version");
        let resource = ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk(group, version, "FluxHelmRelease"),
            "fluxhelmreleases",
        );
        let mut object: DynamicObject = serde_json::from_value(doc.value.clone()).unwrap();
        object.metadata.namespace = Some(namespace.clone());
        let dynamic: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &namespace, &resource);
        dynamic
            .patch(
                &name,
                &PatchParams::apply(e2e::TEST_MANAGER),
                &Patch::Apply(&object),
            )
            .await
            .unwrap_or_else(|e| panic!("{}: apply {name}: {e}", doc.file.display()));

        let v1alpha: Api<FluxHelmRelease> = Api::namespaced(client.clone(), &namespace);
        let read = v1alpha.get(&name).await.unwrap();
        assert_eq!(
            read.spec,
            expected,
            "{} read back as v1alpha",
            doc.file.display()
        );
        assert_eq!(read.metadata.labels, object.metadata.labels);

        let v1alpha2: Api<FluxHelmReleaseV1alpha2> =
            Api::namespaced_with(client.clone(), &namespace, &api_resource_v1alpha2());
        let read2 = v1alpha2.get(&name).await.unwrap();
        assert_eq!(
            read2.types.as_ref().map(|t| t.api_version.as_str()),
            Some(format!("{}/{VERSION_V1ALPHA2}", fhr_types::api::GROUP).as_str())
        );
        assert_eq!(
            read2.spec,
            expected,
            "{} read back as v1alpha2",
            doc.file.display()
        );
    }
}

#[tokio::test]
async fn values_keep_types_and_order_through_the_apiserver() {
    let client = shared_control_plane().await.client().await;
    install_crd(&client).await;
    let namespace = unique_name("values");
    create_namespace(&client, &namespace).await.unwrap();
    let api: Api<FluxHelmRelease> = Api::namespaced(client, &namespace);
    let fhr: FluxHelmRelease = serde_json::from_value(json!({
        "apiVersion": "helm.integrations.flux.weave.works/v1alpha",
        "kind": "FluxHelmRelease",
        "metadata": {"name": "typed"},
        "spec": {
            "chartGitPath": "webapp",
            "values": [
                {"name": "replicaCount", "value": 3},
                {"name": "settings", "value": {"features": ["a", "b"], "debug": true}},
                {"name": "settings.debug", "value": false},
                {"name": "ratio", "value": 0.25},
            ]
        }
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &fhr).await.unwrap();
    let tree = Value::Object(created.spec.values.to_tree().unwrap());
    assert_eq!(
        tree,
        json!({
            "replicaCount": 3,
            "settings": {"features": ["a", "b"], "debug": false},
            "ratio": 0.25,
        })
    );
}

/// Creates a FluxHelmRelease from raw JSON and returns the apiserver's refusal message.
async fn refusal(client: &kube::Client, namespace: &str, spec: Value) -> String {
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace,
        &ApiResource::erase::<FluxHelmRelease>(&()),
    );
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "helm.integrations.flux.weave.works/v1alpha",
        "kind": "FluxHelmRelease",
        "metadata": {"name": unique_name("refused")},
        "spec": spec,
    }))
    .unwrap();
    match api.create(&PostParams::default(), &object).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "schema refusals are 422 Invalid: {e:?}");
            e.message
        }
        other => panic!(
            "expected the apiserver to refuse {spec_json}, got {other:?}",
            spec_json = object.data
        ),
    }
}

#[tokio::test]
async fn resources_that_break_the_schema_are_refused_naming_the_field() {
    let client = shared_control_plane().await.client().await;
    install_crd(&client).await;
    let namespace = unique_name("schema");
    create_namespace(&client, &namespace).await.unwrap();

    let no_chart = refusal(&client, &namespace, json!({"releaseName": "ok"})).await;
    assert!(
        no_chart.contains("set exactly one of chartGitPath (a chart in git) and chart"),
        "{no_chart}"
    );
    let two_charts = refusal(
        &client,
        &namespace,
        json!({"chartGitPath": "webapp", "chart": {"repository": "https://charts.example.com", "name": "webapp", "version": "1.0.0"}}),
    )
    .await;
    assert!(two_charts.contains("set exactly one"), "{two_charts}");
    let ftp = refusal(
        &client,
        &namespace,
        json!({"chart": {"repository": "ftp://charts.example.com", "name": "webapp", "version": "1.0.0"}}),
    )
    .await;
    assert!(ftp.contains("spec.chart.repository"), "{ftp}");

    let bad_name = refusal(
        &client,
        &namespace,
        json!({"chartGitPath": "webapp", "releaseName": "Not_Valid"}),
    )
    .await;
    assert!(bad_name.contains("spec.releaseName"), "{bad_name}");

    let long_name = refusal(
        &client,
        &namespace,
        json!({"chartGitPath": "webapp", "releaseName": "a".repeat(54)}),
    )
    .await;
    assert!(long_name.contains("spec.releaseName"), "{long_name}");
    assert!(long_name.contains("53"), "{long_name}");

    let two_sources = refusal(
        &client,
        &namespace,
        json!({"chartGitPath": "webapp", "valuesFrom": [{
            "configMapKeyRef": {"name": "a"}, "secretKeyRef": {"name": "b"}
        }]}),
    )
    .await;
    assert!(two_sources.contains("spec.valuesFrom[0]"), "{two_sources}");
    assert!(
        two_sources.contains("exactly one of configMapKeyRef and secretKeyRef"),
        "{two_sources}"
    );
}

#[tokio::test]
async fn real_helm_installs_an_example_chart_and_lists_it() {
    let cp = shared_control_plane().await;
    let client = cp.client().await;
    let namespace = unique_name("helm");
    create_namespace(&client, &namespace).await.unwrap();
    let chart = fhr_testenv::examples_dir().join("charts/webapp");
    e2e::output_ok(
        cp.helm()
            .args([
                "upgrade",
                "--install",
                "web",
                "--namespace",
                &namespace,
                "--set",
                "message=installed by helm",
            ])
            .arg(&chart),
    );

    let output =
        e2e::output_ok(
            cp.helm()
                .args(["list", "--namespace", &namespace, "--output", "json"]),
        );
    let releases: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(releases[0]["name"], "web", "{releases}");
    assert_eq!(releases[0]["status"], "deployed", "{releases}");
    assert_eq!(releases[0]["chart"], "webapp-1.2.0", "{releases}");

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let cm = config_maps.get("web-webapp").await.unwrap();
    assert_eq!(cm.data.unwrap()["message"], "installed by helm");
    // Helm 3 keeps its release record in a Secret the operator will read.
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let records = secrets
        .list(&kube::api::ListParams::default().labels("owner=helm,name=web"))
        .await
        .unwrap();
    assert_eq!(records.items.len(), 1);
}

#[tokio::test]
async fn service_account_tokens_carry_only_their_rbac_rights() {
    let cp = shared_control_plane().await;
    let admin = cp.client().await;
    let namespace = unique_name("rbac");
    create_namespace(&admin, &namespace).await.unwrap();
    let kubeconfig = cp
        .service_account_kubeconfig(&namespace, "nobody")
        .await
        .unwrap();
    let client = fhr_testenv::client_from_kubeconfig(&kubeconfig)
        .await
        .unwrap();

    let review: k8s_openapi::api::authentication::v1::SelfSubjectReview = {
        let api: Api<k8s_openapi::api::authentication::v1::SelfSubjectReview> =
            Api::all(client.clone());
        api.create(&PostParams::default(), &Default::default())
            .await
            .unwrap()
    };
    let username = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username);
    assert_eq!(
        username,
        Some(format!("system:serviceaccount:{namespace}:nobody"))
    );

    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    match secrets.list(&Default::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("a ServiceAccount without roles listed Secrets: {other:?}"),
    }
}

use fhr_testenv::process::alive as process_alive;

#[tokio::test]
async fn a_control_plane_stops_and_cleans_up_when_its_test_panics() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let cp = ControlPlane::start()
            .await
            .expect("start a second control plane");
        tx.send((cp.etcd_pid(), cp.apiserver_pid(), cp.dir().to_owned()))
            .unwrap();
        panic!("a test fails while holding a control plane");
    });
    assert!(task.await.unwrap_err().is_panic());
    let (etcd, apiserver, dir) = rx.await.unwrap();
    eventually(
        "the control plane's processes to end",
        Duration::from_secs(5),
        || async {
            match (process_alive(etcd), process_alive(apiserver)) {
                (false, false) => Ok(()),
                state => Err(format!("etcd alive, apiserver alive: {state:?}")),
            }
        },
    )
    .await;
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[tokio::test]
async fn kubectl_explain_documents_charts_from_repositories_and_registries() {
    let cp = shared_control_plane().await;
    install_crd(&cp.client().await).await;
    // The API server publishes a new CRD's OpenAPI shortly after it is established.
    let text = eventually(
        "kubectl explain fhr.spec.chart",
        Duration::from_secs(60),
        || async {
            let output = tokio::process::Command::new("kubectl")
                .args(["explain", "fluxhelmreleases.spec.chart", "--api-version"])
                .arg(format!("{}/{VERSION}", fhr_types::api::GROUP))
                .env("KUBECONFIG", cp.kubeconfig())
                .output()
                .await
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            if output.status.success() && text.contains("oci") {
                Ok(text)
            } else {
                Err(format!("{text}{}", String::from_utf8_lossy(&output.stderr)))
            }
        },
    )
    .await;
    for documented in [
        "A chart from a Helm chart repository or an OCI registry",
        "repository",
        "oci://<registry>/<path>/<chart>",
        "secretRef",
        "version",
        "newest",
    ] {
        assert!(text.contains(documented), "{documented:?} in\n{text}");
    }
}
