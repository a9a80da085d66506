//! `spec.values`: the original list of `{name, value}` or a nested map, turned into one values tree.
//!
//! Names follow `helm --set`: `image.tag` nests, `a\.b` is the literal key `a.b`, `list[0]` indexes
//! a list. Values keep their YAML type. The list applies in order, later entries overriding earlier
//! ones, and the resulting tree goes to Helm as a values file on top of the chart's `values.yaml`.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;

/// Largest list index a name may use, as in Helm's `strvals` (which bounds it for the same reason).
pub const MAX_INDEX: usize = 65_536;
/// Most segments one name may nest, as in Helm's `strvals`.
pub const MAX_NESTING: usize = 30;
/// Most `null` padding slots that list indices may create across all entries together: without a
/// shared bound, many entries like `l1[65535]`, `l2[65535]`, … would allocate without limit.
pub const MAX_LIST_PADDING: usize = 65_536;
/// Longest name echoed back in an error message.
const MAX_NAME_IN_MESSAGE: usize = 64;

/// One entry of the original list form: a dotted name and a value of any YAML type.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NameValue {
    /// Dotted path, as in `helm --set`.
    pub name: String,
    /// Any YAML value; its type is kept.
    pub value: Value,
}

/// `spec.values` as stored: either a list of [`NameValue`] or a nested map.
///
/// It is kept as raw JSON so that a malformed entry never makes the whole object unreadable: the
/// operator turns it into a tree with [`Values::to_tree`] and reports what is wrong on the object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(transparent)]
pub struct Values(pub Value);

/// Why `spec.values` could not become a values tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValuesError {
    /// Neither a list nor a map.
    #[error("spec.values must be a list of {{name, value}} or a map, not {0}")]
    WrongShape(&'static str),
    /// A list entry is not `{name: <string>, value: <any>}`.
    #[error("spec.values[{index}] must have a string `name` and a `value`")]
    MalformedEntry {
        /// Position in the list.
        index: usize,
    },
    /// A list entry's name does not parse.
    #[error("spec.values[{index}].name {name:?}: {problem}")]
    InvalidName {
        /// Position in the list.
        index: usize,
        /// The name, shortened for display.
        name: String,
        /// What is wrong with it.
        problem: NameProblem,
    },
    /// List indices together would create too many padding slots.
    #[error(
        "spec.values[{index}].name {name:?}: list indices in spec.values would create more than {MAX_LIST_PADDING} empty list slots"
    )]
    TooMuchPadding {
        /// Position in the list.
        index: usize,
        /// The name, shortened for display.
        name: String,
    },
}

/// What is wrong with one dotted name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    /// The name is empty.
    #[error("the name is empty")]
    Empty,
    /// `a..b`, `.a`, `a.`: a key between dots is empty.
    #[error("empty key at character {0}")]
    EmptyKey(usize),
    /// The name starts with `[n]`: the top level is a map.
    #[error("a name must start with a key, not a list index")]
    StartsWithIndex,
    /// `[` without a matching `]`.
    #[error("unterminated list index starting at character {0}")]
    UnterminatedIndex(usize),
    /// `[x]` where x is not a non-negative integer.
    #[error("list index at character {0} is not a non-negative integer")]
    BadIndex(usize),
    /// The index is larger than [`MAX_INDEX`].
    #[error("list index at character {0} is larger than {MAX_INDEX}")]
    IndexTooLarge(usize),
    /// More than [`MAX_NESTING`] segments.
    #[error("nests deeper than {MAX_NESTING} levels")]
    TooDeep,
    /// A lone trailing backslash.
    #[error("ends with a lone backslash")]
    TrailingEscape,
    /// `]` or text after `]` that is neither `.`, `[` nor the end.
    #[error("unexpected character {1:?} at character {0}")]
    Unexpected(usize, char),
}

/// One step of a parsed name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A map key.
    Key(String),
    /// A list index.
    Index(usize),
}

