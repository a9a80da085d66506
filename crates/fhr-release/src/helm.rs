//! The Helm steps the operator takes, behind one trait: the resident Helm engine and the `helm`
//! CLI implement it in the operator, and [`fake::FakeHelm`] does for tests. Values travel only in
//! the request; an implementation must keep them out of argv, the environment and logs.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

/// An install or upgrade (`helm upgrade --install`).
#[derive(Debug)]
pub struct Upgrade<'a> {
    /// Release name.
    pub release: &'a str,
    /// Release namespace.
    pub namespace: &'a str,
    /// The release does not exist yet (for metrics and messages; the call is the same).
    pub install: bool,
    /// The exported chart folder.
    pub chart_dir: &'a Path,
    /// The merged values tree.
    pub values: &'a Map<String, Value>,
    /// Labels for the release record.
    pub labels: &'a BTreeMap<String, String>,
    /// Helm's `--timeout`.
    pub timeout: Duration,
    /// Helm's `--wait`.
    pub wait: bool,
    /// Helm's `--history-max`.
    pub max_history: Option<i32>,
    /// Values read from Secrets: an engine removes them from every message it writes.
    pub secret_values: &'a [String],
    /// Act as this ServiceAccount of `namespace` (impersonated); `None`: the operator itself.
    pub service_account: Option<&'a str>,
}

/// A rollback (`helm rollback`).
#[derive(Debug)]
pub struct Rollback<'a> {
    /// Release name.
    pub release: &'a str,
    /// Release namespace.
    pub namespace: &'a str,
    /// Revision to restore.
    pub revision: i64,
    /// Helm's `--timeout`.
    pub timeout: Duration,
    /// Helm's `--wait`.
    pub wait: bool,
    /// Helm's `--no-hooks`.
    pub disable_hooks: bool,
    /// Act as this ServiceAccount of `namespace` (impersonated); `None`: the operator itself.
    pub service_account: Option<&'a str>,
}

/// The revision an install, upgrade or rollback left, when the implementation knows it without
/// reading Helm's storage again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landed {
    /// The revision number.
    pub revision: i64,
    /// Helm's status of it (`deployed`, `failed`, …).
    pub status: String,
}

/// Why a Helm step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelmError {
    /// Helm ran and failed; the message is its error, shortened.
    #[error("{0}")]
    Failed(String),
    /// Helm did not finish in time and was stopped.
    #[error("helm did not finish within {0:?} and was stopped")]
    Timeout(Duration),
    /// Helm could not be run (not started, values not written, storage unreachable).
    #[error("cannot run helm: {0}")]
    Io(String),
}

/// The Helm steps the operator takes; a test double or another engine can stand in.
pub trait Helm: Send + Sync + 'static {
    /// Installs or upgrades a release; the revision it left, where known.
    fn upgrade(
        &self,
        request: &Upgrade<'_>,
    ) -> impl Future<Output = Result<Option<Landed>, HelmError>> + Send;
    /// Rolls a release back to a revision; the revision it left, where known.
    fn rollback(
        &self,
        request: &Rollback<'_>,
    ) -> impl Future<Output = Result<Option<Landed>, HelmError>> + Send;
    /// Uninstalls a release (succeeds when it is already gone), as `service_account` of
    /// `namespace` when set.
    fn uninstall(
        &self,
        release: &str,
        namespace: &str,
        timeout: Duration,
        service_account: Option<&str>,
    ) -> impl Future<Output = Result<(), HelmError>> + Send;
    /// Marks `revision`, left `pending-*` by an interrupted action, failed in Helm's storage, as
    /// Helm would have had the action finished.
    fn unlock(
        &self,
        release: &str,
        namespace: &str,
        revision: i64,
        service_account: Option<&str>,
    ) -> impl Future<Output = Result<(), HelmError>> + Send;
}

/// A Helm for tests: records every call and answers from a script.
pub mod fake {
    use super::*;
    use std::sync::Mutex;

    /// One call, as the fake saw it.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Call {
        /// `upgrade` (`install` when the release was new).
        Upgrade {
            /// Release name.
            release: String,
            /// Whether it was an install.
            install: bool,
            /// The values it was given.
            values: Map<String, Value>,
            /// The labels it was given.
            labels: BTreeMap<String, String>,
        },
        /// `rollback` to a revision.
        Rollback {
            /// Release name.
            release: String,
            /// Target revision.
            revision: i64,
        },
        /// `uninstall`.
        Uninstall {
            /// Release name.
            release: String,
        },
        /// `unlock` of a revision.
        Unlock {
            /// Release name.
            release: String,
            /// The revision marked failed.
            revision: i64,
        },
    }

    /// Records calls; fails the verbs it was told to fail.
    #[derive(Debug, Default)]
    pub struct FakeHelm {
        calls: Mutex<Vec<Call>>,
        failing: Mutex<BTreeMap<&'static str, HelmError>>,
    }

    impl FakeHelm {
        /// Makes every later call of `verb` (`upgrade`, `rollback`, `uninstall`, `unlock`) fail.
        pub fn fail(&self, verb: &'static str, error: HelmError) {
            self.failing.lock().unwrap().insert(verb, error);
        }

        /// The calls so far.
        pub fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }

        fn answer(&self, verb: &'static str, call: Call) -> Result<(), HelmError> {
            self.calls.lock().unwrap().push(call);
            match self.failing.lock().unwrap().get(verb) {
                Some(error) => Err(error.clone()),
                None => Ok(()),
            }
        }
    }

    impl Helm for FakeHelm {
        async fn upgrade(&self, request: &Upgrade<'_>) -> Result<Option<Landed>, HelmError> {
            self.answer(
                "upgrade",
                Call::Upgrade {
                    release: request.release.to_owned(),
                    install: request.install,
                    values: request.values.clone(),
                    labels: request.labels.clone(),
                },
            )
            .map(|()| None)
        }

        async fn rollback(&self, request: &Rollback<'_>) -> Result<Option<Landed>, HelmError> {
            self.answer(
                "rollback",
                Call::Rollback {
                    release: request.release.to_owned(),
                    revision: request.revision,
                },
            )
            .map(|()| None)
        }

        async fn uninstall(
            &self,
            release: &str,
            _namespace: &str,
            _timeout: Duration,
            _service_account: Option<&str>,
        ) -> Result<(), HelmError> {
            self.answer(
                "uninstall",
                Call::Uninstall {
                    release: release.to_owned(),
                },
            )
        }

        async fn unlock(
            &self,
            release: &str,
            _namespace: &str,
            revision: i64,
            _service_account: Option<&str>,
        ) -> Result<(), HelmError> {
            self.answer(
                "unlock",
                Call::Unlock {
                    release: release.to_owned(),
                    revision,
                },
            )
        }
    }
}
