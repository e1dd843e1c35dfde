//! Exists to test key-value isolation: it tries every bucket and key name
//! trick it can think of to reach data that is not its own, and reports what
//! it found. It never panics on an error, it counts it.
//!
//! - `?key=<k>[&marker=<m>]`: opens each probe bucket, reads `k` and variants
//!   of it, lists every key and reads those too. 200 JSON
//!   `{"found": [values as lossy UTF-8], "marker_hits": n, "errors": n, "opened": n}`
//!   where `marker_hits` counts found values containing `m`.
//! - `?write`: writes keys with NUL bytes, `..`, 100,000 chars and the empty
//!   key into each probe bucket. 200 JSON `{"written": n, "errors": n, "opened": n}`.

use atoll_sdk::http::{Request, Response};
use atoll_sdk::kv::Store;
use serde_json::json;

/// Bucket names that a careless host might map onto another service's data.
fn bucket_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "default",
        "",
        "..",
        "../default",
        "kv-counter",
        "kv/kv-counter",
        "/",
        "default\0kv-counter",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.push("b".repeat(4096));
    names
}

#[derive(Default)]
struct Tally {
    found: Vec<String>,
    errors: usize,
    opened: usize,
    written: usize,
}

impl Tally {
    fn read(&mut self, store: &Store, key: &str) {
        match store.get(key) {
            Ok(Some(value)) => self
                .found
                .push(String::from_utf8_lossy(&value).into_owned()),
            Ok(None) => {}
            Err(_) => self.errors += 1,
        }
    }

    fn write(&mut self, store: &Store, key: &str) {
        match store.set(key, b"kv-probe was here") {
            Ok(()) => self.written += 1,
            Err(_) => self.errors += 1,
        }
    }
}

fn probe_read(key: &str, marker: Option<&str>) -> Response {
    let mut tally = Tally::default();
    let keys = [
        key.to_string(),
        format!("../{key}"),
        format!("../../{key}"),
        format!("\0{key}"),
        format!("{key}\0"),
        format!("default\0{key}"),
        format!("kv-counter\0{key}"),
        "k".repeat(100_000),
    ];
    for name in bucket_names() {
        let store = match Store::open(&name) {
            Ok(store) => store,
            Err(_) => {
                tally.errors += 1;
                continue;
            }
        };
        tally.opened += 1;
        for key in &keys {
            tally.read(&store, key);
        }
        match store.keys() {
            Ok(listed) => {
                for key in listed {
                    tally.read(&store, &key);
                }
            }
            Err(_) => tally.errors += 1,
        }
    }
    let marker_hits = match marker {
        Some(m) if !m.is_empty() => tally.found.iter().filter(|v| v.contains(m)).count(),
        _ => 0,
    };
    Response::json(
        200,
        &json!({
            "found": tally.found,
            "marker_hits": marker_hits,
            "errors": tally.errors,
            "opened": tally.opened,
        }),
    )
}

fn probe_write() -> Response {
    let mut tally = Tally::default();
    let keys = [
        "\0".to_string(),
        "a\0b".to_string(),
        "..".to_string(),
        "../escape".to_string(),
        "w".repeat(100_000),
        String::new(),
    ];
    for name in bucket_names() {
        let store = match Store::open(&name) {
            Ok(store) => store,
            Err(_) => {
                tally.errors += 1;
                continue;
            }
        };
        tally.opened += 1;
        for key in &keys {
            tally.write(&store, key);
        }
    }
    Response::json(
        200,
        &json!({ "written": tally.written, "errors": tally.errors, "opened": tally.opened }),
    )
}

fn handle(req: Request) -> Response {
    if req.query_param("write").is_some() {
        return probe_write();
    }
    let key = req.query_param("key").unwrap_or_default();
    let marker = req.query_param("marker");
    probe_read(&key, marker.as_deref())
}

atoll_sdk::http_handler!(handle);
