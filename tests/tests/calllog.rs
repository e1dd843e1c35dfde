//! The call log: the log table itself (filters, follow, retention, restarts,
//! a killed process), then end to end: one row per request through a real
//! gateway with no secrets in the data dir, the admin endpoint, and
//! `atoll logs` against a real `atoll up` child process.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use atoll::config::CallLogSpec;
use atoll::gateway::auth::{TokenRequest, issue_local};
use atoll::gateway::calllog::{CallLog, CallQuery, CallRecord, Followed, now_ms};
use atoll_tests::{ChildHost, TestHost, admin, get, manifest_file, send_with};

fn spec(max_age: Duration, max_size: u64) -> CallLogSpec {
    CallLogSpec {
        enabled: true,
        max_age,
        max_size,
    }
}

fn default_spec() -> CallLogSpec {
    CallLogSpec::default()
}

fn row(path: &str, status: u16, time_ms: u64) -> CallRecord {
    CallRecord {
        time_ms,
        client: "127.0.0.1".into(),
        method: "GET".into(),
        path: path.into(),
        status,
        latency_us: 1500,
        bytes_out: 12,
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        complete: true,
        ..CallRecord::default()
    }
}

fn all() -> CallQuery {
    CallQuery {
        limit: Some(100_000),
        ..CallQuery::default()
    }
}

