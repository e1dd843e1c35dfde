//! The host's metrics: one [`Snapshot`] read from the host's state, written
//! out as the Prometheus text exposition (`GET /metrics` on the admin
//! listener, [`Snapshot::to_prometheus`]) or as an OTLP export request (the
//! optional push of [`super::push`], [`Snapshot::to_otlp`]). Both outputs
//! carry the same families, names, labels and values.
//!
//! Every figure is read when asked for, from state the host keeps anyway:
//! the per-version stats (lock-free atomics on the request path), the
//! edges' breakers and counters, the bus's counters and the instance pools.
//! A metrics client library would keep a second copy of each counter behind
//! its own registry and label maps; reading the source of truth into a
//! plain list of families is simpler and costs the request path nothing
//! extra.
//!
//! In OTLP a counter is a monotonic cumulative `Sum` starting when the host
//! started, a gauge a `Gauge`, a histogram a cumulative `Histogram` (counts
//! per bucket, bounds without `+Inf`); labels become attributes. Names stay
//! exactly as `/metrics` writes them, `_total` included, so a query written
//! against the scrape works on pushed data too (a collector that turns OTLP
//! back into Prometheus keeps a `_total` that is already there).

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};

use super::transport::text_attribute;
use crate::bus::Bus;
use crate::gateway::Gateway;
use crate::gateway::router::Reason;
use crate::registry::{ComponentRuntime, LATENCY_BOUNDS, Limit, Registry};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric at one moment, family by family in the order `/metrics`
/// lists them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The families.
    pub families: Vec<Family>,
}

/// One metric family: a name, what it means and its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The Prometheus name (`atoll_invocations_total`).
    pub name: &'static str,
    /// The `# HELP` text, and the OTLP description.
    pub help: &'static str,
    /// The samples, by kind.
    pub points: Points,
}

/// A family's samples; the variant is its kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Points {
    /// Counts that only go up while the host runs.
    Counter(Vec<Sample>),
    /// Values that go up and down.
    Gauge(Vec<Sample>),
    /// Distributions over fixed buckets.
    Histogram(Vec<HistogramSample>),
}

/// Label names and values, in the order they are written.
pub type Labels = Vec<(&'static str, String)>;

/// One counter or gauge value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Its labels.
    pub labels: Labels,
    /// Its value.
    pub value: f64,
}

/// One histogram, as Prometheus counts it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSample {
    /// Its labels (without `le`).
    pub labels: Labels,
    /// The buckets' upper bounds in seconds, without `+Inf`.
    pub bounds: &'static [f64],
    /// Observations at or below each bound, then all of them (`+Inf`): one
    /// more entry than `bounds`, never decreasing.
    pub cumulative: Vec<u64>,
    /// Sum of the observations, in seconds.
    pub sum: f64,
}

impl HistogramSample {
    /// How many observations.
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Observations in each bucket (not cumulative), `+Inf` last: OTLP's
    /// `bucket_counts`.
    pub fn per_bucket(&self) -> Vec<u64> {
        let mut below = 0;
        self.cumulative
            .iter()
            .map(|&c| {
                let n = c.saturating_sub(below);
                below = c;
                n
            })
            .collect()
    }
}

impl Snapshot {
    /// Adds a counter family.
    fn counter(&mut self, name: &'static str, help: &'static str, samples: Vec<Sample>) {
        self.add(name, Kind::Counter, help, samples);
    }

    /// Adds a gauge family.
    fn gauge(&mut self, name: &'static str, help: &'static str, samples: Vec<Sample>) {
        self.add(name, Kind::Gauge, help, samples);
    }

    /// Adds a counter or gauge family.
    fn add(&mut self, name: &'static str, kind: Kind, help: &'static str, samples: Vec<Sample>) {
        let points = match kind {
            Kind::Counter => Points::Counter(samples),
            Kind::Gauge => Points::Gauge(samples),
        };
        self.families.push(Family { name, help, points });
    }

    /// Adds a histogram family.
    fn histogram(&mut self, name: &'static str, help: &'static str, samples: Vec<HistogramSample>) {
        let points = Points::Histogram(samples);
        self.families.push(Family { name, help, points });
    }
}

/// Counter or gauge, for the tables of families below.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

