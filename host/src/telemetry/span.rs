//! The host's spans: `gateway.request`, `component.invoke`, `kv.*`,
//! `call.invoke`, `bus.publish`, `bus.commit`, `bus.deliver`,
//! `http.outbound`, `gateway.auth` and `gateway.rate_limit`.
//!
//! A [`Span`] is recorded here, not through `tracing`: with `tracing`
//! spans every request paid for the subscriber's registry (a slab entry and
//! an extension map per span, and an enter and an exit through each layer's
//! filter on every poll of the request's future), which was most of what
//! trace export cost `GET /hello`. Here a span is one of three things:
//!
//! - nothing (export off, and no trace to carry);
//! - a context only: the trace and span ids that travel in `traceparent`
//!   and that log records carry, but nothing recorded (export off, or the
//!   trace is not sampled);
//! - a recorded span (export on and sampled, or `atoll::span` logged at
//!   debug): the ids plus one [`Rec`] behind a lock, queued for the exporter
//!   (or written as a log line) when the last handle is dropped.
//!
//! The span a thread works for is the *current* one: [`Span::instrument`]
//! makes a span current for each poll of a future (moving it into a
//! thread-local and back, which costs two moves and no atomics), and
//! [`Span::enter`] for a synchronous scope. A new span's parent is the
//! current span unless it continues a remote context (a client's or a
//! message's `traceparent`). Warnings logged while a recorded span is current
//! become its events ([`SpanEvents`]); log records take the current trace id
//! ([`current_trace_id`]).

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

use super::otlp::{self, Attrs, Event, Rec, Value};

/// A span's kind, as OTLP has it (`Server` for a request, `Client` for a
/// call or an outbound request, `Producer` and `Consumer` for messages).
pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// A W3C trace context: the trace, a span in it, and the sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace id (never 0).
    pub trace: u128,
    /// The span id (never 0).
    pub span: u64,
    /// Whether the trace is sampled (recorded and exported).
    pub sampled: bool,
}

impl SpanContext {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>` (lowercase hex, as W3C trace
    /// context requires); all-zero ids are invalid. Read digit by digit in
    /// one pass: every request and message with a trace context goes
    /// through here, and `from_str_radix` after a separate check took
    /// several times longer.
    pub fn parse(text: &str) -> Option<SpanContext> {
        let mut parts = text.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        let (version, flags) = (lower_hex(version)?, lower_hex(flags)?);
        if version == 0xff || (version == 0 && parts.next().is_some()) {
            return None;
        }
        let trace = lower_hex(trace).filter(|t| *t != 0)?;
        let span = lower_hex(span).filter(|s| *s != 0)? as u64;
        Some(SpanContext {
            trace,
            span,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` header value: `00-<trace>-<span>-<flags>`.
    pub fn traceparent(&self) -> String {
        String::from_utf8_lossy(&self.traceparent_bytes()).into_owned()
    }

    /// The `traceparent` header value as bytes. Written digit by digit: it
    /// is made for every request, and `format!` with `{:032x}` took several
    /// times longer.
    pub fn traceparent_bytes(&self) -> [u8; 55] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        for (i, digit) in out[3..35].iter_mut().enumerate() {
            *digit = HEX[(self.trace >> (124 - 4 * i) & 0xf) as usize];
        }
        for (i, digit) in out[36..52].iter_mut().enumerate() {
            *digit = HEX[(self.span >> (60 - 4 * i) & 0xf) as usize];
        }
        if self.sampled {
            out[54] = b'1';
        }
        out
    }
}

/// The value of up to 32 lowercase hex digits.
fn lower_hex(digits: &str) -> Option<u128> {
    digits.bytes().try_fold(0u128, |value, b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(value << 4 | u128::from(digit))
    })
}

/// A new nonzero trace id.
pub fn new_trace_id() -> u128 {
    fastrand::u128(1..)
}

/// A new nonzero span id.
pub fn new_span_id() -> u64 {
    fastrand::u64(1..)
}

/// A span of the host's work (see the module doc). Cloning gives another
/// handle to the same span; it ends when the last handle is dropped.
#[derive(Clone, Default)]
pub struct Span(State);

