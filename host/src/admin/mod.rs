//! The admin API: an HTTP/1.1 listener of its own (`[host] admin_listen`),
//! protected by a bearer token, through which operators and the `atoll` CLI
//! publish messages and inspect and repair the bus.
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /v1/topics/{topic}/messages?id=&key=` | 201 `{"id", "duplicate": false}`, 200 when a duplicate |
//! | `GET /v1/bus` | the bus overview |
//! | `GET /v1/bus/topics/{topic}/dead-letters?subscription=&limit=` | its dead letters |
//! | `POST /v1/bus/topics/{topic}/replay?subscription=&id=&id=` | `{"replayed": n}` |
//! | `GET /v1/components` | every component: versions, routes, topics, interfaces, stats, events |
//! | `GET /v1/components/{name}` | one of them |
//! | `POST /v1/components/{name}/versions?version=&canary=&force=` | deploy the body (a component binary); 201 with a report |
//! | `POST /v1/components/{name}/promote` | the canary becomes active |
//! | `POST /v1/components/{name}/rollback?to=` | drop the canary, or activate a kept version |
//! | `DELETE /v1/components/{name}` | stop serving it, after in-flight work drains |
//! | `GET /v1/calls?component=&route=&status=&since=&until=&limit=&follow=` | the call log's newest `limit` matching rows, oldest first; `follow=1`: as newline-delimited JSON, then each new row until the host stops |
//! | `GET /v1/logs?component=&source=&level=&since=&trace_id=&limit=&follow=` | the newest `limit` matching guest and host log records ([`crate::telemetry::logs`]), oldest first; `follow=1` as for `/v1/calls` |
//!
//! `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus text), and the
//! status page `GET /status` with its data `GET /status.json` need no
//! token. Errors are `{"error": "..."}`. A message's headers come from the request
//! headers `atoll-header-<name>`, plus `traceparent` and `tracestate`.
//!
//! The CLI finds a host through two files in its `data_dir`: `admin.json`
//! (address and pid, while the host runs) and `admin.token`.

mod files;
mod routes;
pub mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::bus::{Bus, BusError, Origin, Outgoing};
use crate::gateway::listen;
use crate::registry::{ComponentView, DeployError, DeployRequest, Registry};

pub use files::{
    DISCOVERY_FILE, Discovery, TOKEN_ENV, TOKEN_FILE, discovery_path, load_or_create_token,
    read_discovery, read_token, remove_discovery, write_discovery,
};
pub use routes::{Action, ApiError, DEFAULT_LIMIT, HEADER_PREFIX, MAX_BODY, MAX_LIMIT, MAX_UPLOAD};

pub use crate::gateway::HEADER_READ_TIMEOUT;
/// How long in-flight admin requests may take to finish on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The `WWW-Authenticate` challenge of a 401.
pub const CHALLENGE: &str = "Bearer realm=\"atoll-admin\"";

/// The body of an admin answer: whole, or a stream of lines (`follow=1`).
pub type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

/// What the admin API serves from.
pub struct AdminState {
    /// The bus it drives.
    pub bus: Arc<Bus>,
    /// The components it deploys.
    pub registry: Arc<Registry>,
    /// Whether the gateway serves (false while starting and stopping).
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    /// The bearer token every request must carry.
    pub token: Arc<str>,
    /// The gateway's call log, when it is on.
    pub calls: Option<Arc<crate::gateway::calllog::CallLog>>,
    /// The gateway (routes, policies, upstreams), for metrics and views.
    pub gateway: Option<Arc<crate::gateway::Gateway>>,
}

/// Binds the admin listener, with an error that says what to do.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    listen::bind(
        addr,
        &listen::Setting {
            what: " for the admin API",
            key: "admin_listen",
            flag: "--admin-listen",
        },
    )
    .await
}

/// Serves the admin API until `shutdown` flips, then lets in-flight requests
/// finish for up to [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let span = |peer| tracing::debug_span!("admin.connection", %peer);
    let stopping = shutdown.clone();
    listen::accept_until(listener, shutdown, SHUTDOWN_GRACE, span, |stream, peer| {
        let state = state.clone();
        let stopping = stopping.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            let stopping = stopping.clone();
            async move { Ok::<_, Infallible>(handle(state, req, peer, stopping).await) }
        });
        builder.serve_connection(TokioIo::new(stream), service)
    })
    .await;
    Ok(())
}

