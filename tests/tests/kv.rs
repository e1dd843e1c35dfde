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
/// its 204 (a body-less response) and every increment that got its 200 with
/// the new value (a response whose body is held back until the flush) must be
/// there after a restart.
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
    const WRITERS: u32 = 32;
    let mut acked: BTreeSet<String> = BTreeSet::new();
    // Highest counter value each writer saw acknowledged.
    let mut counted = vec![0u64; WRITERS as usize];
    let mut next = 0u32;
    let rounds = 8;
    for round in 0..rounds {
        let host = ChildHost::spawn(bin, &manifest, &[]).unwrap();
        check(&host, &acked, &counted, &format!("round {round}")).await;
        // Writers alternate a PUT of a unique key and an increment of their
        // own counter; the kill comes at a moment that varies per round.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let base = host.url("/kv/");
            let tx = tx.clone();
            let start = next;
            next += 1000;
            writers.push(tokio::spawn(async move {
                for i in start..start + 1000 {
                    let key = format!("k{i}");
                    match send("PUT", &format!("{base}set/{key}"), key.clone()).await {
                        Ok(r) if r.status == 204 => tx.send(Ok(key)).unwrap(),
                        _ => break,
                    }
                    match send("GET", &format!("{base}incr/c{w}"), "").await {
                        Ok(r) if r.status == 200 => {
                            tx.send(Err((w, r.body.parse().unwrap()))).unwrap()
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
        while let Some(ack) = rx.recv().await {
            match ack {
                Ok(key) => {
                    acked.insert(key);
                }
                Err((w, value)) => counted[w as usize] = counted[w as usize].max(value),
            }
        }
        assert!(acked.len() > before, "round {round} acknowledged no writes");
    }
    let host = ChildHost::spawn(bin, &manifest, &[]).unwrap();
    check(&host, &acked, &counted, "final").await;
    println!(
        "{} acknowledged PUTs and {} acknowledged increments over {rounds} kills, none lost",
        acked.len(),
        counted.iter().sum::<u64>()
    );
}

async fn check(host: &ChildHost, acked: &BTreeSet<String>, counted: &[u64], when: &str) {
    for key in acked {
        let r = get(&host.url(&format!("/kv/get/{key}"))).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, key.as_str()),
            "lost {key} ({when})"
        );
    }
    for (w, &n) in counted.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let r = get(&host.url(&format!("/kv/get/c{w}"))).await;
        let value: u64 = r.body.parse().unwrap_or(0);
        assert!(
            value >= n,
            "counter c{w} is {value} but {n} was acknowledged ({when})"
        );
    }
}
