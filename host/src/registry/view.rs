//! What the admin API shows of the registry (`GET /v1/components`): the
//! data of `atoll ps` and of service discovery, as JSON. The CLI reads the
//! same types back.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::store::{Event, VersionRecord};
use super::{ComponentRuntime, Registry, Service};

/// Rates (`requests_per_sec`) are over this window.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Error rates (`error_rate`) are over this window.
const ERROR_WINDOW: Duration = Duration::from_secs(60);

/// Everything running.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistryView {
    /// Each component of the manifest.
    pub components: Vec<ComponentView>,
    /// Component instances alive in the hosts' instance pools.
    pub instances: u64,
    /// Call edges refused by policy (an import whose exporter the caller may
    /// not call) since the host started.
    #[serde(default)]
    pub call_denials: u64,
}

/// One component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentView {
    /// Name.
    pub name: String,
    /// The version serving (`None`: removed).
    pub active: Option<VersionView>,
    /// A canary, when one runs.
    pub canary: Option<CanaryView>,
    /// Versions kept for rollback, oldest first.
    pub kept: Vec<VersionRecord>,
    /// Routes (`/hello`, `/orders/...`).
    pub routes: Vec<String>,
    /// Subscriptions, as `topic` or `topic (group G)`.
    pub subscriptions: Vec<String>,
    /// Topics it may publish to.
    pub publishes: Vec<String>,
    /// Invocations running now, all versions.
    pub in_flight: u64,
    /// `limits.max_concurrency`.
    pub max_concurrency: u32,
    /// `limits.memory` in bytes.
    pub memory: u64,
    /// `limits.deadline` in milliseconds.
    pub deadline_ms: u64,
    /// The health route and its last check.
    pub health: Option<HealthView>,
    /// Recent events, oldest first.
    pub events: Vec<Event>,
    /// The components it may call, with each edge's circuit and counters.
    #[serde(default)]
    pub calls: Vec<EdgeView>,
}

/// One allowed call edge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EdgeView {
    /// The component called.
    pub callee: String,
    /// `closed`, `open` or `half-open`.
    pub circuit: String,
    /// Failure rate over the breaker's window (or the half-open probes).
    pub failure_rate: f64,
    /// Outcomes in that window.
    pub window_calls: u64,
    /// Times the circuit opened.
    pub opened: u64,
    /// Calls made.
    pub calls: u64,
    /// Calls answered by the callee.
    pub ok: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// Attempts that timed out.
    pub timeouts: u64,
    /// Retries.
    pub retries: u64,
    /// Calls refused while the circuit was open.
    pub circuit_open: u64,
    /// Calls refused by the bulkhead.
    pub bulkhead_full: u64,
    /// Calls answered by the fallback.
    pub fallbacks: u64,
    /// Calls refused for depth.
    pub too_deep: u64,
}

/// One running version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionView {
    /// Semver.
    pub version: String,
    /// sha256 of the binary.
    pub digest: String,
    /// When it was deployed.
    pub deployed_at: String,
    /// Interfaces it exports.
    pub exports: Vec<String>,
    /// Interfaces it imports.
    pub imports: Vec<String>,
    /// Invocations running on it now.
    pub in_flight: u64,
    /// Invocations since it was loaded.
    pub requests: u64,
    /// Failed invocations (5xx, trap, deadline) since it was loaded.
    pub errors: u64,
    /// Invocations per second over the last 10 s.
    pub requests_per_sec: f64,
    /// Invocations over the last 60 s.
    pub recent_requests: u64,
    /// Failed invocations over the last 60 s.
    pub recent_errors: u64,
    /// Failed / all over the last 60 s.
    pub error_rate: f64,
    /// Its last health check (when the component has a health route).
    pub health: Option<HealthCheck>,
}

/// One health check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Its answer (`None`: no answer).
    pub status: Option<u16>,
    /// When.
    pub checked_at: String,
    /// What went wrong.
    pub error: Option<String>,
}

/// A canary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanaryView {
    /// The version.
    #[serde(flatten)]
    pub version: VersionView,
    /// Its share of traffic.
    pub percent: u8,
    /// Error rate over the canary policy's window.
    pub window_error_rate: f64,
    /// Invocations in that window.
    pub window_requests: u64,
    /// The error rate that rolls it back.
    pub max_error_rate: f64,
}

/// A health route and the active version's last check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthView {
    /// The path.
    pub path: String,
    /// The version checked (the active one).
    pub version: Option<String>,
    /// Its answer.
    pub status: Option<u16>,
    /// When.
    pub checked_at: Option<String>,
    /// What went wrong.
    pub error: Option<String>,
}

