//! Routing a request to a component and running it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::oneshot;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use super::GatewayBody;
use super::body::{DurableBody, Finished};
use crate::calls::CallError;
use crate::engine::EPOCH_TICK;
use crate::kv::KvBackend;
use crate::registry::{ComponentRuntime, Limit};
use crate::sandbox::{self, DeadlineExceeded};
use crate::telemetry::span::{Span, SpanKind};

/// An invocation that has ended, or is still running as its own task.
enum Run {
    Done(Outcome),
    Running(tokio::task::JoinHandle<Outcome>),
}

impl Run {
    async fn finish(self) -> Outcome {
        match self {
            Run::Done(outcome) => outcome,
            Run::Running(task) => Outcome::joined(task.await),
        }
    }
}

/// Polls a future exactly once.
pub(super) async fn poll_once<F: Future + Unpin>(mut fut: F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut fut).poll(cx))).await
}

/// How an invocation ended.
struct Outcome {
    result: wasmtime::Result<()>,
    durable: anyhow::Result<()>,
}

impl Outcome {
    /// The outcome of an invocation task (a panic in it is a failure).
    fn joined(joined: Result<Outcome, tokio::task::JoinError>) -> Outcome {
        joined.unwrap_or_else(|e| Outcome {
            result: Err(wasmtime::Error::msg(format!("invocation task failed: {e}"))),
            durable: Ok(()),
        })
    }

    /// Whether a response already under way may be completed.
    fn finished(&self) -> Result<(), String> {
        if let Err(e) = &self.result {
            return Err(format!(
                "component failed before finishing its response: {e}"
            ));
        }
        match &self.durable {
            Err(e) => Err(format!("writes not durable: {e:#}")),
            Ok(()) => Ok(()),
        }
    }
}

/// Whether a response carries no body (RFC 9110 §6.4.1: HEAD, 1xx, 204, 304,
/// or a declared length of zero): its head alone completes it.
fn is_bodyless(head_only: bool, parts: &http::response::Parts) -> bool {
    head_only
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED
        || content_length(&parts.headers) == Some(0)
}

pub(super) fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A short plain-text response.
pub fn text_response(status: StatusCode, text: impl Into<String>) -> Response<GatewayBody> {
    let mut text = text.into();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let mut res = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// GETs `path` on one version directly (no socket, no route): its status and
/// up to 1 KiB of its body. Health checks use it before a version takes traffic.
pub async fn probe(
    rt: Arc<ComponentRuntime>,
    kv: Arc<dyn KvBackend>,
    path: &str,
) -> Result<(u16, String), String> {
    let req = http::Request::get(format!("http://localhost{path}"))
        .header(header::HOST, "localhost")
        .header(header::USER_AGENT, "atoll-health-check")
        .body(Empty::<Bytes>::new());
    let req = req.map_err(|e| format!("bad health path: {e}"))?;
    let res = invoke(rt, kv, req, Mode::Probe).await;
    let status = res.status().as_u16();
    // The first KiB of the body (frame by frame: `Limited` would box errors).
    let mut body = res.into_body();
    let mut text = Vec::new();
    while text.len() < 1024 {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    text.extend_from_slice(data);
                }
            }
            Some(Err(e)) => {
                text.extend_from_slice(format!(" (body failed: {e})").as_bytes());
                break;
            }
            None => break,
        }
    }
    text.truncate(1024);
    Ok((status, String::from_utf8_lossy(&text).into_owned()))
}

/// Marks a response the host made because a limit was reached (not the
/// version's fault).
#[derive(Clone, Copy)]
pub(super) struct HostLimit;

/// Who an invocation is for.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Mode {
    /// A client's request: it takes a slot of the component's `max_concurrency`.
    Request,
    /// The host's health check: it must work even when clients fill every
    /// slot (a fix must be deployable to a saturated component), so it takes
    /// none; the pool's slack has room for it.
    Probe,
}

