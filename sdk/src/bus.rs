//! Messages through `atoll:bus`: publish, handle, and commit key-value writes
//! together with publishes (the transactional outbox).
//!
//! Topics are declared in `atoll.toml`; a component publishes to the topics
//! in its `publishes` list and receives the topics of its `subscriptions`
//! through [`message_handler!`](crate::message_handler) or
//! [`service!`](crate::service). Delivery is at least once: a handler may see
//! a message again (after a retry, a crash, a deadline), so effects should be
//! idempotent; [`idempotent`] and [`Transaction::mark_processed`] help.
//!
//! ```no_run
//! use atoll_sdk::bus::{self, Disposition, Message, Outgoing, Transaction};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Order {
//!     id: String,
//!     item: String,
//! }
//!
//! // Publishing: stored when the invocation ends well, never if it traps.
//! fn place(order: &Order) -> Result<String, bus::Error> {
//!     bus::publish(Outgoing::json("order.placed", order)?.id(&order.id).partition_key(&order.item))
//! }
//!
//! // The outbox: the order is saved and announced together, or not at all.
//! fn place_and_save(order: &Order) -> Result<(), bus::Error> {
//!     let tx = Transaction::new();
//!     tx.set_json("orders", &order.id, order)?;
//!     tx.publish(Outgoing::json("order.placed", order)?.id(&order.id))?;
//!     tx.commit()
//! }
//!
//! // Handling: a redelivered message that was acknowledged before is skipped.
//! fn on_message(msg: Message) -> Disposition {
//!     bus::idempotent(&msg, |msg| match msg.json::<Order>() {
//!         Ok(order) => {
//!             atoll_sdk::info!("order {} for {}", order.id, order.item);
//!             Disposition::Ack
//!         }
//!         Err(err) => Disposition::Reject(format!("not an order: {err}")),
//!     })
//! }
//!
//! atoll_sdk::message_handler!(on_message);
//! # fn main() -> Result<(), bus::Error> {
//! # let order = Order { id: "o-1".into(), item: "tea".into() };
//! # place(&order)?;
//! # place_and_save(&order)
//! # }
//! ```
//!
//! # Idempotent consumers
//!
//! The helpers remember the messages a subscription has handled in the
//! component's own key-value store: bucket [`PROCESSED_BUCKET`], key
//! `<subscription>/<message id>` (see [`processed_key`]), value the
//! message's `published_at`, so old marks can be pruned by age. Two forms:
//!
//! - [`idempotent`] (built on [`already_processed`] and [`mark_processed`])
//!   marks a message after the handler acknowledged it. Effects the handler
//!   made before a crash or a deadline, but before the mark, happen again on
//!   the redelivery: this is at-least-once handling that drops the common
//!   duplicates (a publisher's retry after the dedup window, a delivery whose
//!   acknowledgement was lost).
//! - [`Transaction::mark_processed`] puts the mark in the same
//!   [`Transaction`] as the handler's key-value writes and publishes, so all
//!   of them commit together: exactly-once effects on key-value and the
//!   outbox. Check [`already_processed`] first and acknowledge when it is
//!   true. Effects outside the transaction (an HTTP call, say) can still
//!   repeat.
//!
//! The check and the mark are not one atomic step; they rely on the host
//! never handing the same message to two handlers of one subscription at
//! once.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::atoll::bus::{outbox, publisher, types as wit};
use crate::kv;

/// The key-value bucket where [`mark_processed`] and
/// [`Transaction::mark_processed`] remember handled messages.
pub const PROCESSED_BUCKET: &str = "atoll.processed";

/// A message as delivered to a handler.
///
/// Fields are public so a handler can be unit-tested natively with a
/// message built by hand (`Message { topic: "t".into(), ..Default::default() }`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The message id: the publisher's [`Outgoing::id`], or one the host
    /// assigned.
    pub id: String,
    /// The topic it was published to.
    pub topic: String,
    /// The body.
    pub payload: Vec<u8>,
    /// Its headers in order, including `traceparent` when the publisher had
    /// one. Look one up with [`Message::header`].
    pub headers: Vec<(String, String)>,
    /// Its partition key, if it has one: messages sharing a key are handled
    /// one at a time, in publish order.
    pub partition_key: Option<String>,
    /// Which delivery this is: 1 the first time, 2 on the first retry, ...
    pub attempt: u32,
    /// When it was published, in milliseconds since the Unix epoch.
    pub published_at: u64,
    /// The subscription delivering it, `<topic>/<group>`.
    pub subscription: String,
}

