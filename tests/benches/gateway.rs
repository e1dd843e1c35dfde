//! Requests/s and latency of `GET /hello` through an in-process Atoll host
//! serving the `hello` guest (a fresh instance per request), against a plain
//! hyper server that answers the same bytes, on the same runtime settings,
//! driven by the same load generator in the same run. Then `wrk` against both,
//! if it is installed, as a second opinion.
//!
//! `cargo bench -p atoll-tests --bench gateway`; lengthen with
//! `ATOLL_BENCH_SECS` (measured seconds per server, default 5),
//! `ATOLL_BENCH_WARMUP` (default 1) and `ATOLL_BENCH_CONNS` (default 32).

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use atoll_tests::TestHost;
use bytes::Bytes;
use common::{Load, fmt_ns, fmt_rate, print_table, run_load};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

const MANIFEST: &str = r#"
[components.hello]
source = "{hello}"
routes = ["/hello"]
"#;

/// The issue's goal: Atoll serves at least this share of native throughput.
const GOAL: f64 = 0.40;

fn main() -> anyhow::Result<()> {
    common::print_machine();
    let load = Load::from_env(32);
    // Logging as `atoll up` sets it up (info spans per request are part of the cost).
    atoll::telemetry::init(atoll::telemetry::LogFormat::Text);
    // The host's runtime, as `atoll up` builds it but with exactly 2 workers;
    // the native server shares it, idle while Atoll is measured and vice versa.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let atoll = server_rt.block_on(TestHost::start(MANIFEST));
    let atoll_addr = atoll.host.addr();
    let native_addr = server_rt.block_on(native_server())?;

    let reply = server_rt.block_on(atoll_tests::send(
        "GET",
        &format!("http://{atoll_addr}/hello"),
        Bytes::new(),
    ))?;
    anyhow::ensure!(
        reply.status == 200 && reply.body == "hello from atoll: /hello\n",
        "atoll answered {} {:?}",
        reply.status,
        reply.body
    );
    println!(
        "load: {} keep-alive HTTP/1.1 connections, {:?} warm-up, {:?} measured, client on 1 thread",
        load.connections, load.warmup, load.duration
    );

    let servers = [
        ("atoll (hello guest)", atoll_addr),
        ("native hyper", native_addr),
    ];
    let results: Vec<_> = servers
        .iter()
        .map(|(name, addr)| {
            let addr = *addr;
            let r = run_load(
                addr,
                load,
                StatusCode::OK,
                Arc::new(move |_, _| common::get(addr, "/hello")),
            );
            r.warn(name);
            r
        })
        .collect();
    let ratio = results[0].rate() / results[1].rate();
    let rows: Vec<Vec<String>> = servers
        .iter()
        .zip(&results)
        .map(|((name, _), r)| {
            let mut row = vec![name.to_string()];
            row.extend(r.cells());
            row
        })
        .chain([vec![
            "atoll / native".into(),
            format!("{:.0}%", ratio * 100.0),
            format!(
                "{:.1}x",
                results[0].quantile(0.5) / results[1].quantile(0.5)
            ),
            format!(
                "{:.1}x",
                results[0].quantile(0.99) / results[1].quantile(0.99)
            ),
            String::new(),
        ]])
        .collect();
    print_table(
        "GET /hello, in-process load generator",
        &["server", "req/s", "p50", "p99", "errors"],
        &rows,
    );
    println!(
        "\ngoal: atoll >= {:.0}% of native throughput: {} ({:.0}%)",
        GOAL * 100.0,
        if ratio >= GOAL { "met" } else { "NOT met" },
        ratio * 100.0
    );

    run_wrk(&servers, load);
    server_rt.block_on(atoll.stop());
    Ok(())
}

/// A plain hyper hello-world: the gateway's accept loop (nodelay, the auto
/// HTTP/1+2 builder, a task per connection) with a handler that answers what
/// the `hello` guest answers.
async fn native_server() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let body = format!("hello from atoll: {}\n", req.uri().path());
                let mut res = Response::new(Full::new(Bytes::from(body)));
                res.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                Ok::<_, Infallible>(res)
            });
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// `wrk -t1 -cN -dS --latency` against each server, if wrk is installed.
fn run_wrk(servers: &[(&str, SocketAddr)], load: Load) {
    let secs = load.duration.as_secs().max(1);
    let mut rows = Vec::new();
    for (name, addr) in servers {
        let out = Command::new("wrk")
            .args([
                "-t1".to_string(),
                format!("-c{}", load.connections),
                format!("-d{secs}s"),
                "--latency".to_string(),
                format!("http://{addr}/hello"),
            ])
            .output();
        let out = match out {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
            Ok(out) => {
                println!(
                    "\nwrk failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return;
            }
            Err(e) => {
                println!("\nwrk not run ({e}); install wrk for a second opinion");
                return;
            }
        };
        let wrk = Wrk::parse(&out);
        rows.push((name.to_string(), wrk));
    }
    let ratio = match (rows[0].1.rate, rows[1].1.rate) {
        (Some(a), Some(n)) => format!("{:.0}%", a / n * 100.0),
        _ => "?".into(),
    };
    let cell = |v: Option<f64>, f: fn(f64) -> String| v.map_or("?".into(), f);
    let mut table: Vec<Vec<String>> = rows
        .iter()
        .map(|(name, w)| {
            vec![
                name.clone(),
                cell(w.rate, fmt_rate),
                cell(w.p50, fmt_ns),
                cell(w.p99, fmt_ns),
                w.non_2xx.to_string(),
            ]
        })
        .collect();
    table.push(vec![
        "atoll / native".into(),
        ratio,
        String::new(),
        String::new(),
        String::new(),
    ]);
    print_table(
        &format!(
            "GET /hello, wrk -t1 -c{} -d{secs}s --latency",
            load.connections
        ),
        &["server", "req/s", "p50", "p99", "non-2xx"],
        &table,
    );
}

/// The figures read from wrk's output.
struct Wrk {
    rate: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    non_2xx: u64,
}

impl Wrk {
    fn parse(out: &str) -> Wrk {
        let field = |prefix: &str| {
            out.lines()
                .map(str::trim)
                .find_map(|l| l.strip_prefix(prefix))
                .map(str::trim)
        };
        Wrk {
            rate: field("Requests/sec:").and_then(|v| v.parse().ok()),
            p50: field("50%").and_then(parse_wrk_duration),
            p99: field("99%").and_then(parse_wrk_duration),
            non_2xx: field("Non-2xx or 3xx responses:")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        }
    }
}

/// wrk's `123.45us`, `1.20ms`, `2.00s` as ns.
fn parse_wrk_duration(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    let scale = match unit {
        "us" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        _ => return None,
    };
    Some(n * scale)
}
