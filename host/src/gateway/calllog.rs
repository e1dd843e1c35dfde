//! The call log: one row per gateway request, rejected ones included, in a
//! log table of its own at `data_dir/calls` (`[gateway.call_log]`).
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use atoll::gateway::calllog::{CallLog, CallQuery, CallRecord};
//! let log = CallLog::open("data".as_ref(), &Default::default())?;
//! log.record(CallRecord { status: 404, path: "/nope".into(), ..Default::default() });
//! let q = CallQuery { status: Some("4xx".into()), ..Default::default() };
//! assert_eq!(log.query(&q).await?.len(), 1);
//! log.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Storage
//! A sled database of its own (not the key-value store's: the log's write
//! rate and deletions never touch component data). Tree `rows` is keyed by
//! big-endian `(time_ms, seq)`, 16 bytes, so a time range is a range scan
//! and the oldest rows are the first keys. `time_ms` is the request's arrival
//! (the row is written when its response ends); `seq` numbers rows in the
//! order they were written and makes keys unique. A value is a format byte
//! then the other fields in postcard (varints and length-prefixed strings;
//! about 150 bytes with the key for a typical row). Tree `meta` holds `seq` (reserved in blocks of
//! [`SEQ_BLOCK`], so a crash never reuses one) and `bytes`, the rows' stored
//! size, which retention compares with `max_size` without touching the files.
//! A row has no place for the Authorization header, cookies or bodies.
//!
//! # Writing
//! [`CallLog::record`] puts the row in a bounded channel and returns: it never
//! waits and never fails the request. When the channel is full (the disk is
//! far behind) the row is dropped and counted ([`CallLog::dropped`]; a
//! warning is logged at most every few seconds). One writer thread drains the
//! channel, up to [`MAX_BATCH`] rows at a time, and inserts them; every
//! [`SYNC_EVERY`] it fsyncs, so a crash loses at most that much. It inserts
//! row by row rather than with a `sled::Batch`: applying a batch takes a
//! process-wide sled lock that would stall every key-value and bus operation
//! for its duration, a log needs no all-or-nothing groups, and in the bench
//! batches of 1024 were slower (176k rows/s against 265k). Queries ask
//! the writer to empty the channel first, so a query sees every row recorded
//! before it.
//!
//! # Retention
//! [`CallLog::spawn_retention`] deletes rows older than `max_age`, and while
//! the rows take more than `max_size` the oldest ones, down to 90% of it: at
//! start, every minute, and as soon as the writer sees the size pass the
//! limit. `max_size` bounds the rows' bytes, not the files: sled's files
//! were about twice that in the bench (`tests/benches/calllog.rs`), and
//! space freed by deletions is reused rather than given back at once.
//!
//! # Following
//! [`CallLog::follow_query`] returns the matching backlog and a [`Follower`]
//! that yields each matching row as it is written, each row exactly once
//! (the writer's `seq` separates the two), until the host stops.
//!
//! Scans are not indexed by component or route: a filtered query reads rows
//! newest first until it has `limit` matches, in the worst case the whole
//! table (about two million rows a second on the bench's 2 cores). A time
//! range narrows the scan to its keys.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};

use crate::config::CallLogSpec;

/// Rows waiting for the writer before [`CallLog::record`] drops them.
pub const CHANNEL: usize = 65_536;
/// Most rows the writer takes from the channel before it answers flushes.
pub const MAX_BATCH: usize = 1024;
/// How often written rows are fsynced.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);
/// After a batch that did not fill up, the writer sleeps this long before
/// it looks again, so under load it wakes about a hundred times a second
/// instead of once per row: a blocked receiver makes every `record()` a
/// futex wake-up and a context switch, which cost the request path more
/// than writing the row does.
pub const BATCH_PAUSE: Duration = Duration::from_millis(10);
/// How often retention runs (besides at start and when over `max_size`).
pub const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// Rows a follower may fall behind before it skips some.
pub const FOLLOW_BUFFER: usize = 4096;
/// Rows a query returns when it gives no limit.
pub const DEFAULT_LIMIT: usize = 100;
/// Sequence numbers reserved in `meta` at a time.
pub const SEQ_BLOCK: u64 = 1 << 20;

