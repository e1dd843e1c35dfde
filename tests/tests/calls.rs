//! Typed component-to-component calls through the real gateway: `booking`
//! imports `test:calls/quote@1.2.0` and the host links it to `pricing` (or
//! another exporter). Values cross both ways; calls are denied unless
//! granted; versions resolve by semver, at start and at deploy; and every
//! guard of an edge (breaker, retries, bulkhead, fallbacks, deadline, depth,
//! argument size) is checked with exact counts from the admin view.
//!
//! Every test takes [`SERIAL`]: several depend on timing (busy-looping
//! callees, breakers opening for a few hundred milliseconds) and the
//! machine may have two cores.

use std::path::Path;
use std::time::{Duration, Instant};

use atoll::registry::{ComponentView, EdgeView};
use atoll_tests::{ChildHost, Reply, TestHost, admin, get, guest, manifest_file};
use bytes::Bytes;

/// One test at a time (see the module docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `booking` on every path, granted calls to `pricing` 1.2.0 with `edge`
/// as the body of `[components.booking.calls.pricing]`; `extra` is appended.
fn app(edge: &str, extra: &str) -> String {
    format!(
        r#"
[components.booking]
source = "{{booking}}"
routes = ["/..."]

[components.booking.calls.pricing]
{edge}

[components.pricing]
source = "{{pricing}}"
version = "1.2.0"
{extra}
"#
    )
}

/// Starts a host that must fail to start, and returns its error chain.
async fn start_error(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    match TestHost::start_in(toml, dir.path()).await {
        Ok(host) => {
            host.shutdown().await.unwrap();
            panic!("the host started");
        }
        Err(e) => format!("{e:#}"),
    }
}

/// A component as the admin view shows it.
fn component(h: &TestHost, name: &str) -> ComponentView {
    h.host
        .registry()
        .view()
        .components
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no component `{name}`"))
}

/// The edge `caller` -> `callee` in the admin view.
fn edge(h: &TestHost, caller: &str, callee: &str) -> EdgeView {
    component(h, caller)
        .calls
        .into_iter()
        .find(|e| e.callee == callee)
        .unwrap_or_else(|| panic!("no edge {caller} -> {callee}"))
}

/// An edge's circuit and counters in one line, for exact comparisons.
fn counters(e: &EdgeView) -> String {
    format!(
        "circuit={} opened={} calls={} ok={} failed={} timeouts={} retries={} circuit_open={} bulkhead_full={} fallbacks={} too_deep={}",
        e.circuit,
        e.opened,
        e.calls,
        e.ok,
        e.failed,
        e.timeouts,
        e.retries,
        e.circuit_open,
        e.bulkhead_full,
        e.fallbacks,
        e.too_deep
    )
}

/// booking -> pricing's counters.
fn pricing_edge(h: &TestHost) -> String {
    counters(&edge(h, "booking", "pricing"))
}

/// Invocations of a component's active version so far.
fn requests(h: &TestHost, name: &str) -> u64 {
    component(h, name)
        .active
        .expect("an active version")
        .requests
}

/// Waits until `name` has `n` invocations running.
async fn until_in_flight(h: &TestHost, name: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while component(h, name).in_flight != n {
        assert!(Instant::now() < deadline, "{name} never had {n} in flight");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// GETs `path` on `h` in the background.
fn spawn_get(h: &TestHost, path: &str) -> tokio::task::JoinHandle<Reply> {
    let url = h.url(path);
    tokio::spawn(async move { get(&url).await })
}

/// Asserts status and body.
#[track_caller]
fn answer(r: &Reply, status: u16, body: &str) {
    assert_eq!((r.status, r.body.as_str()), (status, body), "{r:?}");
}

/// Asserts the status and that the body starts with `prefix`.
#[track_caller]
fn failed_with(r: &Reply, status: u16, prefix: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert!(
        r.body.starts_with(prefix),
        "expected a body starting with\n  {prefix}\ngot\n  {}",
        r.body
    );
}

/// The message a failed `booking` -> `pricing` call answers with.
fn call_failed(function: &str, failure: &str) -> String {
    format!(
        "atoll: call from `booking` to `pricing` `test:calls/quote#{function}` failed: {failure} ("
    )
}

async fn api(h: &TestHost, method: &str, path: &str, body: impl Into<Bytes>) -> Reply {
    admin(h.host.admin_addr(), h.dir.path(), method, path, body)
        .await
        .expect("admin request")
}

/// The `error` of an admin API answer.
#[track_caller]
fn api_error(r: &Reply) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body));
    v["error"].as_str().unwrap_or_default().to_string()
}

