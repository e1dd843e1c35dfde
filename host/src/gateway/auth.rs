//! Bearer-token authentication: JWT access tokens of the `[auth.NAME]`
//! providers, checked against their keys, turned into [`Claims`] that reach
//! components as `x-atoll-auth-*` headers.
//!
//! One [`Verifier`] per provider. Its keys (from a JWKS file, a JWKS URL or
//! the host's local development key) sit decoded in an `ArcSwap`, so a
//! request looks its key up without a lock; a refresh swaps the whole set, so
//! a key that left the JWKS stops verifying at once.
//!
//! ```text
//! [auth.idp]
//! issuer = "https://idp.example.com/"
//! audience = "orders-api"
//! jwks_url = "https://idp.example.com/.well-known/jwks.json"
//!
//! [routes."/orders/..."]
//! auth = "idp"
//! scopes = ["orders:write"]
//! ```
//!
//! A request then needs `Authorization: Bearer <jwt>` whose signature one of
//! the provider's keys verifies with a pinned algorithm, whose `iss` is the
//! issuer, whose `aud` names one of the audiences, that has a `sub`, and whose
//! `exp` (required) and `nbf` hold with the provider's leeway. Otherwise 401
//! with `WWW-Authenticate: Bearer ...`; a valid token without the route's
//! scopes or roles gets 403.

mod cache;
mod jwks;
mod local;
mod source;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::{GatewayBody, text_response};
use crate::config::{AuthProvider, KeySource};
use jwks::KeySet;
use source::Source;

pub use local::{LOCAL_KEY_FILE, issue_local};

/// `iss` of tokens from `atoll token issue`.
pub const LOCAL_ISSUER: &str = "atoll-local";
/// Default `aud` of tokens from `atoll token issue`.
pub const LOCAL_AUDIENCE: &str = "atoll";
/// Headers carrying verified claims to components start with this; clients' are stripped.
pub const CLAIM_HEADER_PREFIX: &str = "x-atoll-auth-";
/// The verified `sub`.
pub const SUBJECT_HEADER: &str = "x-atoll-auth-sub";
/// The verified scopes, space-separated.
pub const SCOPE_HEADER: &str = "x-atoll-auth-scope";
/// The verified roles, space-separated.
pub const ROLES_HEADER: &str = "x-atoll-auth-roles";
/// The issuer that signed the token.
pub const ISSUER_HEADER: &str = "x-atoll-auth-iss";
/// Longest token accepted (after `Bearer `); longer ones are refused unparsed.
pub const MAX_TOKEN_LEN: usize = 8 << 10;

/// The realm named in every challenge.
const REALM: &str = "atoll";

/// What a verified token says.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    /// `sub`.
    pub subject: String,
    /// Scopes from the provider's scope claim (or `scp`). Entries of a list
    /// that contain whitespace or control characters are left out: they could
    /// not travel space-separated in a header.
    pub scopes: Vec<String>,
    /// Roles from the provider's roles claim, with the same rule as scopes.
    pub roles: Vec<String>,
    /// `iss`: the provider's issuer.
    pub issuer: Arc<str>,
}

/// Verifies tokens of one provider.
pub struct Verifier {
    provider: String,
    issuer: Arc<str>,
    algorithms: Vec<Algorithm>,
    scope_claim: String,
    roles_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    leeway: u64,
    /// The decoded keys, swapped whole by a refresh.
    keys: ArcSwap<KeySet>,
    source: Source,
    /// Tokens verified lately: a repeated token skips the signature check.
    cache: cache::TokenCache,
}

impl Verifier {
    /// Loads the provider's keys now: a bad JWKS (unreadable, not JSON, no
    /// usable key, a key for an algorithm the provider does not accept) or an
    /// unreachable JWKS URL fails the start with an error naming the provider
    /// and the file or URL. A local provider's key is created on first use.
    pub async fn load(spec: &AuthProvider, data_dir: &Path) -> anyhow::Result<Arc<Verifier>> {
        let algorithms = spec
            .algorithms
            .iter()
            .map(|a| Algorithm::from_str(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                anyhow::anyhow!(
                    "[auth.{}]: unknown algorithm in {:?}",
                    spec.name,
                    spec.algorithms
                )
            })?;
        let (source, keys) = match &spec.keys {
            KeySource::File(path) => source::load_file(spec, path).await,
            KeySource::Url(url) => source::load_url(spec, url).await,
            KeySource::Local => {
                let data_dir = data_dir.to_path_buf();
                let spec = spec.clone();
                tokio::task::spawn_blocking(move || local::key_set(&spec, &data_dir))
                    .await
                    .context("loading the local key")?
                    .map(|keys| (Source::Local, keys))
            }
        }
        // One line naming the provider, the file or URL, and the problem.
        .map_err(|e| anyhow::anyhow!("[auth.{}]: {e:#}", spec.name))?;
        tracing::info!(
            provider = %spec.name,
            keys = %keys.describe(),
            "auth provider loaded"
        );
        Ok(Arc::new(Verifier {
            provider: spec.name.clone(),
            issuer: spec.issuer.as_str().into(),
            algorithms,
            scope_claim: spec.scope_claim.clone(),
            roles_claim: spec.roles_claim.clone(),
            leeway: spec.leeway.as_secs(),
            keys: ArcSwap::from_pointee(keys),
            source,
            cache: cache::TokenCache::default(),
        }))
    }

