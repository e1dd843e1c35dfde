//! The `atoll.toml` manifest: schema, loading and validation.
//!
//! Parsing is strict: an unknown key, a malformed size or duration, or a route
//! that collides with another component's is an error that names the file,
//! the line and the key, so an operator can fix it without guessing.

mod edge;
mod telemetry;
mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use edge::{
    ALGORITHMS, AuthProvider, BackendSpec, BackendTarget, CallLogSpec, Edge, GatewaySettings,
    HealthCheckSpec, KeySource, OutlierSpec, RateKey, RateLimitSpec, RouteSpec, RouteTarget,
    StaticSpec, Strategy, TlsSpec, UpstreamSpec,
};
pub use telemetry::{
    MetricsPush, OTEL_ENV, OTEL_METRICS_ENV, OtlpExport, OtlpProtocol, TelemetrySpec,
};
pub use units::{ByteSize, parse_duration, parse_size};

/// Default listen address of the gateway.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default listen address of the admin API.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";

/// A parsed, validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The file it came from (for error messages); `None` when built in code.
    pub path: Option<PathBuf>,
    /// Directory relative paths in the manifest are resolved against.
    pub base_dir: PathBuf,
    /// Host-wide settings.
    pub host: HostSettings,
    /// Components by name, in name order.
    pub components: BTreeMap<String, ComponentSpec>,
    /// Declared bus topics by name.
    pub topics: BTreeMap<String, TopicSpec>,
    /// The edge gateway: limits, TLS, call log, auth providers, upstreams,
    /// and every route with its target and policy.
    pub edge: Edge,
    /// `[telemetry]`: OTLP trace export and metrics push.
    pub telemetry: TelemetrySpec,
}

/// `[topics.NAME]`: a bus topic. Only declared topics exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic's name.
    pub name: String,
    /// Largest payload accepted (`max_payload`, default 1 MiB).
    pub max_payload: u64,
    /// How long a message id is remembered for deduplication (`dedup_window`, default 5m).
    pub dedup_window: Duration,
}

/// `[[components.NAME.subscriptions]]`: a component handling a topic's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// The topic.
    pub topic: String,
    /// Components naming the same group share one subscription and compete
    /// for its messages (`group`, default the component's name).
    pub group: String,
    /// Settings of the subscription.
    pub settings: SubscriptionSettings,
}

/// How a subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSettings {
    /// Deliveries before a message goes to the dead letters (`max_deliver`, default 5).
    pub max_deliver: u32,
    /// Messages in flight at once (`prefetch`, default 16).
    pub prefetch: u32,
    /// First retry delay; it doubles per attempt, with jitter (`backoff`, default 100ms).
    pub backoff: Duration,
    /// Longest retry delay (`max_backoff`, default 30s).
    pub max_backoff: Duration,
    /// A declared topic that dead letters are also published to, so a
    /// component can handle them (`dead_letter_topic`, default none).
    pub dead_letter_topic: Option<String>,
}

impl Default for SubscriptionSettings {
    fn default() -> Self {
        SubscriptionSettings {
            max_deliver: 5,
            prefetch: 16,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            dead_letter_topic: None,
        }
    }
}

/// `[host]`: settings of the `atoll` process itself.
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// Gateway listen address (`listen`, default 127.0.0.1:8080; port 0 picks a free port).
    pub listen: SocketAddr,
    /// Where stores and the compiled-artifact cache live (`data_dir`, default `.atoll`
    /// next to the manifest).
    pub data_dir: PathBuf,
    /// How long in-flight requests may take to finish on shutdown (`shutdown_grace`, default 30s).
    pub shutdown_grace: Duration,
    /// Admin API listen address (`admin_listen`, default 127.0.0.1:8081; port 0 picks a free port).
    pub admin_listen: SocketAddr,
    /// Versions of each component kept for rollback (`keep_versions`, default 5).
    pub keep_versions: usize,
    /// How deep component-to-component calls may nest (`max_call_depth`, default 8).
    pub max_call_depth: u32,
}

/// `[components.CALLER.calls.CALLEE]`: the grant to call another component's
/// exports, and how those calls are guarded.
#[derive(Debug, Clone, PartialEq)]
pub struct CallSpec {
    /// The component called.
    pub callee: String,
    /// Each call's time limit (`timeout`); the caller's remaining deadline
    /// applies in any case (default: only that).
    pub timeout: Option<Duration>,
    /// Extra attempts for idempotent functions (`retries`, default 2).
    pub retries: u32,
    /// First retry delay, doubled per attempt, with jitter (`retry_backoff`, default 20ms).
    pub retry_backoff: Duration,
    /// Functions safe to call again (`idempotent`, names as in WIT; `*` = all).
    pub idempotent: Vec<String>,
    /// Calls in flight from this caller to the callee (`max_concurrent`, default 50).
    pub max_concurrent: u32,
    /// The circuit breaker (`breaker`).
    pub breaker: BreakerSpec,
    /// What answers when a call fails (`fallback`).
    pub fallback: Option<Fallback>,
    /// This edge closes a declared cycle in the call graph (`cycle`).
    pub cycle: bool,
}

