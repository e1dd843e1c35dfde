//! OTLP trace export: the host's `tracing` spans (`gateway.request`,
//! `component.invoke`, `kv.*`, `call.invoke`, `bus.publish`, `bus.deliver`,
//! `http.outbound`) become OpenTelemetry spans through
//! `tracing-opentelemetry`, are batched (a bounded queue behind a short lock:
//! a full queue drops spans and counts them, never blocks a request; a task
//! on the host's runtime sends a batch when it is full or every second) and
//! sent over OTLP http/protobuf or gRPC. (The SDK's own batch processor,
//! tried first, spent about a tenth of a worker's time in its channel's
//! `try_send` under load; a push onto a locked `Vec` is cheaper.)
//!
//! Off (no endpoint in `[telemetry]` or the environment), none of this is
//! installed: the subscriber has only the log layer, the debug-level spans
//! stay disabled, and [`exporting`] is false, so the request path creates
//! nothing extra.
//!
//! Context crosses boundaries explicitly: the gateway continues a client's
//! `traceparent` (or starts a trace) and answers with the exported ids
//! ([`continue_trace`]); calls and deliveries carry the W3C `traceparent` of
//! the span they run under ([`traceparent_of`]); a delivery continues the
//! publisher's trace from the message header and links to it ([`adopt_remote`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::{OtlpExport, OtlpProtocol};

/// Whether spans are exported (set once, when export is installed).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports spans. Code that would do extra work only
/// for the exported trace (recording ids, adding headers) checks this first.
#[inline]
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// How long one export may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body read from a collector.
const MAX_RESPONSE: usize = 1 << 20;
/// Spans held while the exporter is behind; past this they are dropped.
const MAX_QUEUE: usize = 8192;
/// Spans per export request.
const MAX_BATCH: usize = 512;
/// How often a batch leaves when the queue is not full.
const SCHEDULE_DELAY: Duration = Duration::from_millis(1000);

/// What the exporters did, for logs and metrics.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans in batches that failed (collector down, refused, timed out).
    pub failed: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// This process's export counters (zero when export is off).
pub fn stats() -> &'static ExportStats {
    static STATS: OnceLock<ExportStats> = OnceLock::new();
    STATS.get_or_init(ExportStats::default)
}

/// The installed export pipeline; [`Exporter::shutdown`] sends what is queued.
pub struct Exporter {
    provider: SdkTracerProvider,
    queue: Arc<Queue>,
    task: tokio::task::JoinHandle<()>,
    describe: String,
}

impl Exporter {
    /// Where spans go, for the startup line.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Sends what is queued (waiting at most [`EXPORT_TIMEOUT`] per batch)
    /// and stops.
    pub async fn shutdown(self) {
        self.queue.closed.store(true, Ordering::Release);
        self.queue.wake.notify_one();
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the trace export task failed");
        }
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "stopping the tracer provider failed");
        }
        let s = stats();
        tracing::info!(
            exported = s.exported.load(Ordering::Relaxed),
            failed = s.failed.load(Ordering::Relaxed),
            dropped = s.dropped.load(Ordering::Relaxed),
            "trace export flushed"
        );
    }
}

/// Ended spans waiting for the exporter: a bounded buffer behind a short
/// lock. A request only ever pushes (or, when full, drops and counts); the
/// export task takes whole batches.
struct Queue {
    spans: Mutex<Vec<SpanData>>,
    wake: tokio::sync::Notify,
    closed: AtomicBool,
}

/// The batch span processor: sampled spans go to the [`Queue`].
#[derive(Debug)]
struct Batching(Arc<Queue>);

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Queue")
    }
}

