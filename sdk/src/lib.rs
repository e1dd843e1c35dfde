//! Write Atoll services in Rust.
//!
//! An Atoll service is a WASI 0.2 component built for `wasm32-wasip2` as a
//! `cdylib`. This crate turns the component-model imports of the
//! `atoll:service/service` world into small blocking Rust APIs. A service
//! answers HTTP requests, handles messages from the bus, or both:
//!
//! ```no_run
//! use atoll_sdk::bus::{self, Disposition, Message, Outgoing};
//! use atoll_sdk::http::{Request, Response};
//! use atoll_sdk::kv::Store;
//!
//! fn handle(req: Request) -> Response {
//!     let name = req.query_param("name").unwrap_or_else(|| "world".to_string());
//!     let visits = match Store::open("default").and_then(|store| store.increment(&name, 1)) {
//!         Ok(n) => n,
//!         Err(err) => return Response::text(500, format!("kv: {err}\n")),
//!     };
//!     // Stored when this request ends well, never if it traps.
//!     if let Err(err) = bus::publish(Outgoing::new("greeted", name.as_bytes()).partition_key(&name)) {
//!         return Response::text(500, format!("bus: {err}\n"));
//!     }
//!     atoll_sdk::info!("greeted {name} ({visits} visits)");
//!     Response::text(200, format!("hello {name}, visit #{visits}\n"))
//! }
//!
//! fn on_message(msg: Message) -> Disposition {
//!     atoll_sdk::info!("{} was greeted (attempt {})", msg.text().unwrap_or("?"), msg.attempt);
//!     Disposition::Ack
//! }
//!
//! atoll_sdk::service!(http: handle, messages: on_message);
//! ```
//!
//! A component that only serves HTTP uses [`http_handler!`] instead, one that
//! only handles messages [`message_handler!`]. Each component uses exactly
//! one of the three, once, at the crate's top level.
//!
//! # What is here
//!
//! | module | interface | what it does |
//! | --- | --- | --- |
//! | [`http`] | `wasi:http/incoming-handler`, `wasi:http/outgoing-handler` | [`http_handler!`] serves requests; [`http::send`] makes outbound requests |
//! | [`bus`] | `atoll:bus/{publisher,outbox,handler}` | [`message_handler!`] handles messages; [`bus::publish`]; [`bus::Transaction`] commits key-value writes and publishes together; [`bus::idempotent`] skips redeliveries |
//! | [`kv`] | `wasi:keyvalue/{store,atomics,batch}` | [`kv::Store`]: get, set, delete, list, increment, batches, JSON values |
//! | [`config`] | `wasi:config/store` | [`config::get`], [`config::get_all`] |
//! | [`log`] | `wasi:logging/logging` | [`log::info`] and friends, [`info!`] and friends |
//!
//! A component only imports the interfaces it calls: a service that never
//! touches [`kv`] has no key-value import and one that never publishes has no
//! bus import, so the host can refuse to grant them. Every component exports
//! both handlers; the side a component does not implement answers HTTP with
//! 404 or rejects messages (see the macros).
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

pub mod bus;
pub mod config;
pub mod http;
pub mod kv;
pub mod log;
mod streams;

/// Raw `wit-bindgen` bindings for the `atoll:service/service` world.
///
/// Imports live under `bindings::wasi::*` and `bindings::atoll::bus::*` (for
/// example `bindings::wasi::keyvalue::store::open`). The exported traits are
/// `bindings::exports::wasi::http::incoming_handler::Guest` and
/// `bindings::exports::atoll::bus::handler::Guest`; prefer
/// [`http_handler!`](crate::http_handler),
/// [`message_handler!`](crate::message_handler) or
/// [`service!`](crate::service) over implementing them by hand.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "atoll:service/service",
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
///
/// The component also exports `atoll:bus/handler` (every SDK component
/// does); it rejects every message with the reason `component has no message
/// handler; export one with atoll_sdk::message_handler!`, so a subscription
/// that names this component dead-letters at once. Use [`service!`] to
/// handle messages too.
#[macro_export]
macro_rules! http_handler {
    ($handler:expr $(,)?) => {
        $crate::__export_service!(http: $handler, messages: $crate::bus::__no_message_handler);
    };
}

