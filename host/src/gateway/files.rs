//! Static files: a route that serves a directory, for a front end.
//!
//! `[routes."/app/..."] static = "dist"` serves `/app/x.js` from `dist/x.js`,
//! and `/app`, `/app/` and every directory below as its `index`
//! (`index.html`), without a redirect; an exact route serves the index of
//! the directory. What a client gets:
//! - GET and HEAD only; anything else is 405 with `Allow: GET, HEAD`.
//! - `Content-Type` from the extension (`text/*` with `charset=utf-8`,
//!   `application/octet-stream` when unknown), `X-Content-Type-Options:
//!   nosniff` and the route's `Cache-Control`.
//! - A strong `ETag` and `Last-Modified`. Conditional requests follow RFC 9110
//!   §13.2.2: `If-Match` / `If-Unmodified-Since` that fail answer 412,
//!   `If-None-Match` / `If-Modified-Since` that match answer 304.
//! - `Accept-Ranges: bytes`. One range (`bytes=a-b`, `a-`, `-n`) on a GET
//!   answers 206 with `Content-Range`; one that starts past the end (or
//!   `-0`, or any range of an empty file) answers 416 with
//!   `Content-Range: bytes */LEN`. Several ranges get the whole file with
//!   200, which RFC 9110 §14.2 allows: browsers and media players ask for
//!   one range, and multipart/byteranges would be code no one runs. An
//!   `If-Range` that does not match the current validator (an ETag compared
//!   strongly, or the exact Last-Modified date) also gets the whole file.
//!   A malformed `Range` is ignored (200), as the RFC allows.
//! - The body is streamed in 64 KiB chunks; a file is never read whole.
//!
//! The ETag is `"<mtime seconds>.<mtime nanoseconds>-<size>"` in hex, from
//! the file's metadata (as nginx and tower-http make theirs), not a content
//! hash: it costs no read of the content, also for a 304 of a large file,
//! and it is the same on every replica deployed the same files with their
//! times (the inode is left out for that reason). It is strong because new content changes the size or the
//! nanosecond mtime; only a same-size rewrite within one tick of a
//! filesystem with coarse timestamps (FAT's 2 s) would keep the tag, which is
//! the same trade every metadata-based server makes.
//!
//! Paths. The request path's rest after the route's prefix is split on `/`
//! and percent-decoded one segment at a time, so an encoded `%2F` cannot
//! join two segments. A segment that decodes to `.` or `..`, or holds a `\`,
//! a `/`, a NUL or bytes that are not UTF-8, is refused with 400 before the
//! file system is touched. The file found is then canonicalized (every
//! symlink followed) and must lie inside the canonicalized directory, or it
//! is 404 as if it were not there: a symlink may point elsewhere inside the
//! directory, never out of it. Both are canonicalized on each request, so
//! the directory may be a symlink switched atomically to a new release.
//! Dot files are served like any other file; serve a build output, not a
//! source tree.
//!
//! Why not a crate: hyper-staticfile sends weak ETags (`W/"…"`), never reads
//! `If-None-Match`, and matches `If-Range` against its weak tag; tower-http's
//! `ServeDir` (0.7 has strong ETags now) would bring the tower stack into a
//! pipeline that is not built on it, answers several ranges with 416 by
//! default, and follows symlinks out of the directory. The part of either
//! that this route needs is this file.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncRead, AsyncSeekExt, ReadBuf};

use super::{BoxError, GatewayBody, text_response};
use crate::config::{Route, StaticSpec};

/// Bytes read from a file per body frame.
const CHUNK: usize = 64 << 10;

/// A directory served under a route.
pub struct StaticFiles {
    dir: PathBuf,
    route: Route,
    /// The index's path segments; `None` when the manifest's `index` is not
    /// a plain relative file name (directories then answer 404).
    index: Option<Vec<String>>,
    /// `None` when the manifest's value is not a valid header value (it is
    /// then left out rather than failing every request).
    cache_control: Option<HeaderValue>,
}

/// Why a request gets no file.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The path is malformed or tries to leave the directory (400).
    BadPath(&'static str),
    /// Nothing to serve there (404).
    NotFound,
    /// The file system does not let the host read it (403).
    Forbidden,
    /// Reading failed otherwise, e.g. the directory is gone (500, logged).
    Broken(String),
}

/// A file found for a request.
struct Opened {
    file: tokio::fs::File,
    meta: std::fs::Metadata,
    /// The name it was asked by (the last segment, or the index's), whose
    /// extension gives the type: a symlink's target may have none.
    name: String,
}

impl StaticFiles {
    /// Serves `spec.dir` under `route`. Nothing is read until a request:
    /// the directory is resolved on each one.
    pub fn new(spec: &StaticSpec, route: &Route) -> StaticFiles {
        let cache_control = HeaderValue::from_str(&spec.cache_control).ok();
        if cache_control.is_none() {
            tracing::warn!(route = %route, value = %spec.cache_control,
                "cache_control is not a valid header value; it is not sent");
        }
        let index: Vec<String> = spec.index.split('/').map(str::to_string).collect();
        let index = index.iter().all(|s| is_plain_name(s)).then_some(index);
        if index.is_none() {
            tracing::warn!(route = %route, index = %spec.index,
                "index is not a file name below the directory; directories answer 404");
        }
        StaticFiles {
            dir: spec.dir.clone(),
            route: route.clone(),
            index,
            cache_control,
        }
    }