impl opentelemetry_sdk::trace::SpanProcessor for Batching {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let mut spans = self.0.spans.lock().unwrap_or_else(|e| e.into_inner());
        if spans.len() >= MAX_QUEUE {
            drop(spans);
            // Counted always; logged at the first drop and then at most
            // once a minute.
            let dropped = stats().dropped.fetch_add(1, Ordering::Relaxed) + 1;
            static LAST: AtomicU64 = AtomicU64::new(0);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let last = LAST.load(Ordering::Relaxed);
            if (last == 0 || now >= last + 60)
                && LAST
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    dropped,
                    queue = MAX_QUEUE,
                    "the trace export queue is full (the collector is slow or down); spans are dropped"
                );
            }
            return;
        }
        if spans.capacity() == 0 {
            spans.reserve(MAX_BATCH);
        }
        spans.push(span);
        let full = spans.len() == MAX_BATCH;
        drop(spans);
        if full {
            self.0.wake.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.wake.notify_one();
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Exports what the queue holds: a batch when [`MAX_BATCH`] spans are
/// waiting, else every `delay`; everything once the queue is closed.
async fn export_loop<E: SpanExporter>(queue: Arc<Queue>, exporter: E, delay: Duration) {
    loop {
        tokio::select! {
            _ = queue.wake.notified() => {}
            _ = tokio::time::sleep(delay) => {}
        }
        let closing = queue.closed.load(Ordering::Acquire);
        loop {
            let batch = {
                let mut spans = queue.spans.lock().unwrap_or_else(|e| e.into_inner());
                if spans.len() <= MAX_BATCH {
                    std::mem::take(&mut *spans)
                } else {
                    spans.drain(..MAX_BATCH).collect()
                }
            };
            if batch.is_empty() {
                break;
            }
            let more = batch.len() == MAX_BATCH;
            // (Failures are counted and logged by `Counted`.)
            let _ = exporter.export(batch).await;
            if !more {
                break;
            }
        }
        if closing {
            let _ = exporter.shutdown();
            return;
        }
    }
}

/// Builds the tracer provider for `export`: the batching processor in front
/// of an OTLP exporter, both running on `runtime`.
pub(super) fn provider(
    export: &OtlpExport,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<Exporter> {
    // OTEL_BSP_SCHEDULE_DELAY (ms) may shorten or lengthen the delay.
    let delay = std::env::var("OTEL_BSP_SCHEDULE_DELAY")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map_or(SCHEDULE_DELAY, Duration::from_millis);
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(export.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let queue = Arc::new(Queue {
        spans: Mutex::new(Vec::new()),
        wake: tokio::sync::Notify::new(),
        closed: AtomicBool::new(false),
    });
    let task = match export.protocol {
        OtlpProtocol::HttpProtobuf => {
            use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
            let mut inner = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(HyperClient::new(runtime.clone()))
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(export.url.to_string())
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .context("setting up the OTLP http/protobuf exporter")?;
            inner.set_resource(&resource);
            runtime.spawn(export_loop(queue.clone(), Counted(inner), delay))
        }
        OtlpProtocol::Grpc => {
            let mut inner = GrpcExporter::new(&export.url, runtime.clone())?;
            inner.set_resource(&resource);
            runtime.spawn(export_loop(queue.clone(), Counted(inner), delay))
        }
    };
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(export.sample_ratio)));
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Batching(queue.clone()))
        .with_sampler(sampler)
        .with_resource(resource)
        .build();
    Ok(Exporter {
        provider,
        queue,
        task,
        describe: format!(
            "{} {} (service {}, sample ratio {})",
            export.protocol.name(),
            export.url,
            export.service_name,
            export.sample_ratio
        ),
    })
}

/// The layer that turns the host's spans into OpenTelemetry spans.
pub(super) fn layer<S>(
    exporter: &Exporter,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    EXPORTING.store(true, Ordering::Relaxed);
    tracing_opentelemetry::layer()
        .with_tracer(exporter.provider.tracer("atoll"))
        // Parents come from the tracing span tree (and explicit set_parent):
        // no OpenTelemetry context is attached per poll.
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
}

// ---- context helpers used on the request path (only when exporting) ----

/// A W3C trace context: trace id, the caller's span id, sampled.
pub type Remote = (u128, u64, bool);

