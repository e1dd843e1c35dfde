//! Verified tokens, remembered. A client sends the same access token with
//! every request until it expires, and checking its signature again costs
//! 50-250 µs (EdDSA, RSA, ECDSA) where a lookup costs about one. Entries are
//! keyed by the token's SHA-256, hold its claims and its time window, and
//! count only for the key set that verified them: a refresh that swaps the
//! keys (a rotated-out kid) empties the cache in effect. Refused tokens are
//! never remembered; they take the full path each time.

use std::collections::HashMap;
use std::sync::Mutex;

use super::Claims;

/// Shards, each behind its own lock, so requests on many cores rarely meet.
const SHARDS: usize = 16;
/// Entries per shard: 4096 tokens in all.
const PER_SHARD: usize = 256;

/// A token's SHA-256.
pub(super) type Digest = [u8; 32];

struct Entry {
    claims: Claims,
    /// `exp` and `nbf` (0 without one), seconds since the epoch.
    exp: u64,
    nbf: u64,
    /// The key set it was verified with.
    generation: u64,
}

/// Verified tokens by digest.
pub(super) struct TokenCache {
    shards: [Mutex<HashMap<Digest, Entry>>; SHARDS],
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }
}

impl TokenCache {
    fn shard(&self, digest: &Digest) -> &Mutex<HashMap<Digest, Entry>> {
        &self.shards[digest[0] as usize % SHARDS]
    }

    /// The claims of a token verified with key set `generation` that is
    /// still within its time window at `now` (with `leeway`); `None` sends
    /// it down the full path, which also gives the reason for a refusal.
    pub fn get(&self, digest: &Digest, generation: u64, now: u64, leeway: u64) -> Option<Claims> {
        let shard = self.shard(digest).lock().ok()?;
        let e = shard.get(digest)?;
        let live = e.generation == generation
            && e.exp >= now.saturating_sub(leeway)
            && e.nbf <= now.saturating_add(leeway);
        live.then(|| e.claims.clone())
    }

    /// Remembers a token the full path accepted. A full shard first drops
    /// entries of expired tokens or older key sets, then any one entry.
    pub fn insert(
        &self,
        digest: Digest,
        claims: Claims,
        exp: u64,
        nbf: u64,
        generation: u64,
        now: u64,
    ) {
        let Ok(mut shard) = self.shard(&digest).lock() else {
            return;
        };
        if shard.len() >= PER_SHARD && !shard.contains_key(&digest) {
            shard.retain(|_, e| e.generation == generation && e.exp >= now);
            if shard.len() >= PER_SHARD
                && let Some(k) = shard.keys().next().copied()
            {
                shard.remove(&k);
            }
        }
        shard.insert(
            digest,
            Entry {
                claims,
                exp,
                nbf,
                generation,
            },
        );
    }

    /// Entries held (tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}
