//! `spec.chartGitPath`: a chart folder below the operator's charts path, checked before any file is read.
//!
//! The rule is to refuse, never to clamp: a path that could mean something outside the charts path
//! is an error the user sees, not silently rewritten into a different folder.

/// Longest accepted `chartGitPath`, in bytes.
pub const MAX_CHART_PATH: usize = 512;

/// Why a `chartGitPath` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChartPathError {
    /// Empty or missing.
    #[error("chartGitPath is empty; set it to the chart's folder under the charts path")]
    Empty,
    /// Starts with `/`.
    #[error("chartGitPath must be relative to the charts path, not absolute")]
    Absolute,
    /// Holds a `..` segment.
    #[error("chartGitPath must not contain '..'")]
    ParentSegment,
    /// Holds `.` or an empty segment (`a//b`, `a/`, `./a`): not normalised.
    #[error("chartGitPath must be normalised: no '.', no empty segment, no trailing '/'")]
    NotNormalised,
    /// Holds a backslash, which some tools read as a separator.
    #[error("chartGitPath must use '/' as separator; backslashes are not allowed")]
    Backslash,
    /// Holds NUL or another control character.
    #[error("chartGitPath must not contain control characters")]
    ControlCharacter,
    /// Names the repository's own metadata.
    #[error("chartGitPath must not name a '.git' folder")]
    GitDir,
    /// Longer than [`MAX_CHART_PATH`].
    #[error("chartGitPath is longer than {MAX_CHART_PATH} bytes")]
    TooLong,
}

/// Checks a `chartGitPath` and returns its segments.
pub fn validate_chart_path(path: &str) -> Result<Vec<&str>, ChartPathError> {
    if path.is_empty() {
        return Err(ChartPathError::Empty);
    }
    if path.len() > MAX_CHART_PATH {
        return Err(ChartPathError::TooLong);
    }
    if path.chars().any(char::is_control) {
        return Err(ChartPathError::ControlCharacter);
    }
    if path.contains('\\') {
        return Err(ChartPathError::Backslash);
    }
    if path.starts_with('/') {
        return Err(ChartPathError::Absolute);
    }
    let segments: Vec<&str> = path.split('/').collect();
    if segments.contains(&"..") {
        return Err(ChartPathError::ParentSegment);
    }
    if segments.iter().any(|s| s.is_empty() || *s == ".") {
        return Err(ChartPathError::NotNormalised);
    }
    if segments.iter().any(|s| s.eq_ignore_ascii_case(".git")) {
        return Err(ChartPathError::GitDir);
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_nested_folders_are_accepted() {
        assert_eq!(validate_chart_path("mongodb"), Ok(vec!["mongodb"]));
        assert_eq!(
            validate_chart_path("team/web-app"),
            Ok(vec!["team", "web-app"])
        );
        assert_eq!(validate_chart_path("a..b"), Ok(vec!["a..b"]));
    }

    #[test]
    fn paths_that_could_escape_are_refused() {
        use ChartPathError::*;
        let cases = [
            ("", Empty),
            ("/etc", Absolute),
            ("..", ParentSegment),
            ("../../etc", ParentSegment),
            ("a/../../b", ParentSegment),
            ("a/..", ParentSegment),
            ("./a", NotNormalised),
            ("a//b", NotNormalised),
            ("a/", NotNormalised),
            ("a/./b", NotNormalised),
            ("..\\etc", Backslash),
            ("a\\b", Backslash),
            ("a\0b", ControlCharacter),
            ("a\nb", ControlCharacter),
            (".git", GitDir),
            ("a/.GIT/hooks", GitDir),
        ];
        for (path, expected) in cases {
            assert_eq!(validate_chart_path(path), Err(expected), "{path:?}");
        }
        assert_eq!(
            validate_chart_path(&"a".repeat(MAX_CHART_PATH + 1)),
            Err(TooLong)
        );
    }

    #[test]
    fn messages_do_not_echo_the_path() {
        // The path may be anything a hostile repository chose; messages stay fixed text.
        let err = validate_chart_path("../secret\0stuff").unwrap_err();
        assert!(!err.to_string().contains("secret"));
    }
}