/// Makes `span` (a `gateway.request` just created) continue `remote` (the
/// client's traceparent) or start a new trace, and returns the ids the
/// exported span has: (trace id, span id, sampled). `None` when the span is
/// not exported (export off, or the span disabled).
pub fn continue_trace(span: &tracing::Span, remote: Option<Remote>) -> Option<Remote> {
    if !exporting() || span.is_disabled() {
        return None;
    }
    if let Some(remote) = remote {
        let _ = span.set_parent(
            opentelemetry::Context::new().with_remote_span_context(span_context(remote)?),
        );
    }
    ids_of(span)
}

/// Makes `span` (a `bus.deliver`, not yet entered) a child of the
/// publishing span named by `traceparent`, and links it there too (a viewer
/// that starts a new trace per consumer still finds the producer).
pub fn adopt_remote(span: &tracing::Span, traceparent: Option<&str>) {
    if !exporting() || span.is_disabled() {
        return;
    }
    let Some(sc) = traceparent
        .and_then(parse_traceparent)
        .and_then(span_context)
    else {
        return;
    };
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc.clone()));
    span.add_link(sc);
}

/// The W3C `traceparent` of `span`'s exported context, for whatever it
/// starts elsewhere (a call's store, a message, an outbound request).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if !exporting() || span.is_disabled() {
        return None;
    }
    let (trace, span_id, sampled) = ids_of(span)?;
    Some(format_traceparent(trace, span_id, sampled))
}

/// `00-<trace>-<span>-<flags>`.
pub fn format_traceparent(trace: u128, span: u64, sampled: bool) -> String {
    format!(
        "00-{trace:032x}-{span:016x}-{}",
        if sampled { "01" } else { "00" }
    )
}

fn ids_of(span: &tracing::Span) -> Option<Remote> {
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    if !sc.is_valid() {
        return None;
    }
    Some((
        u128::from_be_bytes(sc.trace_id().to_bytes()),
        u64::from_be_bytes(sc.span_id().to_bytes()),
        sc.is_sampled(),
    ))
}

fn span_context((trace, span, sampled): Remote) -> Option<SpanContext> {
    let sc = SpanContext::new(
        TraceId::from_bytes(trace.to_be_bytes()),
        SpanId::from_bytes(span.to_be_bytes()),
        if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// Parses `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids are invalid.
pub fn parse_traceparent(text: &str) -> Option<Remote> {
    let mut parts = text.trim().split('-');
    let version = parts.next()?;
    let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
    let hex =
        |s: &str, len| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2)
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
    let parent = u64::from_str_radix(parent, 16).ok().filter(|p| *p != 0)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace, parent, flags & 1 == 1))
}

// ---- exporters ----

/// Counts what an exporter sent and what failed.
#[derive(Debug)]
struct Counted<E>(E);

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.0.export(batch).await;
        let s = stats();
        match &result {
            Ok(()) => s.exported.fetch_add(n, Ordering::Relaxed),
            Err(e) => {
                // Logged at most once a minute: a collector that is down
                // should not flood the log.
                static LAST: AtomicU64 = AtomicU64::new(0);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let last = LAST.load(Ordering::Relaxed);
                if now >= last + 60
                    && LAST
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(spans = n, error = %e, "exporting spans failed; they are dropped (logged at most once a minute)");
                }
                s.failed.fetch_add(n, Ordering::Relaxed)
            }
        };
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource)
    }
}

/// The OTLP HTTP exporter's client: the host's hyper client, run on the
/// host's runtime (the batch processor's thread only waits for it).
struct HyperClient {
    client: Client<HttpConnector, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
}

impl HyperClient {
    fn new(runtime: tokio::runtime::Handle) -> HyperClient {
        HyperClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
            runtime,
        }
    }
}

