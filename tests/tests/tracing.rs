//! OTLP trace export, end to end: `atoll up` child processes export to a
//! real OTLP receiver started by the test (a hyper server on 127.0.0.1:0 that
//! decodes `ExportTraceServiceRequest` with the opentelemetry-proto types,
//! over http/protobuf at `POST /v1/traces` and over gRPC).
//!
//! - One request through a component that calls a second one, writes kv,
//!   publishes a message and makes an outbound request, and the delivery of
//!   that message to a third component: one trace, every span's parent in it.
//! - A client's `traceparent` becomes the parent of `gateway.request`; the
//!   response carries the exported ids; queued spans are sent on shutdown.
//! - Off, nothing is sent; a bad `OTEL_*` value stops the host with its name;
//!   a collector that is down costs no request and is logged once.
//! - Without export, `ATOLL_LOG=atoll::span=debug` writes each span as a log
//!   line with the same ids and attributes.
//! - Hosts inside one process (`RunningHost`) export too, one exporter at a
//!   time.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use atoll_tests::{ChildHost, GRPC_TRACES, OtlpReceiver, TestHost, manifest_file, send_with};
use http::HeaderMap;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_atoll-cli"))
}

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
    kind: i32,
    attrs: BTreeMap<String, String>,
    /// (trace id, span id) of each link.
    links: Vec<(String, String)>,
}

impl Exported {
    fn attr(&self, key: &str) -> &str {
        self.attrs.get(key).map_or("", String::as_str)
    }
}

/// The shared OTLP receiver (http/protobuf and gRPC), which also answers
/// `GET /downstream` for the components' outbound requests, with the
/// spans it got decoded.
struct Receiver(OtlpReceiver);

const GRPC_EXPORT: &str = GRPC_TRACES;

impl Receiver {
    async fn start() -> Receiver {
        Receiver(OtlpReceiver::start().await)
    }

    fn url(&self) -> String {
        self.0.url()
    }

    fn spans(&self) -> Vec<Exported> {
        let mut spans = Vec::new();
        for r in self.0.requests() {
            if r.path == "/v1/traces" || r.path == GRPC_EXPORT {
                record(&r.message, &mut spans);
            }
        }
        spans
    }

    /// Export requests, by path.
    fn requests(&self) -> Vec<String> {
        self.0.paths()
    }

    /// `traceparent` of each GET /downstream.
    fn downstream(&self) -> Vec<String> {
        self.0.traceparents("/downstream")
    }

    /// Waits (up to 60 s) until `done` holds for the spans received.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Exported]) -> bool) -> Vec<Exported> {
        for _ in 0..600 {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the receiver never got {what}; got:\n{:#?}", self.spans());
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn record(body: &[u8], spans: &mut Vec<Exported>) {
    let request = ExportTraceServiceRequest::decode(body).expect("an ExportTraceServiceRequest");
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                spans.push(Exported {
                    service: service.clone(),
                    name: span.name.clone(),
                    trace: hex(&span.trace_id),
                    id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    kind: span.kind,
                    attrs: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                });
            }
        }
    }
}

