//! The message bus: durable topics and queues with acknowledgement, retries
//! with backoff, dead letters, deduplication and a transactional outbox.
//!
//! - **Storage** ([`log`]): one sled tree in the host's database, written in
//!   atomic batches and made durable by the same group commit as key-value.
//!   A publish returns once its batch is durable; a guest's publishes are
//!   stored when its invocation ends well (see [`binding`]).
//! - **Topics and subscriptions** come from atoll.toml. Each subscription
//!   (`topic/group`) gets its own copy of every message published to its
//!   topic; the components of a group compete for them.
//! - **Delivery** ([`subscription`]): one scheduler task per subscription
//!   keeps up to `prefetch` deliveries in flight, each in a fresh instance;
//!   the handler's disposition (or a trap or deadline) decides ack, retry
//!   with exponential backoff and jitter, or dead letter.
//! - **Ordering** ([`queue`]): messages sharing a partition key are handled
//!   one at a time in publish order, per subscription, through retries too.
//!
//! Crash safety: every step is one atomic batch, and a message leaves a
//! subscription's pending set only in the batch that acks or dead-letters it,
//! so a crash between steps means a redelivery (at least once), never a loss
//! and never a second ack. The delivery count is written before each delivery,
//! so a message that keeps crashing the host still reaches its dead letters.

mod binding;
mod log;
mod queue;
mod subscription;
mod types;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

pub use binding::{BusGrant, BusState, BusView, MAX_STAGED, Transaction, add_to_linker};
pub use log::StoredMessage;
pub use types::*;

use crate::config::Manifest;
use crate::kv::SledBackend;
use crate::policy::TopicPolicy;
use crate::registry::Registry;
use log::{Log, NewEntry};
use subscription::Subscription;

/// Most headers on one message.
pub const MAX_HEADERS: usize = 64;
/// Longest header name, in bytes.
pub const MAX_HEADER_NAME: usize = 256;
/// Longest header value, in bytes.
pub const MAX_HEADER_VALUE: usize = 8 * 1024;
/// Most bytes of header names and values on one message.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Longest message id, in bytes.
pub const MAX_ID: usize = 256;
/// Longest partition key, in bytes.
pub const MAX_KEY: usize = 1024;
/// How often expired dedup records are swept.
const DEDUP_SWEEP: Duration = Duration::from_secs(30);

/// (topic, group) -> its consumers (in manifest order) and settings.
type Groups = BTreeMap<(String, String), (Vec<Arc<str>>, crate::config::SubscriptionSettings)>;

struct Topic {
    max_payload: u64,
    dedup_window: Duration,
    subscriptions: Vec<Arc<Subscription>>,
    /// Subscription ids, in the order entries are written.
    sub_ids: Vec<Arc<str>>,
    published: AtomicU64,
    duplicates: AtomicU64,
}