fn paths(rows: &[CallRecord]) -> Vec<String> {
    rows.iter().map(|r| r.path.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_filter_and_return_the_newest_rows_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let log = CallLog::open(dir.path(), &default_spec()).unwrap();
    let t0 = 1_800_000_000_000;
    // 60 rows, one a second, recorded out of time order (rows are written
    // when responses end, not when requests arrive).
    let mut recorded = Vec::new();
    for i in (0..60u64).rev() {
        let mut r = row(
            &format!("/r/{i}"),
            [200, 404, 503][i as usize % 3],
            t0 + i * 1000,
        );
        r.component = (i % 2 == 0).then(|| "orders".to_string());
        r.version = r.component.as_ref().map(|_| "1.2.0".to_string());
        r.route = Some(if i % 2 == 0 { "/r/..." } else { "/other" }.to_string());
        r.subject = (i == 7).then(|| "alice".to_string());
        r.rejected = (i % 3 == 1).then(|| "not_found".to_string());
        r.backend = (i == 9).then(|| "http://127.0.0.1:9001".to_string());
        r.bytes_in = i;
        r.complete = i != 5;
        log.record(r.clone());
        recorded.push(r);
    }
    // Recorded just now, and every one of them is there.
    let rows = log.query(&all()).await.unwrap();
    assert_eq!(rows.len(), 60);
    recorded.sort_by_key(|r| r.time_ms);
    for (got, want) in rows.iter().zip(&recorded) {
        assert_eq!(
            CallRecord {
                seq: 0,
                ..got.clone()
            },
            *want
        );
    }
    let seqs: BTreeSet<u64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(seqs.len(), 60, "each row has its own seq");

    let query = |q: CallQuery| {
        let log = log.clone();
        async move { paths(&log.query(&q).await.unwrap()) }
    };
    let expect = |f: &dyn Fn(u64) -> bool| -> Vec<String> {
        (0..60)
            .filter(|i| f(*i))
            .map(|i| format!("/r/{i}"))
            .collect()
    };
    // The default limit is 100: all 60.
    assert_eq!(query(CallQuery::default()).await, expect(&|_| true));
    // limit: the newest N, oldest first.
    let q = CallQuery {
        limit: Some(3),
        ..CallQuery::default()
    };
    assert_eq!(query(q).await, ["/r/57", "/r/58", "/r/59"]);
    let q = CallQuery {
        limit: Some(0),
        ..CallQuery::default()
    };
    assert!(query(q).await.is_empty());
    let q = CallQuery {
        component: Some("orders".into()),
        ..all()
    };
    assert_eq!(query(q).await, expect(&|i| i % 2 == 0));
    let q = CallQuery {
        route: Some("/other".into()),
        ..all()
    };
    assert_eq!(query(q).await, expect(&|i| i % 2 == 1));
    let q = CallQuery {
        status: Some("5xx".into()),
        ..all()
    };
    assert_eq!(query(q).await, expect(&|i| i % 3 == 2));
    let q = CallQuery {
        status: Some("404,5xx".into()),
        ..all()
    };
    assert_eq!(query(q).await, expect(&|i| i % 3 != 0));
    let q = CallQuery {
        status: Some("200".into()),
        ..all()
    };
    assert_eq!(query(q).await, expect(&|i| i % 3 == 0));
    // since is inclusive, until exclusive.
    let q = CallQuery {
        since_ms: Some(t0 + 10_000),
        until_ms: Some(t0 + 20_000),
        ..all()
    };
    assert_eq!(query(q).await, expect(&|i| (10..20).contains(&i)));
    // Everything at once, with a limit.
    let q = CallQuery {
        component: Some("orders".into()),
        status: Some("2xx".into()),
        since_ms: Some(t0 + 6_000),
        limit: Some(2),
        ..CallQuery::default()
    };
    assert_eq!(query(q).await, ["/r/48", "/r/54"]);
    let q = CallQuery {
        status: Some("teapot".into()),
        ..all()
    };
    let e = log.query(&q).await.unwrap_err().to_string();
    assert!(e.contains("status `teapot` is neither"), "{e}");
    assert_eq!(log.dropped(), 0);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recorded_row_is_stored_or_counted_as_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let log = CallLog::open(dir.path(), &default_spec()).unwrap();
    // Two threads record as fast as they can: more than the channel holds,
    // so some rows may be dropped; none may vanish or be stored twice.
    const PER_THREAD: u64 = 100_000;
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    log.record(row(&format!("/t{t}/{i}"), 200, 1_800_000_000_000 + i));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let rows = log.query(&all()).await.unwrap();
    let distinct: BTreeSet<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(distinct.len(), rows.len(), "a row was stored twice");
    assert_eq!(
        rows.len() as u64 + log.dropped(),
        2 * PER_THREAD,
        "stored {} + dropped {}",
        rows.len(),
        log.dropped()
    );
    println!("stored {}, dropped {}", rows.len(), log.dropped());
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_yields_the_backlog_then_each_new_matching_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = CallLog::open(dir.path(), &default_spec()).unwrap();
    let mut raw = log.follow();
    let now = now_ms();
    for i in 0..5 {
        log.record(row(&format!("/old/{i}"), 200, now));
    }
    log.record(row("/old/failed", 500, now));
    // The unfiltered receiver sees rows as they are written, seq set.
    let first = raw.recv().await.unwrap();
    assert_eq!(first.path, "/old/0");

    // Rows keep coming while the follower starts: each must show up in
    // the backlog or the stream, never both, never neither.
    let (halfway, reached) = tokio::sync::oneshot::channel();
    let producer = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut halfway = Some(halfway);
            for i in 0..2000 {
                let status = if i % 2 == 0 { 200 } else { 500 };
                log.record(row(&format!("/live/{i}"), status, now_ms()));
                if i == 500 {
                    halfway.take().unwrap().send(()).unwrap();
                }
                if i % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    let q = CallQuery {
        status: Some("2xx".into()),
        limit: Some(10_000),
        ..CallQuery::default()
    };
    reached.await.unwrap();
    let (backlog, mut follower) = log.follow_query(&q).await.unwrap();
    producer.await.unwrap();
    log.record(row("/last", 200, now_ms()));
    let mut live = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), follower.next())
            .await
            .expect("the follower got /last within 30 s");
        match next {
            Some(Followed::Row(r)) => {
                let last = r.path == "/last";
                live.push((*r).clone());
                if last {
                    break;
                }
            }
            other => panic!("expected a row, got {other:?}"),
        }
    }
    assert!(
        live.windows(2).all(|w| w[0].seq < w[1].seq),
        "live rows in order"
    );
    assert!(live.iter().all(|r| r.status == 200));
    let mut seen: Vec<String> = paths(&backlog);
    seen.extend(paths(&live));
    let distinct: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(distinct.len(), seen.len(), "a row came twice");
    let mut expected: BTreeSet<String> = (0..5).map(|i| format!("/old/{i}")).collect();
    expected.extend((0..2000).step_by(2).map(|i| format!("/live/{i}")));
    expected.insert("/last".into());
    assert_eq!(distinct, expected);
    let old: Vec<String> = (0..5).map(|i| format!("/old/{i}")).collect();
    assert_eq!(paths(&backlog)[..5], old[..]);
    println!("backlog {} rows, live {} rows", backlog.len(), live.len());

    // Closing ends the follower.
    log.close().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(30), follower.next())
        .await
        .expect("the follower ended within 30 s");
    assert!(end.is_none(), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_rows_older_than_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let log = CallLog::open(dir.path(), &spec(Duration::from_secs(3600), 256 << 20)).unwrap();
    let now = now_ms();
    for i in 0..100 {
        log.record(row(&format!("/old/{i}"), 200, now - 7_200_000 + i));
    }
    for i in 0..50 {
        log.record(row(&format!("/new/{i}"), 200, now - 1_800_000 + i));
    }
    assert_eq!(log.query(&all()).await.unwrap().len(), 150);
    let before = log.stored_bytes();
    let done = log.retain().await.unwrap();
    assert_eq!((done.by_age, done.by_size), (100, 0));
    let rows = log.query(&all()).await.unwrap();
    assert_eq!(
        paths(&rows),
        (0..50).map(|i| format!("/new/{i}")).collect::<Vec<_>>()
    );
    // The rows are about the same size: a third of the bytes are left.
    let after = log.stored_bytes();
    assert!(
        after * 3 > before * 9 / 10 && after * 3 < before * 11 / 10,
        "{before} -> {after}"
    );
    // Nothing more to delete.
    assert_eq!(log.retain().await.unwrap().by_age, 0);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_rows_under_max_size() {
    let dir = tempfile::tempdir().unwrap();
    let max_size = 1 << 20;
    let log = CallLog::open(dir.path(), &spec(Duration::from_secs(86_400), max_size)).unwrap();
    let padding = "p".repeat(200);
    let now = now_ms();
    for i in 0..10_000u64 {
        log.record(row(&format!("/{i:05}/{padding}"), 200, now - 10_000 + i));
    }
    assert_eq!(log.query(&all()).await.unwrap().len(), 10_000);
    assert_eq!(log.dropped(), 0);
    assert!(log.stored_bytes() > 2 * max_size, "{}", log.stored_bytes());
    let done = log.retain().await.unwrap();
    assert_eq!(done.by_age, 0);
    assert!(done.by_size > 0);
    assert!(log.stored_bytes() <= max_size, "{}", log.stored_bytes());
    // What is left is the newest rows, none missing in between.
    let rows = log.query(&all()).await.unwrap();
    let kept = rows.len() as u64;
    assert_eq!(kept, 10_000 - done.by_size);
    let expected: Vec<String> = (10_000 - kept..10_000)
        .map(|i| format!("/{i:05}/{padding}"))
        .collect();
    assert_eq!(paths(&rows), expected);
    // Down to 90% of max_size, less at most one block (rows are stored and
    // deleted in blocks of at most 64, and the last block deleted may take
    // it just under): a margin of two blocks' worth of rows.
    let row_size = log.stored_bytes() / kept;
    assert!(
        log.stored_bytes() + 2 * 64 * row_size >= max_size * 9 / 10,
        "{} bytes left of {max_size}, rows of {row_size} bytes",
        log.stored_bytes()
    );
    assert!(
        log.stored_bytes() < max_size * 9 / 10 + 1,
        "deleted too little"
    );

    // The background task runs as soon as the writer sees the limit passed,
    // not only every minute.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = log.spawn_retention(stopped);
    tokio::task::yield_now().await;
    for i in 0..10_000u64 {
        log.record(row(&format!("/again/{i:05}/{padding}"), 200, now + i));
    }
    log.sync().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while log.stored_bytes() > max_size {
        assert!(
            Instant::now() < deadline,
            "still {} bytes after 30 s",
            log.stored_bytes()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = log.query(&all()).await.unwrap();
    assert!(rows.last().unwrap().path.starts_with("/again/09999/"));
    stop.send(true).unwrap();
    task.await.unwrap();
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = CallLog::open(dir.path(), &default_spec()).unwrap();
    let now = now_ms();
    for i in 0..100 {
        log.record(row(&format!("/r/{i}"), 200 + i as u16, now + i));
    }
    let before = log.query(&all()).await.unwrap();
    let bytes = log.stored_bytes();
    log.close().await.unwrap();
    // Closed: queries fail, rows are counted as dropped, closing again is fine.
    let e = log.query(&all()).await.unwrap_err().to_string();
    assert!(e.contains("the call log is closed"), "{e}");
    log.record(row("/late", 200, now));
    assert_eq!(log.dropped(), 1);
    log.close().await.unwrap();

    // The files are free again while the old handle still exists.
    let log = CallLog::open(dir.path(), &default_spec()).unwrap();
    assert_eq!(log.query(&all()).await.unwrap(), before);
    assert_eq!(log.stored_bytes(), bytes);
    log.record(row("/after", 200, now + 1000));
    let rows = log.query(&all()).await.unwrap();
    assert_eq!(rows.len(), 101);
    let newest = rows.last().unwrap();
    assert_eq!(newest.path, "/after");
    assert!(before.iter().all(|r| r.seq < newest.seq));
    log.close().await.unwrap();
}

const CHILD_DIR: &str = "ATOLL_TEST_CALLLOG_DIR";

/// Not a test on its own: `rows_survive_a_killed_process` runs it in a child
/// process, which records rows, syncs, says so, records more and waits to
/// be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by rows_survive_a_killed_process in a child process"]
async fn child_records_syncs_and_waits_to_be_killed() {
    let dir = std::env::var(CHILD_DIR).expect("run by rows_survive_a_killed_process");
    let log = CallLog::open(Path::new(&dir), &default_spec()).unwrap();
    let now = now_ms();
    for i in 0..500 {
        log.record(row(&format!("/synced/{i}"), 200, now + i));
    }
    log.sync().await.unwrap();
    println!("synced");
    for i in 0..100 {
        log.record(row(&format!("/unsynced/{i}"), 200, now + 1000 + i));
    }
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_survive_a_killed_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_records_syncs_and_waits_to_be_killed",
            "--nocapture",
        ])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if line == "synced" {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the child synced within 60 s");
    child.kill().unwrap();
    child.wait().unwrap();

    let log = CallLog::open(dir.path(), &default_spec()).unwrap();
    let rows = log.query(&all()).await.unwrap();
    let synced: Vec<String> = paths(&rows)
        .into_iter()
        .filter(|p| p.starts_with("/synced/"))
        .collect();
    assert_eq!(
        synced,
        (0..500).map(|i| format!("/synced/{i}")).collect::<Vec<_>>()
    );
    // Rows after the sync may or may not have reached the disk; none twice,
    // and the log goes on with fresh seqs.
    let distinct: BTreeSet<String> = paths(&rows).into_iter().collect();
    assert_eq!(distinct.len(), rows.len());
    println!("{} of 100 unsynced rows survived", rows.len() - 500);
    log.record(row("/after", 200, now_ms()));
    let newest = log.query(&all()).await.unwrap();
    let after = newest.iter().find(|r| r.path == "/after").unwrap();
    assert!(rows.iter().all(|r| r.seq < after.seq));
    log.close().await.unwrap();
}

// End to end.

const GATEWAY: &str = r#"
[components.hello]
source = "{hello}"
routes = ["/hello/...", "/private"]

[auth.dev]
local = true

[routes."/private"]
auth = "dev"
"#;

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// The trace id of a response's `traceparent`.
fn trace_of(headers: &http::HeaderMap) -> String {
    let tp = headers["traceparent"].to_str().unwrap();
    tp.split('-').nth(1).unwrap().to_string()
}

async fn calls(h: &TestHost, query: &str) -> (u16, serde_json::Value) {
    let r = admin(
        h.host.admin_addr(),
        h.dir.path(),
        "GET",
        &format!("/v1/calls{query}"),
        "",
    )
    .await
    .unwrap();
    (r.status, serde_json::from_str(&r.body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_one_row_with_no_secrets_in_the_data_dir() {
    let h = TestHost::start(GATEWAY).await;
    let started = now_ms();
    let token = issue_local(
        h.dir.path(),
        &TokenRequest::local("alice", Duration::from_secs(3600)),
    )
    .unwrap();
    let bogus = "Bearer not-a-jwt-SECRET-7f3a9c";
    let body_secret = "BODY-SECRET-4242";
    let mut traces = Vec::new();
    let mut expect = |r: atoll_tests::Reply, status: u16| {
        assert_eq!(r.status, status, "{}", r.body);
        traces.push(trace_of(&r.headers));
    };
    expect(get(&h.url("/hello/a")).await, 200);
    expect(get(&h.url("/hello/b?q=1")).await, 200);
    expect(get(&h.url("/nope")).await, 404);
    expect(get(&h.url("/nope/again")).await, 404);
    expect(get(&h.url("/private")).await, 401);
    let r = send_with("GET", &h.url("/private"), &[("authorization", bogus)], "").await;
    expect(r.unwrap(), 401);
    let auth = format!("Bearer {token}");
    let r = send_with("GET", &h.url("/private"), &[("authorization", &auth)], "").await;
    expect(r.unwrap(), 200);
    let r = send_with("POST", &h.url("/hello/echo"), &[], body_secret).await;
    expect(r.unwrap(), 200);
    // A client-chosen trace id is kept.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = send_with(
        "GET",
        &h.url("/hello/traced"),
        &[("traceparent", traceparent)],
        "",
    )
    .await;
    let r = r.unwrap();
    assert_eq!(trace_of(&r.headers), "4bf92f3577b34da6a3ce929d0e0e4736");
    expect(r, 200);
    const N: usize = 9;

    let (status, rows) = calls(&h, "?limit=1000").await;
    assert_eq!(status, 200, "{rows}");
    let rows: Vec<CallRecord> = serde_json::from_value(rows).unwrap();
    assert_eq!(rows.len(), N, "{rows:#?}");
    // Same order as sent (each request finished before the next began).
    let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let summary: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} {} {} route={} component={} rejected={}",
                r.method,
                r.path,
                r.status,
                dash(&r.route),
                dash(&r.component),
                dash(&r.rejected)
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "GET /hello/a 200 route=/hello/... component=hello rejected=-",
            "GET /hello/b 200 route=/hello/... component=hello rejected=-",
            "GET /nope 404 route=- component=- rejected=not_found",
            "GET /nope/again 404 route=- component=- rejected=not_found",
            "GET /private 401 route=/private component=- rejected=unauthorized",
            "GET /private 401 route=/private component=- rejected=unauthorized",
            "GET /private 200 route=/private component=hello rejected=-",
            "POST /hello/echo 200 route=/hello/... component=hello rejected=-",
            "GET /hello/traced 200 route=/hello/... component=hello rejected=-",
        ]
    );
    for (r, trace) in rows.iter().zip(&traces) {
        assert_eq!(&r.trace_id, trace, "{}", r.path);
        assert_eq!(r.client, "127.0.0.1");
        assert!(r.complete, "{} was sent completely: {r:?}", r.path);
        assert!(r.time_ms >= started && r.time_ms <= now_ms(), "{}", r.path);
        assert!(r.bytes_out > 0, "{}", r.path);
        assert_eq!(r.version.is_some(), r.component.is_some(), "{}", r.path);
        let subject = (r.path == "/private" && r.status == 200).then_some("alice");
        assert_eq!(r.subject.as_deref(), subject, "{}", r.path);
    }
    assert_eq!(
        rows[0].bytes_out,
        "hello from atoll: /hello/a\n".len() as u64
    );
    assert_eq!(rows[7].bytes_in, body_secret.len() as u64);
    assert_eq!(
        rows[7].bytes_out,
        ("echo: ".len() + body_secret.len()) as u64
    );

    // Filters through the admin API.
    let count = |v: serde_json::Value| v.as_array().unwrap().len();
    assert_eq!(count(calls(&h, "?status=4xx").await.1), 4);
    assert_eq!(count(calls(&h, "?status=401").await.1), 2);
    assert_eq!(count(calls(&h, "?component=hello").await.1), 5);
    assert_eq!(count(calls(&h, "?route=%2Fprivate").await.1), 3);
    assert_eq!(count(calls(&h, "?since=1h&limit=2").await.1), 2);
    assert_eq!(count(calls(&h, "?until=1h").await.1), 0);
    assert_eq!(count(calls(&h, "?until=2000-01-01T00:00:00Z").await.1), 0);
    let (status, e) = calls(&h, "?status=6xx").await;
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("`status`"), "{e}");

    // follow=1: the matching backlog as JSON lines, then new rows, and the
    // answer ends (cleanly) when the host stops.
    let atoll_tests::NdjsonFollow { mut lines, reader } = atoll_tests::follow_ndjson(
        h.host.admin_addr(),
        h.dir.path(),
        "/v1/calls?follow=1&status=404",
    )
    .await;
    let mut next_path = async || {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.recv())
            .await
            .expect("a followed row within 30 s")
            .unwrap();
        serde_json::from_str::<CallRecord>(&line).unwrap().path
    };
    assert_eq!(next_path().await, "/nope");
    assert_eq!(next_path().await, "/nope/again");
    assert_eq!(get(&h.url("/hello/not-a-404")).await.status, 200);
    assert_eq!(get(&h.url("/followed")).await.status, 404);
    assert_eq!(next_path().await, "/followed");

    // The host flushes the log when it stops; the rows are all there once.
    let data = h.stop().await;
    let rest = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the follow answer ended with the host")
        .unwrap()
        .expect("the follow answer ended cleanly");
    assert_eq!(rest, "");
    assert!(lines.try_recv().is_err());
    let log = CallLog::open(data.path(), &default_spec()).unwrap();
    let stored = log.query(&all()).await.unwrap();
    assert_eq!(stored[..N], rows[..]);
    assert_eq!(paths(&stored[N..]), ["/hello/not-a-404", "/followed"]);
    log.close().await.unwrap();
    // No token, header or body reached any file of the data dir.
    for secret in [bogus, "not-a-jwt-SECRET-7f3a9c", &token, body_secret] {
        let found = files_containing(data.path(), secret.as_bytes());
        assert!(found.is_empty(), "{secret} is in {found:?}");
    }
    // The check itself finds what is there.
    assert!(!files_containing(data.path(), b"/nope/again").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_call_log_writes_nothing_and_says_so() {
    let h = TestHost::start(&format!("{GATEWAY}\n[gateway.call_log]\nenabled = false\n")).await;
    assert_eq!(get(&h.url("/hello/a")).await.status, 200);
    let (status, body) = calls(&h, "").await;
    assert_eq!(status, 404);
    let e = body["error"].as_str().unwrap();
    assert!(e.contains("the call log is disabled"), "{e}");
    assert!(e.contains("[gateway.call_log]"), "{e}");
    let data = h.stop().await;
    assert!(!data.path().join("calls").exists());
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_atoll-cli"))
}

/// Runs `atoll logs ARGS --manifest MANIFEST`: (exit code, stdout, stderr).
fn logs(manifest: &Path, args: &[&str]) -> (i32, String, String) {
    atoll_tests::atoll_logs(bin(), manifest, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atoll_logs_filters_and_follows_a_running_host() {
    let (dir, manifest) = manifest_file(&format!("[host]\ndata_dir = \"data\"\n{GATEWAY}"));
    let host = ChildHost::spawn(bin(), &manifest, &[]).unwrap();
    for path in ["/hello/one", "/hello/two", "/nope"] {
        get(&host.url(path)).await;
    }

    let (code, out, err) = logs(&manifest, &["--status", "404"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "TIME",
            "CLIENT",
            "METHOD",
            "PATH",
            "STATUS",
            "SERVED-BY",
            "LATENCY",
            "BYTES",
            "SUBJECT",
            "TRACE",
            "REJECTED"
        ]
    );
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cells[1..6], ["127.0.0.1", "GET", "/nope", "404", "-"]);
    assert_eq!(cells[10], "not_found");

    let (code, out, err) = logs(&manifest, &["--component", "hello", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<CallRecord> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(paths(&rows), ["/hello/one", "/hello/two"]);
    assert!(rows.iter().all(|r| r.version.is_some()));

    let (code, out, _) = logs(&manifest, &["--limit", "1", "--since", "1h"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2);
    assert!(out.contains("/nope"), "{out}");
    let (code, out, _) = logs(&manifest, &["--until", "2000-01-01T00:00:00Z"]);
    assert_eq!(code, 0);
    assert_eq!(out, "no calls match\n");

    for (args, message) in [
        (
            &["--status", "6xx"][..],
            "--status: status `6xx` is neither",
        ),
        (
            &["--since", "soon"][..],
            "--since: `soon` is neither a duration",
        ),
        (&["--limit", "0"][..], "--limit 0 is not valid"),
    ] {
        let (code, out, err) = logs(&manifest, args);
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(err.contains(message), "{args:?}: {err}");
    }

    // --follow: the backlog, then a request made after it started.
    let mut follower = Command::new(bin())
        .args(["logs", "--follow", "--route", "/hello/...", "--manifest"])
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
            .expect("a line from atoll logs --follow within 30 s")
    };
    assert!(next().starts_with("TIME "));
    assert!(next().contains("/hello/one"));
    assert!(next().contains("/hello/two"));
    // /nope/unseen is filtered out: the next line is /hello/live.
    get(&host.url("/nope/unseen")).await;
    get(&host.url("/hello/live")).await;
    let line = next();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells[1..5],
        ["127.0.0.1", "GET", "/hello/live", "200"],
        "{line}"
    );
    assert!(cells[5].starts_with("hello@"), "{line}");
    follower.kill().unwrap();
    follower.wait().unwrap();
    host.kill9();
    drop(dir);
}
