//! `spec.valuesFrom`: values files kept in ConfigMap and Secret keys of the resource's namespace,
//! merged in order, with `spec.values` on top. Values that came from a Secret are remembered so
//! that no message ever repeats them.

use fhr_release::values_file::{Redactor, parse};
use fhr_types::values::merge_into;
use fhr_types::{FluxHelmRelease, KeyRef};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use serde_json::{Map, Value};

/// The key read when a reference names none.
pub const DEFAULT_KEY: &str = "values.yaml";

/// Why the sources could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A required object or key is missing, or its content is not a values map: the user fixes it.
    #[error("{0}")]
    Invalid(String),
    /// The API server refused the read to whoever acts for the release.
    #[error("{what}: {message}")]
    Forbidden {
        /// The source, as `ConfigMap namespace/name key k`.
        what: String,
        /// The API server's refusal (it names the user, the verb and the resource).
        message: String,
    },
    /// The API could not be asked.
    #[error("reading valuesFrom sources: {0}")]
    Api(#[source] kube::Error),
}

impl SourceError {
    /// Sorts an API error reading `what`.
    fn api(what: &str, error: kube::Error) -> SourceError {
        match crate::identity::forbidden(&error) {
            Some(message) => SourceError::Forbidden {
                what: what.to_owned(),
                message: message.to_owned(),
            },
            None => SourceError::Api(error),
        }
    }
}

/// The merged values and what must never appear in a message.
#[derive(Debug, Default)]
pub struct Resolved {
    /// `valuesFrom` merged in order, then `spec.values` on top.
    pub values: Map<String, Value>,
    /// Every string value read from a Secret.
    pub secrets: Redactor,
}

/// Reads every source of `fhr` and merges them under `values` (the tree of `spec.values`), with
/// `client`: the release's ServiceAccount, so a release reads only what its account may.
pub async fn resolve(
    client: &kube::Client,
    fhr: &FluxHelmRelease,
    namespace: &str,
    values: &Map<String, Value>,
) -> Result<Resolved, SourceError> {
    let mut resolved = Resolved::default();
    for (index, source) in fhr.spec.values_from.iter().enumerate() {
        let read = match (&source.config_map_key_ref, &source.secret_key_ref) {
            (Some(reference), None) => config_map(client, namespace, reference).await?,
            (None, Some(reference)) => secret(client, namespace, reference).await?,
            _ => {
                return Err(SourceError::Invalid(format!(
                    "spec.valuesFrom[{index}] must set exactly one of configMapKeyRef and secretKeyRef"
                )));
            }
        };
        let Some((text, is_secret, what)) = read else {
            continue;
        };
        let tree =
            parse(&text).map_err(|problem| SourceError::Invalid(format!("{what}: {problem}")))?;
        if is_secret {
            resolved.secrets.remember(&Value::Object(tree.clone()));
        }
        merge_into(&mut resolved.values, tree);
    }
    merge_into(&mut resolved.values, values.clone());
    Ok(resolved)
}

/// Content of a ConfigMap key: `None` when it is optional and missing.
async fn config_map(
    client: &kube::Client,
    namespace: &str,
    reference: &KeyRef,
) -> Result<Option<(String, bool, String)>, SourceError> {
    let key = reference.key.as_deref().unwrap_or(DEFAULT_KEY);
    let what = format!("ConfigMap {}/{} key {key}", namespace, reference.name);
    let object = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(&reference.name)
        .await
        .map_err(|e| SourceError::api(&what, e))?;
    let text = object.and_then(|c| c.data).and_then(|mut d| d.remove(key));
    missing_or(text.map(|t| (t, false, what.clone())), reference, &what)
}

/// Content of a Secret key: `None` when it is optional and missing.
async fn secret(
    client: &kube::Client,
    namespace: &str,
    reference: &KeyRef,
) -> Result<Option<(String, bool, String)>, SourceError> {
    let key = reference.key.as_deref().unwrap_or(DEFAULT_KEY);
    let what = format!("Secret {}/{} key {key}", namespace, reference.name);
    let object = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(&reference.name)
        .await
        .map_err(|e| SourceError::api(&what, e))?;
    let bytes = object.and_then(|s| s.data).and_then(|mut d| d.remove(key));
    let text = match bytes {
        Some(bytes) => Some(
            String::from_utf8(bytes.0)
                .map_err(|_| SourceError::Invalid(format!("{what} is not UTF-8 text")))?,
        ),
        None => None,
    };
    missing_or(text.map(|t| (t, true, what.clone())), reference, &what)
}

fn missing_or<T>(
    found: Option<T>,
    reference: &KeyRef,
    what: &str,
) -> Result<Option<T>, SourceError> {
    match found {
        Some(found) => Ok(Some(found)),
        None if reference.optional == Some(true) => Ok(None),
        None => Err(SourceError::Invalid(format!(
            "{what} does not exist (set optional: true to allow that)"
        ))),
    }
}
