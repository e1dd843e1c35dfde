//! What the key-value store counts for `/metrics`: operations per component
//! and op, and the group commit's flushes with their latency. Lock-free on
//! the operation path (one relaxed add); the map of components is locked
//! only when a namespace is opened.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::registry::Histogram;

/// Operations a namespace counts, in the order of [`Op::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Set,
    Delete,
    Exists,
    List,
    Update,
    Batch,
}

impl Op {
    /// Every op.
    pub const ALL: [Op; 7] = [
        Op::Get,
        Op::Set,
        Op::Delete,
        Op::Exists,
        Op::List,
        Op::Update,
        Op::Batch,
    ];

    /// The `op` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Delete => "delete",
            Op::Exists => "exists",
            Op::List => "list",
            Op::Update => "update",
            Op::Batch => "batch",
        }
    }
}

/// One component's operation counts.
#[derive(Default)]
pub struct OpCounts([AtomicU64; 7]);

impl OpCounts {
    /// Counts one operation.
    pub fn add(&self, op: Op) {
        self.0[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Operations of one kind so far.
    pub fn get(&self, op: Op) -> u64 {
        self.0[op as usize].load(Ordering::Relaxed)
    }
}

/// The store's counters.
#[derive(Default)]
pub struct KvStats {
    components: Mutex<BTreeMap<String, Arc<OpCounts>>>,
    /// Group-commit flushes that ran, and those that failed.
    pub flushes: AtomicU64,
    pub flush_failures: AtomicU64,
    /// How long each flush took.
    pub flush_latency: Histogram,
}

impl KvStats {
    /// The counters of one component's namespace (shared by its versions).
    pub fn component(&self, name: &str) -> Arc<OpCounts> {
        self.components
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Every component with its counts, by name.
    pub fn components(&self) -> Vec<(String, Arc<OpCounts>)> {
        self.components
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Records a finished flush.
    pub fn flushed(&self, took: Duration, ok: bool) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.flush_failures.fetch_add(1, Ordering::Relaxed);
        }
        self.flush_latency.observe(took);
    }
}
