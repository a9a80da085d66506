//! The git server fixture serves real clones over smart HTTP and enforces basic auth.

use fhr_testenv::{GitServer, GitServerOptions, WorkDir};
use std::process::Command;

fn clone(url: &str, into: &std::path::Path) -> std::process::Output {
    Command::new("git")
        .args(["clone", "--quiet", "--depth=1", url])
        .arg(into)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("run git clone")
}

#[tokio::test]
async fn commits_are_served_over_smart_http() {
    let server = GitServer::start(GitServerOptions::default()).await.unwrap();
    let repo = server.create_repo("config", "master").unwrap();
    repo.write("releaseconfig/a.yaml", "kind: FluxHelmRelease\n")
        .unwrap();
    let first = repo.commit("add a").unwrap();
    repo.write("charts/web/Chart.yaml", "name: web\n").unwrap();
    let second = repo.commit("add chart").unwrap();
    assert_ne!(first, second);

    let dir = WorkDir::create("clone").unwrap();
    let out = dir.path().join("c");
    let url = server.url("config");
    // Clone from a blocking thread: the server answers on this test's runtime.
    let output = tokio::task::spawn_blocking({
        let out = out.clone();
        move || clone(&url, &out)
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("charts/web/Chart.yaml")).unwrap(),
        "name: web\n"
    );
    assert!(
        server.requests() >= 2,
        "smart HTTP takes a ref advertisement and a fetch"
    );
    assert_eq!(repo.tree_id("charts/web").unwrap().len(), 40);
}

#[tokio::test]
async fn basic_auth_is_required_when_configured() {
    let server = GitServer::start(GitServerOptions {
        basic_auth: Some(("deploy".into(), "s3cret".into())),
        ..Default::default()
    })
    .await
    .unwrap();
    let repo = server.create_repo("private", "main").unwrap();
    repo.write("README", "private\n").unwrap();
    repo.commit("init").unwrap();
    let dir = WorkDir::create("clone").unwrap();
    let port = server.addr().port();

    let (wrong, right) = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || {
            let wrong = clone(
                &format!("http://deploy:wrong@127.0.0.1:{port}/private.git"),
                &dir.join("wrong"),
            );
            let right = clone(
                &format!("http://deploy:s3cret@127.0.0.1:{port}/private.git"),
                &dir.join("right"),
            );
            (wrong, right)
        }
    })
    .await
    .unwrap();
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("Authentication failed"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );
}

#[tokio::test]
async fn an_unavailable_server_answers_503() {
    let server = GitServer::start(GitServerOptions::default()).await.unwrap();
    let repo = server.create_repo("down", "master").unwrap();
    repo.commit("empty").unwrap();
    server.set_available(false);
    let dir = WorkDir::create("clone").unwrap();
    let url = server.url("down");
    let out = dir.path().join("c");
    let output = tokio::task::spawn_blocking(move || clone(&url, &out))
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("503"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