/// Strings, lists of records, variants, options and results cross both
/// ways and come back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_round_trip() {
    let _serial = SERIAL.lock().await;
    let h = TestHost::start(&app("", "")).await;
    let long = "n".repeat(5000);
    let cases = [
        ("/self".to_string(), "booking".to_string()),
        ("/greet?name=Ada".into(), "hello, Ada".into()),
        ("/greet?name=".into(), "hello, ".into()),
        (format!("/greet?name={long}"), format!("hello, {long}")),
        ("/total?items=a:1,b:2,c:40".into(), "ok 4300".into()),
        ("/total?items=a:4294967295".into(), "ok 429496729500".into()),
        ("/total?items=".into(), "err empty".into()),
        ("/total?items=a:1,x:2".into(), "err unknown sku x".into()),
        ("/classify?n=7".into(), "priced 70".into()),
        ("/classify?n=0".into(), "free".into()),
        ("/classify?n=-3".into(), "unknown negative -3".into()),
        ("/maybe?x=abcd".into(), "some 4".into()),
        ("/maybe?x=".into(), "some 0".into()),
        ("/maybe".into(), "none".into()),
        ("/size?bytes=0".into(), "0".into()),
        ("/size?bytes=100000".into(), "100000".into()),
        ("/fail?code=0".into(), "0".into()),
    ];
    for (path, want) in &cases {
        let r = get(&h.url(path)).await;
        assert_eq!((r.status, &r.body), (200, want), "GET {path}");
    }
    let calls = cases.len() as u64 - 1;
    assert_eq!(
        pricing_edge(&h),
        format!(
            "circuit=closed opened=0 calls={calls} ok={calls} failed=0 timeouts=0 retries=0 circuit_open=0 bulkhead_full=0 fallbacks=0 too_deep=0"
        )
    );
    assert_eq!(requests(&h, "pricing"), calls);
    assert_eq!(requests(&h, "booking"), cases.len() as u64);
    h.stop().await;
}

/// A call needs a grant, an exporter of a compatible version, and no
/// resources in the interface; otherwise the host does not start, and says
/// which caller, callee, interface and version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unserved_imports_refuse_to_start() {
    let _serial = SERIAL.lock().await;
    let not_fit = "the components' calls do not fit together:\n  - ";

    // Exported by `pricing`, but not granted.
    let e = start_error(
        r#"
[components.booking]
source = "{booking}"
routes = ["/..."]

[components.pricing]
source = "{pricing}"
version = "1.2.0"
"#,
    )
    .await;
    assert!(
        e.ends_with(&format!(
            "{not_fit}`booking` imports `test:calls/quote@1.2.0`, which `pricing` exports, but `booking` may not call `pricing`: add `[components.booking.calls.pricing]` to atoll.toml to allow it"
        )),
        "{e}"
    );

    // Exported by no one.
    let e =
        start_error("[components.booking]\nsource = \"{booking}\"\nroutes = [\"/...\"]\n").await;
    assert!(
        e.ends_with(&format!(
            "{not_fit}`booking` imports `test:calls/quote@1.2.0`, which no component of this host exports; add the component that implements it and allow the call with `[components.booking.calls.NAME]`"
        )),
        "{e}"
    );

    // Exported only in an incompatible (major) version.
    let e = start_error(
        r#"
[components.booking]
source = "{booking}"
routes = ["/..."]

[components.booking.calls.pricing]

[components.pricing]
source = "{pricing-v2}"
version = "2.0.0"
"#,
    )
    .await;
    assert!(
        e.ends_with(&format!(
            "{not_fit}`booking` imports `test:calls/quote@1.2.0`, but `pricing` 2.0.0 exports `test:calls/quote@2.0.0`, which is not compatible (needs 1.x >= 1.2.0)"
        )),
        "{e}"
    );

    // An interface with a resource cannot cross components.
    let e = start_error("[components.res]\nsource = \"{res-user}\"\nroutes = [\"/...\"]\n").await;
    assert!(
        e.contains(
            "it imports `test:res/counter@0.1.0`, whose `counter` uses a resource type; resources cannot cross components (each call runs in a fresh instance of the callee), so pass plain values (records, lists, strings) instead"
        ),
        "{e}"
    );
    assert!(e.starts_with("component `res`"), "{e}");
}

