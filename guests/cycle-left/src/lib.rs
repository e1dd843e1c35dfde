//! Exists to test the call-depth limit of component-to-component calls,
//! with `cycle-right`: an HTTP service (atoll-sdk) that also exports
//! `test:cycle/left` and imports `test:cycle/right`. `GET /ping?depth=D`
//! answers the result of `right.ping(D)` (default 0); the export
//! `left.ping(d)` returns `right.ping(d + 1) + 1`. Linked to `cycle-right`,
//! whose `ping` calls back here, the recursion never ends: the host must
//! stop it.

use atoll_sdk::http::{Request, Response};

wit_bindgen::generate!({
    inline: "
        package atoll-test:cycle-left;

        world cycle-left {
            import test:cycle/right@0.1.0;
            export test:cycle/left@0.1.0;
        }
    ",
    path: ["../wit-calls/cycle-0.1.0"],
    // The interface lives in another package: generate its bindings here.
    generate_all,
});

use test::cycle::right;

struct Left;

impl exports::test::cycle::left::Guest for Left {
    fn ping(depth: u32) -> u32 {
        right::ping(depth.wrapping_add(1)).wrapping_add(1)
    }
}

export!(Left);

fn handle(req: Request) -> Response {
    if req.path() != "/ping" {
        return Response::not_found();
    }
    let depth = req.query_param("depth").unwrap_or_else(|| "0".to_string());
    match depth.parse::<u32>() {
        Ok(depth) => Response::text(200, right::ping(depth).to_string()),
        Err(_) => Response::bad_request(format!("expected a number in `depth`, got `{depth}`\n")),
    }
}

atoll_sdk::http_handler!(handle);