/// Runs one request on one version in a fresh instance.
pub(super) async fn invoke<B>(
    rt: Arc<ComponentRuntime>,
    kv: Arc<dyn KvBackend>,
    req: http::Request<B>,
    mode: Mode,
) -> Response<GatewayBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let permit = match mode {
        Mode::Request => rt.concurrency.clone().try_acquire_owned().ok(),
        Mode::Probe => None,
    };
    if mode == Mode::Request && permit.is_none() {
        tracing::warn!(component = %rt.name, limit = rt.limits.max_concurrency, "concurrency limit reached");
        let mut res = text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "atoll: component `{}` is at its concurrency limit ({}); retry shortly",
                rt.name, rt.limits.max_concurrency
            ),
        );
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        res.extensions_mut().insert(HostLimit);
        rt.stats.limit(Limit::Concurrency);
        return res;
    }
    let head_only = req.method() == Method::HEAD;
    let deadline = Instant::now() + rt.limits.deadline;
    let mut store = sandbox::new_store(&rt.engine, &rt.grants, deadline);
    // Messages this request publishes carry its trace context.
    store.data_mut().bus_mut().traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (head_tx, head_rx) = oneshot::channel();
    let resources = (|| {
        let mut http = store.data_mut().http();
        let req = http.new_incoming_request(Scheme::Http, req)?;
        let out = http.new_response_outparam(head_tx)?;
        anyhow::Ok((req, out))
    })();
    let (req, out) = match resources {
        Ok(v) => v,
        Err(e) => {
            return text_response(StatusCode::BAD_REQUEST, format!("atoll: bad request: {e}"));
        }
    };

    let runtime = rt.clone();
    let name = rt.name.clone();
    let span = Span::new("component.invoke", SpanKind::Internal).with(|a| {
        a.str("component", &rt.name)
            .str("version", &rt.grants.version);
    });
    let traced = span.clone();
    if traced.is_recording() {
        store.data_mut().trace_version(&rt.grants);
    }
    // The invocation runs in this span (or, not exported, in the request's
    // trace context), also when it continues as its own task.
    let invocation = span.instrument(async move {
            let _permit = permit;
            let rt = runtime;
            let _in_flight = rt.stats.enter();
            let run = async {
                let began = traced.is_recording().then(Instant::now);
                let instance = rt.pre.instantiate_async(&mut store).await?;
                if let Some(began) = began {
                    let us = began.elapsed().as_micros() as u64;
                    traced.record(|a| _ = a.uint("instantiate_us", us));
                }
                let proxy = rt
                    .http
                    .as_ref()
                    .ok_or_else(|| wasmtime::Error::msg("component does not export wasi:http/incoming-handler"))?
                    .load(&mut store, &instance)?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            };
            // The epoch callback stops wasm that computes past the deadline;
            // this also stops a guest that waits on I/O past it.
            let grace = tokio::time::Instant::from_std(deadline + 2 * EPOCH_TICK);
            let result = match tokio::time::timeout_at(grace, run).await {
                Ok(r) => r,
                Err(_) => Err(wasmtime::Error::new(DeadlineExceeded)),
            };
            if result.is_err() {
                traced.record(|a| _ = a.error());
            }
            // Messages it published are stored only if it ended well.
            let staged = store.data_mut().bus_mut().take_staged();
            let bus = store.data_mut().bus_mut().bus().cloned();
            // Wait for durability if this invocation wrote, or if it read
            // while someone's writes were not yet durable (it may have seen
            // them, and must not answer with what could be lost).
            let state = store.data();
            let must_sync = state.kv_dirty() || (state.kv_touched() && kv.has_pending());
            let durable = match (bus, &result) {
                // Storing the messages waits for a flush that covers the kv writes too.
                (Some(bus), Ok(())) if !staged.is_empty() => bus
                    .store(staged, None)
                    .await
                    .map(drop)
                    .map_err(|e| anyhow::anyhow!("publishing failed: {e}")),
                _ if must_sync => kv.sync().await,
                _ => Ok(()),
            };
            if let Err(e) = &durable {
                tracing::error!(component = %name, error = %format!("{e:#}"), "kv writes could not be made durable");
            }
            drop(store);
            Outcome { result, durable }
        });

    // Fast path: poll the invocation once, right here. Most guests set
    // their response, write it and return within that one poll, and then
    // no task is spawned and nothing hops threads. Otherwise the rest runs
    // as its own task: on the clock (its deadline does not depend on the
    // client reading), and to completion even if the client goes away, as
    // in `wasmtime serve` (a handler is never cut off between two writes).
    let mut invocation: Pin<Box<dyn Future<Output = Outcome> + Send>> = Box::pin(invocation);
    let run = match poll_once(invocation.as_mut()).await {
        Poll::Ready(outcome) => Run::Done(outcome),
        Poll::Pending => Run::Running(tokio::spawn(invocation)),
    };
    let mut head_rx = head_rx;
    let (head, run) = match run {
        Run::Done(outcome) => (head_rx.try_recv().ok(), Run::Done(outcome)),
        Run::Running(mut task) => tokio::select! {
            biased;
            head = &mut head_rx => (head.ok(), Run::Running(task)),
            joined = &mut task => (head_rx.try_recv().ok(), Run::Done(Outcome::joined(joined))),
        },
    };

    match head {
        Some(Ok(res)) => {
            let (parts, body) = res.into_parts();
            if is_bodyless(head_only, &parts) {
                // The head alone completes this response, so it waits for
                // the invocation to end well. The guest may write a body
                // even for HEAD: read and discard it meanwhile, so the
                // guest neither blocks on it nor sees its writes fail.
                let drain = async move {
                    let mut body = body;
                    while let Some(Ok(_)) = body.frame().await {}
                };
                let (outcome, ()) = tokio::join!(run.finish(), drain);
                if outcome.result.is_err() {
                    return failure_response(&rt, outcome);
                }
                return match outcome.finished() {
                    Ok(()) => Response::from_parts(
                        parts,
                        Empty::new().map_err(|e| match e {}).boxed_unsync(),
                    ),
                    Err(why) => storage_failure(&rt, &why),
                };
            }
            let length = content_length(&parts.headers);
            let finished: Finished = Box::pin(async move { run.finish().await.finished() });
            Response::from_parts(
                parts,
                DurableBody::new(body, length, finished).boxed_unsync(),
            )
        }
        Some(Err(code)) => {
            // Still wait: writes made before the error must not be lost silently.
            run.finish().await;
            tracing::warn!(component = %rt.name, error = ?code, "component responded with an error");
            text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("atoll: component `{}` failed: {code:?}", rt.name),
            )
        }
        // The outparam was dropped unset: the invocation ended without a response.
        None => failure_response(&rt, run.finish().await),
    }
}