/// Exports `atoll:bus/handler` from this component, served by a function
/// `fn(atoll_sdk::bus::Message) -> atoll_sdk::bus::Disposition`.
///
/// The host calls it once per delivery of a message on a topic this
/// component subscribes to (`[[components.<name>.subscriptions]]` in
/// `atoll.toml`). A panic (a trap) or running past the deadline counts as
/// [`Disposition::Retry`](crate::bus::Disposition::Retry) with the
/// subscription's backoff.
///
/// ```no_run
/// use atoll_sdk::bus::{Disposition, Message};
///
/// fn on_message(msg: Message) -> Disposition {
///     match msg.text() {
///         Ok(text) => {
///             atoll_sdk::info!("{}: {text}", msg.topic);
///             Disposition::Ack
///         }
///         Err(_) => Disposition::Reject("payload is not UTF-8".into()),
///     }
/// }
///
/// atoll_sdk::message_handler!(on_message);
/// ```
///
/// The component also exports `wasi:http/incoming-handler` (every SDK
/// component does); it answers every request with 404 `no HTTP handler`.
/// Use [`service!`] to serve HTTP too.
#[macro_export]
macro_rules! message_handler {
    ($handler:expr $(,)?) => {
        $crate::__export_service!(http: $crate::http::__no_http_handler, messages: $handler);
    };
}

/// Exports both `wasi:http/incoming-handler` and `atoll:bus/handler` from
/// this component: `http:` names a function `fn(Request) -> Response` (as
/// for [`http_handler!`]), `messages:` a function `fn(Message) ->
/// Disposition` (as for [`message_handler!`]), in that order.
///
/// ```no_run
/// use atoll_sdk::bus::{Disposition, Message};
/// use atoll_sdk::http::{Request, Response};
/// use atoll_sdk::kv::Store;
///
/// fn handle(_req: Request) -> Response {
///     match Store::open("default").and_then(|s| s.get("last")) {
///         Ok(Some(last)) => Response::new(200).body(last),
///         Ok(None) => Response::not_found(),
///         Err(err) => Response::internal_error(format!("kv: {err}\n")),
///     }
/// }
///
/// fn on_message(msg: Message) -> Disposition {
///     match Store::open("default").and_then(|s| s.set("last", &msg.payload)) {
///         Ok(()) => Disposition::Ack,
///         Err(_) => Disposition::retry(),
///     }
/// }
///
/// atoll_sdk::service!(http: handle, messages: on_message);
/// ```
#[macro_export]
macro_rules! service {
    (http: $http:expr, messages: $messages:expr $(,)?) => {
        $crate::__export_service!(http: $http, messages: $messages);
    };
}

/// The one place that implements the exported interfaces; used by
/// [`http_handler!`], [`message_handler!`] and [`service!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __export_service {
    (http: $http:expr, messages: $messages:expr) => {
        #[doc(hidden)]
        struct __AtollService;

        impl $crate::bindings::exports::wasi::http::incoming_handler::Guest for __AtollService {
            fn handle(
                request: $crate::bindings::wasi::http::types::IncomingRequest,
                response_out: $crate::bindings::wasi::http::types::ResponseOutparam,
            ) {
                $crate::http::__serve(request, response_out, $http)
            }
        }

        impl $crate::bindings::exports::atoll::bus::handler::Guest for __AtollService {
            fn handle(
                message: $crate::bindings::atoll::bus::types::Message,
            ) -> $crate::bindings::atoll::bus::types::Disposition {
                $crate::bus::__handle(message, $messages)
            }
        }

        $crate::bindings::export!(__AtollService with_types_in $crate::bindings);
    };
}