/// `(trace id, span id, flags)` of a response's traceparent.
fn traceparent(headers: &HeaderMap) -> (String, String, String) {
    let tp = headers["traceparent"].to_str().unwrap();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

const CHAIN: &str = r#"
[topics.orders]

[components.front]
source = "{trace-front}"
version = "1.0.0"
routes = ["/order"]
publishes = ["orders"]
allowed_outbound_hosts = ["RECEIVER"]
[components.front.config]
downstream = "RECEIVER/downstream"
[components.front.calls.pricing]

[components.pricing]
source = "{pricing}"
version = "2.1.0"

[components.sink]
source = "{bus-sink}"
version = "3.0.0"
[[components.sink.subscriptions]]
topic = "orders"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_connected_trace_across_call_kv_publish_delivery_and_outbound() {
    let receiver = Receiver::start().await;
    let toml = format!(
        "[telemetry]\notlp_endpoint = \"{url}\"\nservice_name = \"trace-test\"\n{}",
        CHAIN.replace("RECEIVER", &receiver.url()),
        url = receiver.url(),
    );
    let (_dir, manifest) = manifest_file(&toml);
    let host = ChildHost::spawn_otel(bin(), &manifest, &[("OTEL_BSP_SCHEDULE_DELAY", "100")]).await;

    let r = send_with("GET", &host.url("/order?item=book"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "hello, book | downstream 200: ok");
    let (trace, root, flags) = traceparent(&r.headers);
    assert_eq!(flags, "01");

    // Everything down to the delivery's own kv write.
    let spans = receiver
        .wait_for("the request's spans and the delivery's", |spans| {
            let has = |name: &str, component: &str| {
                spans
                    .iter()
                    .any(|s| s.name == name && s.attr("component") == component)
            };
            has("gateway.request", "front")
                && has("http.outbound", "front")
                && has("bus.deliver", "sink")
                && has("kv.increment", "sink")
        })
        .await;
    let one = |name: &str, component: &str| -> &Exported {
        let found: Vec<&Exported> = spans
            .iter()
            .filter(|s| s.name == name && s.attr("component") == component)
            .collect();
        assert_eq!(found.len(), 1, "{name} of {component}: {found:#?}");
        found[0]
    };
    let request = one("gateway.request", "front");
    let invoke = one("component.invoke", "front");
    let call = one("call.invoke", "pricing");
    let kv_write = one("kv.set", "front");
    let publish = one("bus.publish", "front");
    let outbound = one("http.outbound", "front");
    let deliver = one("bus.deliver", "sink");
    let sink_kv = one("kv.increment", "sink");

    // One trace: the response's, with the gateway's span as its root.
    assert!(spans.iter().all(|s| s.trace == trace), "{spans:#?}");
    assert_eq!(
        (request.id.as_str(), request.parent.as_str()),
        (root.as_str(), "")
    );
    // A tree: every other span's parent was exported too.
    let ids: std::collections::BTreeSet<&str> = spans.iter().map(|s| s.id.as_str()).collect();
    for s in &spans {
        assert!(
            s.parent.is_empty() && s.id == root || ids.contains(s.parent.as_str()),
            "{} has a parent outside the trace: {s:#?}",
            s.name
        );
    }
    // The parent links, hop by hop.
    assert_eq!(invoke.parent, request.id);
    assert_eq!(call.parent, invoke.id);
    assert_eq!(kv_write.parent, invoke.id);
    assert_eq!(publish.parent, invoke.id);
    assert_eq!(outbound.parent, invoke.id);
    assert_eq!(
        deliver.parent, publish.id,
        "the delivery continues the publish"
    );
    assert_eq!(deliver.links, vec![(trace.clone(), publish.id.clone())]);
    assert_eq!(sink_kv.parent, deliver.id);
    // The outbound request carried the outbound span's context.
    let downstream = receiver.downstream();
    assert_eq!(downstream, vec![format!("00-{trace}-{}-01", outbound.id)]);

    // Attributes, kinds and the resource.
    assert!(spans.iter().all(|s| s.service == "trace-test"));
    assert_eq!(
        (
            request.attr("route"),
            request.attr("status"),
            request.attr("method")
        ),
        ("/order", "200", "GET")
    );
    assert_eq!(request.attr("version"), "1.0.0");
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(invoke.attr("version"), "1.0.0");
    assert!(
        invoke.attr("instantiate_us").parse::<u64>().is_ok(),
        "{invoke:#?}"
    );
    assert_eq!(
        (
            call.attr("caller"),
            call.attr("callee"),
            call.attr("version"),
            call.attr("outcome"),
            call.attr("attempts"),
            call.attr("retries"),
            call.attr("breaker"),
        ),
        ("front", "pricing", "2.1.0", "ok", "1", "0", "closed")
    );
    assert_eq!(call.attr("function"), "test:calls/quote#greet");
    assert_eq!(kv_write.attr("version"), "1.0.0");
    assert_eq!(
        (publish.attr("topic"), publish.kind),
        ("orders", SpanKind::Producer as i32)
    );
    assert_eq!(
        (
            deliver.attr("version"),
            deliver.attr("outcome"),
            deliver.kind
        ),
        ("3.0.0", "ack", SpanKind::Consumer as i32)
    );
    assert_eq!(deliver.attr("subscription"), "orders/sink");
    assert_eq!(
        (
            outbound.attr("method"),
            outbound.attr("status"),
            outbound.kind
        ),
        ("GET", "200", SpanKind::Client as i32)
    );
    // Never a payload: the greeting was the message and the response body.
    for s in &spans {
        for (k, v) in &s.attrs {
            assert!(!v.contains("hello, book"), "{} {k} = {v}", s.name);
        }
    }
    assert!(
        receiver.requests().iter().all(|p| p == "/v1/traces"),
        "{:?}",
        receiver.requests()
    );
    let log = host.stop().await;
    assert!(
        log.iter().any(|l| l.contains("trace export flushed")),
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_traceparent_is_the_parent_and_grpc_from_the_environment_flushes_on_shutdown() {
    let receiver = Receiver::start().await;
    let (_dir, manifest) = manifest_file(
        r#"
[components.hello]
source = "{hello}"
routes = ["/hello"]
"#,
    );
    let url = receiver.url();
    // Export only from the environment; batches would wait 10 minutes, so
    // only the shutdown sends them.
    let host = ChildHost::spawn_otel(
        bin(),
        &manifest,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "env-service"),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    )
    .await;
    let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = send_with("GET", &host.url("/hello"), &[("traceparent", sent)], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let (trace, span, flags) = traceparent(&r.headers);
    assert_eq!(
        (trace.as_str(), flags.as_str()),
        ("4bf92f3577b34da6a3ce929d0e0e4736", "01")
    );
    assert_ne!(span, "00f067aa0ba902b7");
    assert!(receiver.requests().is_empty(), "sent before shutdown");

    host.stop().await;
    let spans = receiver.spans();
    assert!(!receiver.requests().is_empty());
    assert!(receiver.requests().iter().all(|p| p == GRPC_EXPORT));
    let request: Vec<&Exported> = spans
        .iter()
        .filter(|s| s.name == "gateway.request")
        .collect();
    assert_eq!(request.len(), 1, "{spans:#?}");
    let request = request[0];
    assert_eq!(
        (
            request.trace.as_str(),
            request.id.as_str(),
            request.parent.as_str()
        ),
        (trace.as_str(), span.as_str(), "00f067aa0ba902b7")
    );
    assert_eq!(request.service, "env-service");
    let invoke = spans
        .iter()
        .find(|s| s.name == "component.invoke")
        .expect("component.invoke");
    assert_eq!(
        (invoke.parent.as_str(), invoke.attr("component")),
        (span.as_str(), "hello")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_nothing_is_sent_and_sample_ratio_zero_sends_nothing_new() {
    let receiver = Receiver::start().await;
    let url = receiver.url();
    // No endpoint in the manifest; the environment names one but disables the SDK.
    let (_dir, manifest) = manifest_file(&format!(
        "[telemetry]\nservice_name = \"quiet\"\n{}",
        CHAIN.replace("RECEIVER", &url)
    ));
    let host = ChildHost::spawn_otel(
        bin(),
        &manifest,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    for _ in 0..3 {
        let r = send_with("GET", &host.url("/order?item=pen"), &[], "")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        // The trace context is still answered, and still propagated.
        let (trace, _, _) = traceparent(&r.headers);
        assert_eq!(trace.len(), 32);
    }
    let log = host.stop().await;
    {
        let (requests, downstream) = (receiver.requests(), receiver.downstream());
        assert_eq!(requests.len(), 0, "{requests:?}");
        assert_eq!(downstream.len(), 3);
        assert!(downstream.iter().all(String::is_empty), "{downstream:?}");
    }
    assert!(!log.iter().any(|l| l.contains("trace export")), "{log:#?}");

    // Exporting with sample_ratio 0: new traces are answered unsampled and
    // nothing reaches the collector.
    let (_dir, manifest) = manifest_file(&format!(
        "[telemetry]\notlp_endpoint = \"{url}\"\nsample_ratio = 0\n{}",
        CHAIN.replace("RECEIVER", &url)
    ));
    let host = ChildHost::spawn_otel(bin(), &manifest, &[("OTEL_BSP_SCHEDULE_DELAY", "100")]).await;
    let r = send_with("GET", &host.url("/order?item=pen"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let (trace, _, flags) = traceparent(&r.headers);
    assert_eq!(flags, "00");
    host.stop().await;
    let spans = receiver.spans();
    assert_eq!(spans.len(), 0, "{spans:#?}");
    // The outbound request still carried the (unsampled) trace.
    let downstream = receiver.downstream();
    let last = downstream.last().unwrap();
    assert!(
        last.starts_with(&format!("00-{trace}-")) && last.ends_with("-00"),
        "{last}"
    );
}

/// The only test here with hosts inside the test process (the others run
/// `atoll up`): export is per process, one exporter at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_hosts_export_one_after_another_and_a_second_at_once_shares() {
    let receiver = Receiver::start().await;
    let manifest = |service: &str| {
        format!(
            "[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"{service}\"\n\n\
             [components.hello]\nsource = \"{{hello}}\"\nroutes = [\"/hello\"]\n",
            receiver.url()
        )
    };
    let traced = |trace: &str| {
        let trace = trace.to_string();
        receiver
            .spans()
            .into_iter()
            .filter(move |s| s.trace == trace)
            .map(|s| (s.name, s.service))
            .collect::<Vec<_>>()
    };
    // The trace id of one GET /hello.
    let hello = async |host: &TestHost| {
        let r = send_with("GET", &host.url("/hello"), &[], "")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        traceparent(&r.headers).0
    };
    let first = TestHost::start(&manifest("first")).await;
    let trace_1 = hello(&first).await;
    // Started while the first exports: its spans go to the first's exporter.
    let second = TestHost::start(&manifest("second")).await;
    assert!(second.host.trace_export().is_none());
    let trace_2 = hello(&second).await;
    second.stop().await;
    // Stopping the exporting host sends what is queued and ends export.
    first.stop().await;
    let spans = [traced(&trace_1), traced(&trace_2)];
    for spans in &spans {
        let mut names: Vec<_> = spans.iter().map(|(n, s)| format!("{n} {s}")).collect();
        names.sort();
        assert_eq!(names, ["component.invoke first", "gateway.request first"]);
    }
    // A host started after it exports through an exporter of its own.
    let third = TestHost::start(&manifest("third")).await;
    assert!(third.host.trace_export().is_some());
    let trace_3 = hello(&third).await;
    third.stop().await;
    assert_eq!(traced(&trace_3).len(), 2);
    assert!(traced(&trace_3).iter().all(|(_, s)| s == "third"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_no_request_and_is_logged_once() {
    // Nothing listens on port 1.
    let (_dir, manifest) = manifest_file(
        "[telemetry]\notlp_endpoint = \"http://127.0.0.1:1\"\n\n\
         [components.hello]\nsource = \"{hello}\"\nroutes = [\"/hello\"]\n",
    );
    let host = ChildHost::spawn_otel(bin(), &manifest, &[("OTEL_BSP_SCHEDULE_DELAY", "50")]).await;
    for _ in 0..3 {
        for _ in 0..20 {
            let r = send_with("GET", &host.url("/hello"), &[], "")
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
        }
        // Several batches fail.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = host.stop().await;
    let failed: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("exporting spans failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{log:#?}");
    let flushed = log
        .iter()
        .find(|l| l.contains("trace export flushed"))
        .unwrap_or_else(|| panic!("{log:#?}"));
    // Every span of the 60 requests (two each) was tried and counted.
    assert!(
        flushed.contains("exported=0")
            && flushed.contains("failed=120")
            && flushed.contains("dropped=0"),
        "{flushed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_export_spans_are_log_lines_at_debug() {
    let receiver = Receiver::start().await;
    let (_dir, manifest) = manifest_file(&CHAIN.replace("RECEIVER", &receiver.url()));
    let host =
        ChildHost::spawn_otel(bin(), &manifest, &[("ATOLL_LOG", "info,atoll::span=debug")]).await;
    let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = send_with(
        "GET",
        &host.url("/order?item=pen"),
        &[("traceparent", sent)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let log = host.stop().await;
    assert!(receiver.requests().is_empty(), "nothing is exported");
    // One line per ended span: name, attributes, ids and duration.
    let line = |name: &str, component: &str| -> &String {
        log.iter()
            .find(|l| {
                l.contains(&format!(" {name} ")) && l.contains(&format!("component={component}"))
            })
            .unwrap_or_else(|| panic!("no {name} of {component} in {log:#?}"))
    };
    let field = |line: &str, key: &str| -> String {
        let at = line
            .find(&format!("{key}="))
            .unwrap_or_else(|| panic!("{key} in {line}"));
        line[at + key.len() + 1..]
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    };
    let request = line("gateway.request", "front");
    let invoke = line("component.invoke", "front");
    let kv = line("kv.set", "front");
    let call = line("call.invoke", "pricing");
    for l in [request, invoke, kv, call] {
        assert!(l.contains("DEBUG"), "{l}");
        assert_eq!(
            field(l, "trace_id"),
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "{l}"
        );
        assert!(field(l, "duration_us").parse::<u64>().is_ok(), "{l}");
    }
    assert_eq!(field(request, "parent_id"), "00f067aa0ba902b7");
    assert_eq!(
        (field(request, "route"), field(request, "status")),
        ("/order".into(), "200".into())
    );
    assert_eq!(field(invoke, "parent_id"), field(request, "span_id"));
    assert_eq!(field(kv, "parent_id"), field(invoke, "span_id"));
    assert_eq!(field(call, "parent_id"), field(invoke, "span_id"));
    // Without export no span id of the host's leaves it: the outbound
    // request carries no trace context of the host's (as with export off).
    assert_eq!(receiver.downstream(), vec![String::new()]);
}

#[test]
fn a_bad_otel_variable_stops_the_host_with_its_name() {
    let (_dir, manifest) = manifest_file(
        r#"
[components.hello]
source = "{hello}"
routes = ["/hello"]
"#,
    );
    for (var, value, want) in [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "localhost:4318",
            "error: trace export: OTEL_EXPORTER_OTLP_ENDPOINT: `localhost:4318` is not an http:// URL",
        ),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "http/json",
            "error: trace export: OTEL_EXPORTER_OTLP_PROTOCOL: `http/json` is not supported; use `http/protobuf` (the default) or `grpc`",
        ),
    ] {
        let mut cmd = Command::new(bin());
        for k in atoll::config::OTEL_ENV {
            cmd.env_remove(k);
        }
        let out = cmd
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
            .env(var, value)
            .args(["up", manifest.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
    }
}
