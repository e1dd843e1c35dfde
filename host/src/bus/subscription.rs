//! One subscription: its schedule, its scheduler task and its deliveries.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::log::{Attempt, PendingRef, StoredMessage};
use super::queue::{Entry, Queue};
use super::{Bus, SubscriptionInfo};
use crate::bindings::atoll::bus::types::{Disposition, Message};
use crate::config::SubscriptionSettings;
use crate::engine::EPOCH_TICK;
use crate::registry::ComponentRuntime;
use crate::sandbox::{self, DeadlineExceeded};
use crate::telemetry::span::{Span, SpanContext, SpanKind};

/// Longest delay a handler may ask for in `retry(some(ms))`.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(24 * 3600);

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    acked: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    dead_letters: AtomicU64,
}

/// A subscription: `topic/group`, consumed by one or more components.
pub(super) struct Subscription {
    pub id: Arc<str>,
    pub group: Arc<str>,
    consumers: Vec<Arc<str>>,
    settings: SubscriptionSettings,
    queue: Mutex<Queue>,
    wake: Notify,
    counters: Counters,
    next_consumer: AtomicUsize,
    /// Held while dead letters are moved back.
    pub replay_lock: tokio::sync::Mutex<()>,
}

/// How one delivery ended.
enum Verdict {
    Ack,
    /// The message was no longer pending (nothing to do).
    Gone,
    /// Not delivered (no consumer running): try later without using an attempt.
    NotDelivered(String),
    /// Deliver again (after this delay, if the handler chose one); the error says why.
    Retry(Option<Duration>, String),
    /// Dead-letter now.
    Reject(String),
}

