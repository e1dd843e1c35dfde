//! `atoll:bus/publisher` and `atoll:bus/outbox` for guests.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::log::StoredMessage;
use super::{Bus, BusError, Origin, Outgoing};
use crate::bindings::atoll::bus::{outbox, publisher, types};
use crate::kv::{MAX_BUCKET_LEN, bucket_prefix, encode_key};
use crate::telemetry::span::{self, Span, SpanKind};

/// Most messages one invocation may publish (staged or in transactions).
pub const MAX_STAGED: usize = 10_000;
/// Most writes one transaction may hold.
pub const MAX_TX_WRITES: usize = 10_000;

/// What one component may do on the bus (shared by its invocations).
pub struct BusGrant {
    /// The bus.
    pub bus: Arc<Bus>,
    /// The component's key-value tree, for transactions.
    pub kv_tree: sled::Tree,
    /// Largest kv value (`kv_value_size`).
    pub max_value: usize,
}

/// One invocation's bus state: messages staged until it ends well.
pub struct BusState {
    grant: Option<Arc<BusGrant>>,
    component: Arc<str>,
    staged: Vec<StoredMessage>,
    /// Bytes held by staged messages and open transactions.
    held: usize,
    /// Most bytes staged at once (the component's memory limit).
    max_held: usize,
    /// Messages published through this invocation (staged and committed).
    count: usize,
    /// The trace context this invocation runs in, added to what it publishes.
    pub traceparent: Option<String>,
    /// The version, named on `bus.publish` spans when they are exported.
    pub version: Option<Arc<str>>,
}

impl BusState {
    /// A fresh state; `grant` is `None` when the host runs without a bus.
    pub fn new(grant: Option<Arc<BusGrant>>, component: Arc<str>, max_held: usize) -> Self {
        BusState {
            grant,
            component,
            staged: Vec::new(),
            held: 0,
            max_held,
            count: 0,
            traceparent: None,
            version: None,
        }
    }

    /// Takes the messages this invocation published.
    pub fn take_staged(&mut self) -> Vec<StoredMessage> {
        self.held = 0;
        std::mem::take(&mut self.staged)
    }

    /// Takes over messages a nested invocation (a component it called)
    /// published: they are stored with this invocation's own, if it ends well.
    pub fn adopt(&mut self, messages: Vec<StoredMessage>) {
        self.count += messages.len();
        self.staged.extend(messages);
    }

    /// The bus, when this invocation may use one.
    pub fn bus(&self) -> Option<&Arc<Bus>> {
        self.grant.as_ref().map(|g| &g.bus)
    }

    fn prepare(&mut self, message: types::OutgoingMessage) -> Result<StoredMessage, BusError> {
        let grant = self
            .grant
            .as_ref()
            .ok_or_else(|| BusError::AccessDenied("this host has no bus".into()))?;
        if self.count >= MAX_STAGED {
            return Err(BusError::TooLarge(format!(
                "one invocation may publish at most {MAX_STAGED} messages"
            )));
        }
        // Everything lifted from the guest counts, not just the payload.
        let size = message.payload.len()
            + message.topic.len()
            + message.id.as_ref().map_or(0, String::len)
            + message.partition_key.as_ref().map_or(0, String::len)
            + message
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if self.held + size > self.max_held {
            return Err(BusError::TooLarge(format!(
                "messages held by this invocation would exceed {} bytes (its memory limit)",
                self.max_held
            )));
        }
        // Exported, the message carries the `bus.publish` span's context,
        // so its delivery continues the trace under the publish.
        let exported = crate::telemetry::otlp::exporting()
            .then(span::current_context)
            .flatten()
            .map(|c| c.traceparent());
        let stored = grant.bus.prepare(
            Origin::Component(&self.component),
            Outgoing {
                topic: message.topic,
                payload: message.payload,
                headers: message.headers,
                id: message.id,
                partition_key: message.partition_key,
            },
            exported.as_deref().or(self.traceparent.as_deref()),
        )?;
        self.count += 1;
        self.held += size;
        Ok(stored)
    }
}

/// An open outbox transaction.
#[derive(Default)]
pub struct Transaction {
    /// Key-value writes: encoded key, new value (`None` deletes).
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    messages: Vec<StoredMessage>,
    bytes: usize,
    committed: bool,
}

/// The bus state and resource table of one store.
pub struct BusView<'a> {
    state: &'a mut BusState,
    table: &'a mut ResourceTable,
}

impl<'a> BusView<'a> {
    /// A view over a store's bus state and resource table.
    pub fn new(state: &'a mut BusState, table: &'a mut ResourceTable) -> Self {
        BusView { state, table }
    }

    fn tx(&mut self, tx: &Resource<Transaction>) -> wasmtime::Result<&mut Transaction> {
        Ok(self.table.get_mut(tx)?)
    }
}

struct HasBus;

impl HasData for HasBus {
    type Data<'a> = BusView<'a>;
}

/// Adds `atoll:bus/{types,publisher,outbox}` to a linker.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> BusView<'_>,
) -> anyhow::Result<()> {
    types::add_to_linker::<T, HasBus>(linker, view)?;
    publisher::add_to_linker::<T, HasBus>(linker, view)?;
    outbox::add_to_linker::<T, HasBus>(linker, view)?;
    Ok(())
}

impl From<BusError> for types::Error {
    fn from(e: BusError) -> Self {
        match e {
            BusError::AccessDenied(m) => types::Error::AccessDenied(m),
            BusError::UnknownTopic(m) => types::Error::UnknownTopic(m),
            BusError::TooLarge(m) => types::Error::TooLarge(m),
            BusError::Invalid(m) | BusError::NotFound(m) => types::Error::Invalid(m),
            BusError::Other(m) => types::Error::Other(m),
        }
    }
}