/// The bus: topics, subscriptions, the durable log and delivery.
pub struct Bus {
    log: Log,
    storage: Arc<SledBackend>,
    topics: BTreeMap<String, Topic>,
    policy: TopicPolicy,
    /// Serializes the dedup check and insert of one id (striped by hash).
    dedup_locks: Box<[Arc<tokio::sync::Mutex<()>>]>,
    /// Weak: the registry's components hold the bus (through their grants).
    registry: OnceLock<Weak<Registry>>,
    stop: watch::Sender<bool>,
    /// The scheduler and sweeper tasks (they hold the bus until they end).
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn new_id() -> String {
    format!("{:012x}-{:016x}", now_ms(), fastrand::u64(..))
}

impl Bus {
    /// Opens the bus of a manifest in the host's database and loads every
    /// subscription's pending messages. Nothing is delivered until [`Bus::start`].
    pub fn open(manifest: &Manifest, storage: Arc<SledBackend>) -> anyhow::Result<Arc<Bus>> {
        let log = Log::open(storage.db(), storage.tracker())?;
        // (topic, group) -> consumers, in manifest order.
        let mut groups: Groups = BTreeMap::new();
        for c in manifest.components.values() {
            for s in &c.subscriptions {
                groups
                    .entry((s.topic.clone(), s.group.clone()))
                    .or_insert_with(|| (Vec::new(), s.settings.clone()))
                    .0
                    .push(Arc::from(c.name.as_str()));
            }
        }
        let (stop, _) = watch::channel(false);
        let mut topics = BTreeMap::new();
        for (name, spec) in &manifest.topics {
            let mut subscriptions = Vec::new();
            for ((topic, group), (consumers, settings)) in &groups {
                if topic != name {
                    continue;
                }
                let sub = Subscription::new(topic, group, consumers.clone(), settings.clone());
                let pending = log
                    .load(&sub.id)
                    .map_err(|e| anyhow::anyhow!("loading subscription `{}`: {e}", sub.id))?;
                let dead = log
                    .count_dead(&sub.id)
                    .map_err(|e| anyhow::anyhow!("loading subscription `{}`: {e}", sub.id))?;
                sub.restore(pending, dead);
                subscriptions.push(Arc::new(sub));
            }
            topics.insert(
                name.clone(),
                Topic {
                    max_payload: spec.max_payload,
                    dedup_window: spec.dedup_window,
                    sub_ids: subscriptions.iter().map(|s| s.id.clone()).collect(),
                    subscriptions,
                    published: AtomicU64::new(0),
                    duplicates: AtomicU64::new(0),
                },
            );
        }
        let known: Vec<&str> = topics
            .values()
            .flat_map(|t: &Topic| t.sub_ids.iter().map(|s| &**s))
            .collect();
        for orphan in log
            .stored_subscriptions()
            .map_err(|e| anyhow::anyhow!("reading the bus: {e}"))?
        {
            if !known.contains(&orphan.as_str()) {
                tracing::warn!(
                    subscription = %orphan,
                    "messages are stored for a subscription that atoll.toml no longer declares; they stay stored and are delivered if it comes back"
                );
            }
        }
        for c in manifest.components.values() {
            for sub in &c.subscriptions {
                if let Some(dlt) = &sub.settings.dead_letter_topic
                    && topics
                        .get(dlt)
                        .is_some_and(|t: &Topic| t.subscriptions.is_empty())
                {
                    tracing::warn!(
                        topic = %dlt,
                        "dead letters are forwarded to a topic nobody subscribes to; they stay in `atoll bus dlq` only"
                    );
                }
            }
        }
        let policy = TopicPolicy::new(
            manifest
                .components
                .values()
                .map(|c| (c.name.as_str(), c.publishes.as_slice())),
        );
        Ok(Arc::new(Bus {
            log,
            storage,
            topics,
            policy,
            dedup_locks: (0..64).map(|_| Arc::default()).collect(),
            registry: OnceLock::new(),
            stop,
            tasks: Mutex::new(Vec::new()),
        }))
    }

