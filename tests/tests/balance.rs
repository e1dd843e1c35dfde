//! Load balancing: a route's `upstream` spreads requests over backends
//! (plain HTTP servers started here, and components), by strategy, with
//! active health checks and passive outlier detection. Counts, not timings:
//! every wait polls the state with a deadline.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atoll::Manifest;
use atoll::gateway::upstream::{BackendView, UpstreamView};
use atoll_tests::{Reply, TestHost, get, manifest_text, send, send_with};
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

/// A plain HTTP backend: answers every request with its name, `/healthz`
/// with 200 or 503 as `healthy` says, and holds `.../slow` requests until
/// released.
struct Backend {
    addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    name: String,
    /// What `/healthz` answers (200 or 503).
    healthy: AtomicBool,
    /// The status of every other answer.
    status: AtomicU16,
    /// Requests other than health checks.
    hits: AtomicUsize,
    /// Health checks.
    checks: AtomicUsize,
    /// `.../slow` requests waiting for `release`.
    held: AtomicUsize,
    release: watch::Sender<bool>,
    /// The requests as they arrived: URI, headers, body.
    seen: Mutex<Vec<(String, HeaderMap, Bytes)>>,
}

impl Backend {
    async fn start(name: &str) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            name: name.to_string(),
            healthy: AtomicBool::new(true),
            status: AtomicU16::new(200),
            hits: AtomicUsize::new(0),
            checks: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            release: watch::Sender::new(false),
            seen: Mutex::new(Vec::new()),
        });
        let serving = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    fn checks(&self) -> usize {
        self.state.checks.load(Ordering::SeqCst)
    }

    fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }
}

async fn answer(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path.ends_with("/healthz") {
        // Read the flag before counting: a check counted after a flip saw it.
        let healthy = state.healthy.load(Ordering::SeqCst);
        state.checks.fetch_add(1, Ordering::SeqCst);
        let status = if healthy { 200 } else { 503 };
        return Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(format!("{} health\n", state.name))))
            .unwrap());
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    state
        .seen
        .lock()
        .unwrap()
        .push((parts.uri.to_string(), parts.headers.clone(), body.clone()));
    if path.ends_with("/slow") {
        state.held.fetch_add(1, Ordering::SeqCst);
        let _ = state.release.subscribe().wait_for(|r| *r).await;
        state.held.fetch_sub(1, Ordering::SeqCst);
    }
    let text = match body.is_empty() {
        true => state.name.clone(),
        false => format!("{}: {} bytes", state.name, body.len()),
    };
    let res = Response::builder()
        .status(state.status.load(Ordering::SeqCst))
        .header("x-backend", &state.name)
        // Hop-by-hop headers the gateway must not pass on.
        .header("connection", "x-resp-hop")
        .header("x-resp-hop", "1")
        .header("keep-alive", "timeout=5")
        .body(Full::new(Bytes::from(text)))
        .unwrap();
    Ok(res)
}

async fn backends(names: &[&str]) -> Vec<Backend> {
    let mut out = Vec::new();
    for n in names {
        out.push(Backend::start(n).await);
    }
    out
}

fn hits(backends: &[Backend]) -> Vec<usize> {
    backends.iter().map(Backend::hits).collect()
}

/// A manifest with the hello component on `/hello`, `[upstreams.api]` with
/// `upstream` as its body, and `/api/...` routed to it.
fn manifest(upstream: &str) -> String {
    format!(
        r#"
[components.hello]
source = "{{hello}}"
routes = ["/hello"]

[upstreams.api]
{upstream}

[routes."/api/..."]
upstream = "api"
"#
    )
}

fn url_list(backends: &[Backend]) -> String {
    let urls: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.url()))
        .collect();
    format!("backends = [{}]", urls.join(", "))
}

fn view(h: &TestHost) -> UpstreamView {
    h.host.gateway().upstreams()[0].view()
}

fn backend(h: &TestHost, i: usize) -> BackendView {
    view(h).backends[i].clone()
}

/// Polls `cond` every 20 ms for up to 20 s.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

