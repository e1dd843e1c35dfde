//! Structured log records through `wasi:logging/logging`.
//!
//! The functions log with the context `"guest"`; the macros ([`info!`](crate::info)
//! and friends) format their arguments like [`format!`] and log with the calling
//! crate's package name as the context.
//!
//! ```no_run
//! atoll_sdk::log::info("started");
//! let user = "ada";
//! atoll_sdk::warn!("user {user} is rate limited");
//! ```
//!
//! Plain `println!`/`eprintln!` also work: they go to the component's stdout
//! and stderr, which the host may capture separately.

pub use crate::bindings::wasi::logging::logging::Level;

/// The context the level functions ([`info`] etc.) log with.
pub const DEFAULT_CONTEXT: &str = "guest";

/// Logs `message` at `level` with an explicit `context` (for example a
/// module or request id).
pub fn log(level: Level, context: &str, message: &str) {
    crate::bindings::wasi::logging::logging::log(level, context, message);
}

/// Logs `message` at trace level.
pub fn trace(message: &str) {
    log(Level::Trace, DEFAULT_CONTEXT, message);
}

/// Logs `message` at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, DEFAULT_CONTEXT, message);
}

/// Logs `message` at info level.
pub fn info(message: &str) {
    log(Level::Info, DEFAULT_CONTEXT, message);
}

/// Logs `message` at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, DEFAULT_CONTEXT, message);
}

/// Logs `message` at error level.
pub fn error(message: &str) {
    log(Level::Error, DEFAULT_CONTEXT, message);
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log {
    ($level:ident, $($arg:tt)+) => {
        $crate::log::log(
            $crate::log::Level::$level,
            ::core::env!("CARGO_PKG_NAME"),
            &::std::format!($($arg)+),
        )
    };
}

/// Logs a [`format!`]-style message at trace level, context = calling package.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::__log!(Trace, $($arg)+) };
}

/// Logs a [`format!`]-style message at debug level, context = calling package.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::__log!(Debug, $($arg)+) };
}

/// Logs a [`format!`]-style message at info level, context = calling package.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::__log!(Info, $($arg)+) };
}

/// Logs a [`format!`]-style message at warn level, context = calling package.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::__log!(Warn, $($arg)+) };
}

/// Logs a [`format!`]-style message at error level, context = calling package.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::__log!(Error, $($arg)+) };
}