    /// Answers a request for `path` (the whole request path, without query).
    pub async fn serve(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Response<GatewayBody> {
        if method != Method::GET && method != Method::HEAD {
            let mut res = text_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "a static route answers GET and HEAD only",
            );
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return res;
        }
        match self.open(path).await {
            Ok(opened) => self.respond(method, headers, opened).await,
            Err(refusal) => self.refuse(refusal),
        }
    }

    /// Finds and opens the file `path` names, inside the directory.
    async fn open(&self, path: &str) -> Result<Opened, Refusal> {
        let rest = match &self.route {
            // The router matched the whole path: it names the directory.
            Route::Exact(_) => "",
            Route::Prefix(prefix) => match path.strip_prefix(prefix.as_str()) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
                _ => return Err(Refusal::NotFound),
            },
        };
        let segments = decode_segments(rest)?;
        let root = tokio::fs::canonicalize(&self.dir).await.map_err(|e| {
            Refusal::Broken(format!(
                "static directory {} is unavailable: {e}",
                self.dir.display()
            ))
        })?;
        let mut found = inside(&root, &root.join(segments.iter().collect::<PathBuf>())).await?;
        let mut meta = metadata(&found).await?;
        let mut name = segments.last().cloned().unwrap_or_default();
        if meta.is_dir() {
            let index = self.index.as_ref().ok_or(Refusal::NotFound)?;
            found = inside(&root, &found.join(index.iter().collect::<PathBuf>())).await?;
            meta = metadata(&found).await?;
            name = index.last().cloned().unwrap_or_default();
        } else if rest.ends_with('/') {
            // `x.js/` asks for a directory that is not there.
            return Err(Refusal::NotFound);
        }
        // Never open anything but a regular file: opening a FIFO blocks.
        if !meta.is_file() {
            return Err(Refusal::NotFound);
        }
        let file = tokio::fs::File::open(&found)
            .await
            .map_err(|e| io_refusal(&found, e))?;
        // The metadata of what was opened, in case the file was just replaced.
        let meta = file.metadata().await.map_err(|e| io_refusal(&found, e))?;
        if !meta.is_file() {
            return Err(Refusal::NotFound);
        }
        Ok(Opened { file, meta, name })
    }

    /// The response for an opened file: 200, 206, 304, 412 or 416.
    async fn respond(
        &self,
        method: &Method,
        headers: &HeaderMap,
        opened: Opened,
    ) -> Response<GatewayBody> {
        let Opened {
            mut file,
            meta,
            name,
        } = opened;
        let len = meta.len();
        let validators = Validators::of(&meta);

        match preconditions(headers, &validators) {
            Precondition::Proceed => {}
            Precondition::NotModified => {
                let mut res = Response::new(empty_body());
                *res.status_mut() = StatusCode::NOT_MODIFIED;
                self.cache_headers(res.headers_mut(), &validators);
                return res;
            }
            Precondition::Failed => {
                let mut res = text_response(StatusCode::PRECONDITION_FAILED, "precondition failed");
                validators.insert(res.headers_mut());
                return res;
            }
        }

        // Range handling is defined for GET only (RFC 9110 §14.2).
        let range = match headers.get(header::RANGE) {
            Some(range) if method == Method::GET && if_range_holds(headers, &validators) => range
                .to_str()
                .map_or(ByteRange::Whole, |r| byte_range(r, len)),
            _ => ByteRange::Whole,
        };
        let (status, start, count) = match range {
            ByteRange::Whole => (StatusCode::OK, 0, len),
            ByteRange::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
            ByteRange::Unsatisfiable => {
                let mut res = text_response(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    format!("the range is outside the file's {len} bytes"),
                );
                let h = res.headers_mut();
                insert(h, header::CONTENT_RANGE, format!("bytes */{len}"));
                h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                return res;
            }
        };

        let body = if method == Method::HEAD || count == 0 {
            empty_body()
        } else {
            if start > 0
                && let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await
            {
                return self.refuse(io_refusal(Path::new(&name), e));
            }
            FileBody {
                file,
                remaining: count,
                buf: BytesMut::new(),
            }
            .boxed_unsync()
        };
        let mut res = Response::new(body);
        *res.status_mut() = status;
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, content_type(&name));
        insert(h, header::CONTENT_LENGTH, count.to_string());
        if status == StatusCode::PARTIAL_CONTENT {
            let end = start + count - 1;
            insert(
                h,
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{len}"),
            );
        }
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        self.cache_headers(h, &validators);
        res
    }

    /// The headers a 200, 206 and 304 share.
    fn cache_headers(&self, h: &mut HeaderMap, validators: &Validators) {
        validators.insert(h);
        if let Some(cc) = &self.cache_control {
            h.insert(header::CACHE_CONTROL, cc.clone());
        }
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
    }

    fn refuse(&self, refusal: Refusal) -> Response<GatewayBody> {
        match refusal {
            Refusal::BadPath(why) => {
                text_response(StatusCode::BAD_REQUEST, format!("bad path: {why}"))
            }
            Refusal::NotFound => text_response(StatusCode::NOT_FOUND, "not found"),
            Refusal::Forbidden => text_response(StatusCode::FORBIDDEN, "forbidden"),
            Refusal::Broken(why) => {
                tracing::warn!(route = %self.route, "static file: {why}");
                text_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the file could not be read",
                )
            }
        }
    }
}

