//! Reaching a running host's admin API from the command line.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::admin;
use crate::config::Manifest;

/// How long one admin request may take, connecting included, unless the
/// command sets another limit with [`AdminClient::with_timeout`].
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// The size of the pieces an upload is sent in (and its progress reported by).
const UPLOAD_CHUNK: usize = 64 << 10;

/// How to reach the admin API of a running host.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The running host's manifest: its data_dir holds admin.json (where the
    /// admin API listens) and admin.token.
    #[arg(long, value_name = "PATH", default_value = "atoll.toml")]
    manifest: PathBuf,
    /// Admin API URL (e.g. http://127.0.0.1:8081), instead of looking it up
    /// through the manifest.
    #[arg(long, value_name = "URL", env = "ATOLL_ADMIN")]
    admin: Option<String>,
    /// Admin token, instead of reading admin.token from the data_dir.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ATOLL_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

impl AdminArgs {
    /// Finds the admin API and its token.
    pub fn connect(&self) -> anyhow::Result<AdminClient> {
        let (target, discovery_file) = match &self.admin {
            Some(url) => (Target::parse(url)?, None),
            None => {
                let data_dir = self.data_dir()?;
                let path = admin::discovery_path(&data_dir);
                let Some(found) = admin::read_discovery(&data_dir)? else {
                    bail!(
                        "no running host found for {}: {} does not exist; start one with `atoll up {}` or pass --admin and --token",
                        self.manifest.display(),
                        path.display(),
                        self.manifest.display(),
                    );
                };
                // A host killed with SIGKILL leaves its file behind: do not
                // send the token to whatever listens on that port now.
                if !std::path::Path::new(&format!("/proc/{}", found.pid)).exists() {
                    bail!(
                        "no running host found for {}: {} names process {}, which is not running (the host stopped without cleaning up); start it with `atoll up {}` or pass --admin and --token",
                        self.manifest.display(),
                        path.display(),
                        found.pid,
                        self.manifest.display(),
                    );
                }
                (Target::from_addr(found.addr), Some(path))
            }
        };
        let token = match &self.token {
            Some(t) if t.trim().is_empty() => {
                bail!("the admin token is empty; pass --token or set ATOLL_ADMIN_TOKEN")
            }
            Some(t) => t.trim().to_string(),
            None => self.token_from_data_dir()?,
        };
        Ok(AdminClient {
            target,
            token,
            discovery_file,
            timeout: TIMEOUT,
        })
    }

    fn token_from_data_dir(&self) -> anyhow::Result<String> {
        if self.admin.is_some() && !self.manifest.exists() {
            bail!("no admin token: pass --token or set ATOLL_ADMIN_TOKEN");
        }
        let path = self.data_dir()?.join(admin::TOKEN_FILE);
        admin::read_token(&path)?.ok_or_else(|| {
            anyhow!(
                "no admin token: {} does not exist; pass --token or set ATOLL_ADMIN_TOKEN (a host started with ATOLL_ADMIN_TOKEN writes no token file)",
                path.display()
            )
        })
    }

    fn data_dir(&self) -> anyhow::Result<PathBuf> {
        if !self.manifest.exists() {
            bail!(
                "no running host found: {} does not exist; pass --manifest with the host's atoll.toml, or --admin and --token",
                self.manifest.display()
            );
        }
        let manifest = Manifest::load(&self.manifest).with_context(|| {
            format!(
                "reading {} to find the running host (or pass --admin and --token)",
                self.manifest.display()
            )
        })?;
        Ok(manifest.host.data_dir)
    }
}

/// Where the admin API is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// `host:port`, to connect to and for the `Host` header.
    authority: String,
    /// Prefix of every path, without a trailing `/` (empty for none).
    base_path: String,
}