    /// Starts delivering to the components in `registry`.
    pub fn start(self: &Arc<Self>, registry: Arc<Registry>) {
        if self.registry.set(Arc::downgrade(&registry)).is_err() {
            return;
        }
        for topic in self.topics.values() {
            for sub in &topic.subscriptions {
                let pending = sub.depth();
                if pending > 0 {
                    tracing::info!(subscription = %sub.id, pending, "resuming delivery");
                }
                let task = tokio::spawn(sub.clone().run(self.clone(), self.stop.subscribe()));
                self.tasks().push(task);
            }
        }
        let bus = Arc::downgrade(self);
        let mut stop = self.stop.subscribe();
        let sweeper = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(DEDUP_SWEEP) => {}
                    _ = stop.changed() => return,
                }
                let Some(bus) = bus.upgrade() else { return };
                let b = bus.clone();
                let swept = tokio::task::spawn_blocking(move || {
                    b.log.sweep_dedup(|t| b.dedup_window_ms(t), now_ms())
                })
                .await;
                if let Ok(Err(e)) = swept {
                    tracing::warn!(error = %e, "sweeping the dedup index failed");
                }
            }
        });
        self.tasks().push(sweeper);
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, Vec<tokio::task::JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops dispatching and waits (up to `grace`) for deliveries in flight.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send(true);
        let until = tokio::time::Instant::now() + grace;
        while self.subscriptions().any(|s| s.in_flight() > 0) {
            if tokio::time::Instant::now() >= until {
                tracing::warn!("bus deliveries still running after the shutdown grace period");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let tasks = std::mem::take(&mut *self.tasks());
        for task in tasks {
            let _ = task.await;
        }
    }

    fn subscriptions(&self) -> impl Iterator<Item = &Arc<Subscription>> {
        self.topics.values().flat_map(|t| t.subscriptions.iter())
    }

    fn dedup_window_ms(&self, topic: &str) -> u64 {
        self.topics
            .get(topic)
            .map_or(0, |t| t.dedup_window.as_millis() as u64)
    }

    fn registry(&self) -> Option<Arc<Registry>> {
        self.registry.get()?.upgrade()
    }

    /// Checks a message and turns it into what is stored (assigning its id and
    /// time, and adding `traceparent` when the publisher runs in a trace).
    pub fn prepare(
        &self,
        origin: Origin<'_>,
        message: Outgoing,
        traceparent: Option<&str>,
    ) -> Result<StoredMessage, BusError> {
        let Some(topic) = self.topics.get(&message.topic) else {
            let name: String = message.topic.chars().take(128).collect();
            return Err(BusError::UnknownTopic(format!(
                "topic `{name}` is not declared; declare it as `[topics.\"{name}\"]` in atoll.toml"
            )));
        };
        if let Origin::Component(c) = origin {
            self.policy
                .check_publish(c, &message.topic)
                .map_err(BusError::AccessDenied)?;
        }
        if message.payload.len() as u64 > topic.max_payload {
            return Err(BusError::TooLarge(format!(
                "payload is {} bytes; topic `{}` accepts at most {} (max_payload)",
                message.payload.len(),
                message.topic,
                topic.max_payload
            )));
        }
        let mut headers = message.headers;
        check_headers(&headers)?;
        if let Some(tp) = traceparent
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
        {
            headers.push(("traceparent".into(), tp.to_string()));
        }
        let assigned_id = message.id.is_none();
        let id = match message.id {
            Some(id) => {
                check_text("message id", &id, MAX_ID)?;
                id
            }
            None => new_id(),
        };
        if let Some(k) = &message.partition_key {
            check_text("partition key", k, MAX_KEY)?;
        }
        Ok(StoredMessage {
            id,
            topic: message.topic,
            key: message.partition_key,
            headers,
            published_at_ms: now_ms(),
            payload: message.payload,
            assigned_id,
        })
    }

    /// Publishes messages; returns once they are durable.
    pub async fn publish(
        self: &Arc<Self>,
        origin: Origin<'_>,
        messages: Vec<Outgoing>,
    ) -> Result<Vec<Published>, BusError> {
        let prepared = messages
            .into_iter()
            .map(|m| self.prepare(origin, m, None))
            .collect::<Result<Vec<_>, _>>()?;
        self.store(prepared, None).await
    }

    /// Stores prepared messages (and, in the same atomic batch, the ack of
    /// the delivery that published them), waits until durable, then hands
    /// them to their subscriptions. It runs as its own task: a caller that
    /// goes away (a client disconnecting, a guest running out of time)
    /// cannot leave messages stored but never handed over.
    pub async fn store(
        self: &Arc<Self>,
        messages: Vec<StoredMessage>,
        ack: Option<(Arc<str>, u64)>,
    ) -> Result<Vec<Published>, BusError> {
        let bus = self.clone();
        tokio::spawn(async move { bus.store_now(messages, ack).await })
            .await
            .map_err(|e| BusError::Other(format!("the publish task failed: {e}")))?
    }

    async fn store_now(
        &self,
        messages: Vec<StoredMessage>,
        ack: Option<(Arc<str>, u64)>,
    ) -> Result<Vec<Published>, BusError> {
        let (results, fresh) = {
            // Held until the batch is applied: no other publish of these ids
            // can pass its dedup check in between.
            let _locks = self.lock_ids(&messages).await;
            let mut results = Vec::with_capacity(messages.len());
            let mut fresh: Vec<(u64, StoredMessage)> = Vec::new();
            for m in messages {
                let seen_here = fresh
                    .iter()
                    .any(|(_, f)| f.id == m.id && f.topic == m.topic);
                if seen_here || (!m.assigned_id && self.is_duplicate(&m.topic, &m.id)?) {
                    self.topics[&m.topic]
                        .duplicates
                        .fetch_add(1, Ordering::Relaxed);
                    results.push(Published {
                        id: m.id,
                        duplicate: true,
                    });
                    continue;
                }
                results.push(Published {
                    id: m.id.clone(),
                    duplicate: false,
                });
                fresh.push((self.log.next_seq()?, m));
            }
            let entries = fresh
                .iter()
                .map(|(seq, m)| NewEntry::new(*seq, &self.topics[&m.topic].sub_ids, m))
                .collect::<Result<Vec<_>, _>>()?;
            // Messages with caller-chosen ids go in one atomic batch: a
            // crash must not leave some of their entries without the dedup
            // record, or a retried publish would store them twice. The rest
            // are plain writes in order (see `Log::write_entries`), which
            // sled's apply_batch would slow down five-fold. Then the ack: a
            // crash before it keeps the handled message pending, so it is
            // redelivered and publishes again (dedup drops repeats that
            // carry ids): at least once, never lost.
            let (keyed, plain): (Vec<_>, Vec<_>) =
                entries.into_iter().partition(|e| !e.message.assigned_id);
            if !keyed.is_empty() {
                let mut batch = log::Batch::default();
                Log::stage_entries(&mut batch, &keyed);
                self.log.apply(batch)?;
            }
            self.log.write_entries(&plain)?;
            if let Some((sub, seq)) = &ack {
                self.log.ack(sub, *seq)?;
            }
            (results, fresh)
        };
        if !results.is_empty() {
            // Also when every message was a duplicate: the original may not
            // be durable yet, and a duplicate must not be acknowledged first.
            let then = self.enqueue(fresh);
            if let Err(e) = self.sync().await {
                // Keep trying in the background; the messages are stored.
                drop(self.durably(then));
                return Err(e);
            }
            then();
        }
        Ok(results)
    }

    /// Waits until everything written so far is durable, then runs `then`
    /// (which hands stored messages to their subscriptions). It runs as its
    /// own task, started before this returns: a caller that goes away (a
    /// client disconnecting, a guest running out of time) cannot strand
    /// messages that are already stored. If the flush fails, the caller gets
    /// the error and the task keeps trying, handing the messages over once a
    /// flush succeeds (they are in the store, so they will be delivered).
    fn durably<F: FnOnce() + Send + 'static>(
        &self,
        then: F,
    ) -> impl Future<Output = Result<(), BusError>> + use<F> {
        use crate::kv::KvBackend;
        let storage = self.storage.clone();
        let stop = self.stop.subscribe();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut delay = Duration::from_millis(100);
            loop {
                match storage.sync().await {
                    Ok(()) => {
                        then();
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                        return;
                    }
                    Err(e) => {
                        let e = BusError::Other(format!("messages not durable: {e:#}"));
                        tracing::error!(error = %e, "bus flush failed; retrying");
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(Err(e));
                        }
                        if *stop.borrow() {
                            return;
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        async move {
            rx.await
                .unwrap_or_else(|_| Err(BusError::Other("the bus flush task stopped".into())))
        }
    }

    /// Commits an outbox transaction: its key-value writes (on `kv_tree`) and
    /// its messages in one sled transaction, then waits until durable.
    pub async fn commit_transaction(
        &self,
        kv_tree: &sled::Tree,
        writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        messages: Vec<StoredMessage>,
    ) -> Result<(), BusError> {
        use sled::Transactional;
        use sled::transaction::ConflictableTransactionError;
        let locks = self.lock_ids(&messages).await;
        let fresh = {
            let mut prepared = Vec::with_capacity(messages.len());
            for m in &messages {
                let seq = self.log.next_seq()?;
                prepared.push(NewEntry::new(seq, &self.topics[&m.topic].sub_ids, m)?);
            }
            self.log.writes().note_write();
            let outcome = (kv_tree, self.log.tree()).transaction(|(kv, bus)| {
                for (k, v) in &writes {
                    match v {
                        Some(v) => kv.insert(k.as_slice(), v.as_slice())?,
                        None => kv.remove(k.as_slice())?,
                    };
                }
                let mut stored: Vec<&NewEntry<'_>> = Vec::new();
                for e in &prepared {
                    let m = e.message;
                    let dup_here = stored
                        .iter()
                        .any(|s| s.message.id == m.id && s.message.topic == m.topic);
                    let window = self.dedup_window_ms(&m.topic);
                    let dup_before = !m.assigned_id
                        && Log::dedup_time_in(bus, &m.topic, &m.id)?
                            .is_some_and(|at| now_ms().saturating_sub(at) <= window);
                    if !dup_here && !dup_before {
                        stored.push(e);
                    }
                }
                Log::insert_entries_in(bus, stored.iter().copied())?;
                Ok::<_, ConflictableTransactionError<BusError>>(
                    stored
                        .iter()
                        .map(|e| (e.seq, e.message))
                        .collect::<Vec<_>>(),
                )
            });
            let stored = outcome.map_err(|e| match e {
                sled::transaction::TransactionError::Abort(e) => e,
                sled::transaction::TransactionError::Storage(e) => BusError::storage(e),
            })?;
            for m in &messages {
                if !stored.iter().any(|(_, s)| std::ptr::eq(*s, m)) {
                    self.topics[&m.topic]
                        .duplicates
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            stored
                .into_iter()
                .map(|(seq, m)| (seq, m.clone()))
                .collect::<Vec<_>>()
        };
        // The transaction is applied: later publishes of these ids see it.
        drop(locks);
        self.durably(self.enqueue(fresh)).await
    }

    /// Waits for a flush covering every write made so far.
    async fn sync(&self) -> Result<(), BusError> {
        use crate::kv::KvBackend;
        self.storage
            .sync()
            .await
            .map_err(|e| BusError::Other(format!("messages not durable: {e:#}")))
    }

    fn is_duplicate(&self, topic: &str, id: &str) -> Result<bool, BusError> {
        let window = self.dedup_window_ms(topic);
        Ok(self
            .log
            .dedup_time(topic, id)?
            .is_some_and(|at| now_ms().saturating_sub(at) <= window))
    }

    /// Locks the dedup stripes of these messages' ids, in a fixed order
    /// (host-assigned ids need none: nobody else can publish them).
    async fn lock_ids(&self, messages: &[StoredMessage]) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        use std::hash::{Hash, Hasher};
        let mut stripes: Vec<usize> = messages
            .iter()
            .filter(|m| !m.assigned_id)
            .map(|m| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (&m.topic, &m.id).hash(&mut h);
                (h.finish() as usize) % self.dedup_locks.len()
            })
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for i in stripes {
            guards.push(self.dedup_locks[i].clone().lock_owned().await);
        }
        guards
    }

    /// Counts stored messages and returns what hands them to their subscriptions.
    fn enqueue(&self, fresh: Vec<(u64, StoredMessage)>) -> impl FnOnce() + Send + 'static {
        let mut pushes = Vec::new();
        for (seq, m) in fresh {
            let topic = &self.topics[&m.topic];
            topic.published.fetch_add(1, Ordering::Relaxed);
            let key: Option<Arc<str>> = m.key.map(Arc::from);
            for sub in &topic.subscriptions {
                pushes.push((sub.clone(), seq, key.clone()));
            }
        }
        move || {
            for (sub, seq, key) in pushes {
                sub.push(seq, key);
            }
        }
    }

    /// Moves a pending message to its subscription's dead letters and, when
    /// the subscription names a `dead_letter_topic`, publishes it there in the
    /// same atomic batch (with `atoll-dead-letter-*` headers saying why).
    /// Returns false when the message was no longer pending.
    async fn dead_letter(
        &self,
        sub: &Subscription,
        seq: u64,
        reason: String,
        attempt: &log::Attempt,
    ) -> Result<bool, BusError> {
        let Some(message) = self.log.read(&sub.id, seq)? else {
            return Ok(false);
        };
        let forward = match sub.dead_letter_topic() {
            Some(topic) if self.topics.contains_key(topic) => {
                // The publisher's own headers, then Atoll's (publishers may
                // not use the `atoll-` prefix, so these cannot be spoofed).
                let mut headers: Vec<(String, String)> = message
                    .headers
                    .iter()
                    .filter(|(k, _)| !is_reserved_header(k))
                    .cloned()
                    .collect();
                headers.extend([
                    ("atoll-original-id".to_string(), message.id.clone()),
                    ("atoll-dead-letter-reason".to_string(), header_text(&reason)),
                    (
                        "atoll-dead-letter-subscription".to_string(),
                        sub.id.to_string(),
                    ),
                    (
                        "atoll-dead-letter-attempts".to_string(),
                        attempt.started.to_string(),
                    ),
                    ("atoll-original-topic".to_string(), message.topic.clone()),
                ]);
                if let Some(e) = &attempt.last_error {
                    headers.push(("atoll-dead-letter-error".to_string(), header_text(e)));
                }
                Some((
                    self.log.next_seq()?,
                    StoredMessage {
                        // A new id: a replayed message that dies again is
                        // forwarded again, and consumers that remember
                        // processed ids must see a new message.
                        id: new_id(),
                        topic: topic.to_string(),
                        headers,
                        published_at_ms: now_ms(),
                        assigned_id: true,
                        ..message.clone()
                    },
                ))
            }
            _ => None,
        };
        let record = log::DeadRecord {
            reason,
            attempts: attempt.started,
            last_error: attempt.last_error.clone(),
            dead_at_ms: now_ms(),
            message,
        };
        let mut batch = log::Batch::default();
        Log::stage_dead(&mut batch, &sub.id, seq, &record)?;
        if let Some((fseq, m)) = &forward {
            let entry = NewEntry::new(*fseq, &self.topics[&m.topic].sub_ids, m)?;
            Log::stage_entries(&mut batch, std::slice::from_ref(&entry));
        }
        self.log.apply(batch)?;
        if let Some(f) = forward {
            self.durably(self.enqueue(vec![f])).await?;
        }
        Ok(true)
    }

    /// Every topic and subscription with counters.
    pub fn overview(&self) -> Overview {
        Overview {
            topics: self
                .topics
                .iter()
                .map(|(name, t)| TopicInfo {
                    name: name.clone(),
                    max_payload: t.max_payload,
                    dedup_window_ms: t.dedup_window.as_millis() as u64,
                    published: t.published.load(Ordering::Relaxed),
                    duplicates: t.duplicates.load(Ordering::Relaxed),
                    subscriptions: t.subscriptions.iter().map(|s| s.info()).collect(),
                })
                .collect(),
        }
    }

    /// One subscription's state, by id (`topic/group`).
    pub fn subscription(&self, id: &str) -> Option<SubscriptionInfo> {
        self.subscriptions()
            .find(|s| &*s.id == id)
            .map(|s| s.info())
    }

    fn subscriptions_of(
        &self,
        topic: &str,
        subscription: Option<&str>,
    ) -> Result<Vec<&Arc<Subscription>>, BusError> {
        let t = self.topics.get(topic).ok_or_else(|| {
            BusError::UnknownTopic(format!("topic `{topic}` is not declared in atoll.toml"))
        })?;
        let subs: Vec<_> = t
            .subscriptions
            .iter()
            .filter(|s| subscription.is_none_or(|want| *s.id == *want || *s.group == *want))
            .collect();
        if let Some(want) = subscription
            && subs.is_empty()
        {
            let known: Vec<&str> = t.subscriptions.iter().map(|s| &*s.group).collect();
            return Err(BusError::NotFound(format!(
                "topic `{topic}` has no subscription `{want}`; its subscriptions are: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        Ok(subs)
    }

    /// Dead letters of a topic (all its subscriptions, or one), oldest first.
    pub fn dead_letters(
        &self,
        topic: &str,
        subscription: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        let mut out = Vec::new();
        for sub in self.subscriptions_of(topic, subscription)? {
            for (seq, d) in self
                .log
                .dead_letters(&sub.id, limit - out.len().min(limit))?
            {
                let preview = &d.message.payload[..d.message.payload.len().min(200)];
                out.push(DeadLetter {
                    subscription: sub.id.to_string(),
                    id: d.message.id,
                    seq,
                    reason: d.reason,
                    attempts: d.attempts,
                    last_error: d.last_error,
                    dead_at_ms: d.dead_at_ms,
                    published_at_ms: d.message.published_at_ms,
                    partition_key: d.message.key,
                    headers: d.message.headers,
                    payload_size: d.message.payload.len(),
                    payload_preview: String::from_utf8_lossy(preview).into_owned(),
                });
            }
        }
        Ok(out)
    }

    /// Moves dead letters back for delivery (all of a topic's, one
    /// subscription's, or only the given ids); returns how many moved.
    pub async fn replay(
        &self,
        topic: &str,
        subscription: Option<&str>,
        ids: Option<&[String]>,
    ) -> Result<usize, BusError> {
        let mut moved = 0;
        for sub in self.subscriptions_of(topic, subscription)? {
            // One replay per subscription at a time: two would move the same
            // dead letters twice.
            let _one = sub.replay_lock.lock().await;
            let back = self.log.replay(&sub.id, ids)?;
            if back.is_empty() {
                continue;
            }
            moved += back.len();
            let sub = sub.clone();
            self.durably(move || sub.replayed(back)).await?;
        }
        Ok(moved)
    }
}

fn check_text(what: &str, text: &str, max: usize) -> Result<(), BusError> {
    if text.is_empty() {
        return Err(BusError::Invalid(format!("{what} is empty")));
    }
    if text.len() > max {
        return Err(BusError::TooLarge(format!(
            "{what} is {} bytes; the limit is {max}",
            text.len()
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(BusError::Invalid(format!(
            "{what} contains a control character"
        )));
    }
    Ok(())
}

/// Header names under `atoll-` are Atoll's own (dead-letter metadata).
fn is_reserved_header(name: &str) -> bool {
    name.len() >= 6 && name[..6].eq_ignore_ascii_case("atoll-")
}

/// Text made safe for a header value: control characters become spaces, at
/// most 1,024 characters.
pub(crate) fn header_text(text: &str) -> String {
    text.chars()
        .take(1024)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn check_headers(headers: &[(String, String)]) -> Result<(), BusError> {
    if headers.len() > MAX_HEADERS {
        return Err(BusError::TooLarge(format!(
            "{} headers; a message carries at most {MAX_HEADERS}",
            headers.len()
        )));
    }
    let total: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_HEADER_BYTES {
        return Err(BusError::TooLarge(format!(
            "headers take {total} bytes; a message carries at most {MAX_HEADER_BYTES}"
        )));
    }
    for (name, value) in headers {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(BusError::Invalid(format!(
                "header name `{}` is not a token (letters, digits and !#$%&'*+-.^_`|~)",
                name.escape_debug()
            )));
        }
        if is_reserved_header(name) {
            return Err(BusError::Invalid(format!(
                "header `{name}`: names starting with `atoll-` are reserved for the host"
            )));
        }
        if name.len() > MAX_HEADER_NAME {
            return Err(BusError::TooLarge(format!(
                "header name is {} bytes; the limit is {MAX_HEADER_NAME}",
                name.len()
            )));
        }
        if value.len() > MAX_HEADER_VALUE {
            return Err(BusError::TooLarge(format!(
                "header `{name}` is {} bytes; the limit is {MAX_HEADER_VALUE}",
                value.len()
            )));
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(BusError::Invalid(format!(
                "header `{name}` contains a control character"
            )));
        }
    }
    Ok(())
}
