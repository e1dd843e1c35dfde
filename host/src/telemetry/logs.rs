//! Log aggregation: guest stdout and stderr lines, `wasi:logging` records and
//! the host's own events, each with the component, version and trace id it
//! belongs to, kept in memory for `GET /v1/logs` and `atoll logs --app`.
//!
//! ```
//! use std::sync::Arc;
//! use atoll::telemetry::logs::{Level, LogHub, LogQuery, LogRecord, Source};
//!
//! let hub = LogHub::new(2);
//! let component: Arc<str> = Arc::from("orders");
//! for message in ["one", "two", "three"] {
//!     hub.push(LogRecord::new(Level::Info, Source::Stdout, message).from(&component, &Arc::from("1.0.0")));
//! }
//! let q = LogQuery { component: Some("orders".into()), ..LogQuery::default() };
//! let kept: Vec<_> = hub.query(&q).iter().map(|r| r.message.to_string()).collect();
//! assert_eq!(kept, ["two", "three"]);
//! ```
//!
//! # What goes in
//! - Each line a guest writes to stdout or stderr (`source` `stdout`,
//!   `stderr`; level `info`: the streams carry no level), captured in
//!   `sandbox/output.rs`.
//! - Each `wasi:logging` record (`source` `log`, its level and context),
//!   from `sandbox/logging.rs`, at every level: the ring keeps what the
//!   guests said and queries filter by level.
//! - The host's own `warn` and `error` events, and `info` events with a
//!   `component` field (deploys, rollbacks, health), through the tracing
//!   layer [`HostEvents`] (`source` `host`, the event's target as context).
//!   Their other fields are appended to the message as `key=value`.
//!
//! Guest records go to the hub directly rather than through `tracing`: they
//! are kept whatever `ATOLL_LOG` filters out of the process's own log, and
//! carry the component and version as shared strings, not formatted copies.
//! They are also logged as tracing events (target `guest`, fields
//! `component`, `version`, `trace_id`), so `--log-format json` ships them.
//!
//! # One hub per process
//! The host's events arrive through a tracing layer, and the tracing
//! subscriber is process-global; so is the hub it feeds ([`hub`]). A process
//! runs one host (`atoll up`). Hosts started inside one test process share
//! it: their tests tell records apart by component and trace id.
//!
//! # Bounds
//! The ring keeps the newest [`CAPACITY`] records, and fewer when their
//! messages take more than [`MAX_BYTES`]. A message is cut at
//! [`MAX_MESSAGE`] bytes (on a character boundary) and the record says how
//! many bytes were cut (`truncated`); a context at [`MAX_CONTEXT`]. Request
//! and response payloads never reach the hub: only what a guest writes or
//! logs, and the host's messages.
//!
//! # Cost
//! A record is one allocation for the record and one for its message; the
//! component and version are shared (`Arc<str>`), the trace id is a `u128`.
//! Pushing takes a short lock (append, maybe drop the oldest, hand the record
//! to followers, if any).

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Records the ring keeps.
pub const CAPACITY: usize = 10_000;
/// Most bytes of messages and contexts the ring keeps (records are dropped
/// oldest first past it): 2,048 records of the longest message.
pub const MAX_BYTES: usize = 16 << 20;
/// Longest message kept; the rest is cut and counted.
pub const MAX_MESSAGE: usize = 8 << 10;
/// Longest `wasi:logging` context kept.
pub const MAX_CONTEXT: usize = 256;
/// Records a follower may fall behind by before it misses some.
pub const FOLLOW_BUFFER: usize = 4096;

/// The process's hub (see the module docs for why there is one).
pub fn hub() -> &'static LogHub {
    static HUB: LazyLock<LogHub> = LazyLock::new(|| LogHub::new(CAPACITY));
    &HUB
}

/// A record's severity, `wasi:logging`'s levels; ordered from `trace` up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// `trace`.
    Trace,
    /// `debug`.
    Debug,
    /// `info`.
    Info,
    /// `warn`.
    Warn,
    /// `error`.
    Error,
    /// `critical` (guests only).
    Critical,
}

