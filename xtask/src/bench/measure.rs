//! What the benchmark reads off the running system: process CPU and memory from /proc, API
//! requests per client from the apiserver's audit log, Helm processes from the operator's metrics.

use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// CPU and memory of one process, read from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessSample {
    /// User + system CPU seconds of the process itself.
    pub cpu_seconds: f64,
    /// User + system CPU seconds of its children: those that ended (Helm CLI processes, engines
    /// replaced) and, with [`ProcessSample::read_with_children`], the live ones (the engine).
    pub children_cpu_seconds: f64,
    /// Resident memory now, MiB.
    pub rss_mib: f64,
    /// Highest resident memory since the process started, MiB (plus its live children's, with
    /// [`ProcessSample::read_with_children`]).
    pub peak_rss_mib: f64,
}

impl ProcessSample {
    /// Adds `other`'s figures to these (several replicas counted as one).
    pub fn add(&mut self, other: &ProcessSample) {
        self.cpu_seconds += other.cpu_seconds;
        self.children_cpu_seconds += other.children_cpu_seconds;
        self.rss_mib += other.rss_mib;
        self.peak_rss_mib += other.peak_rss_mib;
    }

    /// Reads /proc/<pid>/stat and /proc/<pid>/status.
    pub fn read(pid: u32) -> anyhow::Result<ProcessSample> {
        let stat =
            fhr_testenv::process::stat(pid).with_context(|| format!("process {pid} is gone"))?;
        let per_second = clock_ticks_per_second();
        let kib =
            |key: &str| -> f64 { fhr_testenv::process::status_value(pid, key).unwrap_or(0) as f64 };
        Ok(ProcessSample {
            cpu_seconds: stat.ticks as f64 / per_second,
            children_cpu_seconds: stat.children_ticks as f64 / per_second,
            rss_mib: kib("VmRSS:") / 1024.0,
            peak_rss_mib: kib("VmHWM:") / 1024.0,
        })
    }

    /// The process plus its live children (the operator's Helm engine): their own CPU, and
    /// their resident and peak memory, are added to the process's.
    pub fn read_with_children(pid: u32) -> anyhow::Result<ProcessSample> {
        let mut sample = ProcessSample::read(pid)?;
        for child in fhr_testenv::process::children(pid) {
            let Ok(child) = ProcessSample::read(child) else {
                continue;
            };
            sample.children_cpu_seconds += child.cpu_seconds + child.children_cpu_seconds;
            sample.rss_mib += child.rss_mib;
            sample.peak_rss_mib += child.peak_rss_mib;
        }
        Ok(sample)
    }
}

#[allow(unsafe_code)]
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Who made an API request, told apart by the User-Agent each client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiClient {
    /// helm-operator itself.
    HelmOperator,
    /// flux-agent.
    FluxAgent,
    /// Helm processes (the operator's, or the baseline loop's).
    Helm,
    /// The benchmark's own polling.
    Bench,
    /// The apiserver's own loopback requests and anything else.
    Other,
}

impl ApiClient {
    fn from_user_agent(agent: &str) -> ApiClient {
        if agent.starts_with("helm-operator/") {
            ApiClient::HelmOperator
        } else if agent.starts_with("flux-agent/") {
            ApiClient::FluxAgent
        } else if agent.to_ascii_lowercase().starts_with("helm/") {
            ApiClient::Helm
        } else if agent.starts_with(super::USER_AGENT) {
            ApiClient::Bench
        } else {
            ApiClient::Other
        }
    }
}

/// Reads the audit log from where it last stopped.
pub struct AuditCursor {
    path: PathBuf,
    offset: u64,
}

impl AuditCursor {
    /// A cursor at the current end of the log: only requests from now on are counted.
    pub fn at_end(path: &Path) -> AuditCursor {
        let offset = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        AuditCursor {
            path: path.to_owned(),
            offset,
        }
    }

    /// Counts requests per client since the last call, and moves on.
    pub fn take(&mut self) -> anyhow::Result<BTreeMap<ApiClient, u64>> {
        Ok(self.take_detailed()?.0)
    }

    /// Counts requests per client, and per client, verb and resource (`helm-operator get
    /// secrets`): where the requests go.
    pub fn take_detailed(
        &mut self,
    ) -> anyhow::Result<(BTreeMap<ApiClient, u64>, BTreeMap<String, u64>)> {
        #[derive(serde::Deserialize)]
        struct ObjectRef {
            #[serde(default)]
            resource: String,
            #[serde(default)]
            subresource: String,
        }
        #[derive(serde::Deserialize)]
        struct Event {
            #[serde(rename = "userAgent", default)]
            user_agent: String,
            #[serde(default)]
            verb: String,
            #[serde(rename = "objectRef")]
            object_ref: Option<ObjectRef>,
        }
        let mut counts = BTreeMap::new();
        let mut calls = BTreeMap::new();
        let mut file = std::fs::File::open(&self.path)
            .with_context(|| format!("audit log {}", self.path.display()))?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut reader = BufReader::new(file);
        let mut line = String::new();
        loop {
            line.clear();
            let read = reader.read_line(&mut line)?;
            // A line without its newline is still being written: leave it for the next call.
            if read == 0 || !line.ends_with('\n') {
                break;
            }
            self.offset += read as u64;
            if let Ok(event) = serde_json::from_str::<Event>(&line) {
                let client = ApiClient::from_user_agent(&event.user_agent);
                *counts.entry(client).or_insert(0) += 1;
                let resource = match &event.object_ref {
                    Some(r) if !r.subresource.is_empty() => {
                        format!("{}/{}", r.resource, r.subresource)
                    }
                    Some(r) => r.resource.clone(),
                    None => "-".into(),
                };
                let client = serde_json::to_value(client)?
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                *calls
                    .entry(format!("{client} {} {resource}", event.verb))
                    .or_insert(0) += 1;
            }
        }
        Ok((counts, calls))
    }
}

/// Resource use of a finished child process, from wait4.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChildUsage {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mib: f64,
}

/// Runs a command to its end and returns its exit status with its resource use.
#[allow(unsafe_code)]
pub fn run_measured(
    command: &mut std::process::Command,
) -> anyhow::Result<(std::process::ExitStatus, ChildUsage)> {
    use std::os::unix::process::ExitStatusExt;
    let child = command.spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `child` is not waited on again (std never waits on drop).
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    anyhow::ensure!(waited == pid, "wait4: {}", std::io::Error::last_os_error());
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        std::process::ExitStatus::from_raw(status),
        ChildUsage {
            cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
            peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
        },
    ))
}