/// A circuit breaker's settings (resilience4j's count-based window).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSpec {
    /// Calls the failure rate is measured over (`window`, default 20).
    pub window: u32,
    /// Calls needed before the rates count (`min_calls`, default 10).
    pub min_calls: u32,
    /// Failure rate (0-1) that opens the circuit (`failure_rate`, default 0.5).
    pub failure_rate: f64,
    /// A call slower than this is slow (`slow_call`, default 5s).
    pub slow_call: Duration,
    /// Slow-call rate (0-1) that opens the circuit (`slow_call_rate`, default 1.0).
    pub slow_call_rate: f64,
    /// How long it stays open before probing (`open_for`, default 10s).
    pub open_for: Duration,
    /// Probe calls let through while half-open (`half_open_calls`, default 3).
    pub half_open_calls: u32,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        BreakerSpec {
            window: 20,
            min_calls: 10,
            failure_rate: 0.5,
            slow_call: Duration::from_secs(5),
            slow_call_rate: 1.0,
            open_for: Duration::from_secs(10),
            half_open_calls: 3,
        }
    }
}

/// What answers a failed or refused call.
#[derive(Debug, Clone, PartialEq)]
pub enum Fallback {
    /// The last successful result for the same arguments, from a cache of
    /// this many entries (`fallback = { cache = 1000 }`).
    Cache(usize),
    /// Another component exporting the same interface
    /// (`fallback = { component = "NAME" }`).
    Component(String),
}

/// `[components.NAME.canary]`: when a canary is rolled back on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryPolicy {
    /// Error rate (0 to 1) above which the canary is rolled back (`max_error_rate`, default 0.1).
    pub max_error_rate: f64,
    /// The window the error rate is measured over (`window`, default 30s, at most 5m).
    pub window: Duration,
    /// Requests and deliveries in the window before the rate counts (`min_requests`, default 20).
    pub min_requests: u64,
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        CanaryPolicy {
            max_error_rate: 0.1,
            window: Duration::from_secs(30),
            min_requests: 20,
        }
    }
}

/// `[components.NAME]`: one service.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    /// The component's name (the table key).
    pub name: String,
    /// A `.wasm` component file, or a Rust crate directory that `atoll build` builds.
    pub source: PathBuf,
    /// Routes, exact (`/hello`) or prefix (`/orders/...`).
    pub routes: Vec<Route>,
    /// Outbound HTTP destinations this component may call (`scheme://host[:port]`, `*` wildcards).
    pub allowed_outbound_hosts: Vec<String>,
    /// Resource limits.
    pub limits: Limits,
    /// Plain configuration values, visible through `wasi:config/store`.
    pub config: BTreeMap<String, String>,
    /// Secret values (from the environment or a file), visible through `wasi:config/store`
    /// to this component only and never logged.
    pub secrets: BTreeMap<String, String>,
    /// Topics it may publish to (`publishes`).
    pub publishes: Vec<String>,
    /// Topics it handles messages of (`subscriptions`).
    pub subscriptions: Vec<SubscriptionSpec>,
    /// The version of `source` (`version`, semver; default the crate's
    /// `package.version` for a crate directory, else 0.0.0).
    pub version: Option<semver::Version>,
    /// A path the host GETs on a new version before it takes traffic
    /// (`health`); it must answer 2xx.
    pub health: Option<String>,
    /// When a canary is rolled back automatically.
    pub canary: CanaryPolicy,
    /// Components it may call, by callee name.
    pub calls: BTreeMap<String, CallSpec>,
}

/// A route pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// Matches this path exactly.
    Exact(String),
    /// Matches this path and everything below it (`/orders/...` is stored as `/orders`).
    Prefix(String),
}

impl Route {
    /// Parses `/path` (exact) or `/path/...` (prefix; `/...` matches everything).
    pub fn parse(text: &str) -> Result<Route, String> {
        if !text.starts_with('/') {
            return Err(format!("route `{text}` must start with `/`"));
        }
        if text.contains(['?', '#']) || text.chars().any(char::is_whitespace) {
            return Err(format!(
                "route `{text}` may not contain a query, a fragment or whitespace"
            ));
        }
        if let Some(prefix) = text.strip_suffix("/...") {
            if prefix.contains("...") {
                return Err(format!("route `{text}`: `...` may only end a route"));
            }
            return Ok(Route::Prefix(prefix.to_string()));
        }
        if text.contains("...") {
            return Err(format!(
                "route `{text}`: a prefix route ends with `/...`, as in `/orders/...`"
            ));
        }
        Ok(Route::Exact(text.to_string()))
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Exact(p) => f.write_str(p),
            Route::Prefix(p) => write!(f, "{p}/..."),
        }
    }
}

