//! Helpers for Atoll's integration tests: build the test guests once, start
//! real hosts on 127.0.0.1:0 (in-process or as a child process), speak HTTP.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use atoll::build::{BuildOptions, build};
use atoll::{Manifest, RunningHost};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The shared target dir of every guest and example build.
pub fn guest_target_dir() -> PathBuf {
    repo_root().join("target").join("guests")
}

/// Builds the guests/ workspace (once per process; cargo's lock serialises
/// concurrent test processes and makes later builds no-ops) and returns the
/// path of guest `name`'s component.
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<BTreeMap<String, PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let _lock = lock_file("guest-build");
        let out = build(
            &repo_root().join("guests"),
            &BuildOptions {
                target_dir: Some(guest_target_dir()),
                workspace: true,
                quiet: true,
                debug: false,
            },
        )
        .expect("building the test guests");
        out.into_iter()
            .map(|p| {
                let stem = p.file_stem().unwrap().to_string_lossy().replace('_', "-");
                (stem, p)
            })
            .collect()
    });
    built
        .get(name)
        .unwrap_or_else(|| panic!("no guest `{name}` in guests/ (have: {:?})", built.keys()))
        .clone()
}

/// An exclusive lock across test processes.
fn lock_file(name: &str) -> File {
    let dir = repo_root().join("target");
    std::fs::create_dir_all(&dir).unwrap();
    let f = File::create(dir.join(format!(".{name}.lock"))).unwrap();
    f.lock().expect("locking");
    f
}

/// A manifest for tests: `{name}` placeholders in `toml` are replaced by the
/// path of that guest's component (e.g. `source = "{hello}"`).
pub fn manifest_text(toml: &str) -> String {
    let mut out = String::new();
    let mut rest = toml;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        let key = &rest[start + 1..start + len];
        out.push_str(&rest[..start]);
        if !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            out.push_str(&guest(key).display().to_string());
        } else {
            out.push_str(&rest[start..start + len + 1]);
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

/// Writes test manifest text (see [`manifest_text`]) to `atoll.toml` in a new
/// temporary directory; returns the directory (keep it alive) and the file.
pub fn manifest_file(toml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("atoll.toml");
    std::fs::write(&path, manifest_text(toml)).unwrap();
    (dir, path)
}

/// A host running in this process, with its own data dir.
pub struct TestHost {
    /// The running host.
    pub host: RunningHost,
    /// Its data directory (kept when `dir` is).
    pub dir: tempfile::TempDir,
}

impl TestHost {
    /// Starts a host from manifest text (see [`manifest_text`]) with a fresh data dir.
    pub async fn start(toml: &str) -> TestHost {
        let dir = tempfile::tempdir().unwrap();
        let host = Self::start_in(toml, dir.path())
            .await
            .expect("starting host");
        TestHost { host, dir }
    }

    /// Starts a host on a given data dir.
    pub async fn start_in(toml: &str, data_dir: &Path) -> anyhow::Result<RunningHost> {
        let mut m = load_manifest(toml, data_dir)?;
        m.host.listen = "127.0.0.1:0".parse().unwrap();
        m.host.admin_listen = "127.0.0.1:0".parse().unwrap();
        RunningHost::start(m).await
    }

    /// The base URL.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.host.addr())
    }

    /// Shuts down gracefully.
    pub async fn stop(self) -> tempfile::TempDir {
        self.host.shutdown().await.expect("clean shutdown");
        self.dir
    }
}

/// Parses test manifest text with its data dir set.
pub fn load_manifest(toml: &str, data_dir: &Path) -> anyhow::Result<Manifest> {
    let text = manifest_text(toml);
    let mut m = Manifest::parse(&text, "atoll.toml", data_dir)?;
    m.host.data_dir = data_dir.to_path_buf();
    Ok(m)
}

/// A response as tests look at it.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body as text (lossy).
    pub body: String,
}