/// Splits the path below the route into percent-decoded file names,
/// refusing anything that is not one: `.`, `..`, and names with `/`
/// (encoded), `\`, NUL or bytes that are not UTF-8. Empty segments (`//`,
/// a trailing `/`) are skipped.
fn decode_segments(rest: &str) -> Result<Vec<String>, Refusal> {
    let mut segments = Vec::new();
    for raw in rest.split('/').filter(|s| !s.is_empty()) {
        let name = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| Refusal::BadPath("the path is not UTF-8 once decoded"))?;
        let why = if name == "." || name == ".." {
            "`.` and `..` are not allowed"
        } else if name.contains('/') {
            "an encoded `/` is not allowed"
        } else if name.contains('\\') {
            "a backslash is not allowed"
        } else if name.contains('\0') {
            "a NUL byte is not allowed"
        } else if !is_plain_name(&name) {
            "a segment is not a file name"
        } else {
            segments.push(name.into_owned());
            continue;
        };
        return Err(Refusal::BadPath(why));
    }
    Ok(segments)
}

/// Whether `name` is one file name that stays in its directory (on any
/// platform: `C:` is a prefix on Windows).
fn is_plain_name(name: &str) -> bool {
    !name.contains(['/', '\\', '\0'])
        && matches!(
            Path::new(name).components().collect::<Vec<_>>().as_slice(),
            [Component::Normal(n)] if n.to_str() == Some(name)
        )
}

/// `path` with every symlink resolved, if that is still inside `root` (itself
/// canonical); 404 otherwise, as if nothing were there.
async fn inside(root: &Path, path: &Path) -> Result<PathBuf, Refusal> {
    let real = tokio::fs::canonicalize(path)
        .await
        .map_err(|e| io_refusal(path, e))?;
    if real.starts_with(root) {
        Ok(real)
    } else {
        tracing::debug!(
            path = %path.display(),
            target = %real.display(),
            "static file: a symlink leads out of the directory"
        );
        Err(Refusal::NotFound)
    }
}

async fn metadata(path: &Path) -> Result<std::fs::Metadata, Refusal> {
    tokio::fs::metadata(path)
        .await
        .map_err(|e| io_refusal(path, e))
}

fn io_refusal(path: &Path, e: std::io::Error) -> Refusal {
    match e.kind() {
        ErrorKind::NotFound
        | ErrorKind::NotADirectory
        | ErrorKind::InvalidFilename
        | ErrorKind::InvalidInput => Refusal::NotFound,
        ErrorKind::PermissionDenied => Refusal::Forbidden,
        _ => Refusal::Broken(format!("{}: {e}", path.display())),
    }
}

/// A file's validators.
struct Validators {
    /// `"<mtime secs>.<mtime nanos>-<size>"` in hex (secs prefixed with `-`
    /// before 1970); none where the file system keeps no mtime.
    etag: Option<String>,
    /// The mtime in whole seconds, when an HTTP date can express it.
    modified: Option<SystemTime>,
}

impl Validators {
    fn of(meta: &std::fs::Metadata) -> Validators {
        let Ok(mtime) = meta.modified() else {
            return Validators {
                etag: None,
                modified: None,
            };
        };
        let (sign, since) = match mtime.duration_since(UNIX_EPOCH) {
            Ok(d) => ("", d),
            Err(e) => ("-", e.duration()),
        };
        let etag = format!(
            "\"{sign}{:x}.{:x}-{:x}\"",
            since.as_secs(),
            since.subsec_nanos(),
            meta.len()
        );
        // httpdate panics outside 1970..9999.
        let modified = (sign.is_empty() && since.as_secs() < 253_402_300_800)
            .then(|| UNIX_EPOCH + Duration::from_secs(since.as_secs()));
        Validators {
            etag: Some(etag),
            modified,
        }
    }

    fn insert(&self, h: &mut HeaderMap) {
        if let Some(etag) = &self.etag {
            insert(h, header::ETAG, etag.clone());
        }
        if let Some(modified) = self.modified {
            insert(h, header::LAST_MODIFIED, httpdate::fmt_http_date(modified));
        }
    }
}

/// What the conditional headers decide (RFC 9110 §13.2.2, steps 1 to 4).
#[derive(Debug, PartialEq, Eq)]
enum Precondition {
    Proceed,
    /// 304.
    NotModified,
    /// 412.
    Failed,
}

fn preconditions(headers: &HeaderMap, v: &Validators) -> Precondition {
    if let Some(matched) = list_matches(headers, header::IF_MATCH, v, true) {
        if !matched {
            return Precondition::Failed;
        }
    } else if let (Some(since), Some(modified)) = (
        header_date(headers, header::IF_UNMODIFIED_SINCE),
        v.modified,
    ) && modified > since
    {
        return Precondition::Failed;
    }
    if let Some(matched) = list_matches(headers, header::IF_NONE_MATCH, v, false) {
        if matched {
            return Precondition::NotModified;
        }
    } else if let (Some(since), Some(modified)) =
        (header_date(headers, header::IF_MODIFIED_SINCE), v.modified)
        && modified <= since
    {
        return Precondition::NotModified;
    }
    Precondition::Proceed
}

/// Whether header `name` (a list of entity tags, or `*`) names the file's
/// tag, compared strongly or weakly; `None` when the request has no such header.
fn list_matches(
    headers: &HeaderMap,
    name: HeaderName,
    v: &Validators,
    strong: bool,
) -> Option<bool> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    Some(values.filter_map(|value| value.to_str().ok()).any(|list| {
        // `*` matches any current file, and there is one.
        list.trim() == "*"
            || entity_tags(list)
                .any(|(weak, tag)| !(strong && weak) && v.etag.as_deref() == Some(tag))
    }))
}