impl Subscription {
    pub fn new(
        topic: &str,
        group: &str,
        consumers: Vec<Arc<str>>,
        settings: SubscriptionSettings,
    ) -> Self {
        Subscription {
            id: Arc::from(format!("{topic}/{group}")),
            group: Arc::from(group),
            consumers,
            settings,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            counters: Counters::default(),
            next_consumer: AtomicUsize::new(0),
            replay_lock: tokio::sync::Mutex::new(()),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads what was pending when the host last stopped.
    pub fn restore(&self, pending: Vec<PendingRef>, dead: u64) {
        self.counters.dead_letters.store(dead, Ordering::Relaxed);
        self.push_refs(pending);
    }

    /// A newly stored message.
    pub fn push(&self, seq: u64, key: Option<Arc<str>>) {
        self.queue().push(
            seq,
            Entry {
                key,
                attempt: Attempt::default(),
            },
        );
        self.wake.notify_one();
    }

    /// Dead letters moved back to pending.
    pub fn replayed(&self, back: Vec<PendingRef>) {
        let n = back.len() as u64;
        self.counters.dead_letters.fetch_sub(n, Ordering::Relaxed);
        self.push_refs(back);
        self.wake.notify_one();
    }

    fn push_refs(&self, refs: Vec<PendingRef>) {
        let mut q = self.queue();
        for p in refs {
            q.push(
                p.seq,
                Entry {
                    key: p.key.map(Arc::from),
                    attempt: p.attempt,
                },
            );
        }
    }

    pub fn depth(&self) -> usize {
        self.queue().len()
    }

    pub fn in_flight(&self) -> usize {
        self.queue().in_flight()
    }

    pub fn info(&self) -> SubscriptionInfo {
        let q = self.queue();
        let c = &self.counters;
        SubscriptionInfo {
            id: self.id.to_string(),
            group: self.group.to_string(),
            consumers: self.consumers.iter().map(|c| c.to_string()).collect(),
            depth: q.len() as u64,
            in_flight: q.in_flight() as u64,
            retrying: q.retrying() as u64,
            dead_letters: c.dead_letters.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            acked: c.acked.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            max_deliver: self.settings.max_deliver,
            prefetch: self.settings.prefetch,
        }
    }

    /// The scheduler: keeps up to `prefetch` deliveries in flight until stopped.
    pub async fn run(self: Arc<Self>, bus: Arc<Bus>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let next_due = {
                let mut q = self.queue();
                q.release_due(Instant::now());
                while q.in_flight() < self.settings.prefetch as usize {
                    let Some((seq, entry)) = q.pop() else { break };
                    tokio::spawn(self.clone().deliver(bus.clone(), seq, entry));
                }
                q.next_due()
            };
            let sleep = async {
                match next_due {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = sleep => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// The component to deliver to next (round robin over the group).
    fn consumer(&self, bus: &Bus) -> Option<Arc<ComponentRuntime>> {
        let registry = bus.registry()?;
        let n = self.consumers.len();
        let start = self.next_consumer.fetch_add(1, Ordering::Relaxed);
        (0..n).find_map(|i| registry.component(&self.consumers[(start + i) % n]))
    }

    /// One delivery, start to finish: record the attempt, run the handler,
    /// then ack, schedule a retry or dead-letter.
    async fn deliver(self: Arc<Self>, bus: Arc<Bus>, seq: u64, mut entry: Entry) {
        let verdict = if entry.attempt.started >= self.settings.max_deliver {
            // Started max_deliver times and never finished: the host stopped mid-delivery.
            None
        } else {
            match self.run_handler(&bus, seq, &mut entry.attempt).await {
                Ok(v) => Some(v),
                Err(e) => {
                    // The store failed: keep the message and try again later.
                    tracing::error!(subscription = %self.id, seq, error = %e, "bus storage error during delivery");
                    Some(Verdict::Retry(None, e.to_string()))
                }
            }
        };
        let outcome = match verdict {
            None => self.dead_letter(
                    &bus,
                seq,
                &mut entry,
                format!(
                    "max_deliver ({}) reached; the last delivery did not finish (the host stopped during it)",
                    self.settings.max_deliver
                ),
            )
            .await,
            Some(Verdict::Ack) => {
                self.counters.acked.fetch_add(1, Ordering::Relaxed);
                Finish::Done
            }
            Some(Verdict::Gone) => Finish::Done,
            Some(Verdict::NotDelivered(why)) => {
                tracing::warn!(subscription = %self.id, seq, "{why}; will try again");
                Finish::RetryAt(Instant::now() + self.backoff(1))
            }
            Some(Verdict::Reject(reason)) => {
                let reason = super::header_text(&reason);
                self.dead_letter(&bus, seq, &mut entry, format!("rejected: {reason}"))
                    .await
            }
            Some(Verdict::Retry(delay, error)) => {
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
                entry.attempt.last_error = Some(error.clone());
                let attempt = entry.attempt.started;
                if attempt >= self.settings.max_deliver {
                    self.dead_letter(
                        &bus,
                        seq,
                        &mut entry,
                        format!("max_deliver ({}) reached", self.settings.max_deliver),
                    )
                    .await
                } else {
                    let delay = delay.unwrap_or_else(|| self.backoff(attempt));
                    tracing::debug!(subscription = %self.id, seq, attempt, ?delay, %error, "will retry");
                    Finish::RetryAt(Instant::now() + delay)
                }
            }
        };
        {
            let mut q = self.queue();
            match outcome {
                Finish::Done => q.done(&entry),
                Finish::RetryAt(due) => q.retry_at(seq, entry, due),
            }
        }
        self.wake.notify_one();
    }

    /// Where dead letters are also published, if anywhere.
    pub fn dead_letter_topic(&self) -> Option<&str> {
        self.settings.dead_letter_topic.as_deref()
    }

    async fn dead_letter(&self, bus: &Bus, seq: u64, entry: &mut Entry, reason: String) -> Finish {
        // (A failure below retries the delivery, which dead-letters it again.)
        let attempts = entry.attempt.started;
        match bus
            .dead_letter(self, seq, reason.clone(), &entry.attempt)
            .await
        {
            Ok(moved) => {
                if moved {
                    self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    self.counters.dead_letters.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(subscription = %self.id, seq, attempts, %reason, "message dead-lettered");
                }
                Finish::Done
            }
            Err(e) => {
                tracing::error!(subscription = %self.id, seq, error = %e, "could not dead-letter; will retry");
                Finish::RetryAt(Instant::now() + self.settings.max_backoff)
            }
        }
    }

    /// Exponential backoff with equal jitter: half the delay fixed, half random.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.settings.backoff.as_secs_f64()
            * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
        let capped = base.min(self.settings.max_backoff.as_secs_f64());
        Duration::from_secs_f64(capped / 2.0 + fastrand::f64() * capped / 2.0)
    }

    async fn run_handler(
        &self,
        bus: &Arc<Bus>,
        seq: u64,
        attempt: &mut Attempt,
    ) -> Result<Verdict, super::BusError> {
        let Some(message) = bus.log.read(&self.id, seq)? else {
            // Already gone (acked by an earlier run): nothing to do.
            return Ok(Verdict::Gone);
        };
        let Some(rt) = self.consumer(bus) else {
            return Ok(Verdict::NotDelivered(
                "no consumer component is running".to_string(),
            ));
        };
        attempt.started += 1;
        bus.log.begin_attempt(&self.id, seq, attempt)?;
        if attempt.started > 1 {
            // A redelivery: make its count durable first, so a message that
            // keeps killing the host still runs out of attempts. (The first
            // delivery is not waited for; sled's timer flushes it soon.)
            bus.sync().await?;
        }
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        let traceparent = message
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
            .map(|(_, v)| v.clone());
        // The delivery continues the publisher's trace (a child of its
        // `bus.publish`, and linked to it), and what the handler does
        // (calls, messages, log records) continues from the delivery.
        let remote = traceparent.as_deref().and_then(SpanContext::parse);
        let span = Span::continuing("bus.deliver", SpanKind::Consumer, remote).with(|a| {
            a.str("component", &rt.name)
                .display("version", &rt.version)
                .str("subscription", &self.id)
                .str("topic", &message.topic)
                .str("message", &message.id)
                .uint("attempt", u64::from(attempt.started));
        });
        if let Some(remote) = remote {
            span.link(remote);
        }
        let traceparent = span.exported_traceparent().or(traceparent);
        let traced = span.clone();
        let (verdict, staged, kv_dirty) = span
            .instrument(self.invoke(&rt, message, attempt.started, traceparent))
            .await;
        traced.record(|a| {
            a.str(
                "outcome",
                match &verdict {
                    Verdict::Ack => "ack",
                    Verdict::Retry(..) => "retry",
                    Verdict::Reject(_) => "reject",
                    Verdict::NotDelivered(_) => "not_delivered",
                    Verdict::Gone => "gone",
                },
            );
            if !matches!(verdict, Verdict::Ack) {
                a.error();
            }
        });
        drop(traced);
        match verdict {
            Verdict::Ack => {
                // Whatever the handler wrote must be durable before the ack can be.
                if kv_dirty {
                    bus.sync().await?;
                }
                // The ack and the handler's own publishes go in one batch.
                bus.store(staged, Some((self.id.clone(), seq))).await?;
                Ok(Verdict::Ack)
            }
            other => Ok(other),
        }
    }

    /// Runs the component's handler in a fresh instance.
    async fn invoke(
        &self,
        rt: &Arc<ComponentRuntime>,
        message: StoredMessage,
        attempt: u32,
        traceparent: Option<String>,
    ) -> (Verdict, Vec<StoredMessage>, bool) {
        let Some(indices) = rt.handler.clone() else {
            return (
                Verdict::Reject(format!(
                    "component `{}` does not export atoll:bus/handler",
                    rt.name
                )),
                Vec::new(),
                false,
            );
        };
        // Wait for a slot rather than fail: the queue is the backpressure.
        let Ok(_permit) = rt.concurrency.clone().acquire_owned().await else {
            return (
                Verdict::Retry(None, "component is stopping".into()),
                Vec::new(),
                false,
            );
        };
        let _in_flight = rt.stats.enter();
        let started = Instant::now();
        let deadline = started + rt.limits.deadline;
        let mut store = sandbox::new_store(&rt.engine, &rt.grants, deadline);
        store.data_mut().bus_mut().traceparent = traceparent;
        if crate::telemetry::span::recording() {
            store.data_mut().trace_version(&rt.grants);
        }
        let arg = Message {
            id: message.id,
            topic: message.topic,
            payload: message.payload,
            headers: message.headers,
            partition_key: message.key,
            attempt,
            published_at: message.published_at_ms,
            subscription: self.id.to_string(),
        };
        let run = async {
            let instance = rt.pre.instantiate_async(&mut store).await?;
            let handler = indices.load(&mut store, &instance)?;
            handler
                .atoll_bus_handler()
                .call_handle(&mut store, &arg)
                .await
        };
        let grace = tokio::time::Instant::from_std(deadline + 2 * EPOCH_TICK);
        let result = match tokio::time::timeout_at(grace, run).await {
            Ok(r) => r,
            Err(_) => Err(wasmtime::Error::new(DeadlineExceeded)),
        };
        // A trap or a deadline counts against the version (a canary is
        // judged by it); a handler's own retry or reject does not.
        rt.stats.observe(started.elapsed());
        // A failed call the handler made is the callee's doing, not this version's.
        match &result {
            Ok(_) => rt.stats.record(false),
            Err(e) if e.downcast_ref::<crate::calls::CallError>().is_some() => {}
            Err(e) if e.downcast_ref::<DeadlineExceeded>().is_some() => {
                rt.stats.record(true);
                rt.stats.limit(crate::registry::Limit::Deadline)
            }
            Err(e) => {
                rt.stats.record(true);
                rt.stats.trapped(e)
            }
        }
        let kv_dirty = store.data().kv_dirty();
        let staged = store.data_mut().bus_mut().take_staged();
        let verdict = match result {
            Ok(Disposition::Ack) => return (Verdict::Ack, staged, kv_dirty),
            Ok(Disposition::Retry(options)) => Verdict::Retry(
                options
                    .after_ms
                    .map(|ms| Duration::from_millis(ms).min(MAX_RETRY_DELAY)),
                match options.reason {
                    Some(reason) => format!(
                        "handler asked to retry: {}",
                        reason.chars().take(1024).collect::<String>()
                    ),
                    None => "handler asked to retry".to_string(),
                },
            ),
            Ok(Disposition::Reject(reason)) => Verdict::Reject(reason),
            Err(e) if e.downcast_ref::<DeadlineExceeded>().is_some() => Verdict::Retry(
                None,
                format!("deadline exceeded ({:?})", rt.limits.deadline),
            ),
            Err(e) => {
                let what = match e.downcast_ref::<wasmtime::Trap>() {
                    Some(trap) => format!("trap: {trap}"),
                    None => format!("failed: {}", e.root_cause()),
                };
                tracing::warn!(component = %rt.name, subscription = %self.id, error = ?e, "message handler failed");
                Verdict::Retry(None, what)
            }
        };
        // Not acked: its publishes are dropped (the kv writes it made stay).
        (verdict, Vec::new(), kv_dirty)
    }
}

enum Finish {
    Done,
    RetryAt(Instant),
}
