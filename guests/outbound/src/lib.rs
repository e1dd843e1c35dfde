//! Exists to test outbound HTTP policy: `?url=<percent-encoded absolute url>`
//! GETs the URL through `wasi:http/outgoing-handler`; success is 200
//! `upstream <status>: <body>`, failure is 502 `outbound error: <error>`
//! (which names the WASI error code, e.g. `HttpRequestDenied`).

use atoll_sdk::http::{OutgoingRequest, Request, Response, send};

fn handle(req: Request) -> Response {
    let Some(url) = req.query_param("url") else {
        return Response::bad_request("usage: ?url=<percent-encoded absolute url>");
    };
    match send(OutgoingRequest::get(&url)) {
        Ok(upstream) => {
            let mut body = format!("upstream {}: ", upstream.status()).into_bytes();
            body.extend_from_slice(upstream.body_bytes());
            Response::new(200)
                .header("content-type", "text/plain")
                .body(body)
        }
        Err(err) => Response::text(502, format!("outbound error: {err}")),
    }
}

atoll_sdk::http_handler!(handle);