/// The entity tags of a list such as `W/"a", "b"`, as (weak, tag with its
/// quotes); it ends at the first malformed element.
fn entity_tags(list: &str) -> impl Iterator<Item = (bool, &str)> {
    let mut rest = list;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        let (weak, tail) = match rest.strip_prefix("W/") {
            Some(tail) => (true, tail),
            None => (false, rest),
        };
        let close = tail.strip_prefix('"')?.find('"')? + 2;
        rest = &tail[close..];
        Some((weak, &tail[..close]))
    })
}

fn header_date(headers: &HeaderMap, name: HeaderName) -> Option<SystemTime> {
    let value = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(value.trim()).ok()
}

/// Whether a Range may be honoured: no `If-Range`, or one that names the
/// current file (its ETag compared strongly, or its exact Last-Modified).
fn if_range_holds(headers: &HeaderMap, v: &Validators) -> bool {
    let Some(value) = headers.get(header::IF_RANGE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        // The file's tag is strong, so a weak one never equals it.
        return v.etag.as_deref() == Some(value);
    }
    match (httpdate::parse_http_date(value), v.modified) {
        (Ok(date), Some(modified)) => date == modified,
        _ => false,
    }
}

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum ByteRange {
    /// The whole file: no range, several, another unit, or malformed.
    Whole,
    /// Bytes `start..=end`, both inside the file.
    Part { start: u64, end: u64 },
    /// 416.
    Unsatisfiable,
}

fn byte_range(value: &str, len: u64) -> ByteRange {
    let Some((unit, set)) = value.split_once('=') else {
        return ByteRange::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return ByteRange::Whole;
    }
    let mut specs = set.split(',').map(str::trim).filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        // None, or several: answered with the whole file.
        return ByteRange::Whole;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return ByteRange::Whole;
    };
    let from = |start: u64, end: u64| {
        if start >= len {
            ByteRange::Unsatisfiable
        } else {
            ByteRange::Part {
                start,
                end: end.min(len - 1),
            }
        }
    };
    match (position(first), position(last)) {
        // `-n`: the last n bytes.
        (None, Some(n)) if first.is_empty() => {
            if n == 0 || len == 0 {
                ByteRange::Unsatisfiable
            } else {
                ByteRange::Part {
                    start: len - n.min(len),
                    end: len - 1,
                }
            }
        }
        (Some(start), None) if last.is_empty() => from(start, u64::MAX),
        (Some(start), Some(end)) if start <= end => from(start, end),
        _ => ByteRange::Whole,
    }
}

/// A byte position: digits only; one too large for u64 is past any file.
fn position(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse().unwrap_or(u64::MAX))
}

/// The type of a file by its name's extension; text in UTF-8.
fn content_type(name: &str) -> HeaderValue {
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    let textual =
        mime.type_() == mime_guess::mime::TEXT || mime.essence_str() == "application/javascript";
    let value = if textual && mime.get_param(mime_guess::mime::CHARSET).is_none() {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    };
    HeaderValue::from_str(&value)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

/// Inserts a header built from text this file formatted (always valid).
fn insert(h: &mut HeaderMap, name: HeaderName, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        h.insert(name, value);
    }
}

