//! What a component-to-component call costs: `booking` calls `greet("x")`
//! (a short string in, `"hello, x"` out) through its import, which the host
//! links to `pricing`; every call runs in a fresh instance of `pricing`
//! (Atoll does not pool or reuse callee instances). Three parts, all in one
//! in-process host:
//!
//! 1. **Inside the caller.** `GET /bench?mode=M&n=N` makes `booking` time N
//!    calls one by one with the guest's monotonic clock and answer their
//!    percentiles: `remote` (through the host), `local` (a function inside
//!    `booking` doing the same formatting) and `empty` (nothing: what reading
//!    the clock costs). Overhead = remote - local, per round; the issue's
//!    goals are about its median. Then the same with one call per request
//!    (`n=1`), where nothing stays hot from the call before.
//! 2. **The host's share, without a caller.** The steps of one call as the
//!    trampoline runs them, driven from Rust on one thread: new store,
//!    instantiate `pricing`, call `greet` with `Val`s, drop the store.
//!    The remote figure minus these is the trampoline's own bookkeeping plus
//!    crossing out of and back into the caller.
//! 3. **What one call adds to a request.** `GET /greet?name=x` (one call)
//!    against `GET /self` (no call) over HTTP, at 1 connection and at
//!    `ATOLL_BENCH_CONNS` connections.
//!
//! `cargo bench -p atoll-tests --bench calls`; `ATOLL_BENCH_ROUNDS` (default
//! 5) rounds of `ATOLL_BENCH_CALLS` (default 20000) calls per mode, then
//! `ATOLL_BENCH_SINGLE` (2000) requests of one call each per mode,
//! `ATOLL_BENCH_ITERS` (20000) iterations per step in part 2, and
//! `ATOLL_BENCH_SECS` (5), `ATOLL_BENCH_WARMUP` (1), `ATOLL_BENCH_CONNS` (32)
//! for part 3; `ATOLL_BENCH_ONLY` (a comma list of `loop,single,steps,http`, default
//! all) runs only some parts, e.g. under `perf record`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use atoll::registry::ComponentRuntime;
use atoll::sandbox;
use atoll_tests::TestHost;
use bytes::Bytes;
use common::{Load, fmt_ns, histogram, print_table, record, run_load};
use hdrhistogram::Histogram;
use http::StatusCode;
use wasmtime::component::Val;

const MANIFEST: &str = r#"
[components.booking]
source = "{booking}"
routes = ["/..."]

[components.booking.calls.pricing]

[components.pricing]
source = "{pricing}"
version = "1.2.0"
"#;

/// The issue's goal for the p50 overhead with a fresh callee instance per
/// call: what Atoll does.
const GOAL_FRESH: f64 = 15_000.0;
/// The issue's goal with a pooled or reused callee (Atoll has none yet).
const GOAL_POOLED: f64 = 5_000.0;

fn main() -> anyhow::Result<()> {
    common::print_machine();
    let rounds: usize = common::env_parse("ATOLL_BENCH_ROUNDS", 5);
    let calls: u64 = common::env_parse("ATOLL_BENCH_CALLS", 20_000);
    let iters: u64 = common::env_parse("ATOLL_BENCH_ITERS", 20_000);
    let single: u64 = common::env_parse("ATOLL_BENCH_SINGLE", 2_000);
    let only =
        std::env::var("ATOLL_BENCH_ONLY").unwrap_or_else(|_| "loop,single,steps,http".into());
    let run = |part: &str| only.split(',').any(|p| p.trim() == part);
    // Logging as `atoll up` sets it up.
    atoll::telemetry::init(atoll::telemetry::LogFormat::Text);
    // The host's runtime as `atoll up` builds it, with exactly 2 workers.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let host = server_rt.block_on(TestHost::start(MANIFEST));
    let addr = host.host.addr();
    let get = |path: &str| -> anyhow::Result<String> {
        let reply = server_rt.block_on(atoll_tests::send(
            "GET",
            &format!("http://{addr}{path}"),
            Bytes::new(),
        ))?;
        ensure!(
            reply.status == 200,
            "GET {path}: {} {}",
            reply.status,
            reply.body
        );
        Ok(reply.body)
    };
    ensure!(
        get("/greet?name=x")? == "hello, x",
        "unexpected /greet answer"
    );
    ensure!(get("/self")? == "booking", "unexpected /self answer");

    if run("loop") {
        in_the_caller(&get, rounds, calls)?;
    }
    if run("single") {
        one_per_request(&get, single)?;
    }
    if run("steps") {
        let pricing = host
            .host
            .registry()
            .component("pricing")
            .context("pricing is not running")?;
        let steps = server_rt.block_on(host_steps(&pricing, iters))?;
        print_table(
            &format!(
                "(2) the steps of one call to `pricing` greet(\"x\"), driven from Rust on one thread, {iters} iterations each"
            ),
            &["step", "p50", "p90", "p99", "mean"],
            &steps,
        );
    }
    if run("http") {
        in_a_request(addr);
    }
    server_rt.block_on(host.stop());
    Ok(())
}

