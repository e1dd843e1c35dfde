//! TLS termination (placeholder API; helper LIMITS writes it).

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::TlsSpec;

/// Accepts TLS connections with the current certificate.
pub struct TlsAcceptor {
    _spec: TlsSpec,
}

impl TlsAcceptor {
    /// Loads the certificate and key; errors name the file and the problem.
    pub fn load(spec: &TlsSpec) -> anyhow::Result<Arc<TlsAcceptor>> {
        anyhow::bail!("TLS is not implemented yet ({})", spec.cert.display())
    }

    /// Reloads the files when they change, until `shutdown` flips.
    pub fn spawn_reload(
        self: &Arc<Self>,
        _shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async {})
    }

    /// Runs the handshake.
    pub async fn accept(
        &self,
        _stream: TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        Err(std::io::Error::other("not implemented"))
    }
}
