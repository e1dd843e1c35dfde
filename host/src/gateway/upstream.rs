//! Load-balanced upstreams (placeholder API; helper UPSTREAM writes it).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, StatusCode};
use tokio::sync::watch;

use super::limits::RequestBody;
use super::router::{Gateway, Reason, Served};
use super::text_response;
use crate::config::UpstreamSpec;
use crate::registry::Registry;

/// An upstream: its backends, their health, and the strategy that picks one.
pub struct Upstream {
    spec: UpstreamSpec,
}

impl Upstream {
    /// Resolves component backends in the registry.
    pub fn new(spec: &UpstreamSpec, _registry: &Registry) -> anyhow::Result<Arc<Upstream>> {
        Ok(Arc::new(Upstream { spec: spec.clone() }))
    }

    /// Starts active health checks (if configured) until `shutdown` flips.
    pub fn spawn_health_checks(
        self: &Arc<Self>,
        _gateway: Arc<Gateway>,
        _shutdown: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        None
    }

    /// Picks a backend and sends the request there.
    pub async fn forward(
        &self,
        _gateway: &Gateway,
        _req: Request<RequestBody>,
        _client: SocketAddr,
    ) -> Served {
        Served::rejected(
            text_response(
                StatusCode::BAD_GATEWAY,
                format!(
                    "atoll: upstream `{}` is not implemented yet",
                    self.spec.name
                ),
            ),
            Reason::NoBackend,
        )
    }
}