#[derive(Clone, Default)]
enum State {
    #[default]
    None,
    Context(SpanContext),
    Recorded(Arc<Recorded>),
}

/// A sampled span while it is open.
struct Recorded {
    context: SpanContext,
    rec: Mutex<Rec>,
}

impl Drop for Recorded {
    fn drop(&mut self) {
        let mut rec = std::mem::take(self.rec.get_mut().unwrap_or_else(|e| e.into_inner()));
        rec.end = otlp::now_nanos();
        if logging() {
            tracing::debug!(
                target: "atoll::span",
                trace_id = %format_args!("{:032x}", rec.trace),
                span_id = %format_args!("{:016x}", rec.id),
                parent_id = %format_args!("{:016x}", rec.parent),
                duration_us = rec.end.saturating_sub(rec.start) / 1000,
                error = rec.status == StatusCode::Error,
                "{} {}",
                rec.name,
                otlp::Shown(&rec.attrs),
            );
        }
        if otlp::exporting() {
            otlp::finish(rec);
        }
    }
}

/// Whether ended spans are written to the log lines
/// (`ATOLL_LOG=info,atoll::span=debug`).
fn logging() -> bool {
    tracing::enabled!(target: "atoll::span", tracing::Level::DEBUG)
}

/// Whether spans are recorded: exported, or written to the log lines.
/// Otherwise a span is at most a trace context.
pub fn recording() -> bool {
    otlp::exporting() || logging()
}

impl State {
    fn context(&self) -> Option<SpanContext> {
        match self {
            State::None => None,
            State::Context(c) => Some(*c),
            State::Recorded(r) => Some(r.context),
        }
    }

    /// Runs `f` on the record, if this span is recorded.
    fn record(&self, f: impl FnOnce(&mut Attributes<'_>)) {
        if let State::Recorded(r) = self {
            let mut rec = r.rec.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut Attributes { rec: &mut rec });
        }
    }
}

thread_local! {
    /// The span this thread works for (see [`Span::instrument`]).
    static CURRENT: RefCell<State> = const { RefCell::new(State::None) };
}

impl Span {
    /// A child of the current span. Nothing when spans are not recorded
    /// (the current span stays current for what runs inside).
    pub fn new(name: &'static str, kind: SpanKind) -> Span {
        if !recording() {
            return Span(State::None);
        }
        let parent = current_context();
        Span::start(name, kind, parent, false)
    }

    /// A span that continues `remote` (a client's or a message's trace
    /// context) or, without one, starts a new trace. Not recorded, it is
    /// the remote context alone, so what runs inside logs its trace id.
    pub fn continuing(name: &'static str, kind: SpanKind, remote: Option<SpanContext>) -> Span {
        if !recording() {
            return Span(remote.map_or(State::None, State::Context));
        }
        Span::start(name, kind, remote, true)
    }

    /// A context that is not recorded: the trace ids for what runs inside
    /// (their log records, the messages they publish).
    pub fn context_only(context: SpanContext) -> Span {
        Span(State::Context(context))
    }

    fn start(
        name: &'static str,
        kind: SpanKind,
        parent: Option<SpanContext>,
        remote: bool,
    ) -> Span {
        let (trace, sampled) = match parent {
            Some(p) => (p.trace, p.sampled),
            None => {
                let trace = new_trace_id();
                (trace, otlp::sample(trace))
            }
        };
        let context = SpanContext {
            trace,
            span: new_span_id(),
            sampled,
        };
        if !sampled {
            return Span(State::Context(context));
        }
        let mut rec = otlp::recycled();
        rec.trace = trace;
        rec.id = context.span;
        rec.parent = parent.map_or(0, |p| p.span);
        rec.parent_remote = remote && parent.is_some();
        rec.name = name;
        rec.kind = kind;
        rec.start = otlp::now_nanos();
        Span(State::Recorded(Arc::new(Recorded {
            context,
            rec: Mutex::new(rec),
        })))
    }

    /// Whether this span is recorded (sampled, with export on or spans
    /// logged): worth computing attributes for.
    pub fn is_recording(&self) -> bool {
        matches!(self.0, State::Recorded(_))
    }