/// An import of 1.2.0 is served by 1.3.0 (the newest compatible export when
/// several are allowed); a deploy that breaks a caller's import is refused,
/// a compatible one changes the caller's answers, and a callee a caller
/// needs cannot be removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semver_resolution_at_start_and_deploy() {
    let _serial = SERIAL.lock().await;

    // 1.3.0 serves an import of 1.2.0.
    let h = TestHost::start(
        r#"
[components.booking]
source = "{booking}"
routes = ["/..."]

[components.booking.calls.pricing]

[components.pricing]
source = "{pricing-next}"
version = "1.3.0"
"#,
    )
    .await;
    answer(&get(&h.url("/greet?name=a")).await, 200, "hello, a (1.3)");
    answer(&get(&h.url("/total?items=a:2")).await, 200, "ok 200");
    h.stop().await;

    // Two allowed exporters: the newer compatible one answers.
    let h = TestHost::start(&app(
        "",
        r#"
[components.booking.calls.pricing-next]

[components.pricing-next]
source = "{pricing-next}"
version = "1.3.0"
"#,
    ))
    .await;
    answer(&get(&h.url("/greet?name=a")).await, 200, "hello, a (1.3)");
    assert_eq!(
        (requests(&h, "pricing"), requests(&h, "pricing-next")),
        (0, 1)
    );
    h.stop().await;

    // Deploys over `pricing` 1.2.0.
    let h = TestHost::start(&app("", "")).await;
    answer(&get(&h.url("/greet?name=a")).await, 200, "hello, a");
    let wasm = |name: &str| std::fs::read(guest(name)).unwrap();
    let deploy = "/v1/components/pricing/versions?version=";
    let r = api(&h, "POST", &format!("{deploy}2.0.0"), wasm("pricing-v2")).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        api_error(&r).contains(
            "version 2.0.0 of `pricing` was refused; nothing changed:\n  - `booking` imports `test:calls/quote@1.2.0`, but `pricing` 2.0.0 exports `test:calls/quote@2.0.0`, which is not compatible (needs 1.x >= 1.2.0)"
        ),
        "{}",
        r.body
    );
    // Nor as a canary: a share of booking's calls would break.
    let r = api(
        &h,
        "POST",
        &format!("{deploy}2.0.0&canary=50"),
        wasm("pricing-v2"),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        api_error(&r).contains("`pricing` 2.0.0 exports `test:calls/quote@2.0.0`"),
        "{}",
        r.body
    );
    let pricing = component(&h, "pricing");
    assert_eq!(
        (
            pricing.active.unwrap().version.as_str(),
            pricing.canary.is_none()
        ),
        ("1.2.0", true),
        "nothing changed"
    );
    answer(&get(&h.url("/greet?name=a")).await, 200, "hello, a");

    let r = api(&h, "POST", &format!("{deploy}1.3.0"), wasm("pricing-next")).await;
    assert_eq!(r.status, 201, "{}", r.body);
    answer(&get(&h.url("/greet?name=a")).await, 200, "hello, a (1.3)");
    answer(&get(&h.url("/classify?n=2")).await, 200, "priced 20");

    let r = api(&h, "DELETE", "/v1/components/pricing", Bytes::new()).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        api_error(&r).contains(
            "removing `pricing` was refused; nothing changed:\n  - `booking` imports `test:calls/quote@1.2.0`, which no component of this host exports"
        ),
        "{}",
        r.body
    );
    answer(&get(&h.url("/greet?name=b")).await, 200, "hello, b (1.3)");
    h.stop().await;
}

const BREAKER: &str = r#"
retries = 0
breaker = { window = 4, min_calls = 4, failure_rate = 0.5, open_for = "300ms", half_open_calls = 2 }
"#;

