//! One subscription's in-memory schedule: which pending message goes next.
//!
//! Messages without a partition key go in publish order, as many at once as
//! the prefetch allows. Messages with a key form one FIFO per key, and a key
//! is *held* while one of its messages is in flight or waiting to be retried,
//! so the next message of that key waits: per-key order survives retries.
//! Only the front of each unheld key competes, so picking the next message is
//! O(log n) however long one key's backlog is.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::log::Attempt;

/// A pending message as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Partition key.
    pub key: Option<Arc<str>>,
    /// Deliveries started so far, and the last error.
    pub attempt: Attempt,
}

/// The schedule.
#[derive(Debug, Default)]
pub struct Queue {
    /// Unkeyed messages ready to go, by seq.
    unkeyed: BTreeMap<u64, Entry>,
    /// Each key's messages in seq order.
    keyed: HashMap<Arc<str>, VecDeque<(u64, Entry)>>,
    /// The front seq of every key that is not held.
    heads: BTreeMap<u64, Arc<str>>,
    /// Keys with a message in flight or delayed.
    held: HashSet<Arc<str>>,
    /// Messages waiting for their retry time.
    delayed: BTreeMap<(Instant, u64), Entry>,
    in_flight: usize,
    len: usize,
}

impl Queue {
    /// Adds a pending message.
    pub fn push(&mut self, seq: u64, entry: Entry) {
        self.len += 1;
        let Some(key) = entry.key.clone() else {
            self.unkeyed.insert(seq, entry);
            return;
        };
        let q = self.keyed.entry(key.clone()).or_default();
        // Concurrent publishers may enqueue out of seq order: keep each key sorted.
        let at = q.partition_point(|(s, _)| *s < seq);
        q.insert(at, (seq, entry));
        if at == 0 && !self.held.contains(&key) {
            if let Some((old, _)) = q.get(1) {
                self.heads.remove(old);
            }
            self.heads.insert(seq, key);
        }
    }

    /// Takes the next message to deliver, if one may go now.
    pub fn pop(&mut self) -> Option<(u64, Entry)> {
        let unkeyed = self.unkeyed.first_key_value().map(|(s, _)| *s);
        let keyed = self.heads.first_key_value().map(|(s, _)| *s);
        let (seq, entry) = match (unkeyed, keyed) {
            (Some(u), Some(k)) if u < k => self.unkeyed.pop_first()?,
            (Some(_), None) => self.unkeyed.pop_first()?,
            (_, Some(_)) => {
                let (_, key) = self.heads.pop_first()?;
                let q = self.keyed.get_mut(&key)?;
                let front = q.pop_front()?;
                self.held.insert(key);
                front
            }
            (None, None) => return None,
        };
        self.in_flight += 1;
        Some((seq, entry))
    }

    /// A delivery ended for good (acked or dead-lettered): release its key.
    pub fn done(&mut self, entry: &Entry) {
        self.in_flight -= 1;
        self.len -= 1;
        if let Some(key) = &entry.key {
            self.release(key);
        }
    }

    /// A delivery ended and the message should go again at `due`; its key
    /// stays held until then.
    pub fn retry_at(&mut self, seq: u64, entry: Entry, due: Instant) {
        self.in_flight -= 1;
        self.delayed.insert((due, seq), entry);
    }

    /// Moves retries whose time has come back to the front of their key.
    pub fn release_due(&mut self, now: Instant) {
        while let Some(first) = self.delayed.first_entry() {
            if first.key().0 > now {
                break;
            }
            let ((_, seq), entry) = first.remove_entry();
            match entry.key.clone() {
                None => {
                    self.unkeyed.insert(seq, entry);
                }
                Some(key) => {
                    self.keyed
                        .entry(key.clone())
                        .or_default()
                        .push_front((seq, entry));
                    self.held.remove(&key);
                    self.heads.insert(seq, key);
                }
            }
        }
    }

    fn release(&mut self, key: &Arc<str>) {
        self.held.remove(key);
        match self.keyed.get(key).and_then(|q| q.front()) {
            Some((seq, _)) => {
                self.heads.insert(*seq, key.clone());
            }
            None => {
                self.keyed.remove(key);
            }
        }
    }

    /// When the earliest retry is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.delayed.first_key_value().map(|((t, _), _)| *t)
    }

    /// Deliveries running.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Messages waiting for a retry time.
    pub fn retrying(&self) -> usize {
        self.delayed.len()
    }

    /// Every message not yet acked or dead-lettered (waiting, delayed or in flight).
    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn e(key: Option<&str>) -> Entry {
        Entry {
            key: key.map(Arc::from),
            attempt: Attempt::default(),
        }
    }

    #[test]
    fn unkeyed_in_seq_order_and_concurrent() {
        let mut q = Queue::default();
        q.push(2, e(None));
        q.push(1, e(None));
        assert_eq!(q.pop().unwrap().0, 1);
        assert_eq!(q.pop().unwrap().0, 2);
        assert_eq!(q.in_flight(), 2);
        assert!(q.pop().is_none());
    }

    #[test]
    fn one_message_per_key_at_a_time() {
        let mut q = Queue::default();
        for (seq, key) in [(1, "a"), (2, "a"), (3, "b"), (4, "a")] {
            q.push(seq, e(Some(key)));
        }
        let (s1, e1) = q.pop().unwrap();
        let (s3, _) = q.pop().unwrap();
        assert_eq!((s1, s3), (1, 3));
        assert!(q.pop().is_none(), "a and b are both held");
        q.done(&e1);
        assert_eq!(q.pop().unwrap().0, 2);
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn a_retry_keeps_its_key_held_and_goes_first() {
        let mut q = Queue::default();
        q.push(1, e(Some("a")));
        q.push(2, e(Some("a")));
        q.push(3, e(None));
        let (s, entry) = q.pop().unwrap();
        assert_eq!(s, 1);
        let now = Instant::now();
        q.retry_at(1, entry, now + Duration::from_secs(1));
        // 2 must wait behind 1's retry; 3 has no key.
        assert_eq!(q.pop().unwrap().0, 3);
        assert!(q.pop().is_none());
        assert_eq!(q.next_due(), Some(now + Duration::from_secs(1)));
        q.release_due(now);
        assert!(q.pop().is_none(), "not due yet");
        q.release_due(now + Duration::from_secs(2));
        assert_eq!(q.pop().unwrap().0, 1);
        assert_eq!(q.retrying(), 0);
    }

    #[test]
    fn out_of_order_arrival_is_sorted_per_key() {
        let mut q = Queue::default();
        q.push(5, e(Some("k")));
        q.push(3, e(Some("k")));
        let (s, entry) = q.pop().unwrap();
        assert_eq!(s, 3);
        q.done(&entry);
        assert_eq!(q.pop().unwrap().0, 5);
    }
}