fn sample(labels: &[(&'static str, &str)], value: f64) -> Sample {
    Sample {
        labels: labels.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        value,
    }
}

/// Renders every metric as Prometheus text.
pub fn render(registry: &Registry, bus: &Bus, gateway: Option<&Gateway>) -> String {
    snapshot(registry, bus, gateway).to_prometheus()
}

/// The running versions with their role (`active`, `canary`).
fn versions(registry: &Registry) -> Vec<(std::sync::Arc<ComponentRuntime>, &'static str, u8)> {
    registry.services().flat_map(|s| s.running()).collect()
}

/// Reads every metric.
pub fn snapshot(registry: &Registry, bus: &Bus, gateway: Option<&Gateway>) -> Snapshot {
    let mut s = Snapshot::default();
    let versions = versions(registry);
    let view = registry.view();

    s.gauge(
        "atoll_up",
        "1 while the host serves.",
        vec![sample(&[], 1.0)],
    );
    s.gauge(
        "atoll_instances",
        "Component instances alive in the instance pools.",
        vec![sample(&[], view.instances as f64)],
    );

    // Per version, with one more label for some families.
    let labels = |rt: &ComponentRuntime, role: &'static str| -> Labels {
        vec![
            ("component", rt.name.to_string()),
            ("version", rt.version.to_string()),
            ("role", role.to_string()),
        ]
    };
    let per_version = |value: &dyn Fn(&ComponentRuntime) -> f64| -> Vec<Sample> {
        versions
            .iter()
            .map(|(rt, role, _)| Sample {
                labels: labels(rt, role),
                value: value(rt),
            })
            .collect()
    };
    let per_version_and = |label: &'static str,
                           values: &dyn Fn(&ComponentRuntime) -> Vec<(String, u64)>|
     -> Vec<Sample> {
        let mut samples = Vec::new();
        for (rt, role, _) in &versions {
            for (v, n) in values(rt) {
                let mut l = labels(rt, role);
                l.push((label, v));
                samples.push(Sample {
                    labels: l,
                    value: n as f64,
                });
            }
        }
        samples
    };
    s.gauge(
        "atoll_traffic_share_percent",
        "Percent of a component's requests, calls and messages a version gets.",
        versions
            .iter()
            .map(|(rt, role, share)| Sample {
                labels: labels(rt, role),
                value: f64::from(*share),
            })
            .collect(),
    );
    s.counter(
        "atoll_invocations_total",
        "Invocations (requests, calls, message deliveries) of a version.",
        per_version(&|rt| rt.stats.requests() as f64),
    );
    s.counter(
        "atoll_invocation_errors_total",
        "Invocations that failed: a 5xx of the component, a trap, a deadline.",
        per_version(&|rt| rt.stats.errors() as f64),
    );
    s.gauge(
        "atoll_in_flight",
        "Invocations of a version running now.",
        per_version(&|rt| rt.stats.in_flight() as f64),
    );
    s.counter(
        "atoll_http_responses_total",
        "HTTP answers of a version by status class.",
        per_version_and("class", &|rt| {
            (1..=5)
                .map(|class| (format!("{class}xx"), rt.stats.statuses(class)))
                .collect()
        }),
    );
    s.counter(
        "atoll_limit_hits_total",
        "Invocations refused or stopped by a limit (concurrency, instance_pool, deadline, trap), and memory growths refused (memory).",
        per_version_and("limit", &|rt| {
            Limit::ALL
                .iter()
                .map(|limit| (limit.as_str().to_string(), rt.stats.limits(*limit)))
                .collect()
        }),
    );
    s.counter(
        "atoll_traps_total",
        "Traps of a version by kind (wasmtime's trap code, or `host` for a failed host call).",
        per_version_and("kind", &|rt| rt.stats.traps()),
    );
    s.histogram(
        "atoll_invocation_duration_seconds",
        "Time to the response head (HTTP), or of the whole call or delivery.",
        versions
            .iter()
            .map(|(rt, role, _)| {
                let (cumulative, sum) = rt.stats.latency();
                HistogramSample {
                    labels: labels(rt, role),
                    bounds: &LATENCY_BOUNDS,
                    cumulative,
                    sum,
                }
            })
            .collect(),
    );

    // Per call edge.
    let edges: Vec<_> = view
        .components
        .iter()
        .flat_map(|c| c.calls.iter().map(move |e| (c.name.as_str(), e)))
        .collect();
    s.gauge(
        "atoll_circuit_state",
        "1 for the state each edge's circuit breaker is in (closed, open, half-open).",
        edges
            .iter()
            .flat_map(|(caller, e)| {
                ["closed", "open", "half-open"].map(|state| {
                    sample(
                        &[("caller", caller), ("callee", &e.callee), ("state", state)],
                        if e.circuit == state { 1.0 } else { 0.0 },
                    )
                })
            })
            .collect(),
    );
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
        let samples = edges
            .iter()
            .map(|(caller, e)| {
                sample(
                    &[("caller", caller), ("callee", &e.callee)],
                    value(e) as f64,
                )
            })
            .collect();
        s.counter(name, help, samples);
    }
    s.counter(
        "atoll_call_denials_total",
        "Call edges refused by policy (the caller may not call the exporter).",
        vec![sample(&[], view.call_denials as f64)],
    );

    // The bus.
    let overview = bus.overview();
    s.counter(
        "atoll_bus_published_total",
        "Messages stored per topic.",
        overview
            .topics
            .iter()
            .map(|t| sample(&[("topic", &t.name)], t.published as f64))
            .collect(),
    );
    s.counter(
        "atoll_bus_duplicates_total",
        "Publishes dropped as duplicates within the dedup window.",
        overview
            .topics
            .iter()
            .map(|t| sample(&[("topic", &t.name)], t.duplicates as f64))
            .collect(),
    );
    type SubValue = fn(&crate::bus::SubscriptionInfo) -> u64;
    let subscription_metrics: [(&str, Kind, &str, SubValue); 8] = [
        (
            "atoll_bus_depth",
            Kind::Gauge,
            "Messages stored and not yet handled.",
            |s| s.depth,
        ),
        (
            "atoll_bus_in_flight",
            Kind::Gauge,
            "Deliveries running now.",
            |s| s.in_flight,
        ),
        (
            "atoll_bus_retrying",
            Kind::Gauge,
            "Messages waiting for a retry delay.",
            |s| s.retrying,
        ),
        (
            "atoll_bus_dead_letters",
            Kind::Gauge,
            "Messages in the dead letters.",
            |s| s.dead_letters,
        ),
        (
            "atoll_bus_delivered_total",
            Kind::Counter,
            "Deliveries started.",
            |s| s.delivered,
        ),
        (
            "atoll_bus_acked_total",
            Kind::Counter,
            "Messages acknowledged.",
            |s| s.acked,
        ),
        (
            "atoll_bus_redeliveries_total",
            Kind::Counter,
            "Deliveries that ended in a retry.",
            |s| s.retried,
        ),
        (
            "atoll_bus_dead_lettered_total",
            Kind::Counter,
            "Messages moved to the dead letters.",
            |s| s.dead_lettered,
        ),
    ];
    for (name, kind, help, value) in subscription_metrics {
        let samples = overview
            .topics
            .iter()
            .flat_map(|t| {
                t.subscriptions.iter().map(|sub| {
                    sample(
                        &[("topic", &t.name), ("group", &sub.group)],
                        value(sub) as f64,
                    )
                })
            })
            .collect();
        s.add(name, kind, help, samples);
    }
    let hub = crate::telemetry::logs::hub();
    s.gauge(
        "atoll_log_records",
        "Guest and host log records held for `atoll logs --app` (the newest are kept).",
        vec![sample(&[], hub.len() as f64)],
    );
    s.counter(
        "atoll_log_records_evicted_total",
        "Log records pushed out of the in-memory ring by newer ones.",
        vec![sample(&[], hub.evicted() as f64)],
    );
    if let Some(kv) = registry.kv().stats() {
        kv_families(&mut s, kv);
    }
    if let Some(gateway) = gateway {
        gateway_families(&mut s, gateway);
    }
    s
}

