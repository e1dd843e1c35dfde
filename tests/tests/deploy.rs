//! The component registry through the real admin API and the real gateway:
//! hot swap under load, canaries and their automatic rollback, persistence
//! across restarts, what the admin API refuses, remove, and memory across
//! many swaps.
//!
//! Every test takes [`SERIAL`]: the machine may have two cores, the load and
//! timing-bounded tests want them, and the memory test reads the RSS of the
//! whole process, which a test running beside it would change.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use atoll::registry::{ComponentView, DeployReport, RegistryView};
use atoll_tests::{Reply, TestHost, admin, client, get, guest, send_with};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// One test at a time (see the module docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `swap` answers `v1` (or whatever is deployed) on `/swap`; every new
/// version must answer 2xx on `/healthz` before it takes traffic.
const SWAP: &str = r#"
[components.swap]
source = "{swap-v1}"
version = "1.0.0"
routes = ["/swap"]
health = "/healthz"
"#;

async fn start(toml: &str) -> TestHost {
    TestHost::start(toml).await
}

/// Stops a host and starts another on its data dir.
async fn restart(h: TestHost, toml: &str) -> TestHost {
    let dir = h.stop().await;
    let host = TestHost::start_in(toml, dir.path())
        .await
        .expect("restarting host");
    TestHost { host, dir }
}

/// A guest's binary.
fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).unwrap()
}

async fn api(h: &TestHost, method: &str, path: &str, body: impl Into<Bytes>) -> Reply {
    admin(h.host.admin_addr(), h.dir.path(), method, path, body)
        .await
        .expect("admin request")
}

/// `POST /v1/components/{name}/versions?{query}` with `wasm` as the body.
async fn deploy(h: &TestHost, name: &str, wasm: &[u8], query: &str) -> Reply {
    let path = format!("/v1/components/{name}/versions?{query}");
    api(h, "POST", &path, wasm.to_vec()).await
}

/// Asserts the status (showing the body otherwise) and returns the reply.
#[track_caller]
fn expect(r: Reply, status: u16) -> Reply {
    assert_eq!(r.status, status, "{}", r.body);
    r
}

/// Asserts the status and that the error names `text`.
#[track_caller]
fn refused(r: Reply, status: u16, text: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert!(r.body.contains(text), "expected {text:?} in {}", r.body);
}

#[track_caller]
fn report(r: &Reply) -> DeployReport {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

async fn component(h: &TestHost, name: &str) -> ComponentView {
    let r = expect(
        api(h, "GET", &format!("/v1/components/{name}"), Bytes::new()).await,
        200,
    );
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

/// The active version's semver (`None`: removed).
async fn active(h: &TestHost, name: &str) -> Option<String> {
    component(h, name).await.active.map(|v| v.version)
}

/// The canary's semver and share.
async fn canary(h: &TestHost, name: &str) -> Option<(String, u8)> {
    let c = component(h, name).await.canary?;
    Some((c.version.version, c.percent))
}

/// Which swap guest answered a 200: its header and body must agree.
#[track_caller]
fn served_by(r: &Reply) -> String {
    let header = r.headers.get("x-swap-version").map(|v| v.to_str().unwrap());
    assert_eq!(
        (r.status, header.map(|h| format!("{h}\n"))),
        (200, Some(r.body.clone())),
        "a response from one swap guest: {r:?}"
    );
    header.unwrap().to_string()
}

fn state_file(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("registry/state.json")).unwrap()
}

/// What the clients of the load generator saw.
#[derive(Default, Debug)]
struct Tally {
    v1: u64,
    v2: u64,
    /// Anything else: errors, non-2xx, other bodies, header and body disagreeing.
    anomalies: u64,
    /// The first few of them, described.
    examples: Vec<String>,
}

impl Tally {
    fn anomaly(&mut self, what: String) {
        self.anomalies += 1;
        if self.examples.len() < 10 {
            self.examples.push(what);
        }
    }

    fn add(&mut self, other: Tally) {
        self.v1 += other.v1;
        self.v2 += other.v2;
        self.anomalies += other.anomalies;
        self.examples.extend(other.examples);
    }
}

/// GETs `url` on one keep-alive connection as fast as it answers, until `stop`.
async fn load_loop(url: http::Uri, stop: Arc<AtomicBool>) -> Tally {
    let client = client();
    let mut t = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let req = http::Request::get(url.clone())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = match client.request(req).await {
            Ok(res) => res,
            Err(e) => {
                t.anomaly(format!("connection error: {e:?}"));
                continue;
            }
        };
        let status = res.status().as_u16();
        let header = res
            .headers()
            .get("x-swap-version")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = match res.into_body().collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            Err(e) => {
                t.anomaly(format!("body error: {e}"));
                continue;
            }
        };
        match (status, header.as_deref(), body.as_str()) {
            (200, Some("v1"), "v1\n") => t.v1 += 1,
            (200, Some("v2"), "v2\n") => t.v2 += 1,
            _ => t.anomaly(format!("{status} x-swap-version={header:?} body={body:?}")),
        }
    }
    t
}

