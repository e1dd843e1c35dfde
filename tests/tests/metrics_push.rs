//! The OTLP metrics push, end to end: hosts push to the shared OTLP
//! receiver ([`OtlpReceiver`], a hyper server on 127.0.0.1:0), which keeps
//! each request; the test decodes `ExportMetricsServiceRequest` with the
//! opentelemetry-proto types and compares it with a `/metrics` scrape.
//!
//! - http/protobuf from `[telemetry]` (an in-process host, 1 s interval):
//!   every family the scrape has is pushed with the same kind, and the
//!   traffic's counters and latency histogram (buckets converted from
//!   Prometheus' cumulative `le` counts) equal the scrape's.
//! - gRPC from the `OTEL_*` environment (`atoll up`, 1 h interval): nothing
//!   before shutdown, then one final push with the last requests.
//! - Off unless asked: an endpoint alone, or `OTEL_SDK_DISABLED`, pushes
//!   nothing. A collector that is down costs no request and is logged once.
//! - Bad `OTEL_*` values stop `atoll up` with their name.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use atoll_tests::{ChildHost, GRPC_METRICS, OtlpReceiver, TestHost, get, manifest_file};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, HistogramDataPoint, metric::Data, number_data_point,
};
use prost::Message as _;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_atoll-cli"))
}

/// A `/metrics` scrape: `name{labels}` -> value, and each family's type.
struct Scrape {
    samples: BTreeMap<String, f64>,
    kinds: BTreeMap<String, String>,
}

fn parse_scrape(text: &str) -> Scrape {
    let mut kinds = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            kinds.insert(name.to_string(), kind.to_string());
        } else if !line.starts_with('#') {
            let (key, value) = line.rsplit_once(' ').unwrap();
            samples.insert(key.to_string(), value.parse().unwrap());
        }
    }
    Scrape { samples, kinds }
}

impl Scrape {
    /// The family a sample belongs to (`x_bucket{...}` -> `x`).
    fn family_of(&self, key: &str) -> String {
        let name = key.split('{').next().unwrap();
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| self.kinds.get(*f).is_some_and(|k| k == "histogram"))
            .unwrap_or(name)
            .to_string()
    }
}

async fn scrape(admin: std::net::SocketAddr) -> Scrape {
    let r = get(&format!("http://{admin}/metrics")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    parse_scrape(&r.body)
}

/// One decoded push, flattened the way `/metrics` writes it.
struct Pushed {
    request: ExportMetricsServiceRequest,
    /// `name{labels}` -> value; histograms as `_bucket` (cumulative, with
    /// `le`), `_sum` and `_count`, rebuilt from OTLP's per-bucket counts.
    samples: BTreeMap<String, f64>,
    /// Metric name -> the Prometheus type its OTLP kind stands for.
    kinds: BTreeMap<String, String>,
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("{} is not a string: {other:?}", kv.key),
    }
}

fn key(name: &str, attributes: &[KeyValue], le: Option<&str>) -> String {
    let mut labels: Vec<String> = attributes
        .iter()
        .map(|kv| format!("{}=\"{}\"", kv.key, text(kv)))
        .collect();
    if let Some(le) = le {
        labels.push(format!("le=\"{le}\""));
    }
    match labels.is_empty() {
        true => name.to_string(),
        false => format!("{name}{{{}}}", labels.join(",")),
    }
}

fn decode(message: &[u8]) -> Pushed {
    let request =
        ExportMetricsServiceRequest::decode(message).expect("an ExportMetricsServiceRequest");
    let mut samples = BTreeMap::new();
    let mut kinds = BTreeMap::new();
    let cumulative = AggregationTemporality::Cumulative as i32;
    let number = |v: &Option<number_data_point::Value>| match v {
        Some(number_data_point::Value::AsDouble(d)) => *d,
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        None => panic!("a data point without a value"),
    };
    for rm in &request.resource_metrics {
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let kind = match m.data.as_ref().expect("metric data") {
                    Data::Sum(sum) => {
                        assert!(sum.is_monotonic, "{}", m.name);
                        assert_eq!(sum.aggregation_temporality, cumulative, "{}", m.name);
                        for p in &sum.data_points {
                            assert!(
                                p.start_time_unix_nano > 0
                                    && p.start_time_unix_nano <= p.time_unix_nano,
                                "{}: {p:?}",
                                m.name
                            );
                            samples.insert(key(&m.name, &p.attributes, None), number(&p.value));
                        }
                        "counter"
                    }
                    Data::Gauge(gauge) => {
                        for p in &gauge.data_points {
                            samples.insert(key(&m.name, &p.attributes, None), number(&p.value));
                        }
                        "gauge"
                    }
                    Data::Histogram(h) => {
                        assert_eq!(h.aggregation_temporality, cumulative, "{}", m.name);
                        for p in &h.data_points {
                            flatten_histogram(&m.name, p, &mut samples);
                        }
                        "histogram"
                    }
                    other => panic!("{}: unexpected kind {other:?}", m.name),
                };
                assert!(
                    kinds.insert(m.name.clone(), kind.to_string()).is_none(),
                    "{} twice",
                    m.name
                );
            }
        }
    }
    Pushed {
        request,
        samples,
        kinds,
    }
}

