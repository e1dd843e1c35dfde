//! wasmtime engines, the epoch ticker, and loading components.
//!
//! wasmtime fixes the wasm stack size per `Engine`, so Atoll keeps one engine
//! per distinct `limits.stack` (almost always just one). Each engine uses the
//! pooling allocator with copy-on-write memory images and epoch interruption;
//! one OS thread (not a tokio task, which a busy runtime could starve) ticks
//! every engine's epoch.

mod cache;
mod component;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::Context;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::sandbox::{self, InstanceState};

pub use cache::ArtifactCache;
pub use component::{
    INCOMING_HANDLER, LoadedComponent, MESSAGE_HANDLER, check_component_bytes, load_component,
    load_component_bytes,
};

/// How often epochs advance: a looping guest is stopped at most this long after
/// its deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Most component instances one engine's pool holds.
pub const MAX_POOL_INSTANCES: u32 = 1000;

/// How big each engine's instance pool is.
#[derive(Debug, Clone, Copy)]
pub struct PoolSize {
    /// Component instances alive at once (sum of `max_concurrency`, plus slack).
    pub instances: u32,
    /// Largest linear memory any component may have.
    pub max_memory: u64,
}

/// An engine and the linker for it.
#[derive(Clone)]
pub struct EngineHandle {
    /// The engine.
    pub engine: Engine,
    /// A linker carrying every Atoll capability.
    pub linker: Arc<Linker<InstanceState>>,
}

impl PoolSize {
    /// The pool for components with these `(max_concurrency, memory)` limits:
    /// their concurrency plus slack, capped at [`MAX_POOL_INSTANCES`].
    pub fn for_components(limits: impl IntoIterator<Item = (u32, u64)>) -> PoolSize {
        let (mut instances, mut max_memory) = (16u32, 1u64 << 20);
        for (concurrency, memory) in limits {
            instances = instances.saturating_add(concurrency);
            max_memory = max_memory.max(memory);
        }
        if instances > MAX_POOL_INSTANCES {
            tracing::warn!(
                wanted = instances,
                cap = MAX_POOL_INSTANCES,
                "the components' max_concurrency adds up to more instances than one pool holds; past the cap, requests get 503"
            );
        }
        PoolSize {
            instances: instances.min(MAX_POOL_INSTANCES),
            max_memory,
        }
    }
}

/// All engines of a host, keyed by wasm stack size.
pub struct Engines {
    inner: Arc<Mutex<BTreeMap<u64, EngineHandle>>>,
    pools: BTreeMap<u64, PoolSize>,
    fallback: PoolSize,
}

impl Engines {
    /// Creates the set and starts the epoch ticker, which stops when the set
    /// is dropped. `pools` sizes the engine of each stack size; others get `fallback`.
    pub fn new(pools: BTreeMap<u64, PoolSize>, fallback: PoolSize) -> anyhow::Result<Engines> {
        let inner: Arc<Mutex<BTreeMap<u64, EngineHandle>>> = Default::default();
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("atoll-epoch".into())
            .spawn(move || ticker(weak))
            .context("starting the epoch ticker thread")?;
        Ok(Engines {
            inner,
            pools,
            fallback,
        })
    }

    /// The engine for a wasm stack size, created on first use.
    pub fn get(&self, stack: u64) -> anyhow::Result<EngineHandle> {
        let mut all = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = all.get(&stack) {
            return Ok(h.clone());
        }
        let pool = self.pools.get(&stack).copied().unwrap_or(self.fallback);
        let engine = Engine::new(&engine_config(pool, stack)?)
            .map_err(anyhow::Error::from)
            .context("creating the wasmtime engine")?;
        let linker = Arc::new(sandbox::linker(&engine)?);
        let handle = EngineHandle { engine, linker };
        all.insert(stack, handle.clone());
        Ok(handle)
    }
}

fn engine_config(pool: PoolSize, stack: u64) -> anyhow::Result<Config> {
    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .max_wasm_stack(stack as usize)
        // Host functions run on the same fiber stack: give them room above the wasm limit.
        .async_stack_size(stack as usize + (1 << 20));
    let mut p = PoolingAllocationConfig::default();
    let n = pool.instances.max(16);
    p.total_component_instances(n)
        // A Rust wasip2 component is a handful of core instances (module,
        // adapter, shims); leave room for bigger ones.
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_memory_size(pool.max_memory as usize)
        .table_keep_resident(16 << 10);
    // Resetting a slot by madvise and faulting its pages back on the next
    // request (copy-on-write faults, TLB-shootdown IPIs) was ~2/3 of all CPU
    // per request (BENCHMARKS.md). With PAGEMAP_SCAN (Linux >= 6.7) wasmtime
    // restores only the pages a guest dirtied, in place, so a slot can keep
    // what a Rust guest touches resident (its shadow stack sits near the
    // 1 MiB mark): 2 MiB. Without it, keeping 2 MiB would mean clearing 2 MiB
    // per reset, so keep little.
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        p.pagemap_scan(wasmtime::Enabled::Yes)
            .linear_memory_keep_resident(2 << 20);
    } else {
        p.linear_memory_keep_resident(64 << 10);
    }
    cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    Ok(cfg)
}

fn ticker(engines: Weak<Mutex<BTreeMap<u64, EngineHandle>>>) {
    loop {
        std::thread::sleep(EPOCH_TICK);
        let Some(all) = engines.upgrade() else { return };
        let all = all.lock().unwrap_or_else(|e| e.into_inner());
        for h in all.values() {
            h.engine.increment_epoch();
        }
    }
}