/// 30 swaps between two builds while 8 keep-alive clients send requests as
/// fast as they are answered; midway, broken versions are refused. No
/// request fails, each is answered whole by one version, and a request sent
/// after a deploy answers runs on the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_lose_nothing_and_never_mix_versions() {
    let _serial = SERIAL.lock().await;
    let h = start(SWAP).await;
    let (v1, v2) = (wasm("swap-v1"), wasm("swap-v2"));
    let stop = Arc::new(AtomicBool::new(false));
    let url: http::Uri = h.url("/swap").parse().unwrap();
    let clients: Vec<_> = (0..8)
        .map(|_| tokio::spawn(load_loop(url.clone(), stop.clone())))
        .collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(50)).await;

    for i in 1..=30 {
        let (bytes, name) = match i % 2 {
            1 => (&v2, "v2"),
            _ => (&v1, "v1"),
        };
        let version = format!("1.{i}.0");
        let r = expect(
            deploy(&h, "swap", bytes, &format!("version={version}")).await,
            201,
        );
        let rep = report(&r);
        assert_eq!(rep.version.as_deref(), Some(version.as_str()));
        assert_eq!(rep.health_status, Some(200));
        assert_eq!(
            rep.compiled,
            i == 1,
            "only the first v2 is compiled: {rep:?}"
        );
        // The pointer is swapped before the deploy answers.
        assert_eq!(
            served_by(&get(&h.url("/swap")).await),
            name,
            "after swap {i}"
        );

        if i == 15 {
            refused(
                deploy(&h, "swap", &wasm("swap-sick"), "version=1.15.1").await,
                422,
                "its health check GET /healthz answered 503: v4-sick health 503",
            );
            refused(
                deploy(&h, "swap", &wasm("no-handler"), "version=1.15.2").await,
                422,
                "does not export `wasi:http/incoming-handler`",
            );
            refused(
                deploy(&h, "swap", &wasm("needs-import"), "version=1.15.3").await,
                422,
                "imports `test:missing/thing`, which no component of this host exports",
            );
            refused(
                deploy(&h, "swap", b"definitely not wasm", "version=1.15.4").await,
                400,
                "not a WebAssembly binary",
            );
            let c = component(&h, "swap").await;
            assert_eq!(c.active.unwrap().version, "1.15.0");
            // The refusals the health check and the linker made are in the
            // history (a body that is no component at all is not).
            let refusals: Vec<&str> = c.events[c.events.len() - 3..]
                .iter()
                .map(|e| {
                    assert_eq!(e.kind, "refused", "{e:?}");
                    e.message.as_str()
                })
                .collect();
            assert!(
                refusals[0].starts_with("version 1.15.1 of `swap`")
                    && refusals[0].contains("GET /healthz answered 503")
                    && refusals[1].starts_with("version 1.15.2 of `swap`")
                    && refusals[2].starts_with("version 1.15.3 of `swap`"),
                "{refusals:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    stop.store(true, Ordering::Relaxed);
    let mut seen = Tally::default();
    for c in clients {
        seen.add(c.await.unwrap());
    }
    let elapsed = started.elapsed();
    let total = seen.v1 + seen.v2 + seen.anomalies;
    println!(
        "swap under load: {total} requests in {elapsed:.1?} ({:.0}/s) across 30 swaps: {} v1, {} v2, {} anomalies",
        total as f64 / elapsed.as_secs_f64(),
        seen.v1,
        seen.v2,
        seen.anomalies
    );
    assert_eq!(seen.anomalies, 0, "{:#?}", seen.examples);
    assert!(seen.v1 > 0 && seen.v2 > 0, "{seen:?}");

    // The history has the 30 deploys and the 3 refusals; the newest 5
    // versions (`keep_versions`) are kept, none of them refused.
    let c = component(&h, "swap").await;
    let kinds: Vec<&str> = c.events.iter().map(|e| e.kind.as_str()).collect();
    let mut expected = vec!["manifest"];
    expected.extend(["deploy"; 15]);
    expected.extend(["refused"; 3]);
    expected.extend(["deploy"; 15]);
    assert_eq!(kinds, expected);
    let kept: Vec<String> = c.kept.iter().map(|v| v.version.to_string()).collect();
    assert_eq!(kept, ["1.26.0", "1.27.0", "1.28.0", "1.29.0", "1.30.0"]);
    // Refused binaries leave no file behind once a later deploy succeeded.
    let blobs = std::fs::read_dir(h.dir.path().join("registry/components"))
        .unwrap()
        .count();
    assert_eq!(blobs, 2, "the kept versions are two binaries");
    h.stop().await;
}

/// A 25% canary gets exactly 25 of every 100 requests, one in every four;
/// promote makes it active; rollback drops a canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_gets_its_exact_share_then_promote_and_rollback() {
    let _serial = SERIAL.lock().await;
    let h = start(SWAP).await;
    let r = expect(
        deploy(&h, "swap", &wasm("swap-v2"), "version=2.0.0&canary=25").await,
        201,
    );
    assert_eq!(report(&r).canary, Some(25));
    assert_eq!(active(&h, "swap").await.as_deref(), Some("1.0.0"));
    assert_eq!(canary(&h, "swap").await, Some(("2.0.0".into(), 25)));

    // The split is exact, not random: picks are counted per component and
    // `percent` of every 100 consecutive ones go to the canary, evenly
    // spaced, so 400 sequential requests (4 whole cycles, wherever the
    // count starts) give the canary exactly 100, one every 4.
    let mut canary_at = Vec::new();
    for i in 0..400 {
        if served_by(&get(&h.url("/swap")).await) == "v2" {
            canary_at.push(i);
        }
    }
    assert_eq!(canary_at.len(), 100);
    assert!(
        canary_at.windows(2).all(|w| w[1] - w[0] == 4),
        "evenly spread: {canary_at:?}"
    );
    let c = component(&h, "swap").await;
    assert_eq!(c.canary.unwrap().version.requests, 100);
    assert_eq!(c.active.unwrap().requests, 300);

    let r = expect(
        api(&h, "POST", "/v1/components/swap/promote", Bytes::new()).await,
        200,
    );
    assert_eq!(report(&r).version.as_deref(), Some("2.0.0"));
    assert_eq!(active(&h, "swap").await.as_deref(), Some("2.0.0"));
    assert_eq!(canary(&h, "swap").await, None);
    for _ in 0..20 {
        assert_eq!(served_by(&get(&h.url("/swap")).await), "v2");
    }

    // Another canary (v1's bytes as 3.0.0), then a rollback without `to` drops it.
    expect(
        deploy(&h, "swap", &wasm("swap-v1"), "version=3.0.0&canary=50").await,
        201,
    );
    let seen: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(served_by(&get(&h.url("/swap")).await));
        }
        v
    };
    assert_eq!(seen.iter().filter(|v| *v == "v1").count(), 2, "{seen:?}");
    let r = expect(
        api(&h, "POST", "/v1/components/swap/rollback", Bytes::new()).await,
        200,
    );
    assert!(
        report(&r).message.contains("canary 3.0.0 rolled back"),
        "{}",
        r.body
    );
    assert_eq!(canary(&h, "swap").await, None);
    assert_eq!(active(&h, "swap").await.as_deref(), Some("2.0.0"));
    for _ in 0..20 {
        assert_eq!(served_by(&get(&h.url("/swap")).await), "v2");
    }
    let kinds: Vec<String> = component(&h, "swap")
        .await
        .events
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        ["manifest", "canary", "promote", "canary", "rollback"]
    );
    h.stop().await;
}

