//! The engine's protocol: one JSON object a line, requests on its stdin and replies on its stdout.
//! `engine/protocol.go` is the other half and changes with this file. The engine also answers
//! `history` and `status`, for diagnosis; the operator reads Helm's storage itself (one LIST),
//! which both engines share.
//!
//! Newline-delimited JSON over the pipes rather than gRPC on a socket: the pipes tie the engine's
//! life to the operator's (it exits when its stdin closes), need no socket path or permissions,
//! and need no code generator on either side; serde and encoding/json are the whole stack.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The protocol version this operator speaks; the engine's hello must name it.
pub const VERSION: u32 = 1;

/// The engine's first line.
#[derive(Debug, Deserialize)]
pub struct Hello {
    /// What the engine speaks.
    pub hello: HelloBody,
}

/// The engine's protocol and Helm version.
#[derive(Debug, Deserialize)]
pub struct HelloBody {
    /// Protocol version.
    pub protocol: u32,
    /// Helm SDK version.
    pub helm: String,
}

/// A release's name and namespace, and the ServiceAccount of that namespace that acts on it.
#[derive(Debug, Serialize)]
pub struct ReleaseRef<'a> {
    /// Release name.
    pub release: &'a str,
    /// Release namespace.
    pub namespace: &'a str,
    /// Impersonated for everything the request does; absent: the operator's own identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<&'a str>,
}

/// One request line.
#[derive(Debug, Serialize)]
pub struct Request<'a> {
    /// Matches the reply to the request.
    pub id: u64,
    /// The engine gives up after this long.
    pub deadline_ms: u64,
    /// The operation.
    #[serde(flatten)]
    pub op: Op<'a>,
}

/// The operations.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op<'a> {
    /// Install or upgrade.
    Upgrade {
        /// Which release.
        #[serde(flatten)]
        release: ReleaseRef<'a>,
        /// The release is new.
        install: bool,
        /// The exported chart folder.
        chart_dir: &'a str,
        /// All values; they travel nowhere else.
        values: &'a Map<String, Value>,
        /// Labels of the release record.
        labels: &'a BTreeMap<String, String>,
        /// Helm's timeout.
        timeout_ms: u64,
        /// Wait for readiness.
        wait: bool,
        /// Revisions kept (0: all).
        max_history: i32,
        /// Values from Secrets, to be replaced by `***` in every message and log line.
        redact: &'a [String],
    },
    /// Roll back to a revision.
    Rollback {
        /// Which release.
        #[serde(flatten)]
        release: ReleaseRef<'a>,
        /// The revision to restore.
        revision: i64,
        /// Helm's timeout.
        timeout_ms: u64,
        /// Wait for readiness.
        wait: bool,
        /// Skip hooks.
        disable_hooks: bool,
    },
    /// Uninstall (a missing release is not an error).
    Uninstall {
        /// Which release.
        #[serde(flatten)]
        release: ReleaseRef<'a>,
        /// Helm's timeout.
        timeout_ms: u64,
    },
    /// Mark a pending revision failed.
    Unlock {
        /// Which release.
        #[serde(flatten)]
        release: ReleaseRef<'a>,
        /// The pending revision.
        revision: i64,
    },
    /// Stop the request `target`.
    Cancel {
        /// The request to stop.
        target: u64,
    },
}

/// One reply line: exactly one outcome.
#[derive(Debug, Deserialize)]
pub struct Reply {
    /// The request's id.
    pub id: u64,
    /// The outcome.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// What a request came to.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The revision an action left.
    Landed {
        /// Revision number.
        revision: i64,
        /// Helm's status of it.
        status: String,
    },
    /// Done, nothing to say.
    Done {},
    /// Failed.
    Error {
        /// What kind of failure (`failed`, `timeout`, `cancelled`, `invalid`, `not_found`,
        /// `conflict`, `unreachable`).
        kind: String,
        /// Helm's or the API server's message, bounded.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_one_operation_beside_id_and_deadline() {
        let values = Map::from_iter([("replicas".to_owned(), Value::from(2))]);
        let labels = BTreeMap::new();
        let request = Request {
            id: 7,
            deadline_ms: 1000,
            op: Op::Upgrade {
                release: ReleaseRef {
                    release: "web",
                    namespace: "apps",
                    service_account: Some("deployer"),
                },
                install: true,
                chart_dir: "/charts/abc",
                values: &values,
                labels: &labels,
                timeout_ms: 500,
                wait: false,
                max_history: 0,
                redact: &[],
            },
        };
        let line = serde_json::to_value(&request).unwrap();
        assert_eq!(line["id"], 7);
        assert_eq!(line["upgrade"]["release"], "web");
        assert_eq!(line["upgrade"]["values"]["replicas"], 2);
        assert_eq!(line["upgrade"]["service_account"], "deployer");
    }

    #[test]
    fn replies_parse_each_outcome() {
        let landed: Reply =
            serde_json::from_str(r#"{"id":3,"landed":{"revision":2,"status":"deployed"}}"#)
                .unwrap();
        assert_eq!(
            landed.outcome,
            Outcome::Landed {
                revision: 2,
                status: "deployed".into()
            }
        );
        let error: Reply =
            serde_json::from_str(r#"{"id":4,"error":{"kind":"failed","message":"no"}}"#).unwrap();
        assert!(matches!(error.outcome, Outcome::Error { .. }));
        let done: Reply = serde_json::from_str(r#"{"id":5,"done":{}}"#).unwrap();
        assert_eq!(done.outcome, Outcome::Done {});
        assert!(serde_json::from_str::<Reply>(r#"{"id":6}"#).is_err());
    }
}