/// The breaker opens after exactly `min_calls` failures, then fails fast
/// without entering the callee; after `open_for` it admits exactly
/// `half_open_calls` probes, which close it when they succeed and reopen it
/// when they fail.
// Four workers: two callees busy-loop at once here, and with two workers
// they starve the runtime's timers and sockets (see
// `spinning_callees_do_not_hold_up_other_requests`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker_opens_fails_fast_probes_and_closes() {
    let _serial = SERIAL.lock().await;
    let h = TestHost::start(&app(BREAKER, "")).await;
    let fail = call_failed("fail", "callee failed");
    let open = call_failed("fail", "circuit open");

    answer(
        &get(&h.url("/fail?code=1")).await,
        502,
        "atoll: call from `booking` to `pricing` `test:calls/quote#fail` failed: callee failed (`pricing` 1.2.0 trap: wasm trap: wasm `unreachable` instruction executed)\n",
    );
    for i in 2..=3 {
        failed_with(&get(&h.url("/fail?code=1")).await, 502, &fail);
        let e = edge(&h, "booking", "pricing");
        assert_eq!(
            (e.circuit.as_str(), e.window_calls),
            ("closed", i),
            "after {i}"
        );
        assert_eq!(e.failure_rate, 1.0);
    }
    failed_with(&get(&h.url("/fail?code=1")).await, 502, &fail);
    let opened_at = Instant::now();
    assert_eq!(
        pricing_edge(&h),
        "circuit=open opened=1 calls=4 ok=0 failed=4 timeouts=0 retries=0 circuit_open=0 bulkhead_full=0 fallbacks=0 too_deep=0"
    );
    assert_eq!(requests(&h, "pricing"), 4);

    // Open: refused at once, the callee never entered (even a call that would succeed).
    for _ in 0..3 {
        let r = get(&h.url("/fail?code=0")).await;
        failed_with(&r, 503, &open);
        assert!(
            r.body.contains("the circuit to `pricing` is open"),
            "{}",
            r.body
        );
        assert_eq!(r.headers["retry-after"], "1");
    }
    assert!(
        opened_at.elapsed() < Duration::from_millis(300),
        "the fail-fast calls took longer than open_for; the rest of the test would be wrong"
    );
    assert_eq!(requests(&h, "pricing"), 4);
    assert_eq!(
        pricing_edge(&h),
        "circuit=open opened=1 calls=7 ok=0 failed=4 timeouts=0 retries=0 circuit_open=3 bulkhead_full=0 fallbacks=0 too_deep=0"
    );

    // After open_for: exactly two probes go through while a third is refused.
    tokio::time::sleep_until((opened_at + Duration::from_millis(350)).into()).await;
    assert_eq!(edge(&h, "booking", "pricing").circuit, "half-open");
    let probes = [spawn_get(&h, "/spin?ms=200"), spawn_get(&h, "/spin?ms=200")];
    until_in_flight(&h, "pricing", 2).await;
    let r = get(&h.url("/spin?ms=1")).await;
    failed_with(&r, 503, &call_failed("spin", "circuit open"));
    assert!(r.body.contains("it probes again in 0ns"), "{}", r.body);
    for p in probes {
        answer(&p.await.unwrap(), 200, "200");
    }
    assert_eq!(
        pricing_edge(&h),
        "circuit=closed opened=1 calls=10 ok=2 failed=4 timeouts=0 retries=0 circuit_open=4 bulkhead_full=0 fallbacks=0 too_deep=0"
    );
    assert_eq!(requests(&h, "pricing"), 6);
    answer(&get(&h.url("/greet?name=a")).await, 200, "hello, a");

    // A fresh window: the success above and two failures are 3 calls, below
    // min_calls; the third failure makes 3 of 4 and opens it again.
    for i in 1..=3 {
        failed_with(&get(&h.url("/fail?code=1")).await, 502, &fail);
        let want = if i < 3 { "closed" } else { "open" };
        assert_eq!(edge(&h, "booking", "pricing").circuit, want, "after {i}");
    }
    let opened_at = Instant::now();
    assert_eq!(edge(&h, "booking", "pricing").opened, 2);
    tokio::time::sleep_until((opened_at + Duration::from_millis(350)).into()).await;
    failed_with(&get(&h.url("/fail?code=1")).await, 502, &fail);
    let e = edge(&h, "booking", "pricing");
    assert_eq!((e.circuit.as_str(), e.window_calls), ("half-open", 1));
    failed_with(&get(&h.url("/fail?code=1")).await, 502, &fail);
    failed_with(&get(&h.url("/fail?code=0")).await, 503, &open);
    assert_eq!(
        pricing_edge(&h),
        "circuit=open opened=3 calls=17 ok=3 failed=9 timeouts=0 retries=0 circuit_open=5 bulkhead_full=0 fallbacks=0 too_deep=0"
    );
    assert_eq!(requests(&h, "pricing"), 12);
    h.stop().await;
}