impl Message {
    /// The first value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The payload as UTF-8 text.
    pub fn text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.payload)
    }

    /// The payload decoded from JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }

    /// [`published_at`](Message::published_at) as a [`SystemTime`].
    pub fn published_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.published_at)
    }

    fn from_wit(msg: wit::Message) -> Message {
        Message {
            id: msg.id,
            topic: msg.topic,
            payload: msg.payload,
            headers: msg.headers,
            partition_key: msg.partition_key,
            attempt: msg.attempt,
            published_at: msg.published_at,
            subscription: msg.subscription,
        }
    }
}

/// What a handler decided about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done: never deliver it to this subscription again.
    Ack,
    /// Deliver it again later: after `after` when given (in whole
    /// milliseconds, rounded down), else after the subscription's backoff.
    /// After the subscription's `max_deliver` deliveries it goes to the dead
    /// letters instead, with `reason` as its last error. A panic or a
    /// deadline counts as a retry. Build one with [`Disposition::retry`],
    /// [`Disposition::retry_after`] or [`Disposition::retry_because`].
    Retry {
        /// How long to wait; `None` uses the subscription's backoff.
        after: Option<Duration>,
        /// Why, for the log and the dead letter.
        reason: Option<String>,
    },
    /// Never deliver it again: it goes straight to the dead letters with
    /// this reason.
    Reject(String),
}

impl Disposition {
    /// Deliver the message again after the subscription's backoff.
    pub fn retry() -> Disposition {
        Disposition::Retry {
            after: None,
            reason: None,
        }
    }

    /// Deliver the message again after `delay`.
    pub fn retry_after(delay: Duration) -> Disposition {
        Disposition::Retry {
            after: Some(delay),
            reason: None,
        }
    }

    /// Deliver the message again after the subscription's backoff; `reason`
    /// is logged and becomes the dead letter's last error if this was the
    /// last delivery.
    pub fn retry_because(reason: impl Into<String>) -> Disposition {
        Disposition::Retry {
            after: None,
            reason: Some(reason.into()),
        }
    }

    fn into_wit(self) -> wit::Disposition {
        match self {
            Disposition::Ack => wit::Disposition::Ack,
            Disposition::Retry { after, reason } => wit::Disposition::Retry(wit::RetryOptions {
                after_ms: after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                reason,
            }),
            Disposition::Reject(reason) => wit::Disposition::Reject(reason),
        }
    }
}

/// Handles one `atoll:bus/handler` call; used by the export macros.
#[doc(hidden)]
pub fn __handle(
    message: wit::Message,
    handler: impl FnOnce(Message) -> Disposition,
) -> wit::Disposition {
    handler(Message::from_wit(message)).into_wit()
}

/// The message side of a component that only serves HTTP; used by
/// [`http_handler!`](crate::http_handler).
#[doc(hidden)]
pub fn __no_message_handler(_message: Message) -> Disposition {
    Disposition::Reject(
        "component has no message handler; export one with atoll_sdk::message_handler!".into(),
    )
}

/// A message to publish, built with setters:
/// `Outgoing::new("t", "body").header("k", "v").id("m-1")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    topic: String,
    payload: Vec<u8>,
    headers: Vec<(String, String)>,
    id: Option<String>,
    partition_key: Option<String>,
}