impl Target {
    fn from_addr(addr: SocketAddr) -> Target {
        // A host listening on every interface is reached on loopback.
        let addr = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
            }
            _ => addr,
        };
        Target {
            authority: addr.to_string(),
            base_path: String::new(),
        }
    }

    /// `http://host:port[/prefix]`, or `host:port`.
    fn parse(url: &str) -> anyhow::Result<Target> {
        let bad = |why: &str| {
            anyhow!(
                "--admin `{url}` is not usable: {why}; write it as http://HOST:PORT, e.g. http://127.0.0.1:8081"
            )
        };
        let with_scheme = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        let uri: Uri = with_scheme.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "the admin API speaks plain HTTP; keep it on loopback or reach it through a tunnel",
                ));
            }
            _ => return Err(bad("only http:// is supported")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials go in --token, not the URL"));
        }
        if uri.query().is_some() {
            return Err(bad("it has a query string"));
        }
        let authority = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        Ok(Target {
            authority,
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

/// A connection to one host's admin API. Each call runs on its own
/// single-threaded runtime and gives up after [`TIMEOUT`] (or the limit
/// given to [`AdminClient::with_timeout`]).
#[derive(Debug)]
pub struct AdminClient {
    target: Target,
    token: String,
    /// The admin.json the address came from, for errors.
    discovery_file: Option<PathBuf>,
    /// How long one request may take.
    timeout: Duration,
}

impl AdminClient {
    /// Lets each request take up to `timeout` (default [`TIMEOUT`]), for
    /// calls the host answers only after slow work (compiling, draining).
    pub fn with_timeout(mut self, timeout: Duration) -> AdminClient {
        self.timeout = timeout;
        self
    }

    /// GETs `path` and decodes the JSON answer.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let body = self.send(Method::GET, path, Vec::new(), Bytes::new())?;
        decode(&body)
    }

    /// GETs `path` and returns the answer as JSON text, pretty-printed.
    pub fn get_pretty(&self, path: &str) -> anyhow::Result<String> {
        let value: serde_json::Value = self.get(path)?;
        Ok(serde_json::to_string_pretty(&value)?)
    }

    /// POSTs `body` to `path` with extra headers and decodes the JSON answer.
    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> anyhow::Result<T> {
        let body = self.send(Method::POST, path, headers, body)?;
        decode(&body)
    }

    /// POSTs `body` to `path` in pieces, calling `sent` with the number of
    /// bytes handed to the connection so far after each piece (the last
    /// call has the whole length; then the host is working on its answer),
    /// and decodes the JSON answer.
    pub fn upload<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Bytes,
        sent: impl FnMut(u64) + Send + Unpin + 'static,
    ) -> anyhow::Result<T> {
        let body = Upload {
            rest: body,
            sent: 0,
            report: sent,
        };
        let body = self.send_body(Method::POST, path, Vec::new(), body)?;
        decode(&body)
    }

    /// DELETEs `path` and decodes the JSON answer.
    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let body = self.send(Method::DELETE, path, Vec::new(), Bytes::new())?;
        decode(&body)
    }

    fn send(
        &self,
        method: Method,
        path: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> anyhow::Result<Bytes> {
        self.send_body(method, path, headers, Full::new(body))
    }

    fn send_body<B>(
        &self,
        method: Method,
        path: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: B,
    ) -> anyhow::Result<Bytes>
    where
        B: Body<Data = Bytes, Error = Infallible> + Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the client runtime")?;
        let exchange = self.exchange(method, path, headers, body);
        let timeout = self.timeout;
        let (status, body) = runtime
            .block_on(async { tokio::time::timeout(timeout, exchange).await })
            .map_err(|_| {
                anyhow!(
                    "the admin API at {} did not answer within {}",
                    self.target.authority,
                    humantime::format_duration(timeout)
                )
            })??;
        if status.is_success() {
            return Ok(body);
        }
        Err(ServerError {
            status,
            message: server_error(status, &body),
        }
        .into())
    }

    /// GETs `path` and hands each line of the answer (without its `\n`) to
    /// `line` as it arrives, until the host ends the answer or `line` fails.
    /// Only connecting and the answer's head must come within the timeout.
    pub fn get_lines(
        &self,
        path: &str,
        mut line: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the client runtime")?;
        let authority = &self.target.authority;
        let timed_out = || {
            anyhow!(
                "the admin API at {authority} did not answer within {}",
                humantime::format_duration(self.timeout)
            )
        };
        runtime.block_on(async {
            let head = self.start(Method::GET, path, Vec::new(), Full::new(Bytes::new()));
            let (res, conn) = tokio::time::timeout(self.timeout, head)
                .await
                .map_err(|_| timed_out())??;
            let status = res.status();
            let mut body = res.into_body();
            if !status.is_success() {
                let body = tokio::time::timeout(self.timeout, body.collect())
                    .await
                    .map_err(|_| timed_out())?
                    .with_context(|| format!("reading the answer of the admin API at {authority}"))?
                    .to_bytes();
                return Err(ServerError {
                    status,
                    message: server_error(status, &body),
                }
                .into());
            }
            let mut pending = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.with_context(|| {
                    format!("reading the answer of the admin API at {authority}")
                })?;
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                pending.extend_from_slice(data);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let rest = pending.split_off(end + 1);
                    line(&pending[..end])?;
                    pending = rest;
                }
            }
            conn.abort();
            if !pending.is_empty() {
                line(&pending)?;
            }
            Ok(())
        })
    }

    async fn exchange<B>(
        &self,
        method: Method,
        path: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: B,
    ) -> anyhow::Result<(StatusCode, Bytes)>
    where
        B: Body<Data = Bytes, Error = Infallible> + Send + 'static,
    {
        let authority = &self.target.authority;
        let (res, conn) = self.start(method, path, headers, body).await?;
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the answer of the admin API at {authority}"))?
            .to_bytes();
        conn.abort();
        Ok((status, body))
    }

    /// Connects, sends the request and waits for the answer's head; the task
    /// returned drives the connection while the body is read.
    async fn start<B>(
        &self,
        method: Method,
        path: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: B,
    ) -> anyhow::Result<(
        http::Response<hyper::body::Incoming>,
        tokio::task::JoinHandle<hyper::Result<()>>,
    )>
    where
        B: Body<Data = Bytes, Error = Infallible> + Send + 'static,
    {
        let authority = &self.target.authority;
        let stream = tokio::net::TcpStream::connect(authority.as_str())
            .await
            .map_err(|e| self.connect_error(e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("talking to the admin API at {authority}"))?;
        let conn = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.target.base_path))
            .header(header::HOST, authority.as_str())
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(body)
            .context("the admin token or a header is not a valid HTTP header value")?;
        req.headers_mut().extend(headers);
        let res = sender
            .send_request(req)
            .await
            .with_context(|| format!("sending the request to the admin API at {authority}"))?;
        Ok((res, conn))
    }

    fn connect_error(&self, e: std::io::Error) -> anyhow::Error {
        let authority = &self.target.authority;
        if e.kind() != std::io::ErrorKind::ConnectionRefused {
            return anyhow!("cannot reach the admin API at {authority}: {e}");
        }
        match &self.discovery_file {
            Some(file) => anyhow!(
                "cannot reach the admin API at {authority}: connection refused; the host may have stopped without removing {} (start it again with `atoll up`)",
                file.display()
            ),
            None => anyhow!(
                "cannot reach the admin API at {authority}: connection refused; the host may have stopped, or it listens elsewhere (`[host] admin_listen`)"
            ),
        }
    }
}

