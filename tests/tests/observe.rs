//! The admin listener's open endpoints: `/healthz`, `/readyz` and the
//! Prometheus text at `/metrics`, whose counters move by exactly what the
//! traffic did.

use std::collections::BTreeMap;

use atoll_tests::{TestHost, admin, get};

/// Parses the text exposition: every sample line into `name{labels}` ->
/// value, checking that each family was announced with HELP and TYPE first.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut announced = std::collections::BTreeSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap().to_string();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            announced.insert(name);
            continue;
        }
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP "), "{line}");
            continue;
        }
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let name = key.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| announced.contains(*f))
            .unwrap_or(name);
        assert!(announced.contains(family), "{name} was not announced");
        if key.contains('{') {
            assert!(key.ends_with('}'), "{line}");
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        assert!(
            samples.insert(key.to_string(), value).is_none(),
            "duplicate {key}"
        );
    }
    samples
}

async fn metrics(h: &TestHost) -> BTreeMap<String, f64> {
    let r = get(&format!("http://{}/metrics", h.host.admin_addr())).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    parse(&r.body)
}

fn at(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key}; have {:#?}", m.keys()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_happened_and_probes_answer() {
    let h = TestHost::start(
        r#"
        [components.booking]
        source = "{booking}"
        version = "1.0.0"
        routes = ["/..."]
        [components.booking.calls.pricing]
        [components.pricing]
        source = "{pricing}"
        version = "2.1.0"
        "#,
    )
    .await;
    let admin_url = |p: &str| format!("http://{}{p}", h.host.admin_addr());
    // No token needed for the probes and the scrape.
    let r = get(&admin_url("/healthz")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    let r = get(&admin_url("/readyz")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));

    let before = metrics(&h).await;
    for name in ["a", "b", "c"] {
        assert_eq!(
            get(&h.url(&format!("/greet?name={name}"))).await.status,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(get(&h.url("/fail?code=1")).await.status, 502);
    }
    assert_eq!(get(&h.url("/nothing-here")).await.status, 404);
    let after = metrics(&h).await;
    let moved = |key: &str| at(&after, key) - before.get(key).copied().unwrap_or(0.0);

    let booking = r#"component="booking",version="1.0.0",role="active""#;
    let pricing = r#"component="pricing",version="2.1.0",role="active""#;
    assert_eq!(moved(&format!("atoll_invocations_total{{{booking}}}")), 6.0);
    assert_eq!(moved(&format!("atoll_invocations_total{{{pricing}}}")), 5.0);
    // booking's 502s are pricing's fault, not booking's.
    assert_eq!(
        moved(&format!("atoll_invocation_errors_total{{{booking}}}")),
        0.0
    );
    assert_eq!(
        moved(&format!("atoll_invocation_errors_total{{{pricing}}}")),
        2.0
    );
    assert_eq!(
        moved(&format!(
            "atoll_http_responses_total{{{booking},class=\"2xx\"}}"
        )),
        3.0
    );
    assert_eq!(
        moved(&format!(
            "atoll_http_responses_total{{{booking},class=\"4xx\"}}"
        )),
        1.0
    );
    assert_eq!(
        moved(&format!(
            "atoll_http_responses_total{{{booking},class=\"5xx\"}}"
        )),
        2.0
    );
    assert_eq!(
        moved(&format!(
            "atoll_limit_hits_total{{{pricing},limit=\"trap\"}}"
        )),
        2.0
    );
    assert_eq!(
        moved(&format!(
            "atoll_invocation_duration_seconds_count{{{booking}}}"
        )),
        6.0
    );
    // The traps by kind add up to the trap limit hits.
    let traps: Vec<(&String, &f64)> = after
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("atoll_traps_total{{{pricing},kind=")))
        .collect();
    assert_eq!(traps.len(), 1, "{traps:?}");
    assert_eq!(*traps[0].1, 2.0, "{traps:?}");
    assert_eq!(
        at(
            &after,
            &format!("atoll_invocation_duration_seconds_bucket{{{booking},le=\"+Inf\"}}")
        ),
        at(
            &after,
            &format!("atoll_invocation_duration_seconds_count{{{booking}}}")
        )
    );
    let edge = r#"caller="booking",callee="pricing""#;
    assert_eq!(moved(&format!("atoll_calls_total{{{edge}}}")), 5.0);
    assert_eq!(moved(&format!("atoll_call_successes_total{{{edge}}}")), 3.0);
    assert_eq!(moved(&format!("atoll_call_failures_total{{{edge}}}")), 2.0);
    assert_eq!(
        at(
            &after,
            &format!("atoll_circuit_state{{{edge},state=\"closed\"}}")
        ),
        1.0
    );
    assert_eq!(
        at(
            &after,
            &format!("atoll_circuit_state{{{edge},state=\"open\"}}")
        ),
        0.0
    );
    assert_eq!(at(&after, "atoll_up"), 1.0);
    assert_eq!(
        at(&after, &format!("atoll_traffic_share_percent{{{booking}}}")),
        100.0
    );

    // A removed component makes the host not ready, and says which.
    let r = admin(
        h.host.admin_addr(),
        h.dir.path(),
        "DELETE",
        "/v1/components/booking",
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(&admin_url("/readyz")).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, "not ready: component `booking` is removed\n")
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_operations_and_flushes_are_counted() {
    let h = TestHost::start(
        r#"
        [components.counter]
        source = "{kv-counter}"
        routes = ["/kv/..."]
        "#,
    )
    .await;
    let before = metrics(&h).await;
    for _ in 0..3 {
        assert_eq!(get(&h.url("/kv/incr/visits")).await.status, 200);
    }
    let r = atoll_tests::send("PUT", &h.url("/kv/set/name"), "ada")
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(get(&h.url("/kv/get/name")).await.body, "ada");
    assert_eq!(get(&h.url("/kv/get/missing")).await.status, 404);
    let after = metrics(&h).await;
    let moved = |key: &str| at(&after, key) - before.get(key).copied().unwrap_or(0.0);
    let op = |op: &str| format!("atoll_kv_operations_total{{component=\"counter\",op=\"{op}\"}}");
    assert_eq!(moved(&op("update")), 3.0, "increments");
    assert_eq!(moved(&op("set")), 1.0);
    assert_eq!(moved(&op("get")), 2.0);
    assert_eq!(moved(&op("delete")), 0.0);
    // Every write was made durable before its response: at least one flush,
    // at most one per write; each in the histogram.
    let flushes = moved("atoll_kv_flushes_total");
    assert!((1.0..=4.0).contains(&flushes), "{flushes} flushes");
    assert_eq!(moved("atoll_kv_flush_duration_seconds_count"), flushes);
    assert_eq!(moved("atoll_kv_flush_failures_total"), 0.0);
    assert_eq!(
        at(
            &after,
            "atoll_kv_flush_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        at(&after, "atoll_kv_flushes_total")
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_memory_growths_are_memory_limit_hits() {
    let h = TestHost::start(
        r#"
        [components.hog]
        source = "{memory-hog}"
        version = "1.0.0"
        routes = ["/hog"]
        [components.hog.limits]
        memory = "32MiB"
        "#,
    )
    .await;
    let hog = r#"component="hog",version="1.0.0",role="active""#;
    let memory = format!("atoll_limit_hits_total{{{hog},limit=\"memory\"}}");
    let trap = format!("atoll_limit_hits_total{{{hog},limit=\"trap\"}}");
    let moved = |from: &BTreeMap<String, f64>, to: &BTreeMap<String, f64>, key: &str| {
        at(to, key) - from.get(key).copied().unwrap_or(0.0)
    };

    // Ordinary requests, growing within the limit, count nothing.
    let start = metrics(&h).await;
    let r = get(&h.url("/hog?mb=8")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "allocated 8 MiB"));
    let r = get(&h.url("/hog?grow&mb=8")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "grew 8 MiB"));
    let ordinary = metrics(&h).await;
    assert_eq!(moved(&start, &ordinary, &memory), 0.0);

    // Each of these makes exactly one `memory.grow` past 32 MiB: refused
    // as before (the guest answers), and counted once.
    for _ in 0..3 {
        let r = get(&h.url("/hog?grow&mb=64")).await;
        assert_eq!((r.status, r.body.as_str()), (507, "grow refused"));
    }
    let refused = metrics(&h).await;
    assert_eq!(moved(&ordinary, &refused, &memory), 3.0);
    assert_eq!(moved(&ordinary, &refused, &trap), 0.0);

    // A failed allocation counts each growth its allocator tried (wasi-libc's
    // dlmalloc tries twice: contiguous, then not), and fails as before.
    let r = get(&h.url("/hog?mb=64")).await;
    assert_eq!(r.status, 507, "{}", r.body);
    assert!(r.body.starts_with("allocation failed after"), "{}", r.body);
    let failed = metrics(&h).await;
    assert!(moved(&refused, &failed, &memory) >= 1.0);
    assert_eq!(moved(&refused, &failed, &trap), 0.0);
    // Rust's default handler aborts: a trap, as before, and counted as both.
    let r = get(&h.url("/hog?abort&mb=64")).await;
    assert_eq!(r.status, 500, "{}", r.body);
    let aborted = metrics(&h).await;
    assert!(moved(&failed, &aborted, &memory) >= 1.0);
    assert_eq!(moved(&failed, &aborted, &trap), 1.0);
    h.stop().await;
}