const AUTO: &str = r#"
[components.swap]
source = "{swap-v1}"
version = "1.0.0"
routes = ["/swap"]
health = "/healthz"

[components.swap.canary]
min_requests = 10
window = "10s"
"#;

/// A canary answering 500 is rolled back on its own once it has
/// `min_requests` in its window; after that everything is answered by the
/// active version, and a restart does not bring the canary back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_canary_is_rolled_back_automatically() {
    let _serial = SERIAL.lock().await;
    let h = start(AUTO).await;
    // swap-flaky passes its health check, then answers every request with 500.
    expect(
        deploy(&h, "swap", &wasm("swap-flaky"), "version=2.0.0&canary=50").await,
        201,
    );
    const PACE: Duration = Duration::from_millis(10);
    let (mut failed, mut ok, mut sent) = (0u64, 0u64, 0u64);
    // (Not kept across the restart below: a service holds the kv store open.)
    let registry = h.host.registry().clone();
    let has_canary = || {
        registry
            .service("swap")
            .unwrap()
            .deployment()
            .canary
            .is_some()
    };
    while has_canary() {
        assert!(
            sent < 1000,
            "the canary was not rolled back after {sent} requests"
        );
        let r = get(&h.url("/swap")).await;
        sent += 1;
        match (r.status, r.body.as_str()) {
            (500, "v3-flaky\n") => failed += 1,
            (200, "v1\n") => ok += 1,
            _ => panic!("unexpected {r:?}"),
        }
        tokio::time::sleep(PACE).await;
    }
    // The canary needs `min_requests` = 10 failures in its window before it
    // is judged, and canaries are judged every 200 ms. Requests are at least
    // PACE apart, so at most 20 are sent per 200 ms, half of them to the
    // canary: 10 more failures per period after the 10th. Two periods are
    // allowed (scheduling on a small machine): at most 10 + 20.
    println!("auto rollback: {failed} failures and {ok} successes before the canary was dropped");
    assert!(
        (10..=30).contains(&failed),
        "{failed} failures reached users"
    );
    // Picks alternate, the active version first; the canary may be dropped
    // between the check above and the next pick, which then goes to the
    // active version too.
    assert!(
        (failed..=failed + 2).contains(&ok),
        "the canary got every other request"
    );

    let c = component(&h, "swap").await;
    assert!(c.canary.is_none());
    assert_eq!(c.active.unwrap().version, "1.0.0");
    let last = c.events.last().unwrap();
    assert_eq!(last.kind, "auto-rollback");
    assert!(
        last.message
            .starts_with("canary 2.0.0 rolled back automatically: error rate 100% (")
            && last
                .message
                .ends_with("over the last 10s is above the limit of 10%"),
        "{}",
        last.message
    );
    // "(N of N)": what the window held when it was judged.
    let counts = last.message.split(['(', ')']).nth(1).unwrap();
    let (bad, all) = counts.split_once(" of ").unwrap();
    let (bad, all): (u64, u64) = (bad.parse().unwrap(), all.parse().unwrap());
    assert_eq!(bad, all);
    assert!((10..=failed).contains(&bad), "judged on {bad} failures");

    for _ in 0..50 {
        assert_eq!(served_by(&get(&h.url("/swap")).await), "v1");
    }
    drop(registry);
    let h = restart(h, AUTO).await;
    assert_eq!(canary(&h, "swap").await, None, "the rollback was persisted");
    for _ in 0..4 {
        assert_eq!(served_by(&get(&h.url("/swap")).await), "v1");
    }
    h.stop().await;
}