impl Level {
    const ALL: [Level; 6] = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Critical,
    ];

    /// Its lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Critical => "critical",
        }
    }

    fn of(level: &tracing::Level) -> Level {
        match *level {
            tracing::Level::TRACE => Level::Trace,
            tracing::Level::DEBUG => Level::Debug,
            tracing::Level::INFO => Level::Info,
            tracing::Level::WARN => Level::Warn,
            tracing::Level::ERROR => Level::Error,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Level, String> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("level `{s}` is not one of trace, debug, info, warn, error, critical")
            })
    }
}

/// Where a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A line the guest wrote to stdout.
    Stdout,
    /// A line the guest wrote to stderr.
    Stderr,
    /// A `wasi:logging` record.
    Log,
    /// The host's own event.
    Host,
}

impl Source {
    const ALL: [Source; 4] = [Source::Stdout, Source::Stderr, Source::Log, Source::Host];

    /// Its lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Stdout => "stdout",
            Source::Stderr => "stderr",
            Source::Log => "log",
            Source::Host => "host",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Source, String> {
        Source::ALL
            .into_iter()
            .find(|x| x.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("source `{s}` is not one of stdout, stderr, log, host"))
    }
}

/// A W3C trace id; written as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub u128);

impl TraceId {
    /// Exactly 32 hex digits, not all zero.
    pub fn from_hex(s: &str) -> Option<TraceId> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(s, 16)
            .ok()
            .filter(|t| *t != 0)
            .map(TraceId)
    }

    /// The trace id of a valid `traceparent` header value.
    pub fn from_traceparent(header: &str) -> Option<TraceId> {
        super::span::SpanContext::parse(header).map(|c| TraceId(c.trace))
    }
}

/// The trace this thread is working for, if any: that of the current span
/// ([`super::span`]), which the gateway and the bus set for each request and
/// delivery with export on or off.
pub fn current_trace() -> Option<TraceId> {
    super::span::current_trace_id().map(TraceId)
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl FromStr for TraceId {
    type Err = String;

    fn from_str(s: &str) -> Result<TraceId, String> {
        TraceId::from_hex(s).ok_or_else(|| {
            format!("trace id `{s}` is not 32 hex digits (not all zero), as in a traceparent")
        })
    }
}

impl Serialize for TraceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TraceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TraceId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Numbers records in the order the hub took them (per process);
    /// set by [`LogHub::push`].
    pub seq: u64,
    /// When it was made, Unix milliseconds.
    pub time_ms: u64,
    /// Its severity.
    pub level: Level,
    /// Where it came from.
    pub source: Source,
    /// The component that wrote it, or the one a host event is about (empty
    /// when none).
    #[serde(default, with = "arc_str", skip_serializing_if = "is_empty")]
    pub component: Arc<str>,
    /// That component's version (empty when not known).
    #[serde(default, with = "arc_str", skip_serializing_if = "is_empty")]
    pub version: Arc<str>,
    /// The trace of the request or message being handled, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<TraceId>,
    /// `wasi:logging`'s context, or a host event's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Box<str>>,
    /// The text, at most [`MAX_MESSAGE`] bytes.
    pub message: Box<str>,
    /// Bytes cut off the end of the message.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub truncated: u64,
}

fn is_empty(s: &Arc<str>) -> bool {
    s.is_empty()
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `Arc<str>` as a plain string (serde's `rc` feature is not on).
mod arc_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
        Ok(Arc::from(String::deserialize(d)?))
    }
}

impl LogRecord {
    /// A record made now, of no component, with `message` cut at
    /// [`MAX_MESSAGE`] bytes.
    pub fn new(level: Level, source: Source, message: &str) -> LogRecord {
        let (message, truncated) = cut(message, MAX_MESSAGE);
        LogRecord {
            seq: 0,
            time_ms: now_ms(),
            level,
            source,
            component: Arc::default(),
            version: Arc::default(),
            trace_id: None,
            context: None,
            message: message.into(),
            truncated,
        }
    }

    /// Of this component version.
    pub fn from(mut self, component: &Arc<str>, version: &Arc<str>) -> LogRecord {
        self.component = component.clone();
        self.version = version.clone();
        self
    }

    /// In this trace.
    pub fn in_trace(mut self, trace_id: Option<TraceId>) -> LogRecord {
        self.trace_id = trace_id;
        self
    }

