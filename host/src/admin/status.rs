//! The status page on the admin listener: `GET /status` is one
//! self-contained HTML file (inline CSS and JS, no external assets) that
//! polls `GET /status.json` every second and shows components, versions,
//! routes, request and error rates, latency percentiles, circuits, queues and
//! upstream backends.
//!
//! One source of truth: the JSON reads the same counters `/metrics` does
//! (the versions' stats, the registry view's edges, the bus overview, the
//! gateway's routes and upstreams), so a number on the page is the value of
//! the metric it names. Like `/metrics` both endpoints are open: they show
//! names and counts, never payloads or secrets.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

use crate::bus::{Bus, TopicInfo};
use crate::config::{RateKey, RouteTarget};
use crate::gateway::Gateway;
use crate::gateway::upstream::UpstreamView;
use crate::registry::{
    ComponentRuntime, EdgeView, HealthView, LATENCY_BOUNDS, Limit, Registry, Service,
};

/// The page.
pub const PAGE: &str = include_str!("status.html");

/// Rates and error rates are over this window.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// What the page may load: itself and `/status.json`, nothing from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// `GET /status.json`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The host's version.
    pub atoll_version: &'static str,
    /// When this was read (RFC 3339, milliseconds).
    pub generated_at: String,
    /// Whether the gateway serves (as `/readyz` counts it, removed
    /// components aside).
    pub ready: bool,
    /// `atoll_instances`.
    pub instances: u64,
    /// `atoll_call_denials_total`.
    pub call_denials: u64,
    /// The window of `requests_per_sec` and `error_rate`, in seconds.
    pub rate_window_secs: u64,
    /// Components by name.
    pub components: Vec<ComponentStatus>,
    /// The gateway's routes in manifest order.
    pub routes: Vec<RouteStatus>,
    /// Requests the gateway answered itself without a route, by reason.
    pub unrouted: BTreeMap<&'static str, u64>,
    /// The gateway's upstreams and their backends.
    pub upstreams: Vec<UpstreamView>,
    /// Topics with their subscriptions' queues.
    pub topics: Vec<TopicInfo>,
}

/// One component.
#[derive(Debug, Serialize)]
pub struct ComponentStatus {
    /// Name.
    pub name: String,
    /// Its routes (`/hello`, `/orders/...`).
    pub routes: Vec<String>,
    /// Its subscriptions, as `topic` or `topic (group G)`.
    pub subscriptions: Vec<String>,
    /// Topics it may publish to.
    pub publishes: Vec<String>,
    /// Invocations running now, all versions.
    pub in_flight: u64,
    /// `limits.max_concurrency`.
    pub max_concurrency: u32,
    /// The health route and its last check.
    pub health: Option<HealthView>,
    /// The running versions: the active one, then a canary (none: removed).
    pub versions: Vec<VersionStatus>,
    /// The edges to the components it may call.
    pub calls: Vec<EdgeView>,
}

/// One running version: the `atoll_*` per-version metrics.
#[derive(Debug, Serialize)]
pub struct VersionStatus {
    /// Semver.
    pub version: String,
    /// `active` or `canary` (the `role` label).
    pub role: &'static str,
    /// `atoll_traffic_share_percent`.
    pub share: u8,
    /// The first 12 hex digits of its sha256.
    pub digest: String,
    /// When it was deployed.
    pub deployed_at: String,
    /// `atoll_invocations_total`.
    pub requests: u64,
    /// `atoll_invocation_errors_total`.
    pub errors: u64,
    /// `atoll_in_flight`.
    pub in_flight: u64,
    /// Invocations per second over [`RATE_WINDOW`].
    pub requests_per_sec: f64,
    /// Invocations in [`RATE_WINDOW`].
    pub window_requests: u64,
    /// Failed invocations in [`RATE_WINDOW`].
    pub window_errors: u64,
    /// Failed / all in [`RATE_WINDOW`] (0 without invocations).
    pub error_rate: f64,
    /// `atoll_http_responses_total` by class (`2xx`).
    pub http: BTreeMap<String, u64>,
    /// `atoll_limit_hits_total` by limit.
    pub limits: BTreeMap<&'static str, u64>,
    /// `atoll_invocation_duration_seconds`.
    pub latency: Latency,
}