/// Slow calls open the circuit although every one succeeded; an open
/// circuit answers fast (its latency is printed, and bounded loosely).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_calls_open_the_circuit_and_it_fails_fast() {
    let _serial = SERIAL.lock().await;
    let h = TestHost::start(&app(
        r#"
retries = 0
breaker = { window = 4, min_calls = 4, slow_call = "50ms", slow_call_rate = 0.5, open_for = "10s" }
"#,
        "",
    ))
    .await;
    for i in 1..=4 {
        answer(&get(&h.url("/spin?ms=80")).await, 200, "80");
        let want = if i < 4 { "closed" } else { "open" };
        assert_eq!(edge(&h, "booking", "pricing").circuit, want, "after {i}");
    }
    let mut took = Vec::new();
    for _ in 0..25 {
        let sent = Instant::now();
        let r = get(&h.url("/spin?ms=80")).await;
        took.push(sent.elapsed());
        failed_with(&r, 503, &call_failed("spin", "circuit open"));
    }
    assert_eq!(
        pricing_edge(&h),
        "circuit=open opened=1 calls=29 ok=4 failed=0 timeouts=0 retries=0 circuit_open=25 bulkhead_full=0 fallbacks=0 too_deep=0"
    );
    assert_eq!(requests(&h, "pricing"), 4);
    took.sort();
    let median = took[took.len() / 2];
    println!(
        "open circuit, HTTP round trip of a fail-fast 503: min {:?}, median {median:?}, max {:?}",
        took[0],
        took[took.len() - 1]
    );
    // (A figure, not an assertion: the bench measures; the test checks
    // above that the callee was never entered.)
    h.stop().await;
}

/// Only functions declared idempotent are retried, at most `retries` times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_only_for_idempotent_functions() {
    let _serial = SERIAL.lock().await;
    // `flaky` traps on the 1st, 3rd, ... call of a key: a retry succeeds.
    let h = TestHost::start(&app("idempotent = [\"flaky\", \"fail\"]", "")).await;
    answer(&get(&h.url("/flaky?key=k")).await, 200, "ok 2");
    assert_eq!(
        pricing_edge(&h),
        "circuit=closed opened=0 calls=1 ok=1 failed=1 timeouts=0 retries=1 circuit_open=0 bulkhead_full=0 fallbacks=0 too_deep=0"
    );
    answer(&get(&h.url("/flaky?key=k")).await, 200, "ok 4");
    // `fail` always traps: 1 + 2 retries, then the error says so.
    let r = get(&h.url("/fail?code=1")).await;
    failed_with(&r, 502, &call_failed("fail", "callee failed"));
    assert!(r.body.ends_with(" (after 3 attempts))\n"), "{}", r.body);
    assert_eq!(
        pricing_edge(&h),
        "circuit=closed opened=0 calls=3 ok=2 failed=5 timeouts=0 retries=4 circuit_open=0 bulkhead_full=0 fallbacks=0 too_deep=0"
    );
    assert_eq!(requests(&h, "pricing"), 7);
    h.stop().await;

    // Not idempotent: never retried, whatever `retries` says.
    let h = TestHost::start(&app("retries = 2\nidempotent = [\"greet\"]", "")).await;
    failed_with(
        &get(&h.url("/flaky?key=k")).await,
        502,
        &call_failed("flaky", "callee failed"),
    );
    answer(&get(&h.url("/flaky?key=k")).await, 200, "ok 2");
    assert_eq!(
        pricing_edge(&h),
        "circuit=closed opened=0 calls=2 ok=1 failed=1 timeouts=0 retries=0 circuit_open=0 bulkhead_full=0 fallbacks=0 too_deep=0"
    );
    h.stop().await;
}

/// With `max_concurrent = 2`, a third concurrent call is refused at once.
// Four workers: two callees busy-loop at once here, and with two workers
// they starve the runtime's timers and sockets (see
// `spinning_callees_do_not_hold_up_other_requests`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bulkhead_refuses_the_call_over_max_concurrent() {
    let _serial = SERIAL.lock().await;
    let h = TestHost::start(&app("max_concurrent = 2", "")).await;
    let running = [spawn_get(&h, "/spin?ms=300"), spawn_get(&h, "/spin?ms=300")];
    until_in_flight(&h, "pricing", 2).await;
    let r = get(&h.url("/spin?ms=300")).await;
    failed_with(&r, 503, &call_failed("spin", "bulkhead full"));
    assert!(
        r.body
            .contains("2 calls are already in flight from `booking` (max_concurrent)"),
        "{}",
        r.body
    );
    for t in running {
        answer(&t.await.unwrap(), 200, "300");
    }
    // The slots are free again.
    answer(&get(&h.url("/spin?ms=1")).await, 200, "1");
    assert_eq!(
        pricing_edge(&h),
        "circuit=closed opened=0 calls=4 ok=3 failed=0 timeouts=0 retries=0 circuit_open=0 bulkhead_full=1 fallbacks=0 too_deep=0"
    );
    assert_eq!(requests(&h, "pricing"), 3);
    h.stop().await;
}

