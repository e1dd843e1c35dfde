//! Exists to test that a component written for `wasmtime serve` without
//! atoll-sdk (here with the `wstd` crate) runs unchanged: 200 `wstd says hi`.

use wstd::http::body::Body;
use wstd::http::{Error, Request, Response};

#[wstd::http_server]
async fn main(_request: Request<Body>) -> Result<Response<Body>, Error> {
    Ok(Response::new("wstd says hi".to_string().into()))
}
