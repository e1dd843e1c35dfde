//! Proxying to plain HTTP backends: the client, the request as the backend
//! sees it, and the response as the client sees it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::gateway::{BoxError, GatewayBody};

/// What the client sends to backends.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A keep-alive HTTP/1.1 client for an upstream's URL backends.
pub type ProxyClient = Client<HttpConnector, ProxyBody>;

/// Time to open a connection to a backend before it counts as down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The client: pooled keep-alive connections, closed after 90 s idle.
pub fn client() -> ProxyClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Headers that describe one hop, not the message: never forwarded.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers: the fixed ones, `Proxy-*`, and those the
/// `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

/// `base`'s path (without a trailing `/`) followed by `path_and_query`.
pub fn backend_uri(base: &Uri, path_and_query: &str) -> Result<Uri, String> {
    let prefix = base.path().trim_end_matches('/');
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    let text = format!("http://{authority}{prefix}{path_and_query}");
    text.parse()
        .map_err(|e| format!("`{text}` is not a valid URI: {e}"))
}

/// Turns a client's request into the backend's: the URI of the backend with
/// the request's path and query, `Host` the backend's, hop-by-hop headers
/// removed, `X-Forwarded-For` with the client appended, `X-Forwarded-Proto`
/// and `X-Forwarded-Host` as the gateway saw them. Other headers
/// (`traceparent` among them) pass as they are.
pub fn backend_request<B>(
    mut req: Request<B>,
    base: &Uri,
    client: SocketAddr,
    https: bool,
) -> Result<Request<B>, String> {
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri = backend_uri(base, path_and_query)?;
    let original_host = req.headers().get(header::HOST).cloned().or_else(|| {
        let authority = req.uri().authority()?;
        HeaderValue::from_str(authority.as_str()).ok()
    });
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    // The gateway already answered any `Expect: 100-continue` of the client.
    headers.remove(header::EXPECT);
    let forwarded_for = {
        let earlier: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let client = client.ip().to_canonical().to_string();
        match earlier.is_empty() {
            true => client,
            false => format!("{}, {client}", earlier.join(", ")),
        }
    };
    headers.insert(
        "x-forwarded-for",
        HeaderValue::from_str(&forwarded_for).map_err(|e| e.to_string())?,
    );
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    match original_host {
        Some(host) => headers.insert("x-forwarded-host", host),
        None => headers.remove("x-forwarded-host"),
    };
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    headers.insert(
        header::HOST,
        HeaderValue::from_str(authority).map_err(|e| e.to_string())?,
    );
    Ok(req)
}

/// The backend's response as the client gets it: hop-by-hop headers
/// removed, the body streamed.
pub fn client_response(res: Response<Incoming>) -> Response<GatewayBody> {
    let (mut parts, body) = res.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
}

/// An empty request body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

/// GETs `path` (after the base URL's path) on a backend and reads up to
/// 64 KiB of the answer, so the connection can be reused. 2xx is healthy.
pub async fn probe(client: &ProxyClient, base: &Uri, path: &str) -> Result<u16, String> {
    let uri = backend_uri(base, path)?;
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    let req = Request::get(uri)
        .header(header::HOST, authority)
        .header(header::USER_AGENT, "atoll-health-check")
        .body(empty())
        .map_err(|e| e.to_string())?;
    let res = client.request(req).await.map_err(|e| error_chain(&e))?;
    let status = res.status().as_u16();
    let mut body = res.into_body();
    let mut read = 0;
    while read < 64 << 10 {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(e)) => return Err(format!("status {status}, body failed: {e}")),
            None => break,
        }
    }
    Ok(status)
}

/// An error with its causes, `outer: inner: ...` (hyper's own message says
/// little without them).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_with_those_connection_names() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort();
        assert_eq!(left, ["traceparent", "x-kept"]);
    }

    #[test]
    fn the_request_path_follows_the_backend_path() {
        let base: Uri = "http://10.0.0.1:9000".parse().unwrap();
        let u = backend_uri(&base, "/api/x?q=1&r=2").unwrap();
        assert_eq!(u.to_string(), "http://10.0.0.1:9000/api/x?q=1&r=2");
        let base: Uri = "http://10.0.0.1:9000/v1/".parse().unwrap();
        let u = backend_uri(&base, "/api/x?q=1").unwrap();
        assert_eq!(u.to_string(), "http://10.0.0.1:9000/v1/api/x?q=1");
    }

    #[test]
    fn forwarding_headers() {
        let req = Request::get("/api/x?q=1")
            .header("host", "edge.example")
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-proto", "ftp")
            .header("expect", "100-continue")
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .body(())
            .unwrap();
        let base: Uri = "http://10.0.0.1:9000/v1".parse().unwrap();
        let client: SocketAddr = "[::ffff:192.0.2.1]:5000".parse().unwrap();
        let out = backend_request(req, &base, client, true).unwrap();
        assert_eq!(out.uri(), "http://10.0.0.1:9000/v1/api/x?q=1");
        assert_eq!(out.version(), Version::HTTP_11);
        let h = out.headers();
        assert_eq!(h["host"], "10.0.0.1:9000");
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 192.0.2.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "edge.example");
        assert!(h.get("expect").is_none() && h.get("x-hop").is_none());
    }

    #[test]
    fn error_chain_names_the_causes() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(
            error_chain(&Outer(inner)),
            "client error (Connect): refused"
        );
    }
}
