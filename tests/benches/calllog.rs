//! Call log write throughput and query latency, on the log table alone (no
//! HTTP; the gateway overhead bench measures logging per request):
//!
//! (a) writes: what one `record()` call costs the request (p50/p99), and rows
//!     written per second until durable: a burst the size of the channel
//!     (nothing dropped) then `sync()`; and 2 threads recording flat out for
//!     a few seconds (the writer's ceiling; the rest are dropped and counted).
//!     Against sled used directly with rows of the same size: `insert` row by
//!     row (what the writer does) and `apply_batch` of 1024 rows.
//! (b) queries over a log of `ATOLL_BENCH_ROWS` rows (default 1,000,000):
//!     the newest 100; 100 of one component (1% of rows); 100 503s (0.1%);
//!     a one-second time range; each run 20 times.
//!
//! `cargo bench -p atoll-tests --bench calllog`; `ATOLL_BENCH_SECS` (seconds
//! of the flat-out run, default 5), `ATOLL_BENCH_ROWS`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use atoll::config::CallLogSpec;
use atoll::gateway::calllog::{CHANNEL, CallLog, CallQuery, CallRecord, now_ms};
use common::{env_parse, env_secs, fmt_ns, fmt_rate, histogram, print_table, record};

/// Components the rows are spread over.
const COMPONENTS: u64 = 100;

