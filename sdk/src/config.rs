//! Runtime configuration through `wasi:config/store`.
//!
//! The host decides which keys a component sees (Atoll takes them from the
//! service's `[config]` table in `atoll.toml`).
//!
//! ```no_run
//! let greeting = atoll_sdk::config::get("greeting")?.unwrap_or_else(|| "Hello".into());
//! # Ok::<(), atoll_sdk::config::Error>(())
//! ```

use std::fmt;

use crate::bindings::wasi::config::store as wasi;

/// A failure reported by the host's configuration store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The store behind the host failed (for example a remote config service).
    Upstream(String),
    /// An I/O error in the host.
    Io(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Upstream(msg) => write!(f, "config upstream error: {msg}"),
            Error::Io(msg) => write!(f, "config I/O error: {msg}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<wasi::Error> for Error {
    fn from(err: wasi::Error) -> Self {
        match err {
            wasi::Error::Upstream(msg) => Error::Upstream(msg),
            wasi::Error::Io(msg) => Error::Io(msg),
        }
    }
}

/// The value of `key`, or `None` when it is not set.
pub fn get(key: &str) -> Result<Option<String>, Error> {
    Ok(wasi::get(key)?)
}

/// Every key and value visible to this component.
pub fn get_all() -> Result<Vec<(String, String)>, Error> {
    Ok(wasi::get_all()?)
}
