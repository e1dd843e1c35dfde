//! Key-value storage through `wasi:keyvalue` (store, atomics, batch).
//!
//! A [`Store`] is one bucket. Which buckets a component may open, and what
//! they map to, is the host's decision: Atoll grants buckets per service in
//! `atoll.toml`, and `"default"` is the conventional name of a service's own
//! bucket. Opening a bucket that was not granted fails with
//! [`Error::AccessDenied`] or [`Error::NoSuchStore`]; it never traps.
//!
//! ```no_run
//! use atoll_sdk::kv::Store;
//!
//! let store = Store::open("default")?;
//! store.set("greeting", "hello")?;
//! assert_eq!(store.get("greeting")?.as_deref(), Some(&b"hello"[..]));
//! let hits = store.increment("hits", 1)?;
//! store.set_json("last", &serde_json::json!({ "hits": hits }))?;
//! # Ok::<(), atoll_sdk::kv::Error>(())
//! ```

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::wasi::keyvalue::{atomics, batch, store as wasi};

/// Why a key-value operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The host has no bucket by that name (WASI `no-such-store`).
    NoSuchStore,
    /// This component may not use that bucket or key (WASI `access-denied`).
    AccessDenied,
    /// Any other host error, with its message (WASI `other`).
    Other(String),
    /// A value read by [`Store::get_json`] is not valid JSON for the type, or
    /// a value given to [`Store::set_json`] could not be serialized.
    Json(serde_json::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoSuchStore => f.write_str("no such store"),
            Error::AccessDenied => f.write_str("access denied"),
            Error::Other(msg) => write!(f, "key-value error: {msg}"),
            Error::Json(err) => write!(f, "key-value JSON error: {err}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Json(err) => Some(err),
            _ => None,
        }
    }
}

impl From<wasi::Error> for Error {
    fn from(err: wasi::Error) -> Self {
        match err {
            wasi::Error::NoSuchStore => Error::NoSuchStore,
            wasi::Error::AccessDenied => Error::AccessDenied,
            wasi::Error::Other(msg) => Error::Other(msg),
        }
    }
}

/// A key and its value, as [`Store::get_many`] returns them.
pub type Entry = (String, Vec<u8>);

/// An open bucket.
#[derive(Debug)]
pub struct Store {
    bucket: wasi::Bucket,
}

impl Store {
    /// Opens the bucket called `name` (`"default"` by convention).
    pub fn open(name: &str) -> Result<Store, Error> {
        Ok(Store {
            bucket: wasi::open(name)?,
        })
    }

    /// The raw WASI bucket, for calls this type does not wrap.
    pub fn bucket(&self) -> &wasi::Bucket {
        &self.bucket
    }

    /// The value of `key`, or `None` when it is absent.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.bucket.get(key)?)
    }

    /// Stores `value` under `key`, replacing any previous value.
    pub fn set(&self, key: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
        Ok(self.bucket.set(key, value.as_ref())?)
    }

    /// Removes `key`. Removing an absent key is not an error.
    pub fn delete(&self, key: &str) -> Result<(), Error> {
        Ok(self.bucket.delete(key)?)
    }

    /// Whether `key` is present.
    pub fn exists(&self, key: &str) -> Result<bool, Error> {
        Ok(self.bucket.exists(key)?)
    }

    /// Every key in the bucket, following the host's `list-keys` cursor
    /// until the end. The order is the host's.
    pub fn keys(&self) -> Result<Vec<String>, Error> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.bucket.list_keys(cursor)?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Atomically adds `delta` to the number stored under `key` (an absent
    /// key counts as 0) and returns the new value.
    pub fn increment(&self, key: &str, delta: u64) -> Result<u64, Error> {
        Ok(atomics::increment(&self.bucket, key, delta)?)
    }

    /// Reads several keys in one call. The result is the host's answer as
    /// is: one entry per key, `None` where the key is absent.
    pub fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<Entry>>, Error> {
        let keys: Vec<String> = keys.iter().map(|k| k.as_ref().to_string()).collect();
        Ok(batch::get_many(&self.bucket, &keys)?)
    }

    /// Stores several key-value pairs in one call.
    pub fn set_many<K: AsRef<str>, V: AsRef<[u8]>>(&self, entries: &[(K, V)]) -> Result<(), Error> {
        let entries: Vec<(String, Vec<u8>)> = entries
            .iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_vec()))
            .collect();
        Ok(batch::set_many(&self.bucket, &entries)?)
    }

    /// Removes several keys in one call.
    pub fn delete_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<(), Error> {
        let keys: Vec<String> = keys.iter().map(|k| k.as_ref().to_string()).collect();
        Ok(batch::delete_many(&self.bucket, &keys)?)
    }

    /// The value of `key` decoded from JSON, or `None` when it is absent.
    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        match self.get(key)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(Error::Json),
            None => Ok(None),
        }
    }

    /// Stores `value` under `key` as JSON.
    pub fn set_json<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value).map_err(Error::Json)?;
        self.set(key, bytes)
    }
}