/// A callee in a busy loop yields to the runtime at every epoch tick, so it
/// cannot hold up the host: with as many spinning callees as worker
/// threads, a request that makes no call is still answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_callees_do_not_hold_up_other_requests() {
    let _serial = SERIAL.lock().await;
    let h = TestHost::start(&app("", "")).await;
    let spinning = [
        spawn_get(&h, "/spin?ms=1500"),
        spawn_get(&h, "/spin?ms=1500"),
    ];
    // Polled with the thread's own sleep: the runtime's timers are under test.
    let deadline = Instant::now() + Duration::from_secs(5);
    while component(&h, "pricing").in_flight != 2 {
        assert!(Instant::now() < deadline, "the callees never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut took = Vec::new();
    for _ in 0..5 {
        let sent = Instant::now();
        answer(&get(&h.url("/self")).await, 200, "booking");
        took.push(sent.elapsed());
    }
    println!("GET /self while two callees spin on two workers: {took:?}");
    // All five answered while both callees were still spinning: none waited
    // for them to finish.
    assert_eq!(component(&h, "pricing").in_flight, 2, "{took:?}");
    for t in spinning {
        answer(&t.await.unwrap(), 200, "1500");
    }
    h.stop().await;
}

/// A cache fallback answers a failed or refused call with the last result
/// for the same arguments, and only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_fallback_answers_what_it_has_seen() {
    let _serial = SERIAL.lock().await;
    let h = TestHost::start(&app(
        r#"
retries = 0
fallback = { cache = 10 }
breaker = { window = 10, min_calls = 10, failure_rate = 0.5, open_for = "10s" }
"#,
        "",
    ))
    .await;
    let flaky = call_failed("flaky", "callee failed");
    // A trap with nothing cached fails; a success is cached; the next trap
    // is answered from the cache.
    failed_with(&get(&h.url("/flaky?key=z")).await, 502, &flaky);
    answer(&get(&h.url("/flaky?key=z")).await, 200, "ok 2");
    answer(&get(&h.url("/flaky?key=z")).await, 200, "ok 2");
    // Another key was never cached.
    failed_with(&get(&h.url("/flaky?key=y")).await, 502, &flaky);
    answer(&get(&h.url("/greet?name=a")).await, 200, "hello, a");
    assert_eq!(
        pricing_edge(&h),
        "circuit=closed opened=0 calls=5 ok=2 failed=3 timeouts=0 retries=0 circuit_open=0 bulkhead_full=0 fallbacks=1 too_deep=0"
    );
    // 3 failures and 2 successes so far: five more failures make 8 of 10.
    for _ in 0..5 {
        failed_with(
            &get(&h.url("/fail?code=1")).await,
            502,
            &call_failed("fail", "callee failed"),
        );
    }
    assert_eq!(edge(&h, "booking", "pricing").circuit, "open");
    let before = requests(&h, "pricing");
    answer(&get(&h.url("/greet?name=a")).await, 200, "hello, a");
    failed_with(
        &get(&h.url("/greet?name=b")).await,
        503,
        &call_failed("greet", "circuit open"),
    );
    assert_eq!(
        requests(&h, "pricing"),
        before,
        "the callee was not entered"
    );
    assert_eq!(
        pricing_edge(&h),
        "circuit=open opened=1 calls=12 ok=2 failed=8 timeouts=0 retries=0 circuit_open=2 bulkhead_full=0 fallbacks=2 too_deep=0"
    );
    h.stop().await;
}

/// A component fallback answers failed and refused calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_fallback_answers_when_the_callee_cannot() {
    let _serial = SERIAL.lock().await;
    let h = TestHost::start(&app(
        r#"
retries = 0
fallback = { component = "pricing-backup" }
breaker = { window = 2, min_calls = 2, open_for = "10s" }
"#,
        "[components.pricing-backup]\nsource = \"{pricing-backup}\"\n",
    ))
    .await;
    // `pricing` traps; the backup's `fail` returns its code.
    answer(&get(&h.url("/fail?code=7")).await, 200, "7");
    answer(&get(&h.url("/fail?code=8")).await, 200, "8");
    assert_eq!(edge(&h, "booking", "pricing").circuit, "open");
    answer(&get(&h.url("/greet?name=a")).await, 200, "backup hello, a");
    assert_eq!(
        pricing_edge(&h),
        "circuit=open opened=1 calls=3 ok=0 failed=2 timeouts=0 retries=0 circuit_open=1 bulkhead_full=0 fallbacks=3 too_deep=0"
    );
    assert_eq!(
        (requests(&h, "pricing"), requests(&h, "pricing-backup")),
        (2, 3)
    );
    h.stop().await;
}

