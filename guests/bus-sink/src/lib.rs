//! Exists to test delivery: how the host retries, orders, dead-letters and
//! times out message handlers. What it does with a message is chosen by the
//! message's `behavior` header (absent: ack):
//!
//! - `fail-until=N`: retry (subscription backoff) while `attempt < N`, then ack
//! - `retry-after=MS`: retry after MS ms on attempt 1, then ack
//! - `reject`: reject with `rejected by test`
//! - `trap`: panic
//! - `always-retry`: retry every time
//! - `sleep=MS`: sleep MS ms, then ack
//! - `loop`: spin forever without host calls
//!
//! First, on every delivery, it counts it (kv bucket `attempts`, key =
//! message id, decimal count); with a `record-time` header it stores the
//! wall clock in ns (bucket `times`, key = id); with `publish-to: T` it
//! publishes the payload to topic T (a staged publish, so it only happens if
//! this delivery ends in ack; a failed publish rejects the message with the
//! error). On ack it appends the id to bucket `order`, key = partition key
//! or `none`, as a comma-separated list.
//!
//! HTTP (`GET`, the path may have any prefix): `.../attempts` is a JSON
//! object `{id: count}`, `.../times` `{id: ns}`, `.../count` the number of
//! ids seen, `.../order/<key>` the list for that key (empty if none).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atoll_sdk::bus::{self, Disposition, Message, Outgoing};
use atoll_sdk::http::{Request, Response, percent_decode};
use atoll_sdk::kv::{self, Store};

/// Keys read per `get-many` call.
const CHUNK: usize = 1000;

fn on_message(msg: Message) -> Disposition {
    match record_and_decide(&msg) {
        Ok(disposition) => disposition,
        Err(err) => {
            atoll_sdk::error!("bus-sink: kv failed for {}: {err}", msg.id);
            Disposition::retry_because(format!("kv failed: {err}"))
        }
    }
}

fn record_and_decide(msg: &Message) -> Result<Disposition, kv::Error> {
    Store::open("attempts")?.increment(&msg.id, 1)?;
    if msg.header("record-time").is_some() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Store::open("times")?.set(&msg.id, now.to_string())?;
    }
    if let Some(topic) = msg.header("publish-to")
        && let Err(err) = bus::publish(Outgoing::new(topic, msg.payload.clone()))
    {
        return Ok(Disposition::Reject(format!(
            "publish to {topic} failed: {err}"
        )));
    }
    let disposition = decide(msg);
    if disposition == Disposition::Ack {
        let key = msg.partition_key.as_deref().unwrap_or("none");
        let order = Store::open("order")?;
        let list = match order.get(key)? {
            Some(list) if !list.is_empty() => {
                format!("{},{}", String::from_utf8_lossy(&list), msg.id)
            }
            _ => msg.id.clone(),
        };
        order.set(key, list)?;
    }
    Ok(disposition)
}

fn decide(msg: &Message) -> Disposition {
    let Some(behavior) = msg.header("behavior") else {
        return Disposition::Ack;
    };
    let (name, arg) = behavior.split_once('=').unwrap_or((behavior, ""));
    let number = || arg.trim().parse::<u64>().ok();
    match (name.trim(), number()) {
        ("fail-until", Some(n)) if u64::from(msg.attempt) < n => Disposition::retry(),
        ("fail-until", Some(_)) => Disposition::Ack,
        ("retry-after", Some(ms)) if msg.attempt == 1 => {
            Disposition::retry_after(Duration::from_millis(ms))
        }
        ("retry-after", Some(_)) => Disposition::Ack,
        ("reject", _) => Disposition::Reject("rejected by test".into()),
        ("trap", _) => panic!("trap requested by message {}", msg.id),
        ("always-retry", _) => Disposition::retry(),
        ("sleep", Some(ms)) => {
            std::thread::sleep(Duration::from_millis(ms));
            Disposition::Ack
        }
        ("loop", _) => {
            let mut n: u64 = 0;
            loop {
                // black_box makes every iteration observable, so the loop stays.
                n = std::hint::black_box(n).wrapping_add(1);
            }
        }
        _ => Disposition::Reject(format!("unknown behavior `{behavior}`")),
    }
}

fn handle(req: Request) -> Response {
    if req.method() != "GET" {
        return Response::method_not_allowed();
    }
    let path = req.path().trim_end_matches('/');
    let result = if let Some((_, key)) = path.rsplit_once("/order/") {
        Store::open("order")
            .and_then(|s| s.get(&percent_decode(key)))
            .map(|list| Response::text(200, String::from_utf8_lossy(&list.unwrap_or_default())))
    } else {
        match path.rsplit('/').next().unwrap_or_default() {
            "attempts" => numbers("attempts").map(|all| Response::json(200, &all)),
            "times" => numbers("times").map(|all| Response::json(200, &all)),
            "count" => Store::open("attempts")
                .and_then(|s| s.keys())
                .map(|keys| Response::text(200, keys.len().to_string())),
            _ => return Response::not_found(),
        }
    };
    result.unwrap_or_else(|err| Response::internal_error(format!("kv error: {err}\n")))
}

/// Every key of `bucket` with its decimal value, read in chunks.
fn numbers(bucket: &str) -> Result<BTreeMap<String, u64>, kv::Error> {
    let store = Store::open(bucket)?;
    let keys = store.keys()?;
    let mut all = BTreeMap::new();
    for chunk in keys.chunks(CHUNK) {
        for (key, value) in store.get_many(chunk)?.into_iter().flatten() {
            let n = String::from_utf8_lossy(&value).parse().unwrap_or_default();
            all.insert(key, n);
        }
    }
    Ok(all)
}

atoll_sdk::service!(http: handle, messages: on_message);