    /// Refreshes keys in the background until `shutdown` flips: a JWKS file
    /// is read again when its modification time or size changes (checked
    /// every second), a JWKS URL fetched every `refresh` (sooner after a
    /// failed fetch). `None` for a local provider, whose key does not change.
    pub fn spawn_refresh(
        self: &Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let first = self.source.refresh_interval()?;
        let verifier: Weak<Verifier> = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut wait = first;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
                let Some(v) = verifier.upgrade() else { break };
                wait = v.source.refresh(&v.provider, &v.keys).await;
            }
        }))
    }

    /// The token's claims, or the 401 response to send.
    pub async fn verify(&self, headers: &HeaderMap) -> Result<Claims, Response<GatewayBody>> {
        self.check(headers).await.map_err(|r| {
            tracing::debug!(provider = %self.provider, reason = %r, "token refused");
            r.response()
        })
    }

    /// [`Verifier::verify`] with the reason as a value.
    async fn check(&self, headers: &HeaderMap) -> Result<Claims, Rejection> {
        let token = bearer_token(headers)?;
        let digest: cache::Digest = Sha256::digest(token.as_bytes()).into();
        let now = jsonwebtoken::get_current_timestamp();
        let generation = self.keys.load().generation();
        if let Some(claims) = self.cache.get(&digest, generation, now, self.leeway) {
            return Ok(claims);
        }
        let header = jwks::parse_header(token)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(Rejection::AlgorithmNotAccepted(header.alg));
        }
        let found = {
            let keys = self.keys.load();
            keys.get(header.kid.as_deref())
                .map(|k| (k.clone(), keys.generation()))
        };
        let (key, generation) = match found {
            Some(found) => found,
            None => self.unknown_kid(header.kid.as_deref()).await?,
        };
        if !key.validation.algorithms.contains(&header.alg) {
            return Err(Rejection::AlgorithmForKey {
                alg: header.alg,
                key: key.kind,
            });
        }
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &key.validation)
                .map_err(Rejection::from_jwt)?;
        let seconds = |name: &str| {
            let v = data.claims.get(name)?;
            v.as_u64().or_else(|| v.as_f64().map(|f| f as u64))
        };
        let (exp, nbf) = (seconds("exp"), seconds("nbf").unwrap_or(0));
        let claims = self.claims(data.claims)?;
        if let Some(exp) = exp {
            self.cache
                .insert(digest, claims.clone(), exp, nbf, generation, now);
        }
        Ok(claims)
    }

    /// A key id not in the set: the keys may have rotated, so look again
    /// (at most once per few seconds for a URL, and only when the file
    /// changed for a file). The key and its set's generation.
    async fn unknown_kid(&self, kid: Option<&str>) -> Result<(Arc<jwks::Key>, u64), Rejection> {
        let Some(kid) = kid else {
            return Err(Rejection::NoKid);
        };
        self.source
            .reload_for_unknown_kid(&self.provider, &self.keys)
            .await;
        let keys = self.keys.load();
        keys.get(Some(kid))
            .map(|k| (k.clone(), keys.generation()))
            .ok_or_else(|| Rejection::UnknownKid(printable(kid)))
    }

    /// The claims components see, from a verified payload.
    fn claims(&self, mut payload: Map<String, Value>) -> Result<Claims, Rejection> {
        let subject = match payload.remove("sub") {
            Some(Value::String(s)) if !s.is_empty() && !s.chars().any(char::is_control) => s,
            _ => return Err(Rejection::BadClaim("sub")),
        };
        let scopes = claim(&payload, &self.scope_claim)
            .or_else(|| payload.get("scp"))
            .map(words)
            .unwrap_or_default();
        let roles = claim(&payload, &self.roles_claim)
            .map(words)
            .unwrap_or_default();
        Ok(Claims {
            subject,
            scopes,
            roles,
            issuer: self.issuer.clone(),
        })
    }

    /// The provider's name in the manifest.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// Key ids currently loaded (tests and logs).
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.load().kids()
    }
}

