//! Routing a request to a component and running it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tracing::Instrument;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use super::GatewayBody;
use super::body::{DurableBody, Finished};
use crate::engine::EPOCH_TICK;
use crate::kv::KvBackend;
use crate::registry::{ComponentRuntime, Registry};
use crate::sandbox::{self, DeadlineExceeded};

/// Routes and runs requests.
pub struct Gateway {
    registry: Arc<Registry>,
    kv: Arc<dyn KvBackend>,
}

/// How an invocation ended.
struct Outcome {
    result: wasmtime::Result<()>,
    durable: anyhow::Result<()>,
}

impl Outcome {
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

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
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

impl Gateway {
    /// A gateway over a registry and the kv backend its components write to.
    pub fn new(registry: Arc<Registry>, kv: Arc<dyn KvBackend>) -> Self {
        Gateway { registry, kv }
    }

    /// Handles one request end to end; never fails (errors become responses).
    pub async fn handle(
        &self,
        req: http::Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<GatewayBody> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let span = tracing::info_span!(
            "gateway.request",
            %method,
            path = %path,
            %peer,
            component = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        async move {
            let rt = self.registry.routes().lookup(&path).cloned();
            let res = match rt {
                None => text_response(StatusCode::NOT_FOUND, format!("atoll: no route for {path}")),
                Some(rt) => {
                    tracing::Span::current().record("component", &*rt.name);
                    self.invoke(rt, req).await
                }
            };
            tracing::Span::current().record("status", res.status().as_u16());
            res
        }
        .instrument(span)
        .await
    }

    async fn invoke(
        &self,
        rt: Arc<ComponentRuntime>,
        req: http::Request<Incoming>,
    ) -> Response<GatewayBody> {
        let Ok(permit) = rt.concurrency.clone().try_acquire_owned() else {
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
            return res;
        };
        let head_only = req.method() == Method::HEAD;
        let deadline = Instant::now() + rt.limits.deadline;
        let mut store = sandbox::new_store(&rt.engine, &rt.grants, deadline);
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

        let (done_tx, done_rx) = oneshot::channel::<Outcome>();
        let kv = self.kv.clone();
        let pre = rt.pre.clone();
        let name = rt.name.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                let run = async {
                    let proxy = pre.instantiate_async(&mut store).await?;
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
                // Wait for durability if this invocation wrote, or if it read
                // while someone's writes were not yet durable (it may have
                // seen them, and must not answer with what could be lost).
                let state = store.data();
                let must_sync =
                    state.kv_dirty() || (state.kv_touched() && kv.has_pending());
                let durable = if must_sync { kv.sync().await } else { Ok(()) };
                if let Err(e) = &durable {
                    tracing::error!(component = %name, error = %format!("{e:#}"), "kv writes could not be made durable");
                }
                drop(store);
                let _ = done_tx.send(Outcome { result, durable });
            }
            .instrument(tracing::debug_span!("component.invoke", component = %rt.name)),
        );

        match head_rx.await {
            Ok(Ok(res)) => {
                let (parts, body) = res.into_parts();
                if is_bodyless(head_only, &parts) {
                    // The head alone completes this response, so it waits for
                    // the invocation to end well. Nobody will read the guest's
                    // body (a guest may write one even for HEAD): drop it, so
                    // its writes fail fast instead of blocking the guest.
                    drop(body);
                    return match done_rx.await {
                        Ok(outcome) if outcome.result.is_err() => failure_response(&rt, outcome),
                        Ok(outcome) => match outcome.finished() {
                            Ok(()) => Response::from_parts(
                                parts,
                                Empty::new().map_err(|e| match e {}).boxed_unsync(),
                            ),
                            Err(why) => storage_failure(&rt, &why),
                        },
                        Err(_) => internal(&rt),
                    };
                }
                let length = content_length(&parts.headers);
                let finished: Finished = Box::pin(async move {
                    match done_rx.await {
                        Ok(outcome) => outcome.finished(),
                        Err(_) => Err("invocation ended abnormally".into()),
                    }
                });
                Response::from_parts(
                    parts,
                    DurableBody::new(body, length, finished).boxed_unsync(),
                )
            }
            Ok(Err(code)) => {
                // Still wait: writes made before the error must not be lost silently.
                let _ = done_rx.await;
                tracing::warn!(component = %rt.name, error = ?code, "component responded with an error");
                text_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("atoll: component `{}` failed: {code:?}", rt.name),
                )
            }
            // The outparam was dropped unset: the invocation ended without a response.
            Err(_) => match done_rx.await {
                Ok(outcome) => failure_response(&rt, outcome),
                Err(_) => internal(&rt),
            },
        }
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
            res
        }
        Err(e) => {
            let what = match e.downcast_ref::<wasmtime::Trap>() {
                Some(trap) => trap.to_string(),
                None => e.root_cause().to_string(),
            };
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

fn internal(rt: &ComponentRuntime) -> Response<GatewayBody> {
    text_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!(
            "atoll: component `{}`: invocation ended abnormally",
            rt.name
        ),
    )
}
