//! The repository is untrusted input: a GitOps operator runs what git says with wide rights, so
//! every way a hostile repository, git host or resource has broken operators before (Argo CD's
//! path and symlink CVEs, Helm's archive bombs, billion laughs, gitoxide's `..` trees) is driven
//! here against the real control plane, helm and git server. Each test names what a user would
//! see: a clear condition, nothing read or written outside, no secret in any output, memory
//! bounded, and every other release still reconciling.

use e2e::operator::{ACT_TIMEOUT, OperatorEnv, ready, ready_at, ready_message};
use e2e::{Daemon, eventually, unique_name};
use fhr_testenv::{GitServer, GitServerBehaviour, GitServerOptions};
use fhr_types::FluxHelmRelease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// Peak RSS the operator (a debug build) may reach while refusing every bomb below at once.
/// Measured at about 90 MiB (it holds 1.4 MB of values and a 10,000-entry resource several times
/// over); a bomb that got through would take hundreds of MiB to GiB.
const RSS_CEILING_MIB: f64 = 150.0;

/// Failed git fetches of each daemon.
const FAILED_FETCHES_AGENT: &str = "fhr_agent_git_fetches_total{result=\"failure\"}";
const FAILED_FETCHES_OPERATOR: &str = "fhr_operator_git_fetches_total{result=\"failure\"}";

