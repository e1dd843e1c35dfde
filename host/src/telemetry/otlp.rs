//! OTLP trace export: the spans of [`super::span`] that are sampled end up
//! here as a [`Rec`] each, wait in a bounded queue, and are sent in batches
//! over OTLP http/protobuf or gRPC ([`super::transport`]).
//!
//! Why not `tracing-opentelemetry` and the OpenTelemetry SDK: they were the
//! first version, and cost about 2 µs per span on the request path (a
//! `SpanBuilder` and an OpenTelemetry `Context` per span, each attribute
//! turned into an owned `KeyValue`, the SDK's `SpanData` built at the end),
//! which put the export at 14–22% of `/hello` throughput against a goal of
//! under 10%. Here a span is one small struct with the ids, times and the
//! attributes as they were set; the protobuf is built only on the export
//! task, off the request path.
//!
//! Sampling follows the SDK's `ParentBased(TraceIdRatioBased)`: a span with
//! a parent (local, or a remote `traceparent`) inherits its sampled flag; a
//! new trace is sampled when the low 63 bits of its id fall under the ratio.
//!
//! The queue is a bounded `Vec` behind a short lock: a full queue drops spans
//! and counts them, never blocks a request; a task on the host's runtime
//! sends a batch when it is full or every second. Records come back from the
//! export task emptied but with their buffers, so recording a span
//! allocates nothing but its handle once the host is warm.
//!
//! Off (no endpoint in `[telemetry]` or the environment), none of this is
//! installed and [`exporting`] is false, so the request path records nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use opentelemetry_proto::tonic::trace::v1 as proto;

use super::transport::{Signal, Transport};
use crate::config::OtlpExport;

/// Whether spans are exported (set once, when export is installed).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// New traces are sampled when the low 63 bits of their id are below this
/// (`u64::MAX`: all of them).
static SAMPLE_BOUND: AtomicU64 = AtomicU64::new(u64::MAX);

/// The queue of the running exporter. Spans are recorded wherever the
/// host's code runs, so a process exports through one exporter at a time:
/// the first host that asks for export starts it, and it stops with that
/// host ([`Exporter::shutdown`], or dropping it).
static QUEUE: ArcSwapOption<Queue> = ArcSwapOption::const_empty();

/// Whether this process exports spans. Code that would do extra work only
/// for the exported trace (recording ids, adding headers) checks this first.
#[inline]
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Spans held while the exporter is behind; past this they are dropped.
const MAX_QUEUE: usize = 8192;
/// Spans per export request.
const MAX_BATCH: usize = 512;
/// How often a batch leaves when the queue is not full.
const SCHEDULE_DELAY: Duration = Duration::from_millis(1000);
/// Attributes kept per span and events per span; more are counted as dropped.
const MAX_FIELDS: usize = 32;
pub(super) const MAX_EVENTS: usize = 16;
/// Emptied records kept for reuse.
const MAX_SPARE: usize = 2 * MAX_BATCH;

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

/// The running export pipeline; [`Exporter::shutdown`] sends what is
/// queued. Dropped without it, export stops and what is queued is lost.
pub struct Exporter {
    queue: Arc<Queue>,
    task: Option<tokio::task::JoinHandle<()>>,
    describe: String,
}

impl Exporter {
    /// Where spans go, for the startup line.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Stops recording new spans, sends what is queued (each batch waiting
    /// at most the transport's timeout) and stops.
    pub async fn shutdown(mut self) {
        self.stop_recording();
        self.queue.closed.store(true, Ordering::Release);
        self.queue.wake.notify_one();
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::warn!(error = %e, "the trace export task failed");
        }
        let s = stats();
        tracing::info!(
            exported = s.exported.load(Ordering::Relaxed),
            failed = s.failed.load(Ordering::Relaxed),
            dropped = s.dropped.load(Ordering::Relaxed),
            "trace export flushed"
        );
    }

    /// Spans ending from now on are not queued, and another exporter may
    /// start.
    fn stop_recording(&self) {
        EXPORTING.store(false, Ordering::Relaxed);
        let mine = Arc::as_ptr(&self.queue);
        QUEUE.rcu(|current| match current {
            Some(q) if Arc::as_ptr(q) == mine => None,
            other => other.clone(),
        });
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            self.stop_recording();
            task.abort();
        }
    }
}

