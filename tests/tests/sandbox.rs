//! The sandbox grants nothing by default: no files, no environment, no sockets,
//! outbound HTTP only to listed hosts; config and secrets stay with their component;
//! guest output is captured into the host log.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use atoll_tests::{ChildHost, TestHost, get, manifest_file};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A real HTTP server on 127.0.0.1 that answers `upstream-ok` and counts requests.
async fn upstream() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async {
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                            "upstream-ok",
                        ))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (port, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_http_only_to_allowed_hosts() {
    let (allowed_port, allowed_hits) = upstream().await;
    let (denied_port, denied_hits) = upstream().await;
    let h = TestHost::start(&format!(
        r#"
[components.out]
source = "{{outbound}}"
routes = ["/out"]
allowed_outbound_hosts = ["http://127.0.0.1:{allowed_port}"]

[components.closed]
source = "{{outbound}}"
routes = ["/closed"]
"#
    ))
    .await;
    let ok = format!("http%3A%2F%2F127.0.0.1%3A{allowed_port}%2Fx");
    let r = get(&h.url(&format!("/out?url={ok}"))).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "upstream 200: upstream-ok")
    );
    assert_eq!(allowed_hits.load(Ordering::SeqCst), 1);

    let other = format!("http%3A%2F%2F127.0.0.1%3A{denied_port}%2Fx");
    let r = get(&h.url(&format!("/out?url={other}"))).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("HttpRequestDenied"), "{}", r.body);
    // A component with no grants reaches nothing, not even the allowed server.
    let r = get(&h.url(&format!("/closed?url={ok}"))).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("HttpRequestDenied"), "{}", r.body);
    assert_eq!(denied_hits.load(Ordering::SeqCst), 0);
    assert_eq!(allowed_hits.load(Ordering::SeqCst), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_files_env_or_sockets() {
    let h = TestHost::start(
        r#"
[components.probe]
source = "{config-probe}"
routes = ["/sandbox"]
"#,
    )
    .await;
    let r = get(&h.url("/sandbox")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["env"], 0, "{v}");
    assert_eq!(v["read_root"], false, "{v}");
    assert_eq!(v["read_etc"], false, "{v}");
    // Refused by the sandbox, not by the network: 127.0.0.1:1 would refuse too.
    assert_eq!(v["tcp"], false, "{v}");
    assert_eq!(v["tcp_error"], "access-denied", "{v}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_and_secrets_stay_with_their_component() {
    let secrets = tempfile::tempdir().unwrap();
    let key_file = secrets.path().join("api.key");
    std::fs::write(&key_file, "sk-test-123\n").unwrap();
    let h = TestHost::start(&format!(
        r#"
[components.a]
source = "{{config-probe}}"
routes = ["/a/..."]
[components.a.config]
greeting = "hej"
[components.a.secrets]
api_key = {{ file = "{}" }}

[components.b]
source = "{{config-probe}}"
routes = ["/b/..."]
"#,
        key_file.display()
    ))
    .await;
    assert_eq!(get(&h.url("/a/config/greeting")).await.body, "hej");
    assert_eq!(get(&h.url("/a/config/api_key")).await.body, "sk-test-123");
    let r = get(&h.url("/b/config/api_key")).await;
    assert_eq!(r.status, 404, "b must not see a's secret: {}", r.body);
    assert_eq!(get(&h.url("/b/config/greeting")).await.status, 404);
    h.stop().await;
}

/// Runs the logger guest once in a child host with `args`; returns the host's stderr lines.
async fn logger_output(args: &[&str]) -> Vec<String> {
    let (_dir, manifest) = manifest_file(
        r#"
[components.logger]
source = "{logger}"
routes = ["/log"]
"#,
    );
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_atoll-cli"));
    let host = ChildHost::spawn(bin, &manifest, args).unwrap();
    let r = get(&host.url("/log")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "logged"));
    let lines = host.stderr.clone();
    drop(host);
    lines.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_output_is_captured_with_the_component_name() {
    let lines = logger_output(&[]).await.join("\n");
    for want in ["stdout line /log", "stderr line", "logging record"] {
        let line = lines
            .lines()
            .find(|l| l.contains(want))
            .unwrap_or_else(|| panic!("no `{want}` in host log:\n{lines}"));
        assert!(line.contains("component=\"logger\""), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_component() {
    let lines = logger_output(&["--log-format", "json"]).await;
    let record = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "logging record")
        .unwrap_or_else(|| panic!("no JSON record of the guest's log:\n{}", lines.join("\n")));
    assert_eq!(record["fields"]["component"], "logger", "{record}");
    assert_eq!(record["level"], "INFO", "{record}");
    assert_eq!(record["target"], "guest", "{record}");
}
