//! HTTP in and out: the [`Request`] a handler gets, the [`Response`] it
//! returns, and [`send`] for outbound requests.
//!
//! Serving (with [`http_handler!`](crate::http_handler)):
//!
//! ```no_run
//! use atoll_sdk::http::{Request, Response};
//!
//! #[derive(serde::Deserialize)]
//! struct Order {
//!     item: String,
//! }
//!
//! fn handle(req: Request) -> Response {
//!     match (req.method(), req.path()) {
//!         ("GET", "/") => Response::text(200, "ok\n"),
//!         ("POST", "/orders") => match req.json::<Order>() {
//!             Ok(order) => Response::json(201, &serde_json::json!({ "item": order.item })),
//!             Err(err) => Response::bad_request(format!("bad order: {err}\n")),
//!         },
//!         _ => Response::not_found(),
//!     }
//! }
//!
//! atoll_sdk::http_handler!(handle);
//! ```
//!
//! Calling another service (the host decides which hosts are reachable; a
//! denied request fails with a [`SendError`] whose text names the WASI error
//! code, such as `HttpRequestDenied`):
//!
//! ```no_run
//! use atoll_sdk::http::{OutgoingRequest, send};
//!
//! let resp = send(OutgoingRequest::get("https://example.com/status").header("accept", "text/plain"))?;
//! println!("{} {}", resp.status(), String::from_utf8_lossy(resp.body_bytes()));
//! # Ok::<(), atoll_sdk::http::SendError>(())
//! ```

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingRequest, IncomingResponse, Method, OutgoingBody,
    OutgoingRequest as WasiOutgoingRequest, OutgoingResponse, RequestOptions, ResponseOutparam,
    Scheme,
};
use crate::streams;

/// Header names and values, in order. Names are lowercase.
pub type Headers = Vec<(String, Vec<u8>)>;

/// An incoming HTTP request, with its whole body already read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    method: String,
    path_with_query: String,
    headers: Headers,
    body: Vec<u8>,
}

impl Request {
    /// A request built by hand, for unit-testing a handler natively.
    /// `path_with_query` is what follows the authority, e.g. `/a/b?x=1`;
    /// no headers and an empty body by default.
    pub fn new(method: &str, path_with_query: &str) -> Request {
        Request {
            method: method.to_ascii_uppercase(),
            path_with_query: path_with_query.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header (name lowercased). Default: no headers.
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Request {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body. Default: empty.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    fn from_wasi(request: IncomingRequest) -> Result<Request, String> {
        let method = method_name(&request.method());
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let headers = request
            .headers()
            .entries()
            .into_iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), value))
            .collect();
        let body = request
            .consume()
            .map_err(|()| "request body already consumed".to_string())?;
        let stream = body
            .stream()
            .map_err(|()| "request body stream already taken".to_string())?;
        let bytes = streams::read_to_end(&stream)?;
        drop(stream);
        // Trailers are not exposed; the body resource just has to go.
        drop(IncomingBody::finish(body));
        Ok(Request {
            method,
            path_with_query,
            headers,
            body: bytes,
        })
    }

    /// The method in upper case, e.g. `"GET"`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path and query as sent, e.g. `/items/a%20b?limit=10`.
    pub fn path_with_query(&self) -> &str {
        &self.path_with_query
    }

    /// The path without the query, still percent-encoded (see
    /// [`percent_decode`]).
    pub fn path(&self) -> &str {
        match self.path_with_query.split_once('?') {
            Some((path, _)) => path,
            None => &self.path_with_query,
        }
    }

    /// The raw query string without the `?`, empty when there is none.
    pub fn query(&self) -> &str {
        match self.path_with_query.split_once('?') {
            Some((_, query)) => query,
            None => "",
        }
    }

    /// The first value of query parameter `name`, percent-decoded (`+` is a
    /// space). A parameter without `=` has the value `""`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_pairs(self.query())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// Every query parameter in order, percent-decoded.
    pub fn query_params(&self) -> Vec<(String, String)> {
        query_pairs(self.query()).collect()
    }

    /// The first value of header `name` (any case), when it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// All headers in order; names are lowercase.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }

    /// The body decoded from JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// An HTTP response: what a handler returns, and what [`send`] gets back.
///
/// Builder methods consume and return the response:
/// `Response::new(200).header("x-a", "1").body("hi")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Headers,
    body: Vec<u8>,
}