/// Ended spans waiting for the exporter: a bounded buffer behind a short
/// lock. A request only ever pushes (or, when full, drops and counts); the
/// export task takes whole batches.
struct Queue {
    spans: Mutex<Vec<Rec>>,
    /// The last batch's buffer, emptied, to take the next batch in (so the
    /// queue is not reallocated for every batch).
    spare: Mutex<Vec<Rec>>,
    /// Sent records, emptied, for new spans to fill.
    free: Mutex<Vec<Rec>>,
    wake: tokio::sync::Notify,
    closed: AtomicBool,
}

impl Queue {
    fn push(&self, span: Rec) {
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        if spans.len() >= MAX_QUEUE {
            drop(spans);
            let dropped = stats().dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if once_a_minute(&DROP_LOGGED) {
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
            self.wake.notify_one();
        }
    }

    /// Up to [`MAX_BATCH`] of the oldest spans.
    fn take_batch(&self) -> Vec<Rec> {
        let mut batch = std::mem::take(&mut *self.spare.lock().unwrap_or_else(|e| e.into_inner()));
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        if spans.len() <= MAX_BATCH {
            std::mem::swap(&mut *spans, &mut batch);
        } else {
            batch.extend(spans.drain(..MAX_BATCH));
        }
        batch
    }

    /// Gives back a batch's buffer and its records, emptied, once its spans
    /// are sent.
    fn give_back(&self, mut batch: Vec<Rec>) {
        {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            let room = MAX_SPARE.saturating_sub(free.len());
            free.extend(batch.drain(..).take(room).map(Rec::emptied));
        }
        batch.clear();
        *self.spare.lock().unwrap_or_else(|e| e.into_inner()) = batch;
    }
}

/// Queues an ended span for export.
pub(super) fn finish(rec: Rec) {
    if let Some(queue) = &*QUEUE.load() {
        queue.push(rec);
    }
}

/// An empty record for a new span, with buffers from a sent one when there
/// is one.
pub(super) fn recycled() -> Rec {
    QUEUE
        .load()
        .as_ref()
        .and_then(|q| q.free.lock().unwrap_or_else(|e| e.into_inner()).pop())
        .unwrap_or_default()
}

static DROP_LOGGED: AtomicU64 = AtomicU64::new(0);
static FAIL_LOGGED: AtomicU64 = AtomicU64::new(0);

/// True the first time and then at most once a minute per `last` (so a
/// collector that is down does not flood the log).
fn once_a_minute(last: &AtomicU64) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let seen = last.load(Ordering::Relaxed);
    (seen == 0 || now >= seen + 60)
        && last
            .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// Exports what the queue holds: a batch when [`MAX_BATCH`] spans are
/// waiting, else every `delay`; everything once the queue is closed.
async fn export_loop(
    queue: Arc<Queue>,
    transport: Transport,
    mut encoder: Encoder,
    delay: Duration,
) {
    loop {
        tokio::select! {
            _ = queue.wake.notified() => {}
            _ = tokio::time::sleep(delay) => {}
        }
        let closing = queue.closed.load(Ordering::Acquire);
        loop {
            let batch = queue.take_batch();
            if batch.is_empty() {
                break;
            }
            let more = batch.len() == MAX_BATCH;
            let n = batch.len() as u64;
            let body = encoder.encode(&batch);
            queue.give_back(batch);
            match transport.send_encoded(body).await {
                Ok(()) => stats().exported.fetch_add(n, Ordering::Relaxed),
                Err(e) => {
                    if once_a_minute(&FAIL_LOGGED) {
                        tracing::warn!(spans = n, error = %e, "exporting spans failed; they are dropped (logged at most once a minute)");
                    }
                    stats().failed.fetch_add(n, Ordering::Relaxed)
                }
            };
            if !more {
                break;
            }
        }
        if closing {
            return;
        }
    }
}

/// Starts the export pipeline for `export`: the queue, and the task on the
/// current tokio runtime that sends it. From here on, sampled spans are
/// recorded, until the returned exporter stops. `None` when this process
/// already exports: spans go to the running exporter.
pub fn start(export: &OtlpExport) -> anyhow::Result<Option<Exporter>> {
    // OTEL_BSP_SCHEDULE_DELAY (ms) may shorten or lengthen the delay.
    let delay = std::env::var("OTEL_BSP_SCHEDULE_DELAY")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map_or(SCHEDULE_DELAY, Duration::from_millis);
    let encoder = Encoder::new(&export.service_name);
    let queue = Arc::new(Queue {
        spans: Mutex::new(Vec::new()),
        spare: Mutex::new(Vec::new()),
        free: Mutex::new(Vec::new()),
        wake: tokio::sync::Notify::new(),
        closed: AtomicBool::new(false),
    });
    let transport = Transport::new(&export.url, export.protocol, Signal::Traces)?;
    let previous = QUEUE.compare_and_swap(&None::<Arc<Queue>>, Some(queue.clone()));
    if previous.is_some() {
        return Ok(None);
    }
    let task = tokio::spawn(export_loop(queue.clone(), transport, encoder, delay));
    // The SDK's TraceIdRatioBased: compare the id's low 63 bits.
    let bound = if export.sample_ratio >= 1.0 {
        u64::MAX
    } else {
        (export.sample_ratio.max(0.0) * (1u64 << 63) as f64) as u64
    };
    SAMPLE_BOUND.store(bound, Ordering::Relaxed);
    EXPORTING.store(true, Ordering::Relaxed);
    Ok(Some(Exporter {
        queue,
        task: Some(task),
        describe: format!(
            "{} {} (service {}, sample ratio {})",
            export.protocol.name(),
            export.url,
            export.service_name,
            export.sample_ratio
        ),
    }))
}

// ---- recording ----

/// A sampled span as recorded: kept by its [`super::span::Span`] while it is
/// open, then queued.
#[derive(Default)]
pub(super) struct Rec {
    pub(super) trace: u128,
    pub(super) id: u64,
    /// 0 for a root.
    pub(super) parent: u64,
    pub(super) parent_remote: bool,
    pub(super) name: &'static str,
    pub(super) kind: proto::span::SpanKind,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) attrs: Attrs,
    pub(super) status: proto::status::StatusCode,
    pub(super) events: Vec<Event>,
    pub(super) dropped_events: u32,
    pub(super) links: Vec<(u128, u64, bool)>,
}