impl Outgoing {
    /// A message with `payload` for `topic`; no headers, no id (the host
    /// assigns a unique one) and no partition key by default.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Outgoing {
        Outgoing {
            topic: topic.into(),
            payload: payload.into(),
            headers: Vec::new(),
            id: None,
            partition_key: None,
        }
    }

    /// A message for `topic` whose payload is `value` as JSON, with the
    /// header `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(
        topic: impl Into<String>,
        value: &T,
    ) -> Result<Outgoing, serde_json::Error> {
        let payload = serde_json::to_vec(value)?;
        Ok(Outgoing::new(topic, payload).header("content-type", "application/json"))
    }

    /// Adds a header, keeping earlier ones (also of the same name). Default:
    /// none, except the `content-type` that [`Outgoing::json`] sets.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Outgoing {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the message id, the idempotency key: a second message with the
    /// same id on the same topic within the topic's dedup window is not
    /// stored again (the publish still succeeds). Default: none, the host
    /// assigns a unique id.
    pub fn id(mut self, id: impl Into<String>) -> Outgoing {
        self.id = Some(id.into());
        self
    }

    /// Sets the partition key: messages with the same key are handled in
    /// publish order, one at a time, per subscription. Default: none.
    pub fn partition_key(mut self, key: impl Into<String>) -> Outgoing {
        self.partition_key = Some(key.into());
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The headers, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    fn into_wit(self) -> wit::OutgoingMessage {
        wit::OutgoingMessage {
            topic: self.topic,
            payload: self.payload,
            headers: self.headers,
            id: self.id,
            partition_key: self.partition_key,
        }
    }
}

/// Why a publish or a transaction failed. The first five mirror the WIT
/// `error` variants and carry the host's explanation.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// This component may not publish to that topic (it is not in its
    /// `publishes` list).
    AccessDenied(String),
    /// No such topic is declared in `atoll.toml`.
    UnknownTopic(String),
    /// The payload, a header, the id or the partition key is over its limit.
    TooLarge(String),
    /// Malformed input: an empty or invalid header name, a transaction
    /// already committed, ...
    Invalid(String),
    /// The store failed; the caller may retry.
    Other(String),
    /// A value given to [`publish_json`], [`Transaction::set_json`] or
    /// [`Outgoing::json`] (through `?`) could not be serialized.
    Json(serde_json::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::AccessDenied(msg) => write!(f, "access denied: {msg}"),
            Error::UnknownTopic(msg) => write!(f, "unknown topic: {msg}"),
            Error::TooLarge(msg) => write!(f, "too large: {msg}"),
            Error::Invalid(msg) => write!(f, "invalid: {msg}"),
            Error::Other(msg) => write!(f, "bus error: {msg}"),
            Error::Json(err) => write!(f, "bus JSON error: {err}"),
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

impl From<wit::Error> for Error {
    fn from(err: wit::Error) -> Self {
        match err {
            wit::Error::AccessDenied(msg) => Error::AccessDenied(msg),
            wit::Error::UnknownTopic(msg) => Error::UnknownTopic(msg),
            wit::Error::TooLarge(msg) => Error::TooLarge(msg),
            wit::Error::Invalid(msg) => Error::Invalid(msg),
            wit::Error::Other(msg) => Error::Other(msg),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::Json(err)
    }
}

/// Publishes `message` and returns its id.
///
/// The message belongs to this invocation: the host stores it, durably,
/// when the invocation ends well (before the HTTP response completes, or
/// when the message being handled is acknowledged). If the invocation
/// traps, times out or does not acknowledge, nothing is published.
pub fn publish(message: Outgoing) -> Result<String, Error> {
    Ok(publisher::publish(&message.into_wit())?)
}

/// Publishes `value` as JSON to `topic` (see [`Outgoing::json`] and
/// [`publish`]) and returns the message id.
pub fn publish_json<T: Serialize + ?Sized>(topic: &str, value: &T) -> Result<String, Error> {
    publish(Outgoing::json(topic, value)?)
}

/// Key-value writes and publishes that happen together or not at all.
///
/// Writes go to this component's own key-value store, the one
/// [`kv::Store::open`] opens: `set("orders", k, v)` is what
/// `Store::open("orders")?.set(k, v)` would do, but only at
/// [`commit`](Transaction::commit). Nothing is visible before then, not even
/// to this invocation; a transaction dropped without a commit leaves no
/// trace. Unlike [`publish`], a committed publish stands even if the
/// invocation traps later.
#[derive(Debug)]
pub struct Transaction {
    inner: outbox::Transaction,
}

impl Default for Transaction {
    fn default() -> Self {
        Transaction::new()
    }
}

impl Transaction {
    /// Starts an empty transaction.
    pub fn new() -> Transaction {
        Transaction {
            inner: outbox::Transaction::new(),
        }
    }

    /// Sets `key` in `bucket` to `value` at commit.
    pub fn set(&self, bucket: &str, key: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
        Ok(self.inner.set(bucket, key, value.as_ref())?)
    }

    /// Sets `key` in `bucket` to `value` as JSON at commit.
    pub fn set_json<T: Serialize + ?Sized>(
        &self,
        bucket: &str,
        key: &str,
        value: &T,
    ) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value)?;
        self.set(bucket, key, bytes)
    }

    /// Deletes `key` from `bucket` at commit (absent is fine).
    pub fn delete(&self, bucket: &str, key: &str) -> Result<(), Error> {
        Ok(self.inner.delete(bucket, key)?)
    }

    /// Publishes `message` at commit; returns its id now.
    pub fn publish(&self, message: Outgoing) -> Result<String, Error> {
        Ok(self.inner.publish(&message.into_wit())?)
    }

    /// Records at commit that `message` was handled, as [`mark_processed`]
    /// does, so [`already_processed`] is true exactly when this
    /// transaction's other effects happened.
    pub fn mark_processed(&self, message: &Message) -> Result<(), Error> {
        self.set(
            PROCESSED_BUCKET,
            &processed_key(message),
            message.published_at.to_string(),
        )
    }

    /// Applies every write and publish in one atomic step and returns once
    /// it is durable: either all of it happened or none of it did.
    pub fn commit(self) -> Result<(), Error> {
        Ok(self.inner.commit()?)
    }
}

