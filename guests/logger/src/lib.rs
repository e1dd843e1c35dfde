//! Exists to test log capture: writes `stdout line <path>` to stdout,
//! `stderr line` to stderr, an info record `logging record` and a warn record
//! `logging warning` through wasi:logging, then answers 200 `logged`.

use atoll_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    let path = req.path();
    println!("stdout line {path}");
    eprintln!("stderr line");
    atoll_sdk::log::info("logging record");
    atoll_sdk::log::warn("logging warning");
    Response::text(200, "logged")
}

atoll_sdk::http_handler!(handle);