impl Rec {
    /// This record with nothing in it, keeping its buffers.
    fn emptied(mut self) -> Rec {
        self.attrs.list.clear();
        self.attrs.text.clear();
        self.attrs.dropped = 0;
        self.events.clear();
        self.links.clear();
        Rec {
            attrs: self.attrs,
            events: self.events,
            links: self.links,
            ..Rec::default()
        }
    }
}

/// A span's or event's attributes. The text of every string value is kept
/// in one buffer (allocations on the request path were most of what
/// recording cost: one per string, then freed on the export task's thread).
#[derive(Default)]
pub(super) struct Attrs {
    pub(super) list: Vec<(&'static str, Value)>,
    pub(super) text: String,
    pub(super) dropped: u32,
}

/// An attribute's value; a string is a range of [`Attrs::text`].
#[derive(Clone, Copy)]
pub(super) enum Value {
    Str(u32, u32),
    I64(i64),
    F64(f64),
    Bool(bool),
}

impl Attrs {
    /// The text of a string value.
    fn str(&self, start: u32, end: u32) -> &str {
        self.text.get(start as usize..end as usize).unwrap_or("")
    }

    /// Sets `name` (a value set again, such as a status filled in late,
    /// replaces itself).
    pub(super) fn put(&mut self, name: &'static str, value: Value) {
        if let Some(slot) = self.list.iter_mut().find(|(k, _)| *k == name) {
            slot.1 = value;
        } else if self.list.len() < MAX_FIELDS {
            self.list.push((name, value));
        } else {
            self.dropped += 1;
        }
    }

