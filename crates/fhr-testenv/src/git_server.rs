//! A git server on loopback: repositories served over smart HTTP by the real `git http-backend`,
//! with optional basic auth, and a working copy per repository that a test commits to while daemons
//! watch it.

use crate::workdir::WorkDir;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Largest request body the server reads (a fetch negotiation is a few KiB).
const MAX_REQUEST_BODY: usize = 16 << 20;

/// Options for [`GitServer::start`].
#[derive(Debug, Clone, Default)]
pub struct GitServerOptions {
    /// Require this user and password (HTTP basic auth) on every request.
    pub basic_auth: Option<(String, String)>,
    /// Listen on this loopback address instead of 127.0.0.1 (another "host" for redirect tests).
    pub address: Option<Ipv4Addr>,
}

/// How the server answers, switchable while it runs to play a misbehaving git host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Serve git.
    Normal,
    /// 503 to every request, as a host that is down.
    Unavailable,
    /// 200 and headers, then a body that never ends and never sends a byte.
    Hang,
    /// 200 and headers, then one byte a second, forever.
    Trickle,
    /// 302 to the same path under this base URL (e.g. another server's `url("repo")` minus the path).
    RedirectTo(String),
}

struct Shared {
    root: PathBuf,
    basic_auth: Option<(String, String)>,
    requests: AtomicU64,
    requests_with_credentials: AtomicU64,
    behaviour: Mutex<Behaviour>,
}

/// A running git server; stops when dropped.
pub struct GitServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    dir: WorkDir,
}

impl GitServer {
    /// Starts a server on a free loopback port in the current tokio runtime.
    pub async fn start(options: GitServerOptions) -> std::io::Result<GitServer> {
        let dir = WorkDir::create("git-server")?;
        let root = dir.path().join("srv");
        std::fs::create_dir_all(&root)?;
        let shared = Arc::new(Shared {
            root,
            basic_auth: options.basic_auth,
            requests: AtomicU64::new(0),
            requests_with_credentials: AtomicU64::new(0),
            behaviour: Mutex::new(Behaviour::Normal),
        });
        let address = options.address.unwrap_or(Ipv4Addr::LOCALHOST);
        let listener = tokio::net::TcpListener::bind((address, 0)).await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .fallback(serve)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(GitServer {
            addr,
            shared,
            task,
            dir,
        })
    }

    /// The URL of a repository on this server.
    pub fn url(&self, repo: &str) -> String {
        format!("http://{}/{repo}.git", self.addr)
    }

    /// The bare repository's folder on disk (for an SSH server serving the same repository).
    pub fn repo_path(&self, repo: &str) -> PathBuf {
        self.shared.root.join(format!("{repo}.git"))
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many HTTP requests the server has answered.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// How many requests carried an Authorization header.
    pub fn requests_with_credentials(&self) -> u64 {
        self.shared
            .requests_with_credentials
            .load(Ordering::Relaxed)
    }

    /// While false, every request gets 503, as from a git host that is down.
    pub fn set_available(&self, available: bool) {
        self.set_behaviour(if available {
            Behaviour::Normal
        } else {
            Behaviour::Unavailable
        });
    }

    /// Changes how the server answers from the next request on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self
            .shared
            .behaviour
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = behaviour;
    }

