//! Turning an admin request's head into an [`Action`]: authentication,
//! routing and parameters. Nothing here touches the bus, so all of it is
//! tested without one.

use std::borrow::Cow;

use http::{HeaderMap, Method, StatusCode, Uri, header};
use percent_encoding::percent_decode_str;
use subtle::ConstantTimeEq;

use crate::gateway::calllog::{self, CallQuery, StatusFilter};
use crate::telemetry::logs::{Level, LogQuery, Source, TraceId};

/// Largest request body read: the largest `max_payload` a topic may declare.
/// The bus enforces each topic's own limit.
pub const MAX_BODY: u64 = 64 << 20;
/// Prefix of request headers that become message headers.
pub const HEADER_PREFIX: &str = "atoll-header-";
/// Dead letters, call log rows or log records listed when the request gives
/// no `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// Most dead letters, call log rows or log records one request lists.
pub const MAX_LIMIT: usize = 10_000;
/// Largest component binary a deploy uploads.
pub const MAX_UPLOAD: u64 = 256 << 20;

/// What a request asks for, with its parameters checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `POST /v1/topics/{topic}/messages`: the body is the payload.
    Publish {
        /// The topic.
        topic: String,
        /// Idempotency key (`id`).
        id: Option<String>,
        /// Partition key (`key`).
        key: Option<String>,
        /// From `atoll-header-*`, `traceparent` and `tracestate`.
        headers: Vec<(String, String)>,
    },
    /// `GET /v1/bus`.
    Overview,
    /// `GET /v1/bus/topics/{topic}/dead-letters`.
    DeadLetters {
        /// The topic.
        topic: String,
        /// One subscription, or all of the topic's.
        subscription: Option<String>,
        /// Most entries listed.
        limit: usize,
    },
    /// `POST /v1/bus/topics/{topic}/replay`.
    Replay {
        /// The topic.
        topic: String,
        /// One subscription, or all of the topic's.
        subscription: Option<String>,
        /// Only these messages, or all.
        ids: Option<Vec<String>>,
    },
    /// `GET /v1/components`: every component, its versions and stats.
    Components,
    /// `GET /v1/components/{name}`.
    Component(String),
    /// `POST /v1/components/{name}/versions?version=&canary=&force=`: the body is the binary.
    Deploy {
        /// Component name.
        name: String,
        /// The new version.
        version: semver::Version,
        /// Percent of traffic for a canary.
        canary: Option<u8>,
        /// Allow a downgrade or replacing a version's bytes.
        force: bool,
    },
    /// `POST /v1/components/{name}/promote`.
    Promote(String),
    /// `POST /v1/components/{name}/rollback?to=`.
    Rollback {
        /// Component name.
        name: String,
        /// A kept version, or (without) the canary / the version before the active one.
        to: Option<semver::Version>,
    },
    /// `DELETE /v1/components/{name}`.
    Remove(String),
    /// `GET /v1/calls?component=&route=&status=&since=&until=&limit=&follow=`:
    /// the call log's rows, oldest first; with `follow`, then new rows as
    /// they are written (newline-delimited JSON).
    Calls {
        /// The filters and limit (times resolved to Unix ms).
        query: CallQuery,
        /// Keep the answer open and stream new rows.
        follow: bool,
    },
    /// `GET /v1/logs?component=&source=&level=&since=&trace_id=&limit=&follow=`:
    /// guest and host log records, oldest first; with `follow`, then new
    /// records as they come (newline-delimited JSON).
    Logs {
        /// The filters and limit (`since` resolved to Unix ms).
        query: LogQuery,
        /// Keep the answer open and stream new records.
        follow: bool,
    },
}

/// A request the admin API refuses, with the status and what to tell the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The response status.
    pub status: StatusCode,
    /// `{"error": message}`.
    pub message: String,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            allow: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