    /// With a context, cut at [`MAX_CONTEXT`] bytes.
    pub fn with_context(mut self, context: &str) -> LogRecord {
        self.context = Some(cut(context, MAX_CONTEXT).0.into());
        self
    }

    /// Adds `bytes` cut before the record was made.
    pub fn cut_before(mut self, bytes: u64) -> LogRecord {
        self.truncated += bytes;
        self
    }

    /// What it holds on the heap, roughly, for [`MAX_BYTES`].
    fn size(&self) -> usize {
        std::mem::size_of::<LogRecord>()
            + self.message.len()
            + self.context.as_ref().map_or(0, |c| c.len())
    }
}

/// `s` cut to at most `max` bytes on a character boundary, and how many
/// bytes were cut.
pub fn cut(s: &str, max: usize) -> (&str, u64) {
    if s.len() <= max {
        return (s, 0);
    }
    let end = s.floor_char_boundary(max);
    (&s[..end], (s.len() - end) as u64)
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Which records a query or a follower wants. Every filter given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Only this component's records.
    pub component: Option<String>,
    /// Only from this source.
    pub source: Option<Source>,
    /// Only at this level or above.
    pub level: Option<Level>,
    /// Only made at or after this time (Unix ms).
    pub since_ms: Option<u64>,
    /// Only of this trace.
    pub trace_id: Option<TraceId>,
    /// The newest this many (all when `None`).
    pub limit: Option<usize>,
}

impl LogQuery {
    /// Whether `r` passes every filter.
    pub fn matches(&self, r: &LogRecord) -> bool {
        self.component.as_deref().is_none_or(|c| *r.component == *c)
            && self.source.is_none_or(|s| r.source == s)
            && self.level.is_none_or(|l| r.level >= l)
            && self.since_ms.is_none_or(|t| r.time_ms >= t)
            && self.trace_id.is_none_or(|t| r.trace_id == Some(t))
    }
}

/// The newest records, and the way to follow new ones.
pub struct LogHub {
    ring: Mutex<Ring>,
    follow: broadcast::Sender<Arc<LogRecord>>,
    capacity: usize,
    max_bytes: usize,
}

struct Ring {
    records: VecDeque<Arc<LogRecord>>,
    /// [`LogRecord::size`] of the records held.
    bytes: usize,
    next_seq: u64,
    /// Records dropped to stay within the bounds.
    evicted: u64,
}

impl LogHub {
    /// A hub of the newest `capacity` records (at least one) and at most
    /// [`MAX_BYTES`].
    pub fn new(capacity: usize) -> LogHub {
        LogHub {
            ring: Mutex::new(Ring {
                records: VecDeque::new(),
                bytes: 0,
                next_seq: 1,
                evicted: 0,
            }),
            follow: broadcast::channel(FOLLOW_BUFFER).0,
            capacity: capacity.max(1),
            max_bytes: MAX_BYTES,
        }
    }

    /// Keeps a record (numbering it), dropping the oldest past the bounds,
    /// and hands it to the followers.
    pub fn push(&self, mut record: LogRecord) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        record.seq = ring.next_seq;
        ring.next_seq += 1;
        ring.bytes += record.size();
        let record = Arc::new(record);
        ring.records.push_back(record.clone());
        while ring.records.len() > self.capacity
            || (ring.bytes > self.max_bytes && ring.records.len() > 1)
        {
            if let Some(old) = ring.records.pop_front() {
                ring.bytes -= old.size();
                ring.evicted += 1;
            }
        }
        // Under the lock: followers see records in `seq` order, and one that
        // subscribes under it gets exactly the records after its backlog.
        // With no follower this fails at once, which is fine.
        let _ = self.follow.send(record);
    }

    /// The newest `q.limit` matching records, oldest first.
    pub fn query(&self, q: &LogQuery) -> Vec<Arc<LogRecord>> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        Self::newest(&ring, q)
    }

    fn newest(ring: &Ring, q: &LogQuery) -> Vec<Arc<LogRecord>> {
        let mut out: Vec<Arc<LogRecord>> = ring
            .records
            .iter()
            .rev()
            .filter(|r| q.matches(r))
            .take(q.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        out.reverse();
        out
    }

    /// [`LogHub::query`], and a follower that yields each matching record
    /// pushed after it, once.
    pub fn follow(&self, q: &LogQuery) -> (Vec<Arc<LogRecord>>, LogFollower) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.follow.subscribe();
        let backlog = Self::newest(&ring, q);
        (
            backlog,
            LogFollower {
                rx,
                query: q.clone(),
            },
        )
    }

    /// Records held now.
    pub fn len(&self) -> usize {
        self.ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .records
            .len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records dropped so far to stay within the bounds.
    pub fn evicted(&self) -> u64 {
        self.ring.lock().unwrap_or_else(|e| e.into_inner()).evicted
    }
}