/// Every release of the namespace whose status is `pending-*` (a stuck release blocks all
/// later actions on it).
fn pending_releases(env: &OperatorEnv) -> Vec<String> {
    let output = e2e::output_ok(env.cp.helm().args([
        "list",
        "--pending",
        "--namespace",
        &env.namespace,
        "--output",
        "json",
    ]));
    let releases: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    releases
        .iter()
        .filter(|r| r["status"].as_str().unwrap_or("").starts_with("pending"))
        .map(|r| r["name"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Copies the example webapp chart to `charts/<name>` of the test's repository.
fn webapp_copy(env: &OperatorEnv, name: &str) {
    env.repo
        .copy_dir(
            &fhr_testenv::examples_dir().join("charts/webapp"),
            &format!("charts/{name}"),
        )
        .unwrap();
}

/// Changes a value of a deployed release and waits for the upgrade: the proof that the
/// operator still reconciles after whatever came before.
async fn still_reconciles(env: &OperatorEnv, name: &str, revision: i64) {
    env.apply(
        name,
        json!({"chartGitPath": "webapp", "values": [{"name": "message", "value": format!("revision {revision}")}]}),
    )
    .await;
    env.wait_for(
        name,
        "upgraded while the hostile input sits there",
        ready_at(revision),
    )
    .await;
}

#[tokio::test]
async fn chart_paths_leaving_the_charts_folder_are_refused_before_anything_is_read() {
    let mut env = OperatorEnv::new("paths").await;
    env.start_operator(&[]).await;
    env.apply("good", json!({"chartGitPath": "webapp"})).await;
    env.wait_for("good", "installed", ready_at(1)).await;
    let helm_before = env.helm_processes().await;

    let cases = [
        ("dotdot", "../../etc"),
        ("absolute", "/etc"),
        ("inner", "a/../../b"),
        ("nul", "webapp\u{0}/../../../etc/passwd"),
        ("backslash", "..\\..\\etc"),
        ("mixed", "webapp\\..\\..\\..\\etc"),
    ];
    for (name, path) in cases {
        env.apply(name, json!({"chartGitPath": path})).await;
    }
    for (name, _) in cases {
        let fhr = env.wait_condition(name, "False", "InvalidChartPath").await;
        let message = ready_message(&fhr);
        assert!(
            !message.contains("root:") && !message.contains("apiVersion"),
            "{name}: file contents in the message: {message}"
        );
    }
    assert_eq!(
        env.helm_processes().await,
        helm_before,
        "no refused path reached helm"
    );
    assert!(!env.operator().log().contains("root:x:0:0"));
    still_reconciles(&env, "good", 2).await;
}

#[tokio::test]
async fn symlinks_to_outside_files_devices_folders_or_loops_are_refused() {
    let mut env = OperatorEnv::new("links").await;
    let link = |chart: &str, at: &str, target: &str| {
        let path = env.repo.path().join(format!("charts/{chart}/{at}"));
        std::os::unix::fs::symlink(target, path).unwrap();
    };
    let refused = [
        ("link-passwd", "templates/evil.yaml", "/etc/passwd"),
        ("link-environ", "templates/evil.yaml", "/proc/self/environ"),
        ("link-zero", "templates/evil.yaml", "/dev/zero"),
        // Out of the chart and back into the repository: still outside the chart's folder.
        (
            "link-outback",
            "templates/evil.yaml",
            "../../webapp/templates/configmap.yaml",
        ),
        ("link-dir", "templates/more", "../../webapp/templates"),
        ("link-dir-inside", "templates/more", "."),
    ];
    for (chart, at, target) in refused {
        webapp_copy(&env, chart);
        link(chart, at, target);
    }
    webapp_copy(&env, "link-loop");
    link("link-loop", "templates/a.yaml", "b.yaml");
    link("link-loop", "templates/b.yaml", "a.yaml");
    // A link that stays inside the chart's folder is fine.
    webapp_copy(&env, "link-inside");
    std::fs::create_dir_all(env.repo.path().join("charts/link-inside/files")).unwrap();
    link("link-inside", "files/defaults.yaml", "../values.yaml");
    env.repo.commit("charts with symlinks").unwrap();
    env.start_operator(&[]).await;

    let mut names: Vec<&str> = refused.iter().map(|(chart, _, _)| *chart).collect();
    names.push("link-loop");
    for chart in names.iter().chain(["link-inside"].iter()) {
        env.apply(chart, json!({"chartGitPath": chart})).await;
    }
    env.wait_for("link-inside", "installed", ready_at(1)).await;
    for chart in &names {
        let fhr = env.wait_condition(chart, "False", "ChartRefused").await;
        let message = ready_message(&fhr);
        assert!(message.contains("symlink"), "{chart}: {message}");
        assert!(
            !message.contains("root:") && !message.contains("PATH="),
            "{chart}: outside contents in the message: {message}"
        );
    }
    assert_eq!(
        env.helm_processes().await,
        1.0,
        "only the chart with an inside link reached helm"
    );
    let log = env.operator().log();
    assert!(!log.contains("root:x:0:0") && !log.contains("PATH=/"));
}

/// Writes a tree object from `ls-tree`-style lines.
fn mktree(env: &OperatorEnv, lines: &[String]) -> String {
    let mut input = lines.join("\n");
    input.push('\n');
    env.repo
        .git_with_input(&["mktree", "--missing"], input.as_bytes())
        .unwrap()
}

/// Commits (and pushes) HEAD's tree with `charts/<name>` set to `tree`: trees no working copy
/// could hold.
fn commit_chart_tree(env: &OperatorEnv, name: &str, tree: &str) -> String {
    let mut charts: Vec<String> = env
        .repo
        .git(&["ls-tree", "HEAD:charts"])
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    charts.push(format!("040000 tree {tree}\t{name}"));
    let charts = mktree(env, &charts);
    let root: Vec<String> = env
        .repo
        .git(&["ls-tree", "HEAD"])
        .unwrap()
        .lines()
        .map(|l| {
            if l.ends_with("\tcharts") {
                format!("040000 tree {charts}\tcharts")
            } else {
                l.to_owned()
            }
        })
        .collect();
    let root = mktree(env, &root);
    let commit = env
        .repo
        .git(&["commit-tree", &root, "-p", "HEAD", "-m", name])
        .unwrap();
    env.repo
        .git(&["reset", "--quiet", "--soft", &commit])
        .unwrap();
    env.repo.push().unwrap();
    commit
}

/// `ls-tree` lines of the webapp chart, plus `extra`.
fn webapp_tree_with(env: &OperatorEnv, extra: &[String]) -> String {
    let mut lines: Vec<String> = env
        .repo
        .git(&["ls-tree", "HEAD:charts/webapp"])
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.extend(extra.iter().cloned());
    mktree(env, &lines)
}

fn blob(env: &OperatorEnv, contents: &str) -> String {
    env.repo
        .git_with_input(&["hash-object", "-w", "--stdin"], contents.as_bytes())
        .unwrap()
}

/// Every file under `dir` whose name contains `needle`.
fn find_files(dir: &Path, needle: &str, found: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().contains(needle) {
            found.push(path.clone());
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            find_files(&path, needle, found);
        }
    }
}

#[tokio::test]
async fn trees_with_dotdot_or_dotgit_entries_submodules_and_hooks_write_nothing_outside_and_run_nothing()
 {
    let mut env = OperatorEnv::new("trees").await;
    let marker = std::env::temp_dir().join(unique_name("hook-ran"));
    let escaped = unique_name("escaped");
    let hook = format!("#!/bin/sh\ntouch {}\n", marker.display());

    // A chart with hooks as plain files: data, never run.
    webapp_copy(&env, "hooks-as-data");
    env.repo
        .write("charts/hooks-as-data/hooks/post-checkout", &hook)
        .unwrap();
    env.repo
        .write("charts/hooks-as-data/hooks/post-merge", &hook)
        .unwrap();
    // A .gitmodules pointing at a local repository, with a gitlink beside it.
    env.repo
        .write(
            ".gitmodules",
            format!(
                "[submodule \"evil\"]\n\tpath = charts/evil-submodule/vendor\n\turl = {}\n",
                env.repo.path().display()
            ),
        )
        .unwrap();
    env.repo.commit("hooks as data, .gitmodules").unwrap();

    let escaped_blob = blob(&env, "kind: ConfigMap\n");
    let escape_dir = mktree(
        &env,
        &[format!("100644 blob {escaped_blob}\t{escaped}.yaml")],
    );
    let dotdot = webapp_tree_with(&env, &[format!("040000 tree {escape_dir}\t..")]);
    commit_chart_tree(&env, "evil-dotdot", &dotdot);
    let hook_blob = blob(&env, &hook);
    let hooks = mktree(&env, &[format!("100755 blob {hook_blob}\tpost-checkout")]);
    let git_dir = mktree(&env, &[format!("040000 tree {hooks}\thooks")]);
    let dotgit = webapp_tree_with(&env, &[format!("040000 tree {git_dir}\t.git")]);
    commit_chart_tree(&env, "evil-dotgit", &dotgit);
    let head = env.repo.head().unwrap();
    let submodule = webapp_tree_with(&env, &[format!("160000 commit {head}\tvendor")]);
    commit_chart_tree(&env, "evil-submodule", &submodule);

    env.start_operator(&[]).await;
    for chart in [
        "hooks-as-data",
        "evil-dotdot",
        "evil-dotgit",
        "evil-submodule",
    ] {
        env.apply(chart, json!({"chartGitPath": chart})).await;
    }
    env.wait_for("hooks-as-data", "installed", ready_at(1))
        .await;
    for (chart, says) in [
        ("evil-dotdot", "\"..\""),
        ("evil-dotgit", ".git"),
        ("evil-submodule", "submodules"),
    ] {
        let fhr = env.wait_condition(chart, "False", "ChartRefused").await;
        assert!(
            ready_message(&fhr).contains(says),
            "{chart}: {}",
            ready_message(&fhr)
        );
    }
    assert!(!marker.exists(), "a hook from the repository ran");
    let mut found = Vec::new();
    let search_root = env.dir.path().parent().unwrap_or(env.dir.path());
    find_files(search_root, &escaped, &mut found);
    assert!(found.is_empty(), "written outside the export: {found:?}");
}

/// A gzip tar with the given entries, written with the `tar` crate (so names it refuses, like
/// `..`, go in raw).
fn tgz(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    for (name, kind, data, link) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(*kind);
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A subchart archive whose one template expands to `size` bytes of zeros, made by the system's
/// tar and gzip from a sparse file (nothing that size is ever written to disk or memory).
fn gzip_bomb(dir: &Path, size: &str) -> Vec<u8> {
    let root = dir.join("bomb");
    std::fs::create_dir_all(root.join("sub/templates")).unwrap();
    std::fs::write(
        root.join("sub/Chart.yaml"),
        "apiVersion: v2\nname: sub\nversion: 0.1.0\n",
    )
    .unwrap();
    e2e::output_ok(
        std::process::Command::new("truncate")
            .args(["-s", size])
            .arg(root.join("sub/templates/big.yaml")),
    );
    let output = e2e::output_ok(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("tar -C '{}' -cf - sub | gzip -1", root.display())),
    );
    std::fs::remove_dir_all(&root).unwrap();
    output.stdout
}

/// Text of `len` characters that does not compress (xorshift over a base64 alphabet).
fn incompressible(len: usize, seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ALPHABET[(state % 64) as usize] as char
        })
        .collect()
}