/// Part 1: `/bench` in each mode, `rounds` times; prints the tables and goals.
fn in_the_caller(
    get: &dyn Fn(&str) -> anyhow::Result<String>,
    rounds: usize,
    calls: u64,
) -> anyhow::Result<()> {
    println!("\n(1) per call, timed inside `booking` with its monotonic clock");
    println!("{rounds} rounds of {calls} calls per mode, after one warm-up round");
    let modes = ["empty", "local", "remote"];
    for mode in modes {
        get(&format!("/bench?mode={mode}&n={calls}"))?;
    }
    let mut runs: BTreeMap<&str, Vec<Percentiles>> = BTreeMap::new();
    for _ in 0..rounds {
        for mode in modes {
            let answer = get(&format!("/bench?mode={mode}&n={calls}"))?;
            let p = Percentiles::parse(&answer)
                .with_context(|| format!("parsing the answer {answer:?}"))?;
            ensure!(p.n == calls, "asked for {calls} calls, got {}", p.n);
            runs.entry(mode).or_default().push(p);
        }
    }
    let mut rows = Vec::new();
    for (round, ((remote, local), empty)) in runs["remote"]
        .iter()
        .zip(&runs["local"])
        .zip(&runs["empty"])
        .enumerate()
    {
        let over = |f: fn(&Percentiles) -> f64| fmt_diff(f(remote) - f(local));
        rows.push(vec![
            (round + 1).to_string(),
            fmt_ns(remote.p50),
            fmt_ns(remote.p99),
            fmt_ns(remote.mean),
            fmt_ns(local.p50),
            fmt_ns(local.p99),
            fmt_ns(local.mean),
            over(|p| p.p50),
            over(|p| p.p99),
            over(|p| p.mean),
            fmt_ns(empty.p50),
        ]);
    }
    print_table(
        "greet(\"x\"), per call (overhead = remote - local; clock = an empty timed region)",
        &[
            "round",
            "remote p50",
            "remote p99",
            "remote mean",
            "local p50",
            "local p99",
            "local mean",
            "overhead p50",
            "overhead p99",
            "overhead mean",
            "clock p50",
        ],
        &rows,
    );
    let mut detail = Vec::new();
    for mode in modes {
        let all = &runs[mode];
        let med = |f: fn(&Percentiles) -> f64| fmt_ns(median(all.iter().map(f)));
        detail.push(vec![
            mode.to_string(),
            med(|p| p.p50),
            med(|p| p.p90),
            med(|p| p.p99),
            med(|p| p.max),
            med(|p| p.mean),
            med(|p| p.total / p.n as f64),
        ]);
    }
    print_table(
        "each mode, median over the rounds",
        &["mode", "p50", "p90", "p99", "max", "mean", "loop / n"],
        &detail,
    );
    let overhead_p50 = median(
        runs["remote"]
            .iter()
            .zip(&runs["local"])
            .map(|(r, l)| r.p50 - l.p50),
    );
    let overhead_p99 = median(
        runs["remote"]
            .iter()
            .zip(&runs["local"])
            .map(|(r, l)| r.p99 - l.p99),
    );
    println!(
        "\noverhead of a call through the host, median of {rounds} rounds: p50 {}, p99 {}",
        fmt_ns(overhead_p50),
        fmt_ns(overhead_p99)
    );
    println!(
        "goal, fresh callee instance per call (what Atoll does; applies), calls in a loop: p50 < {}: {} ({})",
        fmt_ns(GOAL_FRESH),
        pass(overhead_p50 < GOAL_FRESH),
        fmt_ns(overhead_p50)
    );
    println!(
        "goal, pooled or reused callee (Atoll has no callee pooling; does not apply): p50 < {}: {} ({})",
        fmt_ns(GOAL_POOLED),
        pass(overhead_p50 < GOAL_POOLED),
        fmt_ns(overhead_p50)
    );

    Ok(())
}

