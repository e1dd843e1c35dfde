//! The durable side of the bus: one sled tree (`bus`) holding every
//! subscription's pending messages, delivery attempts, dead letters and the
//! dedup index, so that each step is one atomic batch on one tree.
//!
//! Keys (the subscription id and topic are length-prefixed, so no two
//! subscriptions' keys can collide; `seq` is big-endian, so a prefix scan
//! returns a subscription's messages in publish order):
//!
//! | key | value | meaning |
//! | --- | --- | --- |
//! | `S` sub seq | [`StoredMessage`] | waiting to be handled by `sub` |
//! | `A` sub seq | [`Attempt`] | deliveries started (written before each) |
//! | `D` sub seq | [`DeadRecord`] | dead-lettered in `sub` |
//! | `I` topic id | ms | dedup: id published at |
//!
//! A message published to a topic gets one `S` entry per subscription (the
//! payload is copied per subscription: acknowledging is then one removal with
//! no reference counting, and fan-out is small in practice).

use serde::{Deserialize, Serialize};

use super::BusError;
use crate::kv::WriteTracker;

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Message id.
    pub id: String,
    /// Topic.
    pub topic: String,
    /// Partition key.
    pub key: Option<String>,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Publish time, ms since the Unix epoch.
    pub published_at_ms: u64,
    /// Body.
    pub payload: Vec<u8>,
    /// The host made up the id (so no publisher can repeat it, and it needs
    /// no dedup record). Not stored.
    #[serde(skip)]
    pub assigned_id: bool,
}

/// The first fields of a [`StoredMessage`], in the same order, for reading
/// the partition key without decoding (and copying) the payload. (postcard
/// is not self-describing, so the skipped fields are read, not ignored.)
#[derive(Deserialize)]
struct StoredHead {
    _id: String,
    _topic: String,
    key: Option<String>,
}

/// Deliveries started for a pending message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// How many deliveries began.
    pub started: u32,
    /// How the last finished one failed.
    pub last_error: Option<String>,
}

/// A dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadRecord {
    /// Why it died.
    pub reason: String,
    /// Deliveries made.
    pub attempts: u32,
    /// The last delivery's error.
    pub last_error: Option<String>,
    /// When it died, ms since the Unix epoch.
    pub dead_at_ms: u64,
    /// The message.
    pub message: StoredMessage,
}

/// A pending message as loaded at start: what the scheduler needs, not the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRef {
    /// Log position.
    pub seq: u64,
    /// Partition key.
    pub key: Option<String>,
    /// Deliveries started before.
    pub attempt: Attempt,
}

/// A new pending entry: `message` waiting in each of `subscriptions`.
pub struct NewEntry<'a> {
    /// Log position.
    pub seq: u64,
    /// Subscription ids.
    pub subscriptions: &'a [std::sync::Arc<str>],
    /// The message.
    pub message: &'a StoredMessage,
    /// The message, encoded once for every subscription.
    encoded: Vec<u8>,
}

impl<'a> NewEntry<'a> {
    /// An entry for `message` at `seq` in each of `subscriptions`.
    pub fn new(
        seq: u64,
        subscriptions: &'a [std::sync::Arc<str>],
        message: &'a StoredMessage,
    ) -> Result<Self, BusError> {
        Ok(NewEntry {
            seq,
            subscriptions,
            message,
            encoded: encode(message)?,
        })
    }

    /// The key-value pairs this entry writes: one pending entry per
    /// subscription, and a dedup record unless the host made up the id.
    fn writes(&self, mut write: impl FnMut(Vec<u8>, &[u8])) {
        for sub in self.subscriptions {
            write(entry_key(PENDING, sub, self.seq), &self.encoded);
        }
        if !self.message.assigned_id {
            write(
                dedup_key(&self.message.topic, &self.message.id),
                &self.message.published_at_ms.to_be_bytes(),
            );
        }
    }
}

const PENDING: u8 = b'S';
const ATTEMPT: u8 = b'A';
const DEAD: u8 = b'D';
const DEDUP: u8 = b'I';

