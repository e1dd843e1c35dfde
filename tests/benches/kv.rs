//! Key-value throughput through the `kv-counter` guest, against sled used
//! directly in the same process with the same key and value sizes:
//!
//! (a) gets and sets over HTTP with 32 connections, against raw `Tree::get` and
//!     `Tree::insert` on 2 threads (the host's worker count). A set through
//!     the gateway is durable when its 204 arrives; a raw insert is not.
//! (b) durable sets with 64 concurrent clients: through the gateway (the host's
//!     group commit), against raw `insert` + `Db::flush()` per write on 64
//!     threads (one flush call per write), and raw `insert` + the host's
//!     `GroupCommit::sync` on 64 tasks (the same group commit without HTTP or
//!     wasm; its flushes are counted).
//!
//! `cargo bench -p atoll-tests --bench kv`; `ATOLL_BENCH_SECS` (measured seconds
//! per row, default 5), `ATOLL_BENCH_WARMUP` (default 1), `ATOLL_BENCH_CONNS`
//! (default 32), `ATOLL_BENCH_DURABLE_CLIENTS` (default 64),
//! `ATOLL_BENCH_RAW_THREADS` (default 2), `ATOLL_BENCH_VALUE` (value bytes,
//! default 128), `ATOLL_BENCH_ONLY` (comma-separated rows to run: `get`,
//! `set`, `durable`, `flush-each`, `group-commit`; default all).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use atoll::kv::{GroupCommit, SledBackend, bucket_prefix, encode_key};
use atoll_tests::TestHost;
use bytes::Bytes;
use common::{Load, LoadResult, fmt_ns, fmt_rate, histogram, print_table, record, run_load};
use hdrhistogram::Histogram;
use http::{Request, StatusCode};
use http_body_util::Full;

const MANIFEST: &str = r#"
[components.counter]
source = "{kv-counter}"
routes = ["/kv/..."]
"#;

/// Distinct keys per client: sets overwrite, gets always find a value.
const KEYS_PER_CLIENT: u64 = 32;

fn key(client: usize, seq: u64) -> String {
    format!("k{client}-{}", seq % KEYS_PER_CLIENT)
}

/// A `len`-byte value unique to (client, seq): sled skips a set that does not
/// change the stored value, so a benchmark that rewrote equal values would
/// measure writes (and flushes) that never happen.
fn value(client: usize, seq: u64, len: usize) -> Bytes {
    let mut v = format!("c{client}s{seq}:").into_bytes();
    v.resize(len.max(v.len()), b'v');
    Bytes::from(v)
}

/// What one raw (no HTTP, no wasm) run measured.
struct Raw {
    ops: u64,
    latency: Histogram<u64>,
    secs: f64,
}

impl Raw {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    fn cells(&self) -> Vec<String> {
        vec![
            fmt_rate(self.rate()),
            fmt_ns(self.latency.value_at_quantile(0.5) as f64),
            fmt_ns(self.latency.value_at_quantile(0.99) as f64),
            "0".into(),
        ]
    }
}