    /// Sets `name` to a string.
    pub(super) fn put_str(&mut self, name: &'static str, text: &str) {
        let start = self.text.len() as u32;
        self.text.push_str(text);
        self.put(name, Value::Str(start, self.text.len() as u32));
    }
}

/// Attributes as `key=value key=value` (for the log line of a span).
pub(super) struct Shown<'a>(pub(super) &'a Attrs);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (key, value)) in self.0.list.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            match value {
                Value::Str(a, b) => write!(f, "{key}={}", self.0.str(*a, *b))?,
                Value::I64(v) => write!(f, "{key}={v}")?,
                Value::F64(v) => write!(f, "{key}={v}")?,
                Value::Bool(v) => write!(f, "{key}={v}")?,
            }
        }
        Ok(())
    }
}

/// A log event inside a sampled span (the host's warnings and errors).
pub(super) struct Event {
    pub(super) time: u64,
    pub(super) name: String,
    pub(super) attrs: Attrs,
}

/// Nanoseconds since the Unix epoch, as OTLP wants span times.
pub(super) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Whether a new trace with this id is sampled.
pub(super) fn sample(trace: u128) -> bool {
    let bound = SAMPLE_BOUND.load(Ordering::Relaxed);
    bound == u64::MAX || ((trace as u64) >> 1) < bound
}

// ---- encoding (on the export task) ----

/// Writes the protobuf of an `ExportTraceServiceRequest` straight from the
/// recorded spans. Building the `opentelemetry-proto` message structs first
/// (and letting prost size every nested message again at each level) took
/// about a third of the exporter's time and a dozen allocations per span;
/// this writes each span once into a reused scratch buffer. The unit tests
/// decode the result with the `opentelemetry-proto` types.
mod wire {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

    use super::{Attrs, Rec, Value};

    /// A length-delimited field: key, length, bytes.
    pub(super) fn bytes(tag: u32, data: &[u8], out: &mut Vec<u8>) {
        head(tag, data.len(), out);
        out.extend_from_slice(data);
    }

    /// The key and length of a length-delimited field whose `len` bytes
    /// follow.
    pub(super) fn head(tag: u32, len: usize, out: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(len as u64, out);
    }

    fn varint(tag: u32, value: u64, out: &mut Vec<u8>) {
        encode_key(tag, WireType::Varint, out);
        encode_varint(value, out);
    }

    fn fixed64(tag: u32, value: u64, out: &mut Vec<u8>) {
        encode_key(tag, WireType::SixtyFourBit, out);
        out.extend_from_slice(&value.to_le_bytes());
    }

    fn fixed32(tag: u32, value: u32, out: &mut Vec<u8>) {
        encode_key(tag, WireType::ThirtyTwoBit, out);
        out.extend_from_slice(&value.to_le_bytes());
    }

    /// The length of a length-delimited field holding `len` bytes (tags
    /// here are all below 16: one key byte).
    pub(super) fn field_len(len: usize) -> usize {
        1 + encoded_len_varint(len as u64) + len
    }

    /// Each of `attrs` as a `KeyValue { key, value: AnyValue { ... } }`
    /// field numbered `tag`.
    fn attributes(tag: u32, attrs: &Attrs, out: &mut Vec<u8>) {
        for (key, value) in &attrs.list {
            let any = match value {
                Value::Str(a, b) => field_len(attrs.str(*a, *b).len()),
                Value::I64(i) => 1 + encoded_len_varint(*i as u64),
                Value::F64(_) => 1 + 8,
                Value::Bool(_) => 2,
            };
            let kv = field_len(key.len()) + field_len(any);
            head(tag, kv, out);
            bytes(1, key.as_bytes(), out);
            head(2, any, out);
            match value {
                Value::Str(a, b) => bytes(1, attrs.str(*a, *b).as_bytes(), out),
                Value::Bool(b) => varint(2, u64::from(*b), out),
                Value::I64(i) => varint(3, *i as u64, out),
                Value::F64(f) => fixed64(4, f.to_bits(), out),
            }
        }
    }