/// A fallback component is a callee too: unless it serves the caller's
/// import (a compatible version, the same function types), the host must
/// not start, and a deploy over it must be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_component_must_serve_the_import() {
    let _serial = SERIAL.lock().await;
    let edge = r#"
retries = 0
fallback = { component = "legacy" }
breaker = { window = 1, min_calls = 1, open_for = "10s" }
"#;
    let legacy = |source: &str, version: &str| {
        format!("[components.legacy]\nsource = \"{{{source}}}\"\nversion = \"{version}\"\n")
    };
    let mut problems = Vec::new();

    // At start: `legacy` exports test:calls/quote@2.0.0 only.
    let toml = app(edge, &legacy("pricing-v2", "2.0.0"));
    let dir = tempfile::tempdir().unwrap();
    match TestHost::start_in(&toml, dir.path()).await {
        Err(e) => {
            let e = format!("{e:#}");
            for name in ["booking", "legacy", "test:calls/quote@2.0.0", "1.2.0"] {
                assert!(e.contains(name), "the error names {name}: {e}");
            }
        }
        Ok(host) => {
            // Show what it leads to: with the circuit open, the 2.0.0
            // `greet` answers a call made against 1.2.0.
            let h = TestHost { host, dir };
            let fail = get(&h.url("/fail?code=1")).await;
            let greet = get(&h.url("/greet?name=a")).await;
            h.stop().await;
            problems.push(format!(
                "the host started with a fallback exporting test:calls/quote@2.0.0 for an import of 1.2.0; then /fail?code=1 answered {} {:?} and, with the circuit open, /greet?name=a answered {} {:?}",
                fail.status, fail.body, greet.status, greet.body
            ));
        }
    }

    // At deploy: 2.0.0 over a fallback that served 1.2.0.
    let h = TestHost::start(&app(edge, &legacy("pricing-backup", "1.2.0"))).await;
    let wasm = std::fs::read(guest("pricing-v2")).unwrap();
    let r = api(
        &h,
        "POST",
        "/v1/components/legacy/versions?version=2.0.0",
        wasm,
    )
    .await;
    if r.status != 422 {
        failed_with(
            &get(&h.url("/fail?code=1")).await,
            502,
            &call_failed("fail", "callee failed"),
        );
        let greet = get(&h.url("/greet?name=a")).await;
        problems.push(format!(
            "deploying test:calls/quote@2.0.0 over the fallback `legacy` answered {} {}; then, with the circuit open, /greet?name=a answered {} {:?}",
            r.status, r.body, greet.status, greet.body
        ));
    }
    h.stop().await;
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The caller's deadline bounds its calls: a callee that loops forever is
/// interrupted when the caller's time is up, and an edge's `timeout`
/// tightens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_propagates_and_edge_timeout_tightens_it() {
    let _serial = SERIAL.lock().await;
    let h = TestHost::start(&app(
        "",
        "\n[components.booking.limits]\ndeadline = \"300ms\"\n",
    ))
    .await;
    let sent = Instant::now();
    let r = get(&h.url("/spin?ms=0")).await;
    let took = sent.elapsed();
    println!(
        "deadline 300ms, callee in an endless loop: 504 after {took:?}: {}",
        r.body
    );
    assert_eq!(r.status, 504, "{}", r.body);
    // It waited out the deadline (no earlier); that the callee was stopped
    // is checked below through its in-flight count.
    assert!(took >= Duration::from_millis(300), "{took:?}");
    // The callee was stopped, not left spinning, and the host serves on.
    until_in_flight(&h, "pricing", 0).await;
    assert_eq!(component(&h, "booking").in_flight, 0);
    answer(&get(&h.url("/greet?name=a")).await, 200, "hello, a");
    assert_eq!(
        pricing_edge(&h),
        "circuit=closed opened=0 calls=2 ok=1 failed=1 timeouts=1 retries=0 circuit_open=0 bulkhead_full=0 fallbacks=0 too_deep=0"
    );
    let pricing = component(&h, "pricing").active.unwrap();
    assert_eq!((pricing.requests, pricing.errors), (2, 1));
    h.stop().await;

    let h = TestHost::start(&app("timeout = \"100ms\"", "")).await;
    let sent = Instant::now();
    let r = get(&h.url("/spin?ms=5000")).await;
    let took = sent.elapsed();
    failed_with(&r, 504, &call_failed("spin", "timeout"));
    assert!(
        r.body
            .contains("(no answer within the edge's timeout (100ms))"),
        "{}",
        r.body
    );
    // Cut by the timeout, not ended by the callee's own 5 s of spinning.
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_secs(5),
        "{took:?}"
    );
    until_in_flight(&h, "pricing", 0).await;
    assert_eq!(
        pricing_edge(&h),
        "circuit=closed opened=0 calls=1 ok=0 failed=1 timeouts=1 retries=0 circuit_open=0 bulkhead_full=0 fallbacks=0 too_deep=0"
    );
    h.stop().await;
}