impl VersionView {
    fn of(rt: &ComponentRuntime) -> VersionView {
        let recent = rt.stats.window(ERROR_WINDOW);
        VersionView {
            version: rt.version.to_string(),
            digest: rt.digest.clone(),
            deployed_at: rt.deployed_at.clone(),
            exports: rt.exports.clone(),
            imports: rt.imports.clone(),
            in_flight: rt.stats.in_flight(),
            requests: rt.stats.requests(),
            errors: rt.stats.errors(),
            requests_per_sec: round(rt.stats.rate(RATE_WINDOW)),
            recent_requests: recent.total(),
            recent_errors: recent.failed,
            error_rate: round(recent.error_rate()),
            health: rt.health().map(|h| HealthCheck {
                status: h.status,
                checked_at: h.at,
                error: h.error,
            }),
        }
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl ComponentView {
    /// The view of one component.
    pub fn of(service: &Service, registry: &Registry) -> ComponentView {
        let spec = &service.spec;
        let deployment = service.deployment();
        let saved = registry.store.component(&spec.name).unwrap_or_default();
        let health = spec.health.as_ref().map(|path| {
            let active = deployment.active.as_ref();
            let last = active.and_then(|a| a.health());
            HealthView {
                path: path.clone(),
                version: active.map(|a| a.version.to_string()),
                status: last.as_ref().and_then(|h| h.status),
                checked_at: last.as_ref().map(|h| h.at.clone()),
                error: last.and_then(|h| h.error),
            }
        });
        ComponentView {
            name: spec.name.clone(),
            active: deployment.active.as_deref().map(VersionView::of),
            canary: deployment.canary.as_ref().map(|c| {
                let window = c.runtime.stats.window(spec.canary.window);
                CanaryView {
                    version: VersionView::of(&c.runtime),
                    percent: c.percent,
                    window_error_rate: round(window.error_rate()),
                    window_requests: window.total(),
                    max_error_rate: spec.canary.max_error_rate,
                }
            }),
            kept: saved.versions,
            routes: spec.routes.iter().map(|r| r.to_string()).collect(),
            subscriptions: spec
                .subscriptions
                .iter()
                .map(|s| match s.group == spec.name {
                    true => s.topic.clone(),
                    false => format!("{} (group {})", s.topic, s.group),
                })
                .collect(),
            publishes: spec.publishes.clone(),
            in_flight: u64::from(spec.limits.max_concurrency)
                - service.concurrency.available_permits() as u64,
            max_concurrency: spec.limits.max_concurrency,
            memory: spec.limits.memory,
            deadline_ms: spec.limits.deadline.as_millis() as u64,
            health,
            events: saved.events,
            calls: service
                .edges
                .values()
                .map(|e| {
                    let b = e.breaker_state();
                    let n = |c: &std::sync::atomic::AtomicU64| {
                        c.load(std::sync::atomic::Ordering::Relaxed)
                    };
                    EdgeView {
                        callee: e.spec.callee.clone(),
                        circuit: b.state.as_str().to_string(),
                        failure_rate: round(b.failure_rate),
                        window_calls: b.calls as u64,
                        opened: b.opened,
                        calls: n(&e.stats.calls),
                        ok: n(&e.stats.ok),
                        failed: n(&e.stats.failed),
                        timeouts: n(&e.stats.timeouts),
                        retries: n(&e.stats.retries),
                        circuit_open: n(&e.stats.circuit_open),
                        bulkhead_full: n(&e.stats.bulkhead_full),
                        fallbacks: n(&e.stats.fallbacks),
                        too_deep: n(&e.stats.too_deep),
                    }
                })
                .collect(),
        }
    }
}

impl Registry {
    /// What `atoll ps` and discovery show.
    pub fn view(&self) -> RegistryView {
        let mut engines: Vec<&wasmtime::Engine> = Vec::new();
        for service in self.services.values() {
            if !engines
                .iter()
                .any(|e| wasmtime::Engine::same(e, &service.engine.engine))
            {
                engines.push(&service.engine.engine);
            }
        }
        RegistryView {
            components: self
                .services
                .values()
                .map(|s| ComponentView::of(s, self))
                .collect(),
            instances: engines
                .iter()
                .filter_map(|e| e.pooling_allocator_metrics())
                .map(|m| m.component_instances())
                .sum(),
            call_denials: crate::policy::call_denials(),
        }
    }
}
