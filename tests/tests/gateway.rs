//! Routing, protocols and per-request isolation: traps, loops, memory, concurrency.

use std::time::{Duration, Instant};

use atoll_tests::{TestHost, get, send};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

const ROUTES: &str = r#"
[components.hello]
source = "{hello}"
routes = ["/hello", "/api/..."]

[components.counter]
source = "{kv-counter}"
routes = ["/api/counter/..."]

[components.root]
source = "{wstd-hello}"
routes = ["/..."]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_exact_prefix_longest_and_fallback() {
    let h = TestHost::start(ROUTES).await;
    let r = get(&h.url("/hello")).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello from atoll: /hello\n")
    );
    // Exact routes match only themselves; the catch-all takes the rest.
    let r = get(&h.url("/hello/more")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "wstd says hi"));
    // Prefix routes match the prefix itself and below it, by whole segments.
    let r = get(&h.url("/api")).await;
    assert_eq!(r.body, "hello from atoll: /api\n");
    let r = get(&h.url("/api/x/y?q=1")).await;
    assert_eq!(r.body, "hello from atoll: /api/x/y\n");
    let r = get(&h.url("/apix")).await;
    assert_eq!(r.body, "wstd says hi");
    // The longest prefix wins.
    let r = get(&h.url("/api/counter/incr/visits")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "1"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404() {
    let h = TestHost::start(
        r#"
[components.hello]
source = "{hello}"
routes = ["/hello"]
"#,
    )
    .await;
    let r = get(&h.url("/nope")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, "atoll: no route for /nope\n");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_body_reaches_component_and_http2_works() {
    let h = TestHost::start(ROUTES).await;
    let r = send("POST", &h.url("/hello"), "ping").await.unwrap();
    assert_eq!(r.body, "echo: ping");
    // HTTP/2 with prior knowledge (h2c).
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let res = client.get(h.url("/hello").parse().unwrap()).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello from atoll: /hello\n");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_ends_only_that_request() {
    let h = TestHost::start(
        r#"
[components.trap]
source = "{trap}"
routes = ["/trap"]
[components.hello]
source = "{hello}"
routes = ["/hello"]
"#,
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let url = match i % 6 {
            0 => h.url("/trap?panic"),
            3 => h.url("/trap?unreachable"),
            _ => h.url("/trap"),
        };
        tasks.push(tokio::spawn(async move { (i, get(&url).await) }));
    }
    for t in tasks {
        let (i, r) = t.await.unwrap();
        if i % 3 == 0 {
            assert_eq!(r.status, 500, "request {i}: {}", r.body);
            assert!(
                r.body
                    .starts_with("atoll: component `trap` failed: wasm trap"),
                "{}",
                r.body
            );
        } else {
            assert_eq!((r.status, r.body.as_str()), (200, "ok"), "request {i}");
        }
    }
    assert_eq!(get(&h.url("/hello")).await.status, 200);
    assert_eq!(get(&h.url("/trap")).await.body, "ok");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_gets_504_while_others_are_served() {
    let h = TestHost::start(
        r#"
[components.spin]
source = "{spin}"
routes = ["/spin"]
[components.spin.limits]
deadline = "400ms"
"#,
    )
    .await;
    let url = h.url("/spin?loop");
    let started = Instant::now();
    let looping = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // While one instance spins, the same component still serves others.
    let r = get(&h.url("/spin")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert!(!looping.is_finished());
    let r = looping.await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(
        r.body
            .contains("component `spin` did not respond within its deadline"),
        "{}",
        r.body
    );
    assert!(took >= Duration::from_millis(400), "ended early: {took:?}");
    // Correctness bound (deadline + tick + scheduling slack), not a benchmark.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_fails_the_grow_and_never_the_host() {
    let h = TestHost::start(
        r#"
[components.hog]
source = "{memory-hog}"
routes = ["/hog"]
[components.hog.limits]
memory = "32MiB"
"#,
    )
    .await;
    let r = get(&h.url("/hog?mb=8")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "allocated 8 MiB"));
    let r = get(&h.url("/hog?mb=64")).await;
    assert_eq!(r.status, 507, "{}", r.body);
    assert!(r.body.starts_with("allocation failed after"), "{}", r.body);
    let r = get(&h.url("/hog?abort&mb=64")).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("component `hog` failed"), "{}", r.body);
    // A fresh instance starts clean.
    let r = get(&h.url("/hog?mb=8")).await;
    assert_eq!(r.status, 200);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_answers_503_at_once() {
    let h = TestHost::start(
        r#"
[components.spin]
source = "{spin}"
routes = ["/spin"]
[components.spin.limits]
max_concurrency = 1
deadline = "1500ms"
"#,
    )
    .await;
    let url = h.url("/spin?loop");
    let busy = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = get(&h.url("/spin")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    assert!(
        r.body
            .contains("component `spin` is at its concurrency limit (1)"),
        "{}",
        r.body
    );
    assert!(!busy.is_finished(), "the 503 came while the slot was held");
    assert_eq!(busy.await.unwrap().status, 504);
    // The slot is free again.
    assert_eq!(get(&h.url("/spin")).await.status, 200);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_limit_is_per_component() {
    // Same component twice, with different wasm stack limits (so two engines).
    let h = TestHost::start(
        r#"
[components.small]
source = "{trap}"
routes = ["/small"]
[components.small.limits]
stack = "64KiB"

[components.big]
source = "{trap}"
routes = ["/big"]
[components.big.limits]
stack = "4MiB"
"#,
    )
    .await;
    // 50k frames need well over 64 KiB of wasm stack and well under 4 MiB.
    let r = get(&h.url("/big?recurse=50000")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "depth 50000"));
    let r = get(&h.url("/small?recurse=50000")).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(
        r.body
            .contains("component `small` failed: wasm trap: call stack exhausted"),
        "{}",
        r.body
    );
    let r = get(&h.url("/small?recurse=10")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "depth 10"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_without_the_body_and_without_waiting() {
    let h = TestHost::start(
        r#"
[components.counter]
source = "{kv-counter}"
routes = ["/kv/..."]
[components.counter.limits]
deadline = "5s"
"#,
    )
    .await;
    let big = "x".repeat(200_000);
    assert_eq!(
        send("PUT", &h.url("/kv/set/big"), big.clone())
            .await
            .unwrap()
            .status,
        204
    );
    // The guest writes its 200 KB body even for HEAD; the gateway must not
    // wait on a body nobody reads.
    let started = Instant::now();
    let r = send("HEAD", &h.url("/kv/get/big"), "").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.headers.get("content-length").unwrap(), "200000");
    assert_eq!(r.body, "");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "HEAD waited for the deadline"
    );
    assert_eq!(get(&h.url("/kv/get/big")).await.body.len(), 200_000);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_hold_the_instance() {
    use tokio::io::AsyncWriteExt;
    let h = TestHost::start(
        r#"
[components.hello]
source = "{hello}"
routes = ["/echo"]
[components.hello.limits]
max_concurrency = 1
deadline = "1s"
memory = "256MiB"

[gateway]
max_body = "32MiB"
"#,
    )
    .await;
    // Upload 16 MiB to the echo guest, then never read its 16 MiB answer: the
    // answer outgrows the socket buffers and the guest blocks writing it.
    let mut stream = tokio::net::TcpStream::connect(h.host.addr()).await.unwrap();
    let body = vec![b'x'; 16 << 20];
    let head = format!(
        "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(&h.url("/echo")).await.status,
        503,
        "the slot is busy meanwhile"
    );
    // The deadline ends the stuck invocation on the clock and frees the slot,
    // whether or not the client ever reads again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = get(&h.url("/echo")).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello from atoll: /echo\n")
    );
    drop(stream);
    h.stop().await;
}
