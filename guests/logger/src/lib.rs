//! Exists to test log capture: writes `stdout line <path>` to stdout,
//! `stderr line` to stderr, an info record `logging record` and a warn record
//! `logging warning` through wasi:logging, then answers 200 `logged`.
//!
//! `?lines=N` first writes N more stdout lines `line <i> of <path>` (i from
//! 0); `?big=N` first writes one stdout line of N `x`s (for the host's line
//! cap).

use atoll_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    let path = req.path();
    let number = |name: &str| req.query_param(name).and_then(|n| n.parse::<usize>().ok());
    for i in 0..number("lines").unwrap_or(0) {
        println!("line {i} of {path}");
    }
    if let Some(n) = number("big") {
        println!("{}", "x".repeat(n));
    }
    println!("stdout line {path}");
    eprintln!("stderr line");
    atoll_sdk::log::info("logging record");
    atoll_sdk::log::warn("logging warning");
    Response::text(200, "logged")
}

atoll_sdk::http_handler!(handle);
