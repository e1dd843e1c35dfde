//! Exists to test CPU limits (epoch/fuel interruption): a query containing
//! `loop` spins forever without any host call; anything else is 200 `ok`.

use atoll_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    if req.query().contains("loop") {
        let mut n: u64 = 0;
        loop {
            // black_box makes every iteration observable, so the loop stays.
            n = std::hint::black_box(n).wrapping_add(1);
        }
    }
    Response::text(200, "ok")
}

atoll_sdk::http_handler!(handle);