/// Checks the bearer token, routes, and parses the parameters of a request.
pub fn parse(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    token: &str,
) -> Result<Action, ApiError> {
    authorize(headers, token)?;
    let (route, allow) = route(uri.path())?;
    if !allow.split(", ").any(|m| m == method.as_str()) {
        return Err(ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("{method} is not allowed here; use {allow}"),
            allow: Some(allow),
        });
    }
    let query = Query::parse(uri.query().unwrap_or(""))?;
    match route {
        Route::Publish(topic) => {
            query.only(&["id", "key"])?;
            if let Some(len) = headers.get(header::CONTENT_LENGTH)
                && let Some(len) = len.to_str().ok().and_then(|l| l.parse::<u64>().ok())
                && len > MAX_BODY
            {
                return Err(too_large());
            }
            Ok(Action::Publish {
                topic,
                id: query.single("id")?,
                key: query.single("key")?,
                headers: message_headers(headers)?,
            })
        }
        Route::Overview => {
            query.only(&[])?;
            Ok(Action::Overview)
        }
        Route::DeadLetters(topic) => {
            query.only(&["subscription", "limit"])?;
            Ok(Action::DeadLetters {
                topic,
                subscription: query.single("subscription")?,
                limit: limit(&query)?,
            })
        }
        Route::Components => {
            query.only(&[])?;
            Ok(Action::Components)
        }
        Route::Component(name) if method == Method::DELETE => {
            query.only(&[])?;
            Ok(Action::Remove(name))
        }
        Route::Component(name) => {
            query.only(&[])?;
            Ok(Action::Component(name))
        }
        Route::Deploy(name) => {
            query.only(&["version", "canary", "force"])?;
            let Some(version) = query.single("version")? else {
                return Err(ApiError::bad_request(
                    "query parameter `version` is missing; give the new version's semver, e.g. `?version=1.3.0`",
                ));
            };
            let version = parse_version(&version)?;
            let canary = match query.single("canary")? {
                None => None,
                Some(p) => match p.parse::<u8>() {
                    Ok(p) if (1..=99).contains(&p) => Some(p),
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "query parameter `canary` = `{p}` is not valid; give a percent of traffic from 1 to 99"
                        )));
                    }
                },
            };
            let force = match query.single("force")?.as_deref() {
                None | Some("false") => false,
                Some("true") => true,
                Some(f) => {
                    return Err(ApiError::bad_request(format!(
                        "query parameter `force` = `{f}` is not valid; give `true` or `false`"
                    )));
                }
            };
            if let Some(len) = headers.get(header::CONTENT_LENGTH)
                && let Some(len) = len.to_str().ok().and_then(|l| l.parse::<u64>().ok())
                && len > MAX_UPLOAD
            {
                return Err(upload_too_large());
            }
            Ok(Action::Deploy {
                name,
                version,
                canary,
                force,
            })
        }
        Route::Promote(name) => {
            query.only(&[])?;
            Ok(Action::Promote(name))
        }
        Route::Rollback(name) => {
            query.only(&["to"])?;
            Ok(Action::Rollback {
                name,
                to: query
                    .single("to")?
                    .as_deref()
                    .map(parse_version)
                    .transpose()?,
            })
        }
        Route::Calls => calls(&query),
        Route::Logs => logs(&query),
        Route::Replay(topic) => {
            query.only(&["subscription", "id"])?;
            let ids = query.all("id")?;
            Ok(Action::Replay {
                topic,
                subscription: query.single("subscription")?,
                ids: (!ids.is_empty()).then_some(ids),
            })
        }
    }
}

/// `GET /v1/calls`: `since` and `until` are a duration ago (`10m`) or an
/// RFC 3339 time; `status` a code, a class or a list (`404,5xx`).
fn calls(query: &Query) -> Result<Action, ApiError> {
    query.only(&[
        "component",
        "route",
        "status",
        "since",
        "until",
        "limit",
        "follow",
    ])?;
    let now = calllog::now_ms();
    let (since_ms, until_ms) = (time(query, "since", now)?, time(query, "until", now)?);
    if let (Some(since), Some(until)) = (since_ms, until_ms)
        && since > until
    {
        return Err(ApiError::bad_request(
            "query parameter `since` is after `until`; nothing can match",
        ));
    }
    let status = query.single("status")?;
    if let Some(s) = &status {
        StatusFilter::parse(s)
            .map_err(|e| ApiError::bad_request(format!("query parameter `status`: {e}")))?;
    }
    Ok(Action::Calls {
        query: CallQuery {
            component: query.single("component")?,
            route: query.single("route")?,
            status,
            since_ms,
            until_ms,
            limit: Some(limit(query)?),
        },
        follow: follow(query)?,
    })
}

