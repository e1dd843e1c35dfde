//! The cost of OTLP trace export: `GET /hello` through `atoll up` child
//! processes (the export pipeline is process-wide, so each configuration is
//! its own host) in the same run, each host loaded in turn for short slots
//! while the others idle, with fresh processes every round:
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
//! The hosts run pinned to one CPU and the load generator and the OTLP
//! receiver to the other ([`common::Placement`]): sharing both cores, the
//! scheduler's choices between the host's workers and the load generator
//! moved req/s by up to 14% between two identical hosts, and the client's
//! own CPU time diluted the host's cost. Pinned, req/s is the host's own
//! CPU time per request, export task included.
//!
//! `cargo bench -p atoll-tests --bench tracing`; lengthen with
//! `ATOLL_BENCH_ROUNDS` (default 6), `ATOLL_BENCH_PASSES` (slots per host
//! and round, default 6), `ATOLL_BENCH_SLOT` (seconds per slot, default
//! 0.5); `ATOLL_BENCH_CONNS` (default 32); `ATOLL_BENCH_PIN=0` shares every
//! CPU between hosts and load.

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
    let placement = common::Placement::from_env();
    placement.pin_bench_thread();
    let connections = common::env_parse("ATOLL_BENCH_CONNS", 32);
    let slot = Load {
        connections,
        warmup: Duration::from_millis(100),
        duration: common::env_secs("ATOLL_BENCH_SLOT", 0.5),
    };
    let passes: usize = common::env_parse("ATOLL_BENCH_PASSES", 6);
    let rounds: usize = common::env_parse("ATOLL_BENCH_ROUNDS", 6);
    let bin = Path::new(env!("CARGO_BIN_EXE_atoll-cli"));

    let receiver_rt = placement.runtime()?;
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
    let start = |name: &str, toml: &str| -> anyhow::Result<(ChildHost, tempfile::TempDir)> {
        let (dir, manifest) = manifest_file(toml);
        let host = placement
            .spawn_server(|| ChildHost::spawn_in(bin, dir.path(), &manifest, &[], &blank))?;
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
    println!("placement: {}", placement.describe());
    println!(
        "load: {connections} keep-alive HTTP/1.1 connections; {rounds} rounds, each starting every configuration's host afresh, \
         then {passes} passes giving each host {:?} of load (after {:?} not counted) in rotating order while the others idle",
        slot.duration, slot.warmup
    );

    // Per configuration, one merged result and one CPU figure per round.
    let mut results: Vec<Vec<LoadResult>> = hosts.iter().map(|_| Vec::new()).collect();
    let mut cpu: Vec<Vec<f64>> = hosts.iter().map(|_| Vec::new()).collect();
    // The last round's exporting host, stopped gently at the end.
    let mut exporting = None;
    for round in 0..rounds {
        // Every host of a round runs at once, idle but for its slots: a
        // neighbour's burst on this shared VM or a slow minute then falls on
        // all configurations alike. Fresh processes each round, because one
        // process can run a few percent faster or slower than an identical
        // one for its whole life.
        // They start in a rotating order too (a host started first or last
        // in a round may fare differently).
        let mut running: Vec<Option<_>> = configs.iter().map(|_| None).collect();
        for k in 0..configs.len() {
            let i = (k + round) % configs.len();
            running[i] = Some(start(configs[i].0, &configs[i].1)?);
        }
        let running: Vec<_> = running.into_iter().map(|h| h.expect("started")).collect();
        let mut merged: Vec<Option<LoadResult>> = hosts.iter().map(|_| None).collect();
        let mut cpu_used = vec![0.0; hosts.len()];
        let mut requests = vec![0.0; hosts.len()];
        for pass in 0..passes {
            for k in 0..hosts.len() {
                let i = (k + pass + round) % hosts.len();
                let (host, _) = &running[i];
                let addr = host.addr;
                let before = cpu_seconds(host.child.id());
                let r = run_load(
                    addr,
                    slot,
                    StatusCode::OK,
                    Arc::new(move |_, _| common::get(addr, "/hello")),
                );
                cpu_used[i] += cpu_seconds(host.child.id()) - before;
                // The warm-up's requests are not counted: assume its rate.
                requests[i] += r.ok as f64 * (slot.warmup + slot.duration).as_secs_f64()
                    / slot.duration.as_secs_f64();
                r.warn(hosts[i].0);
                match &mut merged[i] {
                    Some(m) => m.merge(r),
                    empty => *empty = Some(r),
                }
            }
        }
        for (i, m) in merged.into_iter().enumerate() {
            results[i].push(m.expect("every host ran"));
            cpu[i].push(cpu_used[i] / requests[i].max(1.0) * 1e6);
        }
        exporting = running.into_iter().last();
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
        "GET /hello through `atoll up` (mean req/s over rounds; cost: median over rounds of 1 - req/s / mean of the two off hosts in the same round; median p50/p99 of the rounds)",
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
        "off vs off (noise floor, median per-round difference): {:.1}%; export on but unsampled vs off: {:.1}%",
        noise * 100.0,
        unsampled * 100.0
    );

    // The same spans in this process, timed on their own: what one request's
    // spans cost on the request path and on the export task, against the
    // off hosts' CPU time per request above.
    let pipeline = span_pipeline(&collector, &placement)?;
    let share = |ns: f64| ns / (cpu_off * 1e3) * 100.0;
    print_table(
        "The spans of one GET /hello (gateway.request and component.invoke, with their attributes), in this process, thread CPU time per request",
        &[
            "export",
            "request path",
            "export task",
            "share of a request's host CPU",
        ],
        &[
            vec![
                "off".into(),
                fmt_ns(pipeline.off_ns),
                "-".into(),
                format!("{:.3}%", share(pipeline.off_ns)),
            ],
            vec![
                "on, every span sent".into(),
                fmt_ns(pipeline.on_ns),
                fmt_ns(pipeline.export_ns),
                format!("{:.2}%", share(pipeline.on_ns + pipeline.export_ns)),
            ],
        ],
    );
    println!(
        "({} requests' spans each; the export task encoded and sent them over http/protobuf to the receiver: {} spans exported, {} dropped)",
        pipeline.requests, pipeline.exported, pipeline.dropped
    );

    println!(
        "\ngoal: export on costs < {:.0}% of throughput: every span sent {} ({:.1}%, ratio on/off {:.3}; \
         the spans alone {:.2}% of a request's CPU); sample_ratio 0.1 {} ({:.1}%)",
        GOAL_ON * 100.0,
        if on < GOAL_ON { "met" } else { "NOT met" },
        on * 100.0,
        1.0 - on,
        share(pipeline.on_ns + pipeline.export_ns),
        if tenth < GOAL_ON { "met" } else { "NOT met" },
        tenth * 100.0,
    );
    let off = share(pipeline.off_ns) / 100.0;
    println!(
        "goal: export off costs < {:.0}%: {} (off records nothing: a request's trace context costs {} of its {:.1} µs, {:.3}%; \
         the two off hosts differ by {:.1}%)",
        GOAL_OFF * 100.0,
        if off < GOAL_OFF { "met" } else { "NOT met" },
        fmt_ns(pipeline.off_ns),
        cpu_off,
        off * 100.0,
        noise * 100.0,
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

/// What [`span_pipeline`] measured, per request (two spans).
struct Pipeline {
    requests: u64,
    /// Request-path CPU time with export off.
    off_ns: f64,
    /// Request-path CPU time with every span recorded.
    on_ns: f64,
    /// The export task's CPU time (encoding and sending).
    export_ns: f64,
    exported: u64,
    dropped: u64,
}

/// The spans the gateway and the dispatch make for one `GET /hello`, as
/// they make them: the request's span (a context only with export off),
/// the route attribute on it, the invocation's span with its attributes
/// made current while its future is polled, then the status.
fn request_spans() {
    use atoll::telemetry::otlp::exporting;
    use atoll::telemetry::span::{self, Span, SpanContext, SpanKind};
    let span = if exporting() {
        Span::continuing("gateway.request", SpanKind::Server, None).with(|a| {
            a.str("method", "GET").str("path", "/hello");
        })
    } else {
        Span::context_only(SpanContext {
            trace: span::new_trace_id(),
            span: span::new_span_id(),
            sampled: true,
        })
    };
    let own = span.context().expect("a context");
    std::hint::black_box(own.traceparent_bytes());
    let traced = span.clone();
    poll_ready(span.instrument(async {
        span::record_current(|a| _ = a.str("route", "/hello"));
        let invoke = Span::new("component.invoke", SpanKind::Internal).with(|a| {
            a.str("component", "hello").str("version", "1.0.0");
        });
        let inner = invoke.clone();
        poll_ready(invoke.instrument(async move {
            if inner.is_recording() {
                inner.record(|a| _ = a.uint("instantiate_us", 6));
            }
            std::hint::black_box(span::current_trace_id());
        }));
    }));
    traced.record(|a| {
        a.int("status", 200)
            .str("component", "hello")
            .display("version", "1.0.0");
    });
}

/// Polls a future that is ready at once.
fn poll_ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the spans' futures are ready at once"),
    }
}