/// A claim by name; a name with dots that is not itself a claim is a path
/// into nested objects (`realm_access.roles`).
fn claim<'a>(payload: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = payload.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut v = payload.get(parts.next()?)?;
    for part in parts {
        v = v.as_object()?.get(part)?;
    }
    Some(v)
}

/// Scopes or roles from a space-separated string or a list of strings.
fn words(v: &Value) -> Vec<String> {
    let fits = |w: &str| !w.is_empty() && !w.chars().any(|c| c.is_whitespace() || c.is_control());
    match v {
        Value::String(s) => s
            .split_ascii_whitespace()
            .filter(|w| fits(w))
            .map(str::to_string)
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .filter(|w| fits(w))
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// The token of the request's one `Authorization: Bearer` header.
fn bearer_token(headers: &HeaderMap) -> Result<&str, Rejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Rejection::Missing);
    };
    if values.next().is_some() {
        return Err(Rejection::Malformed("several Authorization headers"));
    }
    let value = value.as_bytes();
    let scheme = b"bearer ";
    if value.len() < scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return Err(Rejection::Malformed(
            "the Authorization header is not `Bearer <token>`",
        ));
    }
    let token = value[scheme.len()..].trim_ascii();
    if token.len() > MAX_TOKEN_LEN {
        return Err(Rejection::TooLong);
    }
    if token.is_empty() {
        return Err(Rejection::Malformed("the bearer token is empty"));
    }
    // A HeaderValue may hold obs-text; a JWT is ASCII.
    std::str::from_utf8(token)
        .ok()
        .filter(|t| t.is_ascii())
        .ok_or(Rejection::Malformed("the token is not a JWT"))
}

/// Untrusted text (a key id from a token or a JWKS) for a message: printable
/// ASCII, at most 64 characters.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect();
    if text.len() > 64 {
        out.push_str("...");
    }
    out
}

/// Why a request's token was refused. The text never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Rejection {
    #[error("this route needs a bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("{0}")]
    Malformed(&'static str),
    #[error("the token is longer than 8 KiB")]
    TooLong,
    #[error("unsigned tokens (alg `none`) are never accepted")]
    AlgorithmNone,
    #[error("the token's alg is not a known signature algorithm")]
    AlgorithmUnknown,
    #[error("the token's alg `{0:?}` is not one this provider accepts")]
    AlgorithmNotAccepted(Algorithm),
    #[error("the token's alg `{alg:?}` does not match its key, which is {key}")]
    AlgorithmForKey { alg: Algorithm, key: &'static str },
    #[error("the token has no key id (kid) and the provider has several keys")]
    NoKid,
    #[error("unknown key id (kid) `{0}`: no key of the provider has it")]
    UnknownKid(String),
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("the token's issuer (iss) is not this provider's")]
    Issuer,
    #[error("the token's audience (aud) does not name this host")]
    Audience,
    #[error("the token has no `{0}` claim")]
    MissingClaim(&'static str),
    #[error("the token's `{0}` claim is malformed")]
    BadClaim(&'static str),
    #[error("the provider's key cannot verify this token")]
    Key,
}

impl Rejection {
    /// The reason for a jsonwebtoken error.
    fn from_jwt(e: jsonwebtoken::errors::Error) -> Rejection {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => Rejection::Signature,
            K::ExpiredSignature => Rejection::Expired,
            K::ImmatureSignature => Rejection::NotYetValid,
            K::InvalidIssuer => Rejection::Issuer,
            K::InvalidAudience => Rejection::Audience,
            K::MissingRequiredClaim(c) => Rejection::MissingClaim(jwks::claim_name(c)),
            K::InvalidClaimFormat(c) => Rejection::BadClaim(jwks::claim_name(c)),
            K::InvalidAlgorithm | K::MissingAlgorithm | K::UnsupportedAlgorithm => {
                Rejection::AlgorithmUnknown
            }
            K::InvalidRsaKey(_)
            | K::InvalidEcdsaKey
            | K::InvalidEddsaKey
            | K::InvalidKeyFormat
            | K::Provider(_) => Rejection::Key,
            _ => Rejection::Malformed("the token is not a JWT"),
        }
    }

    /// The short text of `error_description` (quoted-string safe).
    fn description(&self) -> &'static str {
        match self {
            Rejection::Missing => "",
            Rejection::Malformed(_) => "malformed token",
            Rejection::TooLong => "token too long",
            Rejection::AlgorithmNone
            | Rejection::AlgorithmUnknown
            | Rejection::AlgorithmNotAccepted(_)
            | Rejection::AlgorithmForKey { .. } => "algorithm not accepted",
            Rejection::NoKid => "no key id",
            Rejection::UnknownKid(_) => "unknown key id",
            Rejection::Signature => "invalid signature",
            Rejection::Expired => "token expired",
            Rejection::NotYetValid => "token not valid yet",
            Rejection::Issuer => "wrong issuer",
            Rejection::Audience => "wrong audience",
            Rejection::MissingClaim(_) => "missing claim",
            Rejection::BadClaim(_) => "malformed claim",
            Rejection::Key => "key cannot verify token",
        }
    }

    /// The 401 response: a `WWW-Authenticate` challenge and the reason as text.
    fn response(&self) -> Response<GatewayBody> {
        let challenge = match self {
            Rejection::Missing => format!("Bearer realm=\"{REALM}\""),
            other => format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                other.description()
            ),
        };
        let mut res = text_response(
            StatusCode::UNAUTHORIZED,
            format!("atoll: unauthorized: {self}"),
        );
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            res.headers_mut().insert(WWW_AUTHENTICATE, v);
        }
        res
    }
}

