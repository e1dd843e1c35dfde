//! Exists to test publishing and the outbox through the host:
//!
//! - `POST /publish?topic=T[&id=I][&key=K][&n=N][&trap=1]`: publishes N
//!   messages (default 1) with the request body as payload. With `id` they
//!   get that id (N > 1: `I-0` .. `I-{N-1}`), with `key` they share that
//!   partition key. Each carries the header `x-test: 1` and every request
//!   header `x-msg-<name>` as `<name>` (`x-msg-behavior: fail` becomes
//!   `behavior: fail`). 200 with the ids, one per line; with `trap=1` it
//!   panics after publishing instead.
//! - `POST /tx?topic=T&bucket=B&key=K[&id=I][&trap=before-commit|after-commit]`:
//!   one outbox transaction sets kv `B`/`K` to the body and publishes the
//!   body to T (headers as above); 200 with the message id. `before-commit`
//!   panics before committing, `after-commit` right after.
//! - `GET /kv?bucket=B&key=K`: 200 with the value, or 404.
//!
//! Bus errors answer 403 (access denied), 404 (unknown topic), 413 (too
//! large), 400 (invalid) or 500 (other), with the error text as body. The
//! route may have any prefix: the last path segment picks the operation.

use atoll_sdk::bus::{self, Outgoing, Transaction};
use atoll_sdk::http::{Request, Response};
use atoll_sdk::kv::Store;

fn handle(req: Request) -> Response {
    let op = req.path().rsplit('/').next().unwrap_or_default();
    let result = match (req.method(), op) {
        ("POST", "publish") => publish(&req),
        ("POST", "tx") => transaction(&req),
        ("GET", "kv") => return get_kv(&req),
        _ => return Response::not_found(),
    };
    result.unwrap_or_else(error_response)
}

fn publish(req: &Request) -> Result<Response, bus::Error> {
    let Some(topic) = req.query_param("topic") else {
        return Ok(Response::bad_request("missing `topic`\n"));
    };
    let n = match req.query_param("n").map(|n| n.parse::<u32>()) {
        None => 1,
        Some(Ok(n)) => n,
        Some(Err(_)) => return Ok(Response::bad_request("`n` is not a number\n")),
    };
    let id = req.query_param("id");
    let key = req.query_param("key");
    let mut ids = String::new();
    for i in 0..n {
        let mut message = outgoing(req, &topic);
        match &id {
            Some(id) if n > 1 => message = message.id(format!("{id}-{i}")),
            Some(id) => message = message.id(id),
            None => {}
        }
        if let Some(key) = &key {
            message = message.partition_key(key);
        }
        ids.push_str(&bus::publish(message)?);
        ids.push('\n');
    }
    if req.query_param("trap").as_deref() == Some("1") {
        panic!("trap after publishing {n} message(s)");
    }
    Ok(Response::text(200, ids))
}

fn transaction(req: &Request) -> Result<Response, bus::Error> {
    let (Some(topic), Some(bucket), Some(key)) = (
        req.query_param("topic"),
        req.query_param("bucket"),
        req.query_param("key"),
    ) else {
        return Ok(Response::bad_request("need `topic`, `bucket` and `key`\n"));
    };
    let trap = req.query_param("trap");
    let mut message = outgoing(req, &topic);
    if let Some(id) = req.query_param("id") {
        message = message.id(id);
    }
    let tx = Transaction::new();
    tx.set(&bucket, &key, req.body())?;
    let id = tx.publish(message)?;
    if trap.as_deref() == Some("before-commit") {
        panic!("trap before commit");
    }
    tx.commit()?;
    if trap.as_deref() == Some("after-commit") {
        panic!("trap after commit");
    }
    Ok(Response::text(200, id))
}

/// A message for `topic` with the request body, `x-test: 1` and the
/// request's `x-msg-*` headers (prefix removed).
fn outgoing(req: &Request, topic: &str) -> Outgoing {
    let mut message = Outgoing::new(topic, req.body()).header("x-test", "1");
    for (name, value) in req.headers() {
        if let Some(name) = name.strip_prefix("x-msg-") {
            message = message.header(name, String::from_utf8_lossy(value));
        }
    }
    message
}

fn get_kv(req: &Request) -> Response {
    let (Some(bucket), Some(key)) = (req.query_param("bucket"), req.query_param("key")) else {
        return Response::bad_request("need `bucket` and `key`\n");
    };
    match Store::open(&bucket).and_then(|store| store.get(&key)) {
        Ok(Some(value)) => Response::new(200)
            .header("content-type", "application/octet-stream")
            .body(value),
        Ok(None) => Response::not_found(),
        Err(err) => Response::internal_error(format!("kv error: {err}\n")),
    }
}

fn error_response(err: bus::Error) -> Response {
    let status = match err {
        bus::Error::AccessDenied(_) => 403,
        bus::Error::UnknownTopic(_) => 404,
        bus::Error::TooLarge(_) => 413,
        bus::Error::Invalid(_) => 400,
        _ => 500,
    };
    Response::text(status, err.to_string())
}

atoll_sdk::http_handler!(handle);
