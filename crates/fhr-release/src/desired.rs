//! What a FluxHelmRelease asks for, validated: the validate step of the pipeline, no I/O.

use fhr_types::FluxHelmRelease;
use fhr_types::meta::reason;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Longest `spec.timeout` accepted: longer is a typo, and would hold a worker for that long.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(2 * 3600);

/// A spec problem the user must fix; retrying will not help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The condition reason.
    pub reason: &'static str,
    /// What is wrong, for the condition message.
    pub message: String,
}

/// Rollback settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackPolicy {
    /// Roll back when an upgrade fails.
    pub enable: bool,
    /// `--wait` for the rollback.
    pub wait: bool,
    /// `--timeout` for the rollback.
    pub timeout: Duration,
    /// `--no-hooks`.
    pub disable_hooks: bool,
}

/// Where a release's chart comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ChartSource {
    /// A folder of the git repository: the charts path joined with a validated `chartGitPath`.
    Git {
        /// The folder's path in the repository.
        path: String,
    },
    /// A chart of a Helm chart repository, its version constraint checked.
    Repository(fhr_types::RepositoryChart),
}

impl ChartSource {
    /// How messages name the chart: its folder, or `name` (`version`) of the repository.
    pub fn describe(&self) -> String {
        match self {
            ChartSource::Git { path } => format!("{path:?}"),
            ChartSource::Repository(chart) => match (&chart.oci, &chart.name, &chart.repository) {
                (Some(oci), _, _) => format!("{oci} {}", chart.version),
                (None, name, repository) => format!(
                    "{:?} {} of repository {}",
                    name.as_deref().unwrap_or_default(),
                    chart.version,
                    repository.as_deref().unwrap_or_default()
                ),
            },
        }
    }
}

/// The release a FluxHelmRelease describes.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// Helm release name.
    pub release: String,
    /// `spec.releaseName` was set: an unmanaged release of that name may be adopted.
    pub adopt: bool,
    /// Where the chart comes from.
    pub chart: ChartSource,
    /// `spec.values` as a tree.
    pub values: Map<String, Value>,
    /// Helm's `--timeout`.
    pub timeout: Duration,
    /// Helm's `--wait`.
    pub wait: bool,
    /// Helm's `--history-max`.
    pub max_history: Option<i32>,
    /// What to do on a failed upgrade.
    pub rollback: RollbackPolicy,
    /// `spec.suspend`.
    pub suspend: bool,
    /// The ServiceAccount (of the release's namespace) Helm acts as: `spec.serviceAccountName`,
    /// else the operator's default (set by the caller); `None`: the operator's own rights.
    pub service_account: Option<String>,
}

impl Desired {
    /// Validates a resource's spec into the release it asks for; `charts_path` is the repository
    /// folder holding the charts, `default_timeout` Helm's timeout where the spec sets none.
    pub fn from_resource(
        fhr: &FluxHelmRelease,
        charts_path: &str,
        default_timeout: Duration,
    ) -> Result<Desired, SpecError> {
        from_resource(fhr, charts_path, default_timeout)
    }
}

fn from_resource(
    fhr: &FluxHelmRelease,
    charts_path: &str,
    default_timeout: Duration,
) -> Result<Desired, SpecError> {
    let namespace = fhr.metadata.namespace.as_deref().unwrap_or("default");
    let name = fhr.metadata.name.as_deref().unwrap_or_default();
    let spec = &fhr.spec;
    let chart = match (&spec.chart_git_path, &spec.chart) {
        (Some(path), None) => ChartSource::Git {
            path: chart_path(charts_path, path)?,
        },
        (None, Some(chart)) => {
            let one_source = match (&chart.repository, &chart.name, &chart.oci) {
                (Some(_), Some(_), None) => true,
                (None, None, Some(oci)) => oci.starts_with("oci://"),
                _ => false,
            };
            if !one_source {
                return Err(SpecError {
                    reason: reason::INVALID_SPEC,
                    message:
                        "spec.chart: set repository and name, or oci (oci://registry/path/chart)"
                            .into(),
                });
            }
            crate::chart_repository::Constraint::parse(&chart.version).map_err(|e| SpecError {
                reason: reason::INVALID_SPEC,
                message: format!("spec.chart.version: {e}"),
            })?;
            ChartSource::Repository(chart.clone())
        }
        _ => {
            return Err(SpecError {
                reason: reason::INVALID_SPEC,
                message: "set exactly one of spec.chartGitPath and spec.chart".into(),
            });
        }
    };
    let release = fhr_types::naming::release_name(namespace, name, spec.release_name.as_deref())
        .map_err(|e| SpecError {
            reason: reason::INVALID_RELEASE_NAME,
            message: format!("{e}; set spec.releaseName to a valid name"),
        })?;
    let values = spec.values.to_tree().map_err(|e| SpecError {
        reason: reason::INVALID_VALUES,
        message: e.to_string(),
    })?;
    let duration = |field: &str, text: &Option<String>, fallback: Duration| match text {
        None => Ok(fallback),
        Some(text) => {
            fhr_types::duration::parse_duration(text, MAX_TIMEOUT).map_err(|e| SpecError {
                reason: reason::INVALID_SPEC,
                message: format!("{field}: {e}"),
            })
        }
    };
    let timeout = duration("spec.timeout", &spec.timeout, default_timeout)?;
    let rollback = spec.rollback.clone().unwrap_or_default();
    let rollback = RollbackPolicy {
        enable: rollback.enable,
        wait: rollback.wait.unwrap_or(spec.wait.unwrap_or(false)),
        timeout: duration("spec.rollback.timeout", &rollback.timeout, timeout)?,
        disable_hooks: rollback.disable_hooks.unwrap_or(false),
    };
    Ok(Desired {
        release,
        adopt: spec.release_name.is_some(),
        chart,
        values,
        timeout,
        wait: spec.wait.unwrap_or(false),
        max_history: spec.max_history,
        rollback,
        suspend: spec.suspend.unwrap_or(false),
        service_account: spec.service_account_name.clone(),
    })
}

