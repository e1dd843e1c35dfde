//! Bearer-token authentication (placeholder API; helper AUTH writes it).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Response, StatusCode};
use tokio::sync::watch;

use super::{GatewayBody, text_response};
use crate::config::AuthProvider;

/// `iss` of tokens from `atoll token issue`.
pub const LOCAL_ISSUER: &str = "atoll-local";
/// Default `aud` of tokens from `atoll token issue`.
pub const LOCAL_AUDIENCE: &str = "atoll";
/// Headers carrying verified claims to components start with this; clients' are stripped.
pub const CLAIM_HEADER_PREFIX: &str = "x-atoll-auth-";

/// What a verified token says.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    /// `sub`.
    pub subject: String,
    /// Scopes from the provider's scope claim.
    pub scopes: Vec<String>,
    /// Roles from the provider's roles claim.
    pub roles: Vec<String>,
}

/// Verifies tokens of one provider.
pub struct Verifier {
    provider: String,
}

impl Verifier {
    /// Loads the provider's keys now: a bad JWKS fails the start.
    pub async fn load(spec: &AuthProvider, _data_dir: &Path) -> anyhow::Result<Arc<Verifier>> {
        Ok(Arc::new(Verifier {
            provider: spec.name.clone(),
        }))
    }

    /// Refreshes keys in the background until `shutdown` flips.
    pub fn spawn_refresh(
        self: &Arc<Self>,
        _shutdown: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        None
    }

    /// The token's claims, or the 401 response to send.
    pub async fn verify(&self, _headers: &HeaderMap) -> Result<Claims, Response<GatewayBody>> {
        Err(text_response(
            StatusCode::UNAUTHORIZED,
            format!("atoll: provider `{}` not implemented", self.provider),
        ))
    }
}

/// Checks required scopes (all) and roles (any); the 403 response otherwise.
pub fn authorize(
    _claims: &Claims,
    _scopes: &[String],
    _roles: &[String],
) -> Result<(), Response<GatewayBody>> {
    Ok(())
}

/// Removes claim headers a client sent.
pub fn strip_claim_headers(_headers: &mut HeaderMap) {}

/// Adds the verified claims as headers for the component.
pub fn add_claim_headers(_headers: &mut HeaderMap, _claims: &Claims) {}

/// What `atoll token issue` asks for.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub subject: String,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub ttl: Duration,
    pub audience: String,
    pub issuer: String,
}

/// Signs a token with the host's local development key (made on first use).
pub fn issue_local(_data_dir: &Path, _req: &TokenRequest) -> anyhow::Result<String> {
    anyhow::bail!("not implemented")
}
