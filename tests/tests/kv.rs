//! Key-value: isolation between components, persistence across restarts, and
//! durability of acknowledged writes under SIGKILL.

use std::collections::BTreeSet;
use std::time::Duration;

use atoll_tests::{ChildHost, TestHost, get, manifest_file, send};

const TWO: &str = r#"
[components.counter]
source = "{kv-counter}"
routes = ["/counter/..."]

[components.probe]
source = "{kv-probe}"
routes = ["/probe"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_cannot_reach_each_others_data() {
    let h = TestHost::start(TWO).await;
    let marker = "s3cr3t-marker-7f1c";
    let r = send("PUT", &h.url("/counter/set/secret"), marker)
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(get(&h.url("/counter/get/secret")).await.body, marker);

    let r = get(&h.url(&format!("/probe?key=secret&marker={marker}"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let report: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        report["found"],
        serde_json::json!([]),
        "probe found data: {report}"
    );
    assert!(report["opened"].as_u64().unwrap() > 0, "{report}");

    // The probe's own weird writes never show up in the counter's store.
    let r = get(&h.url("/probe?write")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(&h.url("/counter/list")).await;
    assert_eq!(r.body, "secret");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_restart() {
    let h = TestHost::start(TWO).await;
    for i in 0..5 {
        assert_eq!(
            get(&h.url("/counter/incr/visits")).await.body,
            (i + 1).to_string()
        );
    }
    let r = send("PUT", &h.url("/counter/set/greeting"), "hej")
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    let dir = h.stop().await;

    let host = TestHost::start_in(TWO, dir.path()).await.unwrap();
    let h = TestHost { host, dir };
    assert_eq!(get(&h.url("/counter/get/greeting")).await.body, "hej");
    assert_eq!(get(&h.url("/counter/incr/visits")).await.body, "6");
    h.stop().await;
}

/// Acknowledged writes survive `kill -9` at random moments: every PUT that got
/// its 204 before the kill must be readable after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let (_dir, manifest) = manifest_file(
        r#"
[host]
data_dir = "data"
[components.counter]
source = "{kv-counter}"
routes = ["/kv/..."]
"#,
    );
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_atoll-cli"));
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut next = 0u32;
    let rounds = 8;
    for round in 0..rounds {
        let host = ChildHost::spawn(bin, &manifest, &[]).unwrap();
        // Everything acknowledged so far is there.
        for key in &acked {
            let r = get(&host.url(&format!("/kv/get/{key}"))).await;
            assert_eq!(
                (r.status, r.body.as_str()),
                (200, key.as_str()),
                "lost {key} (round {round})"
            );
        }
        // 32 writers; kill at a moment that varies per round while they run.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut writers = Vec::new();
        for _ in 0..32 {
            let base = host.url("/kv/set/");
            let tx = tx.clone();
            let start = next;
            next += 1000;
            writers.push(tokio::spawn(async move {
                for i in start..start + 1000 {
                    let key = format!("k{i}");
                    match send("PUT", &format!("{base}{key}"), key.clone()).await {
                        Ok(r) if r.status == 204 => {
                            let _ = tx.send(key);
                        }
                        _ => break,
                    }
                }
            }));
        }
        drop(tx);
        let wait = 150 + (round * 97 % 400) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        host.kill9();
        for w in writers {
            let _ = w.await;
        }
        let before = acked.len();
        while let Some(k) = rx.recv().await {
            acked.insert(k);
        }
        assert!(acked.len() > before, "round {round} acknowledged no writes");
    }
    let host = ChildHost::spawn(bin, &manifest, &[]).unwrap();
    let mut missing = Vec::new();
    for key in &acked {
        let r = get(&host.url(&format!("/kv/get/{key}"))).await;
        if r.status != 200 || r.body != *key {
            missing.push(key.clone());
        }
    }
    println!(
        "{} acknowledged writes over {rounds} kills, {} missing",
        acked.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "lost acknowledged writes: {missing:?}");
}
