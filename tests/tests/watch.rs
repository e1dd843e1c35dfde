//! `atoll up --watch`: a changed source is hot swapped in; a broken one is
//! refused and the running version keeps serving.

use std::time::{Duration, Instant};

use atoll_tests::{TestHost, get, guest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_source_is_swapped_in_and_a_broken_one_is_not() {
    let src = tempfile::tempdir().unwrap();
    let app = src.path().join("app.wasm");
    std::fs::copy(guest("swap-v1"), &app).unwrap();
    let toml = format!(
        r#"
        [components.app]
        source = "{}"
        version = "1.0.0"
        routes = ["/..."]
        health = "/healthz"
        "#,
        app.display()
    );
    let host = TestHost::start(&toml).await;
    host.host.watch_sources();
    assert_eq!(get(&host.url("/")).await.body, "v1\n");

    // Replace the file as a build would; repeat until the watcher (which
    // starts in the background) has seen it.
    let until = |want: &'static str| {
        let url = host.url("/");
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if get(&url).await.body == want {
                    return true;
                }
                if Instant::now() > deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut swapped = false;
    for _ in 0..4 {
        std::fs::copy(guest("swap-v2"), &app).unwrap();
        if until("v2\n").await {
            swapped = true;
            break;
        }
    }
    assert!(swapped, "the new build never served");
    let view = host.host.registry().view();
    let active = view.components[0].active.clone().unwrap();
    assert!(
        active.version.starts_with("1.0.0+watch."),
        "{}",
        active.version
    );
    assert_eq!(view.components[0].events.last().unwrap().kind, "watch");

    // A build that fails its health check never takes traffic.
    std::fs::copy(guest("swap-sick"), &app).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..20 {
        assert_eq!(get(&host.url("/")).await.body, "v2\n");
    }
    let events = host.host.registry().view().components[0].events.clone();
    let last = events.last().unwrap();
    assert_eq!(last.kind, "refused", "{events:?}");
    assert!(
        last.message
            .contains("its health check GET /healthz answered 503"),
        "{last:?}"
    );
    host.stop().await;
}
