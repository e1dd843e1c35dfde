//! Static files (placeholder API; helper FILES writes it).

use http::{HeaderMap, Method, Response, StatusCode};

use super::{GatewayBody, text_response};
use crate::config::{Route, StaticSpec};

/// A directory served under a route.
pub struct StaticFiles {
    _spec: StaticSpec,
    _route: Route,
}

impl StaticFiles {
    pub fn new(spec: &StaticSpec, route: &Route) -> StaticFiles {
        StaticFiles {
            _spec: spec.clone(),
            _route: route.clone(),
        }
    }

    /// Answers a request for `path` (the whole request path, without query).
    pub async fn serve(
        &self,
        _method: &Method,
        _path: &str,
        _headers: &HeaderMap,
    ) -> Response<GatewayBody> {
        text_response(StatusCode::NOT_IMPLEMENTED, "not yet")
    }
}
