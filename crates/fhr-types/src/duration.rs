//! Durations as Helm and Kubernetes users write them (`300s`, `5m`, `1h30m`, `1.5h`, `500ms`).

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not of the form `<number><unit>…`.
    #[error("{0:?} is not a duration like 30s, 5m or 1h30m")]
    Malformed(String),
    /// Negative or zero where a positive duration is needed.
    #[error("{0:?} must be positive")]
    NotPositive(String),
    /// Above the allowed maximum.
    #[error("{value:?} is longer than the maximum of {max}")]
    TooLong {
        /// The value as given.
        value: String,
        /// The maximum, as text.
        max: String,
    },
}

/// Parses a Go-style duration (units `ms`, `s`, `m`, `h`; fractions allowed) that must be
/// positive and at most `max`.
pub fn parse_duration(text: &str, max: Duration) -> Result<Duration, DurationError> {
    let shown: String = text.chars().take(40).collect();
    let malformed = || DurationError::Malformed(shown.clone());
    let rest = text.trim();
    if rest.starts_with('-') {
        return Err(DurationError::NotPositive(shown));
    }
    let mut rest = rest.strip_prefix('+').unwrap_or(rest);
    if rest.is_empty() {
        return Err(malformed());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(malformed)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| malformed())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(malformed()),
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    if !total.is_finite() || total > max.as_secs_f64() {
        return Err(DurationError::TooLong {
            value: shown,
            max: format!("{}s", max.as_secs()),
        });
    }
    if total <= 0.0 {
        return Err(DurationError::NotPositive(shown));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Longest interval a daemon flag accepts: longer is a typo, not a wish.
pub const MAX_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Parses a daemon flag's interval such as `30s`, `5m` or `1h30m` (at most [`MAX_INTERVAL`]), as
/// clap's `value_parser` wants it.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    parse_duration(text, MAX_INTERVAL).map_err(|e| e.to_string())
}

/// Formats a duration for the `helm` CLI (`--timeout 300s`).
pub fn to_go_duration(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn common_forms_parse() {
        let cases = [
            ("300s", 300_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("1.5h", 5_400_000),
            ("500ms", 500),
            ("2m30s", 150_000),
        ];
        for (text, millis) in cases {
            assert_eq!(
                parse_duration(text, DAY),
                Ok(Duration::from_millis(millis)),
                "{text}"
            );
        }
    }

    #[test]
    fn absurd_values_are_refused() {
        assert!(matches!(
            parse_duration("999999999h", DAY),
            Err(DurationError::TooLong { .. })
        ));
        assert!(matches!(
            parse_duration("-5m", DAY),
            Err(DurationError::NotPositive(_))
        ));
        assert!(matches!(
            parse_duration("0s", DAY),
            Err(DurationError::NotPositive(_))
        ));
        for bad in ["", "5", "m", "5x", "1..2s", "five minutes", "5m 3"] {
            assert!(
                matches!(parse_duration(bad, DAY), Err(DurationError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn helm_form_round_trips() {
        let d = parse_duration("1m30s", DAY).unwrap();
        assert_eq!(to_go_duration(d), "90000ms");
        assert_eq!(parse_duration(&to_go_duration(d), DAY), Ok(d));
    }
}
