//! The mirror against a real git server on loopback.

use fhr_git::{Auth, GitError, Limits, Mirror, Source};
use fhr_testenv::{GitServer, GitServerOptions, TestRepo, WorkDir};
use std::os::unix::fs::symlink;
use std::sync::Arc;
use std::time::Duration;

async fn fetch(mirror: &Arc<Mirror>) -> Result<fhr_git::Snapshot, GitError> {
    fhr_git::fetch(mirror.clone(), Duration::from_secs(30)).await
}

async fn served_repo() -> (GitServer, TestRepo, WorkDir, Arc<Mirror>) {
    let server = GitServer::start(GitServerOptions::default()).await.unwrap();
    let repo = server.create_repo("config", "master").unwrap();
    repo.write("charts/web/Chart.yaml", "name: web\n").unwrap();
    repo.write("charts/web/templates/cm.yaml", "kind: ConfigMap\n")
        .unwrap();
    repo.write("charts/db/Chart.yaml", "name: db\n").unwrap();
    repo.write("releaseconfig/a.yaml", "a: 1\n").unwrap();
    repo.write("releaseconfig/nested/b.yml", "b: 2\n").unwrap();
    repo.write("releaseconfig/README.md", "not yaml\n").unwrap();
    repo.commit("init").unwrap();
    let dir = WorkDir::create("mirror").unwrap();
    let source = Source::new(&server.url("config"), "master", Auth::None, false).unwrap();
    let mirror = Arc::new(Mirror::new(dir.path(), source).unwrap());
    (server, repo, dir, mirror)
}

#[tokio::test]
async fn fetch_follows_the_branch_and_folder_trees_change_only_with_their_content() {
    let (_server, repo, _dir, mirror) = served_repo().await;
    let first = fetch(&mirror).await.unwrap();
    assert_eq!(first.commit(), repo.head().unwrap());
    let web = first.tree_id("charts/web").unwrap().unwrap();
    assert_eq!(web.to_string(), repo.tree_id("charts/web").unwrap());
    assert_eq!(first.tree_id("charts/missing").unwrap(), None);
    assert_eq!(
        first.tree_id("charts/web/Chart.yaml").unwrap(),
        None,
        "a file is not a folder"
    );

    repo.write("charts/db/values.yaml", "x: 1\n").unwrap();
    repo.commit("change db only").unwrap();
    let second = fetch(&mirror).await.unwrap();
    assert_eq!(second.commit(), repo.head().unwrap());
    assert_ne!(second.commit(), first.commit());
    assert_eq!(second.tree_id("charts/web").unwrap(), Some(web));
    assert_ne!(
        second.tree_id("charts/db").unwrap(),
        first.tree_id("charts/db").unwrap()
    );
    // The older snapshot still reads its own commit.
    assert_eq!(first.tree_id("charts/web").unwrap(), Some(web));
}

#[tokio::test]
async fn export_writes_the_folder_and_read_files_filters_by_extension() {
    let (_server, _repo, dir, mirror) = served_repo().await;
    let snapshot = fetch(&mirror).await.unwrap();
    let tree = snapshot.tree_id("charts/web").unwrap().unwrap();
    let out = dir.path().join("export");
    snapshot
        .export_tree(tree, &out, &Limits::default())
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("Chart.yaml")).unwrap(),
        "name: web\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("templates/cm.yaml")).unwrap(),
        "kind: ConfigMap\n"
    );

    let files = snapshot
        .read_files("releaseconfig", &[".yaml", ".yml"], &Limits::default())
        .unwrap();
    let paths: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["a.yaml", "nested/b.yml"]);
    assert_eq!(files[0].contents.as_deref().unwrap(), b"a: 1\n");
}

#[tokio::test]
async fn symlinks_resolve_inside_the_folder_and_are_refused_outside_it() {
    let (_server, repo, dir, mirror) = served_repo().await;
    let link = |name: &str, target: &str| {
        symlink(target, repo.path().join("charts/web").join(name)).unwrap()
    };
    repo.write("charts/web/files/real.txt", "inside\n").unwrap();
    link("inside.txt", "files/real.txt");
    repo.commit("inside link").unwrap();
    let snapshot = fetch(&mirror).await.unwrap();
    let out = dir.path().join("inside");
    snapshot
        .export_tree(
            snapshot.tree_id("charts/web").unwrap().unwrap(),
            &out,
            &Limits::default(),
        )
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("inside.txt")).unwrap(),
        "inside\n"
    );
    assert!(
        !out.join("inside.txt").is_symlink(),
        "exported as a regular file"
    );

    for (i, target) in [
        "/etc/passwd",
        "../db/Chart.yaml",
        "../../../../etc/passwd",
        "files",
        "loop",
    ]
    .iter()
    .enumerate()
    {
        repo.remove("charts/web").unwrap();
        repo.write("charts/web/Chart.yaml", "name: web\n").unwrap();
        repo.write("charts/web/files/real.txt", "inside\n").unwrap();
        if *target == "loop" {
            link("loop", "loop");
        } else {
            link("loop", target);
        }
        repo.commit(&format!("hostile link {i}")).unwrap();
        let snapshot = fetch(&mirror).await.unwrap();
        let out = dir.path().join(format!("hostile-{i}"));
        let err = snapshot
            .export_tree(
                snapshot.tree_id("charts/web").unwrap().unwrap(),
                &out,
                &Limits::default(),
            )
            .unwrap_err();
        assert!(matches!(err, GitError::Refused { .. }), "{target}: {err}");
        assert!(
            !err.to_string().contains("root:"),
            "no file bytes in the message: {err}"
        );
    }
}

