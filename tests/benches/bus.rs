//! Message bus throughput and latency, each against a hand-rolled tokio + sled
//! equivalent measured in the same run:
//!
//! (a) Durable publishes: `Bus::publish` from C concurrent tasks (one message
//!     per call, and 16 per call), on a bus opened exactly as the host opens
//!     it but not started, so nothing is delivered while it is measured.
//!     Baseline: the same tasks doing `Tree::insert` of one record (or a batch
//!     of 16) and awaiting a shared `GroupCommit` over `Db::flush()`.
//! (b) Delivery to the `bus-ack` component (acks, no host calls), a fresh
//!     instance per message. Backlog: N messages stored while the host is
//!     down; the host starts and the time until all are acked is measured.
//!     Steady state: 64 publisher tasks and the consumer at once. Baseline: a
//!     tokio mpsc channel to one consumer task doing the sled work of a
//!     delivery (attempt record, read, remove both) without wasm.
//! (c) Publish-to-handler latency at a fixed rate, through the `bus-sink`
//!     component's `record-time` header: the wall clock just before
//!     `Bus::publish` against the wall clock the handler stores (each message
//!     has a partition key of its own; see `latency_part`). Baselines: a
//!     tokio mpsc send/receive, and a durable append (insert + group commit)
//!     followed by the mpsc send.
//!
//! Publishers run as tasks on the host's runtime (multi-thread, 2 workers,
//! like `atoll up`), where a component's publishes run too.
//!
//! `cargo bench -p atoll-tests --bench bus`; `ATOLL_BENCH_SECS` (measured
//! seconds per row, default 3), `ATOLL_BENCH_WARMUP` (default 1),
//! `ATOLL_BENCH_PAYLOAD` (bytes, default 128), `ATOLL_BENCH_MESSAGES` (backlog,
//! default 50000), `ATOLL_BENCH_RATES` (msgs/s for (c), default `1000,2500,5000`),
//! `ATOLL_BENCH_ONLY` (comma list of `publish`, `deliver`, `latency`; default
//! all), `ATOLL_BENCH_PERF=0` to skip counting `sync_file_range` calls (one
//! per sled write buffer) with `perf stat`.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use atoll::bus::{Bus, Origin, Outgoing};
use atoll::host::RunningHost;
use atoll::kv::{GroupCommit, SledBackend};
use atoll_tests::{TestHost, load_manifest};
use common::{env_parse, env_secs, fmt_ns, fmt_rate, histogram, print_table, record};
use hdrhistogram::Histogram;
use tokio::runtime::Runtime;

/// (a): one subscription, so each message is stored once. The bus is never
/// started: nothing is delivered.
const PUBLISH_MANIFEST: &str = r#"
[topics.bench]

[components.ack]
source = "{bus-ack}"
subscriptions = [{ topic = "bench" }]
"#;

/// (b): `PREFETCH` is replaced per row; instances may run as many at once.
const DELIVER_MANIFEST: &str = r#"
[topics.bench]

[components.ack]
source = "{bus-ack}"
limits = { max_concurrency = 256 }
subscriptions = [{ topic = "bench", prefetch = PREFETCH }]
"#;

/// (c): the sink records the wall clock of each delivery with `record-time`.
const LATENCY_MANIFEST: &str = r#"
[topics.lat]

[components.sink]
source = "{bus-sink}"
routes = ["/sink/..."]
subscriptions = [{ topic = "lat", prefetch = 64 }]
"#;

/// Settings of one run.
#[derive(Clone)]
struct Settings {
    warmup: Duration,
    duration: Duration,
    payload: usize,
    backlog: u64,
    rates: Vec<u64>,
    perf: bool,
}

