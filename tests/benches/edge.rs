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

/// With `ATOLL_BENCH_PARTS=1`, each step alone too, to see where the cost is.
const PARTS: [(&str, &str); 3] = [
    (
        "rate limit only",
        r#"
[components.hello]
source = "{hello}"
routes = ["/hello"]

[gateway.call_log]
enabled = false

[routes."/hello"]
rate_limit = { rate = 10000000, per = "1s", burst = 10000000 }
"#,
    ),
    (
        "JWT + scope only",
        r#"
[components.hello]
source = "{hello}"
routes = ["/hello"]

[gateway.call_log]
enabled = false

[auth.local]
local = true

[routes."/hello"]
auth = "local"
scopes = ["bench"]
"#,
    ),
    (
        "call log only",
        r#"
[components.hello]
source = "{hello}"
routes = ["/hello"]
"#,
    ),
];

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
    let parts = std::env::var("ATOLL_BENCH_PARTS").is_ok_and(|v| v == "1");
    atoll::telemetry::init(atoll::telemetry::LogFormat::Text);
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut configs = vec![("bare route (no auth, no limit, no call log)", BARE)];
    if parts {
        configs.extend(PARTS);
    }
    configs.push(("JWT + scope + rate limit + call log", GUARDED));
    // Each host with the Authorization value its route needs (each has its own local key).
    let mut hosts = Vec::new();
    for (name, manifest) in &configs {
        let host = server_rt.block_on(TestHost::start(manifest));
        let auth = match manifest.contains("[auth.local]") {
            true => Some(format!(
                "Bearer {}",
                issue_local(
                    host.dir.path(),
                    &TokenRequest {
                        subject: "bench".into(),
                        scopes: vec!["bench".into()],
                        roles: vec![],
                        ttl: Duration::from_secs(3600),
                        audience: LOCAL_AUDIENCE.into(),
                        issuer: LOCAL_ISSUER.into(),
                    },
                )?
            )),
            false => None,
        };
        hosts.push((*name, host, auth.map(Arc::new)));
    }

    // Each answers, and a guarded one refuses without its token.
    for (name, host, auth) in &hosts {
        let addr = host.host.addr();
        let status = |token: Option<&str>| {
            let mut req = common::get(addr, &format!("http://{addr}/hello"));
            if let Some(t) = token {
                req.headers_mut()
                    .insert(http::header::AUTHORIZATION, t.parse().unwrap());
            }
            server_rt.block_on(async {
                let client = atoll_tests::client();
                client.request(req).await.map(|r| r.status().as_u16())
            })
        };
        anyhow::ensure!(
            status(auth.as_deref().map(String::as_str))? == 200,
            "{name}: refused"
        );
        if auth.is_some() {
            anyhow::ensure!(status(None)? == 401, "{name}: auth not enforced");
        }
    }
    println!(
        "load: {} keep-alive HTTP/1.1 connections, {:?} warm-up, {rounds} rounds of {:?} per host, alternating",
        load.connections, load.warmup, load.duration
    );

    let mut results: Vec<Vec<LoadResult>> = hosts.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for ((name, host, auth), out) in hosts.iter().zip(&mut results) {
            let addr = host.host.addr();
            let auth = auth.clone();
            let r = run_load(
                addr,
                load,
                StatusCode::OK,
                Arc::new(move |_, _| {
                    let mut req = common::get(addr, "/hello");
                    if let Some(a) = &auth {
                        req.headers_mut()
                            .insert(http::header::AUTHORIZATION, a.parse().unwrap());
                    }
                    req
                }),
            );
            r.warn(name);
            out.push(r);
        }
    }
    let rate = |rs: &[LoadResult]| rs.iter().map(LoadResult::rate).sum::<f64>() / rs.len() as f64;
    let p = |rs: &[LoadResult], q| {
        let mut v: Vec<f64> = rs.iter().map(|r| r.quantile(q)).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let bare = rate(&results[0]);
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .zip(&results)
        .map(|((name, ..), rs)| {
            vec![
                name.to_string(),
                fmt_rate(rate(rs)),
                format!("{:.1}%", (1.0 - rate(rs) / bare) * 100.0),
                fmt_ns(p(rs, 0.5)),
                fmt_ns(p(rs, 0.99)),
                rs.iter().map(|r| r.errors).sum::<u64>().to_string(),
            ]
        })
        .collect();
    print_table(
        "GET /hello, in-process load generator (mean req/s, median p50/p99 over rounds)",
        &["route", "req/s", "cost", "p50", "p99", "errors"],
        &rows,
    );
    let all = results.last().expect("the guarded host");
    let per_round: Vec<String> = results[0]
        .iter()
        .zip(all)
        .map(|(b, g)| format!("{:.1}%", (1.0 - g.rate() / b.rate()) * 100.0))
        .collect();
    let cost = 1.0 - rate(all) / bare;
    println!("\nthroughput cost per round: {}", per_round.join(", "));
    println!(
        "goal: auth + rate limit + call log cost < {:.0}% of throughput: {} ({:.1}%)",
        GOAL * 100.0,
        if cost < GOAL { "met" } else { "NOT met" },
        cost * 100.0
    );
    let (_, guarded, _) = hosts.last().expect("the guarded host");
    if let Some(log) = guarded.host.gateway().call_log() {
        println!("call log rows dropped (writer behind): {}", log.dropped());
    }
    for (_, host, _) in hosts {
        server_rt.block_on(host.stop());
    }
    Ok(())
}