/// A version's latency histogram, summed up.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// `_count`.
    pub count: u64,
    /// `_sum`, seconds.
    pub sum: f64,
    /// The median in seconds, estimated from the buckets the way
    /// Prometheus's `histogram_quantile` does (none without observations).
    pub p50: Option<f64>,
    /// The 99th percentile, likewise.
    pub p99: Option<f64>,
}

/// One gateway route.
#[derive(Debug, Serialize)]
pub struct RouteStatus {
    /// The pattern (`/orders/...`).
    pub route: String,
    /// `component`, `upstream` or `static`.
    pub kind: &'static str,
    /// The component or upstream serving it (none for static files).
    pub target: Option<String>,
    /// The auth provider whose token it requires.
    pub auth: Option<String>,
    /// Its rate limit, as `RATE/PER burst B per KEY`.
    pub rate_limit: Option<String>,
    /// `atoll_gateway_rejections_total` of this route by reason (non-zero only).
    pub rejections: BTreeMap<&'static str, u64>,
}

/// Reads everything the page shows.
pub fn snapshot(registry: &Registry, bus: &Bus, gateway: Option<&Gateway>, ready: bool) -> Status {
    let view = registry.view();
    let components = view
        .components
        .into_iter()
        .map(|c| {
            let versions = registry.service(&c.name).map(versions).unwrap_or_default();
            ComponentStatus {
                name: c.name,
                routes: c.routes,
                subscriptions: c.subscriptions,
                publishes: c.publishes,
                in_flight: c.in_flight,
                max_concurrency: c.max_concurrency,
                health: c.health,
                versions,
                calls: c.calls,
            }
        })
        .collect();
    let (routes, unrouted, upstreams) = match gateway {
        Some(g) => (
            g.routes().iter().map(|r| route(r)).collect(),
            nonzero(g.unrouted.counts()),
            g.upstreams().iter().map(|u| u.view()).collect(),
        ),
        None => Default::default(),
    };
    Status {
        atoll_version: env!("CARGO_PKG_VERSION"),
        generated_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        ready,
        instances: view.instances,
        call_denials: view.call_denials,
        rate_window_secs: RATE_WINDOW.as_secs(),
        components,
        routes,
        unrouted,
        upstreams,
        topics: bus.overview().topics,
    }
}

/// The running versions of a component, with the role and share labels
/// `/metrics` gives them.
fn versions(service: &std::sync::Arc<Service>) -> Vec<VersionStatus> {
    service
        .running()
        .iter()
        .map(|(rt, role, share)| version(rt, role, *share))
        .collect()
}

fn version(rt: &ComponentRuntime, role: &'static str, share: u8) -> VersionStatus {
    let stats = &rt.stats;
    let window = stats.window(RATE_WINDOW);
    let (cumulative, sum) = stats.latency();
    VersionStatus {
        version: rt.version.to_string(),
        role,
        share,
        digest: rt.digest.chars().take(12).collect(),
        deployed_at: rt.deployed_at.clone(),
        requests: stats.requests(),
        errors: stats.errors(),
        in_flight: stats.in_flight(),
        requests_per_sec: round(stats.rate(RATE_WINDOW)),
        window_requests: window.total(),
        window_errors: window.failed,
        error_rate: round(window.error_rate()),
        http: (1..=5)
            .map(|class| (format!("{class}xx"), stats.statuses(class)))
            .collect(),
        limits: Limit::ALL
            .iter()
            .map(|l| (l.as_str(), stats.limits(*l)))
            .collect(),
        latency: Latency {
            count: cumulative.last().copied().unwrap_or(0),
            sum,
            p50: quantile(0.5, &cumulative),
            p99: quantile(0.99, &cumulative),
        },
    }
}