fn main() -> anyhow::Result<()> {
    common::print_machine();
    let only = std::env::var("ATOLL_BENCH_ONLY").unwrap_or_default();
    let wanted = |part: &str| only.is_empty() || only.split(',').any(|o| o.trim() == part);
    let s = Settings {
        warmup: env_secs("ATOLL_BENCH_WARMUP", 1.0),
        duration: env_secs("ATOLL_BENCH_SECS", 3.0),
        payload: env_parse("ATOLL_BENCH_PAYLOAD", 128),
        backlog: env_parse("ATOLL_BENCH_MESSAGES", 50_000),
        rates: std::env::var("ATOLL_BENCH_RATES")
            .unwrap_or_else(|_| "1000,2500,5000".into())
            .split(',')
            .map(|r| r.trim().parse().context("ATOLL_BENCH_RATES"))
            .collect::<anyhow::Result<_>>()?,
        perf: env_parse("ATOLL_BENCH_PERF", 1) != 0 && perf_works(),
    };
    println!(
        "payloads of {} bytes; {:?} warm-up, {:?} measured per row; sync_file_range counted with perf: {}",
        s.payload,
        s.warmup,
        s.duration,
        if s.perf { "yes" } else { "no" }
    );
    atoll::telemetry::init(atoll::telemetry::LogFormat::Text);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Build the guests before anything is timed.
    atoll_tests::manifest_text(PUBLISH_MANIFEST);
    atoll_tests::manifest_text(LATENCY_MANIFEST);

    if wanted("publish") {
        publish_part(&rt, &s)?;
    }
    if wanted("deliver") {
        deliver_part(&rt, &s)?;
    }
    if wanted("latency") {
        latency_part(&rt, &s)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// (a) durable publishes

fn publish_part(rt: &Runtime, s: &Settings) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (storage, bus) = open_bus(PUBLISH_MANIFEST, dir.path())?;
    let raw = RawLog::open()?;
    let payload = vec![b'p'; s.payload];
    let mut rows = Vec::new();
    let mut best_single = 0f64;
    for (tasks, per_call) in [(1, 1), (16, 1), (64, 1), (256, 1), (64, 16)] {
        let (b, p) = (bus.clone(), payload.clone());
        let host = closed_loop(rt, s, (tasks, per_call), None, move |_, _| {
            let (bus, payload) = (b.clone(), p.clone());
            async move {
                let messages = (0..per_call)
                    .map(|_| Outgoing {
                        topic: "bench".into(),
                        payload: payload.clone(),
                        ..Default::default()
                    })
                    .collect();
                bus.publish(Origin::Operator, messages)
                    .await
                    .expect("publish");
            }
        });
        let (r, p) = (raw.clone(), payload.clone());
        let base = closed_loop(
            rt,
            s,
            (tasks, per_call),
            Some(raw.flushes.clone()),
            move |_, _| {
                let (raw, payload) = (r.clone(), p.clone());
                async move {
                    raw.append(per_call, &payload).await;
                }
            },
        );
        if per_call == 1 {
            best_single = best_single.max(host.rate());
        }
        let shape = format!("{tasks} tasks × {per_call} msg");
        let mut row = vec![format!("Bus::publish, {shape}")];
        row.extend(host.cells());
        row.push(format!("{:.0}%", host.rate() / base.rate() * 100.0));
        rows.push(row);
        let mut row = vec![format!("sled insert + GroupCommit, {shape}")];
        row.extend(base.cells());
        row.push(format!("{} flushes", fmt_rate(base.direct_flushes as f64)));
        rows.push(row);
    }
    print_table(
        "(a) durable publishes (returned once durable)",
        &[
            "publisher",
            "msgs/s",
            "calls/s",
            "call p50",
            "call p99",
            "CPU/msg",
            "syncs",
            "msgs/sync",
            "bus/raw",
        ],
        &rows,
    );
    println!(
        "\ngoal: >= 50,000 durable publishes/s (one message per call): {} ({} /s)",
        met(best_single >= 50_000.0),
        fmt_rate(best_single)
    );
    drop(bus);
    drop(storage);
    Ok(())
}

/// A bus opened exactly as the host opens its own, not started.
fn open_bus(toml: &str, dir: &Path) -> anyhow::Result<(Arc<SledBackend>, Arc<Bus>)> {
    let manifest = load_manifest(toml, dir)?;
    let storage = Arc::new(SledBackend::open(&dir.join("kv"))?);
    let bus = Bus::open(&manifest, storage.clone())?;
    Ok((storage, bus))
}

/// The hand-rolled equivalent: one sled tree, keys by `Db::generate_id`,
/// records the size of a stored message, and the host's `GroupCommit`.
#[derive(Clone)]
struct RawLog {
    db: sled::Db,
    tree: sled::Tree,
    commit: Arc<GroupCommit>,
    flushes: Arc<AtomicU64>,
    _dir: Arc<tempfile::TempDir>,
    _backend: Arc<SledBackend>,
}

/// A stored message also holds its id (29 bytes), topic, headers and time.
const RECORD_OVERHEAD: usize = 48;

impl RawLog {
    fn open() -> anyhow::Result<RawLog> {
        let dir = tempfile::tempdir()?;
        // Opened as the host opens its own database.
        let backend = SledBackend::open(dir.path())?;
        let db = backend.db().clone();
        let tree = db.open_tree("raw")?;
        let flushes = Arc::new(AtomicU64::new(0));
        let (flush_db, counter) = (db.clone(), flushes.clone());
        let commit = GroupCommit::start(
            "raw",
            Box::new(move || {
                flush_db.flush().context("flushing sled")?;
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }),
        )?;
        Ok(RawLog {
            db,
            tree,
            commit: Arc::new(commit),
            flushes,
            _dir: Arc::new(dir),
            _backend: Arc::new(backend),
        })
    }

    fn key(seq: u64) -> [u8; 8] {
        seq.to_be_bytes()
    }

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut v = payload.to_vec();
        v.resize(payload.len() + RECORD_OVERHEAD, b'r');
        v
    }

    /// Stores `n` records (one insert, or one batch), without waiting.
    fn stage(&self, n: usize, payload: &[u8]) -> Vec<u64> {
        let seqs: Vec<u64> = (0..n)
            .map(|_| self.db.generate_id().expect("sled id"))
            .collect();
        if n == 1 {
            self.tree
                .insert(Self::key(seqs[0]), Self::record(payload))
                .expect("sled insert");
        } else {
            let mut batch = sled::Batch::default();
            for seq in &seqs {
                batch.insert(&Self::key(*seq), Self::record(payload));
            }
            self.tree.apply_batch(batch).expect("sled batch");
        }
        seqs
    }

    /// Stores `n` records and waits until they are durable.
    async fn append(&self, n: usize, payload: &[u8]) -> Vec<u64> {
        let seqs = self.stage(n, payload);
        self.commit.sync().await.expect("group commit");
        seqs
    }

    /// The sled work of one delivery: record the attempt, read the message,
    /// then remove both (the ack), the way a hand-rolled queue would.
    fn deliver(&self, seq: u64) {
        let mut attempt = Self::key(seq).to_vec();
        attempt.push(b'A');
        self.tree
            .insert(&attempt, &[1u8, 0][..])
            .expect("sled insert");
        let message = self.tree.get(Self::key(seq)).expect("sled get");
        assert!(message.is_some(), "record {seq} missing");
        self.tree.remove(Self::key(seq)).expect("sled remove");
        self.tree.remove(attempt).expect("sled remove");
    }
}