/// A request body sent [`UPLOAD_CHUNK`] bytes at a time, reporting the
/// bytes sent so far. Its exact size is known, so it goes with a
/// `Content-Length` (the host refuses one too large before reading it).
struct Upload<F> {
    rest: Bytes,
    sent: u64,
    report: F,
}

impl<F: FnMut(u64) + Unpin> Body for Upload<F> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            return Poll::Ready(None);
        }
        let piece = this.rest.split_to(UPLOAD_CHUNK.min(this.rest.len()));
        this.sent += piece.len() as u64;
        (this.report)(this.sent);
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> anyhow::Result<T> {
    serde_json::from_slice(body).context(
        "the admin API's answer is not what this atoll expects; is the host the same version?",
    )
}

/// The host answered with an error status: it received the request and
/// refused it (as opposed to no answer at all). Shows as the server's message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ServerError {
    /// The answer's status.
    pub status: StatusCode,
    /// The server's `error`, else the status and the start of the body.
    pub message: String,
}

/// The message of a non-2xx answer: the server's `error`, else the status
/// and the start of the body.
fn server_error(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.error,
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            format!("the admin API answered {status}: {}", text.trim())
        }
    }
}

/// What a path segment must encode: all but RFC 3986's unreserved characters.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one path segment.
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// `path?name=value&...`, leaving out `None` values.
pub fn with_query<'a>(
    path: &str,
    params: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        if let Some(v) = value {
            query.append_pair(name, v);
        }
    }
    let query = query.finish();
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::Response;
    use hyper::body::Incoming;
    use hyper::service::service_fn;

    use std::path::Path;

    use super::*;

    fn write_discovery_for(data_dir: &Path, addr: SocketAddr) {
        admin::write_discovery(data_dir, addr).unwrap();
    }

    fn args(manifest: &Path, admin: Option<String>, token: Option<&str>) -> AdminArgs {
        AdminArgs {
            manifest: manifest.to_path_buf(),
            admin,
            token: token.map(str::to_string),
        }
    }

    /// A manifest whose data_dir is `dir/data`.
    fn manifest(dir: &Path) -> PathBuf {
        let path = dir.join("atoll.toml");
        std::fs::write(&path, "[host]\ndata_dir = \"data\"\n").unwrap();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        path
    }

    /// Serves canned answers on a free port from a thread of its own; each
    /// request is echoed into the answer as `seen`.
    fn fake_admin() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let service = service_fn(|req: http::Request<Incoming>| async move {
                        match req.uri().path() {
                            "/v1/echo" => {
                                let method = req.method().to_string();
                                let length = req.headers().get(header::CONTENT_LENGTH).map(|v| v.to_str().unwrap().to_string());
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let answer = serde_json::json!({"method": method, "content_length": length, "received": body.len()});
                                return Ok(Response::new(Full::new(Bytes::from(answer.to_string()))));
                            }
                            "/v1/slow" => tokio::time::sleep(Duration::from_secs(5)).await,
                            _ => {}
                        }
                        let auth = req.headers()[header::AUTHORIZATION]
                            .to_str()
                            .unwrap()
                            .to_string();
                        let extra = req
                            .headers()
                            .get("atoll-header-x")
                            .map(|v| v.to_str().unwrap().to_string());
                        let uri = req.uri().to_string();
                        let (status, body) = match req.uri().path() {
                            "/v1/bus" => (
                                200,
                                serde_json::json!({"auth": auth, "uri": uri, "extra": extra})
                                    .to_string(),
                            ),
                            "/v1/missing" => {
                                (404, r#"{"error":"unknown topic: nope"}"#.to_string())
                            }
                            _ => (502, "bad gateway".to_string()),
                        };
                        let mut res = Response::new(Full::new(Bytes::from(body)));
                        *res.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(res)
                    });
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service),
                    );
                }
            });
        });
        addr
    }

    #[test]
    fn finds_the_host_through_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest(dir.path());
        let data = dir.path().join("data");
        std::fs::write(data.join(admin::TOKEN_FILE), "tok\n").unwrap();
        write_discovery_for(&data, fake_admin());

        let client = args(&manifest, None, None).connect().unwrap();
        let seen: serde_json::Value = client
            .post(
                "/v1/bus",
                vec![(
                    HeaderName::from_static("atoll-header-x"),
                    HeaderValue::from_static("1"),
                )],
                Bytes::new(),
            )
            .unwrap();
        assert_eq!(seen["auth"], "Bearer tok");
        assert_eq!(seen["extra"], "1");
        // --token wins over the file.
        let client = args(&manifest, None, Some("other")).connect().unwrap();
        let seen: serde_json::Value = client.get("/v1/bus").unwrap();
        assert_eq!(seen["auth"], "Bearer other");
    }

    #[test]
    fn errors_carry_the_servers_message() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://{}/", fake_admin());
        let client = args(&dir.path().join("none.toml"), Some(url), Some("t"))
            .connect()
            .unwrap();
        let e = client.get::<serde_json::Value>("/v1/missing").unwrap_err();
        assert_eq!(e.to_string(), "unknown topic: nope");
        let e = client.get::<serde_json::Value>("/other").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the admin API answered 502 Bad Gateway: bad gateway"
        );
        let seen: serde_json::Value = client
            .get(&with_query(
                "/v1/bus",
                [("id", Some("a b/é")), ("key", None)],
            ))
            .unwrap();
        assert_eq!(seen["uri"], "/v1/bus?id=a+b%2F%C3%A9");
    }

    #[test]
    fn uploads_report_progress_and_other_methods_work() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://{}", fake_admin());
        let client = args(&dir.path().join("none.toml"), Some(url), Some("t"))
            .connect()
            .unwrap();
        let size = 2 * UPLOAD_CHUNK + 10;
        let reports = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = reports.clone();
        let answer: serde_json::Value = client
            .upload("/v1/echo", Bytes::from(vec![7u8; size]), move |sent| {
                seen.lock().unwrap().push(sent)
            })
            .unwrap();
        assert_eq!(answer["method"], "POST");
        assert_eq!(answer["content_length"], size.to_string());
        assert_eq!(answer["received"], size);
        let chunk = UPLOAD_CHUNK as u64;
        assert_eq!(*reports.lock().unwrap(), [chunk, 2 * chunk, size as u64]);

        let answer: serde_json::Value = client.delete("/v1/echo").unwrap();
        assert_eq!(answer["method"], "DELETE");

        // The host's refusals keep their status; they read as its message.
        let e = client
            .delete::<serde_json::Value>("/v1/missing")
            .unwrap_err();
        let refused = e.downcast_ref::<ServerError>().unwrap();
        assert_eq!(refused.status, StatusCode::NOT_FOUND);
        assert_eq!(e.to_string(), "unknown topic: nope");

        let client = client.with_timeout(Duration::from_millis(50));
        let e = client.get::<serde_json::Value>("/v1/slow").unwrap_err();
        assert!(e.to_string().ends_with("did not answer within 50ms"), "{e}");
        assert!(e.downcast_ref::<ServerError>().is_none());
    }

    #[test]
    fn no_running_host_says_how_to_start_one() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest(dir.path());
        let e = args(&manifest, None, None)
            .connect()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("no running host found for {}", manifest.display())),
            "{e}"
        );
        assert!(e.contains("admin.json does not exist"), "{e}");
        assert!(e.contains("`atoll up "), "{e}");
        assert!(e.contains("--admin and --token"), "{e}");

        let e = args(&dir.path().join("nope.toml"), None, None)
            .connect()
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.toml does not exist"), "{e}");
    }

    #[test]
    fn a_stopped_host_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest(dir.path());
        // A port nothing listens on: bind one, then free it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        write_discovery_for(&dir.path().join("data"), addr);
        let client = args(&manifest, None, Some("t")).connect().unwrap();
        let e = client
            .get::<serde_json::Value>("/v1/bus")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("admin API at {addr}: connection refused")),
            "{e}"
        );
        assert!(e.contains("the host may have stopped"), "{e}");
        assert!(e.contains("admin.json"), "{e}");
    }

    #[test]
    fn a_token_is_needed() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest(dir.path());
        write_discovery_for(&dir.path().join("data"), "127.0.0.1:1".parse().unwrap());
        let e = args(&manifest, None, None)
            .connect()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("admin.token does not exist; pass --token"),
            "{e}"
        );
        let e = args(&dir.path().join("x.toml"), Some("127.0.0.1:1".into()), None)
            .connect()
            .unwrap_err()
            .to_string();
        assert_eq!(e, "no admin token: pass --token or set ATOLL_ADMIN_TOKEN");
    }

    #[test]
    fn admin_urls() {
        let t = |s: &str| Target::parse(s).map_err(|e| e.to_string());
        let target = |a: &str, p: &str| {
            Ok(Target {
                authority: a.into(),
                base_path: p.into(),
            })
        };
        assert_eq!(t("http://127.0.0.1:8081"), target("127.0.0.1:8081", ""));
        assert_eq!(t("http://127.0.0.1:8081/"), target("127.0.0.1:8081", ""));
        assert_eq!(t("localhost:9000"), target("localhost:9000", ""));
        assert_eq!(
            t("http://[::1]:8081/admin/"),
            target("[::1]:8081", "/admin")
        );
        assert_eq!(t("http://example.test"), target("example.test:80", ""));
        for (url, why) in [
            ("https://h:1", "plain HTTP"),
            ("ftp://h:1", "only http://"),
            ("http://u:p@h:1", "--token"),
            ("http://h:1/?x", "query"),
            ("http:// bad", "not a URL"),
        ] {
            let e = t(url).unwrap_err();
            assert!(e.contains(why) && e.contains(url), "{url}: {e}");
        }
        assert_eq!(
            Target::from_addr("0.0.0.0:8081".parse().unwrap()).authority,
            "127.0.0.1:8081"
        );
        assert_eq!(
            Target::from_addr("[::]:8081".parse().unwrap()).authority,
            "[::1]:8081"
        );
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("orders.created-1_~"), "orders.created-1_~");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }
}