/// A realistic row: the `i`th request, one every 10 ms.
fn row(i: u64, t0: u64) -> CallRecord {
    let component = format!("service-{}", i % COMPONENTS);
    let status = match i % 1000 {
        0 => 503,
        1..=9 => 404,
        _ => 200,
    };
    CallRecord {
        time_ms: t0 + i * 10,
        client: format!("10.0.{}.{}", (i / 256) % 256, i % 256),
        method: "GET".into(),
        path: format!("/api/{component}/items/{i}"),
        route: Some(format!("/api/{component}/...")),
        version: Some("1.4.2".into()),
        component: Some(component),
        status,
        latency_us: 800 + i % 5000,
        bytes_out: 512,
        trace_id: format!("{:032x}", u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        subject: i.is_multiple_of(3).then(|| format!("user-{}", i % 977)),
        complete: true,
        ..CallRecord::default()
    }
}

fn spec() -> CallLogSpec {
    CallLogSpec {
        enabled: true,
        max_age: Duration::from_secs(365 * 86_400),
        max_size: 64 << 30,
    }
}

fn main() -> anyhow::Result<()> {
    common::print_machine();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let flat_out = env_secs("ATOLL_BENCH_SECS", 5.0);
    let query_rows: u64 = env_parse("ATOLL_BENCH_ROWS", 1_000_000);
    let t0 = now_ms() - 30 * 86_400_000;

    // (a) writes.
    let dir = tempfile::tempdir()?;
    let log = CallLog::open(dir.path(), &spec())?;
    let mut rows = Vec::new();

    // record(): one thread, one row at a time, the writer draining behind.
    let mut cost = histogram();
    let burst = CHANNEL as u64;
    let mut next = 0u64;
    let mut burst_rates = Vec::new();
    for _ in 0..5 {
        let made: Vec<CallRecord> = (next..next + burst).map(|i| row(i, t0)).collect();
        next += burst;
        let dropped = log.dropped();
        let start = Instant::now();
        for r in made {
            let at = Instant::now();
            log.record(r);
            record(&mut cost, at.elapsed());
        }
        rt.block_on(log.sync())?;
        let secs = start.elapsed().as_secs_f64();
        anyhow::ensure!(
            log.dropped() == dropped,
            "a burst the channel's size dropped rows"
        );
        burst_rates.push(burst as f64 / secs);
    }
    burst_rates.sort_by(f64::total_cmp);
    rows.push(vec![
        format!("burst of {burst} rows, then sync (median of 5)"),
        fmt_rate(burst_rates[2]),
        fmt_ns(cost.value_at_quantile(0.5) as f64),
        fmt_ns(cost.value_at_quantile(0.99) as f64),
        "0".into(),
    ]);

    // Flat out: 2 threads record for `flat_out`; count what was stored.
    let stored_before = rt
        .block_on(log.query(&CallQuery {
            limit: Some(usize::MAX),
            ..CallQuery::default()
        }))?
        .len() as u64;
    let dropped_before = log.dropped();
    let stop = Arc::new(AtomicBool::new(false));
    let offered = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let (log, stop, offered) = (log.clone(), stop.clone(), offered.clone());
            std::thread::spawn(move || {
                let mut i = 1_000_000_000 * (t + 1);
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..256 {
                        log.record(row(i, t0));
                        i += 1;
                    }
                    offered.fetch_add(256, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(flat_out);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a recording thread panicked");
    }
    rt.block_on(log.sync())?;
    let secs = start.elapsed().as_secs_f64();
    let offered = offered.load(Ordering::Relaxed);
    let dropped = log.dropped() - dropped_before;
    let stored = offered - dropped;
    rows.push(vec![
        format!("2 threads flat out for {flat_out:?}, then sync"),
        fmt_rate(stored as f64 / secs),
        "-".into(),
        "-".into(),
        format!("{dropped} of {offered}"),
    ]);
    let total = rt
        .block_on(log.query(&CallQuery {
            limit: Some(usize::MAX),
            ..CallQuery::default()
        }))?
        .len() as u64;
    anyhow::ensure!(
        total == stored_before + stored,
        "stored {total} rows, expected {stored_before} + {stored}"
    );
    let row_bytes = log.stored_bytes() as f64 / total as f64;
    let disk = log.size_on_disk()?;
    rt.block_on(log.close())?;

    // sled directly, rows of the same size.
    let value = vec![b'v'; row_bytes as usize - 16];
    for batched in [false, true] {
        let raw_dir = tempfile::tempdir()?;
        let db = sled::Config::new()
            .path(raw_dir.path())
            .flush_every_ms(None)
            .open()?;
        let tree = db.open_tree("rows")?;
        let n = 500_000u64;
        let start = Instant::now();
        let mut batch = sled::Batch::default();
        for i in 0..n {
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&(t0 + i * 10).to_be_bytes());
            k[8..].copy_from_slice(&i.to_be_bytes());
            if batched {
                batch.insert(&k, value.as_slice());
                if i % 1024 == 1023 {
                    tree.apply_batch(std::mem::take(&mut batch))?;
                }
            } else {
                tree.insert(k, value.as_slice())?;
            }
        }
        tree.apply_batch(batch)?;
        db.flush()?;
        let what = match batched {
            true => "sled apply_batch of 1024, 1 thread, then flush",
            false => "sled insert row by row, 1 thread, then flush",
        };
        rows.push(vec![
            what.into(),
            fmt_rate(n as f64 / start.elapsed().as_secs_f64()),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
    }
    print_table(
        &format!(
            "(a) call log writes ({row_bytes:.0} stored bytes a row; {:.1} MiB of files for {total} rows)",
            disk as f64 / (1 << 20) as f64
        ),
        &[
            "run",
            "rows/s written",
            "record() p50",
            "record() p99",
            "dropped",
        ],
        &rows,
    );

    // (b) queries.
    let dir = tempfile::tempdir()?;
    let log = CallLog::open(dir.path(), &spec())?;
    let start = Instant::now();
    let mut i = 0;
    while i < query_rows {
        let end = (i + burst / 2).min(query_rows);
        for n in i..end {
            log.record(row(n, t0));
        }
        rt.block_on(log.sync())?;
        i = end;
    }
    anyhow::ensure!(log.dropped() == 0, "filling the log dropped rows");
    println!(
        "\nfilled a log of {query_rows} rows in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let middle = t0 + query_rows / 2 * 10;
    let queries = [
        ("newest 100", CallQuery::default(), 100),
        (
            "newest 100 of one component (1%)",
            CallQuery {
                component: Some("service-42".into()),
                ..CallQuery::default()
            },
            100,
        ),
        (
            "newest 100 with status 503 (0.1%)",
            CallQuery {
                status: Some("503".into()),
                ..CallQuery::default()
            },
            100.min(query_rows as usize / 1000),
        ),
        (
            "one second in the middle (100 rows)",
            CallQuery {
                since_ms: Some(middle),
                until_ms: Some(middle + 1000),
                ..CallQuery::default()
            },
            100,
        ),
    ];
    let mut rows = Vec::new();
    for (what, q, expected) in queries {
        let mut latency = histogram();
        for _ in 0..20 {
            let at = Instant::now();
            let got = rt.block_on(log.query(&q))?;
            record(&mut latency, at.elapsed());
            anyhow::ensure!(got.len() == expected, "{what}: {} rows", got.len());
        }
        rows.push(vec![
            what.to_string(),
            fmt_ns(latency.value_at_quantile(0.5) as f64),
            fmt_ns(latency.value_at_quantile(0.99) as f64),
        ]);
    }
    print_table(
        &format!("(b) call log queries over {query_rows} rows (20 runs each)"),
        &["query", "p50", "p99"],
        &rows,
    );
    rt.block_on(log.close())?;
    Ok(())
}
