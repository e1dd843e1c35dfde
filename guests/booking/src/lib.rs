//! Exists to test component-to-component calls from the caller's side: an
//! HTTP service (atoll-sdk) that imports `test:calls/quote@1.2.0`, which the
//! host links to another component. Each route calls one function with
//! arguments from the query and answers 200 `text/plain`:
//!
//! - `/greet?name=N`: the result of `greet(N)`
//! - `/total?items=a:1,b:2`: `ok <sum>` or `err <error>` (no items: an empty list)
//! - `/classify?n=N`: `priced <x>`, `free` or `unknown <text>`
//! - `/maybe?x=S`: `some <n>` or `none` (`maybe(none)` when there is no `x`)
//! - `/spin?ms=N`, `/fail?code=N`: the number returned
//! - `/size?bytes=N`: the result of `size` on N zero bytes
//! - `/flaky?key=K`: the result of `flaky(K)`
//! - `/bench?mode=remote|local|empty&n=N`: times N calls of `greet("x")`
//!   through the import (`remote`), of a local function doing the same
//!   formatting (`local`), or of nothing (`empty`: what the clock itself
//!   costs), each call on its own, and answers their percentiles in ns:
//!   `p50=.. p90=.. p99=.. max=.. mean=.. total=.. n=..` (`total` is the
//!   whole loop, clock readings included)
//! - `/self`: `booking`, without any call
//!
//! A missing or malformed number is 400; any other path 404. A trap in the
//! callee is the host's business: this component does not catch it.

use std::hint::black_box;
use std::str::FromStr;
use std::time::Instant;

use atoll_sdk::http::{Request, Response};

wit_bindgen::generate!({
    inline: "
        package atoll-test:booking;

        world booking {
            import test:calls/quote@1.2.0;
        }
    ",
    path: ["../wit-calls/calls-1.2.0"],
    // The interface lives in another package: generate its bindings here.
    generate_all,
});

use test::calls::quote::{self, Item, Outcome};

fn handle(req: Request) -> Response {
    match route(&req) {
        Ok(body) => Response::text(200, body),
        Err(resp) => resp,
    }
}

fn route(req: &Request) -> Result<String, Response> {
    Ok(match req.path() {
        "/self" => "booking".to_string(),
        "/greet" => quote::greet(&req.query_param("name").unwrap_or_default()),
        "/total" => {
            let items = parse_items(&req.query_param("items").unwrap_or_default())?;
            match quote::total(&items) {
                Ok(sum) => format!("ok {sum}"),
                Err(err) => format!("err {err}"),
            }
        }
        "/classify" => match quote::classify(number(req, "n")?) {
            Outcome::Priced(x) => format!("priced {x}"),
            Outcome::Free => "free".to_string(),
            Outcome::Unknown(text) => format!("unknown {text}"),
        },
        "/maybe" => match quote::maybe(req.query_param("x").as_deref()) {
            Some(n) => format!("some {n}"),
            None => "none".to_string(),
        },
        "/spin" => quote::spin(number(req, "ms")?).to_string(),
        "/fail" => quote::fail(number(req, "code")?).to_string(),
        "/size" => {
            let len: usize = number(req, "bytes")?;
            quote::size(&vec![0u8; len]).to_string()
        }
        "/flaky" => quote::flaky(&req.query_param("key").unwrap_or_default()),
        "/bench" => bench(req)?,
        _ => return Err(Response::not_found()),
    })
}

/// `sku:qty,sku:qty`; an empty string is no items.
fn parse_items(text: &str) -> Result<Vec<Item>, Response> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (sku, qty) = part.split_once(':').unwrap_or((part, ""));
            match qty.parse() {
                Ok(qty) => Ok(Item {
                    sku: sku.to_string(),
                    qty,
                }),
                Err(_) => Err(Response::bad_request(format!(
                    "bad item `{part}`: expected sku:qty\n"
                ))),
            }
        })
        .collect()
}

/// Query parameter `name` as a number; 400 when missing or malformed.
fn number<T: FromStr>(req: &Request, name: &str) -> Result<T, Response> {
    let value = req.query_param(name).unwrap_or_default();
    value.parse().map_err(|_| {
        Response::bad_request(format!("expected a number in `{name}`, got `{value}`\n"))
    })
}

/// Times n calls of `greet("x")` (remote or local) or of nothing (empty),
/// each on its own; answers their percentiles (see the module docs).
fn bench(req: &Request) -> Result<String, Response> {
    let n: usize = number(req, "n")?;
    if n == 0 {
        return Err(Response::bad_request("expected n >= 1\n"));
    }
    let mode = req.query_param("mode").unwrap_or_default();
    // One indirect call in every mode, so `empty` is the clock plus the call site.
    let call: fn() = match mode.as_str() {
        "remote" => || drop(black_box(quote::greet(black_box("x")))),
        "local" => || drop(black_box(local_greet(black_box("x")))),
        "empty" => || {},
        _ => {
            return Err(Response::bad_request(
                "expected mode=remote, mode=local or mode=empty\n",
            ));
        }
    };
    let mut took = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        call();
        took.push(t.elapsed().as_nanos() as u64);
    }
    let total = start.elapsed().as_nanos();
    took.sort_unstable();
    let at = |q: f64| took[((n as f64 * q).ceil() as usize).clamp(1, n) - 1];
    let mean = took.iter().sum::<u64>() / n as u64;
    Ok(format!(
        "p50={} p90={} p99={} max={} mean={mean} total={total} n={n}",
        at(0.50),
        at(0.90),
        at(0.99),
        took[n - 1],
    ))
}

/// What `greet` does on the other side, for the local baseline.
#[inline(never)]
fn local_greet(name: &str) -> String {
    format!("hello, {name}")
}

atoll_sdk::http_handler!(handle);