/// A restart serves what was deployed (active and canary), even once the
/// manifest's source file is gone; a changed source wins over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployed_versions_survive_restarts_until_the_manifest_changes() {
    let _serial = SERIAL.lock().await;
    let app = tempfile::tempdir().unwrap();
    let source = app.path().join("swap.wasm");
    std::fs::copy(guest("swap-v1"), &source).unwrap();
    let manifest = |version: &str| {
        format!(
            "[components.swap]\nsource = {:?}\nversion = {version:?}\nroutes = [\"/swap\"]\n",
            source.display().to_string()
        )
    };
    // 4 requests under a 50% canary: exactly 2 each (the spread is exact).
    async fn split(h: &TestHost) -> (usize, usize) {
        let mut bodies = Vec::new();
        for _ in 0..4 {
            let r = get(&h.url("/swap")).await;
            assert_eq!(r.status, 200, "{r:?}");
            bodies.push(r.body);
        }
        let v2 = bodies.iter().filter(|b| *b == "v2\n").count();
        let hello = bodies
            .iter()
            .filter(|b| *b == "hello from atoll: /swap\n")
            .count();
        assert_eq!(v2 + hello, 4, "{bodies:?}");
        (v2, hello)
    }

    let h = start(&manifest("1.0.0")).await;
    expect(
        deploy(&h, "swap", &wasm("swap-v2"), "version=2.0.0").await,
        201,
    );
    expect(
        deploy(&h, "swap", &wasm("hello"), "version=3.0.0&canary=50").await,
        201,
    );
    assert_eq!(split(&h).await, (2, 2));

    // The same manifest: the registry's versions serve.
    let h = restart(h, &manifest("1.0.0")).await;
    assert_eq!(active(&h, "swap").await.as_deref(), Some("2.0.0"));
    assert_eq!(canary(&h, "swap").await, Some(("3.0.0".into(), 50)));
    assert_eq!(split(&h).await, (2, 2));

    // The source is gone: the registry's copies serve.
    std::fs::remove_file(&source).unwrap();
    let h = restart(h, &manifest("1.0.0")).await;
    assert_eq!(active(&h, "swap").await.as_deref(), Some("2.0.0"));
    assert_eq!(canary(&h, "swap").await, Some(("3.0.0".into(), 50)));
    assert_eq!(split(&h).await, (2, 2));

    // A different source: it is active, the canary is gone.
    std::fs::copy(guest("wstd-hello"), &source).unwrap();
    let h = restart(h, &manifest("5.0.0")).await;
    let c = component(&h, "swap").await;
    assert_eq!(c.active.unwrap().version, "5.0.0");
    assert!(c.canary.is_none());
    let last = c.events.last().unwrap();
    assert_eq!(last.kind, "manifest");
    assert!(
        last.message
            .starts_with("the manifest's source changed: 5.0.0 from"),
        "{}",
        last.message
    );
    for _ in 0..4 {
        assert_eq!(get(&h.url("/swap")).await.body, "wstd says hi");
    }

    // An operator's rollback wins over the manifest again while its source
    // stays the same, across a restart.
    expect(
        api(
            &h,
            "POST",
            "/v1/components/swap/rollback?to=2.0.0",
            Bytes::new(),
        )
        .await,
        200,
    );
    assert_eq!(get(&h.url("/swap")).await.body, "v2\n");
    let h = restart(h, &manifest("5.0.0")).await;
    assert_eq!(active(&h, "swap").await.as_deref(), Some("2.0.0"));
    assert_eq!(get(&h.url("/swap")).await.body, "v2\n");

    // A removed component stays removed across a restart.
    expect(
        api(&h, "DELETE", "/v1/components/swap", Bytes::new()).await,
        200,
    );
    let h = restart(h, &manifest("5.0.0")).await;
    assert_eq!(active(&h, "swap").await, None);
    assert_eq!(get(&h.url("/swap")).await.status, 503);
    h.stop().await;
}

