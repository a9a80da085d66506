//! Sync triggers over HTTP: `POST /api/v1/sync`, and a push webhook checked with a GitHub-style
//! HMAC signature (`X-Hub-Signature-256: sha256=<hex>`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Clone)]
struct Triggers {
    sync: Arc<Notify>,
    secret_file: Option<PathBuf>,
}

/// The routes, merged into the admin server.
pub fn routes(sync: Arc<Notify>, secret_file: Option<PathBuf>) -> Router {
    Router::new()
        .route("/api/v1/sync", post(sync_now))
        .route("/api/v1/webhook", post(webhook))
        .with_state(Triggers { sync, secret_file })
}

async fn sync_now(State(triggers): State<Triggers>) -> (StatusCode, &'static str) {
    triggers.sync.notify_one();
    (StatusCode::ACCEPTED, "sync requested\n")
}

async fn webhook(
    State(triggers): State<Triggers>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let Some(secret_file) = &triggers.secret_file else {
        return (StatusCode::NOT_FOUND, "no webhook secret configured\n");
    };
    // Read at each request, so the secret can be rotated by updating the mounted file.
    let Ok(secret) = std::fs::read(secret_file) else {
        tracing::error!(file = %secret_file.display(), "cannot read the webhook secret file");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "webhook secret unavailable\n",
        );
    };
    let secret = trim_newline(&secret);
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    if !signature_valid(secret, &body, signature) {
        tracing::warn!("webhook refused: missing or invalid signature");
        return (StatusCode::UNAUTHORIZED, "invalid signature\n");
    }
    triggers.sync.notify_one();
    (StatusCode::ACCEPTED, "sync requested\n")
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
        let bytes = mac.finalize().into_bytes();
        format!("sha256={}", hex::encode(bytes))
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
}
