//! The running components, their versions, and the route table.
//!
//! Each component of the manifest is a [`Service`] whose [`Deployment`] (the
//! active version, and perhaps a canary with a share of traffic) lives in an
//! [`ArcSwap`]. A request or a message delivery loads it without a lock and
//! keeps the version it picked until it ends; a deploy, promote or rollback
//! builds a new `Deployment` and swaps the pointer, so in-flight work finishes
//! on the old version and new work starts on the new one, with no pause.
//!
//! `deploy.rs` is how versions are prepared and swapped, `store.rs` how they
//! survive a restart, `view.rs` what the admin API shows of them, `watch.rs`
//! how `atoll up --watch` redeploys a component whose source changed.

mod deploy;
mod stats;
mod store;
mod view;
mod watch;

pub use deploy::{DeployError, DeployReport, DeployRequest, Origin, RegistryParts};
pub use stats::{Histogram, LATENCY_BOUNDS, Limit, MAX_WINDOW, VersionStats, Window};
pub use store::{ComponentState, Event, RegistryStore, VersionRecord};
pub use view::{
    CanaryView, ComponentView, EdgeView, HealthCheck, HealthView, RegistryView, VersionView,
};
pub use watch::watch_sources;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime::component::InstancePre;
use wasmtime_wasi_http::p2::bindings::ProxyIndices;

use crate::bindings::handler::MessageHandlerIndices;
use crate::config::{ComponentSpec, Limits, Route};
use crate::engine::{ArtifactCache, EngineHandle};
use crate::kv::KvBackend;
use crate::sandbox::{Grants, InstanceState};

/// One loaded, linked component version, ready to instantiate.
pub struct ComponentRuntime {
    /// Component name.
    pub name: Arc<str>,
    /// Its version.
    pub version: semver::Version,
    /// sha256 of its binary.
    pub digest: String,
    /// Its engine (one per stack size).
    pub engine: Engine,
    /// Pre-linked instantiation recipe.
    pub pre: InstancePre<InstanceState>,
    /// Its `wasi:http/incoming-handler` export, when it has one.
    pub http: Option<ProxyIndices>,
    /// Its `atoll:bus/handler` export, when it has one.
    pub handler: Option<MessageHandlerIndices>,
    /// What each invocation is granted.
    pub grants: Grants,
    /// Its limits.
    pub limits: Limits,
    /// Bounds instances alive at once (`max_concurrency`), shared by all
    /// versions of the component.
    pub concurrency: Arc<Semaphore>,
    /// Interfaces it exports.
    pub exports: Vec<String>,
    /// Interfaces it imports.
    pub imports: Vec<String>,
    /// When it was deployed (RFC 3339).
    pub deployed_at: String,
    /// Its outcomes (its stores count refused memory growths here too).
    pub stats: Arc<VersionStats>,
    /// Its last health check.
    pub health: Mutex<Option<HealthRecord>>,
    /// Interfaces it imports from other components.
    pub call_imports: Vec<crate::calls::CallImport>,
    /// Interfaces it exports to other components, by `ns:pkg/iface`.
    pub call_exports: crate::calls::CallExports,
}

