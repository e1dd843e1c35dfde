//! The cost of OTLP trace export: `GET /hello` through `atoll up` child
//! processes (the export pipeline is process-wide, so each configuration is
//! its own host) in the same run, alternating rounds, with a fresh process
//! per configuration and round:
//!
//! - export off (no `[telemetry]` endpoint): the span layer is not
//!   installed; twice, as two configurations, so the table shows the noise
//!   floor;
//! - export on with `sample_ratio = 0`: the layer is present and every span
//!   is created, but none is recorded or sent;
//! - export on with `sample_ratio = 0.1`: one trace in ten is sent;
//! - export on (`sample_ratio = 1`) over http/protobuf to a receiver in this
//!   process that reads and discards each batch.
//!
//! The call log is off in all of them, so the route is as lean as it gets
//! and the cost is a share of the least the host does per request. Costs are
//! medians over rounds against the mean of the two off hosts of the same
//! round; the host's CPU time per request (from /proc) is printed too.
//!
//! `cargo bench -p atoll-tests --bench tracing`; lengthen with
//! `ATOLL_BENCH_SECS` (seconds per round, default 3), `ATOLL_BENCH_ROUNDS`
//! (default 5), `ATOLL_BENCH_CONNS` (default 32).

mod common;

use std::convert::Infallible;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use atoll_tests::{ChildHost, manifest_file};
use bytes::Bytes;
use common::{Load, LoadResult, fmt_ns, fmt_rate, print_table, run_load};
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

const HELLO: &str = r#"
[components.hello]
source = "{hello}"
routes = ["/hello"]

[gateway.call_log]
enabled = false
"#;

/// The issue's goals: export on costs under 10% of throughput, off under 2%.
const GOAL_ON: f64 = 0.10;
const GOAL_OFF: f64 = 0.02;

/// What the receiver took in.
#[derive(Default)]
struct Sink {
    requests: AtomicU64,
    bytes: AtomicU64,
}