/// A declared cycle recurses until `max_call_depth`, then the deepest call
/// is refused (508) and the failure travels back up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_depth_stops_a_cycle() {
    let _serial = SERIAL.lock().await;
    let h = TestHost::start(
        r#"
[host]
max_call_depth = 5

[components.cycle-left]
source = "{cycle-left}"
routes = ["/ping"]

[components.cycle-left.calls.cycle-right]

[components.cycle-right]
source = "{cycle-right}"

[components.cycle-right.calls.cycle-left]
cycle = true
"#,
    )
    .await;
    let r = get(&h.url("/ping?depth=0")).await;
    assert_eq!(r.status, 508, "{}", r.body);
    // One flat message: the outermost edge, the reason, and where it happened.
    assert_eq!(
        r.body,
        "atoll: call from `cycle-left` to `cycle-right` `test:cycle/right#ping` failed: call depth exceeded (this call would be 6 deep; `[host] max_call_depth` is 5), in the nested call `cycle-right` -> `cycle-left` `test:cycle/left#ping`\n"
    );
    // Calls 1, 3, 5 went left -> right, 2, 4 and the refused 6th right -> left.
    assert_eq!(
        counters(&edge(&h, "cycle-left", "cycle-right")),
        "circuit=closed opened=0 calls=3 ok=0 failed=3 timeouts=0 retries=0 circuit_open=0 bulkhead_full=0 fallbacks=0 too_deep=0"
    );
    assert_eq!(
        counters(&edge(&h, "cycle-right", "cycle-left")),
        "circuit=closed opened=0 calls=3 ok=0 failed=2 timeouts=0 retries=0 circuit_open=0 bulkhead_full=0 fallbacks=0 too_deep=1"
    );
    // Every instance of the chain is gone.
    until_in_flight(&h, "cycle-left", 0).await;
    until_in_flight(&h, "cycle-right", 0).await;
    h.stop().await;
}

/// Arguments larger than the callee's memory limit are refused before an
/// instance is made; smaller ones pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_larger_than_the_callee_may_hold_are_refused() {
    let _serial = SERIAL.lock().await;
    let h = TestHost::start(&app(
        "",
        "\n[components.pricing.limits]\nmemory = \"2MiB\"\n",
    ))
    .await;
    answer(&get(&h.url("/size?bytes=1000")).await, 200, "1000");
    let r = get(&h.url("/size?bytes=3000000")).await;
    failed_with(&r, 502, &call_failed("size", "arguments too large"));
    assert!(
        r.body
            .contains("more than `pricing`'s memory limit (2097152 bytes)"),
        "{}",
        r.body
    );
    assert_eq!(requests(&h, "pricing"), 1, "the callee was not entered");
    // 300 KB fit in 2 MiB: counting a byte of a list<u8> as eight refuses it.
    answer(&get(&h.url("/size?bytes=300000")).await, 200, "300000");
    h.stop().await;
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_atoll-cli"))
}

/// A callee's key-value writes are durable once the caller's response has
/// completed: a SIGKILL right after it loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_writes_are_durable_before_the_response() {
    let _serial = SERIAL.lock().await;
    let (_dir, manifest) = manifest_file(&app("idempotent = [\"flaky\"]", ""));
    let host = ChildHost::spawn(bin(), &manifest, &[]).unwrap();
    // Count 1 traps, the retry makes it 2.
    answer(&get(&host.url("/flaky?key=d")).await, 200, "ok 2");
    host.kill9();
    let host = ChildHost::spawn(bin(), &manifest, &[]).unwrap();
    answer(&get(&host.url("/flaky?key=d")).await, 200, "ok 4");
    host.kill9();
    let host = ChildHost::spawn(bin(), &manifest, &[]).unwrap();
    answer(&get(&host.url("/flaky?key=d")).await, 200, "ok 6");
    host.kill9();
}
