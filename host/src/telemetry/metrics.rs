//! The Prometheus text exposition (`GET /metrics` on the admin listener).
//!
//! Every figure is read at scrape time from state the host keeps anyway: the
//! per-version stats (lock-free atomics on the request path), the edges'
//! breakers and counters, the bus's counters and the instance pools. A
//! metrics client library would keep a second copy of each counter behind
//! its own registry and label maps; writing the text format (a few lines per
//! family) from the source of truth is simpler and costs the request path
//! nothing extra.

use std::fmt::Write;

use crate::bus::Bus;
use crate::gateway::Gateway;
use crate::gateway::router::Reason;
use crate::registry::{ComponentRuntime, LATENCY_BOUNDS, Limit, Registry};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn family<'a>(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out }
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The running versions with their role (`active`, `canary`).
fn versions(registry: &Registry) -> Vec<(std::sync::Arc<ComponentRuntime>, &'static str, u8)> {
    registry.services().flat_map(|s| s.running()).collect()
}

/// Renders every metric.
pub fn render(registry: &Registry, bus: &Bus, gateway: Option<&Gateway>) -> String {
    let mut out = String::with_capacity(16 << 10);
    let versions = versions(registry);
    let view = registry.view();

    let mut f = family(&mut out, "atoll_up", "gauge", "1 while the host serves.");
    f.sample("atoll_up", &[], 1.0);
    let mut f = family(
        &mut out,
        "atoll_instances",
        "gauge",
        "Component instances alive in the instance pools.",
    );
    f.sample("atoll_instances", &[], view.instances as f64);

    // Per version.
    let labels = |rt: &ComponentRuntime, role: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("component", rt.name.to_string()),
            ("version", rt.version.to_string()),
            ("role", role.to_string()),
        ]
    };
    fn borrow<'a>(l: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        l.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
    let mut f = family(
        &mut out,
        "atoll_traffic_share_percent",
        "gauge",
        "Percent of a component's requests, calls and messages a version gets.",
    );
    for (rt, role, share) in &versions {
        f.sample(
            "atoll_traffic_share_percent",
            &borrow(&labels(rt, role)),
            f64::from(*share),
        );
    }
    let mut f = family(
        &mut out,
        "atoll_invocations_total",
        "counter",
        "Invocations (requests, calls, message deliveries) of a version.",
    );
    for (rt, role, _) in &versions {
        f.sample(
            "atoll_invocations_total",
            &borrow(&labels(rt, role)),
            rt.stats.requests() as f64,
        );
    }
    let mut f = family(
        &mut out,
        "atoll_invocation_errors_total",
        "counter",
        "Invocations that failed: a 5xx of the component, a trap, a deadline.",
    );
    for (rt, role, _) in &versions {
        f.sample(
            "atoll_invocation_errors_total",
            &borrow(&labels(rt, role)),
            rt.stats.errors() as f64,
        );
    }
    let mut f = family(
        &mut out,
        "atoll_in_flight",
        "gauge",
        "Invocations of a version running now.",
    );
    for (rt, role, _) in &versions {
        f.sample(
            "atoll_in_flight",
            &borrow(&labels(rt, role)),
            rt.stats.in_flight() as f64,
        );
    }
    let mut f = family(
        &mut out,
        "atoll_http_responses_total",
        "counter",
        "HTTP answers of a version by status class.",
    );
    for (rt, role, _) in &versions {
        for class in 1..=5 {
            let mut l = labels(rt, role);
            l.push(("class", format!("{class}xx")));
            f.sample(
                "atoll_http_responses_total",
                &borrow(&l),
                rt.stats.statuses(class) as f64,
            );
        }
    }
    let mut f = family(
        &mut out,
        "atoll_limit_hits_total",
        "counter",
        "Invocations refused or stopped by a limit: concurrency, instance_pool, deadline, trap.",
    );
    for (rt, role, _) in &versions {
        for limit in Limit::ALL {
            let mut l = labels(rt, role);
            l.push(("limit", limit.as_str().to_string()));
            f.sample(
                "atoll_limit_hits_total",
                &borrow(&l),
                rt.stats.limits(limit) as f64,
            );
        }
    }
    let name = "atoll_traps_total";
    let mut f = family(
        &mut out,
        name,
        "counter",
        "Traps of a version by kind (wasmtime's trap code, or `host` for a failed host call).",
    );
    for (rt, role, _) in &versions {
        for (kind, n) in rt.stats.traps() {
            let mut l = labels(rt, role);
            l.push(("kind", kind));
            f.sample(name, &borrow(&l), n as f64);
        }
    }
    let name = "atoll_invocation_duration_seconds";
    let mut f = family(
        &mut out,
        name,
        "histogram",
        "Time to the response head (HTTP), or of the whole call or delivery.",
    );
    for (rt, role, _) in &versions {
        let (cumulative, sum) = rt.stats.latency();
        for (i, count) in cumulative.iter().enumerate() {
            let le = LATENCY_BOUNDS
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            let mut l = labels(rt, role);
            l.push(("le", le));
            f.sample(&format!("{name}_bucket"), &borrow(&l), *count as f64);
        }
        let l = labels(rt, role);
        f.sample(&format!("{name}_sum"), &borrow(&l), sum);
        f.sample(
            &format!("{name}_count"),
            &borrow(&l),
            cumulative.last().copied().unwrap_or(0) as f64,
        );
    }

    // Per call edge.
    let edges: Vec<_> = view
        .components
        .iter()
        .flat_map(|c| c.calls.iter().map(move |e| (c.name.as_str(), e)))
        .collect();
    let mut f = family(
        &mut out,
        "atoll_circuit_state",
        "gauge",
        "1 for the state each edge's circuit breaker is in (closed, open, half-open).",
    );
    for (caller, e) in &edges {
        for state in ["closed", "open", "half-open"] {
            f.sample(
                "atoll_circuit_state",
                &[("caller", caller), ("callee", &e.callee), ("state", state)],
                if e.circuit == state { 1.0 } else { 0.0 },
            );
        }
    }
    type EdgeValue = fn(&crate::registry::EdgeView) -> u64;
    let edge_counters: [(&str, &str, EdgeValue); 9] = [
        ("atoll_calls_total", "Calls made on an edge.", |e| e.calls),
        (
            "atoll_call_successes_total",
            "Calls the callee answered.",
            |e| e.ok,
        ),
        (
            "atoll_call_failures_total",
            "Attempts that failed (trap, timeout, unavailable).",
            |e| e.failed,
        ),
        (
            "atoll_call_timeouts_total",
            "Attempts that timed out.",
            |e| e.timeouts,
        ),
        (
            "atoll_call_retries_total",
            "Retries of idempotent functions.",
            |e| e.retries,
        ),
        (
            "atoll_call_circuit_open_total",
            "Calls refused by an open circuit.",
            |e| e.circuit_open,
        ),
        (
            "atoll_call_bulkhead_full_total",
            "Calls refused by the bulkhead.",
            |e| e.bulkhead_full,
        ),
        (
            "atoll_call_fallbacks_total",
            "Calls answered by the fallback.",
            |e| e.fallbacks,
        ),
        (
            "atoll_circuit_opened_total",
            "Times an edge's circuit opened.",
            |e| e.opened,
        ),
    ];
    for (name, help, value) in edge_counters {
        let mut f = family(&mut out, name, "counter", help);
        for (caller, e) in &edges {
            f.sample(
                name,
                &[("caller", caller), ("callee", &e.callee)],
                value(e) as f64,
            );
        }
    }
    let mut f = family(
        &mut out,
        "atoll_call_denials_total",
        "counter",
        "Call edges refused by policy (the caller may not call the exporter).",
    );
    f.sample("atoll_call_denials_total", &[], view.call_denials as f64);

    // The bus.
    let overview = bus.overview();
    let mut f = family(
        &mut out,
        "atoll_bus_published_total",
        "counter",
        "Messages stored per topic.",
    );
    for t in &overview.topics {
        f.sample(
            "atoll_bus_published_total",
            &[("topic", &t.name)],
            t.published as f64,
        );
    }
    let mut f = family(
        &mut out,
        "atoll_bus_duplicates_total",
        "counter",
        "Publishes dropped as duplicates within the dedup window.",
    );
    for t in &overview.topics {
        f.sample(
            "atoll_bus_duplicates_total",
            &[("topic", &t.name)],
            t.duplicates as f64,
        );
    }
    type SubValue = fn(&crate::bus::SubscriptionInfo) -> u64;
    let subscription_metrics: [(&str, &str, &str, SubValue); 8] = [
        (
            "atoll_bus_depth",
            "gauge",
            "Messages stored and not yet handled.",
            |s| s.depth,
        ),
        (
            "atoll_bus_in_flight",
            "gauge",
            "Deliveries running now.",
            |s| s.in_flight,
        ),
        (
            "atoll_bus_retrying",
            "gauge",
            "Messages waiting for a retry delay.",
            |s| s.retrying,
        ),
        (
            "atoll_bus_dead_letters",
            "gauge",
            "Messages in the dead letters.",
            |s| s.dead_letters,
        ),
        (
            "atoll_bus_delivered_total",
            "counter",
            "Deliveries started.",
            |s| s.delivered,
        ),
        (
            "atoll_bus_acked_total",
            "counter",
            "Messages acknowledged.",
            |s| s.acked,
        ),
        (
            "atoll_bus_redeliveries_total",
            "counter",
            "Deliveries that ended in a retry.",
            |s| s.retried,
        ),
        (
            "atoll_bus_dead_lettered_total",
            "counter",
            "Messages moved to the dead letters.",
            |s| s.dead_lettered,
        ),
    ];
    for (name, kind, help, value) in subscription_metrics {
        let mut f = family(&mut out, name, kind, help);
        for t in &overview.topics {
            for s in &t.subscriptions {
                f.sample(
                    name,
                    &[("topic", &t.name), ("group", &s.group)],
                    value(s) as f64,
                );
            }
        }
    }
    let hub = crate::telemetry::logs::hub();
    let name = "atoll_log_records";
    let mut f = family(
        &mut out,
        name,
        "gauge",
        "Guest and host log records held for `atoll logs --app` (the newest are kept).",
    );
    f.sample(name, &[], hub.len() as f64);
    let name = "atoll_log_records_evicted_total";
    let mut f = family(
        &mut out,
        name,
        "counter",
        "Log records pushed out of the in-memory ring by newer ones.",
    );
    f.sample(name, &[], hub.evicted() as f64);
    if let Some(kv) = registry.kv().stats() {
        render_kv(&mut out, kv);
    }
    if let Some(gateway) = gateway {
        render_gateway(&mut out, gateway);
    }
    out
}