fn failure_response(rt: &ComponentRuntime, outcome: Outcome) -> Response<GatewayBody> {
    match outcome.result {
        Ok(()) => text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "atoll: component `{}` returned without sending a response",
                rt.name
            ),
        ),
        Err(e) if e.downcast_ref::<DeadlineExceeded>().is_some() => {
            rt.stats.limit(Limit::Deadline);
            tracing::warn!(component = %rt.name, deadline = ?rt.limits.deadline, "deadline exceeded");
            text_response(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "atoll: component `{}` did not respond within its deadline ({:?})",
                    rt.name, rt.limits.deadline
                ),
            )
        }
        Err(e)
            if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                .is_some() =>
        {
            tracing::warn!(component = %rt.name, "instance pool exhausted");
            let mut res = text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "atoll: the host is at its instance limit; retry shortly",
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            res.extensions_mut().insert(HostLimit);
            rt.stats.limit(Limit::Pool);
            res
        }
        Err(e) if e.downcast_ref::<CallError>().is_some() => {
            let call = e.downcast_ref::<CallError>().expect("checked above");
            let status =
                StatusCode::from_u16(call.failure.status()).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut res = text_response(status, format!("atoll: {call}"));
            // The callee's failure (or its guard's refusal), not this version's.
            res.extensions_mut().insert(HostLimit);
            if status == StatusCode::SERVICE_UNAVAILABLE {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            res
        }
        Err(e) => {
            let what = match e.downcast_ref::<wasmtime::Trap>() {
                Some(trap) => trap.to_string(),
                None => e.root_cause().to_string(),
            };
            rt.stats.trapped(&e);
            tracing::warn!(component = %rt.name, error = ?e, "invocation failed");
            text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("atoll: component `{}` failed: {what}", rt.name),
            )
        }
    }
}

fn storage_failure(rt: &ComponentRuntime, why: &str) -> Response<GatewayBody> {
    text_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("atoll: component `{}`: {why}", rt.name),
    )
}