fn main() -> anyhow::Result<()> {
    common::print_machine();
    let load = Load::from_env(32);
    let durable = Load {
        connections: common::env_parse("ATOLL_BENCH_DURABLE_CLIENTS", 64),
        ..load
    };
    let threads: usize = common::env_parse("ATOLL_BENCH_RAW_THREADS", 2);
    let len: usize = common::env_parse("ATOLL_BENCH_VALUE", 128);
    let only = std::env::var("ATOLL_BENCH_ONLY").unwrap_or_default();
    let wanted = |row: &str| only.is_empty() || only.split(',').any(|o| o.trim() == row);

    atoll::telemetry::init(atoll::telemetry::LogFormat::Text);
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let host = server_rt.block_on(TestHost::start(MANIFEST));
    let addr = host.host.addr();
    println!("kv data dir: {}", host.dir.path().display());
    println!(
        "values of {} bytes, {KEYS_PER_CLIENT} keys per client; {:?} warm-up, {:?} measured per row",
        len, load.warmup, load.duration
    );

    // Raw sled: a backend opened exactly as the host opens its own, one tree,
    // keys encoded the way the host encodes a guest's keys in bucket "default".
    let raw_dir = tempfile::tempdir()?;
    let backend = SledBackend::open(raw_dir.path())?;
    let tree = backend.db().open_tree("kv/bench")?;
    let prefix = bucket_prefix("default");
    let raw_key = move |client: usize, seq: u64| {
        encode_key(&prefix, &key(client, seq)).expect("short keys are valid")
    };

    // (a) gets and sets, 32 connections against 2 raw threads.
    let mut rows = Vec::new();
    if wanted("set") {
        let set = run_load(
            addr,
            load,
            StatusCode::NO_CONTENT,
            Arc::new(move |c, n| put(addr, &key(c, n), value(c, n, len))),
        );
        set.warn("set");
        let (t, rk) = (tree.clone(), raw_key.clone());
        let raw = run_threads(threads, load, move |c, n| {
            t.insert(rk(c, n), value(c, n, len).as_ref())
                .expect("sled insert");
        });
        push_pair(
            &mut rows,
            format!("set via gateway ({} conns, durable)", load.connections),
            &set,
            format!("sled Tree::insert ({threads} threads, not flushed)"),
            &raw,
        );
    }
    if wanted("get") {
        // Every key a get asks for exists (written here if `set` did not run).
        for c in 0..load.connections.max(threads) {
            for n in 0..KEYS_PER_CLIENT {
                tree.insert(raw_key(c, n), value(c, n, len).as_ref())?;
            }
        }
        server_rt.block_on(fill(addr, load.connections, len))?;
        let get = run_load(
            addr,
            load,
            StatusCode::OK,
            Arc::new(move |c, n| common::get(addr, &format!("/kv/get/{}", key(c, n)))),
        );
        get.warn("get");
        let (t, rk) = (tree.clone(), raw_key.clone());
        let raw = run_threads(threads, load, move |c, n| {
            let got = t.get(rk(c, n)).expect("sled get").expect("key exists");
            assert_eq!(got.len(), len);
        });
        push_pair(
            &mut rows,
            format!("get via gateway ({} conns)", load.connections),
            &get,
            format!("sled Tree::get ({threads} threads)"),
            &raw,
        );
    }
    if !rows.is_empty() {
        print_table(
            "(a) kv-counter through the gateway vs sled in-process",
            &["operation", "ops/s", "p50", "p99", "errors", "gateway/raw"],
            &rows,
        );
    }

    // (b) durable sets, 64 clients.
    let mut rows = Vec::new();
    let mut rates = Vec::new();
    if wanted("durable") {
        let r = run_load(
            addr,
            durable,
            StatusCode::NO_CONTENT,
            Arc::new(move |c, n| put(addr, &key(c, n), value(c, n, len))),
        );
        r.warn("durable set");
        let mut row = vec![format!(
            "gateway PUT, {} conns (group commit)",
            durable.connections
        )];
        row.extend(r.cells());
        row.push("not exposed".into());
        rows.push(row);
        rates.push(("gateway", r.rate()));
    }
    if wanted("flush-each") {
        let (db, t, rk) = (backend.db().clone(), tree.clone(), raw_key.clone());
        let raw = run_threads(durable.connections, durable, move |c, n| {
            t.insert(rk(c, n), value(c, n, len).as_ref())
                .expect("sled insert");
            db.flush().expect("sled flush");
        });
        let mut row = vec![format!(
            "sled insert + Db::flush() each, {} threads",
            durable.connections
        )];
        row.extend(raw.cells());
        row.push(format!("{} (1.0 writes/flush)", fmt_rate(raw.ops as f64)));
        rows.push(row);
        rates.push(("flush each", raw.rate()));
    }
    if wanted("group-commit") {
        let flushes = Arc::new(AtomicU64::new(0));
        let (db, counter) = (backend.db().clone(), flushes.clone());
        let commit = Arc::new(GroupCommit::start(
            "bench",
            Box::new(move || {
                db.flush().context("flushing sled")?;
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }),
        )?);
        let raw = run_tasks(
            &server_rt,
            durable,
            tree.clone(),
            raw_key.clone(),
            len,
            commit,
            flushes.clone(),
        );
        let mut row = vec![format!(
            "sled insert + GroupCommit::sync, {} tasks",
            durable.connections
        )];
        row.extend(raw.0.cells());
        row.push(format!(
            "{} ({:.1} writes/flush)",
            fmt_rate(raw.1 as f64),
            raw.0.ops as f64 / raw.1.max(1) as f64
        ));
        rows.push(row);
        rates.push(("group commit", raw.0.rate()));
    }
    if !rows.is_empty() {
        print_table(
            "(b) durable sets under concurrent clients",
            &[
                "write path",
                "writes/s",
                "p50",
                "p99",
                "errors",
                "flush calls",
            ],
            &rows,
        );
        let rate = |name: &str| rates.iter().find(|(n, _)| *n == name).map(|(_, r)| *r);
        if let (Some(g), Some(f)) = (rate("gateway"), rate("flush each")) {
            println!(
                "\ngateway durable sets / raw flush-per-write sets = {:.1}x",
                g / f
            );
        }
        if let (Some(g), Some(f)) = (rate("group commit"), rate("flush each")) {
            println!(
                "raw group-commit sets / raw flush-per-write sets = {:.1}x",
                g / f
            );
        }
    }

    drop(tree);
    drop(backend);
    server_rt.block_on(host.stop());
    Ok(())
}