/// Parses a `helm --set` style name into its segments.
pub fn parse_name(name: &str) -> Result<Vec<Segment>, NameProblem> {
    if name.is_empty() {
        return Err(NameProblem::Empty);
    }
    let chars: Vec<(usize, char)> = name.char_indices().collect();
    let mut segments = Vec::new();
    let mut i = 0;
    // Each round reads one key and the indices that follow it.
    loop {
        let key_start = chars.get(i).map_or(name.len(), |c| c.0);
        let mut key = String::new();
        while let Some(&(pos, c)) = chars.get(i) {
            match c {
                '\\' => {
                    let &(_, escaped) = chars.get(i + 1).ok_or(NameProblem::TrailingEscape)?;
                    key.push(escaped);
                    i += 2;
                }
                '.' | '[' => break,
                ']' => return Err(NameProblem::Unexpected(pos, c)),
                _ => {
                    key.push(c);
                    i += 1;
                }
            }
        }
        if key.is_empty() {
            if segments.is_empty() && matches!(chars.get(i), Some((_, '['))) {
                return Err(NameProblem::StartsWithIndex);
            }
            return Err(NameProblem::EmptyKey(key_start));
        }
        segments.push(Segment::Key(key));
        while let Some(&(open, '[')) = chars.get(i) {
            let digits_start = i + 1;
            let close = chars[digits_start..]
                .iter()
                .position(|&(_, c)| c == ']')
                .map(|p| digits_start + p)
                .ok_or(NameProblem::UnterminatedIndex(open))?;
            let digits: String = chars[digits_start..close].iter().map(|c| c.1).collect();
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(NameProblem::BadIndex(open));
            }
            let index: usize = digits
                .parse()
                .ok()
                .filter(|&n| n <= MAX_INDEX)
                .ok_or(NameProblem::IndexTooLarge(open))?;
            segments.push(Segment::Index(index));
            i = close + 1;
        }
        if segments.len() > MAX_NESTING {
            return Err(NameProblem::TooDeep);
        }
        match chars.get(i) {
            None => return Ok(segments),
            Some((_, '.')) => {
                i += 1;
                if i == chars.len() {
                    return Err(NameProblem::EmptyKey(name.len()));
                }
            }
            Some(&(pos, c)) => return Err(NameProblem::Unexpected(pos, c)),
        }
    }
}

impl Values {
    /// Values in the original list form.
    pub fn from_list(entries: impl IntoIterator<Item = NameValue>) -> Self {
        Values(Value::Array(
            entries
                .into_iter()
                .map(|e| serde_json::json!({"name": e.name, "value": e.value}))
                .collect(),
        ))
    }

    /// Values as a nested map.
    pub fn from_map(map: Map<String, Value>) -> Self {
        Values(Value::Object(map))
    }

    /// True when no values are given (absent, `null`, `[]` or `{}`).
    pub fn is_empty(&self) -> bool {
        match &self.0 {
            Value::Null => true,
            Value::Array(a) => a.is_empty(),
            Value::Object(m) => m.is_empty(),
            _ => false,
        }
    }

    /// The values tree that goes to Helm: the map as it is, or the list applied in order.
    pub fn to_tree(&self) -> Result<Map<String, Value>, ValuesError> {
        match &self.0 {
            Value::Null => Ok(Map::new()),
            Value::Object(map) => Ok(map.clone()),
            Value::Array(entries) => tree_from_list(entries),
            Value::Bool(_) => Err(ValuesError::WrongShape("a boolean")),
            Value::Number(_) => Err(ValuesError::WrongShape("a number")),
            Value::String(_) => Err(ValuesError::WrongShape("a string")),
        }
    }
}

fn tree_from_list(entries: &[Value]) -> Result<Map<String, Value>, ValuesError> {
    let mut root = Value::Object(Map::new());
    let mut padding_left = MAX_LIST_PADDING;
    for (index, entry) in entries.iter().enumerate() {
        let (name, value) = match entry {
            Value::Object(e) => match (e.get("name"), e.get("value")) {
                (Some(Value::String(name)), Some(value)) => (name, value),
                // An entry without `value` sets null, as `--set a=` sets an empty value in Helm.
                (Some(Value::String(name)), None) => (name, &Value::Null),
                _ => return Err(ValuesError::MalformedEntry { index }),
            },
            _ => return Err(ValuesError::MalformedEntry { index }),
        };
        let segments = parse_name(name).map_err(|problem| ValuesError::InvalidName {
            index,
            name: shorten(name),
            problem,
        })?;
        set_path(&mut root, &segments, value.clone(), &mut padding_left).map_err(|()| {
            ValuesError::TooMuchPadding {
                index,
                name: shorten(name),
            }
        })?;
    }
    match root {
        Value::Object(map) => Ok(map),
        _ => unreachable!("the root is only ever a map"),
    }
}

