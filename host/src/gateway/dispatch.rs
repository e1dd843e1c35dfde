//! Routing a request to a component and running it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tracing::Instrument;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};

use super::body::{DurableBody, Finished};
use super::{BoxError, GatewayBody};
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
    fn finished(&self) -> Finished {
        match &self.durable {
            Err(e) => Err(format!("writes not durable: {e:#}")),
            Ok(()) => Ok(()),
        }
    }
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
                let durable = if store.data().kv_dirty() { kv.sync().await } else { Ok(()) };
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
                // A response with no body is complete once its head is out:
                // wait for the invocation (and its durability) before sending it.
                let bodyless = head_only
                    || parts.status == StatusCode::NO_CONTENT
                    || parts.status == StatusCode::NOT_MODIFIED
                    || parts
                        .headers
                        .get(header::CONTENT_LENGTH)
                        .is_some_and(|v| v == "0");
                if bodyless {
                    return match done_rx.await {
                        Ok(outcome) => match outcome.finished() {
                            Ok(()) => Response::from_parts(
                                parts,
                                body.map_err(BoxError::from).boxed_unsync(),
                            ),
                            Err(why) => storage_failure(&rt, &why),
                        },
                        Err(_) => internal(&rt),
                    };
                }
                let (fin_tx, fin_rx) = oneshot::channel();
                tokio::spawn(async move {
                    let finished = match done_rx.await {
                        Ok(outcome) => outcome.finished(),
                        Err(_) => Err("invocation ended abnormally".into()),
                    };
                    let _ = fin_tx.send(finished);
                });
                Response::from_parts(parts, DurableBody::new(body, fin_rx).boxed_unsync())
            }
            Ok(Err(code)) => {
                // Still wait: writes made before the error must not be lost silently.
                let _ = done_rx.await;
                tracing::warn!(component = %rt.name, error = ?code, "component responded with an error");
                text_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "atoll: component `{}` failed: {}",
                        rt.name,
                        describe_code(&code)
                    ),
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

fn describe_code(code: &ErrorCode) -> String {
    format!("{code:?}")
}
