//! Counts visits in key-value storage: `GET /count` increments `visits` and
//! answers `visits: N`; `GET /count/<name>` counts `<name>` instead.

use atoll_sdk::http::{Request, Response, percent_decode};
use atoll_sdk::kv::Store;

fn handle(req: Request) -> Response {
    if req.method() != "GET" {
        return Response::method_not_allowed();
    }
    let name = match req.path().trim_end_matches('/') {
        "/count" => "visits".to_string(),
        path => match path.strip_prefix("/count/") {
            Some(name) if !name.is_empty() && !name.contains('/') => percent_decode(name),
            _ => return Response::not_found(),
        },
    };
    match Store::open("default").and_then(|store| store.increment(&name, 1)) {
        Ok(count) => Response::text(200, format!("{name}: {count}\n")),
        Err(err) => Response::internal_error(format!("kv: {err}\n")),
    }
}

atoll_sdk::http_handler!(handle);