/// An OTLP/HTTP receiver: accepts `POST /v1/traces`, reads the body, answers
/// an empty `ExportTraceServiceResponse` (zero bytes of protobuf).
fn receiver(rt: &tokio::runtime::Runtime, sink: Arc<Sink>) -> anyhow::Result<String> {
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    let sink = sink.clone();
                    async move {
                        let body = BodyExt::collect(req.into_body())
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        sink.requests.fetch_add(1, Ordering::Relaxed);
                        sink.bytes.fetch_add(body as u64, Ordering::Relaxed);
                        let mut res = http::Response::new(Full::new(Bytes::new()));
                        res.headers_mut()
                            .insert("content-type", "application/x-protobuf".parse().unwrap());
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(format!("http://{addr}"))
}

fn main() -> anyhow::Result<()> {
    common::print_machine();
    let mut load = Load::from_env(32);
    load.duration = common::env_secs("ATOLL_BENCH_SECS", 3.0);
    let rounds: usize = common::env_parse("ATOLL_BENCH_ROUNDS", 5);
    let bin = Path::new(env!("CARGO_BIN_EXE_atoll-cli"));

    let receiver_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let sink = Arc::new(Sink::default());
    let collector = receiver(&receiver_rt, sink.clone())?;

    let configs = [
        ("export off", HELLO.to_string()),
        ("export off (second host)", HELLO.to_string()),
        (
            "export on, sample_ratio 0",
            format!("[telemetry]\notlp_endpoint = \"{collector}\"\nsample_ratio = 0\n{HELLO}"),
        ),
        (
            "export on, sample_ratio 0.1",
            format!("[telemetry]\notlp_endpoint = \"{collector}\"\nsample_ratio = 0.1\n{HELLO}"),
        ),
        (
            "export on, every span sent",
            format!("[telemetry]\notlp_endpoint = \"{collector}\"\n{HELLO}"),
        ),
    ];
    // No OTEL_* from the environment: each host is exactly its manifest.
    let blank: Vec<(&str, &Path)> = atoll::config::OTEL_ENV
        .iter()
        .map(|k| (*k, Path::new("")))
        .collect();
    // Each round starts every host afresh: one process can run a few
    // percent faster or slower than an identical one for its whole life
    // (two off hosts kept for a whole run differed by up to 10% in CPU per
    // request), so a host per configuration for the whole run measured the
    // processes, not the configurations.
    let start = |name: &str, toml: &str| -> anyhow::Result<(ChildHost, tempfile::TempDir)> {
        let (dir, manifest) = manifest_file(toml);
        let host = ChildHost::spawn_in(bin, dir.path(), &manifest, &[], &blank)?;
        let addr = host.addr;
        let check = run_load(
            addr,
            Load {
                connections: 1,
                warmup: Duration::ZERO,
                duration: Duration::from_millis(200),
            },
            StatusCode::OK,
            Arc::new(move |_, _| common::get(addr, "/hello")),
        );
        anyhow::ensure!(
            check.ok > 0 && check.errors == 0,
            "{name}: GET /hello failed"
        );
        Ok((host, dir))
    };
    let hosts: Vec<(&str,)> = configs.iter().map(|(name, _)| (*name,)).collect();
    println!(
        "load: {} keep-alive HTTP/1.1 connections, {:?} warm-up, {rounds} rounds of {:?} per configuration, alternating (order rotates each round), a fresh host process per configuration and round",
        load.connections, load.warmup, load.duration
    );

    let mut results: Vec<Vec<LoadResult>> = hosts.iter().map(|_| Vec::new()).collect();
    // The host's own CPU time per request, from /proc: steadier than
    // throughput on a shared VM, where a neighbour's burst moves req/s.
    let mut cpu: Vec<Vec<f64>> = hosts.iter().map(|_| Vec::new()).collect();
    // The last exporting host, stopped gently at the end.
    let mut exporting = None;
    for round in 0..rounds {
        for i in 0..hosts.len() {
            let i = (i + round) % hosts.len();
            let (name, toml) = &configs[i];
            let (host, dir) = start(name, toml)?;
            let addr = host.addr;
            let before = cpu_seconds(host.child.id());
            let r = run_load(
                addr,
                load,
                StatusCode::OK,
                Arc::new(move |_, _| common::get(addr, "/hello")),
            );
            let used = cpu_seconds(host.child.id()) - before;
            // The warm-up's requests are not counted: assume its rate.
            let requests = r.ok as f64 * (load.warmup + load.duration).as_secs_f64()
                / load.duration.as_secs_f64();
            cpu[i].push(used / requests.max(1.0) * 1e6);
            r.warn(name);
            results[i].push(r);
            if i == hosts.len() - 1 {
                exporting = Some((host, dir));
            }
        }
    }
    let exported_requests = sink.requests.load(Ordering::Relaxed);
    let exported_bytes = sink.bytes.load(Ordering::Relaxed);

    let rate = |rs: &[LoadResult]| rs.iter().map(LoadResult::rate).sum::<f64>() / rs.len() as f64;
    let median = |rs: &[LoadResult], f: &dyn Fn(&LoadResult) -> f64| {
        let mut v: Vec<f64> = rs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // The baseline of each round is the mean of the two off hosts in that
    // round (they are the same configuration); a host's cost is the median
    // of its per-round costs, so one disturbed round (this is a shared VM)
    // does not decide the figure.
    let base: Vec<f64> = results[0]
        .iter()
        .zip(&results[1])
        .map(|(a, b)| (a.rate() + b.rate()) / 2.0)
        .collect();
    let per_round = |i: usize| -> Vec<f64> {
        results[i]
            .iter()
            .zip(&base)
            .map(|(r, base)| 1.0 - r.rate() / base)
            .collect()
    };
    let cost = |i: usize| {
        let mut v = per_round(i);
        v.sort_by(f64::total_cmp);
        match v.len() % 2 {
            1 => v[v.len() / 2],
            _ => (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0,
        }
    };
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .zip(&results)
        .enumerate()
        .map(|(i, ((name, ..), rs))| {
            vec![
                name.to_string(),
                fmt_rate(rate(rs)),
                format!("{:+.1}%", cost(i) * 100.0),
                fmt_ns(median(rs, &|r| r.quantile(0.5))),
                fmt_ns(median(rs, &|r| r.quantile(0.99))),
                rs.iter().map(|r| r.errors).sum::<u64>().to_string(),
            ]
        })
        .collect();
    print_table(
        "GET /hello through `atoll up` (mean req/s over rounds; cost: median over rounds of 1 - req/s / mean of the two off hosts in the same round; median p50/p99)",
        &["tracing", "req/s", "cost", "p50", "p99", "errors"],
        &rows,
    );
    for (i, (name, ..)) in hosts.iter().enumerate() {
        let rounds: Vec<String> = per_round(i)
            .iter()
            .map(|c| format!("{:+.1}%", c * 100.0))
            .collect();
        println!("{name}: cost per round {}", rounds.join(", "));
    }
    // Off against off, per round: how far two identical hosts drift apart.
    let mut drift: Vec<f64> = results[0]
        .iter()
        .zip(&results[1])
        .map(|(a, b)| (1.0 - b.rate() / a.rate()).abs())
        .collect();
    drift.sort_by(f64::total_cmp);
    let noise = drift[drift.len() / 2];
    // CPU per request: the median per round, against the mean of the two
    // off hosts' medians.
    let cpu_median = |i: usize| {
        let mut v = cpu[i].clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let cpu_off = (cpu_median(0) + cpu_median(1)) / 2.0;
    println!("\nhost CPU per request (median over rounds; warm-up counted at the measured rate):");
    for (i, (name, ..)) in hosts.iter().enumerate() {
        println!(
            "  {name}: {:.1} µs ({:+.1}% vs off)",
            cpu_median(i),
            (cpu_median(i) / cpu_off - 1.0) * 100.0
        );
    }
    let unsampled = cost(2);
    let tenth = cost(3);
    let on = cost(4);
    println!(
        "\nreceiver: {exported_requests} export requests, {} KiB of protobuf",
        exported_bytes / 1024
    );
    println!(
        "off vs off (noise floor, median per-round difference): {:.1}%; layer present but unsampled vs off: {:.1}%",
        noise * 100.0,
        unsampled * 100.0
    );
    println!(
        "goal: export on costs < {:.0}% of throughput: every span sent {} ({:.1}%, ratio on/off {:.3}); sample_ratio 0.1 {} ({:.1}%)",
        GOAL_ON * 100.0,
        if on < GOAL_ON { "met" } else { "NOT met" },
        on * 100.0,
        1.0 - on,
        if tenth < GOAL_ON { "met" } else { "NOT met" },
        tenth * 100.0,
    );
    println!(
        "goal: export off costs < {:.0}%: off installs no OpenTelemetry layer and the spans stay disabled (the same subscriber as without the feature); \
         the two off hosts differ by {:.1}%, and even the unsampled layer costs {:.1}%",
        GOAL_OFF * 100.0,
        noise * 100.0,
        unsampled * 100.0
    );

    // Stop the exporting host gently: its last line says what it sent.
    let (exporting, _dir) = exporting.expect("the exporting host");
    let pid = exporting.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status()?;
    let mut exporting = exporting;
    for _ in 0..300 {
        if exporting.child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(line) = exporting.stderr.lock().unwrap().iter().find(|l| {
        l.contains("trace export flushed") || l.contains("SpansDropped") || l.contains("dropped")
    }) {
        println!("exporting host: {line}");
    }
    Ok(())
}

/// User plus system CPU seconds `pid` has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) in parens.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime: fields 14 and 15 of the line, 11 and 12 (from 0) after ')'.
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
