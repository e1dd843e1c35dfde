//! The edge gateway's part of the manifest: `[gateway]` (request limits, TLS,
//! call log), `[auth.NAME]` (token providers), `[upstreams.NAME]` (load
//! balanced backends) and `[routes."PATTERN"]` (what a route serves and the
//! policy in front of it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ComponentSpec, Route, Source, units};

/// `[gateway]`: limits every request and connection meets, TLS and the call log.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewaySettings {
    /// Largest request body, checked while it streams (`max_body`, 10MiB): 413.
    pub max_body: u64,
    /// Most header fields in a request (`max_headers`, 100): 431.
    pub max_headers: usize,
    /// Largest request head, request line and headers together
    /// (`max_header_size`, 16KiB, at least 8KiB): 431.
    pub max_header_size: usize,
    /// Time a client has to send a whole request head (`header_timeout`, 10s).
    pub header_timeout: Duration,
    /// Longest pause while a client sends a body (`body_timeout`, 30s): 408.
    pub body_timeout: Duration,
    /// Longest wait for a response head from the target (`request_timeout`, 60s): 504.
    pub request_timeout: Duration,
    /// Connections open at once; more are answered 503 and closed (`max_connections`, 10000).
    pub max_connections: usize,
    /// Requests in flight at once over all routes; more get 503 with
    /// Retry-After (`max_in_flight`, 10000).
    pub max_in_flight: usize,
    /// Serve HTTPS instead of HTTP (`[gateway.tls]`).
    pub tls: Option<TlsSpec>,
    /// The call log (`[gateway.call_log]`).
    pub call_log: CallLogSpec,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            max_body: 10 << 20,
            max_headers: 100,
            max_header_size: 16 << 10,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_in_flight: 10_000,
            tls: None,
            call_log: CallLogSpec::default(),
        }
    }
}

/// `[gateway.tls]`: PEM files, reloaded when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    /// Certificate chain, leaf first (`cert`).
    pub cert: PathBuf,
    /// Private key: PKCS#8, PKCS#1 or SEC1 (`key`).
    pub key: PathBuf,
}

/// `[gateway.call_log]`: one row per request in `data_dir/calls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallLogSpec {
    /// Whether requests are logged (`enabled`, true).
    pub enabled: bool,
    /// Rows older than this are deleted (`max_age`, 7d).
    pub max_age: Duration,
    /// The oldest rows are deleted while the log is larger (`max_size`, 256MiB).
    pub max_size: u64,
}

impl Default for CallLogSpec {
    fn default() -> Self {
        CallLogSpec {
            enabled: true,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_size: 256 << 20,
        }
    }
}

/// Signature algorithms a provider may be pinned to. Only asymmetric ones:
/// keys come from a JWKS, and a public key must never verify an HMAC.
pub const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// `[auth.NAME]`: an OAuth2/OIDC provider whose access tokens routes accept.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthProvider {
    /// Its name in the manifest.
    pub name: String,
    /// Required `iss` (`issuer`; "atoll-local" for the local provider).
    pub issuer: String,
    /// Accepted `aud` values; a token must name one (`audience`, a string or
    /// a list; "atoll" for the local provider).
    pub audiences: Vec<String>,
    /// Where the verification keys come from.
    pub keys: KeySource,
    /// How often keys from a URL are fetched again (`refresh`, 5m). A token
    /// with an unknown `kid` makes an earlier fetch, at most one per
    /// `min(refresh, 5s)`.
    pub refresh: Duration,
    /// Accepted `alg` values, from [`ALGORITHMS`] (`algorithms`; ["RS256"],
    /// or ["EdDSA"] for the local provider).
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf` (`leeway`, 30s, at most 5m).
    pub leeway: Duration,
    /// Claim holding the scopes: a space-separated string or a list
    /// (`scope_claim`, "scope").
    pub scope_claim: String,
    /// Claim holding the roles: a list or a space-separated string
    /// (`roles_claim`, "roles").
    pub roles_claim: String,
}

/// Where a provider's public keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS file (`jwks = "path"`), read again when it changes.
    File(PathBuf),
    /// A JWKS URL (`jwks_url = "http://..."`), fetched every `refresh`.
    Url(String),
    /// The host's own development signing key in `data_dir/auth`
    /// (`local = true`), the one `atoll token issue` signs with.
    Local,
}

/// A token bucket: `rate` requests per `per`, bursts up to `burst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSpec {
    /// Requests refilled per `per` (`rate`).
    pub rate: u32,
    /// The refill period (`per`, 1s).
    pub per: Duration,
    /// Bucket size: requests that may arrive at once (`burst`, `rate`).
    pub burst: u32,
    /// Whose bucket a request takes from (`key`, "ip").
    pub key: RateKey,
}

