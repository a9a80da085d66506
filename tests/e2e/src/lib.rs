//! Support for the end-to-end tests: installing the CRD, waiting for conditions with a deadline,
//! and reading the example repository.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use serde_json::Value;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub mod agent;
pub mod operator;

pub use fhr_testenv::{ControlPlane, create_namespace, shared_control_plane, unique_name};

/// Field manager the tests apply with.
pub const TEST_MANAGER: &str = "e2e-test";

/// Polls `check` until it returns `Ok`, or panics after `timeout` with the last `Err` it gave,
/// which the caller makes the state a reader needs (the object's status, the command output).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(50);
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen:\n{last}")
            }
            Err(_) => {}
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(500));
    }
}

/// Applies the generated CRD (server-side) and waits until the apiserver serves it.
pub async fn install_crd(client: &kube::Client) -> CustomResourceDefinition {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = fhr_types::crd();
    let name = crd.metadata.name.clone().expect("the CRD has a name");
    crds.patch(
        &name,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply the CRD");
    eventually(
        "the CRD to be Established",
        Duration::from_secs(30),
        || async {
            let crd = crds.get(&name).await.map_err(|e| e.to_string())?;
            let established = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                Ok(crd)
            } else {
                Err(format!("{:#?}", crd.status))
            }
        },
    )
    .await
}

/// One YAML document of the example release configuration.
#[derive(Debug, Clone)]
pub struct ExampleDocument {
    /// File it came from, relative to `examples/releaseconfig`.
    pub file: PathBuf,
    /// The document.
    pub value: Value,
}

/// Every document of every `*.yaml`/`*.yml` file under `examples/releaseconfig`, nested folders
/// included, in path order.
pub fn example_release_config() -> Vec<ExampleDocument> {
    let root = fhr_testenv::examples_dir().join("releaseconfig");
    let mut files = Vec::new();
    collect_yaml(&root, &mut files);
    files.sort();
    let mut documents = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read an example file");
        let values: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        for value in values.into_iter().filter(|v| !v.is_null()) {
            documents.push(ExampleDocument {
                file: path.strip_prefix(&root).expect("below root").to_owned(),
                value,
            });
        }
    }
    documents
}

fn collect_yaml(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read an examples folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            collect_yaml(&path, files);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
}

/// A daemon under test: its process (stopped when dropped), admin address and log.
pub struct Daemon {
    /// The process.
    pub process: fhr_testenv::OwnedChild,
    /// Where /metrics, /healthz and /readyz answer.
    pub admin: std::net::SocketAddr,
    name: &'static str,
}

/// The path of a workspace binary (the daemons and `kubectl-fhr`), built once per test process
/// so that `cargo test -p e2e` alone runs the current code.
pub fn daemon_binary(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let dir = BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let output = std::process::Command::new(cargo)
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "helm-operator",
                    "-p",
                    "flux-agent",
                    "-p",
                    "kubectl-fhr",
                ])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .map_err(|e| e.to_string())?;
            if !output.status.success() {
                return Err(String::from_utf8_lossy(&output.stderr).into_owned());
            }
            // tests run from target/<profile>/deps/
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            Ok(exe
                .parent()
                .and_then(Path::parent)
                .expect("target/<profile>")
                .to_owned())
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("building the daemons failed:\n{e}"));
    dir.join(name)
}

/// A daemon's default flags with `extra` added; a flag given in `extra` replaces its default.
pub fn with_flags(mut defaults: Vec<String>, extra: &[&str]) -> Vec<String> {
    let flag = |arg: &str| arg.split('=').next().unwrap_or(arg).to_owned();
    defaults.retain(|a| !extra.iter().any(|e| flag(e) == flag(a)));
    defaults.extend(extra.iter().map(|s| s.to_string()));
    defaults
}

/// A YAML file of nine levels of nine-fold aliases: 9^9 strings once expanded.
pub fn billion_laughs() -> String {
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (name, previous) in ["b", "c", "d", "e", "f", "g", "h", "i"]
        .iter()
        .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
    {
        let refs = vec![format!("*{previous}"); 9].join(",");
        bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
    }
    bomb
}