/// Key-value operations per component and op, and the group commit's flushes.
fn kv_families(s: &mut Snapshot, kv: &crate::kv::stats::KvStats) {
    use crate::kv::stats::Op;
    use std::sync::atomic::Ordering;
    s.counter(
        "atoll_kv_operations_total",
        "Key-value operations by component (its namespace, shared by its versions) and op.",
        kv.components()
            .iter()
            .flat_map(|(component, ops)| {
                Op::ALL.iter().map(move |op| {
                    sample(
                        &[("component", component), ("op", op.as_str())],
                        ops.get(*op) as f64,
                    )
                })
            })
            .collect(),
    );
    s.counter(
        "atoll_kv_flushes_total",
        "Group-commit flushes of the key-value store (each makes many writes durable).",
        vec![sample(&[], kv.flushes.load(Ordering::Relaxed) as f64)],
    );
    s.counter(
        "atoll_kv_flush_failures_total",
        "Flushes that failed.",
        vec![sample(
            &[],
            kv.flush_failures.load(Ordering::Relaxed) as f64,
        )],
    );
    let (cumulative, sum) = kv.flush_latency.snapshot();
    s.histogram(
        "atoll_kv_flush_duration_seconds",
        "How long a group-commit flush took (fsync included).",
        vec![HistogramSample {
            labels: Vec::new(),
            bounds: &LATENCY_BOUNDS,
            cumulative,
            sum,
        }],
    );
}