/// The key under which [`PROCESSED_BUCKET`] remembers `message`:
/// `<subscription>/<id>`.
pub fn processed_key(message: &Message) -> String {
    format!("{}/{}", message.subscription, message.id)
}

/// Whether `message` was marked as handled by this subscription (with
/// [`mark_processed`] or [`Transaction::mark_processed`]).
pub fn already_processed(message: &Message) -> Result<bool, kv::Error> {
    kv::Store::open(PROCESSED_BUCKET)?.exists(&processed_key(message))
}

/// Marks `message` as handled by this subscription, at once (not
/// transactionally; see the [module docs](self#idempotent-consumers)).
pub fn mark_processed(message: &Message) -> Result<(), kv::Error> {
    kv::Store::open(PROCESSED_BUCKET)?
        .set(&processed_key(message), message.published_at.to_string())
}

/// Runs `handler` unless `message` was already handled, and marks it when
/// `handler` acknowledges it.
///
/// An already handled message is acknowledged without calling `handler`.
/// `Retry` and `Reject` are passed on and leave no mark. If the key-value
/// store fails (reading or writing the mark), the failure is logged and the
/// message retried. This is at-least-once: see the
/// [module docs](self#idempotent-consumers) for what can still repeat and
/// for the transactional form.
pub fn idempotent(message: &Message, handler: impl FnOnce(&Message) -> Disposition) -> Disposition {
    match already_processed(message) {
        Ok(true) => return Disposition::Ack,
        Ok(false) => {}
        Err(err) => {
            log_failure(message, "reading", &err);
            return Disposition::retry_because(format!("reading the processed mark: {err}"));
        }
    }
    let disposition = handler(message);
    if disposition == Disposition::Ack
        && let Err(err) = mark_processed(message)
    {
        log_failure(message, "writing", &err);
        return Disposition::retry_because(format!("writing the processed mark: {err}"));
    }
    disposition
}

