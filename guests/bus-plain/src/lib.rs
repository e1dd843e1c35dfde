//! Exists to test subscribing a component that has no message handler: it
//! only uses `http_handler!`, so every message it gets is rejected with the
//! SDK's "component has no message handler" reason. Any `GET` (whatever the
//! path it is routed at, `/` included) answers 200 `plain`; other methods 405.

use atoll_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    match req.method() {
        "GET" => Response::text(200, "plain"),
        _ => Response::method_not_allowed(),
    }
}

atoll_sdk::http_handler!(handle);
