//! What the bench binaries share: settings from the environment, a closed-loop
//! HTTP/1.1 load generator, latency histograms and table printing.
//!
//! The load generator runs on its own single-threaded tokio runtime on the
//! calling thread, so on a 2-core machine it takes at most one core away from
//! the server under test, the same for every server it is pointed at.

#![allow(dead_code)] // each bench uses a different part of this module

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// A duration in seconds from the environment (fractions allowed), or `default`.
pub fn env_secs(name: &str, default: f64) -> Duration {
    Duration::from_secs_f64(env_parse(name, default))
}

/// A number from the environment, or `default`.
pub fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid number")),
        Err(_) => default,
    }
}

/// A histogram of nanoseconds, 1 ns to 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Records one duration.
pub fn record(hist: &mut Histogram<u64>, d: Duration) {
    hist.saturating_record(d.as_nanos().max(1) as u64);
}

/// A nanosecond count as a short human figure (`840 ns`, `12.3 µs`, `4.56 ms`).
pub fn fmt_ns(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 100_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1_000_000.0 {
        format!("{:.0} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

/// A rate, rounded, with thousands separators (`12,345`).
pub fn fmt_rate(per_sec: f64) -> String {
    let n = per_sec.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Prints an aligned table: the first column left-aligned, the rest right-aligned.
pub fn print_table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::from("|");
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = w - cell.chars().count();
            if i == 0 {
                out.push_str(&format!(" {cell}{} |", " ".repeat(pad)));
            } else {
                out.push_str(&format!(" {}{cell} |", " ".repeat(pad)));
            }
        }
        out
    };
    println!("\n{title}\n");
    println!("{}", line(header.iter().map(|h| h.to_string()).collect()));
    let mut sep = String::from("|");
    for (i, w) in widths.iter().enumerate() {
        if i == 0 {
            sep.push_str(&format!(" {} |", "-".repeat(*w)));
        } else {
            sep.push_str(&format!(" {}: |", "-".repeat(w - 1)));
        }
    }
    println!("{sep}");
    for row in rows {
        println!("{}", line(row.clone()));
    }
}

/// How hard and how long to push a server.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Keep-alive connections, each with one request in flight at a time.
    pub connections: usize,
    /// Requests run but not counted, to fill caches and pools first.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
}

impl Load {
    /// Settings from `ATOLL_BENCH_CONNS`, `ATOLL_BENCH_WARMUP` and `ATOLL_BENCH_SECS`.
    pub fn from_env(connections: usize) -> Load {
        Load {
            connections: env_parse("ATOLL_BENCH_CONNS", connections),
            warmup: env_secs("ATOLL_BENCH_WARMUP", 1.0),
            duration: env_secs("ATOLL_BENCH_SECS", 5.0),
        }
    }
}

/// What a load run measured.
pub struct LoadResult {
    /// Requests completed with the expected status during the measured time.
    pub ok: u64,
    /// Other statuses and transport errors during the measured time.
    pub errors: u64,
    /// The first unexpected outcome, to print.
    pub first_error: Option<String>,
    /// The measured time.
    pub duration: Duration,
    /// Latency of each counted request, in ns.
    pub latency: Histogram<u64>,
}

impl LoadResult {
    /// Completed requests per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.duration.as_secs_f64()
    }

    /// A latency quantile in ns.
    pub fn quantile(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64
    }

    /// `rate`, `p50`, `p99`, `errors` cells.
    pub fn cells(&self) -> Vec<String> {
        vec![
            fmt_rate(self.rate()),
            fmt_ns(self.quantile(0.50)),
            fmt_ns(self.quantile(0.99)),
            self.errors.to_string(),
        ]
    }

    /// Prints the first unexpected outcome, if any.
    pub fn warn(&self, what: &str) {
        if let Some(e) = &self.first_error {
            eprintln!(
                "warning: {what}: {} unexpected outcomes, first: {e}",
                self.errors
            );
        }
    }
}

/// Builds request number `seq` of connection `conn`.
pub type MakeRequest = Arc<dyn Fn(usize, u64) -> Request<Full<Bytes>> + Send + Sync>;

/// Drives `addr` with `load.connections` keep-alive HTTP/1.1 connections, each
/// sending its next request as soon as the previous response has been read
/// (closed loop), for `load.warmup + load.duration`. Only requests started
/// after the warm-up and finished before the end are counted.
pub fn run_load(addr: SocketAddr, load: Load, expect: StatusCode, make: MakeRequest) -> LoadResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the load generator's runtime");
    rt.block_on(async move {
        let start = Instant::now();
        let measure_from = start + load.warmup;
        let end = measure_from + load.duration;
        let tasks: Vec<_> = (0..load.connections)
            .map(|conn| {
                let make = make.clone();
                tokio::spawn(connection(addr, conn, measure_from, end, expect, make))
            })
            .collect();
        let mut total = PerConnection::new();
        for t in tasks {
            let one = t.await.expect("load task panicked");
            total.ok += one.ok;
            total.errors += one.errors;
            total.first_error = total.first_error.or(one.first_error);
            total
                .latency
                .add(&one.latency)
                .expect("same histogram bounds");
        }
        LoadResult {
            ok: total.ok,
            errors: total.errors,
            first_error: total.first_error,
            duration: load.duration,
            latency: total.latency,
        }
    })
}