fn route(r: &crate::gateway::router::EdgeRoute) -> RouteStatus {
    let (kind, target) = match &r.spec.target {
        RouteTarget::Component(name) => ("component", Some(name.clone())),
        RouteTarget::Upstream(name) => ("upstream", Some(name.clone())),
        // The directory is the host's business, not the page's.
        RouteTarget::Static(_) => ("static", None),
    };
    RouteStatus {
        route: r.pattern.to_string(),
        kind,
        target,
        auth: r.spec.auth.clone(),
        rate_limit: r.spec.rate_limit.as_ref().map(|l| {
            let key = match &l.key {
                RateKey::Ip => "ip".to_string(),
                RateKey::Subject => "subject".to_string(),
                RateKey::Header(h) => format!("header {h}"),
            };
            format!(
                "{}/{} burst {} per {key}",
                l.rate,
                humantime::format_duration(l.per),
                l.burst
            )
        }),
        rejections: nonzero(r.rejections.counts()),
    }
}

fn nonzero(
    counts: impl Iterator<Item = (crate::gateway::router::Reason, u64)>,
) -> BTreeMap<&'static str, u64> {
    counts
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| (r.as_str(), n))
        .collect()
}

/// The `q` quantile of a histogram over [`LATENCY_BOUNDS`] (cumulative
/// counts, then `+Inf`), as Prometheus's `histogram_quantile` estimates it:
/// linear within the bucket the rank falls in (from 0 for the first bucket),
/// and the highest finite bound when it falls in `+Inf`.
pub fn quantile(q: f64, cumulative: &[u64]) -> Option<f64> {
    let total = *cumulative.last()?;
    if total == 0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total as f64;
    let i = cumulative.iter().position(|&c| c as f64 >= rank)?;
    let Some(&upper) = LATENCY_BOUNDS.get(i) else {
        return LATENCY_BOUNDS.last().copied();
    };
    let (lower, below) = match i {
        0 => (0.0, 0),
        _ => (LATENCY_BOUNDS[i - 1], cumulative[i - 1]),
    };
    let in_bucket = cumulative[i] - below;
    if in_bucket == 0 {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below as f64) / in_bucket as f64)
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `GET /status`: the page, with a policy that lets it load nothing but
/// `/status.json`.
pub fn page() -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// `GET /status.json`.
pub fn json(state: &super::AdminState) -> Response<Full<Bytes>> {
    let ready = state.ready.load(std::sync::atomic::Ordering::Acquire);
    let status = snapshot(&state.registry, &state.bus, state.gateway.as_deref(), ready);
    let mut res = super::json(StatusCode::OK, &status).unwrap_or_else(super::error_response);
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cumulative counts from per-bucket counts (then `+Inf`).
    fn cumulative(per_bucket: &[(usize, u64)]) -> Vec<u64> {
        let mut counts = vec![0; LATENCY_BOUNDS.len() + 1];
        for (i, n) in per_bucket {
            counts[*i] += n;
        }
        counts
            .iter()
            .scan(0, |total, n| {
                *total += n;
                Some(*total)
            })
            .collect()
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_like_prometheus() {
        // Nothing observed: no estimate.
        assert_eq!(quantile(0.5, &cumulative(&[])), None);
        // 4 in (0, 100us]: the median is halfway up the first bucket.
        let c = cumulative(&[(0, 4)]);
        assert_eq!(quantile(0.5, &c), Some(0.00005));
        // 2 in (1ms, 2.5ms], 2 in (2.5ms, 5ms]: rank 2 is the top of the
        // first of them; rank 3.96 is 98% up the second.
        let c = cumulative(&[(4, 2), (5, 2)]);
        assert_eq!(quantile(0.5, &c), Some(0.0025));
        let p99 = quantile(0.99, &c).unwrap();
        assert!((p99 - (0.0025 + 0.0025 * 0.98)).abs() < 1e-12, "{p99}");
        // Past the last bound: the last bound.
        let c = cumulative(&[(0, 1), (LATENCY_BOUNDS.len(), 9)]);
        assert_eq!(quantile(0.99, &c), Some(10.0));
        assert_eq!(quantile(1.5, &c), None);
    }

    #[test]
    fn the_page_is_self_contained() {
        for external in ["http://", "https://", "//fonts", "<link", "src="] {
            assert!(!PAGE.contains(external), "the page refers to {external}");
        }
        assert!(PAGE.contains("status.json"));
        let res = page();
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(
            res.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .starts_with("default-src 'none'")
        );
    }
}
