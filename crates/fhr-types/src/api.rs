//! The `FluxHelmRelease` custom resource.

use crate::values::Values;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::core::{ApiResource, GroupVersionKind};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of the original integration.
pub const GROUP: &str = "helm.integrations.flux.weave.works";
/// The storage version.
pub const VERSION: &str = "v1alpha";
/// The version the original project moved to; served with the same schema.
pub const VERSION_V1ALPHA2: &str = "v1alpha2";
/// The kind.
pub const KIND: &str = "FluxHelmRelease";

/// Desired state of one Helm release, kept in git.
// clippy reads the repeated `type_ = "string"` of separate printcolumns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "helm.integrations.flux.weave.works",
    version = "v1alpha",
    kind = "FluxHelmRelease",
    namespaced,
    shortname = "fhr",
    category = "flux",
    status = "FluxHelmReleaseStatus",
    doc = "A Helm release whose chart and values are kept in git.",
    derive = "PartialEq",
    printcolumn(name = "Release", type_ = "string", json_path = ".status.releaseName"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.releaseStatus"),
    printcolumn(name = "Revision", type_ = "integer", json_path = ".status.revision"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.chartGitPath) != has(self.chart)",
    "message": "set exactly one of chartGitPath (a chart in git) and chart (a chart from a repository)"
}]))]
pub struct FluxHelmReleaseSpec {
    /// The chart's folder under the operator's charts path: relative, normalised, no `..`. Set
    /// this or `chart`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub chart_git_path: Option<String>,

    /// A chart from a Helm chart repository or an OCI registry instead of git. Set this or
    /// `chartGitPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<RepositoryChart>,

    /// Helm release name; defaults to `<namespace>-<name>`. Setting it explicitly lets the operator
    /// adopt an existing release of that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 53),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub release_name: Option<String>,

    /// Values on top of the chart's `values.yaml`.
    #[serde(default, skip_serializing_if = "Values::is_empty")]
    pub values: Values,

    /// ConfigMap or Secret keys in the same namespace holding values files, merged in order before `values`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_from: Vec<ValuesFromSource>,

    /// How long one Helm action may take (for example `5m`); Helm's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub timeout: Option<String>,

    /// Wait until the release's objects are ready before marking it deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,

    /// What to do when an upgrade fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,

    /// Stop all actions on this release until unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,

    /// How many release revisions Helm keeps; Helm's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_history: Option<i32>,

    /// A ServiceAccount of this resource's namespace: every Helm action for the release runs
    /// as it (impersonated), with its rights. Unset: the operator's
    /// `--default-service-account`, or the operator's own rights when that is unset too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub service_account_name: Option<String>,
}

/// A chart from a Helm chart repository (an `index.yaml` and archives served over HTTP) or from
/// an OCI registry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.repository) != has(self.oci)",
        "message": "set exactly one of repository (a Helm chart repository) and oci (an OCI registry)"
    },
    {
        "rule": "has(self.repository) == has(self.name)",
        "message": "name goes with repository; an oci reference names its chart itself"
    }
]))]
pub struct RepositoryChart {
    /// A Helm chart repository's URL, where its `index.yaml` is: `https://…` (`http://` only
    /// when the operator runs with `--chart-allow-insecure-http`). Set this and `name`, or `oci`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub repository: Option<String>,
    /// The chart's name in the repository's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")
    )]
    pub name: Option<String>,
    /// The chart in an OCI registry: `oci://<registry>/<path>/<chart>`, without a tag (the
    /// version picks it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 2048),
        regex(pattern = r"^oci://[^\s:@]+(:[0-9]+)?/[^\s:@]+$")
    )]
    pub oci: Option<String>,
    /// An exact version (`1.2.3`) or a range (`~1.2.0`, `^1`, `>=1.2 <2`, `1.2.x`): the newest
    /// version in the index that matches is installed, and a newer one that matches upgrades.
    #[schemars(length(min = 1, max = 128))]
    pub version: String,
    /// A Secret of this resource's namespace with the repository's credentials: `username` and
    /// `password` (basic auth), or `token` (a bearer token). Read with the release's
    /// ServiceAccount, sent only to the repository's host, never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// A Secret of this resource's namespace whose `ca.crt` (PEM) signs the repository's or
    /// registry's TLS certificate: trusted besides the system's CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<LocalObjectReference>,
}

/// An object of the resource's own namespace, by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectReference {
    /// The object's name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// One source of values: a key of a ConfigMap or Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.configMapKeyRef) != has(self.secretKeyRef)",
    "message": "set exactly one of configMapKeyRef and secretKeyRef"
}]))]
pub struct ValuesFromSource {
    /// A ConfigMap key holding a values file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
    /// A Secret key holding a values file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
}

/// A key of a ConfigMap or Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    /// The object's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key; `values.yaml` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// When true, a missing object or key is skipped instead of failing the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// Rollback on a failed upgrade.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollback {
    /// Roll back to the last deployed revision when an upgrade fails.
    #[serde(default)]
    pub enable: bool,
    /// Wait for the rolled-back objects to be ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
    /// How long the rollback may take; `spec.timeout` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub timeout: Option<String>,
    /// Skip hooks during the rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_hooks: Option<bool>,
}