/// The gateway's own answers (rejections by route and reason) and its rate limit buckets.
fn gateway_families(s: &mut Snapshot, gateway: &Gateway) {
    let mut rejections = Vec::new();
    for (reason, n) in gateway.unrouted.counts() {
        if n > 0 {
            rejections.push(sample(
                &[("route", ""), ("reason", reason.as_str())],
                n as f64,
            ));
        }
    }
    for route in gateway.routes() {
        for (reason, n) in route.rejections.counts() {
            if n > 0 || reason == Reason::RateLimited && route.spec.rate_limit.is_some() {
                rejections.push(sample(
                    &[("route", &route.pattern), ("reason", reason.as_str())],
                    n as f64,
                ));
            }
        }
    }
    s.counter(
        "atoll_gateway_rejections_total",
        "Requests the gateway answered itself, by route and reason (unauthorized, forbidden, rate_limited, body_too_large, ...).",
        rejections,
    );
    let views: Vec<_> = gateway.upstreams().iter().map(|u| u.view()).collect();
    type Pick = fn(&crate::gateway::upstream::BackendView) -> f64;
    let backend_metrics: [(&str, Kind, &str, Pick); 6] = [
        (
            "atoll_upstream_requests_total",
            Kind::Counter,
            "Requests sent to an upstream backend, retries included.",
            |b| b.requests as f64,
        ),
        (
            "atoll_upstream_failures_total",
            Kind::Counter,
            "5xx answers and failed connections of an upstream backend.",
            |b| b.failures as f64,
        ),
        (
            "atoll_upstream_ejections_total",
            Kind::Counter,
            "Times outlier detection ejected an upstream backend.",
            |b| b.ejections as f64,
        ),
        (
            "atoll_upstream_in_flight",
            Kind::Gauge,
            "Requests an upstream backend is serving now.",
            |b| b.in_flight as f64,
        ),
        (
            "atoll_upstream_healthy",
            Kind::Gauge,
            "1 while an upstream backend passes its active health checks.",
            |b| f64::from(u8::from(b.healthy)),
        ),
        (
            "atoll_upstream_available",
            Kind::Gauge,
            "1 while an upstream backend gets requests (healthy, not ejected).",
            |b| f64::from(u8::from(b.available)),
        ),
    ];
    for (name, kind, help, value) in backend_metrics {
        let samples = views
            .iter()
            .flat_map(|u| {
                u.backends
                    .iter()
                    .map(|b| sample(&[("upstream", &u.name), ("backend", &b.target)], value(b)))
            })
            .collect();
        s.add(name, kind, help, samples);
    }
    if let Some(log) = gateway.call_log() {
        s.counter(
            "atoll_call_log_dropped_total",
            "Call log rows not stored (the writer fell behind, or the disk failed).",
            vec![sample(&[], log.dropped() as f64)],
        );
        s.gauge(
            "atoll_call_log_bytes",
            "Bytes of rows the call log holds.",
            vec![sample(&[], log.stored_bytes() as f64)],
        );
    }
    s.gauge(
        "atoll_gateway_rate_limit_buckets",
        "Token buckets a rate-limited route holds (one per client key seen recently).",
        gateway
            .routes()
            .iter()
            .filter_map(|route| {
                let buckets = route.rate_limit_buckets()?;
                Some(sample(&[("route", &route.pattern)], buckets as f64))
            })
            .collect(),
    );
}