impl types::Host for BusView<'_> {}

impl publisher::Host for BusView<'_> {
    fn publish(
        &mut self,
        message: types::OutgoingMessage,
    ) -> wasmtime::Result<Result<String, types::Error>> {
        let span = publish_span(self.state, &message.topic);
        let _s = span.clone().enter();
        Ok(match self.state.prepare(message) {
            Ok(stored) => {
                let id = stored.id.clone();
                span.record(|a| _ = a.str("message", &id));
                self.state.staged.push(stored);
                Ok(id)
            }
            Err(e) => {
                tracing::debug!(component = %self.state.component, error = %e, "publish refused");
                Err(e.into())
            }
        })
    }
}

impl outbox::Host for BusView<'_> {}

/// `bus.publish`: one message staged (directly or in an outbox transaction).
fn publish_span(state: &BusState, topic: &str) -> Span {
    Span::new("bus.publish", SpanKind::Producer).with(|a| {
        a.str("component", &state.component)
            .str("version", state.version.as_deref().unwrap_or(""))
            .str("topic", topic);
    })
}

impl BusView<'_> {
    fn write(
        &mut self,
        tx: &Resource<Transaction>,
        bucket: &str,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        let Some(grant) = self.state.grant.clone() else {
            return Ok(Err(types::Error::AccessDenied(
                "this host has no bus".into(),
            )));
        };
        let max_held = self.state.max_held;
        let held = self.state.held;
        let t = self.tx(tx)?;
        if t.committed {
            return Ok(Err(types::Error::Invalid(
                "transaction already committed".into(),
            )));
        }
        if bucket.len() > MAX_BUCKET_LEN {
            return Ok(Err(types::Error::TooLarge(format!(
                "bucket name is {} bytes; the limit is {MAX_BUCKET_LEN}",
                bucket.len()
            ))));
        }
        if let Some(v) = &value
            && v.len() > grant.max_value
        {
            return Ok(Err(types::Error::TooLarge(format!(
                "value is {} bytes; the limit is {} (kv_value_size)",
                v.len(),
                grant.max_value
            ))));
        }
        if t.writes.len() >= MAX_TX_WRITES {
            return Ok(Err(types::Error::TooLarge(format!(
                "a transaction holds at most {MAX_TX_WRITES} writes"
            ))));
        }
        let key = match encode_key(&bucket_prefix(bucket), key) {
            Ok(k) => k,
            Err(e) => return Ok(Err(types::Error::TooLarge(e.to_string()))),
        };
        let size = key.len() + value.as_ref().map_or(0, Vec::len);
        if held + size > max_held {
            return Ok(Err(types::Error::TooLarge(format!(
                "data held by this invocation would exceed {max_held} bytes (its memory limit)"
            ))));
        }
        t.bytes += size;
        t.writes.push((key, value));
        self.state.held += size;
        Ok(Ok(()))
    }
}

impl outbox::HostTransaction for BusView<'_> {
    fn new(&mut self) -> wasmtime::Result<Resource<Transaction>> {
        Ok(self.table.push(Transaction::default())?)
    }

    fn set(
        &mut self,
        tx: Resource<Transaction>,
        bucket: String,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        self.write(&tx, &bucket, &key, Some(value))
    }

    fn delete(
        &mut self,
        tx: Resource<Transaction>,
        bucket: String,
        key: String,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        self.write(&tx, &bucket, &key, None)
    }

    fn publish(
        &mut self,
        tx: Resource<Transaction>,
        message: types::OutgoingMessage,
    ) -> wasmtime::Result<Result<String, types::Error>> {
        if self.tx(&tx)?.committed {
            return Ok(Err(types::Error::Invalid(
                "transaction already committed".into(),
            )));
        }
        let before = self.state.held;
        let span = publish_span(self.state, &message.topic);
        let _s = span.clone().enter();
        let stored = match self.state.prepare(message) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e.into())),
        };
        span.record(|a| _ = a.str("message", &stored.id));
        let id = stored.id.clone();
        let size = self.state.held - before;
        let t = self.tx(&tx)?;
        t.bytes += size;
        t.messages.push(stored);
        Ok(Ok(id))
    }

    async fn commit(
        &mut self,
        tx: Resource<Transaction>,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        let Some(grant) = self.state.grant.clone() else {
            return Ok(Err(types::Error::AccessDenied(
                "this host has no bus".into(),
            )));
        };
        let t = self.tx(&tx)?;
        if t.committed {
            return Ok(Err(types::Error::Invalid(
                "transaction already committed".into(),
            )));
        }
        t.committed = true;
        let writes = std::mem::take(&mut t.writes);
        let messages = std::mem::take(&mut t.messages);
        let bytes = std::mem::take(&mut t.bytes);
        self.state.held = self.state.held.saturating_sub(bytes);
        let span = Span::new("bus.commit", SpanKind::Internal).with(|a| {
            a.str("component", &self.state.component)
                .str("version", self.state.version.as_deref().unwrap_or(""))
                .uint("writes", writes.len() as u64)
                .uint("messages", messages.len() as u64);
        });
        let result = span
            .instrument(
                grant
                    .bus
                    .commit_transaction(&grant.kv_tree, writes, messages),
            )
            .await;
        Ok(result.map_err(Into::into))
    }

    fn drop(&mut self, tx: Resource<Transaction>) -> wasmtime::Result<()> {
        let t = self.table.delete(tx)?;
        self.state.held = self.state.held.saturating_sub(t.bytes);
        Ok(())
    }
}