fn prefix(kind: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + name.len() + 8);
    k.push(kind);
    k.extend_from_slice(&(name.len() as u16).to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

fn entry_key(kind: u8, sub: &str, seq: u64) -> Vec<u8> {
    let mut k = prefix(kind, sub);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn dedup_key(topic: &str, id: &str) -> Vec<u8> {
    let mut k = prefix(DEDUP, topic);
    k.extend_from_slice(id.as_bytes());
    k
}

fn seq_of(key: &[u8]) -> u64 {
    let tail: [u8; 8] = key[key.len() - 8..].try_into().unwrap_or([0; 8]);
    u64::from_be_bytes(tail)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, BusError> {
    postcard::to_allocvec(value).map_err(BusError::storage)
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, BusError> {
    postcard::from_bytes(bytes).map_err(BusError::storage)
}

/// Writes that must land together (inserts, or removals when `None`).
#[derive(Debug, Default)]
pub struct Batch(Vec<(Vec<u8>, Option<Vec<u8>>)>);

impl Batch {
    /// Sets a key.
    pub fn insert(&mut self, key: Vec<u8>, value: impl Into<Vec<u8>>) {
        self.0.push((key, Some(value.into())));
    }

    /// Removes a key.
    pub fn remove(&mut self, key: Vec<u8>) {
        self.0.push((key, None));
    }
}

/// The bus's tree in the host's sled database.
#[derive(Clone)]
pub struct Log {
    db: sled::Db,
    tree: sled::Tree,
    writes: WriteTracker,
}

impl Log {
    /// Opens the `bus` tree; `writes` counts writes for the shared group commit.
    pub fn open(db: &sled::Db, writes: WriteTracker) -> anyhow::Result<Log> {
        let tree = db.open_tree("bus")?;
        Ok(Log {
            db: db.clone(),
            tree,
            writes,
        })
    }

    /// The tree (for transactions that span it and a key-value tree).
    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// A new log position, increasing across restarts.
    pub fn next_seq(&self) -> Result<u64, BusError> {
        self.db.generate_id().map_err(BusError::storage)
    }

    /// The write tracker of the shared group commit.
    pub fn writes(&self) -> &WriteTracker {
        &self.writes
    }

    /// Adds new entries (and their dedup records) to `batch`.
    pub fn stage_entries(batch: &mut Batch, entries: &[NewEntry<'_>]) {
        for e in entries {
            e.writes(|k, v| batch.insert(k, v));
        }
    }

    /// Applies a batch atomically. sled 0.34's `apply_batch` takes a
    /// process-wide exclusive lock and starts a new log buffer (one more
    /// `sync_file_range`) every time, so the hot paths (publish, ack) use
    /// [`Log::write_entries`] and [`Log::ack`] instead; batches are for the
    /// rare steps (dead letter, replay).
    pub fn apply(&self, batch: Batch) -> Result<(), BusError> {
        if batch.0.is_empty() {
            return Ok(());
        }
        let mut b = sled::Batch::default();
        for (k, v) in batch.0 {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.writes.note_write();
        self.tree.apply_batch(b).map_err(BusError::storage)
    }

    /// Writes new entries with plain inserts, in order: every subscription's
    /// pending entry, then the dedup record. sled recovers a prefix of its
    /// log after a crash (recovery stops at the first missing or torn
    /// buffer), so a dedup record never survives without its entries, and
    /// nothing here is acknowledged before the flush that covers all of it.
    pub fn write_entries(&self, entries: &[NewEntry<'_>]) -> Result<(), BusError> {
        for e in entries {
            let mut result = Ok(());
            e.writes(|k, v| {
                if result.is_ok() {
                    self.writes.note_write();
                    result = self.tree.insert(k, v).map(drop);
                }
            });
            result.map_err(BusError::storage)?;
        }
        Ok(())
    }

    /// Adds the removal of a handled message to `batch`.
    pub fn stage_ack(batch: &mut Batch, sub: &str, seq: u64) {
        batch.remove(entry_key(PENDING, sub, seq));
        batch.remove(entry_key(ATTEMPT, sub, seq));
    }

    /// Acknowledges a handled message with two plain removals, no batch:
    /// the attempt record first, so a crash between the two leaves the
    /// message pending (redelivered, its count reset), never an orphan record.
    pub fn ack(&self, sub: &str, seq: u64) -> Result<(), BusError> {
        self.writes.note_write();
        self.tree
            .remove(entry_key(ATTEMPT, sub, seq))
            .map_err(BusError::storage)?;
        self.tree
            .remove(entry_key(PENDING, sub, seq))
            .map_err(BusError::storage)?;
        Ok(())
    }

    /// When a message id was published on a topic, if it is remembered.
    pub fn dedup_time(&self, topic: &str, id: &str) -> Result<Option<u64>, BusError> {
        Ok(self
            .tree
            .get(dedup_key(topic, id))
            .map_err(BusError::storage)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    /// When a message id was published on a topic, if it is remembered (inside a sled transaction).
    pub fn dedup_time_in(
        tree: &sled::transaction::TransactionalTree,
        topic: &str,
        id: &str,
    ) -> Result<Option<u64>, sled::transaction::UnabortableTransactionError> {
        Ok(tree
            .get(dedup_key(topic, id))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    /// Writes new entries inside a sled transaction.
    pub fn insert_entries_in<'e>(
        tree: &sled::transaction::TransactionalTree,
        entries: impl IntoIterator<Item = &'e NewEntry<'e>>,
    ) -> Result<(), sled::transaction::UnabortableTransactionError> {
        for e in entries {
            let mut result = Ok(());
            e.writes(|k, v| {
                if result.is_ok() {
                    result = tree.insert(k, v).map(drop);
                }
            });
            result?;
        }
        Ok(())
    }

    /// Every pending message of a subscription, in publish order.
    pub fn load(&self, sub: &str) -> Result<Vec<PendingRef>, BusError> {
        let mut attempts = std::collections::HashMap::new();
        for kv in self.tree.scan_prefix(prefix(ATTEMPT, sub)) {
            let (k, v) = kv.map_err(BusError::storage)?;
            attempts.insert(seq_of(&k), decode::<Attempt>(&v)?);
        }
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(prefix(PENDING, sub)) {
            let (k, v) = kv.map_err(BusError::storage)?;
            let seq = seq_of(&k);
            // Only the leading fields: the payload is not copied at start.
            let (head, _rest): (StoredHead, _) =
                postcard::take_from_bytes(&v).map_err(BusError::storage)?;
            out.push(PendingRef {
                seq,
                key: head.key,
                attempt: attempts.remove(&seq).unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// The subscriptions that have pending messages or dead letters stored
    /// (one seek per subscription, not a scan of every message).
    pub fn stored_subscriptions(&self) -> Result<std::collections::BTreeSet<String>, BusError> {
        let mut names = std::collections::BTreeSet::new();
        for kind in [PENDING, DEAD] {
            let mut from = vec![kind];
            while let Some(kv) = self.tree.range(from.clone()..).next() {
                let (k, _) = kv.map_err(BusError::storage)?;
                if k.first() != Some(&kind) || k.len() < 3 {
                    break;
                }
                let len = u16::from_be_bytes([k[1], k[2]]) as usize;
                let Some(name) = k.get(3..3 + len) else { break };
                names.insert(String::from_utf8_lossy(name).into_owned());
                // Past every key of this subscription: its prefix, then seq > u64::MAX.
                from = k[..3 + len].to_vec();
                from.extend_from_slice(&[0xff; 9]);
            }
        }
        Ok(names)
    }

    /// A pending message's content, if it is still pending.
    pub fn read(&self, sub: &str, seq: u64) -> Result<Option<StoredMessage>, BusError> {
        match self
            .tree
            .get(entry_key(PENDING, sub, seq))
            .map_err(BusError::storage)?
        {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Records that a delivery is starting (not waited on: after a crash the
    /// count may be one low, never high).
    pub fn begin_attempt(&self, sub: &str, seq: u64, attempt: &Attempt) -> Result<(), BusError> {
        self.writes.note_write();
        self.tree
            .insert(entry_key(ATTEMPT, sub, seq), encode(attempt)?)
            .map_err(BusError::storage)?;
        Ok(())
    }

    /// Adds moving a pending message to the dead letters to `batch`.
    pub fn stage_dead(
        batch: &mut Batch,
        sub: &str,
        seq: u64,
        record: &DeadRecord,
    ) -> Result<(), BusError> {
        Self::stage_ack(batch, sub, seq);
        batch.insert(entry_key(DEAD, sub, seq), encode(record)?);
        Ok(())
    }

    /// Up to `limit` dead letters of a subscription, oldest first.
    pub fn dead_letters(
        &self,
        sub: &str,
        limit: usize,
    ) -> Result<Vec<(u64, DeadRecord)>, BusError> {
        self.tree
            .scan_prefix(prefix(DEAD, sub))
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(BusError::storage)?;
                Ok((seq_of(&k), decode(&v)?))
            })
            .collect()
    }

    /// How many dead letters a subscription holds.
    pub fn count_dead(&self, sub: &str) -> Result<u64, BusError> {
        let mut n = 0;
        for k in self.tree.scan_prefix(prefix(DEAD, sub)).keys() {
            k.map_err(BusError::storage)?;
            n += 1;
        }
        Ok(n)
    }

    /// Moves dead letters (all, or those whose id is in `ids`) back to
    /// pending with a fresh attempt count. Returns what moved.
    pub fn replay(&self, sub: &str, ids: Option<&[String]>) -> Result<Vec<PendingRef>, BusError> {
        let mut moved = Vec::new();
        let mut batch = Batch::default();
        for kv in self.tree.scan_prefix(prefix(DEAD, sub)) {
            let (k, v) = kv.map_err(BusError::storage)?;
            let record: DeadRecord = decode(&v)?;
            if ids.is_some_and(|ids| !ids.contains(&record.message.id)) {
                continue;
            }
            let seq = seq_of(&k);
            batch.remove(k.to_vec());
            batch.insert(entry_key(PENDING, sub, seq), encode(&record.message)?);
            moved.push(PendingRef {
                seq,
                key: record.message.key,
                attempt: Attempt::default(),
            });
        }
        self.apply(batch)?;
        Ok(moved)
    }

    /// Forgets dedup records older than each topic's window.
    pub fn sweep_dedup(
        &self,
        window_ms: impl Fn(&str) -> u64,
        now_ms: u64,
    ) -> Result<usize, BusError> {
        let mut n = 0;
        for kv in self.tree.scan_prefix([DEDUP]) {
            let (k, v) = kv.map_err(BusError::storage)?;
            let len = k
                .get(1..3)
                .map_or(0, |l| u16::from_be_bytes([l[0], l[1]]) as usize);
            let topic = k
                .get(3..3 + len)
                .and_then(|t| std::str::from_utf8(t).ok())
                .unwrap_or("");
            let at = v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            if now_ms.saturating_sub(at) > window_ms(topic) {
                // Only if unchanged: the id may have been published again since the scan.
                self.writes.note_write();
                let swapped = self
                    .tree
                    .compare_and_swap(&k, Some(&v), None as Option<&[u8]>)
                    .map_err(BusError::storage)?;
                if swapped.is_ok() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn log() -> Log {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let gc = crate::kv::GroupCommit::start("test", Box::new(|| Ok(()))).unwrap();
        Log::open(&db, gc.tracker()).unwrap()
    }

    fn msg(id: &str, key: Option<&str>) -> StoredMessage {
        StoredMessage {
            id: id.into(),
            topic: "t".into(),
            key: key.map(Into::into),
            headers: vec![("h".into(), "v".into())],
            published_at_ms: 1000,
            payload: b"body".to_vec(),
            assigned_id: false,
        }
    }

    #[test]
    fn entries_fan_out_and_ack_independently() {
        let log = log();
        let subs: Vec<Arc<str>> = vec!["t/a".into(), "t/b".into()];
        let m = msg("m1", Some("k"));
        let mut batch = Batch::default();
        Log::stage_entries(&mut batch, &[NewEntry::new(7, &subs, &m).unwrap()]);
        log.apply(batch).unwrap();
        assert_eq!(log.read("t/a", 7).unwrap().unwrap(), m);
        assert_eq!(log.dedup_time("t", "m1").unwrap(), Some(1000));
        let mut ack = Batch::default();
        Log::stage_ack(&mut ack, "t/a", 7);
        log.apply(ack).unwrap();
        assert!(log.read("t/a", 7).unwrap().is_none());
        let b = log.load("t/b").unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].key.as_deref(), Some("k"));
        // A subscription whose name is a prefix of another's sees only its own.
        assert!(log.load("t/").unwrap().is_empty());
    }

    #[test]
    fn attempts_dead_letters_and_replay() {
        let log = log();
        let subs: Vec<Arc<str>> = vec!["t/a".into()];
        for (seq, id) in [(1, "x"), (2, "y")] {
            let m = msg(id, None);
            let mut batch = Batch::default();
            Log::stage_entries(&mut batch, &[NewEntry::new(seq, &subs, &m).unwrap()]);
            log.apply(batch).unwrap();
        }
        let a = Attempt {
            started: 3,
            last_error: Some("trap".into()),
        };
        log.begin_attempt("t/a", 1, &a).unwrap();
        assert_eq!(log.load("t/a").unwrap()[0].attempt, a);
        let record = DeadRecord {
            reason: "max".into(),
            attempts: 3,
            last_error: None,
            dead_at_ms: 5,
            message: log.read("t/a", 1).unwrap().unwrap(),
        };
        let mut batch = Batch::default();
        Log::stage_dead(&mut batch, "t/a", 1, &record).unwrap();
        log.apply(batch).unwrap();
        assert!(log.read("t/a", 1).unwrap().is_none());
        assert_eq!(log.count_dead("t/a").unwrap(), 1);
        assert_eq!(log.load("t/a").unwrap().len(), 1);
        let moved = log.replay("t/a", Some(&["nope".to_string()])).unwrap();
        assert!(moved.is_empty());
        let moved = log.replay("t/a", None).unwrap();
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].attempt, Attempt::default());
        assert_eq!(log.count_dead("t/a").unwrap(), 0);
        let seqs: Vec<u64> = log.load("t/a").unwrap().iter().map(|p| p.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
    }

    #[test]
    fn stored_subscriptions_are_found_by_seeking() {
        let log = log();
        let subs: Vec<Arc<str>> = vec!["t/a".into(), "t/b".into(), "u/c".into()];
        let mut batch = Batch::default();
        for seq in 1..50 {
            let m = msg(&format!("m{seq}"), None);
            Log::stage_entries(&mut batch, &[NewEntry::new(seq, &subs, &m).unwrap()]);
        }
        log.apply(batch).unwrap();
        let names: Vec<String> = log.stored_subscriptions().unwrap().into_iter().collect();
        assert_eq!(names, vec!["t/a", "t/b", "u/c"]);
    }

    #[test]
    fn dedup_sweep_keeps_recent_ids() {
        let log = log();
        let subs: Vec<Arc<str>> = vec![];
        let mut m = msg("old", None);
        let mut batch = Batch::default();
        Log::stage_entries(&mut batch, &[NewEntry::new(1, &subs, &m).unwrap()]);
        m.id = "new".into();
        m.published_at_ms = 9_000;
        Log::stage_entries(&mut batch, &[NewEntry::new(2, &subs, &m).unwrap()]);
        log.apply(batch).unwrap();
        assert_eq!(log.sweep_dedup(|_| 5_000, 10_000).unwrap(), 1);
        assert_eq!(log.dedup_time("t", "old").unwrap(), None);
        assert_eq!(log.dedup_time("t", "new").unwrap(), Some(9_000));
    }
}
