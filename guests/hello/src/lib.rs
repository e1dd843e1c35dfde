//! Exists to test the plain request path: any request gets 200 `text/plain`
//! with `hello from atoll: <path>\n` (path without the query); a POST with a
//! body gets `echo: <body>` instead.

use atoll_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    let body = if req.method() == "POST" && !req.body().is_empty() {
        [b"echo: ", req.body()].concat()
    } else {
        format!("hello from atoll: {}\n", req.path()).into_bytes()
    };
    Response::new(200)
        .header("content-type", "text/plain")
        .body(body)
}

atoll_sdk::http_handler!(handle);
