//! What the gateway and the admin API share: binding a listener with an
//! error that says what to do, and the accept loop with graceful shutdown;
//! and the gateway's limit on open connections.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown, Watcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
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
    shutdown: watch::Receiver<bool>,
    grace: Duration,
    span: fn(SocketAddr) -> tracing::Span,
    mut connect: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> C,
    C: GracefulConnection + Send + 'static,
    C::Error: std::fmt::Display + Send,
{
    accept_each(listener, shutdown, grace, span, |stream, peer, watcher| {
        watch(watcher, connect(stream, peer))
    })
    .await
}

/// Serves a connection until it ends, or until a graceful shutdown asks it
/// to finish its requests.
pub async fn watch<C>(watcher: Watcher, conn: C)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Like [`accept_until`], for connections that need work before they are
/// served (a TLS handshake) or may be turned away: `connect` gets each
/// stream and a [`Watcher`] to hand its connection to (see [`watch`]), and
/// returns the future that runs it on its own task. Holding the watcher
/// makes a shutdown wait; dropping it does not.
pub async fn accept_each<F, Fut>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    span: fn(SocketAddr) -> tracing::Span,
    mut connect: F,
) where
    F: FnMut(TcpStream, SocketAddr, Watcher) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
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
                let conn = connect(stream, peer, graceful.watcher());
                tokio::spawn(conn.instrument(span(peer)));
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

/// The answer to a connection over `max_connections`.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 43\r\n\
\r\n\
atoll: too many connections; retry shortly\n";

/// Connections being turned away at once; past this they are just closed.
const TURNING_AWAY: usize = 256;

/// Counts a listener's open connections against its limit.
pub struct Connections {
    open: Arc<Semaphore>,
    turning_away: Arc<Semaphore>,
}

impl Connections {
    /// Allows `max` connections at once.
    pub fn new(max: usize) -> Connections {
        Connections {
            open: Arc::new(Semaphore::new(max)),
            turning_away: Arc::new(Semaphore::new(TURNING_AWAY)),
        }
    }

    /// A slot for a new connection, held while it is open; `None` when all
    /// are taken (then [`Connections::turn_away`] it). Never waits.
    pub fn open(&self) -> Option<OwnedSemaphorePermit> {
        self.open.clone().try_acquire_owned().ok()
    }

    /// Answers a plain HTTP connection over the limit with 503 and
    /// `Retry-After`, then closes it; a TLS one (`plain` false) is closed at
    /// once, since an answer would need a handshake. Bounded in time and in
    /// how many run at once.
    pub fn turn_away(&self, stream: TcpStream, plain: bool) -> impl Future<Output = ()> + use<> {
        let slot = self.turning_away.clone().try_acquire_owned().ok();
        async move {
            let (Some(_slot), true) = (slot, plain) else {
                return;
            };
            let mut stream = stream;
            let answer = async {
                stream.write_all(TOO_MANY_CONNECTIONS).await?;
                stream.shutdown().await?;
                // Read what the client sent until it closes: closing with
                // unread data would reset the connection and could lose the answer.
                let mut buf = [0u8; 4096];
                while stream.read(&mut buf).await? > 0 {}
                std::io::Result::Ok(())
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
        }
    }
}