/// The format byte of a stored single row.
const FORMAT: u8 = 1;
/// The format byte of a stored block of rows: `[BLOCK][min time_ms: u64
/// BE][rows: u32 BE]`, then per row `[len: u32 BE][postcard of (time_ms,
/// seq, Row)]`, sorted by (time_ms, seq). Its key is (the newest row's
/// time_ms, the lowest seq), so a scan from `key(since, 0)` finds every
/// block with a row at or after `since`, and age retention deletes whole
/// blocks whose newest row is too old.
///
/// Rows are stored in blocks because a sled insert costs about 4 µs: one
/// per row took a tenth of a core at 35k requests/s, on the same two cores
/// that serve them. A block of up to [`BLOCK_ROWS`] costs one insert.
const BLOCK: u8 = 2;
/// Most rows in one block (retention by size removes whole blocks, so this
/// also bounds its granularity: about 10 KiB).
const BLOCK_ROWS: usize = 64;
/// Most time the rows of one block span (the granularity of retention by age).
const BLOCK_SPAN_MS: u64 = 60_000;
/// Keys a retention pass deletes per scan.
const DELETE_CHUNK: usize = 4096;
/// The least time between two "rows dropped" warnings.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// One request as the call log keeps it. Never the Authorization header or bodies.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CallRecord {
    /// When the request arrived, Unix milliseconds.
    pub time_ms: u64,
    /// Client IP address.
    pub client: String,
    /// Request method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The route pattern that matched, if any.
    pub route: Option<String>,
    /// The component that served it, if any.
    pub component: Option<String>,
    /// Its version.
    pub version: Option<String>,
    /// The upstream backend (URL or component) that served it, if any.
    pub backend: Option<String>,
    /// Response status.
    pub status: u16,
    /// From the request's arrival to the end of the response body, microseconds.
    pub latency_us: u64,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// W3C trace id (32 hex).
    pub trace_id: String,
    /// The verified token's subject.
    pub subject: Option<String>,
    /// Why the gateway itself answered, when it did: "not_found", "unauthorized",
    /// "forbidden", "rate_limited", "body_too_large", "body_timeout",
    /// "overloaded", "timeout", "no_backend", "removed".
    pub rejected: Option<String>,
    /// Whether the response body was sent completely.
    pub complete: bool,
    /// The row's number in the log, in the order rows were written; set by
    /// the log (what [`CallLog::record`] is given is ignored).
    #[serde(default)]
    pub seq: u64,
}

/// A query over the log.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CallQuery {
    /// Only rows of this component.
    pub component: Option<String>,
    /// Only rows whose route pattern is this.
    pub route: Option<String>,
    /// `404`, a class such as `5xx`, or several separated by commas
    /// (`404,5xx`); see [`StatusFilter`].
    pub status: Option<String>,
    /// Only requests that arrived at or after this (Unix ms).
    pub since_ms: Option<u64>,
    /// Only requests that arrived before this (Unix ms).
    pub until_ms: Option<u64>,
    /// Newest N (default [`DEFAULT_LIMIT`]).
    pub limit: Option<usize>,
}

/// Statuses a query keeps: codes and classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusFilter(Vec<StatusMatch>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusMatch {
    Code(u16),
    /// The hundreds digit: 5 for `5xx`.
    Class(u16),
}