/// GETs `url` from local address `from` (any 127.0.0.x reaches loopback),
/// so the gateway sees that client IP.
async fn get_from(from: IpAddr, url: &str) -> Reply {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(from));
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
    let res = client.get(url.parse().unwrap()).await.expect("GET");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_takes_turns_exactly() {
    let bs = backends(&["a", "b", "c"]).await;
    // Weights are ignored by round robin.
    let h = TestHost::start(&manifest(&format!(
        "backends = [\"{}\", {{ url = \"{}\", weight = 5 }}, \"{}\"]",
        bs[0].url(),
        bs[1].url(),
        bs[2].url()
    )))
    .await;
    let mut order = Vec::new();
    for _ in 0..30 {
        let r = get(&h.url("/api/rr")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        order.push(r.body);
    }
    assert_eq!(hits(&bs), [10, 10, 10]);
    // In turns: every three answers in a row come from all three.
    for turn in order.chunks(3) {
        let mut names = turn.to_vec();
        names.sort();
        assert_eq!(names, ["a", "b", "c"], "{order:?}");
    }
    let v = view(&h);
    assert_eq!(v.name, "api");
    assert_eq!(v.strategy, "round_robin");
    for (b, backend) in v.backends.iter().zip(&bs) {
        assert_eq!(b.target, backend.url());
        assert_eq!((b.requests, b.failures, b.in_flight), (10, 0, 0));
        assert!(b.healthy && b.available && b.ejected_until.is_none());
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_sends_three_to_one_interleaved() {
    let bs = backends(&["heavy", "light"]).await;
    let h = TestHost::start(&manifest(&format!(
        "backends = [{{ url = \"{}\", weight = 3 }}, {{ url = \"{}\", weight = 1 }}]\nstrategy = \"weighted\"",
        bs[0].url(),
        bs[1].url()
    )))
    .await;
    let mut order = Vec::new();
    for _ in 0..40 {
        order.push(get(&h.url("/api/w")).await.body);
    }
    assert_eq!(hits(&bs), [30, 10]);
    // Smooth: the light one never twice in a row, the heavy one at most three times.
    assert!(
        order.windows(2).all(|w| w != ["light", "light"]),
        "{order:?}"
    );
    assert!(
        order.windows(4).all(|w| w.contains(&"light".to_string())),
        "{order:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_keeps_new_requests_off_the_busy_backend() {
    let bs = backends(&["a", "b", "c"]).await;
    let h = TestHost::start(&manifest(&format!(
        "{}\nstrategy = \"least_connections\"",
        url_list(&bs)
    )))
    .await;
    // One slow request holds a backend.
    let slow = tokio::spawn(get_owned(h.url("/api/slow")));
    let held = |bs: &[Backend]| {
        bs.iter()
            .map(|b| b.state.held.load(Ordering::SeqCst))
            .collect::<Vec<_>>()
    };
    wait_until("the slow request reaches a backend", || {
        held(&bs).iter().sum::<usize>() == 1
    })
    .await;
    let busy = held(&bs).iter().position(|n| *n == 1).unwrap();
    assert_eq!(backend(&h, busy).in_flight, 1);
    let before = hits(&bs);
    for _ in 0..20 {
        let r = get(&h.url("/api/fast")).await;
        assert_eq!(r.status, 200);
    }
    let fast: Vec<usize> = hits(&bs).iter().zip(&before).map(|(a, b)| a - b).collect();
    // None to the busy one; the idle ones take turns.
    for (i, n) in fast.iter().enumerate() {
        assert_eq!(*n, if i == busy { 0 } else { 10 }, "{fast:?}, busy {busy}");
    }
    bs[busy].state.release.send_replace(true);
    let r = slow.await.unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, bs[busy].state.name.as_str())
    );
    wait_until("nothing is in flight", || {
        view(&h).backends.iter().all(|b| b.in_flight == 0)
    })
    .await;
    // Idle again: all three take turns.
    let before = hits(&bs);
    for _ in 0..30 {
        get(&h.url("/api/fast")).await;
    }
    let after: Vec<usize> = hits(&bs).iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(after, [10, 10, 10]);
    h.stop().await;
}

async fn get_owned(url: String) -> Reply {
    get(&url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_is_sticky_and_moves_only_the_clients_of_a_backend_that_leaves() {
    let bs = backends(&["a", "b", "c"]).await;
    let h = TestHost::start(&manifest(&format!(
        "{}\nstrategy = \"ip_hash\"\nhealth = {{ path = \"/healthz\", interval = \"50ms\", timeout = \"1s\", unhealthy_after = 1, healthy_after = 1 }}",
        url_list(&bs)
    )))
    .await;
    let clients: Vec<IpAddr> = (2..32)
        .map(|n| format!("127.0.0.{n}").parse().unwrap())
        .collect();
    let url = h.url("/api/sticky");
    let mut home = Vec::new();
    for c in &clients {
        let first = get_from(*c, &url).await.body;
        for _ in 0..2 {
            assert_eq!(get_from(*c, &url).await.body, first, "client {c} moved");
        }
        home.push(first);
    }
    let share = |name: &str| home.iter().filter(|h| *h == name).count();
    let used = ["a", "b", "c"].iter().filter(|n| share(n) > 0).count();
    assert!(used >= 2, "30 clients all on one backend: {home:?}");
    // The backend with the most clients fails its health check.
    let gone = (0..3).max_by_key(|i| share(&bs[*i].state.name)).unwrap();
    let gone_name = bs[gone].state.name.clone();
    bs[gone].set_healthy(false);
    wait_until("the failing backend is out", || !backend(&h, gone).healthy).await;
    for (c, was) in clients.iter().zip(&home) {
        let now = get_from(*c, &url).await.body;
        if *was == gone_name {
            assert_ne!(now, gone_name, "client {c} still on the backend that left");
        } else {
            assert_eq!(now, *was, "client {c} moved though its backend stayed");
        }
    }
    // Back: every client returns home.
    bs[gone].set_healthy(true);
    wait_until("the backend is back", || backend(&h, gone).healthy).await;
    for (c, was) in clients.iter().zip(&home) {
        assert_eq!(get_from(*c, &url).await.body, *was, "client {c}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_failing_backend_out_and_bring_it_back() {
    let bs = backends(&["a", "b"]).await;
    let h = TestHost::start(&manifest(&format!(
        "{}\nhealth = {{ path = \"/healthz\", interval = \"50ms\", timeout = \"1s\", unhealthy_after = 2, healthy_after = 3 }}",
        url_list(&bs)
    )))
    .await;
    wait_until("both backends were checked", || {
        bs.iter().all(|b| b.checks() >= 1)
    })
    .await;
    let checks = bs[1].checks();
    bs[1].set_healthy(false);
    wait_until("b is out", || !backend(&h, 1).healthy).await;
    assert!(bs[1].checks() - checks >= 2, "out before two failed checks");
    let before = hits(&bs);
    for _ in 0..10 {
        assert_eq!(get(&h.url("/api/x")).await.body, "a");
    }
    assert_eq!(hits(&bs), [before[0] + 10, before[1]]);
    // Both out: 503 with Retry-After, from the gateway.
    bs[0].set_healthy(false);
    wait_until("a is out", || !backend(&h, 0).healthy).await;
    let r = get(&h.url("/api/x")).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.body,
        "atoll: upstream `api` has no backend available (2 failing health checks); retry later\n"
    );
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(hits(&bs), [before[0] + 10, before[1]]);
    // Healthy again after three passing checks.
    let checks = bs[1].checks();
    bs[0].set_healthy(true);
    bs[1].set_healthy(true);
    wait_until("both are back", || {
        view(&h).backends.iter().all(|b| b.healthy)
    })
    .await;
    assert!(
        bs[1].checks() - checks >= 3,
        "back before three passed checks"
    );
    let before = hits(&bs);
    for _ in 0..10 {
        get(&h.url("/api/x")).await;
    }
    assert_eq!(hits(&bs), [before[0] + 5, before[1] + 5]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_5xx_eject_a_backend() {
    let bs = backends(&["a", "b"]).await;
    let h = TestHost::start(&manifest(&format!(
        "{}\noutlier = {{ consecutive_5xx = 3, eject_for = \"1h\" }}",
        url_list(&bs)
    )))
    .await;
    bs[1].set_status(500);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get(&h.url("/api/x")).await.status);
    }
    // Turns until b's third 500 in a row; then only a. The 500s pass through.
    assert_eq!(
        statuses,
        [200, 500, 200, 500, 200, 500, 200, 200, 200, 200, 200, 200]
    );
    assert_eq!(hits(&bs), [9, 3]);
    let b = backend(&h, 1);
    assert!(b.ejected_until.is_some() && !b.available && b.healthy);
    assert_eq!((b.failures, b.ejections), (3, 1));
    assert_eq!(backend(&h, 0).failures, 0);
    h.stop().await;
}

/// GETs `url` until `backend` has answered one more request (a few turns).
async fn until_it_answers(backend: &Backend, url: &str) {
    let before = backend.hits();
    for _ in 0..10 {
        get(url).await;
        if backend.hits() > before {
            return;
        }
    }
    panic!("{} got none of 10 requests", backend.state.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_backend_returns_on_probation() {
    let bs = backends(&["a", "b"]).await;
    let h = TestHost::start(&manifest(&format!(
        "{}\noutlier = {{ consecutive_5xx = 2, eject_for = \"300ms\" }}",
        url_list(&bs)
    )))
    .await;
    let url = h.url("/api/x");
    bs[1].set_status(500);
    for _ in 0..4 {
        get(&url).await;
    }
    assert_eq!(hits(&bs), [2, 2]);
    assert_eq!(backend(&h, 1).ejections, 1);
    wait_until("b's ejection ends", || backend(&h, 1).available).await;
    // Back on probation: its next failure alone ejects it again.
    until_it_answers(&bs[1], &url).await;
    assert_eq!(backend(&h, 1).ejections, 2);
    // A success ends probation: then one failure does not eject.
    bs[1].set_status(200);
    wait_until("b's second ejection ends", || backend(&h, 1).available).await;
    until_it_answers(&bs[1], &url).await;
    bs[1].set_status(500);
    until_it_answers(&bs[1], &url).await;
    let b = backend(&h, 1);
    assert_eq!((b.ejections, b.available), (2, true));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_and_legacy_server_share_by_weight() {
    let legacy = Backend::start("legacy").await;
    let h = TestHost::start(&format!(
        r#"
[components.hello]
source = "{{hello}}"

[upstreams.api]
backends = [{{ component = "hello", weight = 1 }}, {{ url = "{}", weight = 3 }}]
strategy = "weighted"
health = {{ path = "/healthz", interval = "50ms", timeout = "1s" }}

[routes."/api/..."]
upstream = "api"
"#,
        legacy.url()
    ))
    .await;
    let mut from_component = 0;
    for _ in 0..40 {
        let r = get(&h.url("/api/orders?x=1")).await;
        assert_eq!(r.status, 200);
        match r.body.as_str() {
            "legacy" => {}
            "hello from atoll: /api/orders\n" => from_component += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((from_component, legacy.hits()), (10, 30));
    // A body reaches the component too.
    let mut echoed = false;
    for _ in 0..4 {
        let r = send("POST", &h.url("/api/orders"), "ping").await.unwrap();
        echoed |= r.body == "echo: ping";
        if r.body != "echo: ping" {
            assert_eq!(r.body, "legacy: 4 bytes");
        }
    }
    assert!(echoed, "no POST reached the component");
    let v = view(&h);
    assert_eq!(v.backends[0].target, "component:hello");
    assert!(v.backends.iter().all(|b| b.healthy));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_backends_are_health_checked_and_ejected_like_urls() {
    let legacy = Backend::start("legacy").await;
    let h = TestHost::start(&format!(
        r#"
[components.sick]
source = "{{swap-sick}}"

[components.flaky]
source = "{{swap-flaky}}"

[upstreams.sick]
backends = [{{ component = "sick" }}, "{url}"]
health = {{ path = "/healthz", interval = "50ms", timeout = "1s", unhealthy_after = 2 }}

[upstreams.flaky]
backends = [{{ component = "flaky" }}, "{url}"]
outlier = {{ consecutive_5xx = 2, eject_for = "1h" }}

[routes."/sick/..."]
upstream = "sick"

[routes."/flaky/..."]
upstream = "flaky"
"#,
        url = legacy.url()
    ))
    .await;
    let ups = h.host.gateway().upstreams();
    let sick = ups.iter().find(|u| u.name() == "sick").unwrap();
    let flaky = ups.iter().find(|u| u.name() == "flaky").unwrap();
    // The component's /healthz answers 503: out after two checks.
    wait_until("the sick component is out", || {
        !sick.view().backends[0].healthy
    })
    .await;
    let before = legacy.hits();
    for _ in 0..6 {
        assert_eq!(get(&h.url("/sick/x")).await.body, "legacy");
    }
    assert_eq!(legacy.hits(), before + 6);
    // The flaky component answers 500: ejected after two in a row.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(get(&h.url("/flaky/x")).await.status);
    }
    assert_eq!(statuses, [500, 200, 500, 200, 200, 200, 200, 200]);
    let b = &flaky.view().backends[0];
    assert_eq!((b.failures, b.ejections, b.available), (2, 1, false));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_requests_carry_forwarding_headers_and_drop_hop_by_hop_ones() {
    let b = Backend::start("legacy").await;
    let h = TestHost::start(&manifest(&format!("backends = [\"{}/base\"]", b.url()))).await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = send_with(
        "GET",
        &h.url("/api/echo/x?y=1&z=%20two"),
        &[
            ("connection", "x-hop"),
            ("x-hop", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "trailers"),
            ("x-forwarded-for", "203.0.113.9"),
            ("traceparent", traceparent),
            ("x-custom", "kept"),
        ],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "legacy"));
    assert_eq!(r.headers["x-backend"], "legacy");
    assert!(r.headers.get("x-resp-hop").is_none() && r.headers.get("keep-alive").is_none());
    assert!(
        r.headers["traceparent"]
            .to_str()
            .unwrap()
            .contains("0af7651916cd43dd8448eb211c80319c")
    );
    let (uri, headers, _) = b.state.seen.lock().unwrap()[0].clone();
    assert_eq!(uri, "/base/api/echo/x?y=1&z=%20two");
    assert_eq!(headers["host"], b.addr.to_string());
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], h.host.addr().to_string());
    assert_eq!(headers["traceparent"], traceparent);
    assert_eq!(headers["x-custom"], "kept");
    for gone in ["x-hop", "keep-alive", "proxy-authorization", "te"] {
        assert!(headers.get(gone).is_none(), "{gone} was forwarded");
    }
    // A body streams through, 1 MiB of it.
    let big = vec![b'x'; 1 << 20];
    let r = send("POST", &h.url("/api/upload"), big).await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "legacy: 1048576 bytes"));
    h.stop().await;
}

/// A port nothing listens on: bound (so no one else takes it) but not listening.
fn refusing_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backend_retries_bodiless_requests_once_and_502s_the_rest() {
    let (_hold, dead) = refusing_port();
    let live = Backend::start("live").await;
    let h = TestHost::start(&manifest(&format!(
        "backends = [\"http://{dead}\", \"{}\"]",
        live.url()
    )))
    .await;
    let url = h.url("/api/x");
    // Turn 0, the dead one: a GET goes on to the live one.
    let r = get(&url).await;
    assert_eq!((r.status, r.body.as_str()), (200, "live"));
    // Turn 1, the live one.
    assert_eq!(get(&url).await.body, "live");
    // Turn 2, the dead one: a body may be half sent, so no retry.
    let r = send("POST", &url, "payload").await.unwrap();
    assert_eq!(r.status, 502);
    assert!(
        r.body.starts_with(&format!(
            "atoll: upstream `api`: could not connect to backend http://{dead} ("
        )),
        "{}",
        r.body
    );
    assert!(!r.body.contains("then to"), "{}", r.body);
    // Turn 3 the live one, turn 4 the dead one: an empty body is retried.
    assert_eq!(send("POST", &url, "").await.unwrap().body, "live");
    assert_eq!(send("POST", &url, "").await.unwrap().body, "live");
    assert_eq!(live.hits(), 4);
    let dead_view = backend(&h, 0);
    assert_eq!((dead_view.requests, dead_view.failures), (3, 3));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_is_502_then_503_with_retry_after() {
    let (_h1, dead1) = refusing_port();
    let (_h2, dead2) = refusing_port();
    let h = TestHost::start(&manifest(&format!(
        "backends = [\"http://{dead1}\", \"http://{dead2}\"]"
    )))
    .await;
    // Each request tries both; five failed connections in a row eject each.
    for _ in 0..5 {
        let r = get(&h.url("/api/x")).await;
        assert_eq!(r.status, 502, "{}", r.body);
        assert!(r.body.contains(&format!("http://{dead1} (")), "{}", r.body);
        assert!(
            r.body.contains(&format!("; then to http://{dead2} ("))
                || r.body.contains(&format!("; then to http://{dead1} (")),
            "{}",
            r.body
        );
    }
    let r = get(&h.url("/api/x")).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.body,
        "atoll: upstream `api` has no backend available (2 ejected after errors); retry later\n"
    );
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    h.stop().await;
}

#[test]
fn bad_upstream_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let parse = |toml: &str| {
        Manifest::parse(&manifest_text(toml), "atoll.toml", dir.path())
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_else(|| "parsed without error".into())
    };
    let e = parse(
        r#"
[components.hello]
source = "hello.wasm"

[upstreams.api]
backends = ["http://127.0.0.1:9000"]
strategy = "fastest"
"#,
    );
    assert!(
        e.contains("unknown strategy `fastest`; use one of round_robin, weighted, least_connections, ip_hash"),
        "{e}"
    );
    let e = parse(
        r#"
[components.hello]
source = "hello.wasm"

[upstreams.api]
backends = [{ component = "nope" }, "http://127.0.0.1:9000"]
"#,
    );
    assert!(
        e.contains("backend component `nope` is not a component of this manifest"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_backends_are_a_manifest_error() {
    let urls: Vec<String> = (0..65)
        .map(|i| format!("\"http://127.0.0.1:{}\"", 10000 + i))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let toml = manifest(&format!("backends = [{}]", urls.join(", ")));
    let e = match TestHost::start_in(&toml, dir.path()).await {
        Ok(_) => panic!("started with 65 backends"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains(
            "[upstreams.api]: 65 backends; an upstream has at most 64: split it into several"
        ),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_reach_http1_backends() {
    let b = Backend::start("legacy").await;
    let h = TestHost::start(&manifest(&url_list(std::slice::from_ref(&b)))).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let res = client
        .get(h.url("/api/h2?q=1").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("connection").is_none());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"legacy");
    let (uri, headers, _) = b.state.seen.lock().unwrap()[0].clone();
    assert_eq!(uri, "/api/h2?q=1");
    assert_eq!(headers["host"], b.addr.to_string());
    assert_eq!(headers["x-forwarded-host"], h.host.addr().to_string());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_body_over_the_limit_is_413_and_not_the_backends_fault() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Backend::start("legacy").await;
    let h = TestHost::start(&format!(
        "[gateway]\nmax_body = \"1KiB\"\n{}",
        manifest(&format!(
            "{}\noutlier = {{ consecutive_5xx = 1, eject_for = \"1h\" }}",
            url_list(std::slice::from_ref(&b))
        ))
    ))
    .await;
    // Chunked, so the limit is found while the body streams to the backend.
    let mut stream = tokio::net::TcpStream::connect(h.host.addr()).await.unwrap();
    let chunk = "x".repeat(2048);
    let request = format!(
        "POST /api/upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    // Not counted against the backend: one failure would have ejected it.
    let v = backend(&h, 0);
    assert_eq!((v.failures, v.ejections, v.available), (0, 0, true));
    assert_eq!(get(&h.url("/api/x")).await.body, "legacy");
    h.stop().await;
}