/// Sets `value` at `path`, turning whatever stands in the way into a map or list as the path needs.
fn set_path(
    node: &mut Value,
    path: &[Segment],
    value: Value,
    padding_left: &mut usize,
) -> Result<(), ()> {
    let Some((first, rest)) = path.split_first() else {
        *node = value;
        return Ok(());
    };
    let child = match first {
        Segment::Key(key) => {
            if !node.is_object() {
                *node = Value::Object(Map::new());
            }
            let Value::Object(map) = node else {
                unreachable!()
            };
            map.entry(key.clone()).or_insert(Value::Null)
        }
        Segment::Index(index) => {
            if !node.is_array() {
                *node = Value::Array(Vec::new());
            }
            let Value::Array(list) = node else {
                unreachable!()
            };
            if *index >= list.len() {
                let grow = index + 1 - list.len();
                *padding_left = padding_left.checked_sub(grow - 1).ok_or(())?;
                list.resize(index + 1, Value::Null);
            }
            &mut list[*index]
        }
    };
    set_path(child, rest, value, padding_left)
}

fn shorten(name: &str) -> String {
    match name.char_indices().nth(MAX_NAME_IN_MESSAGE) {
        Some((cut, _)) => format!("{}…", &name[..cut]),
        None => name.to_owned(),
    }
}