/// Every refusal of the admin API, with its status and message, and that a
/// refused request changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_refusals() {
    let _serial = SERIAL.lock().await;
    let h = start(SWAP).await;
    let (v1, v2) = (wasm("swap-v1"), wasm("swap-v2"));
    expect(
        deploy(&h, "swap", &v2, "version=2.0.0&canary=50").await,
        201,
    );

    // Without the token (or with a wrong one) nothing is read or changed.
    let before = (state_file(h.dir.path()), canary(&h, "swap").await);
    let endpoints: [(&str, &str, &[u8]); 6] = [
        ("GET", "/v1/components", b""),
        ("GET", "/v1/components/swap", b""),
        ("POST", "/v1/components/swap/versions?version=9.0.0", &v1),
        ("POST", "/v1/components/swap/promote", b""),
        ("POST", "/v1/components/swap/rollback", b""),
        ("DELETE", "/v1/components/swap", b""),
    ];
    let wrong = [&[][..], &[("authorization", "Bearer not-the-token")][..]];
    for (method, path, body) in endpoints {
        for headers in wrong {
            let url = format!("http://{}{path}", h.host.admin_addr());
            let r = send_with(method, &url, headers, body.to_vec())
                .await
                .unwrap();
            assert_eq!(
                r.status, 401,
                "{method} {path} with {headers:?}: {}",
                r.body
            );
            assert!(!r.body.contains("swap\""), "nothing is shown: {}", r.body);
        }
    }
    assert_eq!(
        (state_file(h.dir.path()), canary(&h, "swap").await),
        before,
        "nothing changed"
    );
    assert_eq!(active(&h, "swap").await.as_deref(), Some("1.0.0"));

    // Unknown component: 404 naming it and what exists.
    let unknown = "unknown component `nope`; the manifest declares: swap";
    for (method, path) in [
        ("GET", "/v1/components/nope"),
        ("POST", "/v1/components/nope/versions?version=1.0.0"),
        ("POST", "/v1/components/nope/promote"),
        ("POST", "/v1/components/nope/rollback"),
        ("DELETE", "/v1/components/nope"),
    ] {
        refused(api(&h, method, path, v1.clone()).await, 404, unknown);
    }

    // Bad parameters and bodies: 400.
    for (query, text) in [
        ("version=banana", "version `banana` is not semver"),
        ("", "query parameter `version` is missing"),
        (
            "version=3.0.0&canary=0",
            "give a percent of traffic from 1 to 99",
        ),
        (
            "version=3.0.0&canary=100",
            "give a percent of traffic from 1 to 99",
        ),
        ("version=3.0.0&force=yes", "give `true` or `false`"),
    ] {
        refused(deploy(&h, "swap", &v1, query).await, 400, text);
    }
    refused(
        deploy(&h, "swap", b"", "version=3.0.0").await,
        400,
        "not a WebAssembly binary",
    );
    refused(
        api(
            &h,
            "POST",
            "/v1/components/swap/rollback?to=banana",
            Bytes::new(),
        )
        .await,
        400,
        "version `banana` is not semver",
    );
    refused(
        api(&h, "PUT", "/v1/components/swap", Bytes::new()).await,
        405,
        "use GET, DELETE",
    );

    // Conflicts with the current state: 409; with `force` where it applies.
    expect(
        api(&h, "POST", "/v1/components/swap/promote", Bytes::new()).await,
        200,
    );
    refused(
        api(&h, "POST", "/v1/components/swap/promote", Bytes::new()).await,
        409,
        "`swap` has no canary to promote",
    );
    refused(
        deploy(&h, "swap", &v1, "version=1.5.0").await,
        409,
        "1.5.0 is older than the active swap 2.0.0; pass --force to downgrade",
    );
    assert_eq!(active(&h, "swap").await.as_deref(), Some("2.0.0"));
    expect(
        deploy(&h, "swap", &v1, "version=1.5.0&force=true").await,
        201,
    );
    assert_eq!(served_by(&get(&h.url("/swap")).await), "v1");
    refused(
        deploy(&h, "swap", &v2, "version=1.5.0").await,
        409,
        "swap 1.5.0 is already deployed with different bytes",
    );
    let r = expect(deploy(&h, "swap", &v1, "version=1.5.0").await, 200);
    assert!(report(&r).unchanged, "{}", r.body);
    refused(
        deploy(&h, "swap", &v1, "version=1.5.0&canary=10").await,
        409,
        "a canary must be a different version",
    );
    // Other bytes under the active version's number cannot be a canary,
    // even forced: the kept record of the active version would be replaced
    // (and its binary pruned).
    refused(
        deploy(&h, "swap", &v2, "version=1.5.0&canary=10&force=true").await,
        409,
        "swap 1.5.0 is the active version's number; give the canary its own version",
    );
    refused(
        api(
            &h,
            "POST",
            "/v1/components/swap/rollback?to=9.9.9",
            Bytes::new(),
        )
        .await,
        404,
        "swap 9.9.9 is not kept; kept versions: 1.0.0, 2.0.0, 1.5.0",
    );
    assert_eq!(active(&h, "swap").await.as_deref(), Some("1.5.0"));

    // Two deploys of one component at once: one is refused as busy (409), or
    // they run one after the other; the result is always one of them whole.
    // Binaries this host has not compiled yet make the first one slow.
    let pairs = [
        ("hello", "wstd-hello"),
        ("spin", "swap-v2"),
        ("swap-v1", "hello"),
        ("wstd-hello", "swap-v2"),
        ("swap-v1", "spin"),
    ];
    let mut busy = 0;
    for (round, (a, b)) in pairs.iter().enumerate() {
        let (a, b) = (
            (wasm(a), format!("10.{round}.1")),
            (wasm(b), format!("10.{round}.2")),
        );
        let (qa, qb) = (
            format!("version={}&force=true", a.1),
            format!("version={}&force=true", b.1),
        );
        let (ra, rb) = tokio::join!(deploy(&h, "swap", &a.0, &qa), deploy(&h, "swap", &b.0, &qb));
        let mut won = Vec::new();
        for (r, (_, version)) in [(ra, &a), (rb, &b)] {
            match r.status {
                201 => {
                    let digest = report(&r).digest.unwrap();
                    won.push((version.clone(), digest));
                }
                409 => {
                    assert!(r.body.contains("is under way"), "{}", r.body);
                    busy += 1;
                }
                _ => panic!("round {round}: {} {}", r.status, r.body),
            }
        }
        assert!(!won.is_empty(), "round {round}: one deploy succeeds");
        let now = component(&h, "swap").await.active.unwrap();
        assert!(
            won.contains(&(now.version.clone(), now.digest.clone())),
            "round {round}: {}@{} is one of {won:?}",
            now.version,
            now.digest
        );
        let saved: serde_json::Value = serde_json::from_str(&state_file(h.dir.path())).unwrap();
        let saved = &saved["components"]["swap"]["active"];
        assert_eq!(
            (saved["version"].as_str(), saved["digest"].as_str()),
            (Some(now.version.as_str()), Some(now.digest.as_str())),
            "round {round}: the registry file says what serves"
        );
        if busy > 0 {
            println!("a concurrent deploy was refused as busy in round {round}");
            break;
        }
    }
    assert!(busy > 0, "no concurrent deploy was refused as busy");
    h.stop().await;
}

