//! Sync triggers over HTTP: `POST /api/v1/sync`, and a push webhook checked with a GitHub-style
//! HMAC signature (`X-Hub-Signature-256: sha256=<hex>`).
//!
//! Both face whatever can reach the admin port. With a secret configured, both need it (the
//! signature, or `Authorization: Bearer <secret>` for the sync request); refusals are counted and
//! logged at a bounded rate; and the poll loop coalesces accepted triggers (`--trigger-min-interval`),
//! so a flood costs at most one fetch per interval.

use crate::metrics::Metrics;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Largest webhook body accepted: GitHub sends push payloads of up to 25 MB.
pub const MAX_WEBHOOK_BODY: usize = 25 << 20;
/// At most one log line about refused requests per this period (the metric counts every one).
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Triggers {
    sync: Arc<Notify>,
    secret_file: Option<PathBuf>,
    /// The followed branch's ref (`refs/heads/<branch>`): pushes to other branches are ignored.
    branch_ref: String,
    metrics: Arc<Metrics>,
    refusals: Arc<Mutex<RefusalLog>>,
}

/// The routes, merged into the admin server.
pub fn routes(
    sync: Arc<Notify>,
    secret_file: Option<PathBuf>,
    branch: &str,
    metrics: Arc<Metrics>,
) -> Router {
    Router::new()
        .route("/api/v1/sync", post(sync_now))
        .route(
            "/api/v1/webhook",
            post(webhook).layer(DefaultBodyLimit::max(MAX_WEBHOOK_BODY)),
        )
        .with_state(Triggers {
            sync,
            secret_file,
            branch_ref: format!("refs/heads/{branch}"),
            metrics,
            refusals: Arc::default(),
        })
}

/// What the secret file says: no secret configured, the secret, or unreadable.
enum Secret {
    None,
    Some(Vec<u8>),
    Unreadable,
}

impl Triggers {
    /// Read at each request, so the secret can be rotated by updating the mounted file.
    fn secret(&self) -> Secret {
        let Some(file) = &self.secret_file else {
            return Secret::None;
        };
        match std::fs::read(file) {
            Ok(bytes) => Secret::Some(trim_newline(&bytes).to_vec()),
            Err(_) => {
                tracing::error!(file = %file.display(), "cannot read the webhook secret file");
                Secret::Unreadable
            }
        }
    }

    fn accept(&self, endpoint: &'static str) -> (StatusCode, &'static str) {
        self.metrics.trigger_request(endpoint, "accepted");
        self.sync.notify_one();
        (StatusCode::ACCEPTED, "sync requested\n")
    }

    fn refuse(&self, endpoint: &'static str) -> (StatusCode, &'static str) {
        self.metrics.trigger_request(endpoint, "unauthorized");
        let mut log = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(suppressed) = log.due(Instant::now()) {
            tracing::warn!(
                endpoint,
                refused_since_last_line = suppressed,
                "sync request refused: missing or invalid signature or token"
            );
        }
        (StatusCode::UNAUTHORIZED, "invalid signature or token\n")
    }

    fn ignore(&self, endpoint: &'static str, why: &'static str) -> (StatusCode, &'static str) {
        self.metrics.trigger_request(endpoint, "ignored");
        (StatusCode::OK, why)
    }
}

async fn sync_now(
    State(triggers): State<Triggers>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    const ENDPOINT: &str = "sync";
    match triggers.secret() {
        Secret::None => triggers.accept(ENDPOINT),
        Secret::Unreadable => unavailable(),
        Secret::Some(secret) => {
            let signature = header(&headers, "x-hub-signature-256");
            let bearer = header(&headers, "authorization").and_then(|a| a.strip_prefix("Bearer "));
            let token_valid = bearer.is_some_and(|token| {
                use subtle::ConstantTimeEq;
                bool::from(token.as_bytes().ct_eq(&secret))
            });
            if token_valid || signature_valid(&secret, &body, signature) {
                triggers.accept(ENDPOINT)
            } else {
                triggers.refuse(ENDPOINT)
            }
        }
    }
}

