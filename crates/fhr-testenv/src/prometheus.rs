//! Reading the daemons' `/metrics` (Prometheus text exposition) in tests and the benchmark.

/// The sum of the samples of `series`: `name` for every label set, or
/// `name{label="value",…}` for the samples carrying all of those labels. 0 when there are none.
pub fn sum(body: &str, series: &str) -> f64 {
    let (name, wanted) = match series.split_once('{') {
        Some((name, labels)) => (name, labels.trim_end_matches('}')),
        None => (series, ""),
    };
    let wanted: Vec<&str> = wanted.split(',').filter(|l| !l.is_empty()).collect();
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (sample, value) = line.rsplit_once(' ')?;
            let (metric, labels) = sample.split_once('{').unwrap_or((sample, ""));
            (metric == name && wanted.iter().all(|w| labels.contains(w)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Every series name a scrape serves: the samples' names, and for each declared family the names
/// its type gives samples (a family without samples yet is still served).
pub fn series_names(body: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in body.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut parts = declared.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            if !name.is_empty() {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::{series_names, sum};

    #[test]
    fn series_names_come_from_samples_and_declared_families() {
        let names = series_names(
            "# TYPE fhr_x counter\nfhr_x_total{a=\"b\"} 1\n# TYPE fhr_h histogram\n# TYPE fhr_g gauge\n",
        );
        for name in ["fhr_x_total", "fhr_h_bucket", "fhr_h_count", "fhr_g"] {
            assert!(names.contains(name), "{name} in {names:?}");
        }
        assert!(!names.contains("fhr_x"));
    }

    const BODY: &str = "# HELP x_total X\n# TYPE x_total counter\nx_total{action=\"install\",result=\"success\"} 3\nx_total{action=\"upgrade\",result=\"failure\"} 2\nx_total_other 7\ny 1.5\n";

    #[test]
    fn sums_every_label_set_or_only_the_matching_ones() {
        assert_eq!(sum(BODY, "x_total"), 5.0);
        assert_eq!(sum(BODY, "x_total{result=\"failure\"}"), 2.0);
        assert_eq!(
            sum(BODY, "x_total{action=\"install\",result=\"failure\"}"),
            0.0
        );
        assert_eq!(sum(BODY, "y"), 1.5);
        assert_eq!(sum(BODY, "missing"), 0.0);
    }
}
