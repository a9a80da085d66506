//! Reading Kubernetes manifests from YAML files: several documents per file, indented documents,
//! each document on its own so that one broken document names its file and line and leaves the
//! others usable; parsing bounded so that an alias bomb or a deep nest cannot exhaust memory.

use serde_json::Value;

/// Most nodes one document may hold after alias expansion: far above any real manifest.
const MAX_NODES: usize = 200_000;
/// Most events aliases may replay in one document (a billion-laughs file hits this at once).
const MAX_REPLAYED_EVENTS: usize = 100_000;
/// Deepest nesting.
const MAX_DEPTH: usize = 64;

/// One Kubernetes object read from git.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// File it came from, relative to the repository.
    pub file: String,
    /// Line its document starts on (1-based).
    pub line: usize,
    /// The object.
    pub object: Value,
}

impl Manifest {
    /// `apiVersion`.
    pub fn api_version(&self) -> &str {
        self.object["apiVersion"].as_str().unwrap_or_default()
    }
    /// `kind`.
    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }
    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }
    /// `metadata.namespace`, if set.
    pub fn namespace(&self) -> Option<&str> {
        self.object["metadata"]["namespace"].as_str()
    }
}

/// Why a file or document could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file, relative to the repository.
    pub file: String,
    /// The line, when known (1-based).
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Parses every document of a file: the objects, and an error per document that failed.
pub fn parse_file(file: &str, bytes: &[u8]) -> (Vec<Manifest>, Vec<ManifestError>) {
    let error = |line: Option<usize>, message: String| ManifestError {
        file: file.to_owned(),
        line,
        message,
    };
    let Ok(text) = std::str::from_utf8(bytes) else {
        return (
            Vec::new(),
            vec![error(None, "the file is not UTF-8 text".into())],
        );
    };
    let mut manifests = Vec::new();
    let mut errors = Vec::new();
    for (start_line, document) in split_documents(text) {
        if document.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#')
        }) {
            continue;
        }
        match parse_document(&document) {
            Ok(Value::Null) => {}
            Ok(object) => match check_object(&object) {
                Ok(()) => manifests.push(Manifest {
                    file: file.to_owned(),
                    line: start_line,
                    object,
                }),
                Err(message) => errors.push(error(Some(start_line), message)),
            },
            Err((line, message)) => {
                let line = line.map(|l| start_line + l - 1).unwrap_or(start_line);
                errors.push(error(Some(line), message));
            }
        }
    }
    (manifests, errors)
}

/// Splits YAML text at document markers (`---` and `...` at the start of a line), returning each
/// document with the line it starts on. The marker itself is blanked, so text after `--- ` on the
/// same line stays in its document at its column.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut documents = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let is_start = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        let is_end = line == "..." || line.starts_with("... ");
        if is_start || is_end {
            documents.push((start, std::mem::take(&mut current)));
            start = number;
            if is_start {
                current.push_str(&" ".repeat(3));
                current.push_str(&line[3..]);
            }
            current.push('\n');
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    documents.push((start, current));
    documents
}

fn parse_document(document: &str) -> Result<Value, (Option<usize>, String)> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_nodes: MAX_NODES,
            max_depth: MAX_DEPTH,
            max_documents: 1,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_REPLAYED_EVENTS,
        },
    };
    serde_saphyr::from_str_with_options::<Value>(document, options).map_err(|e| {
        let line = e.location().map(|l| l.line() as usize).filter(|l| *l > 0);
        // The first line of saphyr's message says what is wrong; the rest is a source snippet.
        let message = e.to_string();
        let first = message.lines().next().unwrap_or("invalid YAML").trim();
        (line, format!("invalid YAML: {}", shorten(first)))
    })
}

fn check_object(object: &Value) -> Result<(), String> {
    let field = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if !object.is_object() {
        return Err("the document is not a map; a Kubernetes object needs apiVersion, kind and metadata.name".into());
    }
    for (pointer, name) in [
        ("/apiVersion", "apiVersion"),
        ("/kind", "kind"),
        ("/metadata/name", "metadata.name"),
    ] {
        if field(pointer).is_none() {
            return Err(format!("the object has no {name}"));
        }
    }
    Ok(())
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn several_documents_and_an_indented_one_are_read() {
        let text = "# leading comment\n---\n  apiVersion: v1\n  kind: ConfigMap\n  metadata:\n    name: a\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b, namespace: x}\n";
        let (manifests, errors) = parse_file("f.yaml", text.as_bytes());
        assert_eq!(errors, []);
        let names: Vec<_> = manifests
            .iter()
            .map(|m| (m.name(), m.namespace(), m.line))
            .collect();
        assert_eq!(names, [("a", None, 2), ("b", Some("x"), 7)]);
        assert_eq!(manifests[0].kind(), "ConfigMap");
    }

    #[test]
    fn a_broken_document_names_its_line_and_the_others_still_parse() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: also-ok}\n";
        let (manifests, errors) = parse_file("dir/f.yaml", text.as_bytes());
        assert_eq!(
            manifests.iter().map(Manifest::name).collect::<Vec<_>>(),
            ["ok", "also-ok"]
        );
        assert_eq!(errors.len(), 1);
        let error = errors[0].to_string();
        assert!(error.starts_with("dir/f.yaml:"), "{error}");
        let line = errors[0].line.unwrap();
        assert!(
            (8..=9).contains(&line),
            "the error points into the broken document: {error}"
        );
    }

    #[test]
    fn content_on_the_marker_line_stays_in_its_document() {
        let (manifests, errors) = parse_file(
            "f.yaml",
            b"--- {apiVersion: v1, kind: ConfigMap, metadata: {name: inline}}\n",
        );
        assert_eq!(errors, []);
        assert_eq!(manifests[0].name(), "inline");
    }

    #[test]
    fn documents_that_are_not_objects_are_reported() {
        let (manifests, errors) = parse_file(
            "f.yaml",
            b"just a string\n---\nkind: ConfigMap\n---\n# only a comment\n---\n",
        );
        assert!(manifests.is_empty());
        let messages: Vec<_> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[1].contains("apiVersion"), "{messages:?}");
    }

    #[test]
    fn a_billion_laughs_is_refused_quickly() {
        let mut text = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (i, prev) in ["b", "c", "d", "e", "f", "g", "h", "i"]
            .iter()
            .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
        {
            text.push_str(&format!("{i}: &{i} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
        }
        let started = std::time::Instant::now();
        let (manifests, errors) = parse_file("bomb.yaml", text.as_bytes());
        assert!(manifests.is_empty());
        assert_eq!(errors.len(), 1);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn non_utf8_files_are_reported() {
        let (_, errors) = parse_file("bin.yaml", &[0xff, 0xfe, 0x00]);
        assert_eq!(errors[0].message, "the file is not UTF-8 text");
    }

    #[test]
    fn values_keep_their_types() {
        let (manifests, errors) = parse_file(
            "f.yaml",
            b"apiVersion: x/v1\nkind: K\nmetadata: {name: web}\nspec:\n  values:\n    - name: a\n      value: 3\n    - name: b\n      value: true\n",
        );
        assert_eq!(errors, [], "{errors:?}");
        assert_eq!(
            manifests[0].object["spec"]["values"],
            json!([{"name": "a", "value": 3}, {"name": "b", "value": true}])
        );
    }
}