/// Per-component limits. Every one has a default; all are configurable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Maximum linear memory of one instance (`memory`, default 64 MiB).
    pub memory: u64,
    /// Wall-clock budget of one request (`deadline`, default 10s).
    pub deadline: Duration,
    /// Instances running at once; the next request gets 503 (`max_concurrency`, default 100).
    pub max_concurrency: u32,
    /// Maximum wasm stack (`stack`, default 512 KiB).
    pub stack: u64,
    /// Largest key-value value accepted (`kv_value_size`, default 1 MiB).
    pub kv_value_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 64 << 20,
            deadline: Duration::from_secs(10),
            max_concurrency: 100,
            stack: 512 << 10,
            kv_value_size: 1 << 20,
        }
    }
}

/// An error in a manifest, with where it is.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {message}")]
pub struct ManifestError {
    /// `file:line:column`, or just the file.
    pub location: String,
    /// What is wrong and what to do.
    pub message: String,
}

// ---- raw schema (what serde reads) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    host: RawHost,
    #[serde(default)]
    components: BTreeMap<Spanned<String>, RawComponent>,
    #[serde(default)]
    topics: BTreeMap<Spanned<String>, RawTopic>,
    #[serde(default)]
    gateway: edge::RawGateway,
    #[serde(default)]
    auth: BTreeMap<Spanned<String>, edge::RawAuth>,
    #[serde(default)]
    upstreams: BTreeMap<Spanned<String>, edge::RawUpstream>,
    #[serde(default)]
    routes: BTreeMap<Spanned<String>, edge::RawRoute>,
    #[serde(default)]
    telemetry: telemetry::RawTelemetry,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTopic {
    #[serde(default, deserialize_with = "units::de_opt_size")]
    max_payload: Option<u64>,
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    dedup_window: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubscription {
    topic: Spanned<String>,
    group: Option<Spanned<String>>,
    max_deliver: Option<Spanned<u32>>,
    prefetch: Option<Spanned<u32>>,
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    backoff: Option<Duration>,
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    max_backoff: Option<Duration>,
    dead_letter_topic: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHost {
    listen: Option<Spanned<String>>,
    data_dir: Option<String>,
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    shutdown_grace: Option<Duration>,
    admin_listen: Option<Spanned<String>>,
    keep_versions: Option<Spanned<u32>>,
    max_call_depth: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCall {
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    timeout: Option<Duration>,
    retries: Option<Spanned<u32>>,
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    retry_backoff: Option<Duration>,
    #[serde(default)]
    idempotent: Vec<String>,
    max_concurrent: Option<Spanned<u32>>,
    #[serde(default)]
    breaker: RawBreaker,
    fallback: Option<Spanned<RawFallback>>,
    #[serde(default)]
    cycle: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    window: Option<u32>,
    min_calls: Option<u32>,
    failure_rate: Option<f64>,
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    slow_call: Option<Duration>,
    slow_call_rate: Option<f64>,
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    open_for: Option<Duration>,
    half_open_calls: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFallback {
    cache: Option<usize>,
    component: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCanary {
    max_error_rate: Option<Spanned<f64>>,
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    window: Option<Duration>,
    min_requests: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    source: Spanned<String>,
    #[serde(default)]
    routes: Vec<Spanned<String>>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<Spanned<String>, RawSecret>,
    #[serde(default)]
    publishes: Vec<Spanned<String>>,
    #[serde(default)]
    subscriptions: Vec<RawSubscription>,
    version: Option<Spanned<String>>,
    health: Option<Spanned<String>>,
    #[serde(default)]
    canary: RawCanary,
    #[serde(default)]
    calls: BTreeMap<Spanned<String>, RawCall>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default, deserialize_with = "units::de_opt_size")]
    memory: Option<u64>,
    #[serde(default, deserialize_with = "units::de_opt_duration")]
    deadline: Option<Duration>,
    max_concurrency: Option<u32>,
    #[serde(default, deserialize_with = "units::de_opt_size")]
    stack: Option<u64>,
    #[serde(default, deserialize_with = "units::de_opt_size")]
    kv_value_size: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    env: Option<String>,
    file: Option<String>,
}

/// Where a line/column lookup reads from.
struct Source<'a> {
    file: String,
    text: &'a str,
}

impl Source<'_> {
    fn at(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> ManifestError {
        let offset = span.start.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ManifestError {
            location: format!("{}:{line}:{column}", self.file),
            message: message.into(),
        }
    }

    fn whole(&self, message: impl Into<String>) -> ManifestError {
        ManifestError {
            location: self.file.clone(),
            message: message.into(),
        }
    }
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            location: path.display().to_string(),
            message: format!(
                "cannot read manifest: {e} (pass the path of an atoll.toml, e.g. `atoll up examples/hello/atoll.toml`)"
            ),
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let mut manifest = Self::parse(&text, &path.display().to_string(), &base)?;
        manifest.path = Some(path.to_path_buf());
        Ok(manifest)
    }

    /// Parses and validates manifest text; `file` names it in errors and relative
    /// paths resolve against `base_dir`.
    pub fn parse(text: &str, file: &str, base_dir: &Path) -> Result<Manifest, ManifestError> {
        let src = Source {
            file: file.to_string(),
            text,
        };
        let raw: RawManifest = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => src.at(span, e.message().trim_end().to_string()),
            None => src.whole(e.message().trim_end().to_string()),
        })?;

        let address = |key: &str, value: &Option<Spanned<String>>, default: &str| match value {
            Some(s) => s.get_ref().parse().map_err(|_| {
                src.at(
                    s.span(),
                    format!(
                        "`{key}` = `{}` is not an address; write it as `IP:PORT`, e.g. `{default}`",
                        s.get_ref()
                    ),
                )
            }),
            None => Ok(default.parse().expect("default address parses")),
        };
        let host = HostSettings {
            listen: address("listen", &raw.host.listen, DEFAULT_LISTEN)?,
            data_dir: base_dir.join(raw.host.data_dir.as_deref().unwrap_or(".atoll")),
            shutdown_grace: raw.host.shutdown_grace.unwrap_or(Duration::from_secs(30)),
            admin_listen: address("admin_listen", &raw.host.admin_listen, DEFAULT_ADMIN_LISTEN)?,
            keep_versions: match &raw.host.keep_versions {
                None => 5,
                Some(k) if (1..=100).contains(k.get_ref()) => *k.get_ref() as usize,
                Some(k) => {
                    return Err(src.at(
                        k.span(),
                        "`keep_versions` must be between 1 and 100 (versions of each component kept for rollback)",
                    ));
                }
            },
            max_call_depth: match &raw.host.max_call_depth {
                None => 8,
                Some(d) if (1..=64).contains(d.get_ref()) => *d.get_ref(),
                Some(d) => {
                    return Err(src.at(
                        d.span(),
                        "`max_call_depth` must be between 1 and 64 (how deep component-to-component calls may nest)",
                    ));
                }
            },
        };
        let telemetry = telemetry::parse(raw.telemetry, &src)?;
        let declared: std::collections::BTreeSet<String> =
            raw.components.keys().map(|k| k.get_ref().clone()).collect();

        let mut topics = BTreeMap::new();
        for (name, raw) in raw.topics {
            let span = name.span();
            let name = name.into_inner();
            validate_topic(&name).map_err(|m| src.at(span.clone(), m))?;
            let topic = TopicSpec {
                max_payload: raw.max_payload.unwrap_or(1 << 20),
                dedup_window: raw.dedup_window.unwrap_or(Duration::from_secs(300)),
                name: name.clone(),
            };
            if topic.max_payload == 0 || topic.max_payload > (64 << 20) {
                return Err(src.at(
                    span,
                    format!("topic `{name}`: max_payload must be between 1B and 64MiB"),
                ));
            }
            if topic.dedup_window > Duration::from_secs(7 * 24 * 3600) {
                return Err(src.at(
                    span,
                    format!("topic `{name}`: dedup_window must be at most 7 days"),
                ));
            }
            topics.insert(name, topic);
        }
        // (topic, group) -> (component, settings) of its first member, so
        // members of one group cannot disagree on how it delivers.
        let mut groups: BTreeMap<(String, String), (String, SubscriptionSettings)> =
            BTreeMap::new();
        // Dead-letter topics named, to refuse chains (a dead letter of a dead letter).
        let mut dead_letter_topics: Vec<(String, std::ops::Range<usize>)> = Vec::new();

        let mut components = BTreeMap::new();
        // route -> (component, span) of its first owner, to report collisions.
        let mut owners: BTreeMap<Route, (String, std::ops::Range<usize>)> = BTreeMap::new();
        for (name, raw) in raw.components {
            let name_span = name.span();
            let name = name.into_inner();
            validate_name(&name).map_err(|m| src.at(name_span.clone(), m))?;
            if raw.source.get_ref().trim().is_empty() {
                return Err(src.at(
                    raw.source.span(),
                    format!("component `{name}`: `source` is empty; give a .wasm file or a crate directory"),
                ));
            }
            let mut routes = Vec::new();
            for r in &raw.routes {
                let route = Route::parse(r.get_ref())
                    .map_err(|m| src.at(r.span(), format!("component `{name}`: {m}")))?;
                if let Some((other, other_span)) = owners.get(&route) {
                    let other_line = src.at(other_span.clone(), "").location;
                    let whose = if other == &name {
                        "is listed twice for it".to_string()
                    } else {
                        format!("is already routed to component `{other}` ({other_line})")
                    };
                    return Err(src.at(
                        r.span(),
                        format!(
                            "route `{route}` of component `{name}` {whose}; each route belongs to one component"
                        ),
                    ));
                }
                owners.insert(route.clone(), (name.clone(), r.span()));
                routes.push(route);
            }
            let mut allowed = Vec::new();
            for h in &raw.allowed_outbound_hosts {
                crate::policy::OutboundRule::parse(h.get_ref())
                    .map_err(|m| src.at(h.span(), format!("component `{name}`: {m}")))?;
                allowed.push(h.get_ref().clone());
            }
            let d = Limits::default();
            let limits = Limits {
                memory: raw.limits.memory.unwrap_or(d.memory),
                deadline: raw.limits.deadline.unwrap_or(d.deadline),
                max_concurrency: raw.limits.max_concurrency.unwrap_or(d.max_concurrency),
                stack: raw.limits.stack.unwrap_or(d.stack),
                kv_value_size: raw.limits.kv_value_size.unwrap_or(d.kv_value_size),
            };
            check_limits(&name, &limits).map_err(|m| src.whole(m))?;
            let undeclared = |topic: &Spanned<String>, what: &str| {
                src.at(
                    topic.span(),
                    format!(
                        "component `{name}` {what} topic `{}`, which is not declared; add `[topics.\"{}\"]` to atoll.toml",
                        topic.get_ref(),
                        topic.get_ref()
                    ),
                )
            };
            let mut publishes = Vec::new();
            for t in &raw.publishes {
                if !topics.contains_key(t.get_ref()) {
                    return Err(undeclared(t, "publishes to"));
                }
                if !publishes.contains(t.get_ref()) {
                    publishes.push(t.get_ref().clone());
                }
            }
            let mut subscriptions: Vec<SubscriptionSpec> = Vec::new();
            for sub in raw.subscriptions {
                if !topics.contains_key(sub.topic.get_ref()) {
                    return Err(undeclared(&sub.topic, "subscribes to"));
                }
                let group = match &sub.group {
                    Some(g) => {
                        validate_name(g.get_ref()).map_err(|m| {
                            src.at(g.span(), m.replace("component name", "group name"))
                        })?;
                        g.get_ref().clone()
                    }
                    None => name.clone(),
                };
                let d = SubscriptionSettings::default();
                let settings = SubscriptionSettings {
                    max_deliver: sub
                        .max_deliver
                        .as_ref()
                        .map_or(d.max_deliver, |v| *v.get_ref()),
                    prefetch: sub.prefetch.as_ref().map_or(d.prefetch, |v| *v.get_ref()),
                    backoff: sub.backoff.unwrap_or(d.backoff),
                    max_backoff: sub.max_backoff.unwrap_or(d.max_backoff),
                    dead_letter_topic: sub.dead_letter_topic.as_ref().map(|t| t.get_ref().clone()),
                };
                let topic = sub.topic.get_ref().clone();
                if let Some(dlt) = &sub.dead_letter_topic {
                    if !topics.contains_key(dlt.get_ref()) {
                        return Err(undeclared(dlt, "sends dead letters to"));
                    }
                    if dlt.get_ref() == &topic {
                        return Err(src.at(dlt.span(), format!("component `{name}`: subscription to `{topic}` cannot send its dead letters to `{topic}` itself; declare a separate topic")));
                    }
                    dead_letter_topics.push((dlt.get_ref().clone(), dlt.span()));
                }
                if let Some(v) = &sub.max_deliver
                    && !(1..=1000).contains(v.get_ref())
                {
                    return Err(src.at(v.span(), format!("component `{name}`: subscription to `{topic}`: max_deliver must be between 1 and 1000")));
                }
                if let Some(v) = &sub.prefetch
                    && !(1..=10_000).contains(v.get_ref())
                {
                    return Err(src.at(v.span(), format!("component `{name}`: subscription to `{topic}`: prefetch must be between 1 and 10000")));
                }
                if settings.backoff.is_zero()
                    || settings.backoff > settings.max_backoff
                    || settings.max_backoff > Duration::from_secs(24 * 3600)
                {
                    return Err(src.at(sub.topic.span(), format!("component `{name}`: subscription to `{topic}`: need 0 < backoff <= max_backoff <= 24h")));
                }
                if subscriptions
                    .iter()
                    .any(|s| s.topic == topic && s.group == group)
                {
                    return Err(src.at(sub.topic.span(), format!("component `{name}` subscribes to `{topic}` twice in group `{group}`; keep one")));
                }
                match groups.get(&(topic.clone(), group.clone())) {
                    Some((other, theirs)) if theirs != &settings => {
                        return Err(src.at(sub.topic.span(), format!(
                            "component `{name}`: subscription group `{group}` on topic `{topic}` is configured differently by component `{other}`; members of a group share one subscription, so give them the same settings"
                        )));
                    }
                    Some(_) => {}
                    None => {
                        groups.insert(
                            (topic.clone(), group.clone()),
                            (name.clone(), settings.clone()),
                        );
                    }
                }
                subscriptions.push(SubscriptionSpec {
                    topic,
                    group,
                    settings,
                });
            }
            let version = match &raw.version {
                None => None,
                Some(v) => Some(semver::Version::parse(v.get_ref()).map_err(|e| {
                    src.at(
                        v.span(),
                        format!(
                            "component `{name}`: version `{}` is not semver ({e}); write it like `1.2.0`",
                            v.get_ref()
                        ),
                    )
                })?),
            };
            let health = match &raw.health {
                None => None,
                Some(h)
                    if h.get_ref().starts_with('/')
                        && !h.get_ref().contains(char::is_whitespace) =>
                {
                    Some(h.get_ref().clone())
                }
                Some(h) => {
                    return Err(src.at(
                        h.span(),
                        format!(
                            "component `{name}`: health `{}` is not a path; write it like `/healthz`",
                            h.get_ref()
                        ),
                    ));
                }
            };
            let d = CanaryPolicy::default();
            let canary = CanaryPolicy {
                max_error_rate: raw
                    .canary
                    .max_error_rate
                    .as_ref()
                    .map_or(d.max_error_rate, |r| *r.get_ref()),
                window: raw.canary.window.unwrap_or(d.window),
                min_requests: raw.canary.min_requests.unwrap_or(d.min_requests),
            };
            if let Some(r) = &raw.canary.max_error_rate
                && !(0.0..=1.0).contains(r.get_ref())
            {
                return Err(src.at(
                    r.span(),
                    format!("component `{name}`: canary.max_error_rate must be between 0 and 1 (0.1 is 10%)"),
                ));
            }
            if canary.window < Duration::from_secs(1) || canary.window > crate::registry::MAX_WINDOW
            {
                return Err(src.whole(format!(
                    "component `{name}`: canary.window must be between 1s and 5m"
                )));
            }
            let mut calls = BTreeMap::new();
            for (callee, call) in raw.calls {
                let span = callee.span();
                let callee = callee.into_inner();
                let spec = call_spec(&name, &callee, call, &declared)
                    .map_err(|(m, at)| src.at(at.unwrap_or(span), m))?;
                calls.insert(callee, spec);
            }
            let mut secrets = BTreeMap::new();
            for (key, secret) in raw.secrets {
                let value = resolve_secret(&name, key.get_ref(), &secret, base_dir)
                    .map_err(|m| src.at(key.span(), m))?;
                if raw.config.contains_key(key.get_ref()) {
                    return Err(src.at(
                        key.span(),
                        format!(
                            "component `{name}`: `{}` is both a config value and a secret; keep one",
                            key.get_ref()
                        ),
                    ));
                }
                secrets.insert(key.into_inner(), value);
            }
            components.insert(
                name.clone(),
                ComponentSpec {
                    source: base_dir.join(raw.source.get_ref()),
                    name,
                    routes,
                    allowed_outbound_hosts: allowed,
                    limits,
                    config: raw.config,
                    secrets,
                    publishes,
                    subscriptions,
                    version,
                    health,
                    canary,
                    calls,
                },
            );
        }
        for (dlt, span) in &dead_letter_topics {
            let chained = components.values().flat_map(|c: &ComponentSpec| {
                c.subscriptions
                    .iter()
                    .filter(|s| &s.topic == dlt && s.settings.dead_letter_topic.is_some())
                    .map(move |_| c.name.clone())
            });
            if let Some(other) = chained.into_iter().next() {
                return Err(src.at(
                    span.clone(),
                    format!(
                        "topic `{dlt}` receives dead letters, so its own subscriptions (component `{other}`) may not set `dead_letter_topic`; dead letters of dead letters stay in `atoll bus dlq`"
                    ),
                ));
            }
        }
        check_call_cycles(&components).map_err(|m| src.whole(m))?;
        let edge = edge::parse(
            edge::RawEdge {
                gateway: raw.gateway,
                auth: raw.auth,
                upstreams: raw.upstreams,
                routes: raw.routes,
            },
            &src,
            base_dir,
            &mut components,
        )?;
        Ok(Manifest {
            path: None,
            base_dir: base_dir.to_path_buf(),
            host,
            components,
            topics,
            edge,
            telemetry,
        })
    }
}

