//! The status page (`GET /status` on the admin listener) rendered by headless
//! Chromium: every number it shows that names a metric equals that metric in
//! `/metrics` read at the same moment (no traffic in between), the latency
//! percentiles equal the estimate from the histogram's buckets, a failed poll
//! shows the error banner, and a screenshot is a 1280x900 PNG.
//!
//! Chromium is Debian's `chromium` package, which `.ci/setup` installs; the
//! test fails (it does not skip) when it is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use atoll::bus::{Origin, Outgoing, SubscriptionInfo};
use atoll_tests::{TestHost, get};

const CHROMIUM: &str = "/usr/bin/chromium";

/// How long one Chromium run may take before the test gives up on it.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(120);

const APP: &str = r#"
[topics.jobs]

[components.hello]
source = "{hello}"
version = "1.0.0"
routes = ["/hello"]

[components.booking]
source = "{booking}"
version = "1.0.0"
routes = ["/greet", "/fail"]

[components.booking.calls.pricing]
retries = 0
breaker = { window = 4, min_calls = 4, failure_rate = 1.0, open_for = "1h", half_open_calls = 1 }

[components.pricing]
source = "{pricing}"
version = "1.2.0"

[components.sink]
source = "{bus-sink}"
version = "0.3.0"
routes = ["/sink/..."]
subscriptions = [{ topic = "jobs", max_deliver = 3, backoff = "1h", max_backoff = "1h" }]

[upstreams.api]
backends = [{ component = "hello" }]

[routes."/api/..."]
upstream = "api"
"#;

/// A payload the page and its data must never show.
const SECRET: &str = "payload-that-must-not-show";

/// A sample's identity: family name and labels (order does not matter).
type Key = (String, BTreeMap<String, String>);

/// Parses the Prometheus text exposition into samples.
fn parse_metrics(text: &str) -> BTreeMap<Key, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                (name.to_string(), parse_labels(rest))
            }
        };
        assert!(
            out.insert((name, labels), value).is_none(),
            "duplicate {line}"
        );
    }
    out
}

/// `a="x",b="y\"z"` into a map.
fn parse_labels(mut rest: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").expect("label=\"value\"");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("closing quote") {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect("escape").1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

async fn scrape(h: &TestHost) -> BTreeMap<Key, f64> {
    let r = get(&format!("http://{}/metrics", h.host.admin_addr())).await;
    assert_eq!(r.status, 200, "{}", r.body);
    parse_metrics(&r.body)
}

fn key(name: &str, labels: &[(&str, &str)]) -> Key {
    (
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// One element of the rendered DOM: its attributes and the text right
/// after its start tag.
#[derive(Debug)]
struct Element {
    tag: String,
    attrs: BTreeMap<String, String>,
    text: String,
}

impl Element {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).map(String::as_str)
    }
}

fn decode(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// The start tags of a serialized DOM (Chromium's `--dump-dom`: attribute
/// values in double quotes, entities for `&`, `"`, `<`, `>`), skipping the
/// contents of `<script>` and `<style>`.
fn elements(html: &str) -> Vec<Element> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        rest = &rest[start + 1..];
        if !rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue;
        }
        let name_end = rest
            .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .expect("tag name");
        let tag = rest[..name_end].to_ascii_lowercase();
        rest = &rest[name_end..];
        let mut attrs = BTreeMap::new();
        loop {
            rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
            if let Some(after) = rest.strip_prefix('>') {
                rest = after;
                break;
            }
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '=' || c == '>')
                .expect("attribute name");
            let name = rest[..end].to_ascii_lowercase();
            rest = &rest[end..];
            let value = match rest.strip_prefix("=\"") {
                Some(after) => {
                    let close = after.find('"').expect("closing quote");
                    rest = &after[close + 1..];
                    decode(&after[..close])
                }
                None => String::new(),
            };
            attrs.insert(name, value);
        }
        let text = decode(&rest[..rest.find('<').unwrap_or(rest.len())]);
        if tag == "script" || tag == "style" {
            let close = format!("</{tag}>");
            rest = &rest[rest.find(&close).expect("closing tag")..];
        }
        out.push(Element { tag, attrs, text });
    }
    out
}

/// Fails with what to do when Chromium is not installed.
fn chromium() -> &'static str {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: the status page test renders the page in headless Chromium \
         (Debian's `chromium` package); run .ci/setup to install it"
    );
    CHROMIUM
}