/// Observed state, written by helm-operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FluxHelmReleaseStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Helm release this resource manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_name: Option<String>,
    /// Helm's status of the release: deployed, failed, pending-install, ….
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_status: Option<String>,
    /// Helm's revision number of the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// The git commit of the chart folder last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart_revision: Option<String>,
    /// Digest of chart and values last applied successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_digest: Option<String>,
    /// Digest of chart and values last attempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_digest: Option<String>,
    /// Consecutive failed attempts since the last success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<i64>,
    /// The value of the reconcile-at annotation the last reconcile handled: a client that sets
    /// the annotation waits for it here (`kubectl fhr reconcile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
    /// The helm-operator replica (its pod) that took the last Helm action on the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action_by: Option<String>,
    /// What the drift check set out to correct and what it found it cannot correct.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftMemory>,
    /// `Ready`, `Released`, `ChartFetched`, and `Reconciling`/`Stalled` where they apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The drift check's memory, kept in status so that it survives a restart or failover: a
/// difference that an upgrade did not correct (another controller or a webhook keeps rewriting it)
/// is ignored until the chart or values change, so drift never becomes an upgrade loop.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriftMemory {
    /// The digest of chart and values this memory is about; another digest starts afresh.
    #[schemars(length(max = 128))]
    pub digest: String,
    /// Differences (`Kind namespace/name field`) the last upgrade was started to correct.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub correcting: Vec<String>,
    /// Differences that survived a correction: left alone until the digest changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub ignored: Vec<String>,
}

impl FluxHelmRelease {
    /// The condition of the given type, if the status has one.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status.as_ref()?.condition(type_)
    }
}

impl FluxHelmReleaseStatus {
    /// The condition of the given type, if there is one.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// The `v1alpha2` API: same schema as `v1alpha`, so the apiserver converts by rewriting `apiVersion`.
pub fn api_resource_v1alpha2() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION_V1ALPHA2, KIND),
        "fluxhelmreleases",
    )
}

/// The CRD: `v1alpha` (storage) and `v1alpha2`, both served with one schema.
pub fn crd() -> CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut crd = FluxHelmRelease::crd();
    let mut v2 = crd.spec.versions[0].clone();
    v2.name = VERSION_V1ALPHA2.to_owned();
    v2.storage = false;
    v2.served = true;
    crd.spec.versions.push(v2);
    for version in &mut crd.spec.versions {
        // `kubectl get -o wide` shows columns of priority 1: why a release is not ready.
        let columns = version
            .additional_printer_columns
            .get_or_insert_with(Vec::new);
        for (name, path) in [
            ("Reason", ".status.conditions[?(@.type==\"Ready\")].reason"),
            (
                "Message",
                ".status.conditions[?(@.type==\"Ready\")].message",
            ),
        ] {
            columns.push(CustomResourceColumnDefinition {
                name: name.to_owned(),
                type_: "string".to_owned(),
                json_path: path.to_owned(),
                priority: Some(1),
                ..Default::default()
            });
        }
    }
    crd
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crd_serves_both_versions_and_stores_v1alpha() {
        let crd = crd();
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.names.short_names, Some(vec!["fhr".to_owned()]));
        let versions: Vec<_> = crd
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.served, v.storage))
            .collect();
        assert_eq!(
            versions,
            [("v1alpha", true, true), ("v1alpha2", true, false)]
        );
        for v in &crd.spec.versions {
            assert!(v.subresources.as_ref().unwrap().status.is_some());
            let columns: Vec<_> = v
                .additional_printer_columns
                .as_ref()
                .unwrap()
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            assert_eq!(
                columns,
                [
                    "Release", "Status", "Revision", "Ready", "Age", "Reason", "Message"
                ]
            );
        }
    }

    #[test]
    fn schema_requires_one_chart_source_and_constrains_release_name() {
        let crd = serde_json::to_value(crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert!(spec.get("required").is_none(), "{}", spec["required"]);
        assert_eq!(
            spec["x-kubernetes-validations"][0]["rule"],
            json!("has(self.chartGitPath) != has(self.chart)")
        );
        let chart = &spec["properties"]["chart"];
        assert_eq!(chart["required"], json!(["version"]));
        assert_eq!(
            chart["x-kubernetes-validations"][0]["rule"],
            json!("has(self.repository) != has(self.oci)")
        );
        assert_eq!(spec["properties"]["releaseName"]["maxLength"], json!(53));
        assert!(spec["properties"]["releaseName"]["pattern"].is_string());
        assert_eq!(
            spec["properties"]["values"]["x-kubernetes-preserve-unknown-fields"],
            json!(true)
        );
    }

    #[test]
    fn both_value_forms_deserialize() {
        let list: FluxHelmReleaseSpec = serde_json::from_value(json!({
            "chartGitPath": "mongodb",
            "values": [{"name": "image", "value": "bitnami/mongodb:3.7.1-r1"}]
        }))
        .unwrap();
        assert_eq!(
            serde_json::Value::Object(list.values.to_tree().unwrap()),
            json!({"image": "bitnami/mongodb:3.7.1-r1"})
        );
        let map: FluxHelmReleaseSpec = serde_json::from_value(json!({
            "chartGitPath": "mongodb",
            "values": {"image": {"tag": "1"}}
        }))
        .unwrap();
        assert_eq!(
            serde_json::Value::Object(map.values.to_tree().unwrap()),
            json!({"image": {"tag": "1"}})
        );
    }

    #[test]
    fn a_malformed_values_entry_still_deserializes() {
        // The operator must be able to read the object to report the problem on it.
        let spec: FluxHelmReleaseSpec = serde_json::from_value(json!({
            "chartGitPath": "mongodb",
            "values": [{"nom": "image"}]
        }))
        .unwrap();
        assert!(spec.values.to_tree().is_err());
    }
}