type Located = (String, Option<std::ops::Range<usize>>);

/// Validates one `[components.CALLER.calls.CALLEE]` table.
fn call_spec(
    caller: &str,
    callee: &str,
    raw: RawCall,
    declared: &std::collections::BTreeSet<String>,
) -> Result<CallSpec, Located> {
    let at = |m: String| (format!("component `{caller}`: calls.{callee}: {m}"), None);
    if !declared.contains(callee) {
        return Err(at(format!(
            "there is no component `{callee}` in this manifest; declare it, or fix the name (declared: {})",
            declared.iter().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let d = BreakerSpec::default();
    let b = raw.breaker;
    let breaker = BreakerSpec {
        window: b.window.unwrap_or(d.window),
        min_calls: b.min_calls.unwrap_or(d.min_calls),
        failure_rate: b.failure_rate.unwrap_or(d.failure_rate),
        slow_call: b.slow_call.unwrap_or(d.slow_call),
        slow_call_rate: b.slow_call_rate.unwrap_or(d.slow_call_rate),
        open_for: b.open_for.unwrap_or(d.open_for),
        half_open_calls: b.half_open_calls.unwrap_or(d.half_open_calls),
    };
    if !(1..=10_000).contains(&breaker.window) {
        return Err(at("breaker.window must be between 1 and 10000 calls".into()));
    }
    if breaker.min_calls == 0 || breaker.min_calls > breaker.window {
        return Err(at(format!(
            "breaker.min_calls must be between 1 and breaker.window ({})",
            breaker.window
        )));
    }
    for (key, rate) in [
        ("failure_rate", breaker.failure_rate),
        ("slow_call_rate", breaker.slow_call_rate),
    ] {
        if !(rate > 0.0 && rate <= 1.0) {
            return Err(at(format!(
                "breaker.{key} must be above 0 and at most 1 (0.5 is 50%)"
            )));
        }
    }
    if !(1..=1000).contains(&breaker.half_open_calls) {
        return Err(at(
            "breaker.half_open_calls must be between 1 and 1000".into()
        ));
    }
    if breaker.open_for.is_zero() || breaker.slow_call.is_zero() {
        return Err(at(
            "breaker.open_for and breaker.slow_call must be above 0".into()
        ));
    }
    let fallback = match raw.fallback {
        None => None,
        Some(f) => {
            let span = f.span();
            match f.into_inner() {
                RawFallback {
                    cache: Some(n),
                    component: None,
                } if (1..=10_000).contains(&n) => Some(Fallback::Cache(n)),
                RawFallback {
                    cache: None,
                    component: Some(c),
                } if declared.contains(&c) && c != caller && c != callee => {
                    Some(Fallback::Component(c))
                }
                RawFallback {
                    cache: None,
                    component: Some(c),
                } => {
                    return Err((
                        format!(
                            "component `{caller}`: calls.{callee}: fallback component `{c}` must be another component of this manifest, neither the caller nor the callee"
                        ),
                        Some(span),
                    ));
                }
                _ => {
                    return Err((
                        format!(
                            "component `{caller}`: calls.{callee}: write the fallback as `{{ cache = ENTRIES }}` (1 to 10000 last results) or `{{ component = \"NAME\" }}`"
                        ),
                        Some(span),
                    ));
                }
            }
        }
    };
    let retries = raw.retries.as_ref().map_or(2, |r| *r.get_ref());
    if retries > 10 {
        return Err(at("retries must be at most 10".into()));
    }
    let max_concurrent = raw.max_concurrent.as_ref().map_or(50, |m| *m.get_ref());
    if !(1..=10_000).contains(&max_concurrent) {
        return Err(at("max_concurrent must be between 1 and 10000".into()));
    }
    if raw.timeout.is_some_and(|t| t.is_zero()) {
        return Err(at("timeout must be above 0".into()));
    }
    Ok(CallSpec {
        callee: callee.to_string(),
        timeout: raw.timeout,
        retries,
        retry_backoff: raw.retry_backoff.unwrap_or(Duration::from_millis(20)),
        idempotent: raw.idempotent,
        max_concurrent,
        breaker,
        fallback,
        cycle: raw.cycle,
    })
}

/// Every cycle in the call graph must be declared: one of its edges says
/// `cycle = true`. (The host's call depth limit still ends a loop.)
fn check_call_cycles(components: &BTreeMap<String, ComponentSpec>) -> Result<(), String> {
    // Depth-first search over undeclared edges; a back edge is a cycle.
    fn visit<'a>(
        node: &'a str,
        components: &'a BTreeMap<String, ComponentSpec>,
        path: &mut Vec<&'a str>,
        done: &mut std::collections::BTreeSet<&'a str>,
    ) -> Result<(), String> {
        if let Some(i) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<&str> = path[i..].to_vec();
            cycle.push(node);
            return Err(format!(
                "the calls form a cycle: {}; if that is intended, mark one of its edges with `cycle = true` (the depth limit `[host] max_call_depth` still stops a runaway loop)",
                cycle.join(" -> ")
            ));
        }
        if !done.insert(node) {
            return Ok(());
        }
        path.push(node);
        if let Some(c) = components.get(node) {
            for (callee, call) in &c.calls {
                if !call.cycle {
                    visit(callee, components, path, done)?;
                }
            }
        }
        path.pop();
        Ok(())
    }
    let mut done = std::collections::BTreeSet::new();
    for name in components.keys() {
        visit(name, components, &mut Vec::new(), &mut done)?;
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "component name `{name}` is not valid: use 1-64 lowercase letters, digits, `-` or `_`, starting with a letter or digit"
        ))
    }
}