impl JsonSchema for Values {
    fn schema_name() -> Cow<'static, str> {
        "Values".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // A structural schema cannot say "array or object", and CEL rules cannot see an untyped
        // node (the apiserver refuses the CRD), so the shape is checked by the operator, which
        // reports it on the object.
        json_schema!({
            "description": "Values on top of the chart's values.yaml: a list of {name, value} (name as in `helm --set`, value of any type), applied in order, or a nested map.",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list(entries: Value) -> Values {
        Values(entries)
    }

    fn tree(entries: Value) -> Value {
        Value::Object(list(entries).to_tree().expect("valid values"))
    }

    #[test]
    fn dotted_names_nest_into_maps() {
        let t = tree(json!([
            {"name": "image.repository", "value": "bitnami/mongodb"},
            {"name": "image.tag", "value": "3.7.1-r1"},
        ]));
        assert_eq!(
            t,
            json!({"image": {"repository": "bitnami/mongodb", "tag": "3.7.1-r1"}})
        );
    }

    #[test]
    fn original_example_keeps_top_level_keys() {
        let t = tree(json!([
            {"name": "image", "value": "bitnami/mongodb:3.7.1-r1"},
            {"name": "imagePullPolicy", "value": "IfNotPresent"},
        ]));
        assert_eq!(
            t,
            json!({"image": "bitnami/mongodb:3.7.1-r1", "imagePullPolicy": "IfNotPresent"})
        );
    }

    #[test]
    fn escaped_dot_is_a_literal_key() {
        let t = tree(json!([{"name": r"annotations.prometheus\.io/scrape", "value": "true"}]));
        assert_eq!(t, json!({"annotations": {"prometheus.io/scrape": "true"}}));
    }

    #[test]
    fn list_indices_create_and_fill_lists() {
        let t = tree(json!([
            {"name": "hosts[1]", "value": "b"},
            {"name": "hosts[0]", "value": "a"},
            {"name": "ports[0].name", "value": "http"},
            {"name": "ports[0].port", "value": 80},
            {"name": "matrix[1][0]", "value": true},
        ]));
        assert_eq!(
            t,
            json!({
                "hosts": ["a", "b"],
                "ports": [{"name": "http", "port": 80}],
                "matrix": [null, [true]],
            })
        );
    }

    #[test]
    fn values_keep_their_type() {
        let t = tree(json!([
            {"name": "replicas", "value": 3},
            {"name": "ratio", "value": 0.5},
            {"name": "enabled", "value": false},
            {"name": "tag", "value": "1.0"},
            {"name": "resources", "value": {"limits": {"cpu": "100m"}}},
            {"name": "args", "value": ["--a", "--b"]},
            {"name": "nothing", "value": null},
        ]));
        assert_eq!(t["replicas"], json!(3));
        assert_eq!(t["ratio"], json!(0.5));
        assert_eq!(t["enabled"], json!(false));
        assert_eq!(t["tag"], json!("1.0"));
        assert_eq!(t["resources"], json!({"limits": {"cpu": "100m"}}));
        assert_eq!(t["args"], json!(["--a", "--b"]));
        assert_eq!(t["nothing"], Value::Null);
    }

    #[test]
    fn later_entries_override_earlier_ones() {
        let t = tree(json!([
            {"name": "image.tag", "value": "1"},
            {"name": "image.tag", "value": "2"},
            {"name": "a.b", "value": 1},
            {"name": "a", "value": "scalar"},
            {"name": "c", "value": "scalar"},
            {"name": "c.d", "value": 4},
        ]));
        assert_eq!(
            t,
            json!({"image": {"tag": "2"}, "a": "scalar", "c": {"d": 4}})
        );
    }

    #[test]
    fn map_form_is_taken_as_it_is() {
        let v = Values(json!({"image": {"tag": "x"}, "list": [1, 2]}));
        assert_eq!(
            Value::Object(v.to_tree().unwrap()),
            json!({"image": {"tag": "x"}, "list": [1, 2]})
        );
    }

    #[test]
    fn absent_or_empty_values_give_an_empty_tree() {
        for v in [json!(null), json!([]), json!({})] {
            let values = Values(v);
            assert!(values.is_empty());
            assert!(values.to_tree().unwrap().is_empty());
        }
    }

    #[test]
    fn malformed_names_are_refused_with_the_reason() {
        let cases = [
            ("", NameProblem::Empty),
            ("a..b", NameProblem::EmptyKey(2)),
            (".a", NameProblem::EmptyKey(0)),
            ("a.", NameProblem::EmptyKey(2)),
            ("[0]", NameProblem::StartsWithIndex),
            ("a[0", NameProblem::UnterminatedIndex(1)),
            ("a[x]", NameProblem::BadIndex(1)),
            ("a[-1]", NameProblem::BadIndex(1)),
            ("a[]", NameProblem::BadIndex(1)),
            ("a[999999999]", NameProblem::IndexTooLarge(1)),
            ("a[99999999999999999999999]", NameProblem::IndexTooLarge(1)),
            ("a\\", NameProblem::TrailingEscape),
            ("a]b", NameProblem::Unexpected(1, ']')),
            ("a[0]b", NameProblem::Unexpected(4, 'b')),
        ];
        for (name, problem) in cases {
            assert_eq!(parse_name(name), Err(problem), "name {name:?}");
        }
        let deep = vec!["k"; MAX_NESTING + 1].join(".");
        assert_eq!(parse_name(&deep), Err(NameProblem::TooDeep));
        assert!(parse_name(&vec!["k"; MAX_NESTING].join(".")).is_ok());
    }

    #[test]
    fn errors_name_the_entry_and_say_what_is_wrong() {
        let err = list(json!([{"name": "ok", "value": 1}, {"name": "a..b", "value": 1}]))
            .to_tree()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"spec.values[1].name "a..b": empty key at character 2"#
        );
        let err = list(json!([{"value": 1}])).to_tree().unwrap_err();
        assert_eq!(err, ValuesError::MalformedEntry { index: 0 });
        let err = Values(json!("image=x")).to_tree().unwrap_err();
        assert_eq!(err, ValuesError::WrongShape("a string"));
    }

    #[test]
    fn long_names_are_shortened_in_messages() {
        let name = format!("{}..", "x".repeat(500));
        let err = list(json!([{"name": name, "value": 1}]))
            .to_tree()
            .unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn list_padding_is_bounded_across_entries() {
        let entries: Vec<Value> = (0..3)
            .map(|i| json!({"name": format!("l{i}[{MAX_INDEX}]"), "value": 1}))
            .collect();
        let err = list(Value::Array(entries)).to_tree().unwrap_err();
        assert!(
            matches!(err, ValuesError::TooMuchPadding { index: 1, .. }),
            "{err}"
        );
        // One large index alone stays within the bound.
        assert!(
            list(json!([{"name": format!("l[{MAX_INDEX}]"), "value": 1}]))
                .to_tree()
                .is_ok()
        );
    }

    #[test]
    fn from_list_round_trips_through_the_stored_form() {
        let v = Values::from_list([NameValue {
            name: "a.b".into(),
            value: json!(1),
        }]);
        assert_eq!(v.0, json!([{"name": "a.b", "value": 1}]));
        assert_eq!(Value::Object(v.to_tree().unwrap()), json!({"a": {"b": 1}}));
    }
}

/// Merges `overlay` into `base`: maps merge key by key, recursively; anything else in `overlay`
/// replaces what `base` has (as Helm coalesces values files).
pub fn merge_into(base: &mut Map<String, Value>, overlay: Map<String, Value>) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(Value::Object(existing)), Value::Object(incoming)) => {
                merge_into(existing, incoming)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod merge_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_merge_deeply_and_other_values_replace() {
        let Value::Object(mut base) = json!({"a": {"x": 1, "y": [1, 2]}, "b": 1}) else {
            unreachable!()
        };
        let Value::Object(overlay) = json!({"a": {"y": [3], "z": true}, "b": {"c": 2}}) else {
            unreachable!()
        };
        merge_into(&mut base, overlay);
        assert_eq!(
            Value::Object(base),
            json!({"a": {"x": 1, "y": [3], "z": true}, "b": {"c": 2}})
        );
    }
}