/// What a closed-loop run measured.
struct Run {
    calls: u64,
    messages: u64,
    secs: f64,
    latency: Histogram<u64>,
    /// `sync_file_range` calls in the measured window (perf), if counted:
    /// sled makes one per write buffer it writes, so one per flush, plus one
    /// for each buffer that `Tree::apply_batch` seals early.
    perf_flushes: Option<u64>,
    /// Flushes the raw log's own counter saw in the measured window.
    direct_flushes: u64,
    /// CPU time the whole process used in the measured window.
    cpu_secs: f64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.secs
    }

    /// `msgs/s`, `calls/s`, `call p50`, `call p99`, `CPU/msg`, `syncs`, `msgs/sync`.
    fn cells(&self) -> Vec<String> {
        let flushes = self.perf_flushes;
        vec![
            fmt_rate(self.rate()),
            fmt_rate(self.calls as f64 / self.secs),
            fmt_ns(self.latency.value_at_quantile(0.5) as f64),
            fmt_ns(self.latency.value_at_quantile(0.99) as f64),
            fmt_ns(self.cpu_secs * 1e9 / self.messages.max(1) as f64),
            flushes.map_or("n/a".into(), |f| fmt_rate(f as f64)),
            flushes.map_or("n/a".into(), |f| {
                format!("{:.1}", self.messages as f64 / f.max(1) as f64)
            }),
        ]
    }
}