    /// One `Span` message's fields (without its own key and length).
    pub(super) fn span(rec: &Rec, scratch: &mut Vec<u8>, out: &mut Vec<u8>) {
        bytes(1, &rec.trace.to_be_bytes(), out);
        bytes(2, &rec.id.to_be_bytes(), out);
        if rec.parent != 0 {
            bytes(4, &rec.parent.to_be_bytes(), out);
        }
        bytes(5, rec.name.as_bytes(), out);
        varint(6, rec.kind as i32 as u64, out);
        fixed64(7, rec.start, out);
        fixed64(8, rec.end, out);
        attributes(9, &rec.attrs, out);
        if rec.attrs.dropped > 0 {
            varint(10, u64::from(rec.attrs.dropped), out);
        }
        for event in &rec.events {
            scratch.clear();
            fixed64(1, event.time, scratch);
            bytes(2, event.name.as_bytes(), scratch);
            attributes(3, &event.attrs, scratch);
            bytes(11, scratch, out);
        }
        if rec.dropped_events > 0 {
            varint(12, u64::from(rec.dropped_events), out);
        }
        for (trace, id, sampled) in &rec.links {
            scratch.clear();
            bytes(1, &trace.to_be_bytes(), scratch);
            bytes(2, &id.to_be_bytes(), scratch);
            fixed32(6, super::flags(*sampled, Some(true)), scratch);
            bytes(13, scratch, out);
        }
        if rec.status != super::proto::status::StatusCode::Unset {
            scratch.clear();
            varint(3, rec.status as i32 as u64, scratch);
            bytes(15, scratch, out);
        }
        fixed32(
            16,
            super::flags(true, (rec.parent != 0).then_some(rec.parent_remote)),
            out,
        );
    }
}

/// The W3C flags of a span context, with OTLP's "is remote" bits.
fn flags(sampled: bool, remote: Option<bool>) -> u32 {
    let sampled = u32::from(sampled);
    match remote {
        Some(true) => {
            sampled
                | proto::SpanFlags::ContextHasIsRemoteMask as u32
                | proto::SpanFlags::ContextIsRemoteMask as u32
        }
        Some(false) => sampled | proto::SpanFlags::ContextHasIsRemoteMask as u32,
        None => sampled,
    }
}

/// Encodes export requests; the parts that never change (the `Resource`
/// and `InstrumentationScope`) are encoded once, and the buffers are kept
/// from one batch to the next.
struct Encoder {
    resource: Vec<u8>,
    scope: Vec<u8>,
    spans: Vec<u8>,
    one: Vec<u8>,
    scratch: Vec<u8>,
}