impl Response {
    /// A response with `status`, no headers and an empty body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, text: impl Into<String>) -> Response {
        Response::new(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(text.into())
    }

    /// An `application/json` response with `value` serialized. If `value`
    /// cannot be serialized (e.g. a map with non-string keys) the response is
    /// a 500 saying why instead.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(bytes) => Response::new(status)
                .header("content-type", "application/json")
                .body(bytes),
            Err(err) => Response::text(500, format!("cannot serialize response: {err}\n")),
        }
    }

    /// 404 with the text `not found\n`.
    pub fn not_found() -> Response {
        Response::text(404, "not found\n")
    }

    /// 400 with `message` as text.
    pub fn bad_request(message: impl Into<String>) -> Response {
        Response::text(400, message)
    }

    /// 405 with the text `method not allowed\n`.
    pub fn method_not_allowed() -> Response {
        Response::text(405, "method not allowed\n")
    }

    /// 500 with `message` as text.
    pub fn internal_error(message: impl Into<String>) -> Response {
        Response::text(500, message)
    }

    /// Sets header `name` (lowercased) to `value`, replacing earlier values
    /// of that header. Default: no headers, except the `content-type` that
    /// [`Response::text`] and [`Response::json`] set. `content-length` is
    /// always computed from the body when serving (and left out, with the
    /// body, for 1xx, 204 and 304).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Response {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.as_ref().to_vec()));
        self
    }

    /// Adds a value for header `name` (lowercased), keeping earlier ones
    /// (for headers such as `set-cookie`).
    pub fn append_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Response {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body. Default: empty.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of header `name` (any case), when it is valid UTF-8.
    pub fn get_header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// All headers in order; names are lowercase.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The body.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    /// The body as UTF-8 text.
    pub fn body_text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }

    /// The body decoded from JSON.
    pub fn body_json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// Takes the body out of the response.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// Whether HTTP forbids this status to carry a body and `content-length`
    /// (1xx, 204 No Content, 304 Not Modified).
    fn is_bodiless(&self) -> bool {
        matches!(self.status, 100..=199 | 204 | 304)
    }

    /// The response as WASI resources, with `content-length` set from the
    /// body (none for [bodiless](Response::is_bodiless) statuses). Fails when
    /// a header or the status is not acceptable to the host.
    fn to_wasi(&self) -> Result<OutgoingResponse, String> {
        let fields = Fields::new();
        for (name, value) in &self.headers {
            if name == "content-length" {
                continue;
            }
            fields
                .append(name, value)
                .map_err(|err| format!("header `{name}`: {err:?}"))?;
        }
        if !self.is_bodiless() {
            fields
                .append("content-length", self.body.len().to_string().as_bytes())
                .map_err(|err| format!("header `content-length`: {err:?}"))?;
        }
        let response = OutgoingResponse::new(fields);
        response
            .set_status_code(self.status)
            .map_err(|()| format!("status {}", self.status))?;
        Ok(response)
    }
}

/// Serves one `wasi:http/incoming-handler` call; used by
/// [`http_handler!`](crate::http_handler).
#[doc(hidden)]
pub fn __serve(
    request: IncomingRequest,
    response_out: ResponseOutparam,
    handler: impl FnOnce(Request) -> Response,
) {
    let response = match Request::from_wasi(request) {
        Ok(request) => handler(request),
        Err(err) => Response::bad_request(format!("cannot read request: {err}\n")),
    };
    let (outgoing, body) = match response.to_wasi() {
        // A body on a 204 or 304 is dropped: HTTP does not allow one.
        Ok(outgoing) if response.is_bodiless() => (outgoing, Vec::new()),
        Ok(outgoing) => (outgoing, response.into_body()),
        Err(err) => {
            let fallback =
                Response::internal_error(format!("invalid response from handler: {err}\n"));
            match fallback.to_wasi() {
                Ok(outgoing) => (outgoing, fallback.into_body()),
                Err(_) => {
                    ResponseOutparam::set(response_out, Err(ErrorCode::InternalError(Some(err))));
                    return;
                }
            }
        }
    };
    let Ok(outgoing_body) = outgoing.body() else {
        unreachable!("a new response's body is taken once")
    };
    ResponseOutparam::set(response_out, Ok(outgoing));
    // Once the response is handed over the only reader is the client: if it
    // goes away mid-body there is nobody left to tell, so errors end the write.
    if let Ok(stream) = outgoing_body.write() {
        let written = streams::write_all(&stream, &body);
        drop(stream);
        if written.is_ok() {
            let _ = OutgoingBody::finish(outgoing_body, None);
        }
    }
}

