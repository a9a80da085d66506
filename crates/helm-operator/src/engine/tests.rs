//! The supervisor against scripted engines that misbehave on purpose.

use super::*;
use serde_json::Map;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

/// A fake engine: says `hello`, then runs `on_request` for each request line with `$id` set.
fn script(dir: &std::path::Path, hello: &str, on_request: &str) -> PathBuf {
    let path = dir.join("engine");
    let body = format!(
        "#!/bin/sh\necho start >> \"$0.starts\"\necho '{hello}'\nwhile read -r line; do\n  id=$(printf '%s' \"$line\" | sed -n 's/^{{\"id\":\\([0-9]*\\).*/\\1/p')\n  {on_request}\ndone\n"
    );
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

const HELLO: &str = r#"{"hello":{"protocol":1,"helm":"fake"}}"#;
const LANDED: &str = r#"echo "{\"id\":$id,\"landed\":{\"revision\":3,\"status\":\"deployed\"}}""#;

fn starts(binary: &std::path::Path) -> usize {
    std::fs::read_to_string(binary.with_extension("starts"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

async fn upgrade(engine: &Engine) -> Result<Option<Landed>, HelmError> {
    let values = Map::new();
    let labels = BTreeMap::new();
    engine
        .upgrade(&Upgrade {
            release: "web",
            namespace: "apps",
            install: true,
            chart_dir: std::path::Path::new("/charts/web"),
            values: &values,
            labels: &labels,
            timeout: Duration::from_millis(100),
            wait: false,
            max_history: None,
            secret_values: &[],
            service_account: None,
        })
        .await
}

#[tokio::test]
async fn answers_come_back_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(script(dir.path(), HELLO, LANDED), 2, true, None);
    let landed = upgrade(&engine).await.unwrap();
    assert_eq!(
        landed,
        Some(Landed {
            revision: 3,
            status: "deployed".into()
        })
    );
    upgrade(&engine).await.unwrap();
    assert_eq!(
        starts(&engine.binary),
        1,
        "one process serves every request"
    );
}

#[tokio::test]
async fn a_malformed_reply_fails_the_action_and_restarts_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(script(dir.path(), HELLO, "echo 'not json'"), 2, true, None);
    let err = upgrade(&engine).await.unwrap_err();
    assert!(err.to_string().contains("malformed"), "{err}");
    let err = upgrade(&engine).await.unwrap_err();
    assert!(err.to_string().contains("malformed"), "{err}");
    assert_eq!(starts(&engine.binary), 2, "the broken engine was replaced");
}

#[tokio::test]
async fn a_started_engine_that_fails_is_replaced_without_waiting_for_an_action() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::new(
        script(dir.path(), HELLO, "exit 3"),
        2,
        true,
        None,
    ));
    engine.start().await.unwrap();
    upgrade(&engine).await.unwrap_err();
    let deadline = Instant::now() + Duration::from_secs(20);
    while starts(&engine.binary) < 2 {
        assert!(Instant::now() < deadline, "no new engine was started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_oversized_reply_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let huge = "head -c 2000000 /dev/zero | tr '\\0' x; echo";
    let engine = Engine::new(script(dir.path(), HELLO, huge), 2, true, None);
    let err = upgrade(&engine).await.unwrap_err();
    assert!(err.to_string().contains("over"), "{err}");
}

#[tokio::test]
async fn a_hung_engine_is_killed_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = Engine::new(script(dir.path(), HELLO, "sleep 30"), 2, true, None);
    engine.kill_slack = Duration::from_millis(100);
    let started = Instant::now();
    let err = upgrade(&engine).await.unwrap_err();
    assert!(matches!(err, HelmError::Timeout(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "not the script's 30 s"
    );
}

#[tokio::test]
async fn an_engine_that_dies_fails_its_requests() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(script(dir.path(), HELLO, "exit 3"), 2, true, None);
    let err = upgrade(&engine).await.unwrap_err();
    assert!(err.to_string().contains("exited"), "{err}");
}

#[tokio::test]
async fn an_engine_of_another_protocol_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hello = r#"{"hello":{"protocol":99,"helm":"fake"}}"#;
    let engine = Arc::new(Engine::new(
        script(dir.path(), hello, LANDED),
        2,
        true,
        None,
    ));
    let err = engine.start().await.unwrap_err();
    assert!(err.to_string().contains("protocol 99"), "{err}");
}

#[tokio::test]
async fn helm_errors_keep_their_kind() {
    let dir = tempfile::tempdir().unwrap();
    let failing = r#"echo "{\"id\":$id,\"error\":{\"kind\":\"failed\",\"message\":\"spec.replica: unknown field\"}}""#;
    let engine = Engine::new(script(dir.path(), HELLO, failing), 2, true, None);
    let err = upgrade(&engine).await.unwrap_err();
    assert_eq!(err, HelmError::Failed("spec.replica: unknown field".into()));
}