// ---- Prometheus text ----

impl Snapshot {
    /// The text exposition format, version 0.0.4.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        for f in &self.families {
            let kind = match f.points {
                Points::Counter(_) => "counter",
                Points::Gauge(_) => "gauge",
                Points::Histogram(_) => "histogram",
            };
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {kind}", f.name);
            match &f.points {
                Points::Counter(samples) | Points::Gauge(samples) => {
                    for s in samples {
                        line(&mut out, f.name, "", &s.labels, None, s.value);
                    }
                }
                Points::Histogram(samples) => {
                    for h in samples {
                        for (i, count) in h.cumulative.iter().enumerate() {
                            let le = h
                                .bounds
                                .get(i)
                                .map_or("+Inf".to_string(), |b| b.to_string());
                            line(
                                &mut out,
                                f.name,
                                "_bucket",
                                &h.labels,
                                Some(&le),
                                *count as f64,
                            );
                        }
                        line(&mut out, f.name, "_sum", &h.labels, None, h.sum);
                        line(
                            &mut out,
                            f.name,
                            "_count",
                            &h.labels,
                            None,
                            h.count() as f64,
                        );
                    }
                }
            }
        }
        out
    }
}

/// One sample line: `name{k="v",...,le="..."} value`.
fn line(out: &mut String, name: &str, suffix: &str, labels: &Labels, le: Option<&str>, value: f64) {
    out.push_str(name);
    out.push_str(suffix);
    let pairs = labels
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(le.map(|le| ("le", le)));
    let mut first = true;
    for (k, v) in pairs {
        out.push(if first { '{' } else { ',' });
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape(v));
    }
    if !first {
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

// ---- OTLP ----

impl Snapshot {
    /// One OTLP export request with every family that has samples: a
    /// resource with `service.name` = `service_name` and `service.version`
    /// = the host's version, scope `atoll`, cumulative series since
    /// `start` (when the host started) read at `now`.
    pub fn to_otlp(
        &self,
        service_name: &str,
        start: SystemTime,
        now: SystemTime,
    ) -> ExportMetricsServiceRequest {
        let start = unix_nanos(start);
        let now = unix_nanos(now);
        let cumulative = AggregationTemporality::Cumulative as i32;
        let number = |s: &Sample, start: u64| NumberDataPoint {
            attributes: attributes(&s.labels),
            start_time_unix_nano: start,
            time_unix_nano: now,
            value: Some(number_data_point::Value::AsDouble(s.value)),
            ..Default::default()
        };
        let metrics = self
            .families
            .iter()
            .filter_map(|f| {
                let data = match &f.points {
                    Points::Counter(samples) if !samples.is_empty() => metric::Data::Sum(Sum {
                        data_points: samples.iter().map(|s| number(s, start)).collect(),
                        aggregation_temporality: cumulative,
                        is_monotonic: true,
                    }),
                    // A gauge has no start.
                    Points::Gauge(samples) if !samples.is_empty() => metric::Data::Gauge(Gauge {
                        data_points: samples.iter().map(|s| number(s, 0)).collect(),
                    }),
                    Points::Histogram(samples) if !samples.is_empty() => {
                        metric::Data::Histogram(Histogram {
                            data_points: samples
                                .iter()
                                .map(|h| HistogramDataPoint {
                                    attributes: attributes(&h.labels),
                                    start_time_unix_nano: start,
                                    time_unix_nano: now,
                                    count: h.count(),
                                    sum: Some(h.sum),
                                    bucket_counts: h.per_bucket(),
                                    explicit_bounds: h.bounds.to_vec(),
                                    ..Default::default()
                                })
                                .collect(),
                            aggregation_temporality: cumulative,
                        })
                    }
                    // OTLP has no empty metric.
                    _ => return None,
                };
                Some(Metric {
                    name: f.name.to_string(),
                    description: f.help.to_string(),
                    data: Some(data),
                    ..Default::default()
                })
            })
            .collect();
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(super::transport::resource(service_name)),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(super::transport::scope()),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn attributes(labels: &Labels) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| text_attribute(k, v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Snapshot {
        let mut s = Snapshot::default();
        s.counter(
            "x_total",
            "Things.",
            vec![
                sample(&[("a", "q\"uo\\te\nd"), ("b", "2")], 3.0),
                sample(&[], 0.5),
            ],
        );
        s.gauge("g", "Level.", vec![sample(&[("k", "v")], -1.0)]);
        s.gauge("empty", "Nothing yet.", Vec::new());
        s.histogram(
            "h_seconds",
            "Took.",
            vec![HistogramSample {
                labels: vec![("c", "x".to_string())],
                bounds: &[0.1, 1.0],
                cumulative: vec![2, 5, 6],
                sum: 3.25,
            }],
        );
        s
    }

    #[test]
    fn families_and_escaped_labels() {
        assert_eq!(
            example().to_prometheus(),
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"q\\\"uo\\\\te\\nd\",b=\"2\"} 3\nx_total 0.5\n\
             # HELP g Level.\n# TYPE g gauge\ng{k=\"v\"} -1\n\
             # HELP empty Nothing yet.\n# TYPE empty gauge\n\
             # HELP h_seconds Took.\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{c=\"x\",le=\"0.1\"} 2\nh_seconds_bucket{c=\"x\",le=\"1\"} 5\nh_seconds_bucket{c=\"x\",le=\"+Inf\"} 6\n\
             h_seconds_sum{c=\"x\"} 3.25\nh_seconds_count{c=\"x\"} 6\n"
        );
    }

    #[test]
    fn otlp_kinds_buckets_and_resource() {
        let start = UNIX_EPOCH + std::time::Duration::from_secs(100);
        let now = UNIX_EPOCH + std::time::Duration::from_secs(160);
        let req = example().to_otlp("shop", start, now);
        assert_eq!(req.resource_metrics.len(), 1);
        let rm = &req.resource_metrics[0];
        let resource = &rm.resource.as_ref().unwrap().attributes;
        assert_eq!(resource[0], text_attribute("service.name", "shop"));
        assert_eq!(resource[1].key, "service.version");
        let sm = &rm.scope_metrics[0];
        assert_eq!(sm.scope.as_ref().unwrap().name, "atoll");
        // The empty gauge is left out; names and descriptions are kept.
        let names: Vec<&str> = sm.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["x_total", "g", "h_seconds"]);
        assert_eq!(sm.metrics[0].description, "Things.");

        let Some(metric::Data::Sum(sum)) = &sm.metrics[0].data else {
            panic!("{:?}", sm.metrics[0]);
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let p = &sum.data_points[0];
        assert_eq!(
            (p.start_time_unix_nano, p.time_unix_nano),
            (100_000_000_000, 160_000_000_000)
        );
        assert_eq!(p.value, Some(number_data_point::Value::AsDouble(3.0)));
        assert_eq!(
            p.attributes,
            vec![
                text_attribute("a", "q\"uo\\te\nd"),
                text_attribute("b", "2")
            ]
        );
        assert!(sum.data_points[1].attributes.is_empty());

        let Some(metric::Data::Gauge(gauge)) = &sm.metrics[1].data else {
            panic!("{:?}", sm.metrics[1]);
        };
        assert_eq!(
            gauge.data_points[0].value,
            Some(number_data_point::Value::AsDouble(-1.0))
        );

        let Some(metric::Data::Histogram(h)) = &sm.metrics[2].data else {
            panic!("{:?}", sm.metrics[2]);
        };
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let p = &h.data_points[0];
        // Cumulative 2, 5, 6 are 2, 3 and 1 per bucket; +Inf is not a bound.
        assert_eq!(p.bucket_counts, [2, 3, 1]);
        assert_eq!(p.explicit_bounds, [0.1, 1.0]);
        assert_eq!((p.count, p.sum), (6, Some(3.25)));
        assert_eq!(p.attributes, vec![text_attribute("c", "x")]);
    }
}
