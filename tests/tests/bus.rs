//! The message bus end to end: real host, real components, real sled files.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use atoll::bus::{BusError, Origin, Outgoing, SubscriptionInfo};
use atoll::host::RunningHost;
use atoll_tests::{TestHost, get, send};

/// Publishes one message as an operator.
async fn publish(
    host: &RunningHost,
    topic: &str,
    payload: &str,
    headers: &[(&str, &str)],
) -> String {
    publish_with(
        host,
        Outgoing {
            topic: topic.into(),
            payload: payload.as_bytes().to_vec(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        },
    )
    .await
}

async fn publish_with(host: &RunningHost, message: Outgoing) -> String {
    let mut out = host
        .bus()
        .publish(Origin::Operator, vec![message])
        .await
        .expect("publish");
    out.remove(0).id
}

fn subscription(host: &RunningHost, id: &str) -> SubscriptionInfo {
    host.bus()
        .subscription(id)
        .unwrap_or_else(|| panic!("no subscription {id}"))
}

/// Waits until every subscription has nothing pending.
async fn drained(host: &RunningHost) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let busy: Vec<_> = host
            .bus()
            .overview()
            .topics
            .into_iter()
            .flat_map(|t| t.subscriptions)
            .filter(|s| s.depth > 0)
            .map(|s| format!("{} depth {} in flight {}", s.id, s.depth, s.in_flight))
            .collect();
        if busy.is_empty() {
            return;
        }
        assert!(Instant::now() < until, "not drained: {busy:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sink's per-id delivery counts.
async fn attempts(h: &TestHost, prefix: &str) -> BTreeMap<String, u64> {
    let r = get(&h.url(&format!("{prefix}/attempts"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_to_subscribers_and_competing_consumers_in_a_group() {
    let h = TestHost::start(
        r#"
[topics.events]

[components.a]
source = "{bus-sink}"
routes = ["/a/..."]
subscriptions = [{ topic = "events" }]

[components.b]
source = "{bus-sink}"
routes = ["/b/..."]
subscriptions = [{ topic = "events" }]

[components.w1]
source = "{bus-sink}"
routes = ["/w1/..."]
subscriptions = [{ topic = "events", group = "workers" }]

[components.w2]
source = "{bus-sink}"
routes = ["/w2/..."]
subscriptions = [{ topic = "events", group = "workers" }]
"#,
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(publish(&h.host, "events", &format!("event {i}"), &[]).await);
    }
    drained(&h.host).await;
    for sub in ["a", "b"] {
        let seen = attempts(&h, &format!("/{sub}")).await;
        assert_eq!(seen.len(), 60, "{sub} saw {}", seen.len());
        assert!(seen.values().all(|n| *n == 1), "{sub}: {seen:?}");
    }
    let w1 = attempts(&h, "/w1").await;
    let w2 = attempts(&h, "/w2").await;
    assert_eq!(w1.len() + w2.len(), 60, "each message once in the group");
    assert!(w1.keys().all(|id| !w2.contains_key(id)), "no message twice");
    assert!(
        !w1.is_empty() && !w2.is_empty(),
        "both workers got work: {} {}",
        w1.len(),
        w2.len()
    );
    let info = subscription(&h.host, "events/workers");
    assert_eq!(info.consumers, vec!["w1", "w2"]);
    assert_eq!((info.acked, info.delivered, info.depth), (60, 60, 0));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_is_handled_in_publish_order_even_through_retries() {
    let h = TestHost::start(
        r#"
[topics.orders]

[components.sink]
source = "{bus-sink}"
routes = ["/sink/..."]
subscriptions = [{ topic = "orders", prefetch = 8, backoff = "5ms", max_backoff = "20ms" }]
"#,
    )
    .await;
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..45 {
        let key = format!("k{}", i % 3);
        // Every fourth message fails once: its key must wait for its retry.
        let headers: Vec<(String, String)> = if i % 4 == 0 {
            vec![("behavior".into(), "fail-until=2".into())]
        } else {
            vec![("behavior".into(), format!("sleep={}", i % 3))]
        };
        let id = publish_with(
            &h.host,
            Outgoing {
                topic: "orders".into(),
                payload: b"x".to_vec(),
                headers,
                partition_key: Some(key.clone()),
                id: Some(format!("m{i:02}")),
            },
        )
        .await;
        want.entry(key).or_default().push(id);
    }
    drained(&h.host).await;
    for (key, ids) in &want {
        let got = get(&h.url(&format!("/sink/order/{key}"))).await.body;
        assert_eq!(got.trim(), ids.join(","), "order of {key}");
    }
    let info = subscription(&h.host, "orders/sink");
    assert_eq!(info.retried, 12, "{info:?}");
    assert_eq!(info.acked, 45);
    h.stop().await;
}

const RETRIES: &str = r#"
[topics.jobs]

[components.sink]
source = "{bus-sink}"
routes = ["/sink/..."]
limits = { deadline = "300ms" }
subscriptions = [{ topic = "jobs", max_deliver = 3, backoff = "10ms", max_backoff = "40ms" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_backoff_then_dead_letters_with_exact_counts() {
    let h = TestHost::start(RETRIES).await;
    let cases = [
        (
            "always-retry",
            3,
            Some("max_deliver (3) reached"),
            Some("handler asked to retry"),
        ),
        ("trap", 3, Some("max_deliver (3) reached"), Some("trap")),
        (
            "loop",
            3,
            Some("max_deliver (3) reached"),
            Some("deadline exceeded"),
        ),
        ("reject", 1, Some("rejected: rejected by test"), None),
        ("fail-until=2", 2, None, None),
        ("retry-after=50", 2, None, None),
    ];
    let mut ids = Vec::new();
    for (behavior, ..) in &cases {
        ids.push(publish(&h.host, "jobs", behavior, &[("behavior", behavior)]).await);
    }
    drained(&h.host).await;
    let seen = attempts(&h, "/sink").await;
    let dead = h.host.bus().dead_letters("jobs", None, 100).unwrap();
    for ((behavior, deliveries, reason, last_error), id) in cases.iter().zip(&ids) {
        assert_eq!(
            seen.get(id),
            Some(&(*deliveries as u64)),
            "{behavior}: deliveries"
        );
        let letter = dead.iter().find(|d| &d.id == id);
        match reason {
            None => assert!(letter.is_none(), "{behavior} was dead-lettered: {letter:?}"),
            Some(reason) => {
                let letter = letter.unwrap_or_else(|| panic!("{behavior} not dead-lettered"));
                assert_eq!(&letter.reason, reason, "{behavior}");
                assert_eq!(letter.attempts, *deliveries, "{behavior}");
                assert_eq!(letter.subscription, "jobs/sink");
                assert_eq!(letter.payload_preview, *behavior);
                if let Some(want) = last_error {
                    let got = letter.last_error.as_deref().unwrap_or_default();
                    assert!(got.contains(want), "{behavior}: last error {got:?}");
                }
            }
        }
    }
    let info = subscription(&h.host, "jobs/sink");
    assert_eq!(info.dead_letters, 4);
    assert_eq!(info.dead_lettered, 4);
    assert_eq!(info.acked, 2);
    // Every failed delivery counts: 3 each for the three that die of
    // failures, 1 each for fail-until and retry-after.
    assert_eq!(info.retried, 3 + 3 + 3 + 1 + 1, "{info:?}");

    // Replay the one that always asks to retry: it is delivered three more
    // times and dies again. Two replays at once move it once (the second
    // finds nothing: the message takes tens of ms of backoff to die again).
    let retried = &ids[0];
    let only = std::slice::from_ref(retried);
    let bus = h.host.bus();
    let (a, b) = tokio::join!(
        bus.replay("jobs", Some("sink"), Some(only)),
        bus.replay("jobs", Some("jobs/sink"), Some(only))
    );
    assert_eq!(a.unwrap() + b.unwrap(), 1);
    drained(&h.host).await;
    assert_eq!(attempts(&h, "/sink").await.get(retried), Some(&6));
    assert_eq!(subscription(&h.host, "jobs/sink").dead_letters, 4);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ids_are_stored_once_within_the_window_and_across_restarts() {
    let toml = r#"
[topics.pay]
dedup_window = "1h"

[topics.short]
dedup_window = "300ms"

[components.sink]
source = "{bus-sink}"
routes = ["/sink/..."]
subscriptions = [{ topic = "pay" }, { topic = "short" }]
"#;
    let h = TestHost::start(toml).await;
    let msg = |topic: &str, id: &str| Outgoing {
        topic: topic.into(),
        payload: b"p".to_vec(),
        id: Some(id.into()),
        ..Default::default()
    };
    let bus = h.host.bus().clone();
    let first = bus
        .publish(Origin::Operator, vec![msg("pay", "p-1")])
        .await
        .unwrap();
    assert!(!first[0].duplicate);
    let again = bus
        .publish(
            Origin::Operator,
            vec![msg("pay", "p-1"), msg("pay", "p-2"), msg("pay", "p-2")],
        )
        .await
        .unwrap();
    let flags: Vec<bool> = again.iter().map(|p| p.duplicate).collect();
    assert_eq!(flags, vec![true, false, true]);
    // The same id on another topic is another message.
    assert!(
        !bus.publish(Origin::Operator, vec![msg("short", "p-1")])
            .await
            .unwrap()[0]
            .duplicate
    );
    drained(&h.host).await;
    drop(bus);
    let dir = h.stop().await;

    let host = TestHost::start_in(toml, dir.path()).await.unwrap();
    let bus = host.bus().clone();
    let after = bus
        .publish(Origin::Operator, vec![msg("pay", "p-1")])
        .await
        .unwrap();
    assert!(after[0].duplicate, "dedup survives a restart");
    // Past the short window, the id is new again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !bus.publish(Origin::Operator, vec![msg("short", "p-1")])
            .await
            .unwrap()[0]
            .duplicate
    );
    drained(&host).await;
    let info = subscription(&host, "pay/sink");
    assert_eq!(info.acked, 0, "nothing new on `pay` after the restart");
    let topics = bus.overview().topics;
    assert_eq!(
        topics.iter().find(|t| t.name == "pay").unwrap().duplicates,
        1
    );
    let h = TestHost { host, dir };
    let seen = attempts(&h, "/sink").await;
    assert_eq!(
        seen.get("p-1"),
        Some(&3),
        "once per topic, plus once more after the short window"
    );
    assert_eq!(seen.get("p-2"), Some(&1));
    drop(bus);
    h.stop().await;
}

const OUTBOX: &str = r#"
[topics.placed]

[topics.secret]

[topics.tiny]
max_payload = "16B"

[components.pub]
source = "{bus-publisher}"
routes = ["/pub/..."]
publishes = ["placed", "tiny"]

[components.sink]
source = "{bus-sink}"
routes = ["/sink/..."]
subscriptions = [{ topic = "placed" }, { topic = "tiny" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_commits_writes_and_messages_together_or_not_at_all() {
    let h = TestHost::start(OUTBOX).await;
    // Trapped before commit: no write, no message.
    let r = send(
        "POST",
        &h.url("/pub/tx?topic=placed&bucket=o&key=1&id=o-1&trap=before-commit"),
        "order 1",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(get(&h.url("/pub/kv?bucket=o&key=1")).await.status, 404);
    // A staged publish from an invocation that then traps is never stored.
    let r = send(
        "POST",
        &h.url("/pub/publish?topic=placed&id=s-1&trap=1"),
        "staged",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 500, "{}", r.body);
    // Committed: both, even though the handler traps afterwards.
    let r = send(
        "POST",
        &h.url("/pub/tx?topic=placed&bucket=o&key=2&id=o-2&trap=after-commit"),
        "order 2",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 500, "{}", r.body);
    let r = send(
        "POST",
        &h.url("/pub/tx?topic=placed&bucket=o&key=3&id=o-3"),
        "order 3",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body.trim(), "o-3");
    let r = send(
        "POST",
        &h.url("/pub/publish?topic=placed&id=s-2"),
        "staged ok",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    drained(&h.host).await;
    assert_eq!(get(&h.url("/pub/kv?bucket=o&key=2")).await.body, "order 2");
    assert_eq!(get(&h.url("/pub/kv?bucket=o&key=3")).await.body, "order 3");
    let seen = attempts(&h, "/sink").await;
    let ids: Vec<&str> = seen.keys().map(String::as_str).collect();
    assert_eq!(ids, vec!["o-2", "o-3", "s-2"]);
    let placed = h
        .host
        .bus()
        .overview()
        .topics
        .into_iter()
        .find(|t| t.name == "placed")
        .unwrap();
    assert_eq!(placed.published, 3);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_policy_and_bad_messages_get_clear_errors() {
    let h = TestHost::start(OUTBOX).await;
    let r = send("POST", &h.url("/pub/publish?topic=nope"), "x")
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(
        r.body.contains("topic `nope` is not declared"),
        "{}",
        r.body
    );
    let r = send("POST", &h.url("/pub/publish?topic=secret"), "x")
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body
            .contains("may not publish to topic `secret`; add it to `publishes`"),
        "{}",
        r.body
    );
    let r = send(
        "POST",
        &h.url("/pub/publish?topic=tiny"),
        "seventeen bytes!!",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("accepts at most 16"), "{}", r.body);
    let r = send(
        "POST",
        &h.url("/pub/tx?topic=tiny&bucket=b&key=k"),
        "seventeen bytes!!",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(get(&h.url("/pub/kv?bucket=b&key=k")).await.status, 404);

    let bus = h.host.bus();
    let bad = |headers: Vec<(String, String)>, id: Option<String>, key: Option<String>| Outgoing {
        topic: "placed".into(),
        payload: vec![],
        headers,
        id,
        partition_key: key,
    };
    let cases = [
        (
            bad(vec![("bad name".into(), "v".into())], None, None),
            "not a token",
        ),
        (
            bad(
                vec![("Atoll-Dead-Letter-Reason".into(), "x".into())],
                None,
                None,
            ),
            "reserved for the host",
        ),
        (
            bad(vec![("h".into(), "line\nbreak".into())], None, None),
            "control character",
        ),
        (
            bad(
                (0..65).map(|i| (format!("h{i}"), "v".into())).collect(),
                None,
                None,
            ),
            "at most 64",
        ),
        (
            bad(vec![], Some("x".repeat(300)), None),
            "message id is 300 bytes",
        ),
        (
            bad(vec![], Some(String::new()), None),
            "message id is empty",
        ),
        (
            bad(vec![], None, Some("k".repeat(2000))),
            "partition key is 2000 bytes",
        ),
    ];
    for (message, want) in cases {
        let e = bus
            .publish(Origin::Operator, vec![message])
            .await
            .unwrap_err();
        assert!(e.to_string().contains(want), "{e} (wanted {want})");
    }
    let e = bus
        .publish(
            Origin::Component("pub"),
            vec![bad(vec![], None, None)]
                .into_iter()
                .map(|mut m| {
                    m.topic = "secret".into();
                    m
                })
                .collect(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, BusError::AccessDenied(_)), "{e}");
    assert_eq!(subscription(&h.host, "placed/sink").acked, 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_travels_from_request_to_message() {
    let h = TestHost::start(OUTBOX).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = http::Request::builder()
        .method("POST")
        .uri(h.url("/pub/publish?topic=placed&id=t-1"))
        .header("traceparent", traceparent)
        .header("x-msg-behavior", "reject")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"traced",
        )))
        .unwrap();
    let res = atoll_tests::client().request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    // The body completes only once the message is stored.
    http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap();
    drained(&h.host).await;
    let dead = h.host.bus().dead_letters("placed", None, 10).unwrap();
    let headers = &dead[0].headers;
    assert!(
        headers.contains(&("traceparent".to_string(), traceparent.to_string())),
        "{headers:?}"
    );
    assert!(
        headers.contains(&("behavior".to_string(), "reject".to_string())),
        "{headers:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_without_a_message_handler_dead_letters_with_the_reason() {
    let h = TestHost::start(
        r#"
[topics.t]

[components.plain]
source = "{bus-plain}"
routes = ["/plain"]
subscriptions = [{ topic = "t", max_deliver = 2 }]
"#,
    )
    .await;
    publish(&h.host, "t", "hello", &[]).await;
    drained(&h.host).await;
    let dead = h.host.bus().dead_letters("t", Some("plain"), 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("has no message handler"),
        "{:?}",
        dead[0]
    );
    assert_eq!(dead[0].attempts, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_messages_survive_a_restart_and_are_delivered_after_it() {
    let toml = r#"
[topics.later]

[components.sink]
source = "{bus-sink}"
routes = ["/sink/..."]
subscriptions = [{ topic = "later", backoff = "1h", max_backoff = "1h" }]
"#;
    let h = TestHost::start(toml).await;
    // Fails once, then waits an hour for its retry: still pending at shutdown.
    publish(&h.host, "later", "x", &[("behavior", "fail-until=2")]).await;
    let until = Instant::now() + Duration::from_secs(30);
    while subscription(&h.host, "later/sink").retrying == 0 {
        assert!(Instant::now() < until);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dir = h.stop().await;
    let host = TestHost::start_in(toml, dir.path()).await.unwrap();
    // After a restart it is delivered at once, as attempt 2, and acked.
    drained(&host).await;
    let info = subscription(&host, "later/sink");
    assert_eq!((info.acked, info.delivered), (1, 1));
    let h = TestHost { host, dir };
    assert_eq!(
        attempts(&h, "/sink")
            .await
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![2]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_caller_goes_away_is_still_delivered() {
    let h = TestHost::start(
        r#"
[topics.t]

[components.sink]
source = "{bus-sink}"
routes = ["/sink/..."]
subscriptions = [{ topic = "t" }]
"#,
    )
    .await;
    let message = Outgoing {
        topic: "t".into(),
        payload: b"x".to_vec(),
        id: Some("gone-1".into()),
        ..Default::default()
    };
    // Poll the publish once (it stores the message) and drop it, as hyper
    // does with a handler whose client disconnected.
    let publish = h.host.bus().publish(Origin::Operator, vec![message]);
    let _ = tokio::time::timeout(Duration::from_nanos(1), publish).await;
    let until = Instant::now() + Duration::from_secs(10);
    while !attempts(&h, "/sink").await.contains_key("gone-1") {
        assert!(Instant::now() < until, "stored but never delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drained(&h.host).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_also_published_to_a_dead_letter_topic() {
    let h = TestHost::start(
        r#"
[topics.jobs]

[topics."jobs.dead"]

[components.sink]
source = "{bus-sink}"
routes = ["/sink/..."]
subscriptions = [{ topic = "jobs", max_deliver = 2, backoff = "5ms", dead_letter_topic = "jobs.dead" }]

[components.morgue]
source = "{bus-sink}"
routes = ["/morgue/..."]
subscriptions = [{ topic = "jobs.dead" }]
"#,
    )
    .await;
    let id = publish(&h.host, "jobs", "poison", &[("behavior", "always-retry")]).await;
    drained(&h.host).await;
    // It died in `jobs/sink`, stays listed there, and `morgue` handled its copy.
    let dead = h.host.bus().dead_letters("jobs", None, 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(attempts(&h, "/sink").await.get(&id), Some(&2));
    // The copy has an id of its own and the same behaviour, so morgue
    // retries it until its own max_deliver (5) and it lands in `jobs.dead`'s
    // dead letters, where its headers say why it died the first time.
    let copy = &h.host.bus().dead_letters("jobs.dead", None, 10).unwrap()[0];
    assert_ne!(copy.id, id);
    assert_eq!(attempts(&h, "/morgue").await.get(&copy.id), Some(&5));
    let header = |name: &str| {
        copy.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("atoll-original-id"), Some(id.as_str()));
    assert_eq!(
        header("atoll-dead-letter-reason"),
        Some("max_deliver (2) reached")
    );
    assert_eq!(header("atoll-dead-letter-subscription"), Some("jobs/sink"));
    assert_eq!(header("atoll-dead-letter-attempts"), Some("2"));
    assert_eq!(header("atoll-original-topic"), Some("jobs"));
    assert_eq!(
        header("atoll-dead-letter-error"),
        Some("handler asked to retry")
    );
    assert_eq!(copy.payload_preview, "poison");
    h.stop().await;
}
