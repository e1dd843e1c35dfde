//! Request and connection limits, spoken over raw TCP where a client would
//! refuse to send the request: header count and size, slow clients,
//! request smuggling forms, body size and pace, max connections and max in
//! flight. The kv counter guest counts the requests that reach it, so
//! a smuggled second request would show.

use std::net::SocketAddr;
use std::time::Duration;

use atoll_tests::{TestHost, get};
use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A counter component at /c/... (`/c/incr/KEY` counts, `/c/get/KEY` reads)
/// and hello at /hello, with the given `[gateway]` settings.
fn manifest(gateway: &str) -> String {
    format!(
        r#"
[components.counter]
source = "{{kv-counter}}"
routes = ["/c/..."]

[components.hello]
source = "{{hello}}"
routes = ["/hello"]

[gateway]
{gateway}
"#
    )
}

/// What a raw exchange got back.
#[derive(Debug)]
struct Raw {
    /// Everything the server sent.
    text: String,
    /// The server closed the connection.
    closed: bool,
}

impl Raw {
    /// Status codes of the responses in `text`, in order.
    fn statuses(&self) -> Vec<u16> {
        self.text
            .match_indices("HTTP/1.1 ")
            .filter_map(|(i, _)| self.text.get(i + 9..i + 12)?.parse().ok())
            .collect()
    }
}

/// Sends `bytes` on a new connection and reads until the server closes it,
/// or until it has been quiet for `quiet` (then `closed` is false).
async fn exchange(addr: SocketAddr, bytes: &[u8], quiet: Duration) -> Raw {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_all(&mut stream, quiet).await
}

