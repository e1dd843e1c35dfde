//! The gateway pipeline's own steps: rate limits, trace context, overload.
//! (Auth, call log, upstreams, static files, limits and TLS have their own files.)

use std::net::SocketAddr;
use std::time::Duration;

use atoll_tests::{TestHost, get, send_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GETs `path` over a fresh connection from the local address `from`
/// (127.0.0.x: every such address reaches the loopback interface), so the
/// gateway sees a different client IP. Returns the status and headers text.
async fn get_from(from: &str, host: SocketAddr, path: &str) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(host).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    (status, text)
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_passes_the_burst_then_429_with_retry_after_per_client() {
    let h = TestHost::start(
        r#"
[components.hello]
source = "{hello}"
routes = ["/hello", "/keyed"]

[routes."/hello"]
rate_limit = { rate = 1, per = "1s", burst = 3 }

[routes."/keyed"]
rate_limit = { rate = 1, per = "1m", burst = 2, key = "header:x-api-key" }
"#,
    )
    .await;
    let addr = h.host.addr();
    // Client 127.0.0.1: exactly the burst passes, the rest get 429.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let r = get(&h.url("/hello")).await;
        if r.status == 429 {
            let value = r.headers["retry-after"].to_str().unwrap().to_string();
            retry_after = Some(value.parse::<u64>().expect("Retry-After is whole seconds"));
            assert!(r.body.contains("rate limit of route /hello"), "{}", r.body);
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    // Another client IP has its own bucket.
    for _ in 0..3 {
        assert_eq!(get_from("127.0.0.2", addr, "/hello").await.0, 200);
    }
    assert_eq!(get_from("127.0.0.2", addr, "/hello").await.0, 429);
    // Waiting what Retry-After says is enough.
    let wait = retry_after.unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(get(&h.url("/hello")).await.status, 200);

    // Keyed by API key: each key its own burst; requests without one share a bucket.
    let keyed = |key: &'static str| {
        let url = h.url("/keyed");
        async move {
            let headers: Vec<(&str, &str)> = match key {
                "" => vec![],
                k => vec![("x-api-key", k)],
            };
            send_with("GET", &url, &headers, "").await.unwrap().status
        }
    };
    assert_eq!(
        [keyed("a").await, keyed("a").await, keyed("a").await],
        [200, 200, 429]
    );
    assert_eq!([keyed("b").await, keyed("b").await], [200, 200]);
    assert_eq!(
        [keyed("").await, keyed("").await, keyed("").await],
        [200, 200, 429]
    );

    // The rejections are in the metrics, by route.
    let metrics = get(&format!("http://{}/metrics", h.host.admin_addr()))
        .await
        .body;
    assert_eq!(
        metric(
            &metrics,
            "atoll_gateway_rejections_total{route=\"/hello\",reason=\"rate_limited\"}"
        ),
        4.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "atoll_gateway_rejections_total{route=\"/keyed\",reason=\"rate_limited\"}"
        ),
        2.0
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_is_honoured_and_returned() {
    let h = TestHost::start(
        r#"
[components.hello]
source = "{hello}"
routes = ["/hello"]
"#,
    )
    .await;
    // A client's trace continues: same trace id, the gateway's own span id.
    let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = send_with("GET", &h.url("/hello"), &[("traceparent", sent)], "")
        .await
        .unwrap();
    let back = r.headers["traceparent"].to_str().unwrap();
    assert!(
        back.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{back}"
    );
    assert!(back.ends_with("-01"));
    assert_ne!(back, sent, "the gateway's span is a new one");
    // Without one (or with a malformed one), a new trace starts; 404s get one too.
    for (path, header) in [("/hello", None), ("/nowhere", Some("00-zz-11-01"))] {
        let headers: Vec<(&str, &str)> = header.map(|v| ("traceparent", v)).into_iter().collect();
        let r = send_with("GET", &h.url(path), &headers, "").await.unwrap();
        let back = r.headers["traceparent"].to_str().unwrap();
        let parts: Vec<&str> = back.split('-').collect();
        assert_eq!(parts.len(), 4, "{back}");
        assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("00", 32, 16));
        assert_ne!(parts[1], "0".repeat(32));
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_in_flight_is_503_with_retry_after() {
    let h = TestHost::start(
        r#"
[components.spin]
source = "{spin}"
routes = ["/spin"]
[components.spin.limits]
deadline = "1s"

[components.hello]
source = "{hello}"
routes = ["/hello"]

[gateway]
max_in_flight = 1
"#,
    )
    .await;
    // One request holds the only slot (the spin guest computes until its deadline) ...
    let url = h.url("/spin?loop");
    let busy = tokio::spawn(async move { get(&url).await.status });
    let mut answered = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = get(&h.url("/hello")).await;
        if r.status == 503 {
            answered = Some(r);
            break;
        }
    }
    // ... so another is refused at once, whatever its route.
    let r = answered.expect("a second request while the first ran got 503");
    assert_eq!(r.headers["retry-after"], "1");
    assert!(r.body.contains("request limit"), "{}", r.body);
    assert_eq!(busy.await.unwrap(), 504);
    assert_eq!(
        get(&h.url("/hello")).await.status,
        200,
        "the slot came back"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_backends_are_in_the_metrics() {
    let h = TestHost::start(
        r#"
[components.hello]
source = "{hello}"

[upstreams.greeters]
backends = [{ component = "hello", weight = 2 }]

[routes."/greet/..."]
upstream = "greeters"
"#,
    )
    .await;
    for _ in 0..3 {
        assert_eq!(get(&h.url("/greet/x")).await.status, 200);
    }
    let metrics = get(&format!("http://{}/metrics", h.host.admin_addr()))
        .await
        .body;
    let labels = "{upstream=\"greeters\",backend=\"component:hello\"}";
    assert_eq!(
        metric(&metrics, &format!("atoll_upstream_requests_total{labels}")),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, &format!("atoll_upstream_failures_total{labels}")),
        0.0
    );
    assert_eq!(
        metric(&metrics, &format!("atoll_upstream_available{labels}")),
        1.0
    );
    assert_eq!(
        metric(&metrics, &format!("atoll_upstream_healthy{labels}")),
        1.0
    );
    h.stop().await;
}