struct PerConnection {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latency: Histogram<u64>,
}

impl PerConnection {
    fn new() -> Self {
        PerConnection {
            ok: 0,
            errors: 0,
            first_error: None,
            latency: histogram(),
        }
    }

    fn fail(&mut self, counted: bool, why: String) {
        if counted {
            self.errors += 1;
        }
        self.first_error.get_or_insert(why);
    }
}

async fn connection(
    addr: SocketAddr,
    conn: usize,
    measure_from: Instant,
    end: Instant,
    expect: StatusCode,
    make: MakeRequest,
) -> PerConnection {
    let mut out = PerConnection::new();
    let mut seq = 0u64;
    'reconnect: while Instant::now() < end {
        let mut sender = match open(addr).await {
            Ok(s) => s,
            Err(e) => {
                out.fail(Instant::now() >= measure_from, format!("connect: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        loop {
            let started = Instant::now();
            if started >= end {
                break 'reconnect;
            }
            let counted = started >= measure_from;
            let req = make(conn, seq);
            seq += 1;
            let res = match sender.send_request(req).await {
                Ok(res) => res,
                Err(e) => {
                    out.fail(counted, format!("request: {e}"));
                    continue 'reconnect;
                }
            };
            let status = res.status();
            let body = res.into_body().collect().await;
            let finished = Instant::now();
            let counted = counted && finished <= end;
            match body {
                Ok(_) if status == expect => {
                    if counted {
                        out.ok += 1;
                        record(&mut out.latency, finished - started);
                    }
                }
                Ok(body) => {
                    let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
                    out.fail(counted, format!("status {status}: {}", text.trim()));
                }
                Err(e) => {
                    out.fail(counted, format!("body: {e}"));
                    continue 'reconnect;
                }
            }
            if sender.ready().await.is_err() {
                continue 'reconnect;
            }
        }
    }
    out
}

async fn open(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// A GET request for `path` on `addr`.
pub fn get(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("valid request")
}

/// The machine, for the top of every bench's output.
pub fn print_machine() {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    println!("machine: {cpus} CPUs ({model})");
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bit set that sched_getaffinity fills in.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread, and the threads and processes it starts from
/// now on, to `cpus`. Returns false if the kernel refused.
pub fn pin_thread(cpus: &[usize]) -> bool {
    // SAFETY: `set` is a plain bit set, filled in before the call reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Where a bench puts the server under test and its load: with
/// `ATOLL_BENCH_PIN` unset or 1 and at least 2 CPUs, the server gets the
/// last CPU and the bench (load generator, receivers) the others, so the
/// two never take turns on one core and throughput is the server's own CPU
/// time per request; with `ATOLL_BENCH_PIN=0`, everything shares every CPU.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The server's CPUs (empty: not pinned).
    pub server: Vec<usize>,
    /// The bench's own CPUs (empty: not pinned).
    pub bench: Vec<usize>,
}

impl Placement {
    /// From `ATOLL_BENCH_PIN` and the CPUs this process may use.
    pub fn from_env() -> Placement {
        let cpus = allowed_cpus();
        let pin = env_parse("ATOLL_BENCH_PIN", 1u8) == 1 && cpus.len() >= 2;
        match cpus.split_last() {
            Some((last, rest)) if pin => Placement {
                server: vec![*last],
                bench: rest.to_vec(),
            },
            _ => Placement {
                server: Vec::new(),
                bench: Vec::new(),
            },
        }
    }

    /// Runs `start` (which spawns the server) with the calling thread on the
    /// server's CPUs, so the server inherits them, then moves the calling
    /// thread back to the bench's.
    pub fn spawn_server<T>(&self, start: impl FnOnce() -> T) -> T {
        if self.server.is_empty() {
            return start();
        }
        pin_thread(&self.server);
        let started = start();
        pin_thread(&self.bench);
        started
    }

    /// Puts the calling thread on the bench's CPUs.
    pub fn pin_bench_thread(&self) {
        if !self.bench.is_empty() {
            pin_thread(&self.bench);
        }
    }

    /// A tokio runtime with one worker, on the bench's CPUs (for receivers
    /// and other helpers of the bench).
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let placement = self.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .on_thread_start(move || placement.pin_bench_thread())
            .enable_all()
            .build()
    }

    /// One line for the bench's header.
    pub fn describe(&self) -> String {
        if self.server.is_empty() {
            "not pinned: server and load share every CPU".to_string()
        } else {
            format!(
                "server pinned to CPU {:?}, load generator and receivers to CPU {:?} (ATOLL_BENCH_PIN=0 to share)",
                self.server, self.bench
            )
        }
    }
}

impl LoadResult {
    /// Adds another run's requests, errors, time and latencies to this one.
    pub fn merge(&mut self, other: LoadResult) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.duration += other.duration;
        self.latency
            .add(&other.latency)
            .expect("same histogram bounds");
    }
}