/// Runs `op(task, seq)` in a loop on `tasks` tasks of `rt` for the warm-up
/// and the measured time; counts the calls that started after the warm-up and
/// finished before the end, each worth `per_call` messages. `counter` (the
/// raw log's flushes) is read at the start and end of the measured time.
fn closed_loop<F, Fut>(
    rt: &Runtime,
    s: &Settings,
    (tasks, per_call): (usize, usize),
    counter: Option<Arc<AtomicU64>>,
    op: F,
) -> Run
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    let (from, end) = (start + s.warmup, start + s.warmup + s.duration);
    let probe = probe_window(from, s.duration, s.perf, counter);
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let op = op.clone();
            rt.spawn(async move {
                let mut h = histogram();
                let (mut calls, mut seq) = (0, 0);
                loop {
                    let began = Instant::now();
                    if began >= end {
                        break;
                    }
                    op(t, seq).await;
                    seq += 1;
                    let done = Instant::now();
                    if began >= from && done <= end {
                        calls += 1;
                        record(&mut h, done - began);
                    }
                }
                (calls, h)
            })
        })
        .collect();
    let mut run = Run {
        calls: 0,
        messages: 0,
        secs: s.duration.as_secs_f64(),
        latency: histogram(),
        perf_flushes: None,
        direct_flushes: 0,
        cpu_secs: 0.0,
    };
    rt.block_on(async {
        for h in handles {
            let (calls, hist) = h.await.expect("bench task");
            run.calls += calls;
            run.latency.add(&hist).expect("same bounds");
        }
    });
    run.messages = run.calls * per_call as u64;
    let (flushes, cpu, counted) = probe.join().expect("probe thread");
    run.perf_flushes = flushes;
    run.cpu_secs = cpu;
    run.direct_flushes = counted;
    run
}

/// `perf stat` counting the process's `sync_file_range` calls.
const PERF_SYNCS: [&str; 4] = ["stat", "-x,", "-e", "syscalls:sys_enter_sync_file_range"];