#[tokio::test]
async fn archive_template_values_and_release_record_bombs_get_clear_conditions_in_bounded_memory() {
    let mut env = OperatorEnv::new("bombs").await;
    // A vendored subchart expanding to 1 GiB, one escaping with ../, one holding a hard link.
    webapp_copy(&env, "bomb-gzip");
    env.repo
        .write(
            "charts/bomb-gzip/charts/sub-0.1.0.tgz",
            gzip_bomb(env.dir.path(), "1G"),
        )
        .unwrap();
    let chart_yaml: &[u8] = b"apiVersion: v2\nname: sub\nversion: 0.1.0\n";
    webapp_copy(&env, "bomb-escape");
    env.repo
        .write(
            "charts/bomb-escape/charts/sub-0.1.0.tgz",
            tgz(&[
                ("sub/Chart.yaml", tar::EntryType::Regular, chart_yaml, None),
                (
                    "sub/../../../../escaped.yaml",
                    tar::EntryType::Regular,
                    b"kind: ConfigMap\n",
                    None,
                ),
            ]),
        )
        .unwrap();
    webapp_copy(&env, "bomb-hardlink");
    env.repo
        .write(
            "charts/bomb-hardlink/charts/sub-0.1.0.tgz",
            tgz(&[
                ("sub/Chart.yaml", tar::EntryType::Regular, chart_yaml, None),
                (
                    "sub/templates/passwd.yaml",
                    tar::EntryType::Link,
                    b"",
                    Some("/etc/passwd"),
                ),
            ]),
        )
        .unwrap();
    // A 50 MB template.
    webapp_copy(&env, "big-template");
    let line = format!("# {}\n", "x".repeat(98));
    env.repo
        .write(
            "charts/big-template/templates/big.yaml",
            line.repeat(500_000),
        )
        .unwrap();
    // A chart whose own values.yaml is a billion laughs (Helm parses it).
    webapp_copy(&env, "laughs-chart");
    env.repo
        .write("charts/laughs-chart/values.yaml", e2e::billion_laughs())
        .unwrap();
    env.repo.commit("bombs").unwrap();

    let config_maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.namespace);
    let apply = PatchParams::apply(e2e::TEST_MANAGER).force();
    let values_map = |name: &str, text: String| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
            "data": {"values.yaml": text}})
    };
    for (name, text) in [
        ("laughs", e2e::billion_laughs()),
        ("huge-a", format!("blobA: {}\n", incompressible(700_000, 1))),
        ("huge-b", format!("blobB: {}\n", incompressible(700_000, 2))),
    ] {
        config_maps
            .patch(name, &apply, &Patch::Apply(&values_map(name, text)))
            .await
            .unwrap();
    }

    env.start_operator(&[]).await;
    env.apply("good", json!({"chartGitPath": "webapp"})).await;
    env.wait_for("good", "installed", ready_at(1)).await;

    for chart in [
        "bomb-gzip",
        "bomb-escape",
        "bomb-hardlink",
        "big-template",
        "laughs-chart",
    ] {
        env.apply(chart, json!({"chartGitPath": chart})).await;
    }
    env.apply(
        "laughs-values",
        json!({"chartGitPath": "webapp", "valuesFrom": [{"configMapKeyRef": {"name": "laughs"}}]}),
    )
    .await;
    let mut many: Vec<serde_json::Value> = (0..10_000)
        .map(|i| json!({"name": format!("key{i}"), "value": i}))
        .collect();
    many.push(json!({"name": "a[999999999]", "value": 1}));
    env.apply(
        "many-values",
        json!({"chartGitPath": "webapp", "values": many}),
    )
    .await;
    env.apply(
        "huge-record",
        json!({"chartGitPath": "webapp", "valuesFrom": [
            {"configMapKeyRef": {"name": "huge-a"}},
            {"configMapKeyRef": {"name": "huge-b"}}]}),
    )
    .await;

    for (name, reason, says) in [
        ("bomb-gzip", "ChartRefused", "expands to more than"),
        ("bomb-escape", "ChartRefused", "leaves the archive"),
        ("bomb-hardlink", "ChartRefused", "not a regular file"),
        ("big-template", "ChartRefused", "more than the limit"),
        ("laughs-values", "InvalidValuesFrom", "laughs"),
        ("many-values", "InvalidValues", "999999999"),
    ] {
        let fhr = env.wait_condition(name, "False", reason).await;
        let message = ready_message(&fhr);
        assert!(message.contains(says), "{name}: {message}");
        assert!(!message.contains("root:"), "{name}: {message}");
    }
    // Helm itself refuses these two; the operator reports its words.
    let fhr = env
        .wait_condition("laughs-chart", "False", "InstallFailed")
        .await;
    assert!(!ready_message(&fhr).is_empty());
    let fhr = env
        .wait_condition("huge-record", "False", "InstallFailed")
        .await;
    let message = ready_message(&fhr);
    assert!(message.to_lowercase().contains("too long"), "{message}");
    assert!(
        message.len() < 4096 && !message.contains(&incompressible(64, 1)),
        "the values are not in the message"
    );

    still_reconciles(&env, "good", 2).await;
    assert_eq!(pending_releases(&env), Vec::<String>::new());
    let peak = env.operator().peak_rss_mib();
    eprintln!("helm-operator peak RSS after the bombs: {peak:.1} MiB");
    assert!(
        peak < RSS_CEILING_MIB,
        "the operator's peak RSS was {peak:.0} MiB (ceiling {RSS_CEILING_MIB} MiB)"
    );
    let mut found = Vec::new();
    find_files(env.dir.path().parent().unwrap(), "escaped.yaml", &mut found);
    assert!(found.is_empty(), "written outside: {found:?}");
}