/// The HTTP side of a component that only handles messages; used by
/// [`message_handler!`](crate::message_handler).
#[doc(hidden)]
pub fn __no_http_handler(_request: Request) -> Response {
    Response::text(404, "no HTTP handler\n")
}

/// An outbound HTTP request for [`send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRequest {
    method: String,
    url: String,
    headers: Headers,
    body: Vec<u8>,
    timeout: Option<Duration>,
}

impl OutgoingRequest {
    /// A request with `method` (e.g. `"PUT"`) to the absolute `url`
    /// (`http://` or `https://`).
    pub fn new(method: &str, url: &str) -> OutgoingRequest {
        OutgoingRequest {
            method: method.to_ascii_uppercase(),
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
        }
    }

    /// A `GET` of `url`.
    pub fn get(url: &str) -> OutgoingRequest {
        OutgoingRequest::new("GET", url)
    }

    /// A `POST` of `body` to `url`.
    pub fn post(url: &str, body: impl Into<Vec<u8>>) -> OutgoingRequest {
        OutgoingRequest::new("POST", url).body(body)
    }

    /// Adds a header (name lowercased). Default: no headers; `content-length`
    /// is set from a non-empty body.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> OutgoingRequest {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body. Default: empty.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> OutgoingRequest {
        self.body = body.into();
        self
    }

    /// Limits the time to connect, to the first response byte and between
    /// body bytes, each. Default: the host's limits.
    pub fn timeout(mut self, timeout: Duration) -> OutgoingRequest {
        self.timeout = Some(timeout);
        self
    }
}

/// Why [`send`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SendError {
    /// The URL is not an absolute `scheme://authority/...` URL.
    InvalidUrl(String),
    /// The host refused part of the request before sending it (a forbidden
    /// header, a bad method or path, an unsupported timeout).
    InvalidRequest(String),
    /// The request failed with a `wasi:http` error code: denied by the
    /// host's policy (`HttpRequestDenied`), DNS, connection, timeout, ...
    Http(ErrorCode),
    /// Writing the request body or reading the response body failed.
    Body(String),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::InvalidUrl(url) => write!(f, "invalid URL `{url}`"),
            SendError::InvalidRequest(msg) => write!(f, "invalid request: {msg}"),
            SendError::Http(code) => write!(f, "HTTP request failed: {}", error_code_name(code)),
            SendError::Body(msg) => write!(f, "body transfer failed: {msg}"),
        }
    }
}

impl std::error::Error for SendError {}

/// `ErrorCode::HttpRequestDenied` -> `HttpRequestDenied`, keeping any payload.
fn error_code_name(code: &ErrorCode) -> String {
    let debug = format!("{code:?}");
    match debug.strip_prefix("ErrorCode::") {
        Some(rest) => rest.to_string(),
        None => debug,
    }
}