impl StatusFilter {
    /// `404`, `5xx` (or `5XX`), or several of them separated by commas.
    pub fn parse(s: &str) -> Result<StatusFilter, String> {
        let items = s
            .split(',')
            .map(|item| {
                let item = item.trim();
                let bad = || {
                    format!(
                        "status `{item}` is neither a code from 100 to 599 (`404`) nor a class (`5xx`)"
                    )
                };
                match item.as_bytes() {
                    [d @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
                        Ok(StatusMatch::Class(u16::from(d - b'0')))
                    }
                    [b'1'..=b'5', b'0'..=b'9', b'0'..=b'9'] => {
                        item.parse().map(StatusMatch::Code).map_err(|_| bad())
                    }
                    _ => Err(bad()),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StatusFilter(items))
    }

    /// Whether `status` is one of them.
    pub fn matches(&self, status: u16) -> bool {
        self.0.iter().any(|m| match *m {
            StatusMatch::Code(c) => c == status,
            StatusMatch::Class(c) => status / 100 == c,
        })
    }
}

/// A time given as a duration ago (`10m`, `1h30m`, `2d`) or an RFC 3339 time
/// (`2026-01-02T15:04:05Z`, `2026-01-02T17:04:05.5+02:00`; without an
/// offset it is UTC), as Unix milliseconds.
pub fn parse_time(s: &str, now_ms: u64) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(ago) = humantime::parse_duration(s) {
        return Ok(now_ms.saturating_sub(ago.as_millis().min(u64::MAX as u128) as u64));
    }
    let bad = |why: String| {
        format!(
            "`{s}` is neither a duration ago (`10m`, `2h`) nor an RFC 3339 time (`2026-01-02T15:04:05Z`): {why}"
        )
    };
    // humantime reads UTC times only: take the offset off here.
    let (base, offset_secs) = match s.as_bytes() {
        [.., b'Z' | b'z'] => (&s[..s.len() - 1], 0i64),
        [.., sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] if s.len() > 19 => {
            let digits = [h1, h2, m1, m2];
            if !digits.iter().all(|d| d.is_ascii_digit()) {
                return Err(bad("the offset is not ±HH:MM".into()));
            }
            let n = |a: &u8, b: &u8| i64::from((a - b'0') * 10 + (b - b'0'));
            let secs = n(h1, h2) * 3600 + n(m1, m2) * 60;
            let secs = if *sign == b'-' { -secs } else { secs };
            (&s[..s.len() - 6], secs)
        }
        _ => (s, 0),
    };
    let local = humantime::parse_rfc3339_weak(base).map_err(|e| bad(e.to_string()))?;
    let ms = local
        .duration_since(UNIX_EPOCH)
        .map_err(|_| bad("it is before 1970".into()))?
        .as_millis() as i64;
    u64::try_from(ms - offset_secs * 1000).map_err(|_| bad("it is before 1970".into()))
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retained {
    /// Rows older than `max_age`.
    pub by_age: u64,
    /// The oldest rows, to get under `max_size`.
    pub by_size: u64,
}

/// What a [`Follower`] yields.
#[derive(Debug, Clone)]
pub enum Followed {
    /// A matching row, just written.
    Row(Arc<CallRecord>),
    /// This many rows were skipped: the follower fell behind by more than
    /// [`FOLLOW_BUFFER`] rows (matching or not).
    Lagged(u64),
}

/// New rows matching a query, each once, as they are written.
pub struct Follower {
    rx: broadcast::Receiver<Arc<CallRecord>>,
    /// Rows before this seq were in the backlog.
    from_seq: u64,
    filter: Filter,
    stopping: watch::Receiver<bool>,
}

impl Follower {
    /// The next matching row; `None` once the log stops (host shutdown or
    /// [`CallLog::close`]).
    pub async fn next(&mut self) -> Option<Followed> {
        loop {
            let got = tokio::select! {
                biased;
                _ = self.stopping.wait_for(|stopping| *stopping) => return None,
                got = self.rx.recv() => got,
            };
            match got {
                Ok(row) if row.seq >= self.from_seq && self.filter.matches(&row) => {
                    return Some(Followed::Row(row));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => return Some(Followed::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// The log table in `data_dir/calls`.
pub struct CallLog {
    spec: CallLogSpec,
    dir: PathBuf,
    /// `None` once closed.
    store: ArcSwapOption<Store>,
    tx: SyncSender<Msg>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    shared: Arc<Shared>,
    /// Flipped when the host stops or the log closes: followers end.
    stopping: watch::Sender<bool>,
}

/// The open database.
struct Store {
    db: sled::Db,
    rows: sled::Tree,
    meta: sled::Tree,
}

/// What the writer thread and the log share.
struct Shared {
    follow: broadcast::Sender<Arc<CallRecord>>,
    /// Rows recorded but not stored.
    dropped: AtomicU64,
    /// Stored size of the rows (keys and values).
    bytes: AtomicU64,
    /// Set by the writer when `bytes` passes `max_size`.
    over_size: Notify,
    max_size: u64,
}

enum Msg {
    Row(Box<CallRecord>),
    /// Answered once every row sent before it is written (and, with `sync`,
    /// fsynced), with the next seq.
    Flush {
        sync: bool,
        done: oneshot::Sender<anyhow::Result<u64>>,
    },
    /// Writes what is pending, fsyncs and stops.
    Close(oneshot::Sender<anyhow::Result<()>>),
}

impl CallLog {
    /// Opens (or creates) the log in `data_dir/calls` and starts its writer.
    pub fn open(data_dir: &Path, spec: &CallLogSpec) -> anyhow::Result<Arc<CallLog>> {
        let dir = data_dir.join("calls");
        let db = crate::kv::open_locked(
            sled::Config::new()
                .path(&dir)
                // The writer fsyncs every SYNC_EVERY itself.
                .flush_every_ms(None),
        )
        .with_context(|| {
            format!(
                "opening the call log at {} (is another atoll using this data_dir?)",
                dir.display()
            )
        })?;
        let rows = db
            .open_tree("rows")
            .context("opening the call log's rows")?;
        let meta = db
            .open_tree("meta")
            .context("opening the call log's meta")?;
        let store = Arc::new(Store { db, rows, meta });
        let (next_seq, bytes) = store.load_meta()?;
        let shared = Arc::new(Shared {
            follow: broadcast::channel(FOLLOW_BUFFER).0,
            dropped: AtomicU64::new(0),
            bytes: AtomicU64::new(bytes),
            over_size: Notify::new(),
            max_size: spec.max_size,
        });
        let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL);
        let writer = Writer {
            store: store.clone(),
            shared: shared.clone(),
            next_seq,
            reserved: next_seq,
        };
        let writer = std::thread::Builder::new()
            .name("atoll-calllog".into())
            .spawn(move || writer.run(rx))
            .context("starting the call log's writer thread")?;
        Ok(Arc::new(CallLog {
            spec: spec.clone(),
            dir,
            store: ArcSwapOption::from(Some(store)),
            tx,
            writer: Mutex::new(Some(writer)),
            shared,
            stopping: watch::channel(false).0,
        }))
    }

    /// Records a row; never blocks the request and never fails it. When the
    /// writer is too far behind (or the log is closed) the row is dropped
    /// and counted in [`CallLog::dropped`].
    pub fn record(&self, record: CallRecord) {
        if self.tx.try_send(Msg::Row(Box::new(record))).is_err() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Rows recorded but not stored: the channel was full, the log was
    /// closed, or the disk refused them.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// The stored size of the rows, which retention keeps under `max_size`.
    pub fn stored_bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    /// The size of the database's files (sled's overhead and space not yet
    /// reclaimed included).
    pub fn size_on_disk(&self) -> anyhow::Result<u64> {
        Ok(self.store()?.db.size_on_disk()?)
    }

    /// Rows matching `q`, oldest first: the newest `limit` of them. Every row
    /// recorded before the call is included (unless it was dropped).
    pub async fn query(&self, q: &CallQuery) -> anyhow::Result<Vec<CallRecord>> {
        let filter = Filter::of(q)?;
        self.flush(false).await?;
        self.scan(filter, q.limit.unwrap_or(DEFAULT_LIMIT), None)
            .await
    }

    /// The rows matching `q` (as [`CallLog::query`]) and a [`Follower`] of
    /// the matching rows written after them.
    pub async fn follow_query(&self, q: &CallQuery) -> anyhow::Result<(Vec<CallRecord>, Follower)> {
        let filter = Filter::of(q)?;
        // Subscribe first: rows written from now on reach the follower, and
        // the flush's seq says which of them the backlog has.
        let rx = self.shared.follow.subscribe();
        let stopping = self.stopping.subscribe();
        let from_seq = self.flush(false).await?;
        let backlog = self
            .scan(
                filter.clone(),
                q.limit.unwrap_or(DEFAULT_LIMIT),
                Some(from_seq),
            )
            .await?;
        let follower = Follower {
            rx,
            from_seq,
            filter,
            stopping,
        };
        Ok((backlog, follower))
    }

    /// [`CallLog::follow_query`] as newline-delimited JSON: the backlog, then
    /// each new matching row, until the log stops or the receiver is
    /// dropped. A line `{"lagged": n}` says n rows were skipped because the
    /// reader fell behind.
    pub async fn follow_json(&self, q: &CallQuery) -> anyhow::Result<mpsc::Receiver<Bytes>> {
        let (backlog, mut follower) = self.follow_query(q).await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut lines = Vec::new();
            for row in &backlog {
                json_line(&mut lines, row);
            }
            if !lines.is_empty() && tx.send(Bytes::from(lines)).await.is_err() {
                return;
            }
            loop {
                let next = tokio::select! {
                    _ = tx.closed() => return,
                    next = follower.next() => next,
                };
                let mut line = Vec::new();
                match next {
                    None => return,
                    Some(Followed::Row(row)) => json_line(&mut line, &*row),
                    Some(Followed::Lagged(n)) => {
                        json_line(&mut line, &serde_json::json!({ "lagged": n }))
                    }
                }
                if tx.send(Bytes::from(line)).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// Each row as it is written (unfiltered; it may lag, see
    /// [`Followed::Lagged`]). [`CallLog::follow_query`] adds the backlog and
    /// a filter.
    pub fn follow(&self) -> broadcast::Receiver<Arc<CallRecord>> {
        self.shared.follow.subscribe()
    }

    /// Ends every follower (the host is stopping); rows are still written.
    pub fn stop_following(&self) {
        self.stopping.send_replace(true);
    }

    /// Writes every pending row and fsyncs: rows recorded before the call
    /// survive a crash after it.
    pub async fn sync(&self) -> anyhow::Result<()> {
        self.flush(true).await.map(|_| ())
    }

    /// Deletes rows past the retention limits now.
    pub async fn retain(&self) -> anyhow::Result<Retained> {
        let store = self.store()?;
        let shared = self.shared.clone();
        let spec = self.spec.clone();
        let now = now_ms();
        tokio::task::spawn_blocking(move || store.retain(&shared, &spec, now))
            .await
            .context("the call log's retention task failed")?
    }

    /// Deletes rows past the retention limits until `shutdown` flips: at
    /// once, every [`RETENTION_EVERY`], and when the rows pass `max_size`.
    /// Then ends the followers.
    pub fn spawn_retention(
        self: &Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(RETENTION_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => break,
                    _ = every.tick() => {}
                    _ = log.shared.over_size.notified() => {}
                }
                match log.retain().await {
                    Ok(r) if r != Retained::default() => tracing::info!(
                        by_age = r.by_age,
                        by_size = r.by_size,
                        bytes = log.stored_bytes(),
                        "call log retention deleted rows"
                    ),
                    Ok(_) => {}
                    // Closed: nothing left to do.
                    Err(_) if log.store.load().is_none() => break,
                    Err(e) => tracing::warn!(
                        error = %format!("{e:#}"),
                        dir = %log.dir.display(),
                        "call log retention failed; trying again in a minute"
                    ),
                }
            }
            log.stop_following();
        })
    }

    /// Writes what is pending, fsyncs and closes the database (its files are
    /// free for another open). Later rows are dropped; later queries fail.
    pub async fn close(&self) -> anyhow::Result<()> {
        self.stop_following();
        if self.store.swap(None).is_none() {
            return Ok(());
        }
        let (done, closed) = oneshot::channel();
        let tx = self.tx.clone();
        let sent = tokio::task::spawn_blocking(move || tx.send(Msg::Close(done)).is_ok())
            .await
            .unwrap_or(false);
        self.wake_writer();
        let result = match sent {
            true => closed
                .await
                .unwrap_or_else(|_| Err(anyhow!("the call log's writer stopped"))),
            false => Err(anyhow!("the call log's writer stopped")),
        };
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        result.with_context(|| format!("closing the call log at {}", self.dir.display()))
    }

    /// Ends the writer's pause between batches: a flush or close is
    /// answered at once, while rows alone wait for the pause to end.
    fn wake_writer(&self) {
        if let Some(writer) = &*self.writer.lock().unwrap_or_else(|e| e.into_inner()) {
            writer.thread().unpark();
        }
    }

    fn store(&self) -> anyhow::Result<Arc<Store>> {
        self.store
            .load_full()
            .ok_or_else(|| anyhow!("the call log is closed"))
    }

    /// Has the writer write everything sent before; returns the next seq.
    async fn flush(&self, sync: bool) -> anyhow::Result<u64> {
        self.store()?;
        let (done, flushed) = oneshot::channel();
        let tx = self.tx.clone();
        // The channel may be full: wait for room off the runtime.
        let sent = tokio::task::spawn_blocking(move || tx.send(Msg::Flush { sync, done }).is_ok())
            .await
            .unwrap_or(false);
        if !sent {
            bail!("the call log is closed");
        }
        self.wake_writer();
        flushed
            .await
            .map_err(|_| anyhow!("the call log is closed"))?
    }

    async fn scan(
        &self,
        filter: Filter,
        limit: usize,
        before_seq: Option<u64>,
    ) -> anyhow::Result<Vec<CallRecord>> {
        let store = self.store()?;
        tokio::task::spawn_blocking(move || store.scan(&filter, limit, before_seq))
            .await
            .context("the call log's query task failed")?
    }
}

/// A [`CallQuery`] made ready to test rows.
#[derive(Debug, Clone)]
struct Filter {
    component: Option<String>,
    route: Option<String>,
    status: Option<StatusFilter>,
    since_ms: u64,
    until_ms: Option<u64>,
}

impl Filter {
    fn of(q: &CallQuery) -> anyhow::Result<Filter> {
        Ok(Filter {
            component: q.component.clone(),
            route: q.route.clone(),
            status: q
                .status
                .as_deref()
                .map(StatusFilter::parse)
                .transpose()
                .map_err(|e| anyhow!(e))?,
            since_ms: q.since_ms.unwrap_or(0),
            until_ms: q.until_ms,
        })
    }

    fn matches(&self, r: &CallRecord) -> bool {
        r.time_ms >= self.since_ms
            && self.until_ms.is_none_or(|until| r.time_ms < until)
            && (self.component.is_none() || self.component == r.component)
            && (self.route.is_none() || self.route == r.route)
            && self.status.as_ref().is_none_or(|s| s.matches(r.status))
    }
}

fn json_line(out: &mut Vec<u8>, value: &impl Serialize) {
    // Rows and small objects always serialize.
    if serde_json::to_writer(&mut *out, value).is_ok() {
        out.push(b'\n');
    }
}

fn key(time_ms: u64, seq: u64) -> [u8; 16] {
    let mut k = [0; 16];
    k[..8].copy_from_slice(&time_ms.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn split_key(k: &[u8]) -> Option<(u64, u64)> {
    let k: &[u8; 16] = k.try_into().ok()?;
    let (time, seq) = k.split_at(8);
    Some((
        u64::from_be_bytes(time.try_into().ok()?),
        u64::from_be_bytes(seq.try_into().ok()?),
    ))
}

/// A row's stored fields: all but the time and seq, which are its key.
/// Encoded from borrowed strings, decoded into owned ones.
#[derive(Serialize, Deserialize)]
struct Row<S> {
    client: S,
    method: S,
    path: S,
    route: Option<S>,
    component: Option<S>,
    version: Option<S>,
    backend: Option<S>,
    status: u16,
    latency_us: u64,
    bytes_in: u64,
    bytes_out: u64,
    trace_id: S,
    subject: Option<S>,
    rejected: Option<S>,
    complete: bool,
}

fn encode(r: &CallRecord) -> Vec<u8> {
    fn s(o: &Option<String>) -> Option<&str> {
        o.as_deref()
    }
    let row = Row {
        client: r.client.as_str(),
        method: r.method.as_str(),
        path: r.path.as_str(),
        route: s(&r.route),
        component: s(&r.component),
        version: s(&r.version),
        backend: s(&r.backend),
        status: r.status,
        latency_us: r.latency_us,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        trace_id: r.trace_id.as_str(),
        subject: s(&r.subject),
        rejected: s(&r.rejected),
        complete: r.complete,
    };
    let mut out = vec![FORMAT];
    // Serializing strings and integers into a Vec cannot fail.
    postcard::to_io(&row, &mut out).ok();
    out
}

fn decode(k: &[u8], v: &[u8]) -> anyhow::Result<CallRecord> {
    let (time_ms, seq) = split_key(k).ok_or_else(|| anyhow!("a key is not 16 bytes"))?;
    let body = match v.split_first() {
        Some((&FORMAT, body)) => body,
        Some((f, _)) => bail!("row format {f} is unknown to this atoll"),
        None => bail!("an empty row"),
    };
    let r: Row<String> = postcard::from_bytes(body).context("decoding a row")?;
    Ok(CallRecord {
        time_ms,
        client: r.client,
        method: r.method,
        path: r.path,
        route: r.route,
        component: r.component,
        version: r.version,
        backend: r.backend,
        status: r.status,
        latency_us: r.latency_us,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        trace_id: r.trace_id,
        subject: r.subject,
        rejected: r.rejected,
        complete: r.complete,
        seq,
    })
}

fn encode_block(rows: &[CallRecord]) -> Vec<u8> {
    let min_time = rows.iter().map(|r| r.time_ms).min().unwrap_or(0);
    let mut out = Vec::with_capacity(13 + rows.len() * 128);
    out.push(BLOCK);
    out.extend_from_slice(&min_time.to_be_bytes());
    out.extend_from_slice(&(rows.len() as u32).to_be_bytes());
    for r in rows {
        let row = encode(r);
        // Past the format byte: (time_ms, seq) then the row's fields.
        let mut entry = Vec::with_capacity(row.len() + 20);
        postcard::to_io(&(r.time_ms, r.seq), &mut entry).ok();
        entry.extend_from_slice(&row[1..]);
        out.extend_from_slice(&(entry.len() as u32).to_be_bytes());
        out.extend_from_slice(&entry);
    }
    out
}

/// A stored block's (oldest row's time_ms, rows), without decoding it.
fn block_header(v: &[u8]) -> Option<(u64, u64)> {
    match v.first() {
        Some(&BLOCK) if v.len() >= 13 => Some((
            u64::from_be_bytes(v[1..9].try_into().ok()?),
            u64::from(u32::from_be_bytes(v[9..13].try_into().ok()?)),
        )),
        _ => None,
    }
}

/// Rows stored under one key: a block, or a single row.
fn decode_entry(k: &[u8], v: &[u8]) -> anyhow::Result<Vec<CallRecord>> {
    if v.first() != Some(&BLOCK) {
        return Ok(vec![decode(k, v)?]);
    }
    let (_, count) = block_header(v).ok_or_else(|| anyhow!("a block without its header"))?;
    let mut rest = &v[13..];
    let mut rows = Vec::with_capacity(count as usize);
    for _ in 0..count {
        if rest.len() < 4 {
            bail!("a block ends early");
        }
        let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let entry = rest
            .get(4..4 + len)
            .ok_or_else(|| anyhow!("a block ends early"))?;
        rest = &rest[4 + len..];
        let ((time_ms, seq), fields): ((u64, u64), &[u8]) =
            postcard::take_from_bytes(entry).context("decoding a row's key")?;
        let mut single = Vec::with_capacity(fields.len() + 1);
        single.push(FORMAT);
        single.extend_from_slice(fields);
        rows.push(decode(&key(time_ms, seq), &single)?);
    }
    Ok(rows)
}

/// Rows under one stored value.
fn rows_in(v: &[u8]) -> u64 {
    block_header(v).map_or(1, |(_, rows)| rows)
}

fn u64_of(v: Option<sled::IVec>) -> Option<u64> {
    v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
}

fn subtract(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
        Some(b.saturating_sub(n))
    });
}

impl Store {
    /// The next seq to use and the rows' size, from `meta` (or counted, for
    /// a log without them).
    fn load_meta(&self) -> anyhow::Result<(u64, u64)> {
        let seq = u64_of(self.meta.get("seq")?);
        let bytes = u64_of(self.meta.get("bytes")?);
        if let (Some(seq), Some(bytes)) = (seq, bytes) {
            return Ok((seq, bytes));
        }
        let (mut next, mut total) = (0, 0);
        for item in self.rows.iter() {
            let (k, v) = item?;
            total += (k.len() + v.len()) as u64;
            match decode_entry(&k, &v) {
                Ok(rows) => {
                    for r in rows {
                        next = next.max(r.seq + 1);
                    }
                }
                Err(_) => {
                    if let Some((_, seq)) = split_key(&k) {
                        next = next.max(seq + 1);
                    }
                }
            }
        }
        Ok((next, total))
    }

    fn scan(
        &self,
        filter: &Filter,
        limit: usize,
        before_seq: Option<u64>,
    ) -> anyhow::Result<Vec<CallRecord>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        // Every block whose newest row is at or after `since`; a block may
        // hold rows before `since` or after `until`, which the filter drops.
        let entries = self.rows.range(key(filter.since_ms, 0)..);
        let mut unreadable = 0;
        'blocks: for item in entries.rev() {
            let (k, v) = item.context("reading the call log")?;
            if let (Some(until), Some((oldest, _))) = (filter.until_ms, block_header(&v))
                && oldest >= until
            {
                continue;
            }
            let rows = match decode_entry(&k, &v) {
                Ok(rows) => rows,
                Err(e) => {
                    if unreadable == 0 {
                        tracing::warn!(error = %format!("{e:#}"), "skipping an unreadable call log block");
                    }
                    unreadable += 1;
                    continue;
                }
            };
            for row in rows.into_iter().rev() {
                if before_seq.is_some_and(|b| row.seq >= b) || !filter.matches(&row) {
                    continue;
                }
                out.push(row);
                if out.len() == limit {
                    break 'blocks;
                }
            }
        }
        // Blocks are in order of their newest row; rows, by time then seq.
        out.sort_by_key(|r| (r.time_ms, r.seq));
        Ok(out)
    }

    fn retain(&self, shared: &Shared, spec: &CallLogSpec, now_ms: u64) -> anyhow::Result<Retained> {
        let mut done = Retained::default();
        let cutoff = now_ms.saturating_sub(spec.max_age.as_millis() as u64);
        loop {
            let removed = self.remove_oldest(shared, Some(cutoff), u64::MAX)?;
            if removed == 0 {
                break;
            }
            done.by_age += removed;
        }
        if shared.bytes.load(Ordering::Relaxed) > spec.max_size {
            let target = spec.max_size - spec.max_size / 10;
            while shared.bytes.load(Ordering::Relaxed) > target {
                let over = shared.bytes.load(Ordering::Relaxed) - target;
                let removed = self.remove_oldest(shared, None, over)?;
                if removed == 0 {
                    break;
                }
                done.by_size += removed;
            }
        }
        if done != Retained::default() {
            self.meta
                .insert("bytes", &shared.bytes.load(Ordering::Relaxed).to_be_bytes())?;
        }
        Ok(done)
    }

    /// Removes up to [`DELETE_CHUNK`] of the oldest rows: those before
    /// `before_ms`, or (without it) until `bytes` of them are gone. Returns
    /// how many.
    fn remove_oldest(
        &self,
        shared: &Shared,
        before_ms: Option<u64>,
        bytes: u64,
    ) -> anyhow::Result<u64> {
        let rows = match before_ms {
            Some(t) => self.rows.range(..key(t, 0)),
            None => self.rows.iter(),
        };
        let mut picked = Vec::new();
        let mut size = 0;
        for item in rows.take(DELETE_CHUNK) {
            let (k, v) = item?;
            size += (k.len() + v.len()) as u64;
            picked.push(k);
            if size >= bytes {
                break;
            }
        }
        let mut removed = 0;
        for k in picked {
            if let Some(v) = self.rows.remove(&k)? {
                subtract(&shared.bytes, (k.len() + v.len()) as u64);
                removed += rows_in(&v);
            }
        }
        Ok(removed)
    }
}

/// The thread that writes rows.
struct Writer {
    store: Arc<Store>,
    shared: Arc<Shared>,
    next_seq: u64,
    /// Seqs below this are reserved in `meta`.
    reserved: u64,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut last_sync = Instant::now();
        let mut dirty = false;
        let mut last_warning: Option<Instant> = None;
        let mut warned_dropped = 0;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let first = match rx.recv_timeout(SYNC_EVERY) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            batch.extend(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(msg) => batch.push(msg),
                    Err(_) => break,
                }
            }
            let mut flushes = Vec::new();
            let mut close = None;
            let rows_in_batch = batch.len();
            let mut rows = Vec::with_capacity(batch.len());
            for msg in batch.drain(..) {
                match msg {
                    Msg::Row(row) => rows.push(*row),
                    Msg::Flush { sync, done } => flushes.push((sync, done)),
                    Msg::Close(done) => close = Some(done),
                }
            }
            if !rows.is_empty() {
                self.write(rows);
                dirty = true;
            }
            if self.shared.bytes.load(Ordering::Relaxed) > self.shared.max_size {
                self.shared.over_size.notify_one();
            }
            let must_sync = flushes.iter().any(|(sync, _)| *sync) || close.is_some();
            let synced = if must_sync || (dirty && last_sync.elapsed() >= SYNC_EVERY) {
                last_sync = Instant::now();
                dirty = false;
                self.sync().map_err(|e| format!("{e:#}"))
            } else {
                Ok(())
            };
            if let Err(e) = &synced {
                tracing::error!(error = %e, "writing the call log to disk failed");
            }
            for (sync, done) in flushes {
                let _ = done.send(match (&synced, sync) {
                    (Err(e), true) => Err(anyhow!("{e}")),
                    _ => Ok(self.next_seq),
                });
            }
            let dropped = self.shared.dropped.load(Ordering::Relaxed);
            if dropped > warned_dropped
                && last_warning.is_none_or(|at| at.elapsed() >= DROP_WARNING_EVERY)
            {
                tracing::warn!(
                    dropped = dropped - warned_dropped,
                    total = dropped,
                    "call log rows dropped: the writer fell behind (or the disk failed)"
                );
                warned_dropped = dropped;
                last_warning = Some(Instant::now());
            }
            if let Some(done) = close {
                let _ = done.send(synced.map_err(|e| anyhow!("{e}")));
                return;
            }
            if rows_in_batch > 0 && rows_in_batch < MAX_BATCH {
                // Woken early by a flush or close (`wake_writer`).
                std::thread::park_timeout(BATCH_PAUSE);
            }
        }
        // Every sender is gone (the log was dropped without close).
        if dirty && let Err(e) = self.sync() {
            tracing::error!(error = %format!("{e:#}"), "writing the call log to disk failed");
        }
    }

    /// Numbers the rows in arrival order and stores them in blocks.
    fn write(&mut self, mut rows: Vec<CallRecord>) {
        let n = rows.len() as u64;
        if self.next_seq + n > self.reserved {
            let reserved = self.next_seq + n + SEQ_BLOCK;
            if let Err(e) = self.store.meta.insert("seq", &reserved.to_be_bytes()) {
                tracing::error!(error = %e, "writing the call log's meta failed");
                self.shared.dropped.fetch_add(n, Ordering::Relaxed);
                return;
            }
            self.reserved = reserved;
        }
        for row in &mut rows {
            row.seq = self.next_seq;
            self.next_seq += 1;
        }
        let followed: Option<Vec<Arc<CallRecord>>> = (self.shared.follow.receiver_count() > 0)
            .then(|| rows.iter().cloned().map(Arc::new).collect());
        rows.sort_by_key(|r| (r.time_ms, r.seq));
        let mut start = 0;
        while start < rows.len() {
            let mut end = start + 1;
            while end < rows.len()
                && end - start < BLOCK_ROWS
                && rows[end].time_ms - rows[start].time_ms <= BLOCK_SPAN_MS
            {
                end += 1;
            }
            let block = &rows[start..end];
            let newest = block[block.len() - 1].time_ms;
            let lowest = block.iter().map(|r| r.seq).min().unwrap_or(0);
            let k = key(newest, lowest);
            let v = encode_block(block);
            match self.store.rows.insert(k, v.as_slice()) {
                Ok(_) => {
                    self.shared
                        .bytes
                        .fetch_add((k.len() + v.len()) as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    self.shared
                        .dropped
                        .fetch_add(block.len() as u64, Ordering::Relaxed);
                    tracing::debug!(error = %e, "writing call log rows failed");
                }
            }
            start = end;
        }
        for row in followed.into_iter().flatten() {
            let _ = self.shared.follow.send(row);
        }
    }

    fn sync(&self) -> anyhow::Result<()> {
        self.store.meta.insert(
            "bytes",
            &self.shared.bytes.load(Ordering::Relaxed).to_be_bytes(),
        )?;
        self.store.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_codes_classes_or_lists() {
        let f = StatusFilter::parse("404").unwrap();
        assert!(f.matches(404) && !f.matches(403));
        let f = StatusFilter::parse("5xx").unwrap();
        assert!(f.matches(500) && f.matches(599) && !f.matches(404));
        let f = StatusFilter::parse("404, 5XX").unwrap();
        assert!(f.matches(404) && f.matches(503) && !f.matches(200));
        for bad in [
            "", "abc", "600", "099", "6xx", "5x", "40", "4044", "404,", "x5xx",
        ] {
            let e = StatusFilter::parse(bad).unwrap_err();
            assert!(e.contains("neither a code"), "{bad}: {e}");
        }
    }

    #[test]
    fn times_are_durations_ago_or_rfc3339() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_time("10m", now), Ok(now - 600_000));
        assert_eq!(parse_time("1h 30m", now), Ok(now - 5_400_000));
        assert_eq!(parse_time("0s", now), Ok(now));
        assert_eq!(parse_time("100000d", now), Ok(0));
        let t = 1_767_366_245_000; // 2026-01-02T15:04:05Z
        assert_eq!(parse_time("2026-01-02T15:04:05Z", now), Ok(t));
        assert_eq!(parse_time("2026-01-02T15:04:05", now), Ok(t));
        assert_eq!(parse_time("2026-01-02 15:04:05z", now), Ok(t));
        assert_eq!(parse_time("2026-01-02T15:04:05.250Z", now), Ok(t + 250));
        assert_eq!(parse_time("2026-01-02T17:04:05+02:00", now), Ok(t));
        assert_eq!(parse_time("2026-01-02T10:04:05.5-05:00", now), Ok(t + 500));
        for bad in [
            "yesterday",
            "2026-01-02",
            "2026-13-02T15:04:05Z",
            "2026-01-02T15:04:05+2:00",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00+01:00",
        ] {
            let e = parse_time(bad, now).unwrap_err();
            assert!(e.contains("neither a duration ago"), "{bad}: {e}");
        }
    }

    #[test]
    fn rows_round_trip_and_keys_sort_by_time_then_seq() {
        let row = CallRecord {
            time_ms: 1_767_366_245_123,
            client: "::1".into(),
            method: "POST".into(),
            path: "/orders/é".into(),
            route: Some("/orders/...".into()),
            component: Some("orders".into()),
            version: Some("1.2.3".into()),
            backend: None,
            status: 201,
            latency_us: 1234,
            bytes_in: 10,
            bytes_out: 20,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            subject: Some("alice".into()),
            rejected: None,
            complete: true,
            seq: 7,
        };
        let v = encode(&row);
        assert!(v.len() < 100, "{} bytes", v.len());
        assert_eq!(decode(&key(row.time_ms, 7), &v).unwrap(), row);
        assert!(decode(&key(1, 1), &[9, 0]).is_err());
        assert!(decode(&[0; 15], &v).is_err());
        assert!(key(1, u64::MAX) < key(2, 0));
        assert!(key(2, 1) < key(2, 2));
        // A block of rows decodes to the same rows; its header says how many.
        let mut second = row.clone();
        second.seq = 8;
        second.time_ms += 5;
        second.route = None;
        let block = encode_block(&[row.clone(), second.clone()]);
        assert_eq!(block_header(&block), Some((row.time_ms, 2)));
        assert_eq!(rows_in(&block), 2);
        assert_eq!(
            decode_entry(&key(second.time_ms, 7), &block).unwrap(),
            vec![row.clone(), second]
        );
        assert_eq!(decode_entry(&key(row.time_ms, 7), &v).unwrap(), vec![row]);
        assert!(decode_entry(&key(1, 1), &block[..block.len() - 1]).is_err());
    }
}