async fn handle(
    state: Arc<AdminState>,
    req: Request<Incoming>,
    peer: SocketAddr,
    stopping: watch::Receiver<bool>,
) -> Response<AdminBody> {
    let (parts, body) = req.into_parts();
    let span =
        tracing::info_span!("admin.request", method = %parts.method, path = parts.uri.path());
    async move {
        if let Some(res) = open_endpoint(&state, &parts.method, parts.uri.path()) {
            return res.map(BodyExt::boxed_unsync);
        }
        let result = match routes::parse(&parts.method, &parts.uri, &parts.headers, &state.token) {
            Ok(Action::Calls {
                query,
                follow: true,
            }) => follow_calls(&state, &query).await,
            Ok(Action::Logs {
                query,
                follow: true,
            }) => Ok(follow_logs(&query, stopping)),
            Ok(action) => execute(&state, action, body)
                .await
                .map(|res| res.map(BodyExt::boxed_unsync)),
            Err(e) => Err(e),
        };
        match result {
            Ok(response) => response,
            Err(e) => {
                if e.status == StatusCode::UNAUTHORIZED {
                    tracing::warn!(%peer, "admin request refused: {}", e.message);
                } else if e.status.is_server_error() {
                    tracing::error!("admin request failed: {}", e.message);
                } else {
                    tracing::debug!(status = %e.status, "admin request refused: {}", e.message);
                }
                error_response(e).map(BodyExt::boxed_unsync)
            }
        }
    }
    .instrument(span)
    .await
}

/// The endpoints that need no token (probes and scrapers): `GET /healthz`,
/// `GET /readyz`, `GET /metrics`, `GET /status`, `GET /status.json`. They
/// reveal names and counts, never payloads or secrets.
fn open_endpoint(
    state: &AdminState,
    method: &http::Method,
    path: &str,
) -> Option<Response<Full<Bytes>>> {
    if method != http::Method::GET {
        return None;
    }
    let text = |status: StatusCode, content_type: &'static str, body: String| {
        let mut res = Response::new(Full::new(Bytes::from(body)));
        *res.status_mut() = status;
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        res
    };
    match path {
        "/healthz" => Some(text(StatusCode::OK, "text/plain", "ok\n".into())),
        "/readyz" => {
            let mut why = Vec::new();
            if !state.ready.load(std::sync::atomic::Ordering::Acquire) {
                why.push("the gateway is not serving (starting or stopping)".to_string());
            }
            for service in state.registry.services() {
                if service.deployment().active.is_none() {
                    why.push(format!("component `{}` is removed", service.name()));
                }
            }
            Some(match why.is_empty() {
                true => text(StatusCode::OK, "text/plain", "ready\n".into()),
                false => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {}\n", why.join("; ")),
                ),
            })
        }
        "/metrics" => Some(text(
            StatusCode::OK,
            crate::telemetry::metrics::CONTENT_TYPE,
            crate::telemetry::metrics::render(
                &state.registry,
                &state.bus,
                state.gateway.as_deref(),
            ),
        )),
        "/status" => Some(status::page()),
        "/status.json" => Some(status::json(state)),
        _ => None,
    }
}

