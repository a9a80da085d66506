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

#[cfg(test)]
mod tests {
    use super::sum;

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
