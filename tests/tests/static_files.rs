//! Static routes end to end: a real host serves a directory through the
//! gateway pipeline (content and type, ETag then 304, ranges, HEAD, 405,
//! traversal attempts over raw sockets, a 5 MiB file streamed intact).

use std::net::SocketAddr;

use atoll_tests::{Reply, TestHost, client, get, send_with};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "a secret outside the served directory";
const BIG: usize = 5 << 20;

/// `len` bytes that differ from their neighbours, so a wrong offset shows.
fn numbered(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A host with `site/` served at `/app/...` (and its index at the exact
/// route `/home`), and a secret file beside `site/`.
async fn host() -> (TestHost, tempfile::TempDir) {
    let files = tempfile::tempdir().unwrap();
    let site = files.path().join("site");
    std::fs::create_dir_all(site.join("sub")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(site.join("app.js"), "console.log(1)").unwrap();
    std::fs::write(site.join("sub/index.html"), "<h1>sub</h1>").unwrap();
    std::fs::write(site.join("data.bin"), numbered(1000)).unwrap();
    std::fs::write(site.join("big.bin"), numbered(BIG)).unwrap();
    std::fs::write(files.path().join("secret.txt"), SECRET).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink("../secret.txt", site.join("escape.txt")).unwrap();
    let dir = site.display().to_string().replace('\\', "/");
    let h = TestHost::start(&format!(
        r#"
[routes."/app/..."]
static = "{dir}"
cache_control = "public, max-age=60"

[routes."/home"]
static = "{dir}"
"#
    ))
    .await;
    (h, files)
}

/// Sends `request` as is over a new connection and reads until it closes.
async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The status of a raw response, or 0 if there is none.
fn status_of(response: &str) -> u16 {
    response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn get_with(h: &TestHost, path: &str, headers: &[(&str, &str)]) -> Reply {
    send_with("GET", &h.url(path), headers, Bytes::new())
        .await
        .expect("GET")
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_files_with_type_cache_headers_and_304() {
    let (h, _files) = host().await;
    let r = get(&h.url("/app/app.js")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "console.log(1)"));
    assert_eq!(
        header(&r, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(header(&r, "cache-control"), Some("public, max-age=60"));
    assert_eq!(header(&r, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&r, "accept-ranges"), Some("bytes"));
    assert_eq!(header(&r, "content-length"), Some("14"));
    let etag = header(&r, "etag").expect("an ETag").to_string();
    assert!(!etag.starts_with("W/"), "a strong ETag: {etag}");
    let last_modified = header(&r, "last-modified")
        .expect("Last-Modified")
        .to_string();

    // Revalidation: 304 with no body, the validators and Cache-Control again.
    for conditional in [
        ("if-none-match", etag.as_str()),
        ("if-modified-since", last_modified.as_str()),
    ] {
        let r = get_with(&h, "/app/app.js", &[conditional]).await;
        assert_eq!(r.status, 304, "{conditional:?}");
        assert_eq!(r.body, "");
        assert_eq!(header(&r, "etag"), Some(etag.as_str()));
        assert_eq!(header(&r, "cache-control"), Some("public, max-age=60"));
    }
    let r = get_with(&h, "/app/app.js", &[("if-none-match", "\"stale\"")]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "console.log(1)"));

    // Directories serve their index; so does the exact route.
    for path in ["/app", "/app/", "/home"] {
        let r = get(&h.url(path)).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "<h1>home</h1>"),
            "{path}"
        );
        assert_eq!(header(&r, "content-type"), Some("text/html; charset=utf-8"));
    }
    assert_eq!(get(&h.url("/app/sub/")).await.body, "<h1>sub</h1>");
    assert_eq!(get(&h.url("/app/missing.js")).await.status, 404);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_other_methods() {
    let (h, _files) = host().await;
    let addr = h.host.addr();
    // HEAD: the GET's headers, Content-Length included, and no body (read
    // raw, so a body the client would drop cannot hide).
    let head = raw(
        addr,
        "HEAD /app/data.bin HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-length: 1000\r\n"),
        "{head}"
    );
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head:?}");

    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let r = send_with(method, &h.url("/app/app.js"), &[], "x")
            .await
            .unwrap();
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(header(&r, "allow"), Some("GET, HEAD"), "{method}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_ranges() {
    let (h, _files) = host().await;
    let data = numbered(1000);
    let etag = header(&get(&h.url("/app/data.bin")).await, "etag")
        .unwrap()
        .to_string();
    for (range, start, end) in [
        ("bytes=0-9", 0, 9),
        ("bytes=500-", 500, 999),
        ("bytes=-100", 900, 999),
        ("bytes=990-5000", 990, 999),
    ] {
        let r = ranged(&h, "/app/data.bin", &[("range", range)]).await;
        assert_eq!(r.0, 206, "{range}");
        assert_eq!(
            r.1.get("content-range").unwrap(),
            &format!("bytes {start}-{end}/1000"),
            "{range}"
        );
        assert!(r.2[..] == data[start..=end], "{range}: wrong bytes");
    }
    for range in ["bytes=1000-", "bytes=-0"] {
        let r = ranged(&h, "/app/data.bin", &[("range", range)]).await;
        assert_eq!(r.0, 416, "{range}");
        assert_eq!(r.1.get("content-range").unwrap(), "bytes */1000");
    }
    // Several ranges: the whole file.
    let r = ranged(&h, "/app/data.bin", &[("range", "bytes=0-1,10-11")]).await;
    assert_eq!((r.0, r.2.len()), (200, 1000));
    // If-Range: the range only while the file is the one the client has.
    let r = ranged(
        &h,
        "/app/data.bin",
        &[("range", "bytes=0-9"), ("if-range", &etag)],
    )
    .await;
    assert_eq!((r.0, r.2.len()), (206, 10));
    let r = ranged(
        &h,
        "/app/data.bin",
        &[("range", "bytes=0-9"), ("if-range", "\"an older one\"")],
    )
    .await;
    assert_eq!((r.0, r.2.len()), (200, 1000));
    h.stop().await;
}

/// GET with headers; status, headers and the body's bytes.
async fn ranged(
    h: &TestHost,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, Bytes) {
    let mut req = http::Request::get(h.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = client()
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_is_streamed_intact() {
    let (h, _files) = host().await;
    let (status, headers, body) = ranged(&h, "/app/big.bin", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("content-length").unwrap(), &BIG.to_string());
    assert_eq!(body.len(), BIG);
    assert!(
        body[..] == numbered(BIG)[..],
        "the bytes differ from the file"
    );
    // The last megabyte, by suffix range.
    let (status, headers, body) = ranged(&h, "/app/big.bin", &[("range", "bytes=-1048576")]).await;
    assert_eq!(status, 206);
    assert_eq!(
        headers.get("content-range").unwrap(),
        &format!("bytes {}-{}/{BIG}", BIG - (1 << 20), BIG - 1)
    );
    assert!(body[..] == numbered(BIG)[BIG - (1 << 20)..]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_attempts_never_leave_the_directory() {
    let (h, _files) = host().await;
    let addr = h.host.addr();
    // Raw request targets, which an HTTP client would normalize or refuse:
    // each is refused by the static route itself (400, before the file
    // system), or for a symlink out of the directory, not found.
    for (target, expected) in [
        ("/app/../secret.txt", 400),
        ("/app/sub/../../secret.txt", 400),
        ("/app/%2e%2e/secret.txt", 400),
        ("/app/%2E%2E/%2e%2e/secret.txt", 400),
        ("/app/..%2fsecret.txt", 400),
        ("/app/..%5csecret.txt", 400),
        ("/app/..\\secret.txt", 400),
        ("/app/app.js%00", 400),
        ("/app/./../secret.txt", 400),
        ("http://x/app/../secret.txt", 400),
        ("/app/escape.txt", 404),
    ] {
        let response = raw(
            addr,
            &format!("GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status_of(&response), expected, "{target}:\n{response}");
        if expected == 400 {
            assert!(response.contains("bad path: "), "{target}:\n{response}");
        }
        assert!(!response.contains(SECRET), "{target} leaked the file");
    }
    // The route still serves afterwards.
    assert_eq!(get(&h.url("/app/app.js")).await.status, 200);
    h.stop().await;
}
