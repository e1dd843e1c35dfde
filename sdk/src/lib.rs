//! Write Atoll services in Rust.
//!
//! An Atoll service is a WASI 0.2 component built for `wasm32-wasip2` as a
//! `cdylib`. This crate turns the component-model imports of the
//! `atoll:service/http-service` world into small blocking Rust APIs:
//!
//! ```no_run
//! use atoll_sdk::http::{Request, Response};
//! use atoll_sdk::kv::Store;
//!
//! fn handle(req: Request) -> Response {
//!     let name = req.query_param("name").unwrap_or_else(|| "world".to_string());
//!     let visits = match Store::open("default").and_then(|store| store.increment(&name, 1)) {
//!         Ok(n) => n,
//!         Err(err) => return Response::text(500, format!("kv: {err}\n")),
//!     };
//!     atoll_sdk::info!("greeted {name} ({visits} visits)");
//!     Response::text(200, format!("hello {name}, visit #{visits}\n"))
//! }
//!
//! atoll_sdk::http_handler!(handle);
//! ```
//!
//! # What is here
//!
//! | module | WASI interface | what it does |
//! | --- | --- | --- |
//! | [`http`] | `wasi:http/incoming-handler`, `wasi:http/outgoing-handler` | [`http_handler!`] serves requests; [`http::send`] makes outbound requests |
//! | [`kv`] | `wasi:keyvalue/{store,atomics,batch}` | [`kv::Store`]: get, set, delete, list, increment, batches, JSON values |
//! | [`config`] | `wasi:config/store` | [`config::get`], [`config::get_all`] |
//! | [`log`] | `wasi:logging/logging` | [`log::info`] and friends, [`info!`] and friends |
//!
//! A component only imports the interfaces it calls: a service that never
//! touches [`kv`] has no key-value import, so the host can refuse to grant it.
//!
//! Everything blocks the (single) guest thread until the host answers, which
//! is how WASI 0.2 components work; the host runs many instances concurrently.
//!
//! # Building
//!
//! `cargo build --release --target wasm32-wasip2` with `crate-type =
//! ["cdylib"]` produces `target/wasm32-wasip2/release/<name>.wasm`, a
//! component. The crate also compiles natively (the WASI calls then panic), so
//! unit tests of a service's pure logic run with a plain `cargo test`.
//!
//! # Raw access
//!
//! [`bindings`] holds everything `wit-bindgen` generated for the world, for
//! the parts of WASI this crate does not wrap.

#![deny(missing_docs)]

pub mod config;
pub mod http;
pub mod kv;
pub mod log;
mod streams;

/// Raw `wit-bindgen` bindings for the `atoll:service/http-service` world.
///
/// Imports live under `bindings::wasi::*` (for example
/// `bindings::wasi::keyvalue::store::open`). The exported
/// `wasi:http/incoming-handler` trait is
/// `bindings::exports::wasi::http::incoming_handler::Guest`; prefer
/// [`http_handler!`](crate::http_handler) over implementing it by hand.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "atoll:service/http-service",
        generate_all,
        // wit-bindgen 0.46's parser rejects the vendored wasi:cli worlds
        // (which import the unstable wasi:clocks/timezone) unless the feature
        // is on. Nothing in this world uses timezone, so nothing changes.
        features: ["clocks-timezone"],
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "atoll_sdk::bindings",
    });
}

/// Exports `wasi:http/incoming-handler` from this component, served by a
/// function `fn(atoll_sdk::http::Request) -> atoll_sdk::http::Response`.
///
/// The generated handler reads the whole request body, calls the function
/// and writes its response with a `content-length` header. Use it once per
/// component, at the crate's top level:
///
/// ```no_run
/// use atoll_sdk::http::{Request, Response};
///
/// fn handle(req: Request) -> Response {
///     match req.path() {
///         "/" => Response::text(200, "home\n"),
///         _ => Response::not_found(),
///     }
/// }
///
/// atoll_sdk::http_handler!(handle);
/// ```
#[macro_export]
macro_rules! http_handler {
    ($handler:path) => {
        #[doc(hidden)]
        struct __AtollHttpHandler;

        impl $crate::bindings::exports::wasi::http::incoming_handler::Guest for __AtollHttpHandler {
            fn handle(
                request: $crate::bindings::wasi::http::types::IncomingRequest,
                response_out: $crate::bindings::wasi::http::types::ResponseOutparam,
            ) {
                $crate::http::__serve(request, response_out, $handler)
            }
        }

        $crate::bindings::export!(__AtollHttpHandler with_types_in $crate::bindings);
    };
}