/// The fixture repositories, `tests/e2e/fixtures/<name>`.
pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Writes the fixture folder `fixtures/<from>` into `repo` at `to` ("" for the top), with each
/// `(placeholder, value)` replaced in every file (a namespace, so tests do not collide).
pub fn copy_fixture(repo: &fhr_testenv::TestRepo, from: &str, to: &str, replace: &[(&str, &str)]) {
    let root = fixture_dir(from);
    let mut folders = vec![root.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("read a fixture folder") {
            let path = entry.expect("a fixture entry").path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            let mut text = std::fs::read_to_string(&path).expect("a fixture file is text");
            for (placeholder, value) in replace {
                text = text.replace(placeholder, value);
            }
            let relative = path.strip_prefix(&root).expect("below the fixture");
            let target = Path::new(to).join(relative);
            repo.write(&target.display().to_string(), text)
                .expect("write into the test repository");
        }
    }
}

/// The admin address a daemon logged it listens on (`admin server listening addr=…`, in text
/// or JSON logs); fails the test if the daemon exits or says nothing for 30 s.
fn listening_address(process: &mut fhr_testenv::OwnedChild, log: &Path) -> std::net::SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text
            .lines()
            .filter(|line| line.contains("admin server listening"))
            .find_map(|line| {
                let (_, rest) = line
                    .split_once("addr=")
                    .or_else(|| line.split_once("\"addr\":\""))?;
                rest.split(|c: char| c == '"' || c.is_whitespace())
                    .next()?
                    .parse()
                    .ok()
            });
        if let Some(addr) = found {
            return addr;
        }
        if let Some(status) = process.try_wait() {
            panic!(
                "{} exited ({status}) before listening:\n{}",
                process.name(),
                process.log_tail(40)
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} never said where it listens:\n{}",
            process.name(),
            process.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion and fails the test with its error output if it fails.
pub fn output_ok(command: &mut std::process::Command) -> std::process::Output {
    let output = command.output().expect("start the command");
    assert!(
        output.status.success(),
        "{:?} failed: {}",
        command.get_program(),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl Daemon {
    /// Starts `name` (`helm-operator` or `flux-agent`) with `args`, `KUBECONFIG` set to
    /// `kubeconfig`, its admin server on a port of its own choosing, and its log in `dir`.
    pub fn start(name: &'static str, kubeconfig: &Path, dir: &Path, args: &[String]) -> Daemon {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let mut command = std::process::Command::new(daemon_binary(name));
        // Port 0, read back from the log: a port picked here and bound later by the daemon
        // could be taken in between by another test's daemon or a client socket.
        command
            .args(args)
            .arg("--listen=127.0.0.1:0")
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,helm_operator=debug,flux_agent=debug")
            .env_remove("GIT_URL");
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.join(format!("{name}-{n}.log"));
        let mut process =
            fhr_testenv::OwnedChild::spawn(name, command, &log).expect("start the daemon");
        let admin = listening_address(&mut process, &log);
        Daemon {
            process,
            admin,
            name,
        }
    }

    /// POSTs `body` with `headers` to a path of the admin server; the status code.
    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> u16 {
        let (code, _) = fhr_testenv::http::request(self.admin, "POST", path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("POST {path} to {}: {e}", self.name));
        code
    }

    /// GET a path of the admin server: (status code, body).
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(self.admin, path).await
    }

    /// The sum of the samples of `series` (`name`, or `name{label="value"}`; see
    /// [`fhr_testenv::prometheus::sum`]), 0 when it has none yet. A scrape that fails fails the
    /// test: read as 0, it would make "nothing happened" assertions vacuous.
    pub async fn metric(&self, series: &str) -> f64 {
        self.try_metric(series)
            .await
            .unwrap_or_else(|e| panic!("scraping {} failed: {e}\n{}", self.name, self.log_tail()))
    }

    /// Like [`Daemon::metric`], with a failed scrape as an error (while the daemon starts).
    pub async fn try_metric(&self, series: &str) -> Result<f64, String> {
        match self.get("/metrics").await? {
            (200, body) => Ok(fhr_testenv::prometheus::sum(&body, series)),
            (code, _) => Err(format!("/metrics answered {code}")),
        }
    }

    /// The process's highest resident memory since it started, MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let kib = fhr_testenv::process::status_value(self.process.id(), "VmHWM:");
        kib.unwrap_or_else(|| panic!("{} has no VmHWM", self.name)) as f64 / 1024.0
    }

    /// The process's threads now.
    pub fn threads(&self) -> u64 {
        fhr_testenv::process::status_value(self.process.id(), "Threads:")
            .unwrap_or_else(|| panic!("{} has no Threads", self.name))
    }

    /// Waits until the sum of a metric reaches `at_least`; sample a start value before the change
    /// that should move it, so that a fast change is not missed.
    pub async fn wait_metric(&self, name: &str, at_least: f64) {
        eventually(
            &format!("{name} to reach {at_least}"),
            Duration::from_secs(60),
            || async {
                let now = self.metric(name).await;
                if now >= at_least {
                    Ok(())
                } else {
                    Err(format!("{name} = {now}\n{}", self.log_tail()))
                }
            },
        )
        .await
    }

    /// Waits until `/readyz` answers 200; fails at once if the process exits.
    pub async fn wait_ready(&self) {
        let name = self.name;
        eventually(
            &format!("{name} to be ready"),
            Duration::from_secs(60),
            || async {
                if !self.process.is_running() {
                    panic!("{name} exited\n{}", self.log_tail());
                }
                match self.get("/readyz").await {
                    Ok((200, _)) => Ok(()),
                    Ok((code, body)) => Err(format!("{code} {body}\n{}", self.log_tail())),
                    Err(e) => Err(format!("{e}\n{}", self.log_tail())),
                }
            },
        )
        .await
    }

    /// The end of the daemon's log, for failure messages.
    pub fn log_tail(&self) -> String {
        format!("--- {} log ---\n{}", self.name, self.process.log_tail(40))
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }
}

/// A minimal HTTP/1.0 GET against a loopback address.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), String> {
    fhr_testenv::http::request(addr, "GET", path, &[], b"").await
}