/// The chart folder's path in the repository: the charts path joined with a validated `chartGitPath`.
pub fn chart_path(charts_path: &str, chart_git_path: &str) -> Result<String, SpecError> {
    let chart =
        fhr_types::chart_path::validate_chart_path(chart_git_path).map_err(|e| SpecError {
            reason: reason::INVALID_CHART_PATH,
            message: e.to_string(),
        })?;
    let mut path = charts_path.trim_matches('/').to_owned();
    for segment in chart {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(segment);
    }
    Ok(path)
}

/// The digest that says whether a release is in sync: the chart folder's git tree id and the
/// merged values (serde_json maps are ordered, so equal trees serialise equally).
pub fn digest(chart_tree: &str, values: &Map<String, Value>) -> String {
    let mut hash = Sha256::new();
    hash.update(b"chart-tree\0");
    hash.update(chart_tree.as_bytes());
    hash.update(b"\0values\0");
    hash.update(serde_json::to_vec(values).expect("a JSON map serialises"));
    let digest = hash.finalize();
    // 128 bits, hex: fits a label value.
    hex::encode(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fhr(spec: Value) -> FluxHelmRelease {
        serde_json::from_value(json!({
            "apiVersion": "helm.integrations.flux.weave.works/v1alpha",
            "kind": "FluxHelmRelease",
            "metadata": {"name": "web", "namespace": "team"},
            "spec": spec,
        }))
        .unwrap()
    }

    const FIVE_MIN: Duration = Duration::from_secs(300);

    #[test]
    fn a_plain_spec_uses_defaults() {
        let d = Desired::from_resource(&fhr(json!({"chartGitPath": "webapp"})), "charts", FIVE_MIN)
            .unwrap();
        assert_eq!(d.release, "team-web");
        assert!(!d.adopt);
        assert_eq!(
            d.chart,
            ChartSource::Git {
                path: "charts/webapp".into()
            }
        );
        assert_eq!(d.timeout, FIVE_MIN);
        assert!(!d.rollback.enable);
    }

    #[test]
    fn each_invalid_field_names_its_reason() {
        let cases = [
            (
                json!({"chartGitPath": "../../etc"}),
                reason::INVALID_CHART_PATH,
            ),
            (json!({"chartGitPath": "/etc"}), reason::INVALID_CHART_PATH),
            (
                json!({"chartGitPath": "a", "releaseName": "Bad_Name"}),
                reason::INVALID_RELEASE_NAME,
            ),
            (
                json!({"chartGitPath": "a", "values": [{"name": "a..b", "value": 1}]}),
                reason::INVALID_VALUES,
            ),
            (
                json!({"chartGitPath": "a", "values": "x=1"}),
                reason::INVALID_VALUES,
            ),
            (
                json!({"chartGitPath": "a", "timeout": "999999999h"}),
                reason::INVALID_SPEC,
            ),
            (
                json!({"chartGitPath": "a", "rollback": {"enable": true, "timeout": "-1s"}}),
                reason::INVALID_SPEC,
            ),
            (json!({}), reason::INVALID_SPEC),
            (
                json!({"chartGitPath": "a", "chart": {"repository": "https://r", "name": "a", "version": "1"}}),
                reason::INVALID_SPEC,
            ),
            (
                json!({"chart": {"repository": "https://r", "name": "a", "version": ">>1"}}),
                reason::INVALID_SPEC,
            ),
            (
                json!({"chart": {"repository": "https://r", "oci": "oci://r/a", "name": "a", "version": "1"}}),
                reason::INVALID_SPEC,
            ),
            (
                json!({"chart": {"repository": "https://r", "version": "1"}}),
                reason::INVALID_SPEC,
            ),
        ];
        for (spec, expected) in cases {
            let err = Desired::from_resource(&fhr(spec.clone()), "charts", FIVE_MIN).unwrap_err();
            assert_eq!(err.reason, expected, "{spec}: {}", err.message);
        }
    }

    #[test]
    fn the_charts_path_may_be_empty_or_nested() {
        assert_eq!(
            Desired::from_resource(&fhr(json!({"chartGitPath": "a/b"})), "", FIVE_MIN)
                .unwrap()
                .chart,
            ChartSource::Git { path: "a/b".into() }
        );
        assert_eq!(
            Desired::from_resource(
                &fhr(json!({"chartGitPath": "a"})),
                "/deploy/charts/",
                FIVE_MIN
            )
            .unwrap()
            .chart,
            ChartSource::Git {
                path: "deploy/charts/a".into()
            }
        );
    }

    #[test]
    fn digests_change_with_chart_or_values_only() {
        let Value::Object(a) = json!({"x": 1, "y": {"z": true}}) else {
            unreachable!()
        };
        let Value::Object(same) = json!({"y": {"z": true}, "x": 1}) else {
            unreachable!()
        };
        let Value::Object(other) = json!({"x": 2, "y": {"z": true}}) else {
            unreachable!()
        };
        assert_eq!(digest("t1", &a), digest("t1", &same));
        assert_ne!(digest("t1", &a), digest("t2", &a));
        assert_ne!(digest("t1", &a), digest("t1", &other));
        assert_eq!(digest("t1", &a).len(), 32);
    }
}
