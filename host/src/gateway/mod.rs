//! The HTTP gateway: accepts connections (HTTP/1.1 and HTTP/2), routes each
//! request to a component, and runs it in a fresh instance.

mod body;
mod dispatch;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::kv::KvBackend;
use crate::registry::Registry;

pub use dispatch::{Gateway, text_response};

/// How long a client may take to send a request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Boxed error of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of every response the gateway sends.
pub type GatewayBody = UnsyncBoxBody<Bytes, BoxError>;

/// Binds the gateway's listener, with an error that says what to do.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "the port is in use by another process; stop it or choose another port with `[host] listen` in atoll.toml or `--listen`"
            }
            std::io::ErrorKind::PermissionDenied => {
                "ports below 1024 need privileges; choose a higher port"
            }
            _ => "check `[host] listen` in atoll.toml",
        };
        anyhow::anyhow!("cannot listen on {addr}: {e}; {hint}")
    })
}

/// Serves until `shutdown` flips, then lets in-flight requests finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    kv: Arc<dyn KvBackend>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> anyhow::Result<()> {
    let gateway = Arc::new(Gateway::new(registry, kv));
    let graceful = GracefulShutdown::new();
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
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(v) => v,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let gateway = gateway.clone();
                let service = service_fn(move |req| {
                    let gateway = gateway.clone();
                    async move { Ok::<_, Infallible>(gateway.handle(req, peer).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(
                    async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    }
                    .instrument(tracing::debug_span!("gateway.connection", %peer)),
                );
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "in-flight requests did not finish within the grace period"
        );
    }
    Ok(())
}

/// The address a listener is bound to.
pub fn local_addr(listener: &TcpListener) -> anyhow::Result<SocketAddr> {
    listener.local_addr().context("reading the listen address")
}