impl Encoder {
    fn new(service_name: &str) -> Encoder {
        use prost::Message as _;
        let resource = super::transport::resource(service_name);
        let scope = super::transport::scope();
        Encoder {
            resource: resource.encode_to_vec(),
            scope: scope.encode_to_vec(),
            spans: Vec::new(),
            one: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// One `ExportTraceServiceRequest` (one resource, one scope) for a
    /// batch of ended spans, as protobuf bytes.
    fn encode(&mut self, batch: &[Rec]) -> Vec<u8> {
        self.spans.clear();
        for rec in batch {
            self.one.clear();
            wire::span(rec, &mut self.scratch, &mut self.one);
            wire::bytes(2, &self.one, &mut self.spans);
        }
        // ScopeSpans { scope = 1, spans = 2 } inside ResourceSpans {
        // resource = 1, scope_spans = 2 } inside the request {
        // resource_spans = 1 }: the lengths are known now, so the spans are
        // copied once, after the heads.
        let scope_spans = wire::field_len(self.scope.len()) + self.spans.len();
        let resource_spans = wire::field_len(self.resource.len()) + wire::field_len(scope_spans);
        let mut request = Vec::with_capacity(wire::field_len(resource_spans));
        wire::head(1, resource_spans, &mut request);
        wire::bytes(1, &self.resource, &mut request);
        wire::head(2, scope_spans, &mut request);
        wire::bytes(1, &self.scope, &mut request);
        request.extend_from_slice(&self.spans);
        request
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::any_value;

    use super::*;

    #[test]
    fn ratio_sampling_uses_the_low_63_bits() {
        SAMPLE_BOUND.store((0.25 * (1u64 << 63) as f64) as u64, Ordering::Relaxed);
        let kept = (0..10_000u128)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
            .filter(|t| sample(*t))
            .count();
        SAMPLE_BOUND.store(u64::MAX, Ordering::Relaxed);
        assert!((2_000..3_000).contains(&kept), "{kept}");
        assert!(sample(1));
    }

    fn rec(parent: u64, remote: bool) -> Rec {
        Rec {
            trace: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            id: 0x00f0_67aa_0ba9_02b7,
            parent,
            parent_remote: remote,
            name: "gateway.request",
            kind: proto::span::SpanKind::Server,
            start: 1_700_000_000_000_000_000,
            end: 1_700_000_000_000_123_456,
            attrs: {
                let mut a = Attrs::default();
                a.put_str("path", "/hello");
                a.put("status", Value::I64(200));
                a.put("big", Value::I64(-5));
                a.put("ratio", Value::F64(0.25));
                a.put("cached", Value::Bool(true));
                a.dropped = 2;
                a
            },
            status: proto::status::StatusCode::Error,
            events: vec![Event {
                time: 1_700_000_000_000_000_500,
                name: "slow".into(),
                attrs: {
                    let mut a = Attrs::default();
                    a.put_str("level", "WARN");
                    a
                },
            }],
            dropped_events: 0,
            links: vec![(7, 9, true)],
        }
    }

    #[test]
    fn encoded_spans_decode_as_the_otlp_messages() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message as _;
        let mut encoder = Encoder::new("shop");
        let body = encoder.encode(&[rec(0, false), rec(0x1122, true)]);
        let req = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        let resource = rs.resource.as_ref().unwrap();
        let service = resource
            .attributes
            .iter()
            .find(|kv| kv.key == "service.name");
        assert_eq!(
            service
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value),
            Some(any_value::Value::StringValue("shop".into()))
        );
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "atoll");
        assert_eq!(ss.spans.len(), 2);
        let (root, child) = (&ss.spans[0], &ss.spans[1]);
        assert_eq!(root.trace_id, hex_bytes("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(root.span_id, hex_bytes("00f067aa0ba902b7"));
        assert!(root.parent_span_id.is_empty());
        assert_eq!(root.flags, 1);
        assert_eq!(child.parent_span_id, 0x1122u64.to_be_bytes().to_vec());
        assert_eq!(child.flags, 1 | 0x100 | 0x200);
        assert_eq!(root.name, "gateway.request");
        assert_eq!(root.kind, proto::span::SpanKind::Server as i32);
        assert_eq!(root.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(root.end_time_unix_nano, 1_700_000_000_000_123_456);
        let values: Vec<(String, Option<any_value::Value>)> = root
            .attributes
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone().and_then(|v| v.value)))
            .collect();
        assert_eq!(
            values,
            vec![
                (
                    "path".into(),
                    Some(any_value::Value::StringValue("/hello".into()))
                ),
                ("status".into(), Some(any_value::Value::IntValue(200))),
                ("big".into(), Some(any_value::Value::IntValue(-5))),
                ("ratio".into(), Some(any_value::Value::DoubleValue(0.25))),
                ("cached".into(), Some(any_value::Value::BoolValue(true))),
            ]
        );
        assert_eq!(root.dropped_attributes_count, 2);
        assert_eq!(root.events.len(), 1);
        assert_eq!(root.events[0].name, "slow");
        assert_eq!(root.events[0].time_unix_nano, 1_700_000_000_000_000_500);
        assert_eq!(root.events[0].attributes[0].key, "level");
        assert_eq!(root.links.len(), 1);
        assert_eq!(root.links[0].trace_id, 7u128.to_be_bytes().to_vec());
        assert_eq!(root.links[0].span_id, 9u64.to_be_bytes().to_vec());
        assert_eq!(
            root.status.as_ref().map(|s| s.code),
            Some(proto::status::StatusCode::Error as i32)
        );
        // An empty batch is still a well-formed request.
        assert!(ExportTraceServiceRequest::decode(&encoder.encode(&[])[..]).is_ok());
    }

    fn hex_bytes(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }
}