    /// The span's trace context, if it has one.
    pub fn context(&self) -> Option<SpanContext> {
        self.0.context()
    }

    /// The `traceparent` of this span when it is exported (export on,
    /// sampled or not): what it starts elsewhere (a callee, a message, an
    /// outbound request) continues from it.
    pub fn exported_traceparent(&self) -> Option<String> {
        if !otlp::exporting() {
            return None;
        }
        self.context().map(|c| c.traceparent())
    }

    /// Sets attributes (only when recording; `f` is not called otherwise).
    pub fn record(&self, f: impl FnOnce(&mut Attributes<'_>)) {
        self.0.record(f);
    }

    /// `self` with attributes set (see [`Span::record`]).
    pub fn with(self, f: impl FnOnce(&mut Attributes<'_>)) -> Span {
        self.record(f);
        self
    }

    /// Links this span to another trace context (a delivery to its
    /// publisher's span).
    pub fn link(&self, to: SpanContext) {
        self.record(|a| a.rec.links.push((to.trace, to.span, to.sampled)));
    }

    /// Runs `inner` with this span current on each poll. A span that is
    /// nothing takes the current span's context instead, so a future that
    /// moves to a task of its own still logs the trace it was started in.
    pub fn instrument<F: Future>(self, inner: F) -> Instrumented<F> {
        let span = match self.0 {
            State::None => Span(current_context().map_or(State::None, State::Context)),
            _ => self,
        };
        Instrumented { span, inner }
    }

    /// Makes this span current until the guard is dropped (for synchronous
    /// work; the span ends with the guard unless it has other handles).
    pub fn enter(self) -> Entered {
        match self.0 {
            State::None => Entered { outer: None },
            mine => Entered {
                outer: Some(swap_current(mine)),
            },
        }
    }
}

/// Puts `state` in the current slot and returns what was there.
fn swap_current(state: State) -> State {
    CURRENT.with(|c| match c.try_borrow_mut() {
        Ok(mut slot) => std::mem::replace(&mut *slot, state),
        // Only reachable if a `with_current` closure swapped spans itself.
        Err(_) => State::None,
    })
}

/// The context of the current span, if any.
pub fn current_context() -> Option<SpanContext> {
    CURRENT.with(|c| c.try_borrow().ok().and_then(|s| s.context()))
}

/// The trace this thread is working for, if any (for log records).
pub fn current_trace_id() -> Option<u128> {
    current_context().map(|c| c.trace)
}

/// Sets attributes on the current span (when it is recorded).
pub fn record_current(f: impl FnOnce(&mut Attributes<'_>)) {
    CURRENT.with(|c| {
        if let Ok(state) = c.try_borrow() {
            state.record(f);
        }
    });
}

/// Keeps a span current for a synchronous scope ([`Span::enter`]).
pub struct Entered {
    outer: Option<State>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Some(outer) = self.outer.take() {
            // The span itself ends here (unless cloned).
            drop(swap_current(outer));
        }
    }
}

pin_project_lite::pin_project! {
    /// A future run in a span ([`Span::instrument`]).
    pub struct Instrumented<F> {
        span: Span,
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        if matches!(this.span.0, State::None) {
            return this.inner.poll(cx);
        }
        // Moved into the thread-local for the poll and back after it, also
        // when the poll panics.
        struct Back<'a>(&'a mut Span, State);
        impl Drop for Back<'_> {
            fn drop(&mut self) {
                self.0.0 = swap_current(std::mem::take(&mut self.1));
            }
        }
        let outer = swap_current(std::mem::take(&mut this.span.0));
        let _back = Back(this.span, outer);
        this.inner.poll(cx)
    }
}

/// What a span's attributes are set through ([`Span::record`]).
pub struct Attributes<'a> {
    rec: &'a mut Rec,
}