/// What a rate limit counts per.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// The client's IP address (`"ip"`).
    Ip,
    /// The verified token's `sub` (`"subject"`); the IP on routes without auth
    /// or for requests without a token.
    Subject,
    /// A request header such as an API key (`"header:x-api-key"`), lowercase;
    /// requests without it share one bucket.
    Header(String),
}

/// `[upstreams.NAME]`: backends a route balances over.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSpec {
    /// Its name in the manifest.
    pub name: String,
    /// The backends, in manifest order.
    pub backends: Vec<BackendSpec>,
    /// How a backend is picked (`strategy`, "round_robin").
    pub strategy: Strategy,
    /// Active health checks (`[upstreams.NAME.health]`).
    pub health: Option<HealthCheckSpec>,
    /// Passive outlier detection (`[upstreams.NAME.outlier]`).
    pub outlier: OutlierSpec,
}

/// One backend of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// What serves it.
    pub target: BackendTarget,
    /// Its share under `weighted` and `ip_hash` (`weight`, 1).
    pub weight: u32,
}

/// A backend: a component of this manifest or a plain HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendTarget {
    /// `{ component = "NAME" }`: runs in this host (its active version and canary).
    Component(String),
    /// `{ url = "http://host:port" }` or just the URL string: proxied to; the
    /// request path is appended to the URL's path.
    Url(http::Uri),
}

impl std::fmt::Display for BackendTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendTarget::Component(c) => write!(f, "component:{c}"),
            BackendTarget::Url(u) => write!(f, "{u}"),
        }
    }
}

/// How an upstream picks a backend among the healthy ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Each in turn, weights ignored (`"round_robin"`).
    RoundRobin,
    /// In proportion to `weight`, interleaved smoothly (`"weighted"`).
    Weighted,
    /// The one with the fewest requests in flight (`"least_connections"`).
    LeastConnections,
    /// Sticky per client IP; when a backend leaves, only its clients move
    /// (`"ip_hash"`, rendezvous hashing with weights).
    IpHash,
}

impl Strategy {
    /// The manifest names, for error messages.
    pub const NAMES: &[&str] = &["round_robin", "weighted", "least_connections", "ip_hash"];

    /// Parses a manifest name.
    pub fn parse(text: &str) -> Option<Strategy> {
        Some(match text {
            "round_robin" => Strategy::RoundRobin,
            "weighted" => Strategy::Weighted,
            "least_connections" => Strategy::LeastConnections,
            "ip_hash" => Strategy::IpHash,
            _ => return None,
        })
    }

    /// The manifest name.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::Weighted => "weighted",
            Strategy::LeastConnections => "least_connections",
            Strategy::IpHash => "ip_hash",
        }
    }
}

/// `[upstreams.NAME.health]`: a GET per backend at an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckSpec {
    /// Path requested on each backend (`path`); 2xx is healthy.
    pub path: String,
    /// Time between checks (`interval`, 5s).
    pub interval: Duration,
    /// A check slower than this fails (`timeout`, 2s).
    pub timeout: Duration,
    /// Consecutive failures that take a backend out (`unhealthy_after`, 2).
    pub unhealthy_after: u32,
    /// Consecutive successes that bring it back (`healthy_after`, 2).
    pub healthy_after: u32,
}