/// Runs headless Chromium on `url` with a fresh profile and `extra` flags;
/// returns its stdout.
async fn run_chromium(profile: &Path, url: &str, extra: &[String]) -> String {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg("--virtual-time-budget=5000")
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("starting chromium");
        let until = Instant::now() + CHROMIUM_TIMEOUT;
        while child.try_wait().expect("waiting for chromium").is_none() {
            if Instant::now() > until {
                let _ = child.kill();
                let out = child.wait_with_output().expect("chromium output");
                panic!(
                    "{what} did not finish within {CHROMIUM_TIMEOUT:?}; stderr:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("chromium output");
        assert!(
            out.status.success(),
            "{what} failed ({}); stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("chromium's DOM is UTF-8")
    })
    .await
    .expect("the chromium task")
}

/// The `q` quantile of a histogram family as Prometheus's
/// `histogram_quantile` estimates it, from the `_bucket` samples of `labels`.
fn histogram_quantile(
    metrics: &BTreeMap<Key, f64>,
    family: &str,
    labels: &BTreeMap<String, String>,
    q: f64,
) -> Option<f64> {
    let bucket = format!("{family}_bucket");
    let mut buckets: Vec<(f64, f64)> = metrics
        .iter()
        .filter(|((name, l), _)| {
            name == &bucket
                && l.len() == labels.len() + 1
                && labels.iter().all(|(k, v)| l.get(k) == Some(v))
        })
        .map(|((_, l), count)| {
            let le = match l["le"].as_str() {
                "+Inf" => f64::INFINITY,
                le => le.parse().unwrap(),
            };
            (le, *count)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 2, "no buckets for {family}{labels:?}");
    let total = buckets.last().unwrap().1;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let i = buckets.iter().position(|(_, c)| *c >= rank).unwrap();
    if buckets[i].0.is_infinite() {
        return Some(buckets[buckets.len() - 2].0);
    }
    let (lower, below) = if i == 0 { (0.0, 0.0) } else { buckets[i - 1] };
    let (upper, count) = buckets[i];
    Some(lower + (upper - lower) * (rank - below) / (count - below))
}

fn subscription(h: &TestHost, id: &str) -> SubscriptionInfo {
    h.host
        .bus()
        .subscription(id)
        .unwrap_or_else(|| panic!("no subscription {id}"))
}

/// Waits until the sink has handled what it was sent: `dead` dead letters,
/// `retrying` messages waiting out their hour of backoff, `acked` acked.
async fn settled(h: &TestHost, dead: u64, retrying: u64, acked: u64) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let s = subscription(h, "jobs/sink");
        if s.dead_letters == dead && s.retrying == retrying && s.acked == acked && s.in_flight == 0
        {
            return;
        }
        assert!(Instant::now() < until, "the sink did not settle: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn publish(h: &TestHost, behavior: Option<&str>) {
    let message = Outgoing {
        topic: "jobs".into(),
        payload: SECRET.as_bytes().to_vec(),
        headers: behavior
            .map(|b| ("behavior".to_string(), b.to_string()))
            .into_iter()
            .collect(),
        ..Default::default()
    };
    h.host
        .bus()
        .publish(Origin::Operator, vec![message])
        .await
        .expect("publish");
}

/// The traffic whose numbers the page must show.
async fn traffic(h: &TestHost) {
    for _ in 0..5 {
        assert_eq!(get(&h.url("/hello")).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(get(&h.url("/api/x")).await.status, 200);
    }
    for name in ["a", "b", "c"] {
        let r = get(&h.url(&format!("/greet?name={name}"))).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // Four failures in a window of four open the circuit for an hour ...
    for _ in 0..4 {
        assert_eq!(get(&h.url("/fail?code=1")).await.status, 502);
    }
    // ... and the next call is refused without entering pricing.
    let r = get(&h.url("/greet?name=d")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    // Two dead letters, three messages waiting an hour for their retry, one acked.
    for _ in 0..2 {
        publish(h, Some("reject")).await;
    }
    for _ in 0..3 {
        publish(h, Some("always-retry")).await;
    }
    publish(h, None).await;
    settled(h, 2, 3, 1).await;
}

/// The page's labels of a metric element: its `data-*` attributes but the
/// value, the family and the quantile.
fn labels_of(e: &Element) -> BTreeMap<String, String> {
    e.attrs
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("data-")?.to_string(), v.clone())))
        .filter(|(k, _)| !["metric", "value", "quantile", "field"].contains(&k.as_str()))
        .collect()
}

/// Checks every metric the page shows against `metrics`; returns what it
/// showed, by sample.
fn check_page(dom: &[Element], metrics: &BTreeMap<Key, f64>) -> BTreeMap<Key, (f64, String)> {
    let mut shown = BTreeMap::new();
    for e in dom.iter().filter(|e| e.attrs.contains_key("data-metric")) {
        let family = e.attr("data-metric").unwrap();
        let labels = labels_of(e);
        let value = e.attr("data-value").unwrap();
        if let Some(q) = e.attr("data-quantile") {
            let q: f64 = q.parse().unwrap();
            let want = histogram_quantile(metrics, family, &labels, q);
            match want {
                None => assert_eq!((value, e.text.as_str()), ("", "\u{2013}"), "{e:?}"),
                Some(want) => {
                    let got: f64 = value.parse().unwrap_or_else(|_| panic!("{e:?}"));
                    assert!(
                        (got - want).abs() <= want * 1e-9,
                        "{family} q{q} {labels:?}: page {got}, metrics {want}"
                    );
                    assert!(
                        e.text.ends_with(" \u{b5}s")
                            || e.text.ends_with(" ms")
                            || e.text.ends_with(" s"),
                        "{e:?}"
                    );
                }
            }
            continue;
        }
        let sample = (family.to_string(), labels.clone());
        let want = *metrics
            .get(&sample)
            .unwrap_or_else(|| panic!("the page shows {sample:?}, which /metrics lacks: {e:?}"));
        let got: f64 = value.parse().unwrap_or_else(|_| panic!("{e:?}"));
        assert_eq!(got, want, "{family} {labels:?}: page {got}, metrics {want}");
        // What is written is that value.
        let text = match family {
            "atoll_circuit_state" => labels["state"].clone(),
            "atoll_upstream_available" | "atoll_upstream_healthy" => {
                if want == 1.0 { "yes" } else { "no" }.to_string()
            }
            "atoll_traffic_share_percent" => format!("{want} %"),
            _ => format!("{want}"),
        };
        assert_eq!(e.text, text, "{e:?}");
        shown.insert(sample, (got, e.text.clone()));
    }
    shown
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_what_metrics_says_in_headless_chromium() {
    chromium();
    let h = TestHost::start(APP).await;
    let admin = h.host.admin_addr();
    traffic(&h).await;

    // Both open, no token; a page that loads nothing from elsewhere.
    let page = get(&format!("http://{admin}/status")).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none';"), "{csp}");
    let data = get(&format!("http://{admin}/status.json")).await;
    assert_eq!(data.status, 200, "{}", data.body);
    assert_eq!(data.headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_str(&data.body).unwrap();
    assert_eq!(json["rate_window_secs"], 10);
    assert!(!data.body.contains(SECRET) && !page.body.contains(SECRET));

    let profile = tempfile::tempdir().unwrap();
    let before = scrape(&h).await;
    let html = run_chromium(
        &profile.path().join("dom"),
        &format!("http://{admin}/status"),
        &["--dump-dom".to_string()],
    )
    .await;
    let after = scrape(&h).await;
    // No traffic in between: the page and both scrapes saw one state.
    assert_eq!(before, after, "the metrics moved while the page rendered");
    let dom = elements(&html);
    let shown = check_page(&dom, &after);

    // Known amounts, so that page and metrics cannot agree on nothing.
    fn version<'a>(c: &'a str, v: &'a str) -> [(&'static str, &'a str); 3] {
        [("component", c), ("version", v), ("role", "active")]
    }
    let at = |name: &str, labels: &[(&str, &str)]| {
        shown
            .get(&key(name, labels))
            .unwrap_or_else(|| panic!("the page does not show {name}{labels:?}"))
            .0
    };
    let hello = version("hello", "1.0.0");
    let pricing = version("pricing", "1.2.0");
    let booking = version("booking", "1.0.0");
    let sink = version("sink", "0.3.0");
    assert_eq!(at("atoll_invocations_total", &hello), 7.0);
    assert_eq!(at("atoll_invocation_errors_total", &hello), 0.0);
    assert_eq!(at("atoll_invocations_total", &booking), 8.0);
    assert_eq!(at("atoll_invocations_total", &pricing), 7.0);
    assert_eq!(at("atoll_invocation_errors_total", &pricing), 4.0);
    assert_eq!(at("atoll_in_flight", &pricing), 0.0);
    assert_eq!(at("atoll_invocations_total", &sink), 6.0);
    assert_eq!(at("atoll_traffic_share_percent", &sink), 100.0);
    let edge = [("caller", "booking"), ("callee", "pricing")];
    assert_eq!(
        at(
            "atoll_circuit_state",
            &[edge[0], edge[1], ("state", "open")]
        ),
        1.0
    );
    assert_eq!(at("atoll_calls_total", &edge), 8.0);
    assert_eq!(at("atoll_call_circuit_open_total", &edge), 1.0);
    let jobs = [("topic", "jobs"), ("group", "sink")];
    assert_eq!(at("atoll_bus_depth", &jobs), 3.0);
    assert_eq!(at("atoll_bus_retrying", &jobs), 3.0);
    assert_eq!(at("atoll_bus_dead_letters", &jobs), 2.0);
    assert_eq!(at("atoll_bus_acked_total", &jobs), 1.0);
    let backend = [("upstream", "api"), ("backend", "component:hello")];
    assert_eq!(at("atoll_upstream_available", &backend), 1.0);
    assert_eq!(at("atoll_upstream_healthy", &backend), 1.0);
    assert_eq!(at("atoll_upstream_requests_total", &backend), 2.0);

    // Every sample of these families is on the page, none left out.
    for family in [
        "atoll_invocations_total",
        "atoll_invocation_errors_total",
        "atoll_in_flight",
        "atoll_calls_total",
        "atoll_bus_depth",
        "atoll_bus_in_flight",
        "atoll_bus_dead_letters",
        "atoll_upstream_available",
    ] {
        for (sample, _) in after.iter().filter(|((name, _), _)| name == family) {
            assert!(shown.contains_key(sample), "the page lacks {sample:?}");
        }
    }
    // Both percentiles of every version, with values once it has run.
    let quantiles: BTreeSet<_> = dom
        .iter()
        .filter(|e| !e.attr("data-value").unwrap_or_default().is_empty())
        .filter_map(|e| {
            let q = e.attr("data-quantile")?;
            Some(format!("{} {q}", labels_of(e)["component"]))
        })
        .collect();
    for c in ["booking", "hello", "pricing", "sink"] {
        assert!(quantiles.contains(&format!("{c} 0.5")), "{quantiles:?}");
        assert!(quantiles.contains(&format!("{c} 0.99")), "{quantiles:?}");
    }
    // Rates, routes, the time of the data; no error banner.
    let by_id = |id: &str| {
        dom.iter()
            .find(|e| e.attr("id") == Some(id))
            .unwrap_or_else(|| panic!("no #{id}"))
    };
    let rates: Vec<f64> = dom
        .iter()
        .filter(|e| e.attr("data-field") == Some("requests_per_sec") && e.tag == "td")
        .map(|e| e.text.parse().unwrap_or_else(|_| panic!("{e:?}")))
        .collect();
    assert_eq!(rates.len(), 4, "one rate per version");
    let routes: BTreeSet<_> = dom.iter().filter_map(|e| e.attr("data-route")).collect();
    assert_eq!(
        routes,
        BTreeSet::from(["/hello", "/greet", "/fail", "/sink/...", "/api/..."])
    );
    assert_ne!(by_id("updated").text, "never");
    assert!(by_id("updated").attr("datetime").is_some());
    assert!(
        by_id("error").attrs.contains_key("hidden"),
        "{:?}",
        by_id("error")
    );
    assert_eq!(by_id("ready").text, "ready");
    assert!(!html.contains(SECRET));

    // A screenshot of it: a PNG of the window's size.
    let png_path = profile.path().join("status.png");
    run_chromium(
        &profile.path().join("shot"),
        &format!("http://{admin}/status"),
        &[
            format!("--screenshot={}", png_path.display()),
            "--window-size=1280,900".to_string(),
        ],
    )
    .await;
    check_png(&png_path, 1280, 900);
    h.stop().await;
}

/// The page opened from a file cannot fetch `status.json`: the banner says
/// the poll failed, and nothing pretends to be data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_poll_shows_the_error_banner() {
    chromium();
    let h = TestHost::start(
        r#"
        [components.hello]
        source = "{hello}"
        routes = ["/hello"]
        "#,
    )
    .await;
    let page = get(&format!("http://{}/status", h.host.admin_addr())).await;
    assert_eq!(page.status, 200);
    h.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("status.html");
    std::fs::write(&file, &page.body).unwrap();
    let html = run_chromium(
        &dir.path().join("profile"),
        &format!("file://{}", file.display()),
        &["--dump-dom".to_string()],
    )
    .await;
    let dom = elements(&html);
    let banner = dom
        .iter()
        .find(|e| e.attr("id") == Some("error"))
        .expect("the banner");
    assert!(!banner.attrs.contains_key("hidden"), "{banner:?}");
    assert!(
        banner.text.starts_with("Polling status.json failed: ")
            && banner
                .text
                .ends_with("; no data yet. Retrying every second."),
        "{banner:?}"
    );
    let updated = dom
        .iter()
        .find(|e| e.attr("id") == Some("updated"))
        .unwrap();
    assert_eq!(updated.text, "never");
    assert!(
        !dom.iter()
            .any(|e| e.attrs.contains_key("data-metric")
                && !e.attr("data-value").unwrap().is_empty()),
        "a number is shown without data"
    );
}

/// A PNG file of `width` x `height` with more in it than a blank page.
fn check_png(path: &Path, width: u32, height: u32) {
    let bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("chromium wrote no screenshot at {}: {e}", path.display()));
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    // The first chunk is IHDR: length 13, type, width, height (big-endian).
    assert_eq!(&bytes[8..16], b"\0\0\0\x0dIHDR");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!((be(16), be(20)), (width, height));
    assert!(
        bytes.len() > 20_000,
        "a {}-byte screenshot is too small for a page of tables",
        bytes.len()
    );
}