/// `GET /v1/logs`: `level` is the least severe level shown; `since` as for
/// `/v1/calls`; `trace_id` the 32 hex digits of a traceparent's trace id.
fn logs(query: &Query) -> Result<Action, ApiError> {
    query.only(&[
        "component",
        "source",
        "level",
        "since",
        "trace_id",
        "limit",
        "follow",
    ])?;
    /// A parameter parsed with its type's `FromStr`, whose errors say what is valid.
    fn parsed<T: std::str::FromStr<Err = String>>(
        query: &Query,
        name: &str,
    ) -> Result<Option<T>, ApiError> {
        query
            .single(name)?
            .map(|v| {
                v.parse()
                    .map_err(|e| ApiError::bad_request(format!("query parameter `{name}`: {e}")))
            })
            .transpose()
    }
    Ok(Action::Logs {
        query: LogQuery {
            component: query.single("component")?,
            source: parsed::<Source>(query, "source")?,
            level: parsed::<Level>(query, "level")?,
            since_ms: time(query, "since", calllog::now_ms())?,
            trace_id: parsed::<TraceId>(query, "trace_id")?,
            limit: Some(limit(query)?),
        },
        follow: follow(query)?,
    })
}

/// A time parameter: a duration before `now` (`10m`) or an RFC 3339 time,
/// as Unix ms.
fn time(query: &Query, name: &str, now: u64) -> Result<Option<u64>, ApiError> {
    query
        .single(name)?
        .map(|v| {
            calllog::parse_time(&v, now)
                .map_err(|e| ApiError::bad_request(format!("query parameter `{name}`: {e}")))
        })
        .transpose()
}

/// `follow`: `1`/`true` or `0`/`false`, off when not given.
fn follow(query: &Query) -> Result<bool, ApiError> {
    match query.single("follow")?.as_deref() {
        None | Some("0") | Some("false") => Ok(false),
        Some("1") | Some("true") => Ok(true),
        Some(f) => Err(ApiError::bad_request(format!(
            "query parameter `follow` = `{f}` is not valid; give `1` or `0`"
        ))),
    }
}

/// `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when not given.
fn limit(query: &Query) -> Result<usize, ApiError> {
    match query.single("limit")? {
        None => Ok(DEFAULT_LIMIT),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "query parameter `limit` = `{l}` is not valid; give a number from 1 to {MAX_LIMIT}"
            ))),
        },
    }
}

/// The 413 for a body over [`MAX_BODY`].
pub fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the payload is larger than {} MiB, the most the admin API accepts (a topic's own `max_payload` may be lower)",
            MAX_BODY >> 20
        ),
    )
}

/// The 413 for a component over [`MAX_UPLOAD`].
pub fn upload_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the component is larger than {} MiB, the most a deploy accepts",
            MAX_UPLOAD >> 20
        ),
    )
}

fn parse_version(v: &str) -> Result<semver::Version, ApiError> {
    v.parse().map_err(|e| {
        ApiError::bad_request(format!(
            "version `{v}` is not semver ({e}); write it like `1.3.0`"
        ))
    })
}

fn authorize(headers: &HeaderMap, token: &str) -> Result<(), ApiError> {
    let unauthorized = |why: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "{why}; send `Authorization: Bearer <token>` with the token from `admin.token` in the host's data_dir (or ATOLL_ADMIN_TOKEN)"
            ),
        )
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized("missing bearer token"));
    };
    let value = value.as_bytes();
    // The scheme is case-insensitive (RFC 9110 section 11.1).
    let given = match value.split_at_checked(7) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest.trim_ascii(),
        _ => {
            return Err(unauthorized(
                "the Authorization header is not a bearer token",
            ));
        }
    };
    if bool::from(given.ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(unauthorized("wrong bearer token"))
    }
}

enum Route {
    Publish(String),
    Overview,
    DeadLetters(String),
    Replay(String),
    Components,
    Component(String),
    Deploy(String),
    Promote(String),
    Rollback(String),
    Calls,
    Logs,
}