async fn execute(
    state: &AdminState,
    action: Action,
    body: Incoming,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let bus = &state.bus;
    let registry = &state.registry;
    match action {
        Action::Components => json(StatusCode::OK, &registry.view()),
        Action::Component(name) => match registry.service(&name) {
            Some(service) => json(StatusCode::OK, &ComponentView::of(service, registry)),
            None => Err(deploy_error(DeployError::UnknownComponent(
                name,
                registry
                    .services()
                    .map(|s| s.name().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ))),
        },
        Action::Deploy {
            name,
            version,
            canary,
            force,
        } => {
            let bytes = read_body(body, MAX_UPLOAD, routes::upload_too_large).await?;
            let request = DeployRequest {
                version,
                canary,
                force,
                origin: crate::registry::Origin::Deploy,
            };
            let registry = registry.clone();
            let report =
                detached(async move { registry.deploy(&name, bytes, request).await }).await?;
            let status = if report.unchanged {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            json(status, &report)
        }
        Action::Promote(name) => {
            let registry = registry.clone();
            json(
                StatusCode::OK,
                &detached(async move { registry.promote(&name).await }).await?,
            )
        }
        Action::Rollback { name, to } => {
            let registry = registry.clone();
            json(
                StatusCode::OK,
                &detached(async move { registry.rollback(&name, to).await }).await?,
            )
        }
        Action::Remove(name) => {
            let registry = registry.clone();
            json(
                StatusCode::OK,
                &detached(async move { registry.remove(&name).await }).await?,
            )
        }
        Action::Publish {
            topic,
            id,
            key,
            headers,
        } => {
            let payload = read_body(body, MAX_BODY, routes::too_large).await?;
            let message = Outgoing {
                topic: topic.clone(),
                payload,
                headers,
                id,
                partition_key: key,
            };
            let published = bus
                .publish(Origin::Operator, vec![message])
                .await
                .map_err(bus_error)?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the bus returned no result for the message",
                    )
                })?;
            tracing::info!(
                topic,
                id = published.id,
                duplicate = published.duplicate,
                "operator published"
            );
            let status = if published.duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            json(status, &published)
        }
        Action::Overview => json(StatusCode::OK, &bus.overview()),
        Action::DeadLetters {
            topic,
            subscription,
            limit,
        } => {
            // Reading up to MAX_LIMIT entries from the store blocks.
            let bus = bus.clone();
            let letters = tokio::task::spawn_blocking(move || {
                bus.dead_letters(&topic, subscription.as_deref(), limit)
            })
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("listing dead letters failed: {e}"),
                )
            })?
            .map_err(bus_error)?;
            json(StatusCode::OK, &letters)
        }
        Action::Calls { query, .. } => {
            let rows = call_log(state)?.query(&query).await.map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reading the call log failed: {e:#}"),
                )
            })?;
            json(StatusCode::OK, &rows)
        }
        Action::Logs { query, .. } => {
            let records = crate::telemetry::logs::hub().query(&query);
            json(
                StatusCode::OK,
                &records.iter().map(|r| &**r).collect::<Vec<_>>(),
            )
        }
        Action::Replay {
            topic,
            subscription,
            ids,
        } => {
            let replayed = bus
                .replay(&topic, subscription.as_deref(), ids.as_deref())
                .await
                .map_err(bus_error)?;
            tracing::info!(
                topic,
                subscription,
                replayed,
                "operator replayed dead letters"
            );
            json(StatusCode::OK, &serde_json::json!({ "replayed": replayed }))
        }
    }
}

/// The call log, or a 404 that says how to turn it on.
fn call_log(state: &AdminState) -> Result<&Arc<crate::gateway::calllog::CallLog>, ApiError> {
    state.calls.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "the call log is disabled on this host; set `enabled = true` under [gateway.call_log] in atoll.toml and restart it",
        )
    })
}

/// `GET /v1/calls?follow=1`: the matching rows as newline-delimited JSON,
/// then each new one, until the client goes or the host stops.
async fn follow_calls(
    state: &AdminState,
    query: &crate::gateway::calllog::CallQuery,
) -> Result<Response<AdminBody>, ApiError> {
    let lines = call_log(state)?.follow_json(query).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the call log failed: {e:#}"),
        )
    })?;
    Ok(ndjson(lines))
}

/// A streamed answer of newline-delimited JSON.
fn ndjson(lines: tokio::sync::mpsc::Receiver<Bytes>) -> Response<AdminBody> {
    let mut res = Response::new(Lines(lines).boxed_unsync());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    res
}

