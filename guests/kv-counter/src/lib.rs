//! Exists to test key-value through the host, bucket `"default"`. The last
//! path segments choose the operation, whatever prefix comes before them
//! (keys are percent-decoded):
//!
//! - `.../incr/<key>`: add 1, 200 with the new value in decimal
//! - `.../set/<key>` (PUT or POST): store the request body, 204
//! - `.../get/<key>`: 200 with the value, or 404
//! - `.../del/<key>`: 204
//! - `.../list`: 200 with the keys, sorted, joined by `\n`
//!
//! A key-value error is 403 (access denied) or 500 with `kv error: <error>`.

use atoll_sdk::http::{Request, Response, percent_decode};
use atoll_sdk::kv::{self, Store};

fn handle(req: Request) -> Response {
    match run(&req) {
        Ok(resp) => resp,
        Err(kv::Error::AccessDenied) => Response::text(403, "kv error: access denied"),
        Err(err) => Response::text(500, format!("kv error: {err}")),
    }
}

fn run(req: &Request) -> Result<Response, kv::Error> {
    let segments: Vec<&str> = req.path().trim_start_matches('/').split('/').collect();
    let (op, key) = match segments.as_slice() {
        [.., op @ ("incr" | "set" | "get" | "del"), key] => (*op, percent_decode(key)),
        [.., "list"] => ("list", String::new()),
        _ => return Ok(Response::not_found()),
    };
    let store = Store::open("default")?;
    Ok(match op {
        "incr" => Response::text(200, store.increment(&key, 1)?.to_string()),
        "set" if matches!(req.method(), "PUT" | "POST") => {
            store.set(&key, req.body())?;
            Response::new(204)
        }
        "set" => Response::method_not_allowed(),
        "get" => match store.get(&key)? {
            Some(value) => Response::new(200)
                .header("content-type", "application/octet-stream")
                .body(value),
            None => Response::not_found(),
        },
        "del" => {
            store.delete(&key)?;
            Response::new(204)
        }
        _ => {
            let mut keys = store.keys()?;
            keys.sort();
            Response::text(200, keys.join("\n"))
        }
    })
}

atoll_sdk::http_handler!(handle);