/// The route of a path and the methods it takes (`"GET, DELETE"`).
fn route(path: &str) -> Result<(Route, &'static str), ApiError> {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let topic = |s: &str| -> Result<String, ApiError> {
        percent_decode_str(s)
            .decode_utf8()
            .map(Cow::into_owned)
            .map_err(|_| ApiError::bad_request("the topic in the path is not valid UTF-8"))
    };
    let component = |s: &str| -> Result<String, ApiError> {
        percent_decode_str(s)
            .decode_utf8()
            .map(Cow::into_owned)
            .map_err(|_| ApiError::bad_request("the component name in the path is not valid UTF-8"))
    };
    match segments.as_slice() {
        ["v1", "topics", t, "messages"] if !t.is_empty() => Ok((Route::Publish(topic(t)?), "POST")),
        ["v1", "bus"] => Ok((Route::Overview, "GET")),
        ["v1", "bus", "topics", t, "dead-letters"] if !t.is_empty() => {
            Ok((Route::DeadLetters(topic(t)?), "GET"))
        }
        ["v1", "bus", "topics", t, "replay"] if !t.is_empty() => {
            Ok((Route::Replay(topic(t)?), "POST"))
        }
        ["v1", "components"] => Ok((Route::Components, "GET")),
        ["v1", "calls"] => Ok((Route::Calls, "GET")),
        ["v1", "logs"] => Ok((Route::Logs, "GET")),
        ["v1", "components", c] if !c.is_empty() => {
            Ok((Route::Component(component(c)?), "GET, DELETE"))
        }
        ["v1", "components", c, "versions"] if !c.is_empty() => {
            Ok((Route::Deploy(component(c)?), "POST"))
        }
        ["v1", "components", c, "promote"] if !c.is_empty() => {
            Ok((Route::Promote(component(c)?), "POST"))
        }
        ["v1", "components", c, "rollback"] if !c.is_empty() => {
            Ok((Route::Rollback(component(c)?), "POST"))
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no such endpoint: {path}; the admin API has POST /v1/topics/{{topic}}/messages, GET /v1/bus, GET /v1/bus/topics/{{topic}}/dead-letters, POST /v1/bus/topics/{{topic}}/replay, GET /v1/components, GET|DELETE /v1/components/{{name}}, POST /v1/components/{{name}}/versions, POST /v1/components/{{name}}/promote, POST /v1/components/{{name}}/rollback, GET /v1/calls and GET /v1/logs"
            ),
        )),
    }
}

/// Message headers: `atoll-header-<name>` as `<name>`, then `traceparent`
/// and `tracestate`. Names arrive lower-cased (HTTP header names are
/// case-insensitive); values must be UTF-8.
fn message_headers(headers: &HeaderMap) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for (name, value) in headers {
        let message_name = match name.as_str().strip_prefix(HEADER_PREFIX) {
            Some("") => {
                return Err(ApiError::bad_request(format!(
                    "request header `{name}` names no message header; write `{HEADER_PREFIX}<name>: <value>`"
                )));
            }
            Some(n) => n,
            None if name.as_str() == "traceparent" || name.as_str() == "tracestate" => {
                name.as_str()
            }
            None => continue,
        };
        let value = std::str::from_utf8(value.as_bytes()).map_err(|_| {
            ApiError::bad_request(format!("the value of request header `{name}` is not UTF-8"))
        })?;
        out.push((message_name.to_string(), value.to_string()));
    }
    Ok(out)
}