fn push_pair(
    rows: &mut Vec<Vec<String>>,
    gateway_name: String,
    gateway: &LoadResult,
    raw_name: String,
    raw: &Raw,
) {
    let mut row = vec![gateway_name];
    row.extend(gateway.cells());
    row.push(format!("{:.2}%", gateway.rate() / raw.rate() * 100.0));
    rows.push(row);
    let mut row = vec![raw_name];
    row.extend(raw.cells());
    row.push(String::new());
    rows.push(row);
}

fn put(addr: SocketAddr, key: &str, value: Bytes) -> Request<Full<Bytes>> {
    Request::put(format!("/kv/set/{key}"))
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(value))
        .expect("valid request")
}

/// Writes every key the get row will read, one client per connection.
async fn fill(addr: SocketAddr, clients: usize, len: usize) -> anyhow::Result<()> {
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            tokio::spawn(async move {
                for n in 0..KEYS_PER_CLIENT {
                    let url = format!("http://{addr}/kv/set/{}", key(c, n));
                    let r = atoll_tests::send("PUT", &url, value(c, n, len)).await?;
                    anyhow::ensure!(r.status == 204, "fill: {} {}", r.status, r.body);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Runs `op(thread, seq)` in a loop on `threads` OS threads for the load's
/// warm-up and duration; counts the ops that started after the warm-up and
/// finished before the end.
fn run_threads(threads: usize, load: Load, op: impl Fn(usize, u64) + Send + Sync + 'static) -> Raw {
    let op = Arc::new(op);
    let start = Instant::now();
    let (from, end) = (start + load.warmup, start + load.warmup + load.duration);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let op = op.clone();
            std::thread::spawn(move || {
                let mut h = histogram();
                let mut ops = 0;
                let mut seq = 0;
                loop {
                    let began = Instant::now();
                    if began >= end {
                        break;
                    }
                    op(t, seq);
                    seq += 1;
                    let done = Instant::now();
                    if began >= from && done <= end {
                        ops += 1;
                        record(&mut h, done - began);
                    }
                }
                (ops, h)
            })
        })
        .collect();
    collect(
        handles.into_iter().map(|h| h.join().expect("bench thread")),
        load,
    )
}

/// Like [`run_threads`] with tokio tasks on the server runtime: insert, then
/// wait for the group commit. Returns the run and the flushes it caused.
fn run_tasks(
    rt: &tokio::runtime::Runtime,
    load: Load,
    tree: sled::Tree,
    raw_key: impl Fn(usize, u64) -> Vec<u8> + Clone + Send + Sync + 'static,
    len: usize,
    commit: Arc<GroupCommit>,
    flushes: Arc<AtomicU64>,
) -> (Raw, u64) {
    rt.block_on(async move {
        let start = Instant::now();
        let (from, end) = (start + load.warmup, start + load.warmup + load.duration);
        let flushes_at = {
            let flushes = flushes.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(from.into()).await;
                let first = flushes.load(Ordering::Relaxed);
                tokio::time::sleep_until(end.into()).await;
                flushes.load(Ordering::Relaxed) - first
            })
        };
        let tasks: Vec<_> = (0..load.connections)
            .map(|c| {
                let (tree, raw_key, commit) = (tree.clone(), raw_key.clone(), commit.clone());
                tokio::spawn(async move {
                    let mut h = histogram();
                    let mut ops = 0;
                    let mut seq = 0;
                    loop {
                        let began = Instant::now();
                        if began >= end {
                            break;
                        }
                        tree.insert(raw_key(c, seq), value(c, seq, len).as_ref())
                            .expect("sled insert");
                        commit.sync().await.expect("group commit");
                        seq += 1;
                        let done = Instant::now();
                        if began >= from && done <= end {
                            ops += 1;
                            record(&mut h, done - began);
                        }
                    }
                    (ops, h)
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.expect("bench task"));
        }
        let flushes = flushes_at.await.expect("counter task");
        (collect(results.into_iter(), load), flushes)
    })
}

fn collect(results: impl Iterator<Item = (u64, Histogram<u64>)>, load: Load) -> Raw {
    let mut total = Raw {
        ops: 0,
        latency: histogram(),
        secs: load.duration.as_secs_f64(),
    };
    for (ops, h) in results {
        total.ops += ops;
        total.latency.add(&h).expect("same histogram bounds");
    }
    total
}