/// Part 1b: `/bench?n=1` in each mode, `single` times (the loop of part 1
/// keeps everything hot: the same pool slot, code and data for every call;
/// one call per request shows a call as a request meets it).
fn one_per_request(
    get: &dyn Fn(&str) -> anyhow::Result<String>,
    single: u64,
) -> anyhow::Result<()> {
    let modes = ["empty", "local", "remote"];
    let mut rows = Vec::new();
    let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
    for mode in modes {
        let mut h = histogram();
        for i in 0..single + single / 10 {
            let answer = get(&format!("/bench?mode={mode}&n=1"))?;
            let p = Percentiles::parse(&answer)
                .with_context(|| format!("parsing the answer {answer:?}"))?;
            if i >= single / 10 {
                h.saturating_record(p.max as u64);
            }
        }
        p50s.push(h.value_at_quantile(0.5) as f64);
        p99s.push(h.value_at_quantile(0.99) as f64);
        rows.push(row(mode, &h));
    }
    rows.push(vec![
        "overhead (remote - local)".into(),
        fmt_diff(p50s[2] - p50s[1]),
        String::new(),
        fmt_diff(p99s[2] - p99s[1]),
        String::new(),
    ]);
    print_table(
        &format!("(1b) one call per /bench request (n=1), {single} sequential requests per mode"),
        &["mode", "p50", "p90", "p99", "mean"],
        &rows,
    );
    let overhead = p50s[2] - p50s[1];
    println!(
        "\ngoal, fresh callee instance, one call per request: p50 < {}: {} ({})",
        fmt_ns(GOAL_FRESH),
        pass(overhead < GOAL_FRESH),
        fmt_ns(overhead)
    );
    Ok(())
}

/// Part 3: `/greet?name=x` against `/self` over HTTP at 1 and at
/// `ATOLL_BENCH_CONNS` connections.
fn in_a_request(addr: SocketAddr) {
    let high = Load::from_env(32);
    let loads = [
        Load {
            connections: 1,
            ..high
        },
        high,
    ];
    println!(
        "\n(3) GET /greet?name=x (one call) vs GET /self (no call), {:?} warm-up, {:?} measured per row, client on 1 thread",
        high.warmup, high.duration
    );
    let mut rows = Vec::new();
    for load in loads {
        // Both cores are busy when the client keeps enough requests in
        // flight, so CPU time per request is then about 2 s / rate.
        let busy = load.connections > 1;
        let cpu = |per_sec: f64| match busy {
            true => fmt_diff(2e9 / per_sec),
            false => String::new(),
        };
        let mut results = Vec::new();
        for path in ["/greet?name=x", "/self"] {
            let r = run_load(
                addr,
                load,
                StatusCode::OK,
                Arc::new(move |_, _| common::get(addr, path)),
            );
            r.warn(path);
            let mut row = vec![path.to_string(), load.connections.to_string()];
            row.extend(r.cells());
            row.push(cpu(r.rate()));
            rows.push(row);
            results.push(r);
        }
        let (greet, plain) = (&results[0], &results[1]);
        rows.push(vec![
            "one call adds".into(),
            load.connections.to_string(),
            String::new(),
            fmt_diff(greet.quantile(0.5) - plain.quantile(0.5)),
            fmt_diff(greet.quantile(0.99) - plain.quantile(0.99)),
            String::new(),
            match busy {
                true => fmt_diff(2e9 / greet.rate() - 2e9 / plain.rate()),
                false => String::new(),
            },
        ]);
    }
    print_table(
        "one call in a request",
        &[
            "request",
            "conns",
            "req/s",
            "p50",
            "p99",
            "errors",
            "2 cores / rate",
        ],
        &rows,
    );
    println!(
        "(2 cores / rate: CPU time per request, client included, where both cores are busy: the {}-connection rows)",
        high.connections
    );
}