/// Whether `perf stat` can count syscalls here.
fn perf_works() -> bool {
    Command::new("perf")
        .args(PERF_SYNCS)
        .args(["--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Measures the window `from`..`from + window` from a thread of its own: the
/// CPU time the process used, and (with `perf`) its `sync_file_range` calls,
/// one per sled flush, counted by `perf stat` attached to its threads.
fn probe_window(
    from: Instant,
    window: Duration,
    perf: bool,
    counter: Option<Arc<AtomicU64>>,
) -> std::thread::JoinHandle<(Option<u64>, f64, u64)> {
    std::thread::spawn(move || {
        let count = || counter.as_ref().map_or(0, |c| c.load(Ordering::Relaxed));
        std::thread::sleep(from.saturating_duration_since(Instant::now()));
        let cpu_from = cpu_secs();
        let counted_from = count();
        let child = perf
            .then(|| {
                Command::new("perf")
                    .args(PERF_SYNCS)
                    .arg("-p")
                    .arg(std::process::id().to_string())
                    .args(["--", "sleep"])
                    .arg(format!("{:.3}", window.as_secs_f64()))
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .ok()
            })
            .flatten();
        std::thread::sleep((from + window).saturating_duration_since(Instant::now()));
        let cpu = cpu_secs() - cpu_from;
        let counted = count() - counted_from;
        let flushes = child.and_then(|c| {
            let out = c.wait_with_output().ok()?;
            let text = String::from_utf8_lossy(&out.stderr);
            text.lines()
                .find(|l| l.contains("sync_file_range"))
                .and_then(|l| l.split(',').next())
                .and_then(|n| n.trim().parse().ok())
        });
        (flushes, cpu, counted)
    })
}

/// CPU time (user + system) this process has used, all threads, from
/// `/proc/self/stat` (in clock ticks of 10 ms).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `after_name` starts at field 3.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

// ---------------------------------------------------------------------------
// (b) delivery

fn deliver_part(rt: &Runtime, s: &Settings) -> anyhow::Result<()> {
    let n = s.backlog;
    let payload = vec![b'p'; s.payload];
    let mut rows = Vec::new();
    let mut best = 0f64;

    // Baseline first: the same sled work per message, no wasm, no scheduler.
    let raw = RawLog::open()?;
    let seqs: Vec<u64> = (0..n).flat_map(|_| raw.stage(1, &payload)).collect();
    raw.db.flush()?;
    let cpu_from = cpu_secs();
    let base_secs = rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let r = raw.clone();
        let began = Instant::now();
        let consumer = tokio::spawn(async move {
            while let Some(seq) = rx.recv().await {
                r.deliver(seq);
            }
        });
        for seq in seqs {
            tx.send(seq).expect("consumer alive");
        }
        drop(tx);
        consumer.await.expect("consumer");
        began.elapsed().as_secs_f64()
    });
    let base_cpu = cpu_secs() - cpu_from;
    let base_rate = n as f64 / base_secs;

    for prefetch in [64, 256] {
        let toml = DELIVER_MANIFEST.replace("PREFETCH", &prefetch.to_string());
        let dir = tempfile::tempdir()?;
        let stored = store_backlog(rt, &toml, dir.path(), n, &payload)?;
        let host = rt.block_on(TestHost::start_in(&toml, dir.path()))?;
        let (first, cpu_from) = (acked(&host, "bench/ack"), cpu_secs());
        let secs = rt.block_on(wait_acked(&host, "bench/ack", n))?;
        let cpu = cpu_secs() - cpu_from;
        let done = n - first;
        let rate = done as f64 / secs;
        best = best.max(rate);
        let info = subscription(&host, "bench/ack");
        ensure!(
            info.delivered == n && info.retried == 0,
            "unexpected counts: {info:?}"
        );
        rt.block_on(host.shutdown())?;
        rows.push(vec![
            format!("backlog of {n}, prefetch {prefetch}"),
            fmt_rate(rate),
            fmt_ns(cpu * 1e9 / done as f64),
            format!("{:.0}%", rate / base_rate * 100.0),
            format!("stored at {} msgs/s", fmt_rate(stored)),
        ]);
    }
    rows.push(vec![
        format!("raw: mpsc -> 1 task, sled work of a delivery, {n}"),
        fmt_rate(base_rate),
        fmt_ns(base_cpu * 1e9 / n as f64),
        String::new(),
        String::new(),
    ]);

    // Steady state: 64 publishers and the consumer at once.
    let toml = DELIVER_MANIFEST.replace("PREFETCH", "64");
    let dir = tempfile::tempdir()?;
    let host = rt.block_on(TestHost::start_in(&toml, dir.path()))?;
    let host = Arc::new(host);
    let bus = host.bus().clone();
    let p = payload.clone();
    let start = Instant::now();
    let from = start + s.warmup;
    let acked_at_from = {
        let h = host.clone();
        rt.spawn(async move {
            tokio::time::sleep_until(from.into()).await;
            acked(&h, "bench/ack")
        })
    };
    let run = closed_loop(rt, s, (64, 1), None, move |_, _| {
        let (bus, payload) = (bus.clone(), p.clone());
        async move {
            let m = Outgoing {
                topic: "bench".into(),
                payload,
                ..Default::default()
            };
            bus.publish(Origin::Operator, vec![m])
                .await
                .expect("publish");
        }
    });
    let acked_end = acked(&host, "bench/ack");
    let acked_from = rt.block_on(acked_at_from)?;
    let info = subscription(&host, "bench/ack");
    let delivered = (acked_end - acked_from) as f64 / run.secs;
    // Let the rest drain so shutdown is quick.
    rt.block_on(wait_acked(&host, "bench/ack", info.depth + acked_end))?;
    let host = Arc::try_unwrap(host).map_err(|_| anyhow::anyhow!("host still shared"))?;
    rt.block_on(host.shutdown())?;

    // Its baseline: durable appends by 64 tasks, each then sent to one consumer.
    let raw = RawLog::open()?;
    let consumed = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let consumer = {
        let (r, c) = (raw.clone(), consumed.clone());
        rt.spawn(async move {
            while let Some(seq) = rx.recv().await {
                r.deliver(seq);
                c.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let start = Instant::now();
    let from = start + s.warmup;
    let consumed_at_from = {
        let c = consumed.clone();
        rt.spawn(async move {
            tokio::time::sleep_until(from.into()).await;
            c.load(Ordering::Relaxed)
        })
    };
    let (r, p) = (raw.clone(), payload.clone());
    let base_run = closed_loop(rt, s, (64, 1), Some(raw.flushes.clone()), move |_, _| {
        let (raw, payload, tx) = (r.clone(), p.clone(), tx.clone());
        async move {
            for seq in raw.append(1, &payload).await {
                tx.send(seq).expect("consumer alive");
            }
        }
    });
    let consumed_end = consumed.load(Ordering::Relaxed);
    let consumed_from = rt.block_on(consumed_at_from)?;
    let base_delivered = (consumed_end - consumed_from) as f64 / base_run.secs;
    rt.block_on(consumer)?;

    rows.push(vec![
        "steady: 64 publishers, prefetch 64".into(),
        fmt_rate(delivered),
        fmt_ns(run.cpu_secs * 1e9 / (delivered * run.secs).max(1.0)),
        format!("{:.0}%", delivered / base_delivered * 100.0),
        format!(
            "published {}/s, backlog {} at end",
            fmt_rate(run.rate()),
            info.depth
        ),
    ]);
    rows.push(vec![
        "raw: 64 durable appenders -> mpsc -> 1 task".into(),
        fmt_rate(base_delivered),
        fmt_ns(base_run.cpu_secs * 1e9 / (base_delivered * base_run.secs).max(1.0)),
        String::new(),
        format!("appended {}/s", fmt_rate(base_run.rate())),
    ]);
    print_table(
        "(b) delivery to bus-ack (a fresh instance per message), acked",
        &["run", "acked msgs/s", "CPU/msg", "bus/raw", "note"],
        &rows,
    );
    println!(
        "\ngoal: >= 30,000 delivered msgs/s to a component: {} ({} /s from a backlog, {} /s steady)",
        met(best >= 30_000.0),
        fmt_rate(best),
        fmt_rate(delivered)
    );
    Ok(())
}

/// Stores `n` messages with the host down (a bus opened on `dir`, not
/// started); returns the rate they were stored at.
fn store_backlog(
    rt: &Runtime,
    toml: &str,
    dir: &Path,
    n: u64,
    payload: &[u8],
) -> anyhow::Result<f64> {
    let (storage, bus) = open_bus(toml, dir)?;
    let next = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (bus, next, payload) = (bus.clone(), next.clone(), payload.to_vec());
                tokio::spawn(async move {
                    loop {
                        let at = next.fetch_add(16, Ordering::Relaxed);
                        if at >= n {
                            break;
                        }
                        let messages = (at..(at + 16).min(n))
                            .map(|_| Outgoing {
                                topic: "bench".into(),
                                payload: payload.clone(),
                                ..Default::default()
                            })
                            .collect();
                        bus.publish(Origin::Operator, messages).await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(())
    })?;
    let rate = n as f64 / began.elapsed().as_secs_f64();
    drop(bus);
    drop(storage);
    Ok(rate)
}

fn subscription(host: &RunningHost, id: &str) -> atoll::bus::SubscriptionInfo {
    host.bus()
        .subscription(id)
        .unwrap_or_else(|| panic!("no subscription {id}"))
}

fn acked(host: &RunningHost, id: &str) -> u64 {
    subscription(host, id).acked
}

/// Polls every 2 ms until `id` has acked `n`; returns the seconds it took.
async fn wait_acked(host: &RunningHost, id: &str, n: u64) -> anyhow::Result<f64> {
    let began = Instant::now();
    loop {
        let info = subscription(host, id);
        if info.acked >= n {
            return Ok(began.elapsed().as_secs_f64());
        }
        if began.elapsed() > Duration::from_secs(120) {
            bail!("{id} not drained after 120 s: {info:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ---------------------------------------------------------------------------
// (c) latency at a fixed rate

fn latency_part(rt: &Runtime, s: &Settings) -> anyhow::Result<()> {
    let host = Arc::new(rt.block_on(TestHost::start(LATENCY_MANIFEST)));
    let raw = RawLog::open()?;
    let mut rows = Vec::new();
    for &rate in &s.rates {
        // Through the bus, to the sink.
        let bus = host.host.bus().clone();
        let payload = vec![b'p'; s.payload];
        let (sent, publish) = paced(rt, s, rate, move |n| {
            let (bus, payload) = (bus.clone(), payload.clone());
            async move {
                let m = Outgoing {
                    topic: "lat".into(),
                    payload,
                    headers: vec![("record-time".into(), "1".into())],
                    // A key of its own: the sink appends each acked id to
                    // a list per key, which for one shared list would grow
                    // with every message and be rewritten on every delivery.
                    id: Some(format!("r{rate}-{n}")),
                    partition_key: Some(format!("r{rate}-{n}")),
                };
                bus.publish(Origin::Operator, vec![m])
                    .await
                    .expect("publish");
            }
        });
        rt.block_on(drained(&host.host, "lat/sink"))?;
        let times: BTreeMap<String, u64> = rt.block_on(async {
            let r = atoll_tests::get(&host.url("/sink/times")).await;
            ensure!(r.status == 200, "GET /sink/times: {} {}", r.status, r.body);
            Ok(serde_json::from_str(&r.body)?)
        })?;
        let mut h = histogram();
        let skip = (rate as f64 * s.warmup.as_secs_f64()) as u64;
        for (n, at) in &sent {
            if *n < skip {
                continue;
            }
            let got = times
                .get(&format!("r{rate}-{n}"))
                .with_context(|| format!("no handler time for message {n}"))?;
            h.saturating_record(got.saturating_sub(*at).max(1));
        }
        rows.push(latency_row(
            format!("bus-sink at {rate}/s"),
            &h,
            Some(&publish),
        ));

        // mpsc alone.
        let (tx, got) = receiver(rt);
        let t = tx.clone();
        let _ = paced(rt, s, rate, move |n| {
            let tx = t.clone();
            async move {
                tx.send((n, wall_ns())).expect("receiver alive");
            }
        });
        drop(tx);
        let h = hist_after(rt.block_on(got)?, skip);
        rows.push(latency_row(format!("raw: mpsc at {rate}/s"), &h, None));

        // A durable append, then mpsc.
        let (tx, got) = receiver(rt);
        let (t, r) = (tx.clone(), raw.clone());
        let payload = vec![b'p'; s.payload];
        let (_, append) = paced(rt, s, rate, move |n| {
            let (tx, raw, payload) = (t.clone(), r.clone(), payload.clone());
            async move {
                let at = wall_ns();
                raw.append(1, &payload).await;
                tx.send((n, at)).expect("receiver alive");
            }
        });
        drop(tx);
        let h = hist_after(rt.block_on(got)?, skip);
        rows.push(latency_row(
            format!("raw: insert + GroupCommit, then mpsc, at {rate}/s"),
            &h,
            Some(&append),
        ));
    }
    print_table(
        "(c) publish-to-handler latency at a fixed rate (wall clock before publish -> handler start)",
        &[
            "path", "messages", "p50", "p99", "max", "call p50", "call p99",
        ],
        &rows,
    );
    drop(raw);
    let host = Arc::try_unwrap(host).map_err(|_| anyhow::anyhow!("host still shared"))?;
    rt.block_on(host.stop());
    Ok(())
}

fn latency_row(name: String, h: &Histogram<u64>, call: Option<&Histogram<u64>>) -> Vec<String> {
    let q = |h: &Histogram<u64>, q: f64| fmt_ns(h.value_at_quantile(q) as f64);
    vec![
        name,
        fmt_rate(h.len() as f64),
        q(h, 0.5),
        q(h, 0.99),
        fmt_ns(h.max() as f64),
        call.map_or(String::new(), |c| q(c, 0.5)),
        call.map_or(String::new(), |c| q(c, 0.99)),
    ]
}

fn hist_after(all: Vec<(u64, u64)>, skip: u64) -> Histogram<u64> {
    let mut h = histogram();
    for (n, ns) in all {
        if n >= skip {
            h.saturating_record(ns.max(1));
        }
    }
    h
}

/// Wall clock in ns since the Unix epoch (what the sink records).
fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Starts `op(n)` at `rate` per second for the warm-up and the measured time,
/// each in its own task (open loop: a slow call does not delay the next).
/// Returns each message's wall clock just before its call, and the call
/// durations of those after the warm-up.
fn paced<F, Fut>(rt: &Runtime, s: &Settings, rate: u64, op: F) -> (Vec<(u64, u64)>, Histogram<u64>)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let total = (rate as f64 * (s.warmup + s.duration).as_secs_f64()) as u64;
    let skip = (rate as f64 * s.warmup.as_secs_f64()) as u64;
    let sent = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let calls = Arc::new(Mutex::new(histogram()));
    let op = Arc::new(op);
    rt.block_on(async {
        let start = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut tasks = Vec::with_capacity(total as usize);
        let mut n = 0;
        while n < total {
            tick.tick().await;
            let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
            while n < due {
                let (op, sent, calls) = (op.clone(), sent.clone(), calls.clone());
                tasks.push(tokio::spawn(async move {
                    let began = Instant::now();
                    let at = wall_ns();
                    op(n).await;
                    let took = began.elapsed();
                    sent.lock().unwrap().push((n, at));
                    if n >= skip {
                        record(&mut calls.lock().unwrap(), took);
                    }
                }));
                n += 1;
            }
        }
        for t in tasks {
            t.await.expect("paced task");
        }
    });
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let calls = calls.lock().unwrap().clone();
    (sent, calls)
}

/// Waits until subscription `id` has nothing pending.
async fn drained(host: &RunningHost, id: &str) -> anyhow::Result<()> {
    let began = Instant::now();
    loop {
        let info = subscription(host, id);
        if info.depth == 0 {
            return Ok(());
        }
        if began.elapsed() > Duration::from_secs(60) {
            bail!("{id} not drained: {info:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// Sends (message number, wall clock in ns at send).
type Stamps = tokio::sync::mpsc::UnboundedSender<(u64, u64)>;

/// A channel whose receiving task records, per message, the nanoseconds
/// from the send's wall clock to its receipt.
fn receiver(rt: &tokio::runtime::Runtime) -> (Stamps, tokio::task::JoinHandle<Vec<(u64, u64)>>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
    let got = rt.spawn(async move {
        let mut all = Vec::new();
        while let Some((n, at)) = rx.recv().await {
            all.push((n, wall_ns() - at));
        }
        all
    });
    (tx, got)
}
