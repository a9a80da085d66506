//! The benchmark's report: a markdown table, the raw figures as JSON, and a PNG chart.

use super::measure::ApiClient;
use super::{Args, Run};
use anyhow::Context;
use std::fmt::Write as _;
use std::path::Path;

/// The machine and build a report was made on.
#[derive(Debug, serde::Serialize)]
struct Machine {
    cpu: String,
    cores: usize,
    memory_gib: f64,
    kernel: String,
    commit: String,
    date: String,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let output = |program: &str, args: &[&str]| {
            std::process::Command::new(program)
                .args(args)
                .current_dir(crate::root())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        Machine {
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
                .unwrap_or_default(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: output("uname", &["-r"]),
            commit: output("git", &["rev-parse", "--short", "HEAD"]),
            date: output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        }
    }
}

/// The commit being measured, marked `-dirty` when the work tree has changes.
pub fn commit() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(crate::root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn requests(map: &std::collections::BTreeMap<ApiClient, u64>, client: ApiClient) -> u64 {
    map.get(&client).copied().unwrap_or(0)
}

/// The client's requests per release, as `get secrets 2.0, patch fluxhelmreleases/status 1.0`.
fn per_release(calls: &std::collections::BTreeMap<String, u64>, client: &str, n: usize) -> String {
    scaled_calls(calls, client, n as f64)
}

/// The client's requests divided by `scale`, largest first, at most six.
fn scaled_calls(
    calls: &std::collections::BTreeMap<String, u64>,
    client: &str,
    scale: f64,
) -> String {
    let prefix = format!("{client} ");
    let mut mine: Vec<(&str, u64)> = calls
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?, *v)))
        .collect();
    mine.sort_by_key(|(_, v)| std::cmp::Reverse(*v));
    if mine.is_empty() {
        return "–".into();
    }
    mine.iter()
        .take(6)
        .map(|(call, count)| format!("{call} {:.1}", *count as f64 / scale))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}×", ours / theirs)
    } else {
        "–".into()
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

/// One line per scenario, printed as each N finishes.
pub fn summary(run: &Run) -> String {
    let c = &run.convergence;
    let b = &run.baseline.install;
    let mut text = format!(
        "    N={}: converged in {:.1} s (helm loop {:.1} s), {} Helm processes, peak RSS operator {:.0} MiB / agent {:.0} MiB",
        run.releases,
        c.seconds,
        b.seconds,
        c.helm_processes,
        c.peak_rss_mib.operator,
        c.peak_rss_mib.agent
    );
    if let Some(s) = &run.steady {
        let _ = write!(
            text,
            "\n    steady: {} Helm processes, CPU operator {:.2} s / agent {:.2} s over {:.0} s",
            s.helm_processes, s.cpu_seconds.operator, s.cpu_seconds.agent, s.window_seconds
        );
    }
    text
}

/// Writes bench.md, bench.json and bench.png under `out`.
/// Runs of other N kept from an earlier report in `out`, so N = 1000 can be measured on its own
/// and still land in the same table and chart (each run names its commit).
pub fn write(out: &Path, args: &Args, runs: Vec<Run>) -> anyhow::Result<Vec<Run>> {
    std::fs::create_dir_all(out)?;
    let mut all: Vec<Run> = std::fs::read(out.join("bench.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|json| serde_json::from_value::<Vec<Run>>(json["runs"].clone()).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|old| !runs.iter().any(|new| new.releases == old.releases))
        .collect();
    all.extend(runs);
    all.sort_by_key(|r| r.releases);
    let runs = all.as_slice();
    let machine = Machine::read();
    let settings = serde_json::json!({
        "workers": args.workers,
        "recheck_seconds": args.recheck.as_secs_f64(),
        "periods": args.periods,
        "git_poll_seconds": super::GIT_POLL.as_secs_f64(),
    });
    let json = serde_json::json!({ "machine": machine, "settings": settings, "runs": runs });
    std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(&json)?)?;
    std::fs::write(out.join("bench.md"), markdown(&machine, args, runs))?;
    match chart(&out.join("bench.png"), runs) {
        Ok(()) => {}
        Err(e) => eprintln!("    no chart drawn: {e:#}"),
    }
    Ok(all)
}

fn markdown(machine: &Machine, args: &Args, runs: &[Run]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# flux-helm benchmark\n\n{} · {} cores · {} GiB · Linux {} · commit {} · {}\n\nRelease builds; helm-operator --workers={}; re-check and re-apply every {:.0} s; git polled every {:.0} s. \"helm loop\" is `helm upgrade --install` over the same releases one after another, on the same control plane. Ratios are flux-helm ÷ helm loop.\n",
        machine.cpu,
        machine.cores,
        machine.memory_gib,
        machine.kernel,
        machine.commit,
        machine.date,
        args.workers,
        args.recheck.as_secs_f64(),
        super::GIT_POLL.as_secs_f64()
    );
    md.push_str("## Convergence: N releases committed at once → every one deployed and Ready\n\n");
    md.push_str("| N (commit) | time s (loop) | ratio | Helm processes (loop) | CPU s: operator + Helm + agent (loop) | ratio | peak RSS MiB operator / agent (one helm) | API requests: operator + Helm + agent (loop) | ratio |\n|---|---|---|---|---|---|---|---|---|\n");
    for run in runs {
        let c = &run.convergence;
        let b = &run.baseline.install;
        let cpu = c.cpu_seconds.operator + c.helm_cpu_seconds + c.cpu_seconds.agent;
        let api = requests(&c.api_requests, ApiClient::HelmOperator)
            + requests(&c.api_requests, ApiClient::Helm)
            + requests(&c.api_requests, ApiClient::FluxAgent);
        let _ = writeln!(
            md,
            "| {} ({}) | {:.1} ({:.1}) | {} | {} ({}) | {:.1} + {:.1} + {:.1} = {:.1} ({:.1}) | {} | {:.0} / {:.0} ({:.0}) | {} + {} + {} = {} ({}) | {} |",
            run.releases,
            run.commit,
            c.seconds,
            b.seconds,
            ratio(c.seconds, b.seconds),
            c.helm_processes,
            b.helm_processes,
            c.cpu_seconds.operator,
            c.helm_cpu_seconds,
            c.cpu_seconds.agent,
            cpu,
            b.cpu_seconds,
            ratio(cpu, b.cpu_seconds),
            c.peak_rss_mib.operator,
            c.peak_rss_mib.agent,
            b.peak_rss_mib,
            requests(&c.api_requests, ApiClient::HelmOperator),
            requests(&c.api_requests, ApiClient::Helm),
            requests(&c.api_requests, ApiClient::FluxAgent),
            api,
            b.api_requests,
            ratio(api as f64, b.api_requests as f64),
        );
    }
    if runs.iter().any(|r| !r.replicas.is_empty()) {
        md.push_str("\n## Replicas: N releases → all Ready, by number of helm-operator replicas\n\nEach on a fresh control plane; one replica leads (`--sharding=leader`), several share the releases (`--sharding=auto`). CPU and peak RSS add up over the replicas and their engines. On a machine of few cores this is what coordination costs, not a speed-up.\n\n| N | replicas | sharding | time s | Helm actions | CPU s: operators + engines + agent | CPU s per release | peak RSS MiB, all operators | helm-operator API requests |\n|---|---|---|---|---|---|---|---|---|\n");
        for run in runs {
            for r in &run.replicas {
                let c = &r.convergence;
                let cpu = c.cpu_seconds.operator + c.helm_cpu_seconds + c.cpu_seconds.agent;
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.1} | {} | {:.1} + {:.1} + {:.1} | {:.3} | {:.0} | {} |",
                    run.releases,
                    r.replicas,
                    r.sharding,
                    c.seconds,
                    c.helm_processes,
                    c.cpu_seconds.operator,
                    c.helm_cpu_seconds,
                    c.cpu_seconds.agent,
                    cpu / run.releases as f64,
                    c.peak_rss_mib.operator,
                    requests(&c.api_requests, ApiClient::HelmOperator),
                );
            }
        }
    }
    if runs.iter().any(|r| !r.flux.is_empty()) {
        md.push_str("\n## Against Flux v2 and the helm loop: N releases → all Ready\n\nFlux is upstream helm-controller and source-controller (`--concurrent` = our `--workers`), run on the same control plane against the same git repository and chart in the same run, once with its defaults and once with `install/upgrade.disableOpenAPIValidation`. CPU counts helm-operator + its Helm engine (or helm processes) + flux-agent for flux-helm, helm-controller + source-controller for Flux. Ratios are flux-helm ÷ the other.\n\n| N | Helm | flux-helm s | Flux defaults s (ratio) | Flux no-OpenAPI s (ratio) | helm loop s (ratio) | CPU s per release: flux-helm / Flux defaults / Flux no-OpenAPI / helm loop | peak RSS MiB: operator + engine / Flux (both controllers) |\n|---|---|---|---|---|---|---|---|\n");
        for run in runs.iter().filter(|r| !r.flux.is_empty()) {
            let c = &run.convergence;
            let n = run.releases as f64;
            let ours_cpu = c.cpu_seconds.operator + c.helm_cpu_seconds + c.cpu_seconds.agent;
            let flux = |variant: super::flux::Variant| {
                run.flux.iter().find(|f| f.variant == variant).copied()
            };
            let defaults = flux(super::flux::Variant::Defaults);
            let no_openapi = flux(super::flux::Variant::NoOpenapi);
            let time = |f: Option<super::flux::FluxRun>| {
                f.map_or("–".into(), |f| {
                    format!("{:.1} ({})", f.seconds, ratio(c.seconds, f.seconds))
                })
            };
            let cpu = |f: Option<super::flux::FluxRun>| {
                f.map_or("–".into(), |f| format!("{:.3}", f.cpu_seconds / n))
            };
            let b = &run.baseline.install;
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {} | {} | {:.1} ({}) | {:.3} / {} / {} / {:.3} | {:.0} / {} |",
                run.releases,
                run.engine.as_deref().unwrap_or("cli"),
                c.seconds,
                time(defaults),
                time(no_openapi),
                b.seconds,
                ratio(c.seconds, b.seconds),
                ours_cpu / n,
                cpu(defaults),
                cpu(no_openapi),
                b.cpu_seconds / n,
                c.peak_rss_mib.operator,
                defaults.map_or("–".into(), |f| format!("{:.0}", f.peak_rss_mib)),
            );
        }
    }
    md.push_str("\nPer release during convergence: mean seconds per Helm action (the operator's histogram), and the daemons' API requests by verb and resource (the audit log):\n\n| N | s per Helm action | helm-operator requests per release | flux-agent requests per release |\n|---|---|---|---|\n");
    for run in runs {
        let c = &run.convergence;
        let _ = writeln!(
            md,
            "| {} | {:.2} | {} | {} |",
            run.releases,
            c.helm_action_seconds,
            per_release(&c.api_calls, "helm-operator", run.releases),
            per_release(&c.api_calls, "flux-agent", run.releases),
        );
    }
    if runs.iter().any(|r| r.latency.is_some()) {
        md.push_str(
            "\n## Change latency: one value changed in git → release upgraded (seconds)\n\n",
        );
        md.push_str("| N | poll mode median / max | webhook median / max | helm loop: one pass |\n|---|---|---|---|\n");
        for run in runs {
            let Some(l) = &run.latency else { continue };
            let pass = run
                .baseline
                .rerun
                .map_or("–".into(), |p| format!("{:.1}", p.seconds));
            let _ = writeln!(
                md,
                "| {} | {:.2} / {:.2} | {:.2} / {:.2} | {pass} |",
                run.releases,
                median(&l.poll),
                max(&l.poll),
                median(&l.webhook),
                max(&l.webhook),
            );
        }
        let _ = writeln!(
            md,
            "\nPoll mode waits for the agent's next fetch (every {:.0} s), so it adds up to that much. A script picks a change up at its next pass, after up to its own period, and then needs the pass time shown.",
            super::GIT_POLL.as_secs_f64()
        );
    }
    if runs.iter().any(|r| r.steady.is_some()) {
        md.push_str("\n## Steady state: API requests per release and re-check period, by verb and resource\n\n| N | helm-operator | flux-agent |\n|---|---|---|\n");
        for run in runs {
            let Some(s) = &run.steady else { continue };
            let periods = (s.window_seconds / s.recheck_seconds).max(1.0);
            let scale = run.releases as f64 * periods;
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                run.releases,
                scaled_calls(&s.api_calls, "helm-operator", scale),
                scaled_calls(&s.api_calls, "flux-agent", scale),
            );
        }
        md.push_str("\n## Steady state: nothing changing\n\n");
        md.push_str("| N | window s | Helm processes | CPU s operator / agent | API requests per minute operator / agent | RSS MiB operator / agent | helm loop, one pass: processes, CPU s, API requests |\n|---|---|---|---|---|---|---|\n");
        for run in runs {
            let Some(s) = &run.steady else { continue };
            let per_minute =
                |client| requests(&s.api_requests, client) as f64 * 60.0 / s.window_seconds;
            let pass = run.baseline.rerun.map_or("–".into(), |p| {
                format!(
                    "{}, {:.1}, {}",
                    p.helm_processes, p.cpu_seconds, p.api_requests
                )
            });
            let _ = writeln!(
                md,
                "| {} | {:.0} | {} | {:.2} / {:.2} | {:.0} / {:.0} | {:.0} / {:.0} | {pass} |",
                run.releases,
                s.window_seconds,
                s.helm_processes,
                s.cpu_seconds.operator,
                s.cpu_seconds.agent,
                per_minute(ApiClient::HelmOperator),
                per_minute(ApiClient::FluxAgent),
                s.rss_mib.operator,
                s.rss_mib.agent,
            );
        }
        md.push_str("\nA script that re-runs the loop once per re-check period pays the last column every period; flux-helm's operator CPU includes any Helm processes it started.\n");
    }
    md
}