fn empty_body() -> GatewayBody {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

/// `remaining` bytes of a file from its current position, in frames of at
/// most [`CHUNK`] bytes. A file that ends early fails the body, so the
/// client sees a cut response rather than a short one.
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: BytesMut,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = this.remaining.min(CHUNK as u64) as usize;
        this.buf.resize(want, 0);
        let mut read = ReadBuf::new(&mut this.buf[..]);
        ready!(Pin::new(&mut this.file).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if n == 0 {
            return Poll::Ready(Some(Err(
                "the file got shorter while it was being sent".into()
            )));
        }
        this.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(this.buf.split_to(n).freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    /// A served directory `dist` with a sibling file it must never leak.
    struct Site {
        tmp: tempfile::TempDir,
    }

    const SECRET: &str = "the secret outside the directory";

    impl Site {
        fn new() -> Site {
            let tmp = tempfile::tempdir().unwrap();
            let dist = tmp.path().join("dist");
            std::fs::create_dir_all(dist.join("sub")).unwrap();
            std::fs::create_dir_all(dist.join("empty-dir")).unwrap();
            std::fs::write(dist.join("index.html"), "<h1>home</h1>").unwrap();
            std::fs::write(dist.join("app.js"), "console.log(1)").unwrap();
            std::fs::write(dist.join("style.css"), "body{}").unwrap();
            std::fs::write(dist.join("data.json"), "{}").unwrap();
            std::fs::write(dist.join("noext"), "raw").unwrap();
            std::fs::write(dist.join("empty.txt"), "").unwrap();
            std::fs::write(dist.join("sub/index.html"), "<h1>sub</h1>").unwrap();
            std::fs::write(dist.join("data.bin"), numbered(1000)).unwrap();
            std::fs::write(tmp.path().join("secret.txt"), SECRET).unwrap();
            std::fs::create_dir(tmp.path().join("outside")).unwrap();
            std::fs::write(tmp.path().join("outside/secret.txt"), SECRET).unwrap();
            Site { tmp }
        }

        fn dist(&self) -> PathBuf {
            self.tmp.path().join("dist")
        }

        fn files(&self, route: &str) -> StaticFiles {
            files_in(&self.dist(), route)
        }
    }

    fn files_in(dir: &Path, route: &str) -> StaticFiles {
        StaticFiles::new(
            &StaticSpec {
                dir: dir.to_path_buf(),
                cache_control: "public, max-age=300".into(),
                index: "index.html".into(),
            },
            &Route::parse(route).unwrap(),
        )
    }

    /// `len` bytes that differ from their neighbours, so a wrong offset shows.
    fn numbered(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).map(|v| v.to_str().unwrap())
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    async fn ask(
        files: &StaticFiles,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let res = files.serve(&method, path, &map).await;
        let (parts, body) = res.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.expect("body").to_bytes(),
        }
    }

    async fn get(files: &StaticFiles, path: &str) -> Answer {
        ask(files, "GET", path, &[]).await
    }

    #[tokio::test]
    async fn serves_a_file_with_type_validators_and_cache_headers() {
        let site = Site::new();
        let files = site.files("/app/...");
        let a = get(&files, "/app/app.js").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.text(), "console.log(1)");
        assert_eq!(
            a.header("content-type"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(a.header("content-length"), Some("14"));
        assert_eq!(a.header("cache-control"), Some("public, max-age=300"));
        assert_eq!(a.header("accept-ranges"), Some("bytes"));
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
        let etag = a.header("etag").expect("an ETag");
        assert!(
            etag.starts_with('"') && etag.ends_with('"'),
            "strong and quoted: {etag}"
        );
        let modified = std::fs::metadata(site.dist().join("app.js"))
            .unwrap()
            .modified()
            .unwrap();
        let last_modified = httpdate::parse_http_date(a.header("last-modified").unwrap()).unwrap();
        assert_eq!(
            last_modified.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            modified.duration_since(UNIX_EPOCH).unwrap().as_secs()
        );

        for (path, ty) in [
            ("/app/style.css", "text/css; charset=utf-8"),
            ("/app/index.html", "text/html; charset=utf-8"),
            ("/app/data.json", "application/json"),
            ("/app/noext", "application/octet-stream"),
            ("/app/data.bin", "application/octet-stream"),
        ] {
            let a = get(&files, path).await;
            assert_eq!(a.status, StatusCode::OK, "{path}");
            assert_eq!(a.header("content-type"), Some(ty), "{path}");
        }
        let empty = get(&files, "/app/empty.txt").await;
        assert_eq!((empty.status, empty.body.len()), (StatusCode::OK, 0));
        assert_eq!(empty.header("content-length"), Some("0"));
    }

    #[tokio::test]
    async fn directories_serve_their_index() {
        let site = Site::new();
        let files = site.files("/app/...");
        for path in ["/app", "/app/", "/app//"] {
            let a = get(&files, path).await;
            assert_eq!(
                (a.status, a.text().as_str()),
                (StatusCode::OK, "<h1>home</h1>"),
                "{path}"
            );
            assert_eq!(a.header("content-type"), Some("text/html; charset=utf-8"));
        }
        for path in ["/app/sub", "/app/sub/"] {
            assert_eq!(get(&files, path).await.text(), "<h1>sub</h1>", "{path}");
        }
        assert_eq!(
            get(&files, "/app/empty-dir/").await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(&files, "/app/missing.js").await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(&files, "/app/missing/deeper").await.status,
            StatusCode::NOT_FOUND
        );
        // A file is not a directory.
        assert_eq!(
            get(&files, "/app/app.js/").await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(&files, "/app/app.js/x").await.status,
            StatusCode::NOT_FOUND
        );
        // A path the prefix does not cover (the router would not send it).
        assert_eq!(
            get(&files, "/application.js").await.status,
            StatusCode::NOT_FOUND
        );

        // An exact route serves the index; `/...` serves the root.
        let exact = site.files("/home");
        assert_eq!(get(&exact, "/home").await.text(), "<h1>home</h1>");
        let everything = site.files("/...");
        assert_eq!(get(&everything, "/app.js").await.text(), "console.log(1)");
        assert_eq!(get(&everything, "/").await.text(), "<h1>home</h1>");
        assert_eq!(get(&everything, "/sub/").await.text(), "<h1>sub</h1>");

        // Another index name; one that leaves the directory serves nothing.
        let spec = |index: &str| StaticSpec {
            dir: site.dist(),
            cache_control: "no-cache".into(),
            index: index.into(),
        };
        let route = Route::parse("/app/...").unwrap();
        let other = StaticFiles::new(&spec("app.js"), &route);
        let a = get(&other, "/app/").await;
        assert_eq!(a.text(), "console.log(1)");
        assert_eq!(
            a.header("content-type"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(a.header("cache-control"), Some("no-cache"));
        let nested = StaticFiles::new(&spec("sub/index.html"), &route);
        assert_eq!(get(&nested, "/app").await.text(), "<h1>sub</h1>");
        let escaping = StaticFiles::new(&spec("../secret.txt"), &route);
        assert_eq!(get(&escaping, "/app/").await.status, StatusCode::NOT_FOUND);
        // A Cache-Control that is no header value is left out.
        let mut bad = spec("index.html");
        bad.cache_control = "a\nb".into();
        let a = get(&StaticFiles::new(&bad, &route), "/app/").await;
        assert_eq!(
            (a.status, a.header("cache-control")),
            (StatusCode::OK, None)
        );
    }

    #[tokio::test]
    async fn only_get_and_head() {
        let site = Site::new();
        let files = site.files("/app/...");
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"] {
            let a = ask(&files, method, "/app/app.js", &[]).await;
            assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
            assert_eq!(a.header("allow"), Some("GET, HEAD"), "{method}");
        }
        let got = get(&files, "/app/app.js").await;
        let head = ask(&files, "HEAD", "/app/app.js", &[]).await;
        assert_eq!(head.status, StatusCode::OK);
        assert!(head.body.is_empty());
        for name in [
            "content-type",
            "content-length",
            "etag",
            "last-modified",
            "cache-control",
        ] {
            assert_eq!(head.header(name), got.header(name), "{name}");
        }
        // Ranges are for GET only.
        let head = ask(&files, "HEAD", "/app/data.bin", &[("range", "bytes=0-9")]).await;
        assert_eq!(
            (head.status, head.header("content-length")),
            (StatusCode::OK, Some("1000"))
        );
    }

    #[tokio::test]
    async fn traversal_is_refused_before_the_file_system() {
        let site = Site::new();
        let files = site.files("/app/...");
        for path in [
            "/app/../secret.txt",
            "/app/sub/../../secret.txt",
            "/app/%2e%2e/secret.txt",
            "/app/%2E%2E/secret.txt",
            "/app/.%2e/secret.txt",
            "/app/..%2fsecret.txt",
            "/app/sub%2f..%2f..%2fsecret.txt",
            "/app/..%5csecret.txt",
            "/app/..\\secret.txt",
            "/app/app.js%00.png",
            "/app/%ff%fe",
            "/app/./app.js",
            "/app/sub/..",
        ] {
            let a = get(&files, path).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}");
            assert!(!a.text().contains(SECRET), "{path}");
        }
        // Percent-encoding of ordinary characters is decoded.
        std::fs::write(site.dist().join("a b.txt"), "spaced").unwrap();
        assert_eq!(get(&files, "/app/a%20b.txt").await.text(), "spaced");
        assert_eq!(get(&files, "/app/%61pp.js").await.text(), "console.log(1)");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn symlinks_may_not_lead_out_of_the_directory() {
        use std::os::unix::fs::symlink;
        let site = Site::new();
        let dist = site.dist();
        symlink(site.tmp.path().join("secret.txt"), dist.join("escape.txt")).unwrap();
        symlink("../outside", dist.join("outdir")).unwrap();
        symlink("/", dist.join("root")).unwrap();
        symlink("app.js", dist.join("alias.js")).unwrap();
        symlink("sub", dist.join("subalias")).unwrap();
        symlink("app.js", dist.join("typeless")).unwrap();
        let files = site.files("/app/...");
        for path in [
            "/app/escape.txt",
            "/app/outdir/secret.txt",
            "/app/outdir/",
            "/app/root/etc/passwd",
        ] {
            let a = get(&files, path).await;
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
            assert!(!a.text().contains(SECRET), "{path}");
        }
        // Inside the directory they are followed; the type comes from the name asked for.
        let a = get(&files, "/app/alias.js").await;
        assert_eq!(
            (a.status, a.text().as_str()),
            (StatusCode::OK, "console.log(1)")
        );
        assert_eq!(
            a.header("content-type"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(get(&files, "/app/subalias/").await.text(), "<h1>sub</h1>");
        assert_eq!(
            get(&files, "/app/typeless").await.header("content-type"),
            Some("application/octet-stream")
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_directory_may_be_a_symlink_switched_to_a_new_release() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        for v in ["v1", "v2"] {
            std::fs::create_dir(tmp.path().join(v)).unwrap();
            std::fs::write(tmp.path().join(v).join("index.html"), v).unwrap();
        }
        let current = tmp.path().join("current");
        symlink("v1", &current).unwrap();
        let files = files_in(&current, "/...");
        assert_eq!(get(&files, "/").await.text(), "v1");
        let next = tmp.path().join("next");
        symlink("v2", &next).unwrap();
        std::fs::rename(&next, &current).unwrap();
        assert_eq!(get(&files, "/").await.text(), "v2");
        // A directory that is gone is the host's problem: 500, not a leak.
        std::fs::remove_file(&current).unwrap();
        assert_eq!(
            get(&files, "/").await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[cfg(unix)]
    #[test]
    fn only_regular_files_are_opened() {
        let site = Site::new();
        let fifo = site.dist().join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo failed");
        let files = site.files("/app/...");
        // Opening a FIFO would wait for a writer forever, on a blocking
        // thread the runtime would wait for: leave it behind to fail, not hang.
        let rt = tokio::runtime::Runtime::new().unwrap();
        let answer = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), get(&files, "/app/pipe")).await
        });
        rt.shutdown_background();
        let a = answer.expect("a FIFO is refused without being opened");
        assert_eq!(a.status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn conditional_requests() {
        let site = Site::new();
        let files = site.files("/app/...");
        let first = get(&files, "/app/app.js").await;
        let etag = first.header("etag").unwrap().to_string();
        let last_modified = first.header("last-modified").unwrap().to_string();
        let weak = format!("W/{etag}");
        let listed = format!("\"other\", {etag}");
        let modified = httpdate::parse_http_date(&last_modified).unwrap();
        let before = httpdate::fmt_http_date(modified - Duration::from_secs(1));
        let after = httpdate::fmt_http_date(modified + Duration::from_secs(60));

        let cases: &[(&[(&str, &str)], StatusCode)] = &[
            (&[("if-none-match", &etag)], StatusCode::NOT_MODIFIED),
            (&[("if-none-match", &weak)], StatusCode::NOT_MODIFIED),
            (&[("if-none-match", &listed)], StatusCode::NOT_MODIFIED),
            (&[("if-none-match", "*")], StatusCode::NOT_MODIFIED),
            (&[("if-none-match", "\"other\"")], StatusCode::OK),
            (&[("if-none-match", "garbage")], StatusCode::OK),
            (
                &[("if-modified-since", &last_modified)],
                StatusCode::NOT_MODIFIED,
            ),
            (&[("if-modified-since", &after)], StatusCode::NOT_MODIFIED),
            (&[("if-modified-since", &before)], StatusCode::OK),
            (&[("if-modified-since", "not a date")], StatusCode::OK),
            // If-None-Match decides when both are sent.
            (
                &[
                    ("if-none-match", "\"other\""),
                    ("if-modified-since", &last_modified),
                ],
                StatusCode::OK,
            ),
            (&[("if-match", &etag)], StatusCode::OK),
            (&[("if-match", "*")], StatusCode::OK),
            (
                &[("if-match", "\"other\"")],
                StatusCode::PRECONDITION_FAILED,
            ),
            // If-Match compares strongly.
            (&[("if-match", &weak)], StatusCode::PRECONDITION_FAILED),
            (
                &[("if-unmodified-since", &before)],
                StatusCode::PRECONDITION_FAILED,
            ),
            (&[("if-unmodified-since", &last_modified)], StatusCode::OK),
            // If-Match decides over If-Unmodified-Since.
            (
                &[("if-match", &etag), ("if-unmodified-since", &before)],
                StatusCode::OK,
            ),
        ];
        for (headers, status) in cases {
            let a = ask(&files, "GET", "/app/app.js", headers).await;
            assert_eq!(a.status, *status, "{headers:?}");
            if a.status == StatusCode::NOT_MODIFIED {
                assert!(a.body.is_empty());
                assert_eq!(a.header("etag"), Some(etag.as_str()));
                assert_eq!(a.header("last-modified"), Some(last_modified.as_str()));
                assert_eq!(a.header("cache-control"), Some("public, max-age=300"));
                assert_eq!(a.header("content-length"), None);
            }
        }
        let head = ask(&files, "HEAD", "/app/app.js", &[("if-none-match", &etag)]).await;
        assert_eq!(head.status, StatusCode::NOT_MODIFIED);
    }

    #[tokio::test]
    async fn the_etag_changes_with_the_file() {
        let site = Site::new();
        let files = site.files("/app/...");
        let path = site.dist().join("app.js");
        let etag = |a: &Answer| a.header("etag").unwrap().to_string();
        let first = etag(&get(&files, "/app/app.js").await);
        assert_eq!(first, etag(&get(&files, "/app/app.js").await), "stable");

        // Same size, another time.
        std::fs::write(&path, "console.log(2)").unwrap();
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
        let second = etag(&get(&files, "/app/app.js").await);
        assert_ne!(first, second);
        let a = ask(&files, "GET", "/app/app.js", &[("if-none-match", &first)]).await;
        assert_eq!(
            (a.status, a.text().as_str()),
            (StatusCode::OK, "console.log(2)")
        );

        // Same time to the nanosecond, another size.
        std::fs::write(&path, "console.log(22)").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
        assert_ne!(second, etag(&get(&files, "/app/app.js").await));

        // Another nanosecond, same size.
        std::fs::write(&path, "console.log(33)").unwrap();
        let t2 = t + Duration::from_nanos(1);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t2)
            .unwrap();
        let third = etag(&get(&files, "/app/app.js").await);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
        assert_ne!(third, etag(&get(&files, "/app/app.js").await));
    }

    #[tokio::test]
    async fn a_file_from_before_1970_is_served_without_last_modified() {
        let site = Site::new();
        let path = site.dist().join("old.txt");
        std::fs::write(&path, "old").unwrap();
        let t = UNIX_EPOCH - Duration::from_secs(10 * 365 * 86_400);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
        let files = site.files("/app/...");
        let a = get(&files, "/app/old.txt").await;
        assert_eq!((a.status, a.text().as_str()), (StatusCode::OK, "old"));
        assert_eq!(a.header("last-modified"), None);
        let etag = a.header("etag").unwrap().to_string();
        assert!(etag.starts_with("\"-"), "{etag}");
        let again = ask(&files, "GET", "/app/old.txt", &[("if-none-match", &etag)]).await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    }

    #[tokio::test]
    async fn single_byte_ranges() {
        let site = Site::new();
        let files = site.files("/app/...");
        let data = numbered(1000);
        let shared = &files;
        let ranged = move |r: &'static str| async move {
            ask(shared, "GET", "/app/data.bin", &[("range", r)]).await
        };
        for (range, start, end) in [
            ("bytes=0-9", 0, 9),
            ("bytes=990-", 990, 999),
            ("bytes=-10", 990, 999),
            ("bytes=995-2000", 995, 999),
            ("bytes=-2000", 0, 999),
            ("bytes=0-", 0, 999),
            ("bytes=999-999", 999, 999),
            ("bytes=0-99999999999999999999999", 0, 999),
            ("Bytes = 100-199 ", 100, 199),
            ("bytes=100-199,", 100, 199),
        ] {
            let a = ranged(range).await;
            assert_eq!(a.status, StatusCode::PARTIAL_CONTENT, "{range}");
            assert_eq!(
                a.header("content-range"),
                Some(format!("bytes {start}-{end}/1000").as_str()),
                "{range}"
            );
            let count = end - start + 1;
            assert_eq!(a.header("content-length"), Some(count.to_string().as_str()));
            assert_eq!(&a.body[..], &data[start..=end], "{range}");
            assert_eq!(
                a.header("etag"),
                get(&files, "/app/data.bin").await.header("etag")
            );
        }
        for range in [
            "bytes=1000-",
            "bytes=1000-2000",
            "bytes=-0",
            "bytes=99999999999999999999999-",
        ] {
            let a = ranged(range).await;
            assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
            assert_eq!(a.header("content-range"), Some("bytes */1000"), "{range}");
        }
        // Several ranges, another unit or nonsense: the whole file.
        for range in [
            "bytes=0-1,5-6",
            "bytes=0-1, 2000-",
            "items=0-1",
            "bytes=5-1",
            "bytes=abc",
            "bytes=",
            "bytes=--5",
            "0-5",
        ] {
            let a = ranged(range).await;
            assert_eq!(a.status, StatusCode::OK, "{range}");
            assert_eq!(a.header("content-range"), None, "{range}");
            assert_eq!(&a.body[..], &data[..], "{range}");
        }
        // Nothing of an empty file is satisfiable.
        let a = ask(&files, "GET", "/app/empty.txt", &[("range", "bytes=0-")]).await;
        assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(a.header("content-range"), Some("bytes */0"));
        // A conditional 304 comes before the range.
        let etag = get(&files, "/app/data.bin")
            .await
            .header("etag")
            .unwrap()
            .to_string();
        let a = ask(
            &files,
            "GET",
            "/app/data.bin",
            &[("range", "bytes=0-9"), ("if-none-match", &etag)],
        )
        .await;
        assert_eq!(a.status, StatusCode::NOT_MODIFIED);
    }

    #[tokio::test]
    async fn if_range_sends_the_whole_file_once_it_changed() {
        let site = Site::new();
        let files = site.files("/app/...");
        let whole = get(&files, "/app/data.bin").await;
        let etag = whole.header("etag").unwrap().to_string();
        let date = whole.header("last-modified").unwrap().to_string();
        let weak = format!("W/{etag}");
        let earlier = httpdate::fmt_http_date(
            httpdate::parse_http_date(&date).unwrap() - Duration::from_secs(1),
        );
        for (if_range, status) in [
            (etag.as_str(), StatusCode::PARTIAL_CONTENT),
            (date.as_str(), StatusCode::PARTIAL_CONTENT),
            ("\"other\"", StatusCode::OK),
            (weak.as_str(), StatusCode::OK),
            (earlier.as_str(), StatusCode::OK),
            ("nonsense", StatusCode::OK),
        ] {
            let a = ask(
                &files,
                "GET",
                "/app/data.bin",
                &[("range", "bytes=0-9"), ("if-range", if_range)],
            )
            .await;
            assert_eq!(a.status, status, "{if_range}");
            let len = if status == StatusCode::OK { 1000 } else { 10 };
            assert_eq!(a.body.len(), len, "{if_range}");
        }
    }

    #[tokio::test]
    async fn large_files_are_streamed_in_chunks() {
        let site = Site::new();
        let data = numbered(5 << 20);
        std::fs::write(site.dist().join("big.bin"), &data).unwrap();
        let files = site.files("/app/...");
        let mut body = files
            .serve(&Method::GET, "/app/big.bin", &HeaderMap::new())
            .await
            .into_body();
        assert_eq!(body.size_hint().exact(), Some(5 << 20));
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            let chunk = frame.unwrap().into_data().unwrap();
            assert!(chunk.len() <= CHUNK, "a frame of {} bytes", chunk.len());
            got.extend_from_slice(&chunk);
        }
        assert!(got == data, "the streamed bytes differ from the file");

        // A range across chunk boundaries, from an offset.
        let (start, end) = (CHUNK - 7, 3 * CHUNK + 11);
        let range = format!("bytes={start}-{end}");
        let a = ask(&files, "GET", "/app/big.bin", &[("range", &range)]).await;
        assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
        assert!(a.body[..] == data[start..=end]);
    }

    #[tokio::test]
    async fn a_file_cut_short_while_sent_fails_the_body() {
        let site = Site::new();
        let path = site.dist().join("shrinks.bin");
        std::fs::write(&path, numbered(4 * CHUNK)).unwrap();
        let files = site.files("/app/...");
        let mut body = files
            .serve(&Method::GET, "/app/shrinks.bin", &HeaderMap::new())
            .await
            .into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), CHUNK);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(CHUNK as u64)
            .unwrap();
        let err = body
            .frame()
            .await
            .unwrap()
            .expect_err("a short file is an error, not a short body");
        assert!(err.to_string().contains("shorter"), "{err}");
    }

    #[test]
    fn entity_tag_lists() {
        let tags: Vec<_> = entity_tags(r#""a", W/"b",,"c,d" ,  "e""#).collect();
        assert_eq!(
            tags,
            [
                (false, "\"a\""),
                (true, "\"b\""),
                (false, "\"c,d\""),
                (false, "\"e\"")
            ]
        );
        assert_eq!(entity_tags(r#""a", bad, "c""#).count(), 1);
        assert_eq!(entity_tags(r#""unterminated"#).count(), 0);
    }

    #[test]
    fn plain_names() {
        for name in ["index.html", "a b", ".well-known", "..x", "x.."] {
            assert!(is_plain_name(name), "{name}");
        }
        for name in ["", ".", "..", "a/b", "a\\b", "a\0", "/"] {
            assert!(!is_plain_name(name), "{name:?}");
        }
    }
}