/// `[upstreams.NAME.outlier]`: consecutive 5xx (or connection failures)
/// eject a backend for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierSpec {
    /// Consecutive failures that eject (`consecutive_5xx`, 5; 0 turns it off).
    pub consecutive_5xx: u32,
    /// How long an ejected backend gets no traffic (`eject_for`, 30s).
    pub eject_for: Duration,
}

impl Default for OutlierSpec {
    fn default() -> Self {
        OutlierSpec {
            consecutive_5xx: 5,
            eject_for: Duration::from_secs(30),
        }
    }
}

/// One route of the gateway: what serves it and the policy in front of it.
/// Every route is here: those listed in a component's `routes`, and those of
/// `[routes."PATTERN"]` tables.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    /// The pattern.
    pub route: Route,
    /// What serves it.
    pub target: RouteTarget,
    /// The `[auth.NAME]` provider whose token it requires (`auth`).
    pub auth: Option<String>,
    /// Scopes the token must all have (`scopes`).
    pub scopes: Vec<String>,
    /// Roles of which the token must have at least one (`roles`).
    pub roles: Vec<String>,
    /// Its token bucket (`rate_limit = { rate, per, burst, key }`).
    pub rate_limit: Option<RateLimitSpec>,
}

/// What serves a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// A component (`component = "NAME"`, or the route is in its `routes`).
    Component(String),
    /// An upstream's backends (`upstream = "NAME"`).
    Upstream(String),
    /// Files of a directory (`static = "DIR"`).
    Static(StaticSpec),
}

/// A directory served as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticSpec {
    /// The directory, resolved against the manifest's.
    pub dir: PathBuf,
    /// Cache-Control sent with every file (`cache_control`, "public, max-age=300").
    pub cache_control: String,
    /// File served for a directory (`index`, "index.html").
    pub index: String,
}

/// The edge's settings, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Edge {
    pub gateway: GatewaySettings,
    pub auth: BTreeMap<String, AuthProvider>,
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
}