/// One line of a chart: its name, colour and (N, value) points.
type Series = (&'static str, plotters::style::RGBColor, Vec<(f64, f64)>);

/// Convergence time and peak memory against N, flux-helm beside the helm loop.
fn chart(path: &Path, runs: &[Run]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    let font =
        std::fs::read(FONT).with_context(|| format!("font {FONT} (Debian fonts-dejavu-core)"))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;
    let mut runs: Vec<&Run> = runs.iter().collect();
    runs.sort_by_key(|r| r.releases);
    let n_max = runs.last().map_or(10, |r| r.releases) as f64;
    let n_min = runs.first().map_or(1, |r| r.releases) as f64;
    let x_range = (n_min * 0.8)..(n_max * 1.25);

    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let plot = |area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
                title: &str,
                y_label: &str,
                series: &[Series]|
     -> anyhow::Result<()> {
        let y_max = series
            .iter()
            .flat_map(|(_, _, points)| points.iter().map(|p| p.1))
            .fold(1.0, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(x_range.clone().log_scale(), 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("releases (N, log scale)")
            .y_desc(y_label)
            .label_style(("sans-serif", 14))
            .draw()?;
        for (name, color, points) in series {
            let color = *color;
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
        Ok(())
    };
    let points = |f: &dyn Fn(&Run) -> f64| -> Vec<(f64, f64)> {
        runs.iter().map(|r| (r.releases as f64, f(r))).collect()
    };
    plot(
        &left,
        "Convergence time",
        "seconds until every release is Ready",
        &[
            ("flux-helm", BLUE, points(&|r| r.convergence.seconds)),
            (
                "helm upgrade --install loop",
                RED,
                points(&|r| r.baseline.install.seconds),
            ),
        ],
    )?;
    plot(
        &right,
        "Peak memory",
        "peak RSS, MiB",
        &[
            (
                "helm-operator",
                BLUE,
                points(&|r| r.convergence.peak_rss_mib.operator),
            ),
            (
                "flux-agent",
                GREEN,
                points(&|r| r.convergence.peak_rss_mib.agent),
            ),
            (
                "one helm process (loop)",
                RED,
                points(&|r| r.baseline.install.peak_rss_mib),
            ),
        ],
    )?;
    root.present()?;
    Ok(())
}
