//! Each component's isolated key-value store, behind `wasi:keyvalue`.
//!
//! A [`KvBackend`] hands out one [`Namespace`] per component name; everything
//! a component does goes through its namespace, whose keys are encoded as
//! `len(bucket) | bucket | key` inside that namespace only. Whatever bucket
//! name or key bytes a guest passes, they select a key *within* its own
//! namespace: there is no path that reaches another component's data.
//!
//! Durability: writes land in the backend at once (readable by the next
//! request) and are made durable by [`KvBackend::sync`], which the gateway
//! awaits before a response that followed writes is completed. The sled
//! backend implements `sync` as a group commit: one flush serves every request
//! waiting at that moment.

mod binding;
mod commit;
mod memory;
mod sled_backend;
pub mod stats;

use std::sync::Arc;

pub use binding::{Bucket, KvState, KvView, add_to_linker};
pub use commit::{GroupCommit, WriteTracker};
pub use memory::MemoryBackend;
pub use sled_backend::{SledBackend, open_locked};

/// Longest bucket name accepted, in bytes.
pub const MAX_BUCKET_LEN: usize = 255;
/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 8 * 1024;
/// Keys returned by one `list-keys` page.
pub const LIST_PAGE: usize = 1000;
/// Most keys one batch call may name.
pub const MAX_BATCH_KEYS: usize = 10_000;

/// A key-value error as the guest sees it (mapped onto `wasi:keyvalue/store.error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The caller may not do this.
    #[error("access denied")]
    AccessDenied,
    /// Anything else, with a message for the guest.
    #[error("{0}")]
    Other(String),
}

impl KvError {
    fn backend(e: impl std::fmt::Display) -> KvError {
        KvError::Other(format!("storage error: {e}"))
    }
}

/// A storage engine holding every component's namespace.
#[async_trait::async_trait]
pub trait KvBackend: Send + Sync + 'static {
    /// The namespace of one component (created on first use).
    fn namespace(&self, component: &str) -> anyhow::Result<Arc<dyn Namespace>>;
    /// Resolves once every write made before the call is durable.
    async fn sync(&self) -> anyhow::Result<()>;
    /// Whether some write (by anyone) is readable but not yet durable.
    fn has_pending(&self) -> bool;
    /// Flushes everything (shutdown).
    fn flush_blocking(&self) -> anyhow::Result<()>;
    /// Operation and flush counters, if the backend keeps them.
    fn stats(&self) -> Option<&stats::KvStats> {
        None
    }
}

/// A read-modify-write step: the current value (if any) to the new one.
pub type UpdateFn<'a> = dyn FnMut(Option<&[u8]>) -> Result<Vec<u8>, KvError> + 'a;

/// One component's keys. Keys are already encoded with [`encode_key`].
pub trait Namespace: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// Writes one key.
    fn set(&self, key: &[u8], value: &[u8]) -> Result<(), KvError>;
    /// Removes one key (absent is fine).
    fn delete(&self, key: &[u8]) -> Result<(), KvError>;
    /// Whether a key exists (without copying its value).
    fn contains(&self, key: &[u8]) -> Result<bool, KvError>;
    /// Keys starting with `prefix` and after `after` (if given), in order, at most `limit`.
    fn scan_keys(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, KvError>;
    /// Atomically applies `f` to the current value and stores its result.
    fn update(&self, key: &[u8], f: &mut UpdateFn<'_>) -> Result<Vec<u8>, KvError>;
    /// Applies many sets and deletes atomically.
    fn apply_batch(&self, sets: &[(Vec<u8>, Vec<u8>)], deletes: &[Vec<u8>]) -> Result<(), KvError>;
}

/// Where a key scan starts: after `after` if given, else at `prefix`.
pub fn scan_start(prefix: &[u8], after: Option<&[u8]>) -> std::ops::Bound<Vec<u8>> {
    match after {
        Some(k) => std::ops::Bound::Excluded(k.to_vec()),
        None => std::ops::Bound::Included(prefix.to_vec()),
    }
}

/// The prefix under which a bucket's keys live in a namespace.
pub fn bucket_prefix(bucket: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + bucket.len());
    out.extend_from_slice(&(bucket.len() as u32).to_be_bytes());
    out.extend_from_slice(bucket.as_bytes());
    out
}

/// The namespace key of `key` in `bucket`. The length prefix makes the
/// encoding injective: no (bucket, key) pair can produce another pair's bytes.
pub fn encode_key(prefix: &[u8], key: &str) -> Result<Vec<u8>, KvError> {
    if key.len() > MAX_KEY_LEN {
        return Err(KvError::Other(format!(
            "key is {} bytes; the limit is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    let mut out = Vec::with_capacity(prefix.len() + key.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(key.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_injective_across_buckets() {
        // ("a", "bc") and ("ab", "c") must not collide.
        let x = encode_key(&bucket_prefix("a"), "bc").unwrap();
        let y = encode_key(&bucket_prefix("ab"), "c").unwrap();
        assert_ne!(x, y);
        assert!(encode_key(&bucket_prefix(""), &"k".repeat(MAX_KEY_LEN + 1)).is_err());
    }
}