// ---- raw schema ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    #[serde(default, deserialize_with = "units::de_opt_size")]
    max_body: Option<u64>,
    max_headers: Option<Spanned<u32>>,
    #[serde(default, deserialize_with = "units::de_opt_size")]
    max_header_size: Option<u64>,
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    header_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    body_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    request_timeout: Option<Duration>,
    max_connections: Option<Spanned<u32>>,
    max_in_flight: Option<Spanned<u32>>,
    tls: Option<Spanned<RawTls>>,
    #[serde(default)]
    call_log: RawCallLog,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCallLog {
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    max_age: Option<Duration>,
    #[serde(default, deserialize_with = "units::de_opt_size")]
    max_size: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    issuer: Option<String>,
    audience: Option<OneOrMany>,
    jwks: Option<String>,
    jwks_url: Option<String>,
    #[serde(default)]
    local: bool,
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    refresh: Option<Duration>,
    algorithms: Option<Vec<Spanned<String>>>,
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    leeway: Option<Duration>,
    scope_claim: Option<String>,
    roles_claim: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    rate: u32,
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    per: Option<Duration>,
    burst: Option<u32>,
    key: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawBackend {
    Url(String),
    Table(RawBackendTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackendTable {
    component: Option<String>,
    url: Option<String>,
    weight: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    backends: Vec<Spanned<RawBackend>>,
    strategy: Option<Spanned<String>>,
    health: Option<RawHealthCheck>,
    #[serde(default)]
    outlier: RawOutlier,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    path: String,
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    interval: Option<Duration>,
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    timeout: Option<Duration>,
    unhealthy_after: Option<u32>,
    healthy_after: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOutlier {
    consecutive_5xx: Option<u32>,
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    eject_for: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    component: Option<String>,
    upstream: Option<String>,
    #[serde(rename = "static")]
    static_dir: Option<String>,
    cache_control: Option<String>,
    index: Option<String>,
    auth: Option<Spanned<String>>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    rate_limit: Option<Spanned<RawRateLimit>>,
}

/// What [`parse`] reads: the raw tables of the edge's sections.
pub(super) struct RawEdge {
    pub gateway: RawGateway,
    pub auth: BTreeMap<Spanned<String>, RawAuth>,
    pub upstreams: BTreeMap<Spanned<String>, RawUpstream>,
    pub routes: BTreeMap<Spanned<String>, RawRoute>,
}

type Span = std::ops::Range<usize>;

/// Validates the edge's sections. `components` are the parsed components;
/// a `[routes]` table that targets one adds its pattern to its `routes`.
pub(super) fn parse(
    raw: RawEdge,
    src: &Source<'_>,
    base_dir: &Path,
    components: &mut BTreeMap<String, ComponentSpec>,
) -> Result<Edge, super::ManifestError> {
    let gateway = gateway_settings(raw.gateway, base_dir)
        .map_err(|m| src.whole(format!("[gateway]: {m}")))?;

    let mut auth = BTreeMap::new();
    for (name, raw) in raw.auth {
        let span = name.span();
        let name = name.into_inner();
        super::validate_name(&name).map_err(|m| {
            src.at(
                span.clone(),
                m.replace("component name", "auth provider name"),
            )
        })?;
        let provider = auth_provider(&name, raw, base_dir)
            .map_err(|(m, at)| src.at(at.unwrap_or(span), format!("[auth.{name}]: {m}")))?;
        auth.insert(name, provider);
    }

    let mut upstreams = BTreeMap::new();
    for (name, raw) in raw.upstreams {
        let span = name.span();
        let name = name.into_inner();
        super::validate_name(&name)
            .map_err(|m| src.at(span.clone(), m.replace("component name", "upstream name")))?;
        let upstream = upstream_spec(&name, raw, components)
            .map_err(|(m, at)| src.at(at.unwrap_or(span), format!("[upstreams.{name}]: {m}")))?;
        upstreams.insert(name, upstream);
    }

    // Component routes first; a `[routes]` table for the same pattern adds
    // its policy to that route.
    let mut routes: BTreeMap<Route, RouteSpec> = BTreeMap::new();
    for c in components.values() {
        for r in &c.routes {
            routes.insert(
                r.clone(),
                RouteSpec {
                    route: r.clone(),
                    target: RouteTarget::Component(c.name.clone()),
                    auth: None,
                    scopes: Vec::new(),
                    roles: Vec::new(),
                    rate_limit: None,
                },
            );
        }
    }
    for (pattern, raw) in raw.routes {
        let span = pattern.span();
        let route = Route::parse(pattern.get_ref()).map_err(|m| src.at(span.clone(), m))?;
        let existing = routes.get(&route).map(|r| r.target.clone());
        let spec = route_spec(
            &route, raw, base_dir, &auth, &upstreams, components, existing,
        )
        .map_err(|(m, at)| src.at(at.unwrap_or(span), format!("[routes.\"{route}\"]: {m}")))?;
        if let RouteTarget::Component(c) = &spec.target
            && let Some(c) = components.get_mut(c)
            && !c.routes.contains(&route)
        {
            c.routes.push(route.clone());
        }
        routes.insert(route, spec);
    }
    Ok(Edge {
        gateway,
        auth,
        upstreams,
        routes: routes.into_values().collect(),
    })
}

fn gateway_settings(raw: RawGateway, base_dir: &Path) -> Result<GatewaySettings, String> {
    let d = GatewaySettings::default();
    let between = |key: &str, v: Option<&Spanned<u32>>, default: usize, lo: u32, hi: u32| match v {
        None => Ok(default),
        Some(v) if (lo..=hi).contains(v.get_ref()) => Ok(*v.get_ref() as usize),
        Some(_) => Err(format!("`{key}` must be between {lo} and {hi}")),
    };
    let settings = GatewaySettings {
        max_body: raw.max_body.unwrap_or(d.max_body),
        max_headers: between(
            "max_headers",
            raw.max_headers.as_ref(),
            d.max_headers,
            1,
            1000,
        )?,
        max_header_size: raw
            .max_header_size
            .map_or(d.max_header_size, |s| s as usize),
        header_timeout: raw.header_timeout.unwrap_or(d.header_timeout),
        body_timeout: raw.body_timeout.unwrap_or(d.body_timeout),
        request_timeout: raw.request_timeout.unwrap_or(d.request_timeout),
        max_connections: between(
            "max_connections",
            raw.max_connections.as_ref(),
            d.max_connections,
            1,
            1_000_000,
        )?,
        max_in_flight: between(
            "max_in_flight",
            raw.max_in_flight.as_ref(),
            d.max_in_flight,
            1,
            1_000_000,
        )?,
        tls: raw.tls.map(|t| {
            let t = t.into_inner();
            TlsSpec {
                cert: base_dir.join(t.cert),
                key: base_dir.join(t.key),
            }
        }),
        call_log: CallLogSpec {
            enabled: raw.call_log.enabled.unwrap_or(true),
            max_age: raw.call_log.max_age.unwrap_or(d.call_log.max_age),
            max_size: raw.call_log.max_size.unwrap_or(d.call_log.max_size),
        },
    };
    if settings.max_body > (4 << 30) {
        return Err("`max_body` must be at most 4GiB".into());
    }
    if !(8 << 10..=1 << 20).contains(&settings.max_header_size) {
        return Err("`max_header_size` must be between 8KiB and 1MiB".into());
    }
    for (key, t) in [
        ("header_timeout", settings.header_timeout),
        ("body_timeout", settings.body_timeout),
        ("request_timeout", settings.request_timeout),
    ] {
        if t < Duration::from_millis(10) || t > Duration::from_secs(3600) {
            return Err(format!("`{key}` must be between 10ms and 1h"));
        }
    }
    if settings.call_log.max_age < Duration::from_secs(60) {
        return Err("`call_log.max_age` must be at least 1m".into());
    }
    if settings.call_log.max_size < (1 << 20) {
        return Err("`call_log.max_size` must be at least 1MiB".into());
    }
    Ok(settings)
}

type Located = (String, Option<Span>);

fn auth_provider(name: &str, raw: RawAuth, base_dir: &Path) -> Result<AuthProvider, Located> {
    let plain = |m: String| (m, None);
    let keys = match (raw.local, raw.jwks, raw.jwks_url) {
        (true, None, None) => KeySource::Local,
        (false, Some(file), None) => KeySource::File(base_dir.join(file)),
        (false, None, Some(url)) => {
            let uri: http::Uri = url
                .parse()
                .map_err(|_| plain(format!("`jwks_url` = `{url}` is not a URL")))?;
            if uri.scheme_str() != Some("http") && uri.scheme_str() != Some("https") {
                return Err(plain(format!(
                    "`jwks_url` = `{url}` must be an http:// or https:// URL"
                )));
            }
            KeySource::Url(url)
        }
        _ => {
            return Err(plain(
                "give exactly one key source: `jwks = \"FILE\"`, `jwks_url = \"URL\"` or `local = true` (the key `atoll token issue` signs with)".into(),
            ));
        }
    };
    let local = keys == KeySource::Local;
    let issuer = match (raw.issuer, local) {
        (Some(i), _) if !i.is_empty() => i,
        (None, true) => crate::gateway::auth::LOCAL_ISSUER.to_string(),
        _ => {
            return Err(plain(
                "`issuer` is required: the `iss` its tokens carry".into(),
            ));
        }
    };
    let audiences = match (raw.audience.map(OneOrMany::into_vec), local) {
        (Some(a), _) if !a.is_empty() && a.iter().all(|a| !a.is_empty()) => a,
        (None, true) => vec![crate::gateway::auth::LOCAL_AUDIENCE.to_string()],
        _ => {
            return Err(plain(
                "`audience` is required: the `aud` value (or list of values) its tokens must carry for this host".into(),
            ));
        }
    };
    let algorithms = match raw.algorithms {
        None if local => vec!["EdDSA".to_string()],
        None => vec!["RS256".to_string()],
        Some(list) if list.is_empty() => {
            return Err(plain("`algorithms` may not be empty".into()));
        }
        Some(list) => {
            let mut out = Vec::new();
            for a in list {
                if !ALGORITHMS.contains(&a.get_ref().as_str()) {
                    let why = if a.get_ref().eq_ignore_ascii_case("none") {
                        "unsigned tokens are never accepted".to_string()
                    } else if a.get_ref().starts_with("HS") {
                        "HMAC algorithms are refused: keys come from a JWKS, and a public key must never verify an HMAC".to_string()
                    } else {
                        "unknown algorithm".to_string()
                    };
                    return Err((
                        format!(
                            "algorithm `{}`: {why}; use some of {}",
                            a.get_ref(),
                            ALGORITHMS.join(", ")
                        ),
                        Some(a.span()),
                    ));
                }
                out.push(a.into_inner());
            }
            out
        }
    };
    let leeway = raw.leeway.unwrap_or(Duration::from_secs(30));
    if leeway > Duration::from_secs(300) {
        return Err(plain("`leeway` must be at most 5m".into()));
    }
    let refresh = raw.refresh.unwrap_or(Duration::from_secs(300));
    if refresh < Duration::from_secs(1) || refresh > Duration::from_secs(24 * 3600) {
        return Err(plain("`refresh` must be between 1s and 24h".into()));
    }
    Ok(AuthProvider {
        name: name.to_string(),
        issuer,
        audiences,
        keys,
        refresh,
        algorithms,
        leeway,
        scope_claim: raw.scope_claim.unwrap_or_else(|| "scope".into()),
        roles_claim: raw.roles_claim.unwrap_or_else(|| "roles".into()),
    })
}

fn upstream_spec(
    name: &str,
    raw: RawUpstream,
    components: &BTreeMap<String, ComponentSpec>,
) -> Result<UpstreamSpec, Located> {
    if raw.backends.is_empty() {
        return Err((
            "`backends` is empty; list at least one, as `\"http://127.0.0.1:9000\"` or `{ component = \"NAME\", weight = 3 }`".into(),
            None,
        ));
    }
    if raw.backends.len() > 64 {
        return Err((
            format!(
                "{} backends; an upstream has at most 64: split it into several",
                raw.backends.len()
            ),
            None,
        ));
    }
    let mut backends = Vec::new();
    for b in raw.backends {
        let span = b.span();
        let at = |m: String| (m, Some(span.clone()));
        let (component, url, weight) = match b.into_inner() {
            RawBackend::Url(u) => (None, Some(u), None),
            RawBackend::Table(t) => (t.component, t.url, t.weight),
        };
        let target = match (component, url) {
            (Some(c), None) => {
                if !components.contains_key(&c) {
                    return Err(at(format!(
                        "backend component `{c}` is not a component of this manifest"
                    )));
                }
                BackendTarget::Component(c)
            }
            (None, Some(u)) => BackendTarget::Url(backend_url(&u).map_err(at)?),
            _ => {
                return Err(at(
                    "a backend is `\"http://HOST:PORT\"`, `{ url = \"...\", weight = N }` or `{ component = \"NAME\", weight = N }`".into(),
                ));
            }
        };
        let weight = weight.unwrap_or(1);
        if !(1..=1000).contains(&weight) {
            return Err(at(format!(
                "backend {target}: weight must be between 1 and 1000"
            )));
        }
        if backends.iter().any(|b: &BackendSpec| b.target == target) {
            return Err(at(format!("backend {target} is listed twice")));
        }
        backends.push(BackendSpec { target, weight });
    }
    let strategy = match raw.strategy {
        None => Strategy::RoundRobin,
        Some(s) => Strategy::parse(s.get_ref()).ok_or_else(|| {
            (
                format!(
                    "unknown strategy `{}`; use one of {}",
                    s.get_ref(),
                    Strategy::NAMES.join(", ")
                ),
                Some(s.span()),
            )
        })?,
    };
    let health = match raw.health {
        None => None,
        Some(h) => {
            if !h.path.starts_with('/') || h.path.contains(char::is_whitespace) {
                return Err((
                    format!(
                        "health.path `{}` is not a path; write it like `/healthz`",
                        h.path
                    ),
                    None,
                ));
            }
            let spec = HealthCheckSpec {
                path: h.path,
                interval: h.interval.unwrap_or(Duration::from_secs(5)),
                timeout: h.timeout.unwrap_or(Duration::from_secs(2)),
                unhealthy_after: h.unhealthy_after.unwrap_or(2),
                healthy_after: h.healthy_after.unwrap_or(2),
            };
            if spec.interval < Duration::from_millis(50)
                || spec.interval > Duration::from_secs(3600)
            {
                return Err(("health.interval must be between 50ms and 1h".into(), None));
            }
            if spec.timeout.is_zero() || spec.timeout > spec.interval.max(Duration::from_secs(1)) {
                return Err((
                    "health.timeout must be above 0 and at most the interval (or 1s)".into(),
                    None,
                ));
            }
            if !(1..=100).contains(&spec.unhealthy_after)
                || !(1..=100).contains(&spec.healthy_after)
            {
                return Err((
                    "health.unhealthy_after and health.healthy_after must be between 1 and 100"
                        .into(),
                    None,
                ));
            }
            Some(spec)
        }
    };
    let d = OutlierSpec::default();
    let outlier = OutlierSpec {
        consecutive_5xx: raw.outlier.consecutive_5xx.unwrap_or(d.consecutive_5xx),
        eject_for: raw.outlier.eject_for.unwrap_or(d.eject_for),
    };
    if outlier.eject_for.is_zero() || outlier.eject_for > Duration::from_secs(3600) {
        return Err(("outlier.eject_for must be between 1ms and 1h".into(), None));
    }
    Ok(UpstreamSpec {
        name: name.to_string(),
        backends,
        strategy,
        health,
        outlier,
    })
}

/// A backend URL: http with a host and port-or-default, no query.
fn backend_url(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text.parse().map_err(|_| {
        format!("backend `{text}` is not a URL; write it like `http://127.0.0.1:9000`")
    })?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "backend `{text}`: only http:// backends are supported (TLS to backends is not)"
        ));
    }
    if uri.host().is_none() || uri.query().is_some() {
        return Err(format!(
            "backend `{text}`: give a host and port, optionally a path, no query"
        ));
    }
    Ok(uri)
}

fn route_spec(
    route: &Route,
    raw: RawRoute,
    base_dir: &Path,
    auth: &BTreeMap<String, AuthProvider>,
    upstreams: &BTreeMap<String, UpstreamSpec>,
    components: &BTreeMap<String, ComponentSpec>,
    existing: Option<RouteTarget>,
) -> Result<RouteSpec, Located> {
    let plain = |m: String| (m, None);
    let target = match (raw.component, raw.upstream, raw.static_dir) {
        (Some(c), None, None) => {
            if !components.contains_key(&c) {
                return Err(plain(format!(
                    "component `{c}` is not a component of this manifest"
                )));
            }
            RouteTarget::Component(c)
        }
        (None, Some(u), None) => {
            if !upstreams.contains_key(&u) {
                return Err(plain(format!(
                    "upstream `{u}` is not declared; add `[upstreams.{u}]`"
                )));
            }
            RouteTarget::Upstream(u)
        }
        (None, None, Some(dir)) => {
            if let Some(index) = &raw.index
                && (index.is_empty()
                    || index.contains(['/', '\\', '\0'])
                    || index == "."
                    || index == "..")
            {
                return Err(plain(format!(
                    "`index` = `{index}` must be a file name in the directory, like `index.html`"
                )));
            }
            if let Some(cc) = &raw.cache_control
                && http::HeaderValue::from_str(cc).is_err()
            {
                return Err(plain(format!(
                    "`cache_control` = `{cc}` is not a valid header value; write it like `public, max-age=300`"
                )));
            }
            let dir = base_dir.join(dir);
            if !dir.is_dir() {
                return Err(plain(format!(
                    "static directory {} does not exist or is not a directory",
                    dir.display()
                )));
            }
            RouteTarget::Static(StaticSpec {
                dir,
                cache_control: raw
                    .cache_control
                    .clone()
                    .unwrap_or_else(|| "public, max-age=300".into()),
                index: raw.index.clone().unwrap_or_else(|| "index.html".into()),
            })
        }
        (None, None, None) => match existing.clone() {
            Some(t) => t,
            None => {
                return Err(plain(
                    "no target: set `component`, `upstream` or `static`, or list the route in a component's `routes` to give it this policy".into(),
                ));
            }
        },
        _ => {
            return Err(plain(
                "give one target: `component`, `upstream` or `static`".into(),
            ));
        }
    };
    if let Some(existing) = existing
        && existing != target
    {
        let whose = match &existing {
            RouteTarget::Component(c) => format!("component `{c}`"),
            _ => "another target".into(),
        };
        return Err(plain(format!(
            "the route is already served by {whose}; each route has one target"
        )));
    }
    if !matches!(target, RouteTarget::Static(_))
        && (raw.cache_control.is_some() || raw.index.is_some())
    {
        return Err(plain(
            "`cache_control` and `index` apply only to `static` routes".into(),
        ));
    }
    let auth_name = match raw.auth {
        None => None,
        Some(a) => {
            if !auth.contains_key(a.get_ref()) {
                let known: Vec<&str> = auth.keys().map(String::as_str).collect();
                return Err((
                    format!(
                        "auth provider `{}` is not declared; add `[auth.{}]` (declared: {})",
                        a.get_ref(),
                        a.get_ref(),
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                    Some(a.span()),
                ));
            }
            Some(a.into_inner())
        }
    };
    if auth_name.is_none() && (!raw.scopes.is_empty() || !raw.roles.is_empty()) {
        return Err(plain(
            "`scopes` and `roles` need a token: set `auth = \"PROVIDER\"`".into(),
        ));
    }
    let rate_limit = match raw.rate_limit {
        None => None,
        Some(r) => {
            let span = r.span();
            let r = r.into_inner();
            let at = |m: String| (format!("rate_limit: {m}"), Some(span.clone()));
            let spec = RateLimitSpec {
                rate: r.rate,
                per: r.per.unwrap_or(Duration::from_secs(1)),
                burst: r.burst.unwrap_or(r.rate),
                key: match r.key.as_deref() {
                    None | Some("ip") => RateKey::Ip,
                    Some("subject") => RateKey::Subject,
                    Some(h) if h.starts_with("header:") => {
                        let name = h["header:".len()..].to_ascii_lowercase();
                        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                            return Err(at(format!("`{h}`: not a header name")));
                        }
                        RateKey::Header(name)
                    }
                    Some(other) => {
                        return Err(at(format!(
                            "key `{other}`: use \"ip\", \"subject\" or \"header:NAME\" (e.g. \"header:x-api-key\")"
                        )));
                    }
                },
            };
            if spec.rate == 0 || spec.burst == 0 {
                return Err(at("rate and burst must be at least 1".into()));
            }
            if spec.per.is_zero() || spec.per > Duration::from_secs(24 * 3600) {
                return Err(at("per must be between 1ms and 24h".into()));
            }
            if spec.key == RateKey::Subject && auth_name.is_none() {
                return Err(at(
                    "key \"subject\" needs a token: set `auth` on this route".into(),
                ));
            }
            Some(spec)
        }
    };
    Ok(RouteSpec {
        route: route.clone(),
        target,
        auth: auth_name,
        scopes: raw.scopes,
        roles: raw.roles,
        rate_limit,
    })
}