/// An agent for an [`OperatorEnv`]'s repository (no credentials), applying `releaseconfig/`.
fn start_agent(env: &OperatorEnv, extra: &[&str]) -> Daemon {
    let mut args = vec![
        format!("--git-url={}", env.git.url("config")),
        "--git-poll-interval=1s".into(),
        format!("--sync-set={}", env.namespace),
        format!("--state-namespace={}", env.namespace),
        format!(
            "--state-dir={}",
            env.dir.path().join("agent-state").display()
        ),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Daemon::start("flux-agent", env.cp.kubeconfig(), env.dir.path(), &args)
}

#[tokio::test]
async fn a_git_server_that_hangs_or_trickles_times_out_and_the_last_good_state_stays() {
    let mut env = OperatorEnv::new("stall").await;
    let manifest = format!(
        "apiVersion: helm.integrations.flux.weave.works/v1alpha\nkind: FluxHelmRelease\nmetadata:\n  name: app\n  namespace: {}\nspec:\n  chartGitPath: webapp\n",
        env.namespace
    );
    env.repo.write("releaseconfig/app.yaml", &manifest).unwrap();
    // The folder stays when app.yaml goes: a missing folder is an error the agent never prunes on.
    env.repo.write("releaseconfig/.keep", "").unwrap();
    env.repo.commit("app").unwrap();
    env.start_operator(&["--git-timeout=2s"]).await;
    let agent = start_agent(&env, &["--git-timeout=2s"]);
    agent.wait_ready().await;
    env.wait_for("app", "installed", ready_at(1)).await;
    let operator_threads = env.operator().threads();
    let agent_threads = agent.threads();

    // Removing the resource from git would uninstall the release, if the commit arrived.
    env.repo.remove("releaseconfig/app.yaml").unwrap();
    env.repo.commit("remove app").unwrap();
    for behaviour in [GitServerBehaviour::Hang, GitServerBehaviour::Trickle] {
        env.git.set_behaviour(behaviour.clone());
        let agent_failed = agent.try_metric(FAILED_FETCHES_AGENT).await.unwrap();
        let operator_failed = env
            .operator()
            .try_metric(FAILED_FETCHES_OPERATOR)
            .await
            .unwrap();
        eventually(
            &format!("four timed-out fetches each ({behaviour:?})"),
            Duration::from_secs(60),
            || async {
                let a = agent.try_metric(FAILED_FETCHES_AGENT).await? - agent_failed;
                let o = env.operator().try_metric(FAILED_FETCHES_OPERATOR).await? - operator_failed;
                if a >= 4.0 && o >= 4.0 {
                    Ok(())
                } else {
                    Err(format!("agent {a}, operator {o}\n{}", agent.log_tail()))
                }
            },
        )
        .await;
        assert!(ready(&env.api().get("app").await.unwrap()), "{behaviour:?}");
        assert_eq!(
            env.helm_history(&format!("{}-app", env.namespace)).last(),
            Some(&(1, "deployed".to_owned()))
        );
        for daemon in [&agent, env.operator()] {
            assert_eq!(daemon.get("/healthz").await.map(|r| r.0), Ok(200));
        }
        // A fetch stuck in a read would hold a thread each time: none may pile up.
        let (operator_now, agent_now) = (env.operator().threads(), agent.threads());
        eprintln!(
            "{behaviour:?}: threads operator {operator_threads} → {operator_now}, agent {agent_threads} → {agent_now}"
        );
        assert!(
            operator_now <= operator_threads + 6 && agent_now <= agent_threads + 6,
            "threads piled up: operator {operator_threads} → {operator_now}, agent {agent_threads} → {agent_now}"
        );
    }
    assert!(
        env.operator().log().contains("timed out") || env.operator().log().contains("timeout"),
        "the timeout is logged"
    );

    // The server recovers: the pending commit arrives and is applied.
    env.git.set_behaviour(GitServerBehaviour::Normal);
    let api = env.api();
    eventually("the removed resource to be gone", ACT_TIMEOUT, || async {
        match api.get_opt("app").await {
            Ok(None) => Ok(()),
            other => Err(format!(
                "{:?}\n{}",
                other.map(|o| o.map(|f| f.status)),
                agent.log_tail()
            )),
        }
    })
    .await;
}

/// Runs a daemon that must refuse its flags and returns its stderr.
fn refused_start(name: &str, args: &[String]) -> String {
    let output = std::process::Command::new(e2e::daemon_binary(name))
        .args(args)
        .arg("--listen=127.0.0.1:0")
        .env("KUBECONFIG", "/nonexistent")
        .env_remove("GIT_URL")
        .output()
        .unwrap();
    assert!(!output.status.success(), "{name} {args:?} started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn credentials_need_https_or_the_flag_and_never_follow_a_redirect() {
    let dir = fhr_testenv::WorkDir::create("creds").unwrap();
    let canary = unique_name("canary-password");
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, &canary).unwrap();
    let git_args = |url: &str| {
        vec![
            format!("--git-url={url}"),
            format!("--git-password-file={}", password_file.display()),
        ]
    };
    for daemon in ["flux-agent", "helm-operator"] {
        let stderr = refused_start(daemon, &git_args("http://127.0.0.1:1/repo.git"));
        assert!(stderr.contains("plain http://"), "{daemon}: {stderr}");
        assert!(!stderr.contains(&canary));
        // Absurd intervals are refused with the flag's name, not a crash loop.
        let mut args = git_args("https://127.0.0.1:1/repo.git");
        args.push("--git-poll-interval=-5m".into());
        let stderr = refused_start(daemon, &args);
        assert!(stderr.contains("--git-poll-interval"), "{daemon}: {stderr}");
    }

    // The git host redirects to another host that also asks for credentials.
    let env = e2e::agent::AgentEnv::new("redirect").await;
    let other = GitServer::start(GitServerOptions {
        basic_auth: Some(("deploy".into(), "whatever".into())),
        address: Some(std::net::Ipv4Addr::new(127, 0, 0, 2)),
    })
    .await
    .unwrap();
    env.git
        .set_behaviour(GitServerBehaviour::RedirectTo(format!(
            "http://{}",
            other.addr()
        )));
    let args = env.agent_args(&[]);
    let agent = Daemon::start("flux-agent", env.cp.kubeconfig(), env.dir.path(), &args);
    eventually("two failed fetches", Duration::from_secs(60), || async {
        let failed = agent.try_metric(FAILED_FETCHES_AGENT).await?;
        if failed >= 2.0 {
            Ok(())
        } else {
            Err(agent.log_tail())
        }
    })
    .await;
    assert_eq!(
        other.requests_with_credentials(),
        0,
        "credentials were sent to the host a redirect named"
    );
    assert!(env.git.requests() > 0, "the agent did reach the git host");
    assert!(!agent.log().contains(&env.password));
}

/// Ready=False with the reason `reason`.
fn not_ready_with(fhr: &FluxHelmRelease, reason: &str) -> bool {
    fhr.condition("Ready")
        .is_some_and(|c| c.status == "False" && c.reason == reason)
}

/// Waits until `check(fhr, reason)` holds for the resource `name`.
async fn wait_fhr(
    api: &Api<FluxHelmRelease>,
    operator: &Daemon,
    name: &str,
    reason: &str,
    check: impl Fn(&FluxHelmRelease, &str) -> bool,
) -> FluxHelmRelease {
    eventually(&format!("{name}: {reason}"), ACT_TIMEOUT, || async {
        let fhr = api.get(name).await.map_err(|e| e.to_string())?;
        if check(&fhr, reason) {
            Ok(fhr)
        } else {
            Err(format!("{:?}\n{}", fhr.status, operator.log_tail()))
        }
    })
    .await
}

#[tokio::test]
async fn canaries_in_git_credentials_secret_values_and_chart_secrets_never_appear_anywhere() {
    let mut env = e2e::agent::AgentEnv::new("canary").await;
    let git_canary = env.password.clone();
    let value_canary = unique_name("canary-value");
    let chart_canary = unique_name("canary-chart");
    let broken_canary = unique_name("canary-broken");

    // A chart whose Secret carries a literal and a value, and which can be told to fail with
    // the secret value in Helm's error.
    env.repo
        .copy_dir(&fhr_testenv::examples_dir().join("charts"), "charts")
        .unwrap();
    env.repo
        .write(
            "charts/leaky/Chart.yaml",
            "apiVersion: v2\nname: leaky\nversion: 0.1.0\n",
        )
        .unwrap();
    env.repo
        .write("charts/leaky/values.yaml", "token: none\nexplode: false\n")
        .unwrap();
    env.repo
        .write(
            "charts/leaky/templates/secret.yaml",
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {{{{ .Release.Name }}}}\nstringData:\n  token: {{{{ .Values.token | quote }}}}\n  literal: {chart_canary}\n{{{{- if .Values.explode }}}}\n{{{{- fail (printf \"cannot use token %s\" .Values.token) }}}}\n{{{{- end }}}}\n"
            ),
        )
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let apply = PatchParams::apply(e2e::TEST_MANAGER).force();
    for (name, text) in [
        ("values", format!("token: {value_canary}\n")),
        ("broken", format!("token: [{broken_canary}\n  - oops: {{\n")),
    ] {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "stringData": {"values.yaml": text}});
        secrets
            .patch(name, &apply, &Patch::Apply(&secret))
            .await
            .unwrap();
    }
    let manifest = |name: &str, extra: &str| {
        format!(
            "---\napiVersion: helm.integrations.flux.weave.works/v1alpha\nkind: FluxHelmRelease\nmetadata:\n  name: {name}\n  namespace: {}\nspec:\n  chartGitPath: leaky\n{extra}",
            env.namespace
        )
    };
    let from =
        |secret: &str| format!("  valuesFrom:\n    - secretKeyRef:\n        name: {secret}\n");
    env.repo
        .write(
            "releaseconfig/releases.yaml",
            [
                manifest("ok", &from("values")),
                manifest(
                    "explodes",
                    &format!(
                        "{}  values:\n    - name: explode\n      value: true\n",
                        from("values")
                    ),
                ),
                manifest("broken", &from("broken")),
                manifest("missing-key", "  valuesFrom:\n    - secretKeyRef:\n        name: values\n        key: absent.yaml\n"),
            ]
            .concat(),
        )
        .unwrap();
    let commit = env.repo.commit("leaky releases").unwrap();

    // The Helm engine runs through a wrapper that records its argv and environment.
    let invocations = env.dir.path().join("engine-invocations.txt");
    let wrapper = env.dir.path().join("engine-wrapper.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n{{ echo \"argv: $*\"; env; }} >> '{}'\nexec '{}' \"$@\"\n",
            invocations.display(),
            env.cp.tools().engine.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    env.start_agent(&["--git-timeout=2s"]).await;
    env.wait_synced(&commit).await;
    let engine_flag = format!("--helm-engine-bin={}", wrapper.display());
    let operator_args = env.operator_args(
        env.cp.tools(),
        &[
            &engine_flag,
            "--git-timeout=2s",
            "--charts-sync-interval=5s",
            "--helm-timeout=60s",
        ],
    );
    let operator = Daemon::start(
        "helm-operator",
        env.cp.kubeconfig(),
        env.dir.path(),
        &operator_args,
    );
    operator.wait_ready().await;

    let api = env.api(&env.namespace);
    wait_fhr(&api, &operator, "ok", "", |f, _| ready(f)).await;
    let explodes = wait_fhr(&api, &operator, "explodes", "InstallFailed", not_ready_with).await;
    assert!(
        ready_message(&explodes).contains("cannot use token ***"),
        "Helm's error names the value, redacted: {}",
        ready_message(&explodes)
    );
    for name in ["broken", "missing-key"] {
        wait_fhr(&api, &operator, name, "InvalidValuesFrom", not_ready_with).await;
    }

    // Drift on the chart's Secret: edited by hand, restored from the release.
    let release_secret = format!("{}-ok", env.namespace);
    let edited = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": release_secret},
        "stringData": {"token": "edited-by-hand"}});
    secrets
        .patch(
            &release_secret,
            &PatchParams::apply("kubectl-edit").force(),
            &Patch::Apply(&edited),
        )
        .await
        .unwrap();
    eventually("the Secret to be restored", ACT_TIMEOUT, || async {
        let secret = secrets
            .get(&release_secret)
            .await
            .map_err(|e| e.to_string())?;
        let token = secret
            .data
            .as_ref()
            .and_then(|d| d.get("token"))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .unwrap_or_default();
        if token == value_canary {
            Ok(())
        } else {
            Err(format!("token is {token:?}\n{}", operator.log_tail()))
        }
    })
    .await;

    // Git failures with credentials configured: the host down, then hanging.
    for behaviour in [GitServerBehaviour::Unavailable, GitServerBehaviour::Hang] {
        env.git.set_behaviour(behaviour);
        let before = operator.try_metric(FAILED_FETCHES_OPERATOR).await.unwrap();
        let agent_before = env.agent().try_metric(FAILED_FETCHES_AGENT).await.unwrap();
        eventually("failed fetches", Duration::from_secs(60), || async {
            let o = operator.try_metric(FAILED_FETCHES_OPERATOR).await? - before;
            let a = env.agent().try_metric(FAILED_FETCHES_AGENT).await? - agent_before;
            if o >= 1.0 && a >= 1.0 {
                Ok(())
            } else {
                Err(format!("operator {o}, agent {a}"))
            }
        })
        .await;
    }
    env.git.set_behaviour(GitServerBehaviour::Normal);

    // Everything a user or a log collector can read.
    let engine_invocations = std::fs::read_to_string(&invocations).unwrap();
    assert!(
        engine_invocations.contains("argv: --workers="),
        "the wrapper recorded the engine's start"
    );
    let mut surfaces: Vec<(String, String)> = vec![
        ("flux-agent log".into(), env.agent().log()),
        ("helm-operator log".into(), operator.log()),
        (
            "flux-agent metrics".into(),
            env.agent().get("/metrics").await.unwrap().1,
        ),
        (
            "helm-operator metrics".into(),
            operator.get("/metrics").await.unwrap().1,
        ),
        ("engine argv and environment".into(), engine_invocations),
    ];
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.namespace);
    for event in events.list(&ListParams::default()).await.unwrap() {
        surfaces.push(("an Event".into(), serde_json::to_string(&event).unwrap()));
    }
    for fhr in api.list(&ListParams::default()).await.unwrap() {
        surfaces.push((
            format!(
                "status of {}",
                fhr.metadata.name.clone().unwrap_or_default()
            ),
            serde_json::to_string(&fhr.status).unwrap(),
        ));
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.namespace);
    for map in config_maps.list(&ListParams::default()).await.unwrap() {
        surfaces.push(("a ConfigMap".into(), serde_json::to_string(&map).unwrap()));
    }
    for canary in [&git_canary, &value_canary, &chart_canary, &broken_canary] {
        for (surface, text) in &surfaces {
            assert!(
                !text.contains(canary.as_str()),
                "{canary} appears in {surface}"
            );
        }
    }
}

#[tokio::test]
async fn absurd_timeouts_and_intervals_are_refused_for_that_resource_alone() {
    let mut env = OperatorEnv::new("absurd").await;
    env.start_operator(&[]).await;
    env.apply("good", json!({"chartGitPath": "webapp"})).await;
    env.wait_for("good", "installed", ready_at(1)).await;
    let cases = [
        (
            "huge-timeout",
            json!({"chartGitPath": "webapp", "timeout": "999999999h"}),
        ),
        (
            "negative-timeout",
            json!({"chartGitPath": "webapp", "timeout": "-5m"}),
        ),
        (
            "nonsense-timeout",
            json!({"chartGitPath": "webapp", "timeout": "1e308h"}),
        ),
        (
            "negative-rollback",
            json!({"chartGitPath": "webapp", "rollback": {"enable": true, "timeout": "-1s"}}),
        ),
    ];
    for (name, spec) in &cases {
        env.apply(name, spec.clone()).await;
    }
    for (name, _) in &cases {
        let fhr = env.wait_condition(name, "False", "InvalidSpec").await;
        assert!(
            ready_message(&fhr).contains("timeout"),
            "{name}: {}",
            ready_message(&fhr)
        );
    }
    // What the schema can say, the API server refuses before anything runs.
    let resource = kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk(fhr_types::api::GROUP, "v1alpha", "FluxHelmRelease"),
        "fluxhelmreleases",
    );
    let dynamic: Api<kube::core::DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.namespace, &resource);
    let negative_history = json!({
        "apiVersion": format!("{}/v1alpha", fhr_types::api::GROUP),
        "kind": "FluxHelmRelease",
        "metadata": {"name": "negative-history"},
        "spec": {"chartGitPath": "webapp", "maxHistory": -1},
    });
    let refused = dynamic
        .patch(
            "negative-history",
            &PatchParams::apply(e2e::TEST_MANAGER),
            &Patch::Apply(&negative_history),
        )
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(e)) if e.code == 422),
        "{refused:?}"
    );
    still_reconciles(&env, "good", 2).await;
    assert_eq!(pending_releases(&env), Vec::<String>::new());
}