impl Attributes<'_> {
    /// A string attribute.
    pub fn str(&mut self, key: &'static str, value: &str) -> &mut Self {
        self.rec.attrs.put_str(key, value);
        self
    }

    /// A string attribute written by `Display` (no allocation).
    pub fn display(&mut self, key: &'static str, value: impl fmt::Display) -> &mut Self {
        let attrs = &mut self.rec.attrs;
        let start = attrs.text.len() as u32;
        let _ = write!(attrs.text, "{value}");
        let end = attrs.text.len() as u32;
        attrs.put(key, Value::Str(start, end));
        self
    }

    /// An integer attribute.
    pub fn int(&mut self, key: &'static str, value: i64) -> &mut Self {
        self.rec.attrs.put(key, Value::I64(value));
        self
    }

    /// An unsigned attribute (as an integer, or as text past `i64::MAX`).
    pub fn uint(&mut self, key: &'static str, value: u64) -> &mut Self {
        match i64::try_from(value) {
            Ok(v) => self.int(key, v),
            Err(_) => self.display(key, value),
        }
    }

    /// Marks the span failed (OTLP status `ERROR`).
    pub fn error(&mut self) -> &mut Self {
        self.rec.status = StatusCode::Error;
        self
    }
}

/// Events longer than this (a message, an error chain) are cut.
const MAX_EVENT_TEXT: usize = 4096;

/// The layer that turns the host's warnings and errors, logged while a
/// recorded span is current, into that span's events; an error also marks
/// the span failed. Installed only with export on.
pub struct SpanEvents;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        record_current(|a| {
            let rec = &mut *a.rec;
            let level = *event.metadata().level();
            if level == tracing::Level::ERROR {
                rec.status = StatusCode::Error;
            }
            if rec.events.len() >= otlp::MAX_EVENTS {
                rec.dropped_events += 1;
                return;
            }
            let mut fields = EventFields {
                attrs: Attrs::default(),
                name: String::new(),
            };
            fields.attrs.put_str("level", level.as_str());
            event.record(&mut fields);
            if fields.name.is_empty() {
                fields.name = event.metadata().name().to_owned();
            }
            rec.events.push(Event {
                time: otlp::now_nanos(),
                name: fields.name,
                attrs: fields.attrs,
            });
        });
    }
}

/// An event's fields: `message` becomes its name, the rest attributes.
struct EventFields {
    attrs: Attrs,
    name: String,
}

impl EventFields {
    fn text(&mut self, field: &Field, write: impl FnOnce(&mut String)) {
        if field.name() == "message" {
            write(&mut self.name);
            truncate(&mut self.name, MAX_EVENT_TEXT);
            return;
        }
        let attrs = &mut self.attrs;
        let start = attrs.text.len();
        write(&mut attrs.text);
        truncate(&mut attrs.text, start + MAX_EVENT_TEXT);
        let end = attrs.text.len() as u32;
        attrs.put(field.name(), Value::Str(start as u32, end));
    }
}

