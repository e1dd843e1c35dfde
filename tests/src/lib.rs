//! Helpers for Atoll's integration tests: build the test guests once, start
//! real hosts on 127.0.0.1:0 (in-process or as a child process), speak HTTP,
//! and receive OTLP exports ([`OtlpReceiver`]).

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
    /// Lines it printed to stdout (collected in the background).
    pub stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
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
        let mut command = Command::new(bin);
        // `info` unless the caller sets ATOLL_LOG.
        command.env("ATOLL_LOG", "info");
        let mut child = command
            .current_dir(cwd)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .arg("up")
            .arg(manifest)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(extra)
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
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let printed = stdout.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut gateway = None;
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                printed.lock().unwrap().push(line.clone());
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
                stdout,
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
    /// Runs `atoll up` with `env` on top of an environment where every
    /// OpenTelemetry variable the host reads is blank (empty counts as
    /// unset), off the async workers: each host is exactly its manifest and
    /// `env`.
    pub async fn spawn_otel(bin: &Path, manifest: &Path, env: &[(&str, &str)]) -> ChildHost {
        let (bin, manifest) = (bin.to_path_buf(), manifest.to_path_buf());
        let mut vars: Vec<(String, String)> = atoll::config::OTEL_ENV
            .iter()
            .chain(atoll::config::OTEL_METRICS_ENV)
            .chain(&["OTEL_BSP_SCHEDULE_DELAY"])
            .map(|k| (k.to_string(), String::new()))
            .collect();
        for (k, v) in env {
            vars.retain(|(name, _)| name != k);
            vars.push((k.to_string(), v.to_string()));
        }
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &Path)> = vars
                .iter()
                .map(|(k, v)| (k.as_str(), Path::new(v.as_str())))
                .collect();
            ChildHost::spawn_in(&bin, Path::new("."), &manifest, &[], &env).unwrap()
        })
        .await
        .unwrap()
    }

    /// SIGTERM, and wait (up to 60 s) for a clean exit; returns its stderr.
    pub async fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        for _ in 0..600 {
            if let Some(code) = self.child.try_wait().unwrap() {
                assert!(code.success(), "atoll exited with {code}");
                return self.stderr.lock().unwrap().clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("atoll did not stop after SIGTERM");
    }

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

/// The gRPC method of OTLP trace export.
pub const GRPC_TRACES: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The gRPC method of OTLP metrics export.
pub const GRPC_METRICS: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// One export request an [`OtlpReceiver`] accepted.
#[derive(Debug, Clone)]
pub struct OtlpRequest {
    /// `/v1/traces`, `/v1/metrics`, [`GRPC_TRACES`] or [`GRPC_METRICS`].
    pub path: String,
    /// The protobuf `Export*ServiceRequest`, without gRPC's framing: the
    /// test decodes it with opentelemetry-proto.
    pub message: Bytes,
}

#[derive(Default)]
struct OtlpReceived {
    /// Path of every request other than a plain GET, accepted or not.
    paths: Vec<String>,
    accepted: Vec<OtlpRequest>,
    /// (path, `traceparent`) of every plain GET.
    gets: Vec<(String, String)>,
}

/// An OTLP collector for tests, on 127.0.0.1:0: http/protobuf (`POST
/// /v1/traces`, `POST /v1/metrics`) and gRPC over h2c ([`GRPC_TRACES`],
/// [`GRPC_METRICS`]). It keeps each export request and answers it with
/// success (an empty `Export*ServiceResponse`, which encodes to no bytes).
/// A wrong content type or gRPC frame gets 400 and is not kept. Any plain
/// GET answers `200 ok` and keeps its `traceparent`, so components can
/// call it as an outbound target.
pub struct OtlpReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    got: std::sync::Arc<std::sync::Mutex<OtlpReceived>>,
}

impl OtlpReceiver {
    /// Binds and serves until the test ends.
    pub async fn start() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = std::sync::Arc::new(std::sync::Mutex::new(OtlpReceived::default()));
        let state = got.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(otlp_answer(req, &state).await) }
                    });
                    // HTTP/1.1 for http/protobuf and plain GETs, h2c for gRPC.
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        OtlpReceiver { addr, got }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The export requests accepted so far, in order.
    pub fn requests(&self) -> Vec<OtlpRequest> {
        self.lock().accepted.clone()
    }

    /// The path of every request other than a plain GET, accepted or not.
    pub fn paths(&self) -> Vec<String> {
        self.lock().paths.clone()
    }

    /// The `traceparent` of each plain GET of `path` (empty when absent).
    pub fn traceparents(&self, path: &str) -> Vec<String> {
        self.lock()
            .gets
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, tp)| tp.clone())
            .collect()
    }

    /// Waits (up to 60 s) until `found` picks something from the requests.
    pub async fn wait_for<T>(&self, what: &str, found: impl Fn(&[OtlpRequest]) -> Option<T>) -> T {
        for _ in 0..600 {
            if let Some(t) = found(&self.requests()) {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the receiver never got {what}; got requests to {:?}",
            self.paths()
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OtlpReceived> {
        self.got.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A response body: one data frame, then trailers (gRPC's status).
struct WithTrailers {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl hyper::body::Body for WithTrailers {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.data.take() {
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(data))));
        }
        std::task::Poll::Ready(
            self.trailers
                .take()
                .map(|t| Ok(hyper::body::Frame::trailers(t))),
        )
    }
}

async fn otlp_answer(
    req: http::Request<hyper::body::Incoming>,
    state: &std::sync::Mutex<OtlpReceived>,
) -> http::Response<WithTrailers> {
    let reply = |status: u16, content_type: &str, data: Bytes, trailers| {
        let mut res = http::Response::new(WithTrailers {
            data: Some(data),
            trailers,
        });
        *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
        if !content_type.is_empty() {
            res.headers_mut()
                .insert("content-type", content_type.parse().unwrap());
        }
        res
    };
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let path = req.uri().path().to_string();
    if req.method() == http::Method::GET {
        let tp = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        lock().gets.push((path, tp));
        return reply(200, "", Bytes::from_static(b"ok"), None);
    }
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(400, "", Bytes::new(), None),
    };
    lock().paths.push(path.clone());
    let accept = |message: Bytes| {
        lock().accepted.push(OtlpRequest {
            path: path.clone(),
            message,
        })
    };
    match path.as_str() {
        "/v1/traces" | "/v1/metrics" => {
            if content_type != "application/x-protobuf" {
                return reply(400, "", Bytes::new(), None);
            }
            accept(body);
            reply(200, "application/x-protobuf", Bytes::new(), None)
        }
        GRPC_TRACES | GRPC_METRICS => {
            // An uncompressed flag, a 4-byte big-endian length, the message.
            let framed = content_type == "application/grpc"
                && body.len() >= 5
                && body[0] == 0
                && u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize
                    == body.len() - 5;
            if !framed {
                return reply(400, "", Bytes::new(), None);
            }
            accept(body.slice(5..));
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            // The empty answer, framed.
            let answer = Bytes::from_static(&[0, 0, 0, 0, 0]);
            reply(200, "application/grpc", answer, Some(trailers))
        }
        _ => reply(404, "", Bytes::new(), None),
    }
}

/// Runs `BIN logs ARGS --manifest MANIFEST`: (exit code, stdout, stderr).
pub fn atoll_logs(bin: &Path, manifest: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin)
        .arg("logs")
        .args(args)
        .arg("--manifest")
        .arg(manifest)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
