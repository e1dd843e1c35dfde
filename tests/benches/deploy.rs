//! Hot swap: how soon a deployed version serves, and what swaps do to the
//! latency of the traffic around them, in one run against an in-process host
//! serving the `swap-v1` guest (`health = "/healthz"`, so every change runs
//! the health check).
//!
//! (a) Deploy-to-serving. Each round sends `POST /v1/components/swap/versions`
//!     (the admin API that `atoll deploy` calls) with a component binary,
//!     while a keep-alive connection polls `GET /swap` back to back. The
//!     figure is the time from just before the request is sent to the end of
//!     the first response from the new version. Rounds alternate the
//!     `swap-v1` and `swap-v2` binaries under increasing versions; both were
//!     compiled once before, so each round loads the cached artifact. Then the
//!     same for `POST /v1/components/swap/rollback?to=V`, alternating between
//!     two kept versions. Then cold deploys: binaries not seen before (the
//!     same guests with a custom section holding a fresh nonce), so each is
//!     compiled; the issue asks for compile time separately. The
//!     server-reported `compile_ms`, `link_ms`, `health_ms` and `total_ms` of
//!     each change are summarised; `other` is `total - compile - link -
//!     health`: hashing the upload, writing and fsyncing the registry file
//!     (and the blob, when its digest is new), and pruning blobs.
//! (b) Latency during swaps vs steady state: R requests/s spread over C
//!     keep-alive connections, on a fixed schedule. A pacer thread releases
//!     each request at its intended time, and latency runs from that time, not
//!     from the actual send, so a stalled connection cannot hide the requests
//!     queued behind it (no coordinated omission). After a warm-up, 1 s
//!     blocks alternate: steady, then a deploy every 100 ms (alternating
//!     binaries, cached artifacts), and so on, S seconds of each. Alternating
//!     blocks, rather than one window of each, spreads whatever else the
//!     machine does over both kinds. A request counts in the block its
//!     intended time falls in. `failed` counts transport errors and non-200
//!     answers; `mixed` counts answers whose `x-swap-version` header and body
//!     name different versions. A second table splits the swap blocks'
//!     requests into those due while a deploy ran, those due in the 20 ms
//!     after one, and the rest. The pacer's own lateness is printed too: when
//!     other work takes the CPUs, it grows first (its p99 is 100-150 µs on an
//!     idle machine; over 300 µs, the run was disturbed).
//!
//! The host runs on its own runtime, multi-thread with 2 workers like `atoll
//! up`, with logging as `atoll up` sets it up. The client (load connections,
//! poller and admin calls) runs on one single-threaded runtime on the main
//! thread; the pacer is one more thread that mostly sleeps.
//!
//! `cargo bench -p atoll-tests --bench deploy`; `ATOLL_BENCH_ROUNDS` (rounds
//! per change in (a), default 50), `ATOLL_BENCH_COLD` (cold deploys, default
//! 3), `ATOLL_BENCH_RATE` (requests/s in (b), default 2000),
//! `ATOLL_BENCH_CONNS` (connections in (b), default 16), `ATOLL_BENCH_SECS`
//! (seconds of each kind of block in (b), default 15: with 5, the p99 ratio
//! ranged from 0.5x to 3x over 11 idle runs), `ATOLL_BENCH_BLOCK` (seconds per
//! block, default 1), `ATOLL_BENCH_WARMUP` (default 1),
//! `ATOLL_BENCH_SWAP_EVERY` (ms between deploys in (b), default 100).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use atoll::registry::DeployReport;
use atoll_tests::TestHost;
use bytes::Bytes;
use common::{env_parse, env_secs, fmt_ns, fmt_rate, histogram, print_table, record};
use hdrhistogram::Histogram;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

/// One component, precompiled at start (`atoll up` caches the artifact), with
/// a health route.
const MANIFEST: &str = r#"
[components.swap]
source = "{swap-v1}"
version = "1.0.0"
routes = ["/swap"]
health = "/healthz"
"#;

/// The component's name in the admin API.
const COMPONENT: &str = "swap";
/// The route the load and the poller GET.
const PATH: &str = "/swap";

/// The issue's goal: from the deploy call to the new version serving.
const GOAL_SERVING: Duration = Duration::from_millis(50);
/// The issue's goal: p99 during swaps at most this multiple of steady state.
const GOAL_P99_RATIO: f64 = 2.0;