const REMOVE: &str = r#"
[components.spin]
source = "{spin}"
version = "1.0.0"
routes = ["/spin"]

[components.counter]
source = "{kv-counter}"
version = "1.0.0"
routes = ["/kv/..."]
"#;

/// Waits until `name` has `n` invocations running.
async fn until_in_flight(h: &TestHost, name: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while component(h, name).await.in_flight != n {
        assert!(Instant::now() < deadline, "{name} never had {n} in flight");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A request in flight finishes on the version it started on, across a
/// deploy and across a remove (which waits for it); a removed component
/// answers 503 until a deploy or a rollback brings it back; its key-value
/// data belongs to the component, not to a version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_work_finishes_and_remove_drains() {
    let _serial = SERIAL.lock().await;
    let h = start(REMOVE).await;
    let slow = |ms: u64| {
        let url = h.url(&format!("/spin?sleep={ms}"));
        tokio::spawn(async move { get(&url).await })
    };

    // A deploy while a request runs: it finishes on 1.0.0, new ones run on 1.1.0.
    let running = slow(400);
    until_in_flight(&h, "spin", 1).await;
    assert_eq!(instances(&h), 1, "the pool counts the running instance");
    expect(
        deploy(&h, "spin", &wasm("hello"), "version=1.1.0").await,
        201,
    );
    assert_eq!(get(&h.url("/spin")).await.body, "hello from atoll: /spin\n");
    let r = running.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "slept 400"));
    expect(
        api(
            &h,
            "POST",
            "/v1/components/spin/rollback?to=1.0.0",
            Bytes::new(),
        )
        .await,
        200,
    );
    assert_eq!(get(&h.url("/spin")).await.body, "ok");

    // A remove stops routing at once and answers once the running request ended.
    let sent = Instant::now();
    let running = slow(600);
    until_in_flight(&h, "spin", 1).await;
    let removing = {
        let (addr, dir) = (h.host.admin_addr(), h.dir.path().to_path_buf());
        tokio::spawn(async move {
            let r = admin(addr, &dir, "DELETE", "/v1/components/spin", Bytes::new()).await;
            (r.unwrap(), Instant::now())
        })
    };
    let removed_msg =
        "atoll: component `spin` is removed; `atoll deploy` or `atoll rollback` brings it back\n";
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = get(&h.url("/spin")).await;
        if r.status == 503 {
            assert_eq!(r.body, removed_msg);
            break;
        }
        assert_eq!(r.body, "ok");
        assert!(Instant::now() < deadline, "the remove did not stop routing");
    }
    assert!(
        !removing.is_finished(),
        "the remove waits for the running request"
    );
    let (r, removed_at) = removing.await.unwrap();
    let rep = report(&expect(r, 200));
    // The slow request, and perhaps one of the probes above (sent one at a
    // time) that started on 1.0.0 just before the swap.
    assert!(matches!(rep.drained, Some(1 | 2)), "{rep:?}");
    assert!(
        removed_at - sent >= Duration::from_millis(600),
        "the remove answered before the 600 ms request could have ended"
    );
    let r = running.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "slept 600"));

    let c = component(&h, "spin").await;
    assert!(c.active.is_none() && c.canary.is_none());
    assert_eq!(c.events.last().unwrap().kind, "remove");
    let r = get(&h.url("/spin")).await;
    assert_eq!((r.status, r.body.as_str()), (503, removed_msg));
    refused(
        api(&h, "DELETE", "/v1/components/spin", Bytes::new()).await,
        409,
        "`spin` is already removed",
    );
    refused(
        deploy(&h, "spin", &wasm("spin"), "version=1.2.0&canary=10").await,
        409,
        "no active version for a canary",
    );
    expect(
        deploy(&h, "spin", &wasm("spin"), "version=1.2.0").await,
        201,
    );
    assert_eq!(get(&h.url("/spin")).await.body, "ok");

    // The counter keeps counting across versions, a remove and a rollback.
    let incr = || async { get(&h.url("/kv/incr/visits")).await };
    assert_eq!(incr().await.body, "1");
    assert_eq!(incr().await.body, "2");
    let counter = wasm("kv-counter");
    let r = expect(deploy(&h, "counter", &counter, "version=2.0.0").await, 201);
    assert!(
        !report(&r).unchanged,
        "the same bytes under a new version is a deploy"
    );
    assert_eq!(incr().await.body, "3");
    expect(
        api(&h, "DELETE", "/v1/components/counter", Bytes::new()).await,
        200,
    );
    assert_eq!(incr().await.status, 503);
    expect(deploy(&h, "counter", &counter, "version=3.0.0").await, 201);
    assert_eq!(incr().await.body, "4");
    expect(
        api(&h, "DELETE", "/v1/components/counter", Bytes::new()).await,
        200,
    );
    // A rollback without a version brings back the newest kept one.
    let r = expect(
        api(&h, "POST", "/v1/components/counter/rollback", Bytes::new()).await,
        200,
    );
    assert_eq!(report(&r).version.as_deref(), Some("3.0.0"));
    assert_eq!(incr().await.body, "5");
    h.stop().await;
}