async fn webhook(
    State(triggers): State<Triggers>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    const ENDPOINT: &str = "webhook";
    let secret = match triggers.secret() {
        Secret::None => return (StatusCode::NOT_FOUND, "no webhook secret configured\n"),
        Secret::Unreadable => return unavailable(),
        Secret::Some(secret) => secret,
    };
    if !signature_valid(&secret, &body, header(&headers, "x-hub-signature-256")) {
        return triggers.refuse(ENDPOINT);
    }
    if header(&headers, "x-github-event") == Some("ping") {
        return triggers.ignore(ENDPOINT, "pong\n");
    }
    match pushed_ref(&body) {
        Some(pushed) if pushed != triggers.branch_ref => {
            triggers.ignore(ENDPOINT, "ignored: a push to another branch\n")
        }
        _ => triggers.accept(ENDPOINT),
    }
}

fn unavailable() -> (StatusCode, &'static str) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "webhook secret unavailable\n",
    )
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The `ref` a push payload names (GitHub, GitLab, Gitea and Bitbucket Server all send it), if the
/// body is such a payload. Only the top-level field is read.
fn pushed_ref(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Push {
        #[serde(rename = "ref")]
        pushed: Option<String>,
    }
    serde_json::from_slice::<Push>(body).ok()?.pushed
}

/// Log lines about refusals at a bounded rate, with how many were not logged.
#[derive(Default)]
struct RefusalLog {
    last_line: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    /// Whether to log a refusal at `now`; if so, how many went unlogged since the last line.
    fn due(&mut self, now: Instant) -> Option<u64> {
        match self.last_line {
            Some(last) if now.duration_since(last) < REFUSAL_LOG_PERIOD => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_line = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

fn trim_newline(bytes: &[u8]) -> &[u8] {
    let mut end = bytes.len();
    while end > 0 && matches!(bytes[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &bytes[..end]
}

/// Checks `sha256=<hex>` against HMAC-SHA256 of the body, in constant time.
fn signature_valid(secret: &[u8], body: &[u8], signature: Option<&str>) -> bool {
    let Some(digits) = signature.and_then(|s| s.strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(expected) = hex::decode(digits) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn valid_signatures_pass_and_anything_else_fails() {
        let body = br#"{"ref":"refs/heads/master"}"#;
        let good = sign(b"secret", body);
        assert!(signature_valid(b"secret", body, Some(&good)));
        assert!(!signature_valid(b"other", body, Some(&good)));
        assert!(!signature_valid(b"secret", b"tampered", Some(&good)));
        assert!(!signature_valid(b"secret", body, None));
        assert!(!signature_valid(b"secret", body, Some("sha1=abc")));
        assert!(!signature_valid(b"secret", body, Some("sha256=zz")));
        assert!(!signature_valid(
            b"secret",
            body,
            Some(&good[..good.len() - 2])
        ));
    }

    #[test]
    fn a_trailing_newline_in_the_secret_file_is_ignored() {
        assert_eq!(trim_newline(b"secret\n"), b"secret");
        assert_eq!(trim_newline(b"secret\r\n"), b"secret");
    }

    #[test]
    fn the_pushed_ref_is_read_from_push_payloads_only() {
        assert_eq!(
            pushed_ref(br#"{"ref":"refs/heads/main","commits":[]}"#).as_deref(),
            Some("refs/heads/main")
        );
        assert_eq!(pushed_ref(br#"{"zen":"ping"}"#), None);
        assert_eq!(pushed_ref(b"not json"), None);
    }

    #[test]
    fn refusals_are_logged_once_per_period_with_the_count_in_between() {
        let mut log = RefusalLog::default();
        let start = Instant::now();
        assert_eq!(log.due(start), Some(0));
        for i in 1..=1999 {
            assert_eq!(log.due(start + Duration::from_millis(i)), None);
        }
        assert_eq!(log.due(start + REFUSAL_LOG_PERIOD), Some(1999));
    }
}
