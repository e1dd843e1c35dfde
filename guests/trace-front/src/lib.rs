//! Exists to test tracing across everything one request can touch:
//! `/order?item=I` (any method)
//!
//! 1. calls `greet(I)` of `test:calls/quote@1.2.0` (another component),
//! 2. writes the greeting to kv bucket `orders`, key I,
//! 3. publishes it to topic `orders` (config `topic` overrides the name),
//! 4. when config `downstream` holds a URL, GETs it (outbound HTTP),
//!
//! and answers 200 `text/plain` with the greeting, then ` | downstream
//! <status>: <body>` when it made the outbound request. Any failure is 500
//! with the error text; any other path 404.

use atoll_sdk::bus::{self, Outgoing};
use atoll_sdk::http::{OutgoingRequest, Request, Response, send};
use atoll_sdk::kv::Store;

wit_bindgen::generate!({
    inline: "
        package atoll-test:trace-front;

        world trace-front {
            import test:calls/quote@1.2.0;
        }
    ",
    path: ["../wit-calls/calls-1.2.0"],
    generate_all,
});

use test::calls::quote;

fn handle(req: Request) -> Response {
    if req.path() != "/order" {
        return Response::not_found();
    }
    match order(&req) {
        Ok(body) => Response::text(200, body),
        Err(err) => Response::text(500, err),
    }
}

fn order(req: &Request) -> Result<String, String> {
    let item = req
        .query_param("item")
        .unwrap_or_else(|| "none".to_string());
    let greeting = quote::greet(&item);
    Store::open("orders")
        .and_then(|s| s.set(&item, &greeting))
        .map_err(|e| format!("kv: {e}"))?;
    let topic = config("topic")?.unwrap_or_else(|| "orders".to_string());
    bus::publish(Outgoing::new(topic, greeting.clone()).header("item", &item))
        .map_err(|e| format!("publish: {e}"))?;
    let mut body = greeting;
    if let Some(url) = config("downstream")? {
        let answer = send(OutgoingRequest::get(&url)).map_err(|e| format!("outbound: {e}"))?;
        body.push_str(&format!(
            " | downstream {}: {}",
            answer.status(),
            String::from_utf8_lossy(answer.body_bytes())
        ));
    }
    Ok(body)
}

fn config(key: &str) -> Result<Option<String>, String> {
    atoll_sdk::config::get(key).map_err(|e| format!("config: {e}"))
}

atoll_sdk::http_handler!(handle);