/// Decoded query parameters, in order.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Result<Query, ApiError> {
        // form_urlencoded decodes invalid UTF-8 lossily; refuse it rather than
        // act on a mangled id.
        if percent_decode_str(query).decode_utf8().is_err() {
            return Err(ApiError::bad_request(
                "the query string is not valid UTF-8 once percent-decoded",
            ));
        }
        Ok(Query(
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        ))
    }

    /// Refuses parameters outside `known`.
    fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some((k, _)) if known.is_empty() => Err(ApiError::bad_request(format!(
                "unknown query parameter `{k}`; this endpoint takes none"
            ))),
            Some((k, _)) => Err(ApiError::bad_request(format!(
                "unknown query parameter `{k}`; this endpoint takes {}",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// A parameter given at most once, not empty.
    fn single(&self, name: &str) -> Result<Option<String>, ApiError> {
        let mut values = self.all(name)?.into_iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::bad_request(format!(
                "query parameter `{name}` is given more than once; give it once"
            )));
        }
        Ok(first)
    }

    /// Every value of a parameter, none empty.
    fn all(&self, name: &str) -> Result<Vec<String>, ApiError> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| {
                if v.is_empty() {
                    Err(ApiError::bad_request(format!(
                        "query parameter `{name}` is empty; give a value or leave it out"
                    )))
                } else {
                    Ok(v.clone())
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef";

    /// Extra request headers: (name, value) pairs.
    type Headers<'a> = &'a [(&'a str, &'a [u8])];

    fn request(method: Method, uri: &str, extra: Headers<'_>) -> Result<Action, ApiError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {TOKEN}").parse().unwrap(),
        );
        for (k, v) in extra {
            headers.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        parse(&method, &uri.parse().unwrap(), &headers, TOKEN)
    }

    fn error(r: Result<Action, ApiError>) -> ApiError {
        r.expect_err("the request should be refused")
    }

    #[test]
    fn every_request_needs_the_token() {
        let uri: Uri = "/v1/bus".parse().unwrap();
        let with = |auth: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(a) = auth {
                h.insert(header::AUTHORIZATION, a.parse().unwrap());
            }
            parse(&Method::GET, &uri, &h, TOKEN)
        };
        assert_eq!(with(Some(&format!("Bearer {TOKEN}"))), Ok(Action::Overview));
        assert_eq!(
            with(Some(&format!("bearer  {TOKEN} "))),
            Ok(Action::Overview)
        );
        for (auth, why) in [
            (None, "missing bearer token"),
            (Some(format!("Basic {TOKEN}")), "not a bearer token"),
            (Some("Bearer".to_string()), "not a bearer token"),
            (
                Some("Bearer 0123456789abcdeF".to_string()),
                "wrong bearer token",
            ),
            (Some(format!("Bearer {TOKEN}0")), "wrong bearer token"),
            (Some("Bearer ".to_string()), "wrong bearer token"),
        ] {
            let e = error(with(auth.as_deref()));
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{auth:?}");
            assert!(e.message.contains(why), "{auth:?}: {}", e.message);
            assert!(e.message.contains("admin.token"), "{}", e.message);
        }
        // Unauthenticated clients learn nothing about routes.
        let h = HeaderMap::new();
        let e = parse(&Method::GET, &"/nope".parse().unwrap(), &h, TOKEN).unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn routes_and_methods() {
        assert_eq!(request(Method::GET, "/v1/bus", &[]), Ok(Action::Overview));
        for path in [
            "/",
            "/v1",
            "/v1/bus/",
            "/v1/topics//messages",
            "/v1/topics/a/messages/x",
            "/v2/bus",
            "/v1/bus/topics/a",
        ] {
            let e = error(request(Method::GET, path, &[]));
            assert_eq!(e.status, StatusCode::NOT_FOUND, "{path}");
            assert!(e.message.contains("GET /v1/bus"), "{}", e.message);
        }
        let e = error(request(Method::GET, "/v1/topics/orders/messages", &[]));
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(e.allow, Some("POST"));
        let e = error(request(Method::DELETE, "/v1/bus", &[]));
        assert_eq!(e.allow, Some("GET"));
        assert_eq!(e.message, "DELETE is not allowed here; use GET");
        let e = error(request(Method::GET, "/v1/bus/topics/t/replay", &[]));
        assert_eq!(e.allow, Some("POST"));
        let e = error(request(Method::POST, "/v1/bus/topics/t/dead-letters", &[]));
        assert_eq!(e.allow, Some("GET"));
    }

    #[test]
    fn publish_takes_id_key_and_headers() {
        let a = request(
            Method::POST,
            "/v1/topics/orders.created/messages?id=a%2Fb+c&key=k%C3%A9",
            &[
                ("atoll-header-Content-Type", b"application/json"),
                ("atoll-header-x-tenant", "caf\u{e9}".as_bytes()),
                (
                    "traceparent",
                    b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("tracestate", b"congo=t61rcWkgMzE"),
                ("content-type", b"text/plain"),
                ("authorization-extra", b"ignored"),
            ],
        )
        .unwrap();
        let Action::Publish {
            topic,
            id,
            key,
            headers,
        } = a
        else {
            panic!("{a:?}")
        };
        assert_eq!(topic, "orders.created");
        assert_eq!(id.as_deref(), Some("a/b c"));
        assert_eq!(key.as_deref(), Some("k\u{e9}"));
        let mut headers = headers;
        headers.sort();
        assert_eq!(
            headers,
            [
                ("content-type", "application/json"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                ),
                ("tracestate", "congo=t61rcWkgMzE"),
                ("x-tenant", "caf\u{e9}"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );

        let a = request(Method::POST, "/v1/topics/t%2Dx/messages", &[]).unwrap();
        assert_eq!(
            a,
            Action::Publish {
                topic: "t-x".into(),
                id: None,
                key: None,
                headers: vec![]
            }
        );
    }

    #[test]
    fn publish_refuses_bad_parameters() {
        let cases: [(&str, Headers<'_>, StatusCode, &str); 8] = [
            ("?id=", &[], StatusCode::BAD_REQUEST, "`id` is empty"),
            (
                "?id=a&id=b",
                &[],
                StatusCode::BAD_REQUEST,
                "`id` is given more than once",
            ),
            (
                "?partition=a",
                &[],
                StatusCode::BAD_REQUEST,
                "unknown query parameter `partition`; this endpoint takes `id`, `key`",
            ),
            ("?key=%FF", &[], StatusCode::BAD_REQUEST, "not valid UTF-8"),
            (
                "",
                &[("atoll-header-", b"x")],
                StatusCode::BAD_REQUEST,
                "names no message header",
            ),
            (
                "",
                &[("atoll-header-x", b"\xff")],
                StatusCode::BAD_REQUEST,
                "`atoll-header-x` is not UTF-8",
            ),
            (
                "",
                &[("content-length", b"67108865")],
                StatusCode::PAYLOAD_TOO_LARGE,
                "larger than 64 MiB",
            ),
            ("?key=", &[], StatusCode::BAD_REQUEST, "`key` is empty"),
        ];
        for (query, headers, status, message) in cases {
            let e = error(request(
                Method::POST,
                &format!("/v1/topics/t/messages{query}"),
                headers,
            ));
            assert_eq!(e.status, status, "{query}");
            assert!(e.message.contains(message), "{query}: {}", e.message);
        }
        // Exactly the cap is accepted.
        request(
            Method::POST,
            "/v1/topics/t/messages",
            &[("content-length", b"67108864")],
        )
        .unwrap();
        let e = error(request(Method::POST, "/v1/topics/t%FF/messages", &[]));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn dead_letters_take_subscription_and_limit() {
        assert_eq!(
            request(Method::GET, "/v1/bus/topics/orders/dead-letters", &[]),
            Ok(Action::DeadLetters {
                topic: "orders".into(),
                subscription: None,
                limit: DEFAULT_LIMIT
            })
        );
        assert_eq!(
            request(
                Method::GET,
                "/v1/bus/topics/orders/dead-letters?subscription=orders%2Fbilling&limit=10000",
                &[]
            ),
            Ok(Action::DeadLetters {
                topic: "orders".into(),
                subscription: Some("orders/billing".into()),
                limit: 10_000
            })
        );
        for limit in ["0", "10001", "-1", "ten", "1.5"] {
            let e = error(request(
                Method::GET,
                &format!("/v1/bus/topics/o/dead-letters?limit={limit}"),
                &[],
            ));
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(
                e.message.contains("`limit`") && e.message.contains("from 1 to 10000"),
                "{}",
                e.message
            );
        }
        let e = error(request(
            Method::GET,
            "/v1/bus/topics/o/dead-letters?id=x",
            &[],
        ));
        assert!(
            e.message.contains("unknown query parameter `id`"),
            "{}",
            e.message
        );
        let e = error(request(Method::GET, "/v1/bus?x=1", &[]));
        assert!(e.message.contains("takes none"), "{}", e.message);
    }

    #[test]
    fn calls_take_filters_times_limit_and_follow() {
        assert_eq!(
            request(Method::GET, "/v1/calls", &[]),
            Ok(Action::Calls {
                query: CallQuery {
                    limit: Some(DEFAULT_LIMIT),
                    ..CallQuery::default()
                },
                follow: false
            })
        );
        let a = request(
            Method::GET,
            "/v1/calls?component=orders&route=%2Fapi%2F...&status=404,5xx&since=2026-01-02T15:04:05Z&until=2026-01-02T17:04:05%2B02:00&limit=7&follow=1",
            &[],
        );
        assert_eq!(
            a,
            Ok(Action::Calls {
                query: CallQuery {
                    component: Some("orders".into()),
                    route: Some("/api/...".into()),
                    status: Some("404,5xx".into()),
                    since_ms: Some(1_767_366_245_000),
                    until_ms: Some(1_767_366_245_000),
                    limit: Some(7),
                },
                follow: true
            })
        );
        // A duration is that long before now.
        let before = calllog::now_ms();
        let Ok(Action::Calls { query, .. }) = request(Method::GET, "/v1/calls?since=10m", &[])
        else {
            panic!("refused")
        };
        let since = query.since_ms.unwrap();
        assert!(since >= before - 600_000 && since <= calllog::now_ms() - 600_000);

        for (q, message) in [
            (
                "status=abc",
                "query parameter `status`: status `abc` is neither",
            ),
            (
                "since=yesterday",
                "query parameter `since`: `yesterday` is neither a duration ago",
            ),
            ("until=", "`until` is empty"),
            ("since=1m&until=10m", "`since` is after `until`"),
            ("limit=0", "from 1 to 10000"),
            ("follow=yes", "`follow` = `yes` is not valid"),
            (
                "component=a&component=b",
                "`component` is given more than once",
            ),
            ("topic=x", "unknown query parameter `topic`"),
        ] {
            let e = error(request(Method::GET, &format!("/v1/calls?{q}"), &[]));
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{q}");
            assert!(e.message.contains(message), "{q}: {}", e.message);
        }
        let e = error(request(Method::DELETE, "/v1/calls", &[]));
        assert_eq!(e.allow, Some("GET"));
        let e = error(request(Method::GET, "/v1/calls/x", &[]));
        assert!(e.message.contains("GET /v1/calls"), "{}", e.message);
    }

    #[test]
    fn logs_take_filters_limit_and_follow() {
        assert_eq!(
            request(Method::GET, "/v1/logs", &[]),
            Ok(Action::Logs {
                query: LogQuery {
                    limit: Some(DEFAULT_LIMIT),
                    ..LogQuery::default()
                },
                follow: false
            })
        );
        assert_eq!(
            request(
                Method::GET,
                "/v1/logs?component=orders&source=stderr&level=WARN&since=2026-01-02T15:04:05Z&trace_id=0af7651916cd43dd8448eb211c80319c&limit=7&follow=true",
                &[]
            ),
            Ok(Action::Logs {
                query: LogQuery {
                    component: Some("orders".into()),
                    source: Some(Source::Stderr),
                    level: Some(Level::Warn),
                    since_ms: Some(1_767_366_245_000),
                    trace_id: Some(TraceId(0x0af7651916cd43dd8448eb211c80319c)),
                    limit: Some(7),
                },
                follow: true
            })
        );
        for (q, message) in [
            (
                "source=file",
                "query parameter `source`: source `file` is not one of stdout, stderr, log, host",
            ),
            (
                "level=loud",
                "query parameter `level`: level `loud` is not one of trace, debug, info, warn, error, critical",
            ),
            (
                "trace_id=abc",
                "query parameter `trace_id`: trace id `abc` is not 32 hex digits",
            ),
            (
                "since=yesterday",
                "query parameter `since`: `yesterday` is neither a duration ago",
            ),
            ("limit=10001", "from 1 to 10000"),
            ("follow=yes", "`follow` = `yes` is not valid"),
            ("component=", "`component` is empty"),
            (
                "until=1h",
                "unknown query parameter `until`; this endpoint takes `component`, `source`, `level`, `since`, `trace_id`, `limit`, `follow`",
            ),
        ] {
            let e = error(request(Method::GET, &format!("/v1/logs?{q}"), &[]));
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{q}");
            assert!(e.message.contains(message), "{q}: {}", e.message);
        }
        assert_eq!(
            error(request(Method::POST, "/v1/logs", &[])).allow,
            Some("GET")
        );
        let e = error(request(Method::GET, "/v1/nope", &[]));
        assert!(e.message.contains("GET /v1/logs"), "{}", e.message);
    }

    #[test]
    fn replay_takes_subscription_and_ids() {
        assert_eq!(
            request(Method::POST, "/v1/bus/topics/orders/replay", &[]),
            Ok(Action::Replay {
                topic: "orders".into(),
                subscription: None,
                ids: None
            })
        );
        assert_eq!(
            request(
                Method::POST,
                "/v1/bus/topics/orders/replay?subscription=billing&id=A&id=B%20C",
                &[]
            ),
            Ok(Action::Replay {
                topic: "orders".into(),
                subscription: Some("billing".into()),
                ids: Some(vec!["A".into(), "B C".into()])
            })
        );
        let e = error(request(
            Method::POST,
            "/v1/bus/topics/o/replay?subscription=a&subscription=b",
            &[],
        ));
        assert!(e.message.contains("`subscription` is given more than once"));
        let e = error(request(Method::POST, "/v1/bus/topics/o/replay?id=", &[]));
        assert!(e.message.contains("`id` is empty"));
    }
}