impl std::fmt::Debug for HyperClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HyperClient")
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HyperClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let sent = tokio::time::timeout(EXPORT_TIMEOUT, client.request(request.map(Full::new)))
                .await
                .map_err(|_| format!("no answer within {EXPORT_TIMEOUT:?}"))??;
            let (parts, body) = sent.into_parts();
            let body = Limited::new(body, MAX_RESPONSE).collect().await?.to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
        });
        task.await?
    }
}

/// OTLP over gRPC, by hand: one unary call of
/// `opentelemetry.proto.collector.trace.v1.TraceService/Export` per batch
/// over HTTP/2 without TLS (what tonic would send, without building tonic).
struct GrpcExporter {
    url: http::Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    resource: Arc<opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema>,
}

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl GrpcExporter {
    fn new(endpoint: &http::Uri, runtime: tokio::runtime::Handle) -> anyhow::Result<GrpcExporter> {
        let mut parts = endpoint.clone().into_parts();
        let base = parts
            .path_and_query
            .as_ref()
            .map_or("", |p| p.path())
            .trim_end_matches('/')
            .to_string();
        parts.path_and_query = Some(format!("{base}{GRPC_PATH}").parse()?);
        Ok(GrpcExporter {
            url: http::Uri::from_parts(parts)?,
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
            runtime,
            resource: Arc::default(),
        })
    }
}

impl std::fmt::Debug for GrpcExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GrpcExporter({})", self.url)
    }
}

impl SpanExporter for GrpcExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        use prost::Message as _;
        let request = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
            resource_spans:
                opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope(
                    batch,
                    &self.resource,
                ),
        };
        // A gRPC message: uncompressed flag, 4-byte big-endian length, protobuf.
        let len = request.encoded_len();
        let mut body = Vec::with_capacity(5 + len);
        body.push(0);
        body.extend_from_slice(&(len as u32).to_be_bytes());
        request
            .encode(&mut body)
            .map_err(|e| OTelSdkError::InternalFailure(format!("encoding spans: {e}")))?;
        let req = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header(
                http::header::USER_AGENT,
                concat!("atoll/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let res = tokio::time::timeout(EXPORT_TIMEOUT, client.request(req))
                .await
                .map_err(|_| format!("no answer within {EXPORT_TIMEOUT:?}"))?
                .map_err(|e| format!("sending to the collector: {e}"))?;
            if res.status() != http::StatusCode::OK {
                return Err(format!("the collector answered HTTP {}", res.status()));
            }
            // grpc-status is in the trailers, or in the headers of a
            // trailers-only answer.
            let headers = res.headers().clone();
            let collected = Limited::new(res.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| format!("reading the collector's answer: {e}"))?;
            let trailers = collected.trailers().cloned().unwrap_or_default();
            let status = trailers
                .get("grpc-status")
                .or_else(|| headers.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            match status {
                "0" => Ok(()),
                "" => Err("the collector's answer has no grpc-status".to_string()),
                code => {
                    let message = trailers
                        .get("grpc-message")
                        .or_else(|| headers.get("grpc-message"))
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    Err(format!(
                        "the collector answered grpc-status {code} {message}"
                    ))
                }
            }
        });
        match task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(OTelSdkError::InternalFailure(e)),
            Err(e) => Err(OTelSdkError::InternalFailure(format!(
                "export task failed: {e}"
            ))),
        }
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.resource = Arc::new(resource.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, s, sampled) = parse_traceparent(text).unwrap();
        assert_eq!(format_traceparent(t, s, sampled), text);
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        let sc = span_context((t, s, sampled)).unwrap();
        assert_eq!(
            format!("{}", sc.trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(format!("{}", sc.span_id()), "00f067aa0ba902b7");
    }

    #[test]
    fn grpc_path_follows_the_endpoint() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = GrpcExporter::new(
            &"http://127.0.0.1:4317".parse().unwrap(),
            rt.handle().clone(),
        )
        .unwrap();
        assert_eq!(
            e.url.to_string(),
            format!("http://127.0.0.1:4317{GRPC_PATH}")
        );
    }
}
