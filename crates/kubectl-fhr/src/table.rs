//! kubectl's plain table: upper-case headers, columns padded to the widest cell, three spaces
//! apart, and ages as `kubectl get` prints them.

use jiff::{SignedDuration, Timestamp};

/// Lays `rows` out under `headers`. Cells are kept to one line, so a multi-line message cannot
/// break the table.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let one_line = |cell: &str| cell.lines().next().unwrap_or_default().to_owned();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| one_line(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&headers).chain(&rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 3;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

/// How long ago `then` was, as kubectl prints ages: `45s`, `12m`, `5h`, `3d`; `<unknown>` for
/// no time.
pub fn age(then: Option<Timestamp>, now: Timestamp) -> String {
    let Some(then) = then else {
        return "<unknown>".to_owned();
    };
    let elapsed = now.duration_since(then).max(SignedDuration::ZERO);
    let seconds = elapsed.as_secs();
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_messages_stay_on_one_line() {
        let table = render(
            &["NAME", "READY", "MESSAGE"],
            &[
                vec!["web".into(), "True".into(), "ok".into()],
                vec![
                    "database".into(),
                    "False".into(),
                    "first line\nsecond".into(),
                ],
            ],
        );
        assert_eq!(
            table,
            "NAME       READY   MESSAGE\nweb        True    ok\ndatabase   False   first line\n"
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        let ago = |s: i64| Some(now - SignedDuration::from_secs(s));
        assert_eq!(age(ago(5), now), "5s");
        assert_eq!(age(ago(600), now), "10m");
        assert_eq!(age(ago(3 * 3600), now), "3h");
        assert_eq!(age(ago(5 * 86400), now), "5d");
        assert_eq!(age(None, now), "<unknown>");
        // A clock a little behind the API server's never shows a negative age.
        assert_eq!(age(ago(-3), now), "0s");
    }
}