fn validate_topic(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "topic name `{name}` is not valid: use 1-128 lowercase letters, digits, `.`, `-` or `_`, starting with a letter or digit"
        ))
    }
}

fn check_limits(name: &str, l: &Limits) -> Result<(), String> {
    let fail = |what: &str| Err(format!("component `{name}`: limits.{what}"));
    if l.memory < (1 << 16) || l.memory > (4 << 30) {
        return fail("memory must be between 64KiB and 4GiB");
    }
    if l.deadline.is_zero() || l.deadline > Duration::from_secs(3600) {
        return fail("deadline must be between 1ms and 1h");
    }
    if l.max_concurrency == 0 || l.max_concurrency > 10_000 {
        return fail("max_concurrency must be between 1 and 10000");
    }
    if l.stack < (16 << 10) || l.stack > (64 << 20) {
        return fail("stack must be between 16KiB and 64MiB");
    }
    if l.kv_value_size == 0 || l.kv_value_size > (64 << 20) {
        return fail("kv_value_size must be between 1B and 64MiB");
    }
    Ok(())
}

fn resolve_secret(
    component: &str,
    key: &str,
    secret: &RawSecret,
    base_dir: &Path,
) -> Result<String, String> {
    match (&secret.env, &secret.file) {
        (Some(var), None) => std::env::var(var).map_err(|_| {
            format!(
                "component `{component}`: secret `{key}` reads environment variable `{var}`, which is not set; export it before `atoll up`"
            )
        }),
        (None, Some(file)) => {
            let path = base_dir.join(file);
            std::fs::read_to_string(&path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| {
                    format!(
                        "component `{component}`: secret `{key}` reads file `{}`: {e}",
                        path.display()
                    )
                })
        }
        _ => Err(format!(
            "component `{component}`: secret `{key}` needs exactly one of `env = \"VAR\"` or `file = \"path\"`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, "atoll.toml", Path::new("/app"))
    }

    #[test]
    fn defaults_and_paths() {
        let m = parse(
            "[components.hello]\nsource = \"hello.wasm\"\nroutes = [\"/hello\", \"/api/...\"]\n",
        )
        .unwrap();
        assert_eq!(m.host.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(m.host.data_dir, Path::new("/app/.atoll"));
        let c = &m.components["hello"];
        assert_eq!(c.source, Path::new("/app/hello.wasm"));
        assert_eq!(
            c.routes,
            vec![Route::Exact("/hello".into()), Route::Prefix("/api".into())]
        );
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = parse("[components.a]\nsource = \"a.wasm\"\nrouts = [\"/a\"]\n").unwrap_err();
        assert_eq!(e.location, "atoll.toml:3:1");
        assert!(e.message.contains("unknown field `routs`"), "{e}");
    }

    #[test]
    fn limits_parse_units() {
        let m = parse(
            "[components.a]\nsource = \"a.wasm\"\n[components.a.limits]\nmemory = \"16MiB\"\ndeadline = \"250ms\"\nstack = \"1MiB\"\n",
        )
        .unwrap();
        let l = &m.components["a"].limits;
        assert_eq!(l.memory, 16 << 20);
        assert_eq!(l.deadline, Duration::from_millis(250));
        assert_eq!(l.stack, 1 << 20);
    }

    #[test]
    fn bad_size_is_located() {
        let e = parse(
            "[components.a]\nsource = \"a.wasm\"\n[components.a.limits]\nmemory = \"lots\"\n",
        )
        .unwrap_err();
        assert_eq!(e.location, "atoll.toml:4:10");
        assert!(e.message.contains("`lots` is not a size"), "{e}");
    }

    #[test]
    fn colliding_routes_name_both_components() {
        let e = parse(
            "[components.a]\nsource = \"a.wasm\"\nroutes = [\"/x\"]\n[components.b]\nsource = \"b.wasm\"\nroutes = [\"/x\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.location, "atoll.toml:6:11");
        assert!(
            e.message.contains(
                "route `/x` of component `b` is already routed to component `a` (atoll.toml:3:11)"
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_routes() {
        for (route, want) in [
            ("x", "must start with `/`"),
            ("/a/.../b", "ends with `/...`"),
            ("/a/.../...", "may only end a route"),
            ("/a...", "ends with `/...`"),
            ("/a?b", "may not contain a query"),
        ] {
            let e = parse(&format!(
                "[components.a]\nsource = \"a.wasm\"\nroutes = [\"{route}\"]\n"
            ))
            .unwrap_err();
            assert!(e.message.contains(want), "{route}: {e}");
        }
    }

    #[test]
    fn bad_component_name() {
        let e = parse("[components.Bad]\nsource = \"a.wasm\"\n").unwrap_err();
        assert!(
            e.message.contains("component name `Bad` is not valid"),
            "{e}"
        );
    }

    #[test]
    fn secrets_from_env_and_missing_env() {
        let e = parse(
            "[components.a]\nsource = \"a.wasm\"\n[components.a.secrets]\nkey = { env = \"ATOLL_TEST_SURELY_UNSET\" }\n",
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("`ATOLL_TEST_SURELY_UNSET`, which is not set"),
            "{e}"
        );
    }

    #[test]
    fn bad_listen() {
        let e = parse("[host]\nlisten = \"localhost\"\n").unwrap_err();
        assert_eq!(e.location, "atoll.toml:2:10");
        assert!(e.message.contains("is not an address"), "{e}");
    }
}