/// Checks required scopes (all) and roles (any); the 403 response otherwise,
/// with `WWW-Authenticate: Bearer ..., error="insufficient_scope"`.
// The error is the response the pipeline sends as is, on the rare path.
#[allow(clippy::result_large_err)]
pub fn authorize(
    claims: &Claims,
    scopes: &[String],
    roles: &[String],
) -> Result<(), Response<GatewayBody>> {
    let missing: Vec<&str> = scopes
        .iter()
        .filter(|s| !claims.scopes.contains(s))
        .map(String::as_str)
        .collect();
    let (text, description) = if !missing.is_empty() {
        (
            format!(
                "atoll: forbidden: the token lacks the scope{} {}",
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", ")
            ),
            "missing scope",
        )
    } else if !roles.is_empty() && !roles.iter().any(|r| claims.roles.contains(r)) {
        (
            format!(
                "atoll: forbidden: the token has none of the roles {}",
                roles.join(", ")
            ),
            "missing role",
        )
    } else {
        return Ok(());
    };
    let mut res = text_response(StatusCode::FORBIDDEN, text);
    // scope-token characters only: %x21 / %x23-5B / %x5D-7E.
    let scope: String = scopes
        .join(" ")
        .chars()
        .filter(|c| *c == ' ' || (c.is_ascii_graphic() && *c != '"' && *c != '\\'))
        .collect();
    let challenge = format!(
        "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"{description}\", scope=\"{scope}\""
    );
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        res.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    Err(res)
}

/// Removes every `x-atoll-auth-*` header a client sent: only the gateway
/// sets them. No allocation when there is none.
pub fn strip_claim_headers(headers: &mut HeaderMap) {
    let is_claim = |name: &HeaderName| name.as_str().starts_with(CLAIM_HEADER_PREFIX);
    if !headers.keys().any(is_claim) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| is_claim(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// Adds the verified claims as headers for the component: the subject, the
/// scopes and roles space-separated (empty when none), the issuer.
pub fn add_claim_headers(headers: &mut HeaderMap, claims: &Claims) {
    let mut set = |name: &'static str, value: &str| {
        // Claims are checked for control characters; never fail a request here.
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    set(SUBJECT_HEADER, &claims.subject);
    set(SCOPE_HEADER, &claims.scopes.join(" "));
    set(ROLES_HEADER, &claims.roles.join(" "));
    set(ISSUER_HEADER, &claims.issuer);
}

/// What `atoll token issue` asks for.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `sub`.
    pub subject: String,
    /// `scope`, joined with spaces.
    pub scopes: Vec<String>,
    /// `roles`, a list.
    pub roles: Vec<String>,
    /// `exp` is now plus this.
    pub ttl: Duration,
    /// `aud`.
    pub audience: String,
    /// `iss`.
    pub issuer: String,
}

impl TokenRequest {
    /// A request with the local provider's issuer and audience.
    pub fn local(subject: impl Into<String>, ttl: Duration) -> TokenRequest {
        TokenRequest {
            subject: subject.into(),
            scopes: Vec::new(),
            roles: Vec::new(),
            ttl,
            audience: LOCAL_AUDIENCE.to_string(),
            issuer: LOCAL_ISSUER.to_string(),
        }
    }
}
