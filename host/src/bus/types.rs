//! What goes in and out of the bus: messages, publish results, errors and the
//! views the admin API serves.

use serde::{Deserialize, Serialize};

/// A message to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outgoing {
    /// A declared topic.
    pub topic: String,
    /// The body.
    pub payload: Vec<u8>,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// Idempotency key; the host assigns a unique id when absent.
    pub id: Option<String>,
    /// Messages sharing a key are delivered in order, one at a time, per subscription.
    pub partition_key: Option<String>,
}

/// Who is publishing (publish policy depends on it).
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// An operator through the admin API or CLI: any declared topic.
    Operator,
    /// A component: only the topics in its `publishes`.
    Component(&'a str),
}

/// The result of publishing one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The message id.
    pub id: String,
    /// True when a message with this id was already stored within the topic's
    /// dedup window (nothing new was stored).
    pub duplicate: bool,
}

/// A bus error. The variants match `atoll:bus/types.error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The publisher may not use that topic.
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// No such topic is declared.
    #[error("unknown topic: {0}")]
    UnknownTopic(String),
    /// A payload, header, id or key over its limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// Malformed input.
    #[error("invalid: {0}")]
    Invalid(String),
    /// No such subscription or message.
    #[error("not found: {0}")]
    NotFound(String),
    /// The store failed.
    #[error("{0}")]
    Other(String),
}

impl BusError {
    /// The HTTP status an API answers this error with.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            BusError::AccessDenied(_) => S::FORBIDDEN,
            BusError::UnknownTopic(_) | BusError::NotFound(_) => S::NOT_FOUND,
            BusError::TooLarge(_) => S::PAYLOAD_TOO_LARGE,
            BusError::Invalid(_) => S::BAD_REQUEST,
            BusError::Other(_) => S::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn storage(e: impl std::fmt::Display) -> BusError {
        BusError::Other(format!("bus storage error: {e}"))
    }
}

/// Every topic and subscription with its counters (`atoll bus ls`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overview {
    /// Declared topics, by name.
    pub topics: Vec<TopicInfo>,
}

/// One topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicInfo {
    /// Its name.
    pub name: String,
    /// Largest payload accepted, in bytes.
    pub max_payload: u64,
    /// Dedup window in milliseconds.
    pub dedup_window_ms: u64,
    /// Messages published (stored) since the host started.
    pub published: u64,
    /// Publishes that were duplicates within the window since the host started.
    pub duplicates: u64,
    /// Its subscriptions.
    pub subscriptions: Vec<SubscriptionInfo>,
}

/// One subscription's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscriptionInfo {
    /// `topic/group`.
    pub id: String,
    /// The group.
    pub group: String,
    /// Components consuming it.
    pub consumers: Vec<String>,
    /// Messages stored and not yet handled (waiting, retrying or in flight).
    pub depth: u64,
    /// Deliveries running now.
    pub in_flight: u64,
    /// Messages waiting for a retry delay to pass.
    pub retrying: u64,
    /// Messages in its dead letters.
    pub dead_letters: u64,
    /// Deliveries started since the host started.
    pub delivered: u64,
    /// Messages acknowledged since the host started.
    pub acked: u64,
    /// Deliveries that ended in a retry since the host started.
    pub retried: u64,
    /// Messages moved to the dead letters since the host started.
    pub dead_lettered: u64,
    /// Deliveries per message before dead-lettering.
    pub max_deliver: u32,
    /// Most deliveries in flight at once.
    pub prefetch: u32,
}

/// A dead-lettered message (`atoll bus dlq`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The subscription it died in.
    pub subscription: String,
    /// Message id.
    pub id: String,
    /// Position in the log.
    pub seq: u64,
    /// Why: `rejected: ...`, `max_deliver (5) reached`, ...
    pub reason: String,
    /// Deliveries made.
    pub attempts: u32,
    /// The last delivery's error (trap, deadline, retry), if any.
    pub last_error: Option<String>,
    /// When it was dead-lettered (ms since the Unix epoch).
    pub dead_at_ms: u64,
    /// When it was published (ms since the Unix epoch).
    pub published_at_ms: u64,
    /// Its partition key.
    pub partition_key: Option<String>,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Payload size in bytes.
    pub payload_size: usize,
    /// The first 200 bytes of the payload as (lossy) UTF-8.
    pub payload_preview: String,
}