/// What `/bench` answers: `p50=.. p90=.. p99=.. max=.. mean=.. total=.. n=..`, in ns.
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
    total: f64,
    n: u64,
}

impl Percentiles {
    fn parse(answer: &str) -> anyhow::Result<Percentiles> {
        let fields: BTreeMap<&str, &str> = answer
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let num = |key: &str| -> anyhow::Result<f64> {
            match fields.get(key) {
                Some(v) => Ok(v.parse()?),
                None => bail!("no `{key}`"),
            }
        };
        Ok(Percentiles {
            p50: num("p50")?,
            p90: num("p90")?,
            p99: num("p99")?,
            max: num("max")?,
            mean: num("mean")?,
            total: num("total")?,
            n: num("n")? as u64,
        })
    }
}

/// The median of some figures (the mean of the middle two for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `fmt_ns` for a difference that may be negative.
fn fmt_diff(ns: f64) -> String {
    if ns < 0.0 {
        format!("-{}", fmt_ns(-ns))
    } else {
        fmt_ns(ns)
    }
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

/// Times the steps the trampoline takes for one call (`calls::CallContext::once`),
/// without its bookkeeping and without a calling guest: returns table rows.
async fn host_steps(rt: &ComponentRuntime, iters: u64) -> anyhow::Result<Vec<Vec<String>>> {
    let export = rt
        .call_exports
        .best(&atoll::calls::InterfaceName::parse(
            "test:calls/quote@1.2.0",
        ))
        .context("pricing exports no test:calls/quote@1.2.0")?;
    let (index, _) = *export
        .functions
        .get("greet")
        .context("test:calls/quote has no greet")?;
    let deadline = || Instant::now() + rt.limits.deadline;
    let warmup = iters / 10;
    let [mut store_h, mut inst_h, mut call_h, mut drop_h, mut whole_h] =
        std::array::from_fn(|_| histogram());
    for i in 0..warmup + iters {
        let t0 = Instant::now();
        let mut store = sandbox::new_store(&rt.engine, &rt.grants, deadline());
        let t1 = Instant::now();
        let instance = rt.pre.instantiate_async(&mut store).await?;
        let t2 = Instant::now();
        let func = instance
            .get_func(&mut store, index)
            .context("greet is not a function")?;
        let mut results = [Val::Bool(false)];
        func.call_async(&mut store, &[Val::String("x".into())], &mut results)
            .await?;
        let t3 = Instant::now();
        drop(store);
        let t4 = Instant::now();
        if i == 0 {
            ensure!(
                matches!(&results[0], Val::String(s) if s == "hello, x"),
                "greet answered {:?}",
                results[0]
            );
        }
        if i >= warmup {
            record(&mut store_h, t1 - t0);
            record(&mut inst_h, t2 - t1);
            record(&mut call_h, t3 - t2);
            record(&mut drop_h, t4 - t3);
            record(&mut whole_h, t4 - t0);
        }
    }
    Ok(vec![
        row("new_store", &store_h),
        row("instantiate_async", &inst_h),
        row("get_func + call_async greet(\"x\")", &call_h),
        row("drop store (slot back to pool)", &drop_h),
        row("all four", &whole_h),
    ])
}

fn row(step: &str, h: &Histogram<u64>) -> Vec<String> {
    vec![
        step.to_string(),
        fmt_ns(h.value_at_quantile(0.5) as f64),
        fmt_ns(h.value_at_quantile(0.9) as f64),
        fmt_ns(h.value_at_quantile(0.99) as f64),
        fmt_ns(h.mean()),
    ]
}