fn log_failure(message: &Message, doing: &str, err: &kv::Error) {
    crate::log::log(
        crate::log::Level::Error,
        "atoll_sdk::bus",
        &format!(
            "{doing} the processed mark of message `{}` ({}) failed, retrying it: {err}",
            message.id, message.subscription
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        Message {
            id: "m-1".into(),
            topic: "orders".into(),
            payload: br#"{"n":1}"#.to_vec(),
            headers: vec![("Behavior".into(), "fail".into()), ("x".into(), "1".into())],
            partition_key: Some("k".into()),
            attempt: 2,
            published_at: 1_500,
            subscription: "orders/payments".into(),
        }
    }

    #[test]
    fn message_accessors() {
        let msg = message();
        assert_eq!(msg.header("behavior"), Some("fail"));
        assert_eq!(msg.header("BEHAVIOR"), Some("fail"));
        assert_eq!(msg.header("missing"), None);
        assert_eq!(msg.text().ok(), Some(r#"{"n":1}"#));
        let value: serde_json::Value = msg.json().unwrap();
        assert_eq!(value["n"], 1);
        assert_eq!(
            msg.published_time(),
            UNIX_EPOCH + Duration::from_millis(1_500)
        );
        assert_eq!(processed_key(&msg), "orders/payments/m-1");
    }

    #[test]
    fn message_from_wit_keeps_every_field() {
        let msg = message();
        let raw = wit::Message {
            id: msg.id.clone(),
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
            headers: msg.headers.clone(),
            partition_key: msg.partition_key.clone(),
            attempt: msg.attempt,
            published_at: msg.published_at,
            subscription: msg.subscription.clone(),
        };
        assert_eq!(Message::from_wit(raw), msg);
    }

    #[test]
    fn dispositions_convert() {
        assert!(matches!(Disposition::Ack.into_wit(), wit::Disposition::Ack));
        assert!(matches!(
            Disposition::retry().into_wit(),
            wit::Disposition::Retry(wit::RetryOptions {
                after_ms: None,
                reason: None
            })
        ));
        assert!(matches!(
            Disposition::retry_after(Duration::from_micros(2_999)).into_wit(),
            wit::Disposition::Retry(wit::RetryOptions {
                after_ms: Some(2),
                ..
            })
        ));
        assert!(matches!(
            Disposition::retry_after(Duration::MAX).into_wit(),
            wit::Disposition::Retry(wit::RetryOptions {
                after_ms: Some(u64::MAX),
                ..
            })
        ));
        match Disposition::retry_because("busy").into_wit() {
            wit::Disposition::Retry(wit::RetryOptions { reason, .. }) => {
                assert_eq!(reason.as_deref(), Some("busy"))
            }
            other => panic!("{other:?}"),
        }
        match Disposition::Reject("no".into()).into_wit() {
            wit::Disposition::Reject(reason) => assert_eq!(reason, "no"),
            other => panic!("{other:?}"),
        }
        match __handle(
            wit::Message {
                id: "1".into(),
                topic: "t".into(),
                payload: Vec::new(),
                headers: Vec::new(),
                partition_key: None,
                attempt: 1,
                published_at: 0,
                subscription: "t/g".into(),
            },
            __no_message_handler,
        ) {
            wit::Disposition::Reject(reason) => assert!(reason.contains("message_handler!")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn outgoing_builder() {
        let out = Outgoing::new("t", "body")
            .header("a", "1")
            .header("a", "2")
            .id("m-1")
            .partition_key("k");
        assert_eq!(out.topic(), "t");
        assert_eq!(out.payload(), b"body");
        assert_eq!(out.headers().len(), 2);
        let raw = out.into_wit();
        assert_eq!(raw.id.as_deref(), Some("m-1"));
        assert_eq!(raw.partition_key.as_deref(), Some("k"));
        assert_eq!(raw.headers[1], ("a".to_string(), "2".to_string()));

        let json = Outgoing::json("t", &serde_json::json!({"a": [1]})).unwrap();
        assert_eq!(json.payload(), br#"{"a":[1]}"#);
        assert_eq!(
            json.headers(),
            &[("content-type".to_string(), "application/json".to_string())]
        );
        let bad = std::collections::HashMap::from([((1, 2), 3)]);
        assert!(Outgoing::json("t", &bad).is_err());
        let raw = Outgoing::new("t", Vec::new()).into_wit();
        assert_eq!((raw.id, raw.partition_key), (None, None));
    }

    #[test]
    fn errors_convert_and_display() {
        let err = Error::from(wit::Error::AccessDenied("topic `x`".into()));
        assert!(matches!(err, Error::AccessDenied(_)));
        assert_eq!(err.to_string(), "access denied: topic `x`");
        let json_err = serde_json::from_str::<u8>("x").unwrap_err();
        let err = Error::from(json_err);
        assert!(std::error::Error::source(&err).is_some());
        for (raw, text) in [
            (wit::Error::UnknownTopic("a".into()), "unknown topic: a"),
            (wit::Error::TooLarge("b".into()), "too large: b"),
            (wit::Error::Invalid("c".into()), "invalid: c"),
            (wit::Error::Other("d".into()), "bus error: d"),
        ] {
            assert_eq!(Error::from(raw).to_string(), text);
        }
    }
}