/// Settings of one run.
struct Settings {
    rounds: usize,
    cold: usize,
    rate: u64,
    connections: usize,
    warmup: Duration,
    window: Duration,
    block: Duration,
    swap_every: Duration,
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            rounds: env_parse("ATOLL_BENCH_ROUNDS", 50),
            cold: env_parse("ATOLL_BENCH_COLD", 3),
            rate: env_parse("ATOLL_BENCH_RATE", 2000),
            connections: env_parse("ATOLL_BENCH_CONNS", 16),
            warmup: env_secs("ATOLL_BENCH_WARMUP", 1.0),
            window: env_secs("ATOLL_BENCH_SECS", 15.0),
            block: env_secs("ATOLL_BENCH_BLOCK", 1.0),
            swap_every: Duration::from_millis(env_parse("ATOLL_BENCH_SWAP_EVERY", 100)),
        }
    }
}

/// The two releases, and what each answers.
struct Binaries {
    v1: Bytes,
    v2: Bytes,
}

impl Binaries {
    /// The binary and the answer of round `n`: v2 on even rounds, v1 on odd.
    fn round(&self, n: usize) -> (&Bytes, &'static str) {
        if n.is_multiple_of(2) {
            (&self.v2, "v2")
        } else {
            (&self.v1, "v1")
        }
    }
}

fn main() -> anyhow::Result<()> {
    common::print_machine();
    let s = Settings::from_env();
    // Logging as `atoll up` sets it up: every change logs a line.
    atoll::telemetry::init(atoll::telemetry::LogFormat::Text);
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let v1 = atoll_tests::guest("swap-v1");
    let binaries = Binaries {
        v1: std::fs::read(&v1)?.into(),
        v2: std::fs::read(atoll_tests::guest("swap-v2"))?.into(),
    };
    let host = server_rt.block_on(TestHost::start(MANIFEST));
    let token = std::fs::read_to_string(host.dir.path().join("admin.token"))?;
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut admin = Admin {
        conn: Conn::new(host.host.admin_addr()),
        auth: format!("Bearer {}", token.trim()),
        next: 1,
    };
    let gateway = host.host.addr();

    client_rt.block_on(async {
        let mut poll = Conn::new(gateway);
        match poll.version().await {
            Outcome::Served(v) if v == "v1" => Ok(()),
            other => Err(anyhow::anyhow!("GET {PATH} before any deploy: {other:?}")),
        }
    })?;
    println!(
        "component: swap-v1 / swap-v2, {} KiB each, health = \"/healthz\"",
        binaries.v1.len() / 1024
    );

    let rows = client_rt.block_on(serving_part(&s, &mut admin, gateway, &binaries))?;
    let mut goals = print_serving(&s, &rows);

    let load = client_rt.block_on(load_part(&s, &mut admin, gateway, &binaries))?;
    goals.extend(print_load(&s, &load));
    print_table("goals", &["figure", "measured", "goal", "verdict"], &goals);

    server_rt.block_on(host.stop());
    Ok(())
}

// ---------------------------------------------------------------- (a)

/// One change, as the client and the server saw it.
struct Round {
    /// From just before the request to the end of the first new response.
    serving: Duration,
    /// From just before the request to the end of its answer.
    answer: Duration,
    report: DeployReport,
    /// Failed or mixed answers the poller saw.
    bad: u64,
}

/// The rows of table (a).
struct ServingRows {
    deploy: Vec<Round>,
    rollback: Vec<Round>,
    cold: Vec<Round>,
}

