//! Exists to test CPU and time limits and graceful shutdown: a query
//! containing `loop` spins forever without any host call; `sleep=<ms>` sleeps
//! that long (a slow but well-behaved request) and answers `slept <ms>`;
//! anything else is 200 `ok`.

use atoll_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    if req.query().contains("loop") {
        let mut n: u64 = 0;
        loop {
            // black_box makes every iteration observable, so the loop stays.
            n = std::hint::black_box(n).wrapping_add(1);
        }
    }
    if let Some(ms) = req.query_param("sleep").and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
        return Response::text(200, format!("slept {ms}"));
    }
    Response::text(200, "ok")
}

atoll_sdk::http_handler!(handle);