/// Sends `request` through `wasi:http/outgoing-handler` and waits for the
/// whole response, body included.
pub fn send(request: OutgoingRequest) -> Result<Response, SendError> {
    let url = parse_url(&request.url).ok_or_else(|| SendError::InvalidUrl(request.url.clone()))?;

    let fields = Fields::new();
    for (name, value) in &request.headers {
        fields
            .append(name, value)
            .map_err(|err| SendError::InvalidRequest(format!("header `{name}`: {err:?}")))?;
    }
    if !request.body.is_empty() {
        fields
            .set(
                "content-length",
                &[request.body.len().to_string().into_bytes()],
            )
            .map_err(|err| {
                SendError::InvalidRequest(format!("header `content-length`: {err:?}"))
            })?;
    }
    let outgoing = WasiOutgoingRequest::new(fields);
    let invalid = |what: &str| SendError::InvalidRequest(what.to_string());
    outgoing
        .set_method(&method_from_name(&request.method))
        .map_err(|()| invalid(&format!("method `{}`", request.method)))?;
    outgoing
        .set_scheme(Some(&scheme_from_name(url.scheme)))
        .map_err(|()| invalid(&format!("scheme `{}`", url.scheme)))?;
    outgoing
        .set_authority(Some(url.authority))
        .map_err(|()| invalid(&format!("authority `{}`", url.authority)))?;
    outgoing
        .set_path_with_query(Some(&url.path_with_query))
        .map_err(|()| invalid(&format!("path `{}`", url.path_with_query)))?;

    let options = match request.timeout {
        Some(timeout) => {
            let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
            let options = RequestOptions::new();
            options
                .set_connect_timeout(Some(nanos))
                .and_then(|()| options.set_first_byte_timeout(Some(nanos)))
                .and_then(|()| options.set_between_bytes_timeout(Some(nanos)))
                .map_err(|()| invalid("timeouts are not supported by the host"))?;
            Some(options)
        }
        None => None,
    };

    let Ok(body) = outgoing.body() else {
        unreachable!("a new request's body is taken once")
    };
    // Hand the request over first so the host is reading while the body is
    // written: a body larger than the host's buffer would block otherwise.
    let future = outgoing_handler::handle(outgoing, options).map_err(SendError::Http)?;
    let stream = body
        .write()
        .map_err(|()| SendError::Body("request body stream already taken".into()))?;
    let written = streams::write_all(&stream, &request.body);
    drop(stream);
    if let Err(err) = written {
        // The response usually says what went wrong (e.g. a refused
        // connection); report that rather than the broken pipe.
        return Err(wait(&future).err().unwrap_or(SendError::Body(err)));
    }
    OutgoingBody::finish(body, None).map_err(SendError::Http)?;

    let response = wait(&future)?;
    read_response(response)
}

fn wait(
    future: &crate::bindings::wasi::http::types::FutureIncomingResponse,
) -> Result<IncomingResponse, SendError> {
    loop {
        match future.get() {
            Some(Ok(result)) => return result.map_err(SendError::Http),
            Some(Err(())) => unreachable!("the response is taken once"),
            None => future.subscribe().block(),
        }
    }
}

fn read_response(response: IncomingResponse) -> Result<Response, SendError> {
    let status = response.status();
    let headers = response.headers().entries();
    let body = response
        .consume()
        .map_err(|()| SendError::Body("response body already consumed".into()))?;
    let stream = body
        .stream()
        .map_err(|()| SendError::Body("response body stream already taken".into()))?;
    let bytes = streams::read_to_end(&stream).map_err(SendError::Body)?;
    drop(stream);
    drop(IncomingBody::finish(body));
    Ok(Response {
        status,
        headers,
        body: bytes,
    })
}

/// The parts of an absolute URL that `wasi:http` wants.
#[derive(Debug, PartialEq, Eq)]
struct Url<'a> {
    scheme: &'a str,
    authority: &'a str,
    path_with_query: Cow<'a, str>,
}

/// Splits `scheme://authority/path?query#fragment`; the fragment is dropped
/// and an empty path becomes `/`.
fn parse_url(url: &str) -> Option<Url<'_>> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return None;
    }
    let rest = rest.split('#').next().unwrap_or_default();
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        return None;
    }
    let path_with_query = if path.is_empty() {
        Cow::Borrowed("/")
    } else if path.starts_with('?') {
        Cow::Owned(format!("/{path}"))
    } else {
        Cow::Borrowed(path)
    };
    Some(Url {
        scheme,
        authority,
        path_with_query,
    })
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.to_ascii_uppercase(),
    }
}

fn method_from_name(name: &str) -> Method {
    match name {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_string()),
    }
}

fn scheme_from_name(name: &str) -> Scheme {
    match name.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    }
}

fn find_header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
}

fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_query_part(key), decode_query_part(value))
        })
}