/// VmRSS of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// Memory mappings of this process.
fn maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// Component instances alive in the host's instance pools.
fn instances(h: &TestHost) -> u64 {
    let view: RegistryView = h.host.registry().view();
    view.instances
}

/// 200 swaps with traffic between leave no instance behind and do not
/// grow memory by much (the figures are printed for the record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_swaps_leak_nothing() {
    let _serial = SERIAL.lock().await;
    let h = start(SWAP).await;
    let (v1, v2) = (wasm("swap-v1"), wasm("swap-v2"));
    let swap = |i: u32| {
        let (bytes, name) = match i % 2 {
            1 => (&v2, "v2"),
            _ => (&v1, "v1"),
        };
        let h = &h;
        async move {
            expect(
                deploy(h, "swap", bytes, &format!("version=1.{i}.0")).await,
                201,
            );
            for _ in 0..2 {
                assert_eq!(served_by(&get(&h.url("/swap")).await), name);
            }
        }
    };
    // Warm up: both binaries compiled and cached, connections and buffers made.
    for i in 1..=10 {
        swap(i).await;
    }
    let (rss_before, maps_before, instances_before) = (rss(), maps(), instances(&h));
    let started = Instant::now();
    let (mut rss_mid, mut maps_mid) = (0, 0);
    for i in 11..=210 {
        swap(i).await;
        if i == 110 {
            (rss_mid, maps_mid) = (rss(), maps());
        }
    }
    let (rss_after, maps_after, instances_after) = (rss(), maps(), instances(&h));
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "200 swaps in {:.1?}: RSS {:.1} MiB before, {:.1} MiB after 100, {:.1} MiB after 200 ({:+.1} MiB); memory mappings {maps_before} before, {maps_mid} after 100, {maps_after} after 200; instances {instances_before} before, {instances_after} after",
        started.elapsed(),
        mib(rss_before),
        mib(rss_mid),
        mib(rss_after),
        mib(rss_after) - mib(rss_before),
    );
    assert_eq!(instances_after, instances_before);
    // Each version is a new module, which does not reuse the instance
    // slots its predecessors left warm, so the first ~100 versions spread
    // over the pool's slots (116 here), each adding memory mappings; after
    // that the count stays flat. A version kept alive by mistake would add
    // at least one mapping (its code) per swap.
    assert!(
        maps_after < maps_mid + 20,
        "memory mappings: {maps_mid} after 100 swaps, {maps_after} after 200"
    );
    // What is kept on disk is bounded too.
    let c = component(&h, "swap").await;
    assert_eq!((c.events.len(), c.kept.len()), (50, 5));
    let blobs = std::fs::read_dir(h.dir.path().join("registry/components")).unwrap();
    assert_eq!(blobs.count(), 2);
    assert!(
        rss_after < rss_before + (64 << 20),
        "RSS grew by {:.1} MiB over 200 swaps",
        mib(rss_after) - mib(rss_before)
    );
    h.stop().await;
}