    /// Creates an empty repository on the server, with a working copy to commit from, on `branch`.
    pub fn create_repo(&self, name: &str, branch: &str) -> std::io::Result<TestRepo> {
        let bare = self.shared.root.join(format!("{name}.git"));
        let work = self.dir.path().join("work").join(name);
        std::fs::create_dir_all(&work)?;
        git(
            &self.shared.root,
            &["init", "--quiet", "--bare", &format!("{name}.git")],
        )?;
        git(
            &bare,
            &["symbolic-ref", "HEAD", &format!("refs/heads/{branch}")],
        )?;
        git(&work, &["init", "--quiet", "-b", branch])?;
        git(&work, &["remote", "add", "origin", &bare.to_string_lossy()])?;
        Ok(TestRepo {
            work,
            branch: branch.to_owned(),
        })
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The working copy of a served repository.
#[derive(Debug)]
pub struct TestRepo {
    work: PathBuf,
    branch: String,
}

impl TestRepo {
    /// The working copy's folder.
    pub fn path(&self) -> &Path {
        &self.work
    }

    /// Writes a file (creating folders) in the working copy.
    pub fn write(&self, path: &str, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
        let target = self.work.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(target, contents)
    }

    /// Removes a file or folder from the working copy.
    pub fn remove(&self, path: &str) -> std::io::Result<()> {
        let target = self.work.join(path);
        if target.is_dir() {
            std::fs::remove_dir_all(target)
        } else {
            std::fs::remove_file(target)
        }
    }

    /// Copies a folder tree into the working copy at `to`.
    pub fn copy_dir(&self, from: &Path, to: &str) -> std::io::Result<()> {
        copy_tree(from, &self.work.join(to))
    }

    /// Commits everything in the working copy and pushes it; returns the commit id.
    pub fn commit(&self, message: &str) -> std::io::Result<String> {
        git(&self.work, &["add", "--all"])?;
        git(
            &self.work,
            &["commit", "--quiet", "--allow-empty", "-m", message],
        )?;
        git(&self.work, &["push", "--quiet", "origin", &self.branch])?;
        self.head()
    }

    /// Runs git in the working copy, for trees no working copy can hold (entries named `..` or
    /// `.git`, gitlinks); returns trimmed stdout.
    pub fn git(&self, args: &[&str]) -> std::io::Result<String> {
        git(&self.work, args)
    }

    /// Runs git in the working copy with `input` on stdin; returns trimmed stdout.
    pub fn git_with_input(&self, args: &[&str], input: &[u8]) -> std::io::Result<String> {
        run_git(&self.work, args, Some(input))
    }

    /// Pushes the branch's tip (after commits made with plumbing).
    pub fn push(&self) -> std::io::Result<()> {
        git(&self.work, &["push", "--quiet", "origin", &self.branch]).map(|_| ())
    }

    /// The commit id at the branch's tip.
    pub fn head(&self) -> std::io::Result<String> {
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// The git tree id of a folder at the branch's tip.
    pub fn tree_id(&self, path: &str) -> std::io::Result<String> {
        git(&self.work, &["rev-parse", &format!("HEAD:{path}")])
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Runs git with a fixed identity and no user or system configuration; returns trimmed stdout.
fn git(dir: &Path, args: &[&str]) -> std::io::Result<String> {
    run_git(dir, args, None)
}

/// Runs git with a fixed identity and no user or system configuration, `input` on stdin;
/// returns trimmed stdout.
fn run_git(dir: &Path, args: &[&str], input: Option<&[u8]>) -> std::io::Result<String> {
    use std::io::Write;
    let mut child = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "flux-helm test")
        .env("GIT_AUTHOR_EMAIL", "test@flux-helm.invalid")
        .env("GIT_COMMITTER_NAME", "flux-helm test")
        .env("GIT_COMMITTER_EMAIL", "test@flux-helm.invalid")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input)?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "git {} in {}: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    use base64::Engine;
    let Some((user, password)) = &shared.basic_auth else {
        return true;
    };
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .is_some_and(|given| given == expected)
}

async fn serve(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    if request.headers().contains_key(header::AUTHORIZATION) {
        shared
            .requests_with_credentials
            .fetch_add(1, Ordering::Relaxed);
    }
    let behaviour = shared
        .behaviour
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match behaviour {
        Behaviour::Normal => {}
        Behaviour::Unavailable => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Behaviour::Hang => {
            let body = Body::from_stream(never_ending_body());
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, ADVERTISEMENT)],
                body,
            )
                .into_response();
        }
        Behaviour::Trickle => {
            let bytes = trickling_body();
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, ADVERTISEMENT)],
                Body::from_stream(bytes),
            )
                .into_response();
        }
        Behaviour::RedirectTo(base) => {
            let target = format!(
                "{base}{}",
                request.uri().path_and_query().map_or("", |p| p.as_str())
            );
            return (StatusCode::FOUND, [(header::LOCATION, target)]).into_response();
        }
    }
    if !authorized(&shared, request.headers()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"git\"")],
        )
            .into_response();
    }
    match http_backend(&shared, request).await {
        Ok(response) => response,
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The content type of a ref advertisement, so a client reads on into the body.
const ADVERTISEMENT: &str = "application/x-git-upload-pack-advertisement";

/// A body that never yields.
fn never_ending_body() -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send {
    futures::stream::pending()
}

/// A body of one byte a second, forever (the start of a pkt-line that never completes).
fn trickling_body() -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send {
    futures::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some((Ok(Bytes::from_static(b"0")), ()))
    })
}

/// Runs one request through `git http-backend` as a CGI program.
async fn http_backend(shared: &Shared, request: Request) -> std::io::Result<Response> {
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, MAX_REQUEST_BODY)
        .await
        .map_err(std::io::Error::other)?;
    let header_text = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &shared.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header_text(header::CONTENT_TYPE))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env(
            "HTTP_CONTENT_ENCODING",
            header_text(header::CONTENT_ENCODING),
        )
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(protocol) = parts
        .headers
        .get("git-protocol")
        .and_then(|v| v.to_str().ok())
    {
        // Protocol v2 is negotiated through this variable.
        command.env("GIT_PROTOCOL", protocol);
    }
    if shared.basic_auth.is_some() {
        command.env("REMOTE_USER", "git");
    }
    let mut child = command.spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let output = child.wait_with_output().await?;
    let _ = writer.await;
    parse_cgi(&output.stdout)
}

fn parse_cgi(output: &[u8]) -> std::io::Result<Response> {
    let (head, body) = match find(output, b"\r\n\r\n") {
        Some(i) => (&output[..i], &output[i + 4..]),
        None => match find(output, b"\n\n") {
            Some(i) => (&output[..i], &output[i + 2..]),
            None => return Err(std::io::Error::other("http-backend wrote no headers")),
        },
    };
    let mut response = Response::new(Body::from(body.to_vec()));
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("500");
            *response.status_mut() = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let (Ok(name), Ok(value)) = (
            header::HeaderName::try_from(name.trim()),
            HeaderValue::try_from(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    Ok(response)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