/// Key-value operations per component and op, and the group commit's flushes.
fn render_kv(out: &mut String, kv: &crate::kv::stats::KvStats) {
    use crate::kv::stats::Op;
    let name = "atoll_kv_operations_total";
    let mut f = family(
        out,
        name,
        "counter",
        "Key-value operations by component (its namespace, shared by its versions) and op.",
    );
    for (component, ops) in kv.components() {
        for op in Op::ALL {
            f.sample(
                name,
                &[("component", &component), ("op", op.as_str())],
                ops.get(op) as f64,
            );
        }
    }
    let name = "atoll_kv_flushes_total";
    let mut f = family(
        out,
        name,
        "counter",
        "Group-commit flushes of the key-value store (each makes many writes durable).",
    );
    f.sample(
        name,
        &[],
        kv.flushes.load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    let name = "atoll_kv_flush_failures_total";
    let mut f = family(out, name, "counter", "Flushes that failed.");
    f.sample(
        name,
        &[],
        kv.flush_failures.load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    let name = "atoll_kv_flush_duration_seconds";
    let mut f = family(
        out,
        name,
        "histogram",
        "How long a group-commit flush took (fsync included).",
    );
    let (cumulative, sum) = kv.flush_latency.snapshot();
    for (i, count) in cumulative.iter().enumerate() {
        let le = LATENCY_BOUNDS
            .get(i)
            .map_or("+Inf".to_string(), |b| b.to_string());
        f.sample(&format!("{name}_bucket"), &[("le", &le)], *count as f64);
    }
    f.sample(&format!("{name}_sum"), &[], sum);
    f.sample(
        &format!("{name}_count"),
        &[],
        cumulative.last().copied().unwrap_or(0) as f64,
    );
}

/// The gateway's own answers (rejections by route and reason) and its rate limit buckets.
fn render_gateway(out: &mut String, gateway: &Gateway) {
    let name = "atoll_gateway_rejections_total";
    let mut f = family(
        out,
        name,
        "counter",
        "Requests the gateway answered itself, by route and reason (unauthorized, forbidden, rate_limited, body_too_large, ...).",
    );
    for (reason, n) in gateway.unrouted.counts() {
        if n > 0 {
            f.sample(
                name,
                &[("route", ""), ("reason", reason.as_str())],
                n as f64,
            );
        }
    }
    for route in gateway.routes() {
        for (reason, n) in route.rejections.counts() {
            if n > 0 || reason == Reason::RateLimited && route.spec.rate_limit.is_some() {
                f.sample(
                    name,
                    &[("route", &route.pattern), ("reason", reason.as_str())],
                    n as f64,
                );
            }
        }
    }
    let views: Vec<_> = gateway.upstreams().iter().map(|u| u.view()).collect();
    type Pick = fn(&crate::gateway::upstream::BackendView) -> f64;
    let backend_metrics: [(&str, &str, &str, Pick); 6] = [
        (
            "atoll_upstream_requests_total",
            "counter",
            "Requests sent to an upstream backend, retries included.",
            |b| b.requests as f64,
        ),
        (
            "atoll_upstream_failures_total",
            "counter",
            "5xx answers and failed connections of an upstream backend.",
            |b| b.failures as f64,
        ),
        (
            "atoll_upstream_ejections_total",
            "counter",
            "Times outlier detection ejected an upstream backend.",
            |b| b.ejections as f64,
        ),
        (
            "atoll_upstream_in_flight",
            "gauge",
            "Requests an upstream backend is serving now.",
            |b| b.in_flight as f64,
        ),
        (
            "atoll_upstream_healthy",
            "gauge",
            "1 while an upstream backend passes its active health checks.",
            |b| f64::from(u8::from(b.healthy)),
        ),
        (
            "atoll_upstream_available",
            "gauge",
            "1 while an upstream backend gets requests (healthy, not ejected).",
            |b| f64::from(u8::from(b.available)),
        ),
    ];
    for (name, kind, help, value) in backend_metrics {
        let mut f = family(out, name, kind, help);
        for u in &views {
            for b in &u.backends {
                f.sample(
                    name,
                    &[("upstream", &u.name), ("backend", &b.target)],
                    value(b),
                );
            }
        }
    }
    if let Some(log) = gateway.call_log() {
        let name = "atoll_call_log_dropped_total";
        let mut f = family(
            out,
            name,
            "counter",
            "Call log rows not stored (the writer fell behind, or the disk failed).",
        );
        f.sample(name, &[], log.dropped() as f64);
        let name = "atoll_call_log_bytes";
        let mut f = family(out, name, "gauge", "Bytes of rows the call log holds.");
        f.sample(name, &[], log.stored_bytes() as f64);
    }
    let name = "atoll_gateway_rate_limit_buckets";
    let mut f = family(
        out,
        name,
        "gauge",
        "Token buckets a rate-limited route holds (one per client key seen recently).",
    );
    for route in gateway.routes() {
        if let Some(buckets) = route.rate_limit_buckets() {
            f.sample(name, &[("route", &route.pattern)], buckets as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_escaped_labels() {
        let mut out = String::new();
        let mut f = family(&mut out, "x_total", "counter", "Things.");
        f.sample("x_total", &[("a", "q\"uo\\te\nd"), ("b", "2")], 3.0);
        f.sample("x_total", &[], 0.5);
        assert_eq!(
            out,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"q\\\"uo\\\\te\\nd\",b=\"2\"} 3\nx_total 0.5\n"
        );
    }
}
