//! Exists to test the error for a component importing an interface the host
//! does not provide (`test:missing/thing`); if it were ever instantiated it
//! would answer 200 `ping: <n>`.

use atoll_sdk::http::{Request, Response};

wit_bindgen::generate!({
    inline: "
        package test:missing;

        interface thing {
            ping: func() -> u32;
        }

        world needs-import {
            import thing;
        }
    ",
});

fn handle(_req: Request) -> Response {
    Response::text(200, format!("ping: {}", test::missing::thing::ping()))
}

atoll_sdk::http_handler!(handle);