/// What a [`LogFollower`] yields.
#[derive(Debug, Clone)]
pub enum Followed {
    /// A matching record, just pushed.
    Record(Arc<LogRecord>),
    /// This many records (matching or not) went by while the follower was
    /// more than [`FOLLOW_BUFFER`] behind.
    Lagged(u64),
}

/// New records matching a query, as they are pushed.
pub struct LogFollower {
    rx: broadcast::Receiver<Arc<LogRecord>>,
    query: LogQuery,
}

impl LogFollower {
    /// The next matching record; `None` only if the hub is gone.
    pub async fn next(&mut self) -> Option<Followed> {
        loop {
            match self.rx.recv().await {
                Ok(r) if self.query.matches(&r) => return Some(Followed::Record(r)),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => return Some(Followed::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Whose guest records these are: one per invocation, shared by its stdout,
/// stderr and `wasi:logging`.
#[derive(Debug)]
pub struct Origin {
    /// The component.
    pub component: Arc<str>,
    /// Its version.
    pub version: Arc<str>,
    /// The trace of what the invocation handles; set once it is known.
    trace: OnceLock<TraceId>,
}

impl Origin {
    /// An origin with no trace yet.
    pub fn new(component: Arc<str>, version: Arc<str>) -> Origin {
        Origin {
            component,
            version,
            trace: OnceLock::new(),
        }
    }

    /// The trace, once set.
    pub fn trace_id(&self) -> Option<TraceId> {
        self.trace.get().copied()
    }

    /// Sets the trace (the first one set stays).
    pub fn set_trace(&self, id: TraceId) {
        let _ = self.trace.set(id);
    }

    /// A record of this origin, now.
    pub fn record(&self, level: Level, source: Source, message: &str) -> LogRecord {
        LogRecord::new(level, source, message)
            .from(&self.component, &self.version)
            .in_trace(self.trace_id())
    }
}

/// The tracing layer that puts the host's events into [`hub`]: `warn` and
/// `error` events, and `info` events with a `component` field; never the
/// `guest` target (guest records go to the hub directly).
///
/// It picks from what its filter lets through ([`HostEvents::wanted`] in
/// [`Layer::on_event`]). `telemetry::init` gives it the log lines' filter
/// (`ATOLL_LOG`, default `info`); as a plain layer it would never disable a
/// callsite for the others either.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostEvents;

impl HostEvents {
    /// Whether an event with this metadata goes in.
    pub fn wanted(meta: &Metadata<'_>) -> bool {
        meta.is_event()
            && meta.target() != "guest"
            && match *meta.level() {
                tracing::Level::ERROR | tracing::Level::WARN => true,
                tracing::Level::INFO => meta.fields().field("component").is_some(),
                _ => false,
            }
    }
}

impl<S: Subscriber> Layer<S> for HostEvents {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        if !Self::wanted(meta) {
            return;
        }
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let mut record = LogRecord::new(Level::of(meta.level()), Source::Host, &fields.message)
            .in_trace(fields.trace_id.or_else(current_trace))
            .with_context(meta.target());
        if let Some(c) = fields.component {
            record.component = Arc::from(c);
        }
        if let Some(v) = fields.version {
            record.version = Arc::from(v);
        }
        hub().push(record);
    }
}

/// A host event's fields: the message, then ` key=value` for the others.
#[derive(Default)]
struct EventFields {
    message: String,
    rest: String,
    component: Option<String>,
    version: Option<String>,
    trace_id: Option<TraceId>,
}

impl EventFields {
    fn take(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => {
                self.message = value;
                if !self.rest.is_empty() {
                    self.message.push_str(&self.rest);
                    self.rest.clear();
                }
            }
            "component" => self.component = Some(value),
            "version" => self.version = Some(value),
            "trace_id" if TraceId::from_hex(&value).is_some() => {
                self.trace_id = TraceId::from_hex(&value)
            }
            name => {
                use std::fmt::Write;
                let out = match self.message.is_empty() {
                    true => &mut self.rest,
                    false => &mut self.message,
                };
                let _ = write!(out, " {name}={value}");
            }
        }
    }
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.take(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.take(field, format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn record(component: &str, message: &str) -> LogRecord {
        LogRecord::new(Level::Info, Source::Stdout, message)
            .from(&Arc::from(component), &Arc::from("1.0.0"))
    }

    fn messages(records: &[Arc<LogRecord>]) -> Vec<String> {
        records.iter().map(|r| r.message.to_string()).collect()
    }

    #[test]
    fn the_ring_keeps_the_newest_records() {
        let hub = LogHub::new(5);
        for i in 0..8 {
            hub.push(record("a", &format!("m{i}")));
        }
        assert_eq!(hub.len(), 5);
        assert_eq!(hub.evicted(), 3);
        let all = hub.query(&LogQuery::default());
        assert_eq!(messages(&all), ["m3", "m4", "m5", "m6", "m7"]);
        assert_eq!(
            all.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [4, 5, 6, 7, 8]
        );
        let newest = hub.query(&LogQuery {
            limit: Some(2),
            ..LogQuery::default()
        });
        assert_eq!(messages(&newest), ["m6", "m7"]);
    }

    #[test]
    fn the_ring_stays_within_its_bytes() {
        let hub = LogHub::new(CAPACITY);
        let big = "x".repeat(MAX_MESSAGE);
        let fits = MAX_BYTES / (MAX_MESSAGE + std::mem::size_of::<LogRecord>());
        for _ in 0..fits + 10 {
            hub.push(record("a", &big));
        }
        assert_eq!(hub.len(), fits);
        assert_eq!(hub.evicted(), 10);
    }

    #[test]
    fn messages_are_cut_on_a_character_boundary_and_counted() {
        let long = format!("{}é{}", "a".repeat(MAX_MESSAGE - 1), "b".repeat(100));
        let r = LogRecord::new(Level::Info, Source::Log, &long).with_context(&"c".repeat(300));
        assert_eq!(r.message.len(), MAX_MESSAGE - 1);
        assert_eq!(r.truncated, 102);
        assert_eq!(r.context.as_deref().map(str::len), Some(MAX_CONTEXT));
        assert_eq!(cut("short", 10), ("short", 0));
    }

    #[test]
    fn filters_combine() {
        let hub = LogHub::new(100);
        let trace = TraceId(0x0af7651916cd43dd8448eb211c80319c);
        hub.push(record("a", "a-out").in_trace(Some(trace)));
        hub.push(record("b", "b-out"));
        let mut warn = record("a", "a-warn");
        warn.level = Level::Warn;
        warn.source = Source::Log;
        hub.push(warn);
        let mut old = record("a", "a-old");
        old.time_ms = 1_000;
        hub.push(old);
        let q = |f: fn(&mut LogQuery)| {
            let mut q = LogQuery::default();
            f(&mut q);
            messages(&hub.query(&q))
        };
        assert_eq!(
            q(|q| q.component = Some("a".into())),
            ["a-out", "a-warn", "a-old"]
        );
        assert_eq!(q(|q| q.component = Some("c".into())), Vec::<String>::new());
        assert_eq!(q(|q| q.source = Some(Source::Log)), ["a-warn"]);
        assert_eq!(q(|q| q.level = Some(Level::Warn)), ["a-warn"]);
        assert_eq!(q(|q| q.level = Some(Level::Error)), Vec::<String>::new());
        assert_eq!(
            q(|q| q.trace_id = Some(TraceId(0x0af7651916cd43dd8448eb211c80319c))),
            ["a-out"]
        );
        assert_eq!(
            q(|q| q.since_ms = Some(now_ms() - 60_000)),
            ["a-out", "b-out", "a-warn"]
        );
    }

    #[tokio::test]
    async fn a_follower_gets_each_later_matching_record_once() {
        let hub = LogHub::new(100);
        hub.push(record("a", "before"));
        let q = LogQuery {
            component: Some("a".into()),
            ..LogQuery::default()
        };
        let (backlog, mut follower) = hub.follow(&q);
        assert_eq!(messages(&backlog), ["before"]);
        hub.push(record("b", "other"));
        hub.push(record("a", "after"));
        let Some(Followed::Record(r)) = follower.next().await else {
            panic!("no record")
        };
        assert_eq!(&*r.message, "after");
        // Falling behind is reported, not hidden.
        for i in 0..FOLLOW_BUFFER + 5 {
            hub.push(record("a", &format!("flood {i}")));
        }
        let Some(Followed::Lagged(n)) = follower.next().await else {
            panic!("no lag reported")
        };
        assert_eq!(n, 5);
    }

    #[test]
    fn records_serialize_with_hex_trace_ids_and_without_empty_fields() {
        let mut r = record("orders", "hello")
            .in_trace(TraceId::from_traceparent(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ))
            .with_context("guest");
        r.time_ms = 5;
        r.seq = 9;
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "seq": 9, "time_ms": 5, "level": "info", "source": "stdout",
                "component": "orders", "version": "1.0.0",
                "trace_id": "0af7651916cd43dd8448eb211c80319c",
                "context": "guest", "message": "hello"
            })
        );
        assert_eq!(serde_json::from_value::<LogRecord>(json).unwrap(), r);
        let host = LogRecord::new(Level::Warn, Source::Host, "x");
        let json = serde_json::to_value(&host).unwrap();
        assert!(json.get("component").is_none(), "{json}");
        assert!(json.get("trace_id").is_none(), "{json}");
    }

    #[test]
    fn parsing_levels_sources_and_trace_ids() {
        assert_eq!("WARN".parse::<Level>(), Ok(Level::Warn));
        assert!(Level::Critical > Level::Error && Level::Trace < Level::Debug);
        assert_eq!(
            "loud".parse::<Level>().unwrap_err(),
            "level `loud` is not one of trace, debug, info, warn, error, critical"
        );
        assert_eq!("stderr".parse::<Source>(), Ok(Source::Stderr));
        assert!("file".parse::<Source>().is_err());
        for bad in [
            "",
            "0af7651916cd43dd8448eb211c80319",
            "0af7651916cd43dd8448eb211c80319cc",
            "+af7651916cd43dd8448eb211c80319c",
            "0af7651916cd43dd8448eb211c80319g",
            "00000000000000000000000000000000",
        ] {
            assert!(TraceId::from_hex(bad).is_none(), "{bad}");
        }
        for bad in ["", "00", "00-0af7651916cd43dd8448eb211c80319c", "garbage"] {
            assert!(TraceId::from_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_layer_takes_warnings_and_component_events() {
        // The layer feeds the process hub; this test's own component name
        // keeps its records apart from other tests'.
        let subscriber = tracing_subscriber::registry().with(HostEvents);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                component = "layer-test",
                limit = 3,
                "concurrency limit reached"
            );
            tracing::info!(component = "layer-test", version = "1.2.0", "deployed");
            tracing::info!("no component: not taken");
            tracing::debug!(component = "layer-test", "debug: not taken");
            tracing::info!(target: "guest", component = "layer-test", "guest: not taken");
            tracing::error!(
                trace_id = "5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e",
                "failed: {}",
                "disk full"
            );
        });
        let q = LogQuery {
            component: Some("layer-test".into()),
            ..LogQuery::default()
        };
        let got = hub().query(&q);
        assert_eq!(
            messages(&got),
            ["concurrency limit reached limit=3", "deployed"]
        );
        assert_eq!(got[0].level, Level::Warn);
        assert_eq!(got[0].source, Source::Host);
        assert_eq!(
            got[0].context.as_deref(),
            Some("atoll::telemetry::logs::tests")
        );
        assert_eq!(&*got[1].version, "1.2.0");
        let q = LogQuery {
            trace_id: TraceId::from_hex("5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e"),
            source: Some(Source::Host),
            ..LogQuery::default()
        };
        let failed = hub().query(&q);
        assert_eq!(messages(&failed), ["failed: disk full"]);
        assert_eq!(failed[0].level, Level::Error);
    }
}
