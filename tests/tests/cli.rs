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