/// A histogram point as Prometheus lines: per-bucket counts summed into
/// cumulative `le` counts, `+Inf` last.
fn flatten_histogram(name: &str, p: &HistogramDataPoint, samples: &mut BTreeMap<String, f64>) {
    assert_eq!(
        p.bucket_counts.len(),
        p.explicit_bounds.len() + 1,
        "{name}: one more bucket than bounds (+Inf is not a bound)"
    );
    let mut total = 0;
    for (i, n) in p.bucket_counts.iter().enumerate() {
        total += n;
        let le = p
            .explicit_bounds
            .get(i)
            .map_or("+Inf".to_string(), f64::to_string);
        samples.insert(
            key(&format!("{name}_bucket"), &p.attributes, Some(&le)),
            total as f64,
        );
    }
    assert_eq!(total, p.count, "{name}: the buckets add up to the count");
    samples.insert(
        key(&format!("{name}_sum"), &p.attributes, None),
        p.sum.expect("a sum"),
    );
    samples.insert(
        key(&format!("{name}_count"), &p.attributes, None),
        p.count as f64,
    );
}

/// The pushes received so far, decoded, oldest first.
fn pushes(receiver: &OtlpReceiver) -> Vec<Pushed> {
    receiver
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/metrics" || r.path == GRPC_METRICS)
        .map(|r| decode(&r.message))
        .collect()
}

fn resource(p: &Pushed, attribute: &str) -> String {
    p.request.resource_metrics[0]
        .resource
        .as_ref()
        .expect("a resource")
        .attributes
        .iter()
        .find(|kv| kv.key == attribute)
        .map(text)
        .unwrap_or_default()
}