async fn serving_part(
    s: &Settings,
    admin: &mut Admin,
    gateway: SocketAddr,
    bin: &Binaries,
) -> anyhow::Result<ServingRows> {
    let mut poll = Conn::new(gateway);
    // Cold deploys first: binaries nobody has seen, alternating answers so
    // each one is told apart from the version it replaces.
    let mut cold = Vec::new();
    for n in 0..s.cold {
        let (base, want) = bin.round(n);
        let fresh = with_nonce(base, &format!("{}-{n}", std::process::id()));
        let version = admin.version();
        let path = format!("/v1/components/{COMPONENT}/versions?version={version}");
        cold.push(change(admin, &mut poll, &path, &fresh, want).await?);
    }
    // Compile swap-v2 once (swap-v1 was compiled at start), then let the
    // versions settle into a state where round 0 deploys v2 over v1.
    for n in [0, 1] {
        let (bytes, _) = bin.round(n);
        let version = admin.version();
        admin
            .call(
                &format!("/v1/components/{COMPONENT}/versions?version={version}"),
                bytes,
            )
            .await?;
    }
    let mut deploy = Vec::new();
    let mut kept = Vec::new();
    for n in 0..s.rounds {
        let (bytes, want) = bin.round(n);
        let version = admin.version();
        let path = format!("/v1/components/{COMPONENT}/versions?version={version}");
        deploy.push(change(admin, &mut poll, &path, bytes, want).await?);
        kept.push((version, want));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Alternate between the last two versions deployed (kept, different bytes).
    ensure!(kept.len() >= 2, "ATOLL_BENCH_ROUNDS must be at least 2");
    let pair = [kept[kept.len() - 2].clone(), kept[kept.len() - 1].clone()];
    let mut rollback = Vec::new();
    for n in 0..s.rounds {
        let (version, want) = &pair[n % 2];
        let path = format!("/v1/components/{COMPONENT}/rollback?to={version}");
        rollback.push(change(admin, &mut poll, &path, &Bytes::new(), want).await?);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(ServingRows {
        deploy,
        rollback,
        cold,
    })
}

/// Sends one change and polls the gateway until `want` answers.
async fn change(
    admin: &mut Admin,
    poll: &mut Conn,
    path: &str,
    body: &Bytes,
    want: &str,
) -> anyhow::Result<Round> {
    let t0 = Instant::now();
    let call = async {
        let report = admin.call(path, body).await;
        (report, t0.elapsed())
    };
    let first = async {
        let mut bad = 0;
        loop {
            match poll.version().await {
                Outcome::Served(v) if v == want => return Ok((t0.elapsed(), bad)),
                Outcome::Served(_) => {}
                Outcome::Failed(_) | Outcome::Mixed(_) => bad += 1,
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("{want} did not answer within 60 s of {path}");
            }
        }
    };
    let ((report, answer), first) = tokio::join!(call, first);
    let report = report?;
    let (serving, bad) = first?;
    Ok(Round {
        serving,
        answer,
        report,
        bad,
    })
}

/// `bytes` with a custom section appended: the same component under a digest
/// the artifact cache has not seen.
fn with_nonce(bytes: &[u8], nonce: &str) -> Bytes {
    let name = b"atoll-bench-nonce";
    let mut section = leb128(name.len());
    section.extend_from_slice(name);
    section.extend_from_slice(nonce.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.extend(leb128(section.len()));
    out.extend(section);
    out.into()
}

fn leb128(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Prints table (a) and the slowest precompiled change; returns the goal rows.
fn print_serving(s: &Settings, rows: &ServingRows) -> Vec<Vec<String>> {
    let kinds = [
        ("deploy, cached artifact", &rows.deploy),
        ("rollback ?to=, kept version", &rows.rollback),
        ("deploy, new binary (compiles)", &rows.cold),
    ];
    let table: Vec<Vec<String>> = kinds
        .iter()
        .filter(|(_, rounds)| !rounds.is_empty())
        .map(|(name, rounds)| serving_row(name, rounds))
        .collect();
    print_table(
        &format!(
            "(a) from the change request to the first response from the new version ({} rounds each, {} cold deploys; server figures are medians)",
            s.rounds, s.cold
        ),
        &[
            "change", "compiled", "p50", "p90", "max", "answered", "total", "compile", "link",
            "health", "other", "bad",
        ],
        &table,
    );
    let ms = |v: f64| fmt_ns(v * 1e6);
    let cached = rows.deploy.iter().chain(&rows.rollback);
    if let Some(r) = cached.max_by_key(|r| r.serving) {
        let t = &r.report;
        let health = t.health_ms.unwrap_or(0.0);
        println!(
            "
slowest precompiled change: {} to serving, answered after {}; server total {} = compile {} + link {} + health {} + other {}",
            fmt_ns(r.serving.as_nanos() as f64),
            fmt_ns(r.answer.as_nanos() as f64),
            ms(t.total_ms),
            ms(t.compile_ms),
            ms(t.link_ms),
            ms(health),
            ms(t.total_ms - t.compile_ms - t.link_ms - health),
        );
    }
    let mut goals = Vec::new();
    for (name, rounds) in &kinds[..2] {
        let Some(worst) = rounds.iter().map(|r| r.serving).max() else {
            continue;
        };
        let over = rounds.iter().filter(|r| r.serving >= GOAL_SERVING).count();
        goals.push(vec![
            format!("{name}: request to serving, slowest of {}", rounds.len()),
            format!(
                "{} (p50 {}; {over} over)",
                fmt_ns(worst.as_nanos() as f64),
                fmt_ns(quantile(rounds.iter().map(|r| r.serving), 0.5))
            ),
            format!("< {} ms", GOAL_SERVING.as_millis()),
            pass(worst < GOAL_SERVING).into(),
        ]);
    }
    if !rows.cold.is_empty() {
        goals.push(vec![
            "new binary: compile (request to serving), median".into(),
            format!(
                "{} ({})",
                ms(median(rows.cold.iter().map(|r| r.report.compile_ms))),
                fmt_ns(quantile(rows.cold.iter().map(|r| r.serving), 0.5))
            ),
            "reported separately".into(),
            String::new(),
        ]);
    }
    let bad: u64 = kinds
        .iter()
        .flat_map(|(_, r)| r.iter())
        .map(|r| r.bad)
        .sum();
    goals.push(vec![
        "failed or mixed answers to the poller in (a)".into(),
        bad.to_string(),
        "0".into(),
        pass(bad == 0).into(),
    ]);
    goals
}

fn serving_row(name: &str, rounds: &[Round]) -> Vec<String> {
    let serving = || rounds.iter().map(|r| r.serving);
    let ms = |v: f64| fmt_ns(v * 1e6);
    let reports = || rounds.iter().map(|r| &r.report);
    let compiled = reports().filter(|r| r.compiled).count();
    vec![
        name.to_string(),
        format!("{compiled}/{}", rounds.len()),
        fmt_ns(quantile(serving(), 0.5)),
        fmt_ns(quantile(serving(), 0.9)),
        fmt_ns(quantile(serving(), 1.0)),
        fmt_ns(quantile(rounds.iter().map(|r| r.answer), 0.5)),
        ms(median(reports().map(|r| r.total_ms))),
        ms(median(reports().map(|r| r.compile_ms))),
        ms(median(reports().map(|r| r.link_ms))),
        ms(median(reports().map(|r| r.health_ms.unwrap_or(0.0)))),
        ms(median(reports().map(|r| {
            r.total_ms - r.compile_ms - r.link_ms - r.health_ms.unwrap_or(0.0)
        }))),
        rounds.iter().map(|r| r.bad).sum::<u64>().to_string(),
    ]
}

// ---------------------------------------------------------------- (b)

/// The two kinds of block in (b); requests of the warm-up are not kept.
const WINDOWS: [&str; 2] = ["steady", "a deploy every SWAP ms"];

/// What one window saw.
struct WindowStats {
    latency: Histogram<u64>,
    /// Intended send time and latency (ns) of each request served.
    samples: Vec<(Instant, u64)>,
    ok: u64,
    failed: u64,
    mixed: u64,
    v1: u64,
    v2: u64,
    first_error: Option<String>,
}

impl WindowStats {
    fn new() -> Self {
        WindowStats {
            latency: histogram(),
            samples: Vec::new(),
            ok: 0,
            failed: 0,
            mixed: 0,
            v1: 0,
            v2: 0,
            first_error: None,
        }
    }

    fn add(&mut self, other: &WindowStats) {
        self.latency.add(&other.latency).expect("same bounds");
        self.samples.extend_from_slice(&other.samples);
        self.ok += other.ok;
        self.failed += other.failed;
        self.mixed += other.mixed;
        self.v1 += other.v1;
        self.v2 += other.v2;
        if self.first_error.is_none() {
            self.first_error = other.first_error.clone();
        }
    }

    fn q(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64
    }
}

/// What (b) measured.
struct LoadRun {
    windows: Vec<WindowStats>,
    /// The server's `total_ms` of each deploy made during the load.
    swaps: Vec<f64>,
    /// When each deploy was sent, and when its answer was read.
    deploys: Vec<(Instant, Instant)>,
    /// Deploys refused or failed.
    swap_errors: Vec<String>,
    /// How late the pacer released requests, ns.
    pacer_late: Histogram<u64>,
}

async fn load_part(
    s: &Settings,
    admin: &mut Admin,
    gateway: SocketAddr,
    bin: &Binaries,
) -> anyhow::Result<LoadRun> {
    let period = Duration::from_secs_f64(1.0 / s.rate as f64);
    let start = Instant::now() + Duration::from_millis(50);
    let measured = start + s.warmup;
    let blocks = (s.window.as_secs_f64() / s.block.as_secs_f64()).ceil() as u32 * 2;
    let block = s.block;
    let end = measured + block * blocks;
    let total = ((end - start).as_secs_f64() * s.rate as f64) as u64;

    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..s.connections {
        let (tx, rx) = mpsc::unbounded_channel::<(Option<usize>, Instant)>();
        senders.push(tx);
        tasks.push(tokio::spawn(load_connection(gateway, rx)));
    }
    let pacer = std::thread::spawn(move || {
        let mut late = histogram();
        for i in 0..total {
            let intended = start + period.mul_f64(i as f64);
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            record(&mut late, intended.elapsed());
            // Even blocks are steady (0), odd blocks have swaps (1).
            let window = intended
                .checked_duration_since(measured)
                .map(|t| (t.as_nanos() / block.as_nanos()) as usize % 2);
            if senders[i as usize % senders.len()]
                .send((window, intended))
                .is_err()
            {
                break;
            }
        }
        late
    });

    // A deploy every `swap_every` in each odd block, alternating binaries;
    // each waits for the previous one's answer.
    let mut swaps = Vec::new();
    let mut deploys = Vec::new();
    let mut swap_errors = Vec::new();
    let per_block = (block.as_secs_f64() / s.swap_every.as_secs_f64()).round() as u32;
    let mut n = 0;
    for b in (1..blocks).step_by(2) {
        let block_start = measured + block * b;
        for k in 0..per_block {
            tokio::time::sleep_until((block_start + s.swap_every * k).into()).await;
            if Instant::now() >= block_start + block {
                break;
            }
            let (bytes, _) = bin.round(n);
            n += 1;
            let version = admin.version();
            let path = format!("/v1/components/{COMPONENT}/versions?version={version}");
            let sent = Instant::now();
            match admin.call(&path, bytes).await {
                Ok(report) => swaps.push(report.total_ms),
                Err(e) => swap_errors.push(format!("{e:#}")),
            }
            deploys.push((sent, Instant::now()));
        }
    }

    let mut windows: Vec<WindowStats> = WINDOWS.iter().map(|_| WindowStats::new()).collect();
    for t in tasks {
        let per = t.await.context("load connection panicked")?;
        for (w, one) in windows.iter_mut().zip(&per) {
            w.add(one);
        }
    }
    let pacer_late = pacer
        .join()
        .map_err(|_| anyhow::anyhow!("pacer panicked"))?;
    Ok(LoadRun {
        windows,
        swaps,
        deploys,
        swap_errors,
        pacer_late,
    })
}

/// Sends a GET for each request the pacer releases, in order, on one
/// keep-alive connection (reopened after an error); latency runs from the
/// intended send time.
async fn load_connection(
    addr: SocketAddr,
    mut rx: mpsc::UnboundedReceiver<(Option<usize>, Instant)>,
) -> Vec<WindowStats> {
    let mut conn = Conn::new(addr);
    let mut out: Vec<WindowStats> = WINDOWS.iter().map(|_| WindowStats::new()).collect();
    let mut warmup = WindowStats::new();
    while let Some((window, intended)) = rx.recv().await {
        let outcome = conn.version().await;
        let w = match window {
            Some(w) => &mut out[w],
            None => &mut warmup,
        };
        match outcome {
            Outcome::Served(v) => {
                let latency = intended.elapsed();
                record(&mut w.latency, latency);
                w.samples.push((intended, latency.as_nanos() as u64));
                w.ok += 1;
                match v.as_str() {
                    "v1" => w.v1 += 1,
                    _ => w.v2 += 1,
                }
            }
            Outcome::Mixed(why) => {
                w.mixed += 1;
                w.first_error.get_or_insert(why);
            }
            Outcome::Failed(why) => {
                w.failed += 1;
                w.first_error.get_or_insert(why);
            }
        }
    }
    out
}

/// Prints table (b); returns the goal rows.
fn print_load(s: &Settings, run: &LoadRun) -> Vec<Vec<String>> {
    let swap_ms = s.swap_every.as_millis().to_string();
    let w = &run.windows;
    let mut rows: Vec<Vec<String>> = w
        .iter()
        .zip(WINDOWS)
        .map(|(w, name)| {
            vec![
                name.replace("SWAP", &swap_ms),
                fmt_rate(w.ok as f64),
                fmt_ns(w.q(0.5)),
                fmt_ns(w.q(0.99)),
                fmt_ns(w.q(0.999)),
                fmt_ns(w.latency.max() as f64),
                w.failed.to_string(),
                w.mixed.to_string(),
                format!("{} / {}", fmt_rate(w.v1 as f64), fmt_rate(w.v2 as f64)),
            ]
        })
        .collect();
    let ratio = |q: f64| format!("{:.2}x", w[1].q(q) / w[0].q(q));
    rows.push(vec![
        "swaps / steady".into(),
        String::new(),
        ratio(0.5),
        ratio(0.99),
        ratio(0.999),
        format!(
            "{:.2}x",
            w[1].latency.max() as f64 / w[0].latency.max() as f64
        ),
        String::new(),
        String::new(),
        String::new(),
    ]);
    print_table(
        &format!(
            "(b) GET {PATH} at {} req/s over {} connections, latency from the intended send time; after {:?} of warm-up, {:?} blocks alternate steady / swaps, {:?} of each",
            fmt_rate(s.rate as f64),
            s.connections,
            s.warmup,
            s.block,
            s.window
        ),
        &[
            "blocks", "ok", "p50", "p99", "p99.9", "max", "failed", "mixed", "v1 / v2",
        ],
        &rows,
    );
    print_attribution(run);
    for (w, name) in w.iter().zip(WINDOWS) {
        if let Some(e) = &w.first_error {
            eprintln!(
                "warning: {}: first bad answer: {e}",
                name.replace("SWAP", &swap_ms)
            );
        }
    }
    let mut swaps = run.swaps.clone();
    swaps.sort_by(f64::total_cmp);
    println!(
        "\ndeploys during the load: {} done, {} refused or failed; server total_ms p50 {:.1}, max {:.1}",
        swaps.len(),
        run.swap_errors.len(),
        median(swaps.iter().copied()),
        swaps.last().copied().unwrap_or(0.0),
    );
    if let Some(e) = run.swap_errors.first() {
        eprintln!("warning: first failed deploy: {e}");
    }
    println!(
        "pacer: requests released p50 {} / p99 {} / max {} after their intended time",
        fmt_ns(run.pacer_late.value_at_quantile(0.5) as f64),
        fmt_ns(run.pacer_late.value_at_quantile(0.99) as f64),
        fmt_ns(run.pacer_late.max() as f64)
    );
    let p99 = w[1].q(0.99) / w[0].q(0.99);
    let failed: u64 = w.iter().map(|w| w.failed).sum();
    let mixed: u64 = w.iter().map(|w| w.mixed).sum();
    vec![
        vec![
            "p99 during swaps / p99 steady".into(),
            format!(
                "{p99:.2}x ({} / {})",
                fmt_ns(w[1].q(0.99)),
                fmt_ns(w[0].q(0.99))
            ),
            format!("< {GOAL_P99_RATIO:.0}x"),
            pass(p99 < GOAL_P99_RATIO).into(),
        ],
        vec![
            "failed requests in (b)".into(),
            failed.to_string(),
            "0".into(),
            pass(failed == 0).into(),
        ],
        vec![
            "answers not wholly from one version in (b)".into(),
            mixed.to_string(),
            "0".into(),
            pass(mixed == 0).into(),
        ],
        vec![
            "deploys refused or failed in (b)".into(),
            run.swap_errors.len().to_string(),
            "0".into(),
            pass(run.swap_errors.is_empty()).into(),
        ],
    ]
}

/// How long after a deploy's answer a request still counts as "just after".
const AFTER: Duration = Duration::from_millis(20);

/// Splits the swap blocks' requests by when they were due relative to the
/// deploys: while one ran, just after one, or neither.
fn print_attribution(run: &LoadRun) {
    let mut parts = [histogram(), histogram(), histogram()];
    for &(at, ns) in &run.windows[1].samples {
        let during = run.deploys.iter().any(|&(a, b)| a <= at && at <= b);
        let after = run.deploys.iter().any(|&(_, b)| b < at && at <= b + AFTER);
        let part = match (during, after) {
            (true, _) => 0,
            (false, true) => 1,
            (false, false) => 2,
        };
        parts[part].saturating_record(ns.max(1));
    }
    let names = [
        "due while a deploy ran".to_string(),
        format!("due within {} ms after a deploy", AFTER.as_millis()),
        "due at other times".to_string(),
    ];
    let rows: Vec<Vec<String>> = names
        .into_iter()
        .zip(&parts)
        .map(|(name, h)| {
            vec![
                name,
                fmt_rate(h.len() as f64),
                fmt_ns(h.value_at_quantile(0.5) as f64),
                fmt_ns(h.value_at_quantile(0.99) as f64),
                fmt_ns(h.max() as f64),
            ]
        })
        .collect();
    print_table(
        "(b) the swap blocks' requests by when they were due",
        &["requests", "ok", "p50", "p99", "max"],
        &rows,
    );
}

// ---------------------------------------------------------------- clients

/// What one `GET /swap` gave.
#[derive(Debug)]
enum Outcome {
    /// 200, and the header and the body name the same version.
    Served(String),
    /// 200, but the header and the body disagree.
    Mixed(String),
    /// Another status, or a transport error.
    Failed(String),
}

/// One keep-alive HTTP/1.1 connection, reopened after an error.
struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn { addr, sender: None }
    }

    async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> anyhow::Result<(StatusCode, http::HeaderMap, Bytes)> {
        let result = self.try_send(req).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn try_send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> anyhow::Result<(StatusCode, http::HeaderMap, Bytes)> {
        let sender = match &mut self.sender {
            Some(s) if !s.is_closed() => s,
            _ => self.sender.insert(open(self.addr).await?),
        };
        sender.ready().await?;
        let res = sender.send_request(req).await?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok((parts.status, parts.headers, body))
    }

    /// `GET /swap`, checked.
    async fn version(&mut self) -> Outcome {
        match self.send(common::get(self.addr, PATH)).await {
            Err(e) => Outcome::Failed(format!("{e:#}")),
            Ok((status, _, body)) if status != StatusCode::OK => Outcome::Failed(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body).trim()
            )),
            Ok((_, headers, body)) => {
                let header = headers
                    .get("x-swap-version")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("(none)");
                let body = String::from_utf8_lossy(&body);
                if header == body.trim() {
                    Outcome::Served(header.to_string())
                } else {
                    Outcome::Mixed(format!("header {header:?}, body {body:?}"))
                }
            }
        }
    }
}

async fn open(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The admin API, on one keep-alive connection.
struct Admin {
    conn: Conn,
    auth: String,
    /// The patch number of the next version to deploy (the manifest's is 1.0.0).
    next: u64,
}

impl Admin {
    /// A version above every one deployed so far.
    fn version(&mut self) -> String {
        let v = format!("1.0.{}", self.next);
        self.next += 1;
        v
    }

    /// POSTs `body` to `path`; the answer must be a 2xx report of a change.
    async fn call(&mut self, path: &str, body: &Bytes) -> anyhow::Result<DeployReport> {
        let req = Request::post(path)
            .header(header::HOST, self.conn.addr.to_string())
            .header(header::AUTHORIZATION, &self.auth)
            .header(header::CONTENT_TYPE, "application/wasm")
            .body(Full::new(body.clone()))?;
        let (status, _, answer) = self.conn.send(req).await.context(path.to_string())?;
        ensure!(
            status.is_success(),
            "POST {path}: {status}: {}",
            String::from_utf8_lossy(&answer).trim()
        );
        let report: DeployReport =
            serde_json::from_slice(&answer).with_context(|| format!("POST {path}: the report"))?;
        ensure!(
            !report.unchanged,
            "POST {path} changed nothing: {}",
            report.message
        );
        Ok(report)
    }
}

// ---------------------------------------------------------------- figures

/// A quantile of durations, in ns (1.0 is the max).
fn quantile(values: impl Iterator<Item = Duration>, q: f64) -> f64 {
    let mut v: Vec<f64> = values.map(|d| d.as_nanos() as f64).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n => v[((n as f64 * q).ceil() as usize).clamp(1, n) - 1],
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}