/// CPU time of the calling thread, in ns.
fn thread_cpu_ns() -> f64 {
    // SAFETY: `ts` is written by clock_gettime before it is read.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
    }
}

/// Times [`request_spans`] with export off, then starts trace export in
/// this process (to `collector`, on a runtime of its own so its thread's
/// CPU time is the export task's) and times it again, paced so the queue
/// never overflows.
fn span_pipeline(collector: &str, placement: &common::Placement) -> anyhow::Result<Pipeline> {
    use atoll::telemetry::otlp;
    let requests: u64 = common::env_parse("ATOLL_BENCH_SPAN_REQUESTS", 200_000);
    let timed = |n: u64| {
        let start = thread_cpu_ns();
        for _ in 0..n {
            request_spans();
        }
        (thread_cpu_ns() - start) / n as f64
    };
    timed(requests / 10);
    let off_ns = timed(requests);

    let export_rt = placement.runtime()?;
    let export = atoll::config::OtlpExport {
        url: format!("{collector}/v1/traces").parse()?,
        protocol: atoll::config::OtlpProtocol::HttpProtobuf,
        service_name: "bench".into(),
        sample_ratio: 1.0,
    };
    atoll::telemetry::init(atoll::telemetry::LogFormat::Text);
    let exporter = {
        let _runtime = export_rt.enter();
        otlp::start(&export)?.expect("no other exporter in the bench process")
    };
    let export_cpu = || {
        export_rt
            .block_on(export_rt.spawn(async { thread_cpu_ns() }))
            .expect("the export runtime's thread")
    };
    let stats = otlp::stats();
    let settled = |made: u64| {
        stats.exported.load(Ordering::Relaxed)
            + stats.failed.load(Ordering::Relaxed)
            + stats.dropped.load(Ordering::Relaxed)
            >= made
    };
    let export_before = export_cpu();
    let mut on_ns = 0.0;
    let mut made = 0u64;
    // Chunks of 1,000 requests (2,000 spans), waiting for the exporter
    // whenever it is more than two chunks behind: the queue holds 8,192.
    for _ in 0..requests / 1000 {
        while !settled(made.saturating_sub(4000)) {
            std::thread::sleep(Duration::from_micros(200));
        }
        on_ns += timed(1000) * 1000.0;
        made += 2000;
    }
    while !settled(made) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let export_ns = (export_cpu() - export_before) / requests as f64;
    export_rt.block_on(exporter.shutdown());
    Ok(Pipeline {
        requests,
        off_ns,
        on_ns: on_ns / requests as f64,
        export_ns,
        exported: stats.exported.load(Ordering::Relaxed),
        dropped: stats.dropped.load(Ordering::Relaxed),
    })
}