/// Checks the push carries exactly what the scrape says for the samples
/// `wanted` picks (there must be some), and the same families and kinds.
fn assert_same(pushed: &Pushed, scrape: &Scrape, wanted: impl Fn(&str) -> bool) {
    let mut compared = 0;
    for (key, value) in scrape.samples.iter().filter(|(k, _)| wanted(k)) {
        assert_eq!(pushed.samples.get(key), Some(value), "{key}");
        compared += 1;
    }
    assert!(compared > 0, "nothing to compare");
    // Every family with samples is pushed, as the same kind; an empty one
    // (no traps yet, say) is left out.
    let scraped: BTreeMap<String, String> = scrape
        .samples
        .keys()
        .map(|k| {
            let family = scrape.family_of(k);
            let kind = scrape.kinds[&family].clone();
            (family, kind)
        })
        .collect();
    assert_eq!(pushed.kinds, scraped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_push_from_the_manifest_carries_what_metrics_says() {
    let receiver = OtlpReceiver::start().await;
    let h = TestHost::start(&format!(
        r#"
[telemetry]
otlp_endpoint = "{url}"
metrics_interval = "1s"
service_name = "push-test"
# The endpoint exports traces too; none are sampled, so only metrics arrive.
sample_ratio = 0

[components.trap]
source = "{{trap}}"
version = "1.2.3"
routes = ["/trap"]
"#,
        url = receiver.url()
    ))
    .await;
    for query in ["", "", "panic", "recurse=50", "panic", ""] {
        let r = get(&h.url(&format!("/trap?{query}"))).await;
        assert_eq!(r.status, if query == "panic" { 500 } else { 200 });
    }
    // The traffic has stopped: the figures no longer move.
    let scrape = scrape(h.host.admin_addr()).await;
    let labels = r#"component="trap",version="1.2.3",role="active""#;
    let invocations = format!("atoll_invocations_total{{{labels}}}");
    assert_eq!(scrape.samples[&invocations], 6.0);
    // A push that may have been on its way during the scrape read the
    // figures before it; the one after that read them after.
    let received = receiver.requests().len();
    let pushed = receiver
        .wait_for("a push read after the scrape", |requests| {
            (requests.len() > received + 1).then(|| decode(&requests.last().unwrap().message))
        })
        .await;

    // The version's counters, gauges and latency histogram are the scrape's.
    assert_same(&pushed, &scrape, |k| k.contains(labels));
    for (key, want) in [
        (format!("atoll_invocation_errors_total{{{labels}}}"), 2.0),
        (
            format!("atoll_http_responses_total{{{labels},class=\"5xx\"}}"),
            2.0,
        ),
        (
            format!("atoll_limit_hits_total{{{labels},limit=\"trap\"}}"),
            2.0,
        ),
        (
            format!("atoll_invocation_duration_seconds_count{{{labels}}}"),
            6.0,
        ),
        (
            format!("atoll_invocation_duration_seconds_bucket{{{labels},le=\"+Inf\"}}"),
            6.0,
        ),
    ] {
        assert_eq!(pushed.samples.get(&key), Some(&want), "{key}");
    }
    // The histogram's bounds are the scrape's `le` values without +Inf.
    let Some(Data::Histogram(histogram)) = pushed.request.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .find(|m| m.name == "atoll_invocation_duration_seconds")
        .and_then(|m| m.data.clone())
    else {
        panic!("no latency histogram pushed");
    };
    let point = &histogram.data_points[0];
    let bounds: Vec<String> = point.explicit_bounds.iter().map(f64::to_string).collect();
    let le: Vec<String> = scrape
        .samples
        .keys()
        .filter(|k| {
            k.starts_with("atoll_invocation_duration_seconds_bucket{") && k.contains(labels)
        })
        .map(|k| {
            k.rsplit_once("le=\"")
                .unwrap()
                .1
                .trim_end_matches("\"}")
                .to_string()
        })
        .filter(|le| le != "+Inf")
        .collect();
    let mut sorted: Vec<f64> = le.iter().map(|l| l.parse().unwrap()).collect();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(
        bounds,
        sorted.iter().map(f64::to_string).collect::<Vec<_>>()
    );
    assert_eq!(point.bucket_counts.iter().sum::<u64>(), 6);

    // Who sent it.
    assert_eq!(resource(&pushed, "service.name"), "push-test");
    assert_eq!(
        resource(&pushed, "service.version"),
        env!("CARGO_PKG_VERSION")
    );
    let scope = pushed.request.resource_metrics[0].scope_metrics[0]
        .scope
        .as_ref()
        .unwrap();
    assert_eq!(scope.name, "atoll");
    assert!(
        receiver.paths().iter().all(|p| p == "/v1/metrics"),
        "{:?}",
        receiver.paths()
    );
    h.stop().await;
}

/// Waits (up to 10 s) for `atoll up` to print its startup lines, and
/// returns them.
async fn startup_lines(host: &ChildHost) -> Vec<String> {
    for _ in 0..100 {
        let lines = host.stdout.lock().unwrap().clone();
        if lines.iter().any(|l| l.starts_with("  /")) {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    host.stdout.lock().unwrap().clone()
}

const HELLO: &str = r#"
[components.hello]
source = "{hello}"
version = "1.0.0"
routes = ["/hello"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_push_from_the_environment_sends_the_last_requests_at_shutdown() {
    let receiver = OtlpReceiver::start().await;
    let (_dir, manifest) = manifest_file(HELLO);
    let url = receiver.url();
    // One push an hour: only the one at shutdown arrives.
    let host = ChildHost::spawn_otel(
        bin(),
        &manifest,
        &[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", url.as_str()),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "3600000"),
            ("OTEL_SERVICE_NAME", "env-metrics"),
        ],
    )
    .await;
    let lines = startup_lines(&host).await;
    assert!(
        lines.contains(&format!("atoll metrics to grpc {url}/ every 1h")),
        "{lines:#?}"
    );
    // The metrics variables do not turn the trace export on.
    assert!(
        !lines.iter().any(|l| l.starts_with("atoll traces to")),
        "{lines:#?}"
    );
    for _ in 0..3 {
        assert_eq!(get(&host.url("/hello")).await.status, 200);
    }
    let scrape = scrape(host.admin).await;
    assert!(receiver.paths().is_empty(), "pushed before shutdown");

    let log = host.stop().await;
    assert_eq!(receiver.paths(), [GRPC_METRICS]);
    let pushed = pushes(&receiver).pop().unwrap();
    let labels = r#"component="hello",version="1.0.0",role="active""#;
    assert_eq!(
        pushed
            .samples
            .get(&format!("atoll_invocations_total{{{labels}}}")),
        Some(&3.0)
    );
    assert_same(&pushed, &scrape, |k| k.contains(labels));
    assert_eq!(resource(&pushed, "service.name"), "env-metrics");
    assert!(
        log.iter()
            .any(|l| l.contains("metrics push stopped") && l.contains("pushed=1")),
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_pushed_unless_asked() {
    let receiver = OtlpReceiver::start().await;
    let url = receiver.url();
    // A collector for the traces and a push interval, but no request for
    // the metrics push: the traces arrive, no metrics do.
    let (_dir, manifest) =
        manifest_file(&format!("[telemetry]\notlp_endpoint = \"{url}\"\n{HELLO}"));
    let host = ChildHost::spawn_otel(
        bin(),
        &manifest,
        &[
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let lines = startup_lines(&host).await;
    assert!(
        !lines.iter().any(|l| l.starts_with("atoll metrics to")),
        "{lines:#?}"
    );
    assert_eq!(get(&host.url("/hello")).await.status, 200);
    host.stop().await;
    let paths = receiver.paths();
    assert!(paths.contains(&"/v1/traces".to_string()), "{paths:?}");
    assert!(paths.iter().all(|p| p == "/v1/traces"), "{paths:?}");

    // OTEL_SDK_DISABLED turns off what the environment asked for.
    let receiver = OtlpReceiver::start().await;
    let url = receiver.url();
    let (_dir, manifest) = manifest_file(HELLO);
    let host = ChildHost::spawn_otel(
        bin(),
        &manifest,
        &[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
            ("OTEL_SDK_DISABLED", "true"),
        ],
    )
    .await;
    assert_eq!(get(&host.url("/hello")).await.status, 200);
    let log = host.stop().await;
    assert!(receiver.paths().is_empty(), "{:?}", receiver.paths());
    assert!(!log.iter().any(|l| l.contains("metrics push")), "{log:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_is_logged_once_and_costs_no_request() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (_dir, manifest) =
        manifest_file(&format!("[telemetry]\nmetrics_interval = \"1s\"\n{HELLO}"));
    let host = ChildHost::spawn_otel(
        bin(),
        &manifest,
        &[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", url.as_str())],
    )
    .await;
    let failed = |log: &[String]| {
        log.iter()
            .filter(|l| l.contains("pushing metrics failed"))
            .count()
    };
    let mut first = None;
    for _ in 0..600 {
        assert_eq!(get(&host.url("/hello")).await.status, 200);
        if failed(&host.stderr.lock().unwrap()) > 0 {
            first = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = first.expect("no failed push was logged");
    // The final push fails too, and is counted, not logged again (unless a
    // minute went by).
    let log = host.stop().await;
    if first.elapsed() < Duration::from_secs(50) {
        assert_eq!(failed(&log), 1, "{log:#?}");
    }
    let stopped = log
        .iter()
        .find(|l| l.contains("metrics push stopped"))
        .unwrap_or_else(|| panic!("{log:#?}"));
    assert!(stopped.contains("pushed=0"), "{stopped}");
    let n: u64 = stopped
        .split("failed=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stopped}"));
    assert!(n >= 2, "{stopped}");
}

#[test]
fn bad_metrics_settings_stop_the_host_with_their_name() {
    let (_dir, manifest) = manifest_file(HELLO);
    for (vars, want) in [
        (
            &[("OTEL_METRICS_EXPORTER", "otlp")][..],
            "error: metrics push: OTEL_METRICS_EXPORTER=otlp turns the metrics push on, but no collector is named; set [telemetry] otlp_endpoint, or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (
            &[
                ("OTEL_METRICS_EXPORTER", "otlp"),
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://127.0.0.1:9"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
            ][..],
            "error: metrics push: OTEL_METRIC_EXPORT_INTERVAL: `0` must be a number of milliseconds from 1000 to 86400000",
        ),
        (
            &[("OTEL_METRICS_EXPORTER", "console")][..],
            "error: metrics push: OTEL_METRICS_EXPORTER: `console` is not supported",
        ),
    ] {
        let mut cmd = Command::new(bin());
        for k in atoll::config::OTEL_ENV
            .iter()
            .chain(atoll::config::OTEL_METRICS_ENV)
        {
            cmd.env_remove(k);
        }
        let out = cmd
            .envs(vars.iter().copied())
            .args(["up", manifest.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{vars:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{vars:?}: {err}");
    }
}
