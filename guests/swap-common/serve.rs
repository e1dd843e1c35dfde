// Shared by the swap-* test guests, each of which `include!`s this file after
// defining VERSION (what it answers with), STATUS (the status of every
// answer but the health route's) and HEALTH (the status of `GET /healthz`).
// Separate crates, so each is a different binary with its own digest, the
// way two releases of one service are.

use atoll_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    if req.path() == "/healthz" {
        return Response::text(HEALTH, format!("{VERSION} health {HEALTH}\n"));
    }
    // The version is in the header and in the body, so a test can check that
    // a whole response came from one version.
    Response::text(STATUS, format!("{VERSION}\n")).header("x-swap-version", VERSION)
}

atoll_sdk::http_handler!(handle);