fn decode_query_part(part: &str) -> String {
    let bytes = percent_decode_bytes(part.as_bytes(), true);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Decodes `%XX` escapes (e.g. in a path segment); invalid escapes are kept
/// as they are and invalid UTF-8 becomes U+FFFD. `+` stays `+`: it only
/// means a space in query strings, which [`Request::query_param`] handles.
pub fn percent_decode(text: &str) -> String {
    let bytes = percent_decode_bytes(text.as_bytes(), false);
    String::from_utf8_lossy(&bytes).into_owned()
}

fn percent_decode_bytes(input: &[u8], plus_is_space: bool) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let byte = input[i];
        if byte == b'%' {
            let hi = input.get(i + 1).copied().and_then(hex);
            let lo = input.get(i + 2).copied().and_then(hex);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                // Two hex digits are at most 255.
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if plus_is_space && byte == b'+' {
            b' '
        } else {
            byte
        });
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_query_split() {
        let req = Request::new("get", "/a/b%20c?x=1&y");
        assert_eq!(req.method(), "GET");
        assert_eq!(req.path(), "/a/b%20c");
        assert_eq!(req.query(), "x=1&y");
        let bare = Request::new("GET", "/only");
        assert_eq!(bare.path(), "/only");
        assert_eq!(bare.query(), "");
    }

    #[test]
    fn query_params_decode() {
        let req = Request::new(
            "GET",
            "/?name=Ada+L%C3%B6f&empty=&flag&name=second&url=http%3A%2F%2Fx%2Fy%3Fa%3D1",
        );
        assert_eq!(req.query_param("name").as_deref(), Some("Ada Löf"));
        assert_eq!(req.query_param("empty").as_deref(), Some(""));
        assert_eq!(req.query_param("flag").as_deref(), Some(""));
        assert_eq!(req.query_param("url").as_deref(), Some("http://x/y?a=1"));
        assert_eq!(req.query_param("missing"), None);
        assert_eq!(req.query_params().len(), 5);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%20c+d"), "a/b c+d");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%41"), "A");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn headers_are_case_insensitive() {
        let req = Request::new("GET", "/").with_header("X-Thing", "v");
        assert_eq!(req.header("x-thing"), Some("v"));
        assert_eq!(req.header("X-THING"), Some("v"));
        assert_eq!(req.headers()[0].0, "x-thing");
    }

    #[test]
    fn body_helpers() {
        let req = Request::new("POST", "/").with_body(r#"{"a":1}"#);
        assert_eq!(req.text().ok(), Some(r#"{"a":1}"#));
        let value: serde_json::Value = req.json().unwrap();
        assert_eq!(value["a"], 1);
    }

    #[test]
    fn response_builders() {
        let resp = Response::text(201, "hi")
            .header("X-A", "1")
            .header("x-a", "2")
            .append_header("set-cookie", "a=1")
            .append_header("set-cookie", "b=2");
        assert_eq!(resp.status(), 201);
        assert_eq!(
            resp.get_header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(resp.get_header("x-a"), Some("2"));
        assert_eq!(
            resp.headers()
                .iter()
                .filter(|(n, _)| n == "set-cookie")
                .count(),
            2
        );
        assert_eq!(resp.body_text().ok(), Some("hi"));

        let json = Response::json(200, &serde_json::json!({"k": [1, 2]}));
        assert_eq!(json.get_header("content-type"), Some("application/json"));
        assert_eq!(json.body_bytes(), br#"{"k":[1,2]}"#);

        let bad = std::collections::HashMap::from([((1, 2), 3)]);
        assert_eq!(Response::json(200, &bad).status(), 500);
        assert_eq!(Response::not_found().status(), 404);
        assert!(Response::new(204).is_bodiless());
        assert!(Response::new(304).is_bodiless());
        assert!(!Response::new(200).is_bodiless());
    }

    #[test]
    fn urls() {
        let url = parse_url("https://example.com:8443/a/b?c=d#frag").unwrap();
        assert_eq!(url.scheme, "https");
        assert_eq!(url.authority, "example.com:8443");
        assert_eq!(url.path_with_query, "/a/b?c=d");
        assert_eq!(parse_url("http://h").unwrap().path_with_query, "/");
        assert_eq!(parse_url("http://h?x=1").unwrap().path_with_query, "/?x=1");
        assert_eq!(
            parse_url("http://127.0.0.1:1/").unwrap().authority,
            "127.0.0.1:1"
        );
        assert!(parse_url("/relative").is_none());
        assert!(parse_url("http:///nohost").is_none());
        assert!(parse_url("1http://h/").is_none());
        assert!(parse_url("http://bad host/").is_none());
    }

    #[test]
    fn methods_round_trip() {
        for name in [
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "PURGE",
        ] {
            assert_eq!(method_name(&method_from_name(name)), name);
        }
    }
}
