//! Crash safety of the bus: a host killed with SIGKILL at random moments while
//! publishing and consuming loses no acknowledged publish, and after a restart
//! every message ends acked or dead-lettered.

use std::collections::{BTreeMap, BTreeSet};

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atoll_tests::{ChildHost, admin, get, manifest_file};

const APP: &str = r#"
[topics.crash]

[components.sink]
source = "{bus-sink}"
routes = ["/sink/..."]
subscriptions = [{ topic = "crash", prefetch = 2, max_deliver = 4, backoff = "5ms", max_backoff = "50ms" }]
"#;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_atoll-cli"))
}

/// The behaviour of message `n`: most take a millisecond and ack (so a
/// backlog builds and kills find messages not yet delivered), some fail
/// once, a few are rejected.
fn behavior(n: u64) -> &'static str {
    match n % 20 {
        0 => "reject",
        1 | 2 => "fail-until=2",
        _ => "sleep=1",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_publish() {
    let (dir, manifest) = manifest_file(APP);
    let data = dir.path().join(".atoll");
    let acked: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let mut attempted = 0u64;
    let mut next = 0u64;
    for round in 0..4 {
        let host = ChildHost::spawn(bin(), &manifest, &[]).unwrap();
        let stop = Instant::now() + Duration::from_millis(300 + fastrand_ms(round) as u64);
        // Four publishers at once, each numbering its own messages.
        let mut tasks = Vec::new();
        for p in 0..4u64 {
            let acked = acked.clone();
            let data = data.clone();
            let addr = host.admin;
            let start = next + p;
            tasks.push(tokio::spawn(async move {
                let mut n = start;
                let mut tried = 0;
                while Instant::now() < stop {
                    tried += 1;
                    let path = format!("/v1/topics/crash/messages?id=m{n}");
                    let req = admin_with_behavior(addr, &data, &path, n);
                    match tokio::time::timeout(Duration::from_secs(5), req).await {
                        Ok(Ok(r)) if r.status == 201 || r.status == 200 => {
                            acked.lock().unwrap().insert(n);
                        }
                        _ => {}
                    }
                    n += 4;
                }
                tried
            }));
        }
        // Kill while the publishers are still going.
        tokio::time::sleep_until(stop.into()).await;
        host.kill9();
        for t in tasks {
            attempted += t.await.unwrap();
        }
        next += attempted * 4 + 4;
    }

    // Restart and drain.
    let host = ChildHost::spawn(bin(), &manifest, &[]).unwrap();
    let until = Instant::now() + Duration::from_secs(120);
    let info = loop {
        let r = admin(host.admin, &data, "GET", "/v1/bus", "")
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let sub = v["topics"][0]["subscriptions"][0].clone();
        if sub["depth"] == 0 {
            break sub;
        }
        assert!(Instant::now() < until, "not drained: {sub}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "only {} publishes acknowledged",
        acked.len()
    );

    let r = get(&host.url("/sink/attempts")).await;
    let deliveries: BTreeMap<String, u64> = serde_json::from_str(&r.body).unwrap();
    let r = admin(
        host.admin,
        &data,
        "GET",
        "/v1/bus/topics/crash/dead-letters?limit=10000",
        "",
    )
    .await
    .unwrap();
    let dead: Vec<serde_json::Value> = serde_json::from_str(&r.body).unwrap();
    let dead: BTreeSet<String> = dead
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();

    // The queue is empty, so every stored message left it by an ack or a
    // dead letter; an acknowledged publish must have been delivered (the sink
    // counts every delivery with an atomic increment) or dead-lettered.
    let mut lost = Vec::new();
    let mut wrong = Vec::new();
    let mut redelivered = 0;
    for n in &acked {
        let id = format!("m{n}");
        let count = deliveries.get(&id).copied().unwrap_or(0);
        let is_dead = dead.contains(&id);
        if count == 0 && !is_dead {
            lost.push(id.clone());
        }
        let designed = if behavior(*n) == "fail-until=2" { 2 } else { 1 };
        if count > designed {
            redelivered += 1;
        }
        // Rejected ones die; the others are acked, unless crashes during
        // deliveries used up max_deliver (4).
        let reject = behavior(*n) == "reject";
        if count > 0 && ((reject && !is_dead) || (!reject && is_dead && count < 4)) {
            wrong.push(format!("{id}: {count} deliveries, dead: {is_dead}"));
        }
    }
    eprintln!(
        "bus crash test: 4 SIGKILLs; {attempted} publishes tried, {} acknowledged, {} delivered, {} dead letters, {redelivered} redelivered beyond their design, {} lost; after restart: {info}",
        acked.len(),
        deliveries.len(),
        dead.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
    assert!(wrong.is_empty(), "wrong outcome: {wrong:?}");
}

async fn admin_with_behavior(
    addr: std::net::SocketAddr,
    data: &Path,
    path: &str,
    n: u64,
) -> anyhow::Result<atoll_tests::Reply> {
    let b = behavior(n);
    let token = std::fs::read_to_string(data.join("admin.token"))?;
    let auth = format!("Bearer {}", token.trim());
    atoll_tests::send_with(
        "POST",
        &format!("http://{addr}{path}"),
        &[("authorization", &auth), ("atoll-header-behavior", b)],
        format!("payload {n}"),
    )
    .await
}

/// A pseudo-random 0..1200 ms per round, different each run.
fn fastrand_ms(round: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (nanos ^ (round.wrapping_mul(2_654_435_761))) % 1200
}
