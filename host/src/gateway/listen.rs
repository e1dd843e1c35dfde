//! What the gateway and the admin API share: binding a listener with an
//! error that says what to do, and the accept loop with graceful shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

/// How long a client may take to send a request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a listener's address is configured, for error messages.
pub struct Setting {
    /// What listens, as in "cannot listen{what} on ..." ("" for the gateway).
    pub what: &'static str,
    /// Its key in `[host]`.
    pub key: &'static str,
    /// Its `atoll up` flag.
    pub flag: &'static str,
}

/// Binds a listener, with an error that names the setting to change.
pub async fn bind(addr: SocketAddr, setting: &Setting) -> anyhow::Result<TcpListener> {
    let Setting { what, key, flag } = setting;
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "the port is in use, perhaps by another atoll host; stop it or choose another port with `[host] {key}` in atoll.toml or `{flag}` (127.0.0.1:0 picks a free one)"
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "ports below 1024 need privileges; choose a higher port with `[host] {key}` or `{flag}`"
            ),
            _ => format!("check `[host] {key}` in atoll.toml"),
        };
        anyhow::anyhow!("cannot listen{what} on {addr}: {e}; {hint}")
    })
}

/// Accepts connections and serves each with `connect` until `shutdown`
/// flips, then lets in-flight requests finish for up to `grace`. `span`
/// names each connection's span.
pub async fn accept_until<C, F>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    span: fn(SocketAddr) -> tracing::Span,
    mut connect: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> C,
    C: GracefulConnection + Send + 'static,
    C::Error: std::fmt::Display + Send,
{
    let graceful = GracefulShutdown::new();
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
                let conn = graceful.watch(connect(stream, peer));
                tokio::spawn(
                    async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    }
                    .instrument(span(peer)),
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
}