/// A keep-alive HTTP/1.1 client.
pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request and reads the whole response.
pub async fn send(method: &str, url: &str, body: impl Into<Bytes>) -> anyhow::Result<Reply> {
    send_with(method, url, &[], body).await
}

/// Sends a request with extra headers and reads the whole response.
pub async fn send_with(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> anyhow::Result<Reply> {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = client().request(req.body(Full::new(body.into()))?).await?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Calls the admin API of a host whose data dir is `data_dir`.
pub async fn admin(
    addr: SocketAddr,
    data_dir: &Path,
    method: &str,
    path: &str,
    body: impl Into<Bytes>,
) -> anyhow::Result<Reply> {
    let token = std::fs::read_to_string(data_dir.join("admin.token"))?;
    let auth = format!("Bearer {}", token.trim());
    send_with(
        method,
        &format!("http://{addr}{path}"),
        &[("authorization", &auth)],
        body,
    )
    .await
}

/// GET a URL.
pub async fn get(url: &str) -> Reply {
    send("GET", url, Bytes::new()).await.expect("GET")
}

/// An `atoll up` child process.
pub struct ChildHost {
    /// The process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its admin API listens.
    pub admin: SocketAddr,
    /// Lines it printed to stderr (collected in the background).
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ChildHost {
    /// Runs `bin up manifest --listen 127.0.0.1:0` and waits for its listening line.
    pub fn spawn(bin: &Path, manifest: &Path, extra: &[&str]) -> anyhow::Result<ChildHost> {
        Self::spawn_in(bin, Path::new("."), manifest, extra, &[])
    }

    /// Like [`ChildHost::spawn`], run from working directory `cwd` with extra
    /// environment variables.
    pub fn spawn_in(
        bin: &Path,
        cwd: &Path,
        manifest: &Path,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> anyhow::Result<ChildHost> {
        let mut child = Command::new(bin)
            .current_dir(cwd)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .arg("up")
            .arg(manifest)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(extra)
            .env("ATOLL_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning atoll")?;
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut gateway = None;
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .strip_prefix("atoll listening on http://")
                    .or_else(|| line.strip_prefix("atoll listening on https://"))
                {
                    gateway = Some(addr.to_string());
                }
                if let Some(rest) = line.strip_prefix("atoll admin on http://")
                    && let Some(gateway) = gateway.take()
                {
                    let admin = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send((gateway, admin.to_string()));
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok((addr, admin)) => Ok(ChildHost {
                child,
                addr: addr.parse()?,
                admin: admin.parse()?,
                stderr,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "atoll did not start; stderr:\n{}",
                    stderr.lock().unwrap().join("\n")
                )
            }
        }
    }

    /// The base URL.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGKILL, and wait for it.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A streamed admin answer of newline-delimited JSON (`follow=1`), read as it comes.
pub struct NdjsonFollow {
    /// Each complete line, newline included.
    pub lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Ends when the answer ends: what came after the last newline.
    pub reader: tokio::task::JoinHandle<anyhow::Result<String>>,
}

/// GETs `path_and_query` on the admin API of a host whose data dir is
/// `data_dir`, checks it answers 200 with NDJSON, and follows the stream.
pub async fn follow_ndjson(
    admin: SocketAddr,
    data_dir: &Path,
    path_and_query: &str,
) -> NdjsonFollow {
    let token = std::fs::read_to_string(data_dir.join("admin.token")).unwrap();
    let req = http::Request::get(format!("http://{admin}{path_and_query}"))
        .header("authorization", format!("Bearer {}", token.trim()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = client().request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/x-ndjson");
    let (lines_tx, lines) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut body = res.into_body();
        let mut text = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if let Some(data) = frame.data_ref() {
                text.push_str(std::str::from_utf8(data).unwrap());
                while let Some(end) = text.find('\n') {
                    let line: String = text.drain(..=end).collect();
                    let _ = lines_tx.send(line);
                }
            }
        }
        anyhow::Ok(text)
    });
    NdjsonFollow { lines, reader }
}