/// Cuts `text` to at most `len` bytes, on a character boundary.
fn truncate(text: &mut String, len: usize) {
    if text.len() > len {
        let mut at = len;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, |t| t.push_str(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` fields arrive here too, and their Debug is their Display.
        self.text(field, |t| {
            let _ = write!(t, "{value:?}");
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.text(field, |t| {
            let _ = write!(t, "{value}");
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.attrs.put(field.name(), Value::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(v) => self.attrs.put(field.name(), Value::I64(v)),
            Err(_) => self.text(field, |t| {
                let _ = write!(t, "{value}");
            }),
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.attrs.put(field.name(), Value::F64(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.attrs.put(field.name(), Value::Bool(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trip() {
        let c = SpanContext::parse(TP).unwrap();
        assert_eq!(c.trace, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert_eq!((c.span, c.sampled), (0x00f0_67aa_0ba9_02b7, true));
        assert_eq!(c.traceparent(), TP);
        let unsampled = SpanContext::parse(&TP.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled);
        assert_eq!(unsampled.traceparent(), TP.replace("-01", "-00"));
        let small = SpanContext {
            trace: 1,
            span: 0xab,
            sampled: true,
        };
        assert_eq!(
            small.traceparent(),
            format!("00-{:032x}-{:016x}-01", 1, 0xab)
        );
        assert!(
            SpanContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
    }

    /// Polls `f` once (everything here is ready at once).
    fn run<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        match f
            .as_mut()
            .poll(&mut TaskContext::from_waker(std::task::Waker::noop()))
        {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("not ready"),
        }
    }

    #[test]
    fn a_context_is_current_while_its_future_runs_and_carries_over() {
        let outer = SpanContext::parse(TP).unwrap();
        assert_eq!(current_context(), None);
        let seen = run(Span::context_only(outer).instrument(async {
            let here = current_context();
            // A span that is nothing (export off) leaves the current one,
            // and a future instrumented with it takes the current context
            // along (as a task of its own would need).
            let nested = Span(State::None).instrument(async { current_context() });
            let entered = Span(State::None).enter();
            let still = current_context();
            drop(entered);
            (here, run(nested), still)
        }));
        assert_eq!(seen, (Some(outer), Some(outer), Some(outer)));
        assert_eq!(current_context(), None, "restored after the poll");
    }

    #[test]
    fn the_current_span_is_restored_when_a_poll_panics() {
        let outer = SpanContext::parse(TP).unwrap();
        let caught = std::panic::catch_unwind(|| {
            run(Span::context_only(outer).instrument(async { panic!("guest bug") }))
        });
        assert!(caught.is_err());
        assert_eq!(current_context(), None);
    }

    fn rec_of(span: &Span) -> std::sync::MutexGuard<'_, Rec> {
        match &span.0 {
            State::Recorded(r) => r.rec.lock().unwrap(),
            _ => panic!("not recorded"),
        }
    }

    #[test]
    fn children_take_the_current_span_as_parent_and_remote_parents_are_marked() {
        let client = SpanContext::parse(TP).unwrap();
        let root = Span::start("gateway.request", SpanKind::Server, Some(client), true);
        let root_ctx = root.context().unwrap();
        assert_eq!(root_ctx.trace, client.trace);
        assert_ne!(root_ctx.span, client.span);
        {
            let rec = rec_of(&root);
            assert_eq!((rec.parent, rec.parent_remote), (client.span, true));
            assert_eq!(rec.kind, SpanKind::Server);
        }
        let probe = root.clone();
        let child = run(root.instrument(async {
            record_current(|a| _ = a.str("route", "/hello"));
            Span::start("kv.get", SpanKind::Internal, current_context(), false)
        }));
        let rec = rec_of(&child);
        assert_eq!(
            (rec.trace, rec.parent, rec.parent_remote),
            (client.trace, root_ctx.span, false)
        );
        let root_rec = rec_of(&probe);
        assert_eq!(root_rec.attrs.list.len(), 1);
        assert_eq!(root_rec.attrs.list[0].0, "route");
    }

    #[test]
    fn an_unsampled_parent_gives_context_only_children() {
        let mut client = SpanContext::parse(TP).unwrap();
        client.sampled = false;
        let span = Span::start("bus.deliver", SpanKind::Consumer, Some(client), true);
        assert!(!span.is_recording());
        let c = span.context().unwrap();
        assert_eq!((c.trace, c.sampled), (client.trace, false));
        assert_ne!(c.span, client.span);
    }

    #[test]
    fn attributes_share_one_text_buffer_and_errors_mark_the_status() {
        // A sampled parent (a new trace would depend on the sample ratio,
        // which another test changes).
        let parent = SpanContext::parse(TP);
        let span = Span::start("call.invoke", SpanKind::Client, parent, false);
        span.record(|a| {
            a.str("caller", "front")
                .display(
                    "function",
                    format_args!("{}#{}", "test:calls/quote", "greet"),
                )
                .uint("attempts", 2)
                .uint("big", u64::MAX)
                .error();
        });
        let rec = rec_of(&span);
        let text: Vec<String> = rec
            .attrs
            .list
            .iter()
            .map(|(k, v)| match v {
                Value::Str(a, b) => format!("{k}={}", &rec.attrs.text[*a as usize..*b as usize]),
                Value::I64(i) => format!("{k}={i}"),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            text,
            [
                "caller=front",
                "function=test:calls/quote#greet",
                "attempts=2",
                "big=18446744073709551615"
            ]
        );
        assert_eq!(rec.status, StatusCode::Error);
    }
}
