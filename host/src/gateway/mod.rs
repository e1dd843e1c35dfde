//! The HTTP gateway: accepts connections (HTTP/1.1 and HTTP/2), routes each
//! request to a component, and runs it in a fresh instance.

pub mod auth;
mod body;
pub mod calllog;
mod dispatch;
mod files;
pub mod limits;
pub mod listen;
pub mod ratelimit;
pub mod router;
pub mod tls;
pub mod upstream;

pub use listen::HEADER_READ_TIMEOUT;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use dispatch::{probe, text_response};
pub use router::{Gateway, GatewayParts};

/// Boxed error of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of every response the gateway sends.
pub type GatewayBody = UnsyncBoxBody<Bytes, BoxError>;

/// Binds the gateway's listener, with an error that says what to do.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    listen::bind(
        addr,
        &listen::Setting {
            what: "",
            key: "listen",
            flag: "--listen",
        },
    )
    .await
}

/// Serves until `shutdown` flips, then lets in-flight requests finish for up to `grace`.
///
/// Per connection, from `[gateway]`: at most `max_connections` open (more
/// are answered 503 and closed), the TLS handshake when `[gateway.tls]` is
/// set, and `header_timeout` from accept to the first request head,
/// handshake included. hyper then bounds every later HTTP/1 head (and an
/// idle keep-alive connection) by `header_timeout`, and a head by
/// `max_headers` fields and `max_header_size` bytes (431).
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> anyhow::Result<()> {
    let settings = gateway.settings();
    let header_timeout = settings.header_timeout;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper enforces the header read timeout only with a timer. The auto
    // builder has no `max_header_size`: `max_buf_size` bounds the read
    // buffer a head must fit in (a larger head is 431), and with it the
    // size of each body read.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_headers(settings.max_headers)
        .max_buf_size(settings.max_header_size);
    // HTTP/2 limits the header list by size only: over it the stream gets 431.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .max_header_list_size(u32::try_from(settings.max_header_size).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let tls = gateway.tls().cloned();
    let connections = listen::Connections::new(settings.max_connections);
    let span = |peer| tracing::debug_span!("gateway.connection", %peer);
    listen::accept_each(listener, shutdown, grace, span, |stream, peer, watcher| {
        let _ = stream.set_nodelay(true);
        let Some(slot) = connections.open() else {
            tracing::debug!("over max_connections: turned away");
            return Box::pin(connections.turn_away(stream, tls.is_none())) as BoxFuture;
        };
        let deadline = tokio::time::Instant::now() + header_timeout;
        let started = Arc::new(AtomicBool::new(false));
        let service = {
            let (gateway, started) = (gateway.clone(), started.clone());
            service_fn(move |req| {
                started.store(true, Ordering::Relaxed);
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(gateway.handle(req, peer).await) }
            })
        };
        let (builder, tls) = (builder.clone(), tls.clone());
        Box::pin(async move {
            let in_time = match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    first_request_by(deadline, &started, listen::watch(watcher, conn)).await
                }
                Some(tls) => match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        first_request_by(deadline, &started, listen::watch(watcher, conn)).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        true
                    }
                    Err(_) => false,
                },
            };
            if !in_time {
                tracing::debug!(
                    ?header_timeout,
                    "no request head within header_timeout: closed"
                );
            }
            drop(slot);
        })
    })
    .await;
    Ok(())
}

/// A connection's task.
type BoxFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs a connection; drops (closes) it if no request has begun by
/// `deadline`, and then answers false. hyper's header timeout covers a head
/// under way over HTTP/1, but not a client that sends nothing, nor one
/// that trickles the HTTP/2 preface.
async fn first_request_by(
    deadline: tokio::time::Instant,
    started: &AtomicBool,
    conn: impl Future<Output = ()>,
) -> bool {
    tokio::pin!(conn);
    tokio::select! {
        () = &mut conn => true,
        () = tokio::time::sleep_until(deadline) => {
            if !started.load(Ordering::Relaxed) {
                return false;
            }
            conn.await;
            true
        }
    }
}

/// The address a listener is bound to.
pub fn local_addr(listener: &TcpListener) -> anyhow::Result<SocketAddr> {
    listener.local_addr().context("reading the listen address")
}