async fn read_all(stream: &mut TcpStream, quiet: Duration) -> Raw {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout(quiet, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    Raw {
        text: String::from_utf8_lossy(&got).into_owned(),
        closed,
    }
}

/// Long enough that an open connection is not mistaken for a closed one.
const QUIET: Duration = Duration::from_secs(3);

/// The counter's value for `key` (0 when never counted).
async fn count(h: &TestHost, key: &str) -> u64 {
    let r = get(&h.url(&format!("/c/get/{key}"))).await;
    match r.status {
        404 => 0,
        200 => r.body.parse().unwrap(),
        s => panic!("counter answered {s}: {}", r.body),
    }
}

/// A second request, pipelined behind the first; it must never run.
const SMUGGLED: &str = "GET /c/incr/smuggled HTTP/1.1\r\nhost: x\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_counted() {
    // The control for the smuggling tests: two well-formed pipelined
    // requests on one connection both reach the component.
    let h = TestHost::start(&manifest("")).await;
    let req = "GET /c/incr/smuggled HTTP/1.1\r\nhost: x\r\n\r\n".repeat(2);
    let r = exchange(h.host.addr(), req.as_bytes(), QUIET).await;
    assert_eq!(r.statuses(), [200, 200], "{r:?}");
    assert_eq!(count(&h, "smuggled").await, 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_forms_are_refused_and_the_connection_closed() {
    let h = TestHost::start(&manifest("")).await;
    let addr = h.host.addr();
    // Each form is 400 from hyper's parser, before any component runs, and
    // the connection is closed with whatever followed it unread.
    let refused = [
        (
            "duplicate Content-Length with different values",
            "POST /c/incr/first HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\ncontent-length: 44\r\n\r\n",
        ),
        (
            "Transfer-Encoding whose last coding is not chunked",
            "POST /c/incr/first HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding identity",
            "POST /c/incr/first HTTP/1.1\r\nhost: x\r\ntransfer-encoding: identity\r\ncontent-length: 0\r\n\r\n",
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            "POST /c/incr/first HTTP/1.0\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "obs-fold (a header line continued on the next)",
            "GET /c/incr/first HTTP/1.1\r\nhost: x\r\nx-folded: a\r\n b\r\n\r\n",
        ),
        (
            "a space before the colon",
            "GET /c/incr/first HTTP/1.1\r\nhost: x\r\ncontent-length : 0\r\n\r\n",
        ),
        (
            "a bare CR inside a header line",
            "GET /c/incr/first HTTP/1.1\r\nhost: x\r\nx-a: 1\rx-b: 2\r\n\r\n",
        ),
    ];
    for (form, head) in refused {
        let r = exchange(addr, format!("{head}{SMUGGLED}").as_bytes(), QUIET).await;
        assert_eq!(r.statuses(), [400], "{form}: {r:?}");
        assert!(r.closed, "{form}: connection left open");
    }
    assert_eq!(count(&h, "first").await, 0);
    assert_eq!(count(&h, "smuggled").await, 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_chunked_and_then_closed() {
    // RFC 9112 6.3: Transfer-Encoding overrides Content-Length, and the
    // connection must close after the response. hyper does exactly that:
    // the body is read as chunked (so the bytes a Content-Length-reading
    // front end would have taken as the next request are body), one answer
    // is sent and the connection closes without reading further.
    let h = TestHost::start(&manifest("")).await;
    let smuggle_in_body = format!(
        "POST /c/incr/first HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n{SMUGGLED}",
        SMUGGLED.len()
    );
    let r = exchange(h.host.addr(), smuggle_in_body.as_bytes(), QUIET).await;
    assert_eq!(r.statuses(), [200], "{r:?}");
    assert!(r.closed, "connection left open: {r:?}");
    // Content-Length first or last makes no difference.
    let te_first = format!(
        "POST /c/incr/first HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 0\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    let r = exchange(h.host.addr(), te_first.as_bytes(), QUIET).await;
    assert_eq!(r.statuses(), [200], "{r:?}");
    assert!(r.closed, "connection left open: {r:?}");
    assert_eq!(count(&h, "first").await, 2);
    assert_eq!(count(&h, "smuggled").await, 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunk_sizes_fail_the_request_and_end_the_connection() {
    let h = TestHost::start(&manifest("")).await;
    for (form, chunk) in [
        ("a chunk size that is not hex", "zz\r\nhello\r\n0\r\n\r\n"),
        ("a negative chunk size", "-5\r\nhello\r\n0\r\n\r\n"),
        (
            "a chunk size that overflows 64 bits",
            "10000000000000000\r\nhello\r\n0\r\n\r\n",
        ),
        ("a chunk longer than its size", "2\r\nhello\r\n0\r\n\r\n"),
    ] {
        // The head is fine, so the request is routed; reading the body
        // fails (the SDK answers 400 without calling the handler), and
        // hyper closes the connection instead of looking for a next request.
        let req = format!(
            "POST /c/incr/first HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{chunk}{SMUGGLED}"
        );
        let r = exchange(h.host.addr(), req.as_bytes(), QUIET).await;
        assert_eq!(r.statuses(), [400], "{form}: {r:?}");
        assert!(r.closed, "{form}: connection left open: {r:?}");
    }
    assert_eq!(count(&h, "first").await, 0);
    assert_eq!(count(&h, "smuggled").await, 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_body_are_413_and_close_the_connection() {
    let h = TestHost::start(&manifest("max_body = \"1KiB\"")).await;
    let addr = h.host.addr();
    let chunked = |sizes: &[usize]| {
        let mut s = String::from(
            "POST /c/incr/big HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        for n in sizes {
            s.push_str(&format!("{n:x}\r\n{}\r\n", "b".repeat(*n)));
        }
        s.push_str("0\r\n\r\n");
        s
    };
    // At the limit, declared or chunked, the body is served.
    let exact = format!(
        "POST /c/incr/small HTTP/1.1\r\nhost: x\r\ncontent-length: 1024\r\n\r\n{}",
        "b".repeat(1024)
    );
    let r = exchange(addr, exact.as_bytes(), Duration::from_millis(500)).await;
    assert_eq!(r.statuses(), [200], "{r:?}");
    let r = exchange(
        addr,
        chunked(&[500, 524]).replace("/big", "/small").as_bytes(),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(r.statuses(), [200], "{r:?}");

    // A declared length over the limit is refused before the component
    // runs, and the unread body is never taken for a next request.
    let declared =
        format!("POST /c/incr/big HTTP/1.1\r\nhost: x\r\ncontent-length: 1025\r\n\r\n{SMUGGLED}");
    let r = exchange(addr, declared.as_bytes(), QUIET).await;
    assert_eq!(r.statuses(), [413], "{r:?}");
    assert!(
        r.text
            .contains("larger than the gateway's max_body (1.0 KiB)"),
        "{r:?}"
    );
    assert!(r.closed, "connection left open");
    // A chunked body is counted as it streams: the component has begun
    // reading when the limit cuts it off.
    let r = exchange(
        addr,
        format!("{}{SMUGGLED}", chunked(&[500, 500, 500])).as_bytes(),
        QUIET,
    )
    .await;
    assert_eq!(r.statuses(), [413], "{r:?}");
    assert!(r.closed, "connection left open");
    // The same over HTTP/2, where the stream is refused and the connection serves on.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let post = |n: usize| {
        let req = http::Request::post(h.url("/c/incr/h2"))
            .body(Full::new(Bytes::from(vec![b'b'; n])))
            .unwrap();
        h2.request(req)
    };
    assert_eq!(post(1025).await.unwrap().status(), 413);
    assert_eq!(post(1024).await.unwrap().status(), 200);

    assert_eq!(count(&h, "small").await, 2);
    assert_eq!(count(&h, "big").await, 0);
    assert_eq!(count(&h, "h2").await, 1);
    assert_eq!(count(&h, "smuggled").await, 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_408_and_closes_the_connection() {
    let h = TestHost::start(&manifest("body_timeout = \"500ms\"")).await;
    // Half the declared body, then nothing.
    let mut stalled = TcpStream::connect(h.host.addr()).await.unwrap();
    stalled
        .write_all(b"POST /c/incr/stalled HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n12345")
        .await
        .unwrap();
    // The same, chunked: one chunk, then nothing.
    let mut chunked = TcpStream::connect(h.host.addr()).await.unwrap();
    chunked
        .write_all(b"POST /c/incr/stalled HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\n12345\r\n")
        .await
        .unwrap();
    for stream in [&mut stalled, &mut chunked] {
        let r = read_all(stream, Duration::from_secs(10)).await;
        assert_eq!(r.statuses(), [408], "{r:?}");
        assert!(
            r.text
                .contains("stalled for longer than body_timeout (500ms)"),
            "{r:?}"
        );
        assert!(r.closed, "connection left open");
    }
    // A body sent in pauses shorter than body_timeout is served.
    let mut slow = TcpStream::connect(h.host.addr()).await.unwrap();
    slow.write_all(b"POST /c/incr/paced HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\n")
        .await
        .unwrap();
    for b in [b"a", b"b", b"c", b"d"] {
        tokio::time::sleep(Duration::from_millis(100)).await;
        slow.write_all(b).await.unwrap();
    }
    let r = read_all(&mut slow, Duration::from_millis(500)).await;
    assert_eq!(r.statuses(), [200], "{r:?}");
    assert_eq!(count(&h, "stalled").await, 0);
    assert_eq!(count(&h, "paced").await, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_are_431() {
    let h = TestHost::start(&manifest("max_headers = 20\nmax_header_size = \"8KiB\"")).await;
    let addr = h.host.addr();
    let head = |headers: usize, value: usize| {
        let mut s = String::from("GET /c/incr/first HTTP/1.1\r\nhost: x\r\n");
        for i in 0..headers {
            s.push_str(&format!("x-h{i}: {}\r\n", "v".repeat(value)));
        }
        s.push_str("\r\n");
        s
    };
    // At the limits: served (host + 19 = 20 fields; a head under 8 KiB).
    let r = exchange(addr, head(19, 1).as_bytes(), Duration::from_millis(500)).await;
    assert_eq!(r.statuses(), [200], "{r:?}");
    let r = exchange(addr, head(1, 7000).as_bytes(), Duration::from_millis(500)).await;
    assert_eq!(r.statuses(), [200], "{r:?}");
    // One field too many.
    let r = exchange(addr, format!("{}{SMUGGLED}", head(20, 1)).as_bytes(), QUIET).await;
    assert_eq!(r.statuses(), [431], "{r:?}");
    assert!(r.closed);
    // A head over the size limit, in one field or in many.
    for big in [head(1, 9000), head(19, 500), head(1, 200_000)] {
        let r = exchange(addr, format!("{big}{SMUGGLED}").as_bytes(), QUIET).await;
        assert_eq!(r.statuses(), [431], "{} bytes: {r:?}", big.len());
        assert!(r.closed);
    }
    assert_eq!(count(&h, "first").await, 2);
    assert_eq!(count(&h, "smuggled").await, 0);

    // HTTP/2 limits the header list by size: over it, that stream gets 431
    // and the connection serves on.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let send = |value: usize| {
        let req = http::Request::get(h.url("/c/incr/h2"))
            .header("x-big", "v".repeat(value))
            .body(Full::new(Bytes::new()))
            .unwrap();
        h2.request(req)
    };
    assert_eq!(send(9000).await.unwrap().status(), 431);
    let ok = send(100).await.unwrap();
    assert_eq!(
        (ok.version(), ok.status().as_u16()),
        (http::Version::HTTP_2, 200)
    );
    assert_eq!(count(&h, "h2").await, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_others_served_meanwhile() {
    let h = TestHost::start(&manifest("header_timeout = \"1s\"")).await;
    let addr = h.host.addr();

    // Slowloris: a request head trickling in, a byte at a time.
    let trickle = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /c/incr/slow HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        for sent in 0..100 {
            // Closed when a write fails or a read sees the end.
            if stream.write_all(b"x").await.is_err() {
                return sent;
            }
            if let Ok(r) =
                tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await
            {
                assert!(matches!(r, Ok(0) | Err(_)), "answered: {r:?}");
                return sent;
            }
        }
        panic!("still open after 100 bytes (10 s) with header_timeout 1s");
    });
    // Clients that send nothing, or half the HTTP/2 preface.
    let silent = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        read_all(&mut stream, Duration::from_secs(10)).await
    });
    // A keep-alive connection served once, then idle.
    let idle = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /c/incr/idle HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        read_all(&mut stream, Duration::from_secs(10)).await
    });
    let preface = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        read_all(&mut stream, Duration::from_secs(10)).await
    });

    // Meanwhile, normal clients are served.
    let mut served = 0;
    while !trickle.is_finished() {
        let r = get(&h.url("/c/incr/normal")).await;
        assert_eq!(r.status, 200);
        served += 1;
    }
    let sent = trickle.await.unwrap();
    assert!(sent > 0, "closed before the trickle began");
    assert!(served > 0);
    assert_eq!(count(&h, "normal").await, served);
    assert_eq!(count(&h, "slow").await, 0);
    for (what, r) in [
        ("silent", silent.await.unwrap()),
        ("preface", preface.await.unwrap()),
    ] {
        assert!(r.closed, "{what}: still open");
        assert_eq!(r.text, "", "{what}");
    }
    let r = idle.await.unwrap();
    assert_eq!(r.statuses(), [200], "{r:?}");
    assert!(r.closed, "idle keep-alive connection still open");
    assert_eq!(count(&h, "idle").await, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_get_503_and_close() {
    let h = TestHost::start(&manifest("max_connections = 2")).await;
    let addr = h.host.addr();
    let one_request = "GET /c/incr/n HTTP/1.1\r\nhost: x\r\n\r\n";
    // Two keep-alive connections, each served once and left open.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(one_request.as_bytes()).await.unwrap();
        let r = read_all(&mut s, Duration::from_millis(500)).await;
        assert_eq!(r.statuses(), [200], "{r:?}");
        assert!(!r.closed);
        open.push(s);
    }
    // The third is turned away, whether or not it sent a request.
    let r = exchange(addr, one_request.as_bytes(), QUIET).await;
    assert_eq!(r.statuses(), [503], "{r:?}");
    assert!(
        r.text
            .to_ascii_lowercase()
            .contains("\r\nretry-after: 1\r\n"),
        "{r:?}"
    );
    assert!(r.closed);
    let r = exchange(addr, b"", QUIET).await;
    assert_eq!(r.statuses(), [503], "{r:?}");
    assert!(r.closed);
    assert_eq!(
        count_with(&mut open[0], "n").await,
        2,
        "the turned away did not run"
    );

    // Closing one frees its slot for the next connection.
    drop(open.pop());
    let mut served = false;
    for _ in 0..50 {
        let r = exchange(addr, one_request.as_bytes(), Duration::from_millis(500)).await;
        match r.statuses()[..] {
            [200] => {
                served = true;
                break;
            }
            [503] => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => panic!("{r:?}"),
        }
    }
    assert!(served, "the freed slot was never reused");
    h.stop().await;
}

/// Reads counter `key` over an open keep-alive connection.
async fn count_with(stream: &mut TcpStream, key: &str) -> u64 {
    let req = format!("GET /c/get/{key} HTTP/1.1\r\nhost: x\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let r = read_all(stream, Duration::from_millis(500)).await;
    assert_eq!(r.statuses(), [200], "{r:?}");
    r.text.rsplit("\r\n\r\n").next().unwrap().parse().unwrap()
}
