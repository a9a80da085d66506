//! Values files (a `valuesFrom` ConfigMap or Secret key) and the redaction of values that came from
//! Secrets. A values file comes from a user's object, so parsing is bounded, and its errors say
//! where, never what: the content may be secret.

use serde_json::{Map, Value};

/// Shorter Secret values are not redacted from messages: they would blank out ordinary words.
const MIN_REDACTED_LEN: usize = 4;

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

    /// The secret values, longest first (for a Helm engine to redact its own messages).
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Remembers every string (and long number) in `value` as secret.
    pub fn remember(&mut self, value: &Value) {
        match value {
            Value::String(s) if s.len() >= MIN_REDACTED_LEN => self.values.push(s.clone()),
            Value::Number(n) if n.to_string().len() >= MIN_REDACTED_LEN => {
                self.values.push(n.to_string())
            }
            Value::Array(items) => items.iter().for_each(|v| self.remember(v)),
            Value::Object(map) => map.values().for_each(|v| self.remember(v)),
            _ => {}
        }
        // Longest first, so that a value containing another is replaced whole.
        self.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        self.values.dedup();
    }
}

/// A values file as a map. Errors say where, never what: the content may be secret.
pub fn parse(text: &str) -> Result<Map<String, Value>, String> {
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
        redactor.remember(&json!({"db": {"password": "s3cret-canary", "user": "app"}, "token": "s3cret", "port": 54321}));
        assert_eq!(
            redactor.redact("auth s3cret-canary failed for app on 54321 with s3cret"),
            "auth *** failed for app on *** with ***"
        );
    }
}