impl ComponentRuntime {
    /// Its last health check.
    pub fn health(&self) -> Option<HealthRecord> {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What serves a component now.
#[derive(Default)]
pub struct Deployment {
    /// The version serving (`None` once removed).
    pub active: Option<Arc<ComponentRuntime>>,
    /// A version trying out a share of the traffic.
    pub canary: Option<Canary>,
}

/// A canary version.
pub struct Canary {
    /// The version.
    pub runtime: Arc<ComponentRuntime>,
    /// Percent (1-99) of requests and messages it gets.
    pub percent: u8,
}

/// The last health check of a version.
#[derive(Debug, Clone)]
pub struct HealthRecord {
    /// The status it answered (`None`: no answer).
    pub status: Option<u16>,
    /// When (RFC 3339).
    pub at: String,
    /// The problem, if any.
    pub error: Option<String>,
    /// How long the check took.
    pub took: std::time::Duration,
}

/// One component of the manifest and its versions.
pub struct Service {
    /// What the manifest says about it.
    pub spec: ComponentSpec,
    pub(crate) engine: EngineHandle,
    pub(crate) grants: Grants,
    pub(crate) concurrency: Arc<Semaphore>,
    deployment: ArcSwap<Deployment>,
    /// Counts picks, to spread the canary's share evenly.
    turn: AtomicU64,
    /// Held by whatever changes the deployment (deploy, promote, rollback,
    /// remove, automatic rollback), so they happen one at a time.
    pub(crate) changing: tokio::sync::Mutex<()>,
    /// Set while an automatic rollback is under way.
    rolling_back: AtomicBool,
    /// The components it may call, with their guards.
    pub edges: BTreeMap<String, Arc<crate::calls::Edge>>,
}

impl Service {
    /// The version to run the next request or message on: the canary for
    /// its share of picks (spread evenly: exactly `percent` of every 100),
    /// else the active version.
    pub fn pick(&self) -> Option<Arc<ComponentRuntime>> {
        let deployment = self.deployment.load();
        if let Some(canary) = &deployment.canary {
            let n = self.turn.fetch_add(1, Ordering::Relaxed) % 100;
            let p = u64::from(canary.percent);
            if (n + 1) * p / 100 > n * p / 100 {
                return Some(canary.runtime.clone());
            }
        }
        deployment.active.clone()
    }

    /// What serves now.
    pub fn deployment(&self) -> Arc<Deployment> {
        self.deployment.load_full()
    }

    pub(crate) fn swap(&self, deployment: Deployment) {
        self.deployment.store(Arc::new(deployment));
    }

    /// The running versions with their role (`active`, `canary`) and
    /// their share of picks in percent, as `/metrics` labels them.
    pub fn running(&self) -> Vec<(Arc<ComponentRuntime>, &'static str, u8)> {
        let d = self.deployment();
        let mut out = Vec::new();
        if let Some(a) = &d.active {
            let share = 100 - d.canary.as_ref().map_or(0, |c| c.percent);
            out.push((a.clone(), "active", share));
        }
        if let Some(c) = &d.canary {
            out.push((c.runtime.clone(), "canary", c.percent));
        }
        out
    }

    /// Component name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

/// Routes (to components, or to the gateway's targets): exact paths first,
/// then the longest matching prefix.
pub struct RouteTable<T = Arc<Service>> {
    exact: HashMap<String, T>,
    /// Longest prefix first.
    prefixes: Vec<(String, T)>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable {
            exact: HashMap::new(),
            prefixes: Vec::new(),
        }
    }
}

impl<T> RouteTable<T> {
    /// Builds a table; routes were checked for collisions when the manifest was loaded.
    pub fn new(entries: impl IntoIterator<Item = (Route, T)>) -> Self {
        let mut table = RouteTable::default();
        for (route, service) in entries {
            match route {
                Route::Exact(p) => {
                    table.exact.insert(p, service);
                }
                Route::Prefix(p) => table.prefixes.push((p, service)),
            }
        }
        table
            .prefixes
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        table
    }

    /// What serves `path` (without query), if anything.
    pub fn lookup(&self, path: &str) -> Option<&T> {
        if let Some(service) = self.exact.get(path) {
            return Some(service);
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| {
                path.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with('/') || prefix.is_empty()
                })
            })
            .map(|(_, service)| service)
    }
}

/// Everything that is running.
pub struct Registry {
    services: BTreeMap<String, Arc<Service>>,
    routes: RouteTable,
    store: Arc<RegistryStore>,
    cache: ArtifactCache,
    kv: Arc<dyn KvBackend>,
    keep_versions: usize,
    max_call_depth: u32,
    /// How call trampolines find this registry.
    handle: crate::calls::RegistryHandle,
    /// Held from the last check of the components' calls to the swap of a
    /// change, so two changes of different components cannot each pass the
    /// check against the other's old version and together break a call.
    calls_lock: tokio::sync::Mutex<()>,
}

impl Registry {
    /// The key-value store its components use.
    pub fn kv(&self) -> &Arc<dyn KvBackend> {
        &self.kv
    }

    /// The route table.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// The components of the manifest.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// One component.
    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(name)
    }

    /// The version of one component to run the next invocation on.
    pub fn component(&self, name: &str) -> Option<Arc<ComponentRuntime>> {
        self.services.get(name)?.pick()
    }

    /// The active versions of all components.
    pub fn components(&self) -> Vec<Arc<ComponentRuntime>> {
        self.services
            .values()
            .filter_map(|s| s.deployment().active.clone())
            .collect()
    }

    /// The persisted state.
    pub fn store(&self) -> &Arc<RegistryStore> {
        &self.store
    }
}
