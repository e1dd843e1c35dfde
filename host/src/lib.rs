//! Atoll: a host that runs microservices as sandboxed WebAssembly components.
//!
//! One process loads each service as a WASI 0.2 component, gives it its own
//! key-value store, routes HTTP to it and runs every request in a fresh,
//! limited instance. See the README for the manifest format and the design.

pub mod admin;
pub mod bindings;
pub mod build;
pub mod bus;
pub mod calls;
pub mod cli;
pub mod config;
pub mod engine;
pub mod gateway;
pub mod host;
pub mod kv;
pub mod policy;
pub mod registry;
pub mod sandbox;
pub mod telemetry;

pub use config::Manifest;
pub use host::{LoadedApp, RunningHost};
