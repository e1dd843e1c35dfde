//! Exists to test that a deploy is refused when a component-to-component
//! call would carry a resource: an HTTP service (atoll-sdk) importing
//! `test:res/counter`, whose `counter` is a resource (handles cannot cross
//! between components, and the callee is a fresh instance per call). If it
//! were ever run, any request would make a counter, bump it twice and
//! answer the second result.

use atoll_sdk::http::{Request, Response};

wit_bindgen::generate!({
    inline: "
        package atoll-test:res-user;

        world res-user {
            import test:res/counter@0.1.0;
        }
    ",
    path: ["../wit-calls/res-0.1.0"],
    // The interface lives in another package: generate its bindings here.
    generate_all,
});

use test::res::counter::Counter;

fn handle(_req: Request) -> Response {
    let counter = Counter::new();
    counter.bump();
    Response::text(200, counter.bump().to_string())
}

atoll_sdk::http_handler!(handle);