#[tokio::test]
async fn files_over_the_size_limit_are_refused() {
    let (_server, repo, dir, mirror) = served_repo().await;
    repo.write("charts/web/templates/big.yaml", vec![b'x'; 4096])
        .unwrap();
    repo.commit("big").unwrap();
    let snapshot = fetch(&mirror).await.unwrap();
    let limits = Limits {
        max_file_bytes: 1024,
        ..Limits::default()
    };
    let err = snapshot
        .export_tree(
            snapshot.tree_id("charts/web").unwrap().unwrap(),
            &dir.path().join("big"),
            &limits,
        )
        .unwrap_err();
    assert!(err.to_string().contains("templates/big.yaml"), "{err}");
    assert!(err.to_string().contains("4096 bytes"), "{err}");
}

#[tokio::test]
async fn basic_auth_credentials_come_from_files_and_wrong_ones_fail_without_leaking() {
    let server = GitServer::start(GitServerOptions {
        basic_auth: Some(("deploy".into(), "s3cret-canary".into())),
        ..Default::default()
    })
    .await
    .unwrap();
    let repo = server.create_repo("private", "main").unwrap();
    repo.write("charts/x/Chart.yaml", "name: x\n").unwrap();
    repo.commit("init").unwrap();
    let dir = WorkDir::create("auth").unwrap();
    let user = dir.path().join("user");
    let password = dir.path().join("password");
    std::fs::write(&user, "deploy\n").unwrap();
    std::fs::write(&password, "wrong-canary\n").unwrap();
    let source = |dir: &std::path::Path| {
        Source::new(
            &server.url("private"),
            "main",
            Auth::Basic {
                username_file: Some(user.clone()),
                password_file: password.clone(),
            },
            true,
        )
        .map(|s| Arc::new(Mirror::new(dir, s).unwrap()))
        .unwrap()
    };
    let mirror = source(&dir.path().join("m"));
    let err = fetch(&mirror).await.unwrap_err();
    assert!(!err.to_string().contains("wrong-canary"), "{err}");

    // Rotating the file is picked up at the next fetch.
    std::fs::write(&password, "s3cret-canary\n").unwrap();
    let snapshot = fetch(&mirror).await.unwrap();
    assert_eq!(snapshot.commit(), repo.head().unwrap());
}

#[tokio::test]
async fn a_missing_branch_and_an_unavailable_server_are_errors() {
    let (server, _repo, dir, _mirror) = served_repo().await;
    let other = Source::new(&server.url("config"), "nope", Auth::None, false).unwrap();
    let mirror = Arc::new(Mirror::new(&dir.path().join("other"), other).unwrap());
    assert!(fetch(&mirror).await.is_err());

    let source = Source::new(&server.url("config"), "master", Auth::None, false).unwrap();
    let mirror = Arc::new(Mirror::new(&dir.path().join("down"), source).unwrap());
    server.set_available(false);
    let err = fetch(&mirror).await.unwrap_err();
    assert!(matches!(err, GitError::Fetch(_)), "{err}");
    server.set_available(true);
    assert!(
        fetch(&mirror).await.is_ok(),
        "recovers when the server returns"
    );
}

#[tokio::test]
async fn a_server_that_hangs_or_trickles_cannot_hold_the_mirror_past_the_deadline() {
    use fhr_testenv::GitServerBehaviour;
    let (server, repo, _dir, mirror) = served_repo().await;
    let deadline = Duration::from_secs(2);
    for behaviour in [GitServerBehaviour::Hang, GitServerBehaviour::Trickle] {
        server.set_behaviour(behaviour.clone());
        let err = fhr_git::fetch(mirror.clone(), deadline).await.unwrap_err();
        assert!(
            matches!(err, GitError::Timeout(_) | GitError::Fetch(_)),
            "{behaviour:?}: {err}"
        );
        // The stalled request ends by its own deadline and releases the mirror: the next fetch
        // (to a healthy server) gets the lock and succeeds within the same deadline.
        server.set_behaviour(GitServerBehaviour::Normal);
        let snapshot = fhr_git::fetch(mirror.clone(), deadline * 3)
            .await
            .unwrap_or_else(|e| panic!("after {behaviour:?}: {e}"));
        assert_eq!(snapshot.commit(), repo.head().unwrap());
    }
}
