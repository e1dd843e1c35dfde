//! The edge gateway's cost: `GET /hello` through a host whose route has the
//! whole policy (a JWT verified against the local provider with a required
//! scope, a per-client rate limit that is never reached, and a call log row
//! per request) against the same route on a host with none of it (no auth, no
//! rate limit, call log off), in the same process, alternating A/B rounds.
//!
//! `cargo bench -p atoll-tests --bench edge`; lengthen with `ATOLL_BENCH_SECS`
//! (seconds per round, default 3), `ATOLL_BENCH_ROUNDS` (default 3),
//! `ATOLL_BENCH_CONNS` (default 32).

mod common;

use std::sync::Arc;
use std::time::Duration;

use atoll::gateway::auth::{LOCAL_AUDIENCE, LOCAL_ISSUER, TokenRequest, issue_local};
use atoll_tests::TestHost;
use common::{Load, LoadResult, fmt_ns, fmt_rate, print_table, run_load};
use http::StatusCode;

const BARE: &str = r#"
[components.hello]
source = "{hello}"
routes = ["/hello"]

[gateway.call_log]
enabled = false
"#;

const GUARDED: &str = r#"
[components.hello]
source = "{hello}"
routes = ["/hello"]

[auth.local]
local = true

[routes."/hello"]
auth = "local"
scopes = ["bench"]
rate_limit = { rate = 10000000, per = "1s", burst = 10000000 }
"#;

/// The issue's goal: auth + rate limit + call log cost under this share of throughput.
const GOAL: f64 = 0.15;

fn main() -> anyhow::Result<()> {
    common::print_machine();
    let mut load = Load::from_env(32);
    load.duration = common::env_secs("ATOLL_BENCH_SECS", 3.0);
    let rounds: usize = common::env_parse("ATOLL_BENCH_ROUNDS", 3);
    atoll::telemetry::init(atoll::telemetry::LogFormat::Text);
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let bare = server_rt.block_on(TestHost::start(BARE));
    let guarded = server_rt.block_on(TestHost::start(GUARDED));
    let token = issue_local(
        guarded.dir.path(),
        &TokenRequest {
            subject: "bench".into(),
            scopes: vec!["bench".into()],
            roles: vec![],
            ttl: Duration::from_secs(3600),
            audience: LOCAL_AUDIENCE.into(),
            issuer: LOCAL_ISSUER.into(),
        },
    )?;
    let auth = Arc::new(format!("Bearer {token}"));

    // Both answer, and the guarded one refuses without the token.
    let check = |addr, token: Option<&str>| {
        let mut req = common::get(addr, "/hello");
        if let Some(t) = token {
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, t.parse().unwrap());
        }
        server_rt.block_on(async {
            let client = atoll_tests::client();
            client.request(req).await.map(|r| r.status().as_u16())
        })
    };
    anyhow::ensure!(check(bare.host.addr(), None)? == 200, "bare host failed");
    anyhow::ensure!(
        check(guarded.host.addr(), None)? == 401,
        "auth not enforced"
    );
    anyhow::ensure!(
        check(guarded.host.addr(), Some(&auth))? == 200,
        "token refused"
    );
    println!(
        "load: {} keep-alive HTTP/1.1 connections, {:?} warm-up, {rounds} rounds of {:?} per host, alternating",
        load.connections, load.warmup, load.duration
    );

    let mut results: [Vec<LoadResult>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        let addr = bare.host.addr();
        let r = run_load(
            addr,
            load,
            StatusCode::OK,
            Arc::new(move |_, _| common::get(addr, "/hello")),
        );
        r.warn("bare");
        results[0].push(r);
        let addr = guarded.host.addr();
        let auth = auth.clone();
        let r = run_load(
            addr,
            load,
            StatusCode::OK,
            Arc::new(move |_, _| {
                let mut req = common::get(addr, "/hello");
                req.headers_mut()
                    .insert(http::header::AUTHORIZATION, auth.parse().unwrap());
                req
            }),
        );
        r.warn("guarded");
        results[1].push(r);
    }
    let rate = |rs: &[LoadResult]| rs.iter().map(LoadResult::rate).sum::<f64>() / rs.len() as f64;
    let p = |rs: &[LoadResult], q| {
        let mut v: Vec<f64> = rs.iter().map(|r| r.quantile(q)).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let errors = |rs: &[LoadResult]| rs.iter().map(|r| r.errors).sum::<u64>();
    let rows = vec![
        vec![
            "bare route (no auth, no limit, no call log)".to_string(),
            fmt_rate(rate(&results[0])),
            fmt_ns(p(&results[0], 0.5)),
            fmt_ns(p(&results[0], 0.99)),
            errors(&results[0]).to_string(),
        ],
        vec![
            "JWT + scope + rate limit + call log".to_string(),
            fmt_rate(rate(&results[1])),
            fmt_ns(p(&results[1], 0.5)),
            fmt_ns(p(&results[1], 0.99)),
            errors(&results[1]).to_string(),
        ],
    ];
    print_table(
        "GET /hello, in-process load generator (mean req/s, median p50/p99 over rounds)",
        &["route", "req/s", "p50", "p99", "errors"],
        &rows,
    );
    let per_round: Vec<String> = results[0]
        .iter()
        .zip(&results[1])
        .map(|(b, g)| format!("{:.1}%", (1.0 - g.rate() / b.rate()) * 100.0))
        .collect();
    let cost = 1.0 - rate(&results[1]) / rate(&results[0]);
    println!("\nthroughput cost per round: {}", per_round.join(", "));
    println!(
        "goal: auth + rate limit + call log cost < {:.0}% of throughput: {} ({:.1}%)",
        GOAL * 100.0,
        if cost < GOAL { "met" } else { "NOT met" },
        cost * 100.0
    );
    if let Some(log) = guarded.host.gateway().call_log() {
        let rows = server_rt.block_on(log.query(&Default::default()))?;
        println!(
            "call log rows readable after the run: {} (newest 100 by default)",
            rows.len()
        );
    }
    server_rt.block_on(bare.stop());
    server_rt.block_on(guarded.stop());
    Ok(())
}