/// A rollback without a version goes to the newest kept version before the
/// active one, also when an older version has the active one's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_goes_to_the_version_before_the_active_one() {
    let _serial = SERIAL.lock().await;
    let h = start(SWAP).await;
    expect(
        deploy(&h, "swap", &wasm("swap-v2"), "version=1.1.0").await,
        201,
    );
    // v1's bytes again, as a new release: kept are 1.0.0 (v1), 1.1.0 (v2), 1.2.0 (v1).
    expect(
        deploy(&h, "swap", &wasm("swap-v1"), "version=1.2.0").await,
        201,
    );
    let r = api(&h, "POST", "/v1/components/swap/rollback", Bytes::new()).await;
    assert_eq!(
        (r.status, report(&expect(r, 200)).version.as_deref()),
        (200, Some("1.1.0"))
    );
    assert_eq!(served_by(&get(&h.url("/swap")).await), "v2");
    h.stop().await;
}

const TWO: &str = r#"
[components.a]
source = "{swap-v1}"
version = "1.0.0"
routes = ["/a"]
health = "/healthz"

[components.b]
source = "{swap-v2}"
version = "1.0.0"
routes = ["/b"]
"#;

/// Deploys of two components at once (each has its own lock) keep both
/// binaries: the registry can restart from what it says is active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deploys_of_two_components_keep_both_binaries() {
    let _serial = SERIAL.lock().await;
    let h = start(TWO).await;
    let (v1, v2) = (wasm("swap-v1"), wasm("swap-v2"));
    // `a` gets a binary this host never compiled (so its deploy takes a
    // while); meanwhile `b` is deployed again and again.
    let hello = wasm("hello");
    let slow = deploy(&h, "a", &hello, "version=2.0.0");
    let others = async {
        let mut i = 0;
        let mut done = 0;
        loop {
            i += 1;
            let bytes = if i % 2 == 1 { &v1 } else { &v2 };
            expect(
                deploy(&h, "b", bytes, &format!("version=1.{i}.0")).await,
                201,
            );
            done += 1;
            if done >= 3 && component(&h, "a").await.active.unwrap().version == "2.0.0" {
                return done;
            }
        }
    };
    let (r, done) = tokio::join!(slow, others);
    let digest = report(&expect(r, 201)).digest.unwrap();
    println!("{done} deploys of `b` during and after the deploy of `a`");
    let blob = h
        .dir
        .path()
        .join(format!("registry/components/{digest}.wasm"));
    assert!(
        blob.exists(),
        "the binary of a's active version was deleted by b's deploy"
    );
    let h = restart(h, TWO).await;
    assert_eq!(get(&h.url("/a")).await.body, "hello from atoll: /a\n");
    h.stop().await;
}

const BUSY: &str = r#"
[components.spin]
source = "{spin}"
version = "1.0.0"
routes = ["/spin"]
health = "/healthz"

[components.spin.limits]
max_concurrency = 1
"#;

/// A new version's health check is about the new version: it passes while
/// the running version uses every instance slot the component has (the
/// moment a fix is most needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_passes_while_the_running_version_is_at_its_limit() {
    let _serial = SERIAL.lock().await;
    let h = start(BUSY).await;
    // The host checks the running version's health when it starts (and every
    // 10 s); let that check end first, so the request below gets the slot.
    let deadline = Instant::now() + Duration::from_secs(5);
    while component(&h, "spin")
        .await
        .health
        .unwrap()
        .checked_at
        .is_none()
    {
        assert!(Instant::now() < deadline, "no health check at start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    until_in_flight(&h, "spin", 0).await;
    let url = h.url("/spin?sleep=800");
    let running = tokio::spawn(async move { get(&url).await });
    until_in_flight(&h, "spin", 1).await;
    let r = deploy(&h, "spin", &wasm("hello"), "version=1.1.0").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let answered = running.await.unwrap();
    assert_eq!(
        (answered.status, answered.body.as_str()),
        (200, "slept 800")
    );
    assert_eq!(get(&h.url("/spin")).await.body, "hello from atoll: /spin\n");
    h.stop().await;
}
