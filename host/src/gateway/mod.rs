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
use std::net::SocketAddr;
use std::sync::Arc;
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
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> anyhow::Result<()> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper enforces the header read timeout only with a timer: without one a
    // client could hold a connection open forever with half a request head.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20));
    let span = |peer| tracing::debug_span!("gateway.connection", %peer);
    listen::accept_until(listener, shutdown, grace, span, |stream, peer| {
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let service = service_fn(move |req| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(gateway.handle(req, peer).await) }
        });
        builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned()
    })
    .await;
    Ok(())
}

/// The address a listener is bound to.
pub fn local_addr(listener: &TcpListener) -> anyhow::Result<SocketAddr> {
    listener.local_addr().context("reading the listen address")
}
