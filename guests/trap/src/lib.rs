//! Exists to test that a trapping instance becomes a 500 and does not take
//! the host down: a query containing `panic` panics (`boom`), one containing
//! `unreachable` executes wasm `unreachable`; anything else is 200 `ok`.

use atoll_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    if req.query().contains("panic") {
        panic!("boom");
    }
    if req.query().contains("unreachable") {
        #[cfg(target_arch = "wasm32")]
        core::arch::wasm32::unreachable();
        #[cfg(not(target_arch = "wasm32"))]
        std::process::abort();
    }
    Response::text(200, "ok")
}

atoll_sdk::http_handler!(handle);