/// `GET /v1/logs?follow=1`: the matching records as newline-delimited JSON,
/// then each new one, until the client goes or the host stops. A line
/// `{"lagged": n}` says n records went by while the client was behind.
fn follow_logs(
    query: &crate::telemetry::logs::LogQuery,
    mut stopping: watch::Receiver<bool>,
) -> Response<AdminBody> {
    use crate::telemetry::logs::{Followed, hub};
    let (backlog, mut follower) = hub().follow(query);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut lines = Vec::new();
        for record in &backlog {
            json_line(&mut lines, &**record);
        }
        if !lines.is_empty() && tx.send(Bytes::from(lines)).await.is_err() {
            return;
        }
        loop {
            let next = tokio::select! {
                _ = tx.closed() => return,
                _ = stopping.wait_for(|stop| *stop) => return,
                next = follower.next() => next,
            };
            let mut line = Vec::new();
            match next {
                None => return,
                Some(Followed::Record(record)) => json_line(&mut line, &*record),
                Some(Followed::Lagged(n)) => {
                    json_line(&mut line, &serde_json::json!({ "lagged": n }))
                }
            }
            if tx.send(Bytes::from(line)).await.is_err() {
                return;
            }
        }
    });
    ndjson(rx)
}

/// `value` as one line of JSON (records and small objects always encode).
fn json_line(out: &mut Vec<u8>, value: &impl Serialize) {
    if serde_json::to_writer(&mut *out, value).is_ok() {
        out.push(b'\n');
    }
}

/// A body of the chunks a task sends; it ends when the task drops its sender.
struct Lines(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Lines {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(http_body::Frame::data(c))))
    }
}

/// The request body, at most `limit` bytes (else `too_large()`).
async fn read_body(
    body: Incoming,
    limit: u64,
    too_large: fn() -> ApiError,
) -> Result<Vec<u8>, ApiError> {
    match Limited::new(body, limit as usize).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("reading the request body failed: {e}"),
        )),
    }
}

/// Runs a registry change as a task of its own: hyper drops a request's
/// future when its client disconnects (Ctrl-C, a timeout), and a change cut
/// between writing the registry file and the swap would leave the file and
/// what serves disagreeing.
async fn detached<T: Send + 'static>(
    change: impl std::future::Future<Output = Result<T, DeployError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(change)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the change failed: {e}"),
            )
        })?
        .map_err(deploy_error)
}

fn deploy_error(e: DeployError) -> ApiError {
    ApiError::new(e.status(), e.to_string())
}

fn bus_error(e: BusError) -> ApiError {
    // The bus's messages name the problem; this adds where to look.
    let hint = match &e {
        BusError::UnknownTopic(_) => "; `atoll bus ls` lists the declared topics",
        _ => "",
    };
    ApiError::new(e.status(), format!("{e}{hint}"))
}

fn json(status: StatusCode, value: &impl Serialize) -> Result<Response<Full<Bytes>>, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the response failed: {e}"),
        )
    })?;
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

/// `{"error": message}` with the error's status, a `WWW-Authenticate`
/// challenge on 401 and `Allow` on 405.
pub fn error_response(e: ApiError) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": e.message });
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = e.status;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if e.status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(CHALLENGE),
        );
    }
    if let Some(allow) = e.allow {
        headers.insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(res: Response<Full<Bytes>>) -> serde_json::Value {
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn errors_are_json_with_their_headers() {
        let res = error_response(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong bearer token",
        ));
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            res.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"atoll-admin\""
        );
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            body_json(res).await,
            serde_json::json!({"error": "wrong bearer token"})
        );

        let res = error_response(ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "no".into(),
            allow: Some("GET"),
        });
        assert_eq!(res.headers()[header::ALLOW], "GET");
        assert!(res.headers().get(header::WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn bus_errors_keep_their_status_and_say_what_to_do() {
        let e = bus_error(BusError::UnknownTopic("nope".into()));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert!(
            e.message.starts_with("unknown topic: nope; "),
            "{}",
            e.message
        );
        assert!(e.message.contains("`atoll bus ls`"), "{}", e.message);
        let e = bus_error(BusError::TooLarge(
            "payload 2 MiB > max_payload 1 MiB".into(),
        ));
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.message, "too large: payload 2 MiB > max_payload 1 MiB");
    }

    #[tokio::test]
    async fn bind_names_admin_listen_when_the_port_is_taken() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let e = bind(taken.local_addr().unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot listen for the admin API"), "{e}");
        assert!(e.contains("`[host] admin_listen`"), "{e}");
        assert!(e.contains("in use"), "{e}");
    }
}