/// Live processes whose parent is `parent` and whose command name is `name` (the kernel cuts
/// names to 15 bytes).
pub fn children_named(parent: u32, name: &str) -> Vec<u32> {
    fhr_testenv::process::children(parent)
        .into_iter()
        .filter(|pid| fhr_testenv::process::stat(*pid).is_some_and(|s| name.starts_with(&s.comm)))
        .collect()
}

pub use fhr_testenv::process::alive as process_alive;

/// The audit events of the shared control plane so far (it records ConfigMap and Secret writes:
/// who made a chart's objects and Helm's release records, and as whom).
pub async fn audit_events() -> Vec<Value> {
    let path = shared_control_plane().await.audit_log();
    std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Who a write to `resource` `namespace/name` was authorised as, per audit event (the
/// impersonated user, else the authenticated one), with the verb and whether it was a dry run.
/// Events without a name (a create may have none) match any `name`.
pub async fn audited_writers(
    resource: &str,
    namespace: &str,
    name: &str,
) -> Vec<(String, String, bool)> {
    audit_events()
        .await
        .iter()
        .filter(|e| {
            let object = &e["objectRef"];
            object["resource"] == resource
                && object["namespace"] == namespace
                && object["name"].as_str().is_none_or(|n| n == name)
                && e["responseStatus"]["code"]
                    .as_i64()
                    .is_some_and(|c| c < 300)
        })
        .map(|e| {
            let acting = e["impersonatedUser"]["username"]
                .as_str()
                .or(e["user"]["username"].as_str())
                .unwrap_or_default();
            let dry_run = e["requestURI"]
                .as_str()
                .is_some_and(|u| u.contains("dryRun=All"));
            (
                acting.to_owned(),
                e["verb"].as_str().unwrap_or_default().to_owned(),
                dry_run,
            )
        })
        .collect()
}
