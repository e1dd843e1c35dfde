//! Log aggregation: what guests write to stdout and stderr and log through
//! wasi:logging, and the host's own warnings, reach `GET /v1/logs` and
//! `atoll logs --app` with their component, version, source, level and the
//! trace id of the request that produced them.
//!
//! The hub is per process: the in-process hosts of this file share it, so
//! each test uses component names of its own; the ring bound is tested on a
//! child host, whose hub no other test touches.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use atoll::telemetry::logs::{CAPACITY, Level, LogRecord, MAX_MESSAGE, Source, TraceId};
use atoll_tests::{ChildHost, TestHost, admin, get, manifest_file, send_with};

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// `GET /v1/logs{query}` on an in-process host.
async fn logs(h: &TestHost, query: &str) -> Vec<LogRecord> {
    let r = admin(
        h.host.admin_addr(),
        h.dir.path(),
        "GET",
        &format!("/v1/logs{query}"),
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/json");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

/// The trace id of a response's traceparent.
fn trace_of(headers: &http::HeaderMap) -> String {
    let tp = headers["traceparent"].to_str().unwrap();
    tp.split('-').nth(1).unwrap().to_string()
}

/// (source, level, context, message) of each record.
fn summary(records: &[LogRecord]) -> Vec<(Source, Level, Option<&str>, &str)> {
    records
        .iter()
        .map(|r| (r.source, r.level, r.context.as_deref(), &*r.message))
        .collect()
}

/// What the logger guest writes for one request to `path`.
fn logger_records(path: &str) -> Vec<(Source, Level, Option<&'static str>, String)> {
    vec![
        (
            Source::Stdout,
            Level::Info,
            None,
            format!("stdout line {path}"),
        ),
        (Source::Stderr, Level::Info, None, "stderr line".into()),
        (
            Source::Log,
            Level::Info,
            Some("guest"),
            "logging record".into(),
        ),
        (
            Source::Log,
            Level::Warn,
            Some("guest"),
            "logging warning".into(),
        ),
    ]
}

fn owned(records: &[LogRecord]) -> Vec<(Source, Level, Option<&str>, String)> {
    summary(records)
        .into_iter()
        .map(|(s, l, c, m)| (s, l, c, m.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_records_carry_component_version_source_level_and_trace() {
    let h = TestHost::start(
        r#"
[components.traced]
source = "{logger}"
version = "1.4.2"
routes = ["/traced/..."]
"#,
    )
    .await;
    // A client's trace is honoured, and its records carry it.
    let r = send_with(
        "GET",
        &h.url("/traced/one"),
        &[("traceparent", TRACEPARENT)],
        "",
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "logged"));
    assert_eq!(trace_of(&r.headers), TRACE);
    let one = logs(&h, "?component=traced").await;
    assert_eq!(owned(&one), logger_records("/traced/one"));
    for record in &one {
        assert_eq!(&*record.component, "traced");
        assert_eq!(&*record.version, "1.4.2");
        assert_eq!(
            record.trace_id.map(|t| t.to_string()).as_deref(),
            Some(TRACE)
        );
        assert_eq!(record.truncated, 0);
    }
    assert!(one.windows(2).all(|w| w[0].seq < w[1].seq));

    // Without one, the records carry the trace the gateway made, the one
    // its answer names.
    let r = get(&h.url("/traced/two")).await;
    let two_trace = trace_of(&r.headers);
    assert_ne!(two_trace, TRACE);
    let two = logs(&h, &format!("?trace_id={two_trace}")).await;
    assert_eq!(owned(&two), logger_records("/traced/two"));
    assert!(two.iter().all(|r| &*r.component == "traced"));

    // Filters: source, level (and above), trace, limit (the newest).
    let stderr = logs(&h, "?component=traced&source=stderr").await;
    assert_eq!(stderr.len(), 2);
    assert!(stderr.iter().all(|r| &*r.message == "stderr line"));
    let warn = logs(&h, "?component=traced&level=warn").await;
    assert_eq!(
        warn.iter()
            .map(|r| r.trace_id.unwrap().to_string())
            .collect::<Vec<_>>(),
        [TRACE.to_string(), two_trace.clone()]
    );
    let traced = logs(&h, &format!("?trace_id={TRACE}&source=stdout")).await;
    assert_eq!(summary(&traced)[0].3, "stdout line /traced/one");
    assert_eq!(traced.len(), 1);
    let newest = logs(&h, "?component=traced&limit=1").await;
    assert_eq!(newest[0], two[3]);
    let nothing = logs(
        &h,
        "?component=traced&since=2000-01-01T00:00:00Z&level=critical",
    )
    .await;
    assert!(nothing.is_empty());

    // Bad parameters are refused with what to give; the token is needed.
    let r = admin(
        h.host.admin_addr(),
        h.dir.path(),
        "GET",
        "/v1/logs?level=loud",
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body.contains("level `loud` is not one of"), "{}", r.body);
    let r = get(&format!("http://{}/v1/logs", h.host.admin_addr())).await;
    assert_eq!(r.status, 401);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_one_component_are_not_returned_for_another() {
    let h = TestHost::start(
        r#"
[components.alpha]
source = "{logger}"
routes = ["/alpha/..."]

[components.beta]
source = "{logger}"
routes = ["/beta/..."]
"#,
    )
    .await;
    let a = get(&h.url("/alpha/x")).await;
    let b = get(&h.url("/beta/y")).await;
    assert_eq!((a.status, b.status), (200, 200));
    let alpha = logs(&h, "?component=alpha").await;
    let beta = logs(&h, "?component=beta").await;
    assert_eq!(owned(&alpha), logger_records("/alpha/x"));
    assert_eq!(owned(&beta), logger_records("/beta/y"));
    assert!(alpha.iter().all(|r| &*r.component == "alpha"));
    assert!(beta.iter().all(|r| &*r.component == "beta"));
    // The version defaults to 0.0.0 for a file source.
    assert!(alpha.iter().all(|r| &*r.version == "0.0.0"));
    // beta's trace under alpha's name matches nothing.
    let crossed = logs(
        &h,
        &format!("?component=alpha&trace_id={}", trace_of(&b.headers)),
    )
    .await;
    assert!(crossed.is_empty(), "{crossed:?}");
    let own = logs(
        &h,
        &format!("?component=beta&trace_id={}", trace_of(&b.headers)),
    )
    .await;
    assert_eq!(own, beta);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mebibyte_line_is_cut_and_counted() {
    let h = TestHost::start(
        r#"
[components.big]
source = "{logger}"
routes = ["/big"]
"#,
    )
    .await;
    const MIB: usize = 1 << 20;
    for _ in 0..3 {
        let r = get(&h.url(&format!("/big?big={MIB}"))).await;
        assert_eq!((r.status, r.body.as_str()), (200, "logged"));
    }
    let records = logs(&h, "?component=big&source=stdout").await;
    // One record per long line (not a record per piece), then the usual line.
    assert_eq!(records.len(), 6, "{:?}", summary(&records));
    for pair in records.chunks(2) {
        let (long, next) = (&pair[0], &pair[1]);
        assert_eq!(long.message.len(), MAX_MESSAGE);
        assert!(long.message.bytes().all(|b| b == b'x'));
        assert_eq!(long.truncated, (MIB - MAX_MESSAGE) as u64);
        assert_eq!((&*next.message, next.truncated), ("stdout line /big", 0));
    }
    // The answer's JSON carries the count.
    let r = admin(
        h.host.admin_addr(),
        h.dir.path(),
        "GET",
        "/v1/logs?component=big&limit=1&source=stdout&since=1h",
        "",
    )
    .await
    .unwrap();
    assert!(!r.body.contains("\"truncated\""), "{}", r.body);
    let r = admin(
        h.host.admin_addr(),
        h.dir.path(),
        "GET",
        "/v1/logs?component=big&limit=2&source=stdout",
        "",
    )
    .await
    .unwrap();
    assert!(
        r.body
            .contains(&format!("\"truncated\":{}", MIB - MAX_MESSAGE)),
        "{}",
        &r.body[..200.min(r.body.len())]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_over_the_admin_api_gets_later_records() {
    let h = TestHost::start(
        r#"
[components.followed]
source = "{logger}"
routes = ["/followed/..."]

[components.unfollowed]
source = "{logger}"
routes = ["/unfollowed"]
"#,
    )
    .await;
    assert_eq!(get(&h.url("/followed/before")).await.status, 200);
    let atoll_tests::NdjsonFollow { mut lines, reader } = atoll_tests::follow_ndjson(
        h.host.admin_addr(),
        h.dir.path(),
        "/v1/logs?follow=1&component=followed&source=stdout",
    )
    .await;
    let mut next = async || {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.recv())
            .await
            .expect("a followed record within 30 s")
            .unwrap();
        serde_json::from_str::<LogRecord>(&line).unwrap()
    };
    // The backlog first.
    assert_eq!(&*next().await.message, "stdout line /followed/before");
    // Then a record made after the follow started; the other component's
    // and the other sources' are not sent.
    assert_eq!(get(&h.url("/unfollowed")).await.status, 200);
    let after = get(&h.url("/followed/after")).await;
    let record = next().await;
    assert_eq!(&*record.message, "stdout line /followed/after");
    assert_eq!(&*record.component, "followed");
    assert_eq!(
        record.trace_id.map(|t| t.to_string()),
        Some(trace_of(&after.headers))
    );
    // The answer ends, cleanly, when the host stops.
    h.stop().await;
    let rest = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the follow answer ended with the host")
        .unwrap()
        .expect("the follow answer ended cleanly");
    assert_eq!(rest, "");
    assert!(lines.try_recv().is_err());
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_atoll-cli"))
}

/// Runs `atoll logs ARGS --manifest MANIFEST`: (exit code, stdout, stderr).
fn atoll_logs(manifest: &Path, args: &[&str]) -> (i32, String, String) {
    atoll_tests::atoll_logs(bin(), manifest, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atoll_logs_app_shows_and_follows_a_running_hosts_records() {
    let (dir, manifest) = manifest_file(
        r#"
[host]
data_dir = "data"

[components.logger]
source = "{logger}"
version = "2.1.0"
routes = ["/log/..."]

[components.other]
source = "{logger}"
routes = ["/other"]

[components.trap]
source = "{trap}"
routes = ["/trap"]
"#,
    );
    let host = ChildHost::spawn(bin(), &manifest, &["--log-format", "json"]).unwrap();
    let r = send_with(
        "GET",
        &host.url("/log/first"),
        &[("traceparent", TRACEPARENT)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(get(&host.url("/other")).await.status, 200);

    // The table.
    let (code, out, err) = atoll_logs(&manifest, &["--app", "--component", "logger"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "TIME",
            "LEVEL",
            "COMPONENT@VERSION",
            "SOURCE",
            "TRACE",
            "MESSAGE"
        ]
    );
    let rows: Vec<Vec<&str>> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    for (row, (level, source, message)) in rows.iter().zip([
        ("info", "stdout", "stdout line /log/first"),
        ("info", "stderr", "stderr line"),
        ("info", "log", "logging record"),
        ("warn", "log", "logging warning"),
    ]) {
        assert_eq!(row[1..5], [level, "logger@2.1.0", source, TRACE], "{row:?}");
        assert_eq!(row[5..].join(" "), message);
    }

    // JSON lines, filtered by level.
    let (code, out, err) = atoll_logs(
        &manifest,
        &[
            "--app",
            "--component",
            "logger",
            "--level",
            "warn",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let records: Vec<LogRecord> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        summary(&records),
        [(Source::Log, Level::Warn, Some("guest"), "logging warning")]
    );
    let (code, out, _) = atoll_logs(&manifest, &["--app", "--component", "nobody"]);
    assert_eq!((code, out.as_str()), (0, "no log records match\n"));

    // A host event: a refused admin request is a warning.
    let r = send_with(
        "GET",
        &format!("http://{}/v1/logs", host.admin),
        &[("authorization", "Bearer wrong")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    let (code, out, err) = atoll_logs(
        &manifest,
        &["--app", "--source", "host", "--level", "warn", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let host_events: Vec<LogRecord> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let refused = host_events
        .iter()
        .find(|r| {
            r.message
                .starts_with("admin request refused: wrong bearer token")
        })
        .unwrap_or_else(|| panic!("no refusal among {out}"));
    assert_eq!((refused.level, refused.source), (Level::Warn, Source::Host));
    assert_eq!(refused.context.as_deref(), Some("atoll::admin"));
    assert!(
        refused.message.contains(" peer=127.0.0.1:"),
        "{}",
        refused.message
    );

    // A host event during a request carries the request's trace id (the
    // trap's warning is logged by the host, with no trace field of its own).
    let r = send_with(
        "GET",
        &host.url("/trap?panic"),
        &[("traceparent", TRACEPARENT)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 500);
    let (code, out, err) = atoll_logs(
        &manifest,
        &["--app", "--source", "host", "--component", "trap", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let trapped: Vec<LogRecord> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!trapped.is_empty(), "no host event for the trap: {out}");
    for record in &trapped {
        assert_eq!(
            record.trace_id.map(|t| t.to_string()).as_deref(),
            Some(TRACE),
            "{record:?}"
        );
    }

    // The JSON log output carries component, version and trace id on guest lines.
    let stderr = host.stderr.lock().unwrap().clone();
    let line = stderr
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "stdout line /log/first")
        .unwrap_or_else(|| panic!("no JSON line of the guest's stdout:\n{}", stderr.join("\n")));
    assert_eq!(line["target"], "guest", "{line}");
    assert_eq!(line["fields"]["component"], "logger", "{line}");
    assert_eq!(line["fields"]["version"], "2.1.0", "{line}");
    assert_eq!(line["fields"]["trace_id"], TRACE, "{line}");
    assert_eq!(line["fields"]["stream"], "stdout", "{line}");

    // Flags of one mode are refused in the other, naming the flag.
    for (args, message) in [
        (
            &["--app", "--status", "404"][..],
            "--status applies to the call log, not to --app log records",
        ),
        (
            &["--app", "--route", "/x"][..],
            "--route applies to the call log",
        ),
        (
            &["--app", "--until", "1h"][..],
            "--until applies to the call log",
        ),
        (
            &["--level", "warn"][..],
            "--level applies to log records: add --app",
        ),
        (
            &["--source", "stdout"][..],
            "--source applies to log records",
        ),
        (&["--trace", TRACE][..], "--trace applies to log records"),
        (
            &["--app", "--level", "loud"][..],
            "--level: level `loud` is not one of trace, debug, info, warn, error, critical",
        ),
        (
            &["--app", "--source", "file"][..],
            "--source: source `file` is not one of stdout, stderr, log, host",
        ),
        (
            &["--app", "--trace", "abc"][..],
            "--trace: trace id `abc` is not 32 hex digits",
        ),
        (&["--app", "--limit", "0"][..], "--limit 0 is not valid"),
    ] {
        let (code, out, err) = atoll_logs(&manifest, args);
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(err.contains(message), "{args:?}: {err}");
    }

    // --follow: the backlog, then a line made after it started; the other
    // component's lines are not shown.
    let mut follower = Command::new(bin())
        .args([
            "logs",
            "--app",
            "--component",
            "logger",
            "--source",
            "stdout",
            "--follow",
            "--manifest",
        ])
        .arg(&manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = BufReader::new(follower.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("a line from atoll logs --app --follow within 30 s")
    };
    assert!(next().starts_with("TIME "));
    assert!(next().ends_with("stdout line /log/first"));
    get(&host.url("/other")).await;
    let live = get(&host.url("/log/live")).await;
    let live_trace = trace_of(&live.headers);
    let line = next();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells[1..],
        [
            "info",
            "logger@2.1.0",
            "stdout",
            live_trace.as_str(),
            "stdout",
            "line",
            "/log/live"
        ],
        "{line}"
    );
    follower.kill().unwrap();
    follower.wait().unwrap();
    host.kill9();
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_keeps_the_newest_records_only() {
    // A child host: its hub holds only this test's records.
    let (dir, manifest) = manifest_file(
        r#"
[host]
data_dir = "data"

[components.ring]
source = "{logger}"
routes = ["/ring/..."]
limits = { deadline = "120s" }
"#,
    );
    let host = ChildHost::spawn(bin(), &manifest, &[]).unwrap();
    // Exactly CAPACITY records from /ring/a (the logger adds 4 to its
    // lines), then K from /ring/b: the oldest K of /ring/a are gone.
    const K: usize = 10;
    let a = get(&host.url(&format!("/ring/a?lines={}", CAPACITY - 4))).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let b = get(&host.url(&format!("/ring/b?lines={}", K - 4))).await;
    assert_eq!(b.status, 200, "{}", b.body);

    let (code, out, err) = atoll_logs(&manifest, &["--app", "--limit", "10000", "--json"]);
    assert_eq!(code, 0, "{err}");
    let records: Vec<LogRecord> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), CAPACITY);
    assert!(records.iter().all(|r| &*r.component == "ring"));
    assert!(records.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert_eq!(&*records[0].message, format!("line {K} of /ring/a"));
    assert_eq!(
        &*records[CAPACITY - K - 5].message,
        format!("line {} of /ring/a", CAPACITY - 5)
    );
    assert_eq!(&*records[CAPACITY - K].message, "line 0 of /ring/b");
    assert_eq!(&*records[CAPACITY - 1].message, "logging warning");
    let b_trace = TraceId::from_hex(&trace_of(&b.headers));
    assert!(
        records[CAPACITY - K..]
            .iter()
            .all(|r| r.trace_id == b_trace)
    );
    // None of the first K lines of /ring/a is left.
    for i in 0..K {
        let gone = format!("line {i} of /ring/a");
        assert!(records.iter().all(|r| *r.message != *gone), "{gone}");
    }
    host.kill9();
    drop(dir);
}
