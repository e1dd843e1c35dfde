//! Exists to test that a trapping instance becomes a 500 and does not take
//! the host down: a query containing `panic` panics (`boom`), one containing
//! `unreachable` executes wasm `unreachable`; `recurse=<n>` recurses n frames
//! deep to test the wasm stack limit, answering `depth <n>`; anything else is 200 `ok`.

use atoll_sdk::http::{Request, Response};

/// Recursion the optimizer cannot flatten or turn into a loop. Its frames
/// live on the wasm stack (which `limits.stack` bounds), not on Rust's shadow
/// stack in linear memory.
fn dig(n: u32) -> u32 {
    if n == 0 {
        return 0;
    }
    std::hint::black_box(dig(std::hint::black_box(n - 1))).wrapping_add(1)
}

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
    if let Some(n) = req.query_param("recurse").and_then(|v| v.parse::<u32>().ok()) {
        std::hint::black_box(dig(n));
        return Response::text(200, format!("depth {n}"));
    }
    Response::text(200, "ok")
}

atoll_sdk::http_handler!(handle);
