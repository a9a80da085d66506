//! `spec.valuesFrom`: values files kept in ConfigMap and Secret keys of the resource's namespace,
//! merged in order, with `spec.values` on top. Values that came from a Secret are remembered so
//! that no message ever repeats them.

use fhr_types::values::merge_into;
use fhr_types::{FluxHelmRelease, KeyRef};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use serde_json::{Map, Value};

/// The key read when a reference names none.
pub const DEFAULT_KEY: &str = "values.yaml";
/// Shorter Secret values are not redacted from messages: they would blank out ordinary words.
const MIN_REDACTED_LEN: usize = 4;

/// Why the sources could not be read.
#[derive(Debug)]
pub enum SourceError {
    /// A required object or key is missing, or its content is not a values map: the user fixes it.
    Invalid(String),
    /// The API could not be asked.
    Api(kube::Error),
}

/// The merged values and what must never appear in a message.
#[derive(Debug, Default)]
pub struct Resolved {
    /// `valuesFrom` merged in order, then `spec.values` on top.
    pub values: Map<String, Value>,
    /// Every string value read from a Secret.
    pub secrets: Redactor,
}

/// Replaces secret values in text.
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    values: Vec<String>,
}

impl Redactor {
    /// `text` with every known secret value replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for value in &self.values {
            text = text.replace(value.as_str(), "***");
        }
        text
    }

    fn collect(&mut self, value: &Value) {
        match value {
            Value::String(s) if s.len() >= MIN_REDACTED_LEN => self.values.push(s.clone()),
            Value::Number(n) if n.to_string().len() >= MIN_REDACTED_LEN => {
                self.values.push(n.to_string())
            }
            Value::Array(items) => items.iter().for_each(|v| self.collect(v)),
            Value::Object(map) => map.values().for_each(|v| self.collect(v)),
            _ => {}
        }
        // Longest first, so that a value containing another is replaced whole.
        self.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        self.values.dedup();
    }
}

/// Reads every source of `fhr` and merges them under `values` (the tree of `spec.values`).
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
            resolved.secrets.collect(&Value::Object(tree.clone()));
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
        .map_err(SourceError::Api)?;
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
        .map_err(SourceError::Api)?;
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

/// A values file as a map. Errors say where, never what: the content may be secret.
fn parse(text: &str) -> Result<Map<String, Value>, String> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! { max_nodes: 200_000, max_depth: 64 },
        alias_limits: serde_saphyr::alias_limits! { max_total_replayed_events: 100_000 },
    };
    match serde_saphyr::from_str_with_options::<Value>(text, options) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err("is not a YAML map of values".into()),
        Err(e) => Err(match e.location() {
            Some(at) => format!("is not valid YAML (line {})", at.line()),
            None => "is not valid YAML".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_files_parse_into_maps_and_errors_hide_the_content() {
        assert_eq!(
            Value::Object(parse("a:\n  b: 1\n").unwrap()),
            json!({"a": {"b": 1}})
        );
        assert!(parse("").unwrap().is_empty());
        let err = parse("password: [s3cret-canary\n").unwrap_err();
        assert!(err.contains("line"), "{err}");
        assert!(!err.contains("s3cret-canary"), "{err}");
        assert_eq!(parse("- a\n").unwrap_err(), "is not a YAML map of values");
    }

    #[test]
    fn secret_values_are_redacted_longest_first() {
        let mut redactor = Redactor::default();
        redactor.collect(&json!({"db": {"password": "s3cret-canary", "user": "app"}, "token": "s3cret", "port": 54321}));
        assert_eq!(
            redactor.redact("auth s3cret-canary failed for app on 54321 with s3cret"),
            "auth *** failed for app on *** with ***"
        );
    }
}
