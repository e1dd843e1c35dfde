//! The `atoll` command end to end: the README's example, a second start from
//! the artifact cache, and graceful shutdown on a signal.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use atoll_tests::{ChildHost, get, guest_target_dir, manifest_file, repo_root};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_atoll-cli"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_example_builds_and_serves() {
    let data = tempfile::tempdir().unwrap();
    // Exactly as the README runs it: a relative path from the repository root.
    let root = repo_root();
    let manifest = Path::new("examples/hello/atoll.toml");
    // The example names crate directories; share the guests' target dir so std
    // is built once per test run.
    let target = guest_target_dir();
    let env = [("CARGO_TARGET_DIR", target.as_path())];
    let start = || {
        ChildHost::spawn_in(
            bin(),
            &root,
            manifest,
            &["--data-dir", data.path().to_str().unwrap()],
            &env,
        )
        .unwrap()
    };
    let host = start();
    let r = get(&host.url("/hello?name=Ada")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "Hello, Ada!\n"));
    assert_eq!(get(&host.url("/count")).await.body, "visits: 1\n");
    assert_eq!(get(&host.url("/count")).await.body, "visits: 2\n");
    drop(host);

    // The second start takes compiled artifacts from the cache.
    let host = start();
    assert_eq!(get(&host.url("/count")).await.body, "visits: 3\n");
    let log = host.stderr.lock().unwrap().join("\n");
    assert_eq!(log.matches("(cached artifact in").count(), 2, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_lets_in_flight_requests_finish() {
    let (_dir, manifest) =
        manifest_file("[components.spin]\nsource = \"{spin}\"\nroutes = [\"/spin\"]\n");
    let mut host = ChildHost::spawn(bin(), &manifest, &[]).unwrap();
    let url = host.url("/spin?sleep=1500");
    let started = Instant::now();
    let slow = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pid = host.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );

    let r = slow.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "slept 1500"));
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let status = host.child.wait().unwrap();
    assert!(status.success(), "exit: {status:?}");
    let log = host.stderr.lock().unwrap().join("\n");
    assert!(log.contains("stores flushed; stopped"), "{log}");
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(host.addr).is_err());
}

/// Runs `atoll-cli ARGS`, returning (success, stdout, stderr).
fn atoll(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_commands_publish_inspect_and_replay() {
    let (_dir, manifest) = manifest_file(
        r#"
[topics.jobs]

[components.sink]
source = "{bus-sink}"
routes = ["/sink/..."]
subscriptions = [{ topic = "jobs", max_deliver = 2, backoff = "5ms" }]
"#,
    );
    let m = manifest.to_str().unwrap();
    // No host yet: the CLI says how to start one.
    let (ok, _, err) = atoll(&["bus", "ls", "--manifest", m]);
    assert!(!ok);
    assert!(err.contains("no running host"), "{err}");

    let host = ChildHost::spawn(bin(), &manifest, &[]).unwrap();
    let (ok, out, err) = atoll(&[
        "publish",
        "jobs",
        "--data",
        "hello",
        "--id",
        "j-1",
        "--manifest",
        m,
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "published j-1");
    let (ok, out, _) = atoll(&[
        "publish",
        "jobs",
        "--data",
        "hello",
        "--id",
        "j-1",
        "--manifest",
        m,
    ]);
    assert!(ok);
    assert!(out.contains("duplicate"), "{out}");
    let (ok, _, err) = atoll(&[
        "publish",
        "jobs",
        "--data",
        "bad",
        "--id",
        "j-2",
        "-H",
        "behavior=reject",
        "--manifest",
        m,
    ]);
    assert!(ok, "{err}");

    // Wait for j-2 to reach the dead letters.
    let until = Instant::now() + Duration::from_secs(30);
    let dlq = loop {
        let (ok, out, err) = atoll(&["bus", "dlq", "jobs", "--manifest", m]);
        assert!(ok, "{err}");
        if out.contains("j-2") {
            break out;
        }
        assert!(Instant::now() < until, "no dead letter: {out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(dlq.contains("rejected: rejected by test"), "{dlq}");
    let (ok, out, err) = atoll(&["bus", "ls", "--manifest", m]);
    assert!(ok, "{err}");
    assert!(out.contains("jobs") && out.contains("sink"), "{out}");
    let (ok, out, _) = atoll(&["bus", "ls", "--json", "--manifest", m]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["topics"][0]["subscriptions"][0]["dead_letters"], 1, "{v}");
    assert_eq!(v["topics"][0]["duplicates"], 1, "{v}");

    let (ok, out, err) = atoll(&["bus", "replay", "jobs", "--id", "j-2", "--manifest", m]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "replayed 1 message(s)");
    let attempts = get(&host.url("/sink/attempts")).await.body;
    assert!(attempts.contains("\"j-2\":"), "{attempts}");

    // Bad input: an undeclared topic, a wrong token, a malformed header.
    let (ok, _, err) = atoll(&["publish", "nope", "--data", "x", "--manifest", m]);
    assert!(!ok);
    assert!(err.contains("topic `nope` is not declared"), "{err}");
    let (ok, _, err) = atoll(&["bus", "ls", "--token", "wrong", "--manifest", m]);
    assert!(!ok);
    assert!(
        err.contains("401") || err.to_lowercase().contains("token"),
        "{err}"
    );
    let (ok, _, err) = atoll(&[
        "publish",
        "jobs",
        "--data",
        "x",
        "-H",
        "novalue",
        "--manifest",
        m,
    ]);
    assert!(!ok);
    assert!(err.contains("NAME=VALUE"), "{err}");
    drop(host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_example_places_orders_through_the_outbox_and_dead_letters_declines() {
    let data = tempfile::tempdir().unwrap();
    let target = guest_target_dir();
    let host = ChildHost::spawn_in(
        bin(),
        &repo_root(),
        Path::new("examples/shop/atoll.toml"),
        &["--data-dir", data.path().to_str().unwrap()],
        &[("CARGO_TARGET_DIR", target.as_path())],
    )
    .unwrap();
    let url = host.url("/orders");
    let order = |body: &'static str| atoll_tests::send("POST", &url, body);
    let r = order(r#"{"item":"kayak","qty":2,"amount_cents":45000}"#)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let r = order(r#"{"item":"yacht","qty":1,"amount_cents":9900000}"#)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let r = order("not json").await.unwrap();
    assert_eq!(r.status, 400, "{}", r.body);

    // Payments declines the yacht three times (max_deliver = 3), then it is a dead letter.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let r = atoll_tests::admin(
            host.admin,
            data.path(),
            "GET",
            "/v1/bus/topics/order.placed/dead-letters",
            "",
        )
        .await
        .unwrap();
        if r.body.contains("ord-2") {
            assert!(r.body.contains("max_deliver (3) reached"), "{}", r.body);
            assert!(r.body.contains("card declined"), "{}", r.body);
            break;
        }
        assert!(Instant::now() < until, "no dead letter: {}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let payments = get(&host.url("/payments")).await.body;
    assert!(
        payments.contains("ord-1") && !payments.contains("ord-2"),
        "{payments}"
    );
    let stock: serde_json::Value =
        serde_json::from_str(&get(&host.url("/inventory")).await.body).unwrap();
    assert_eq!(stock["kayak"], 98, "{stock}");
    assert_eq!(stock["yacht"], 99, "{stock}");
}
