//! Greets: `GET /?name=Ada` answers `Hello, Ada!`. The greeting comes from
//! the config key `greeting` (default `Hello`), the name from `?name=`
//! (default `world`).

use atoll_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    if req.method() != "GET" {
        return Response::method_not_allowed();
    }
    let greeting = match atoll_sdk::config::get("greeting") {
        Ok(value) => value.unwrap_or_else(|| "Hello".to_string()),
        Err(err) => return Response::internal_error(format!("config: {err}\n")),
    };
    let name = req
        .query_param("name")
        .unwrap_or_else(|| "world".to_string());
    Response::text(200, format!("{greeting}, {name}!\n"))
}

atoll_sdk::http_handler!(handle);
