//! The running components and the route table that points at them.
//!
//! Routes live in an [`ArcSwap`]: a request loads the current table without a
//! lock, and a change (hot swap, later) builds a new table and swaps the
//! pointer, so in-flight requests keep the version they started with.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime::component::InstancePre;
use wasmtime_wasi_http::p2::bindings::ProxyIndices;

use crate::bindings::handler::MessageHandlerIndices;

use crate::config::{Limits, Route};
use crate::sandbox::{Grants, InstanceState};

/// One loaded, linked component version, ready to instantiate.
pub struct ComponentRuntime {
    /// Component name.
    pub name: Arc<str>,
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
    /// Bounds instances alive at once (`max_concurrency`).
    pub concurrency: Arc<Semaphore>,
}

/// Routes to components: exact paths first, then the longest matching prefix.
#[derive(Default)]
pub struct RouteTable {
    exact: HashMap<String, Arc<ComponentRuntime>>,
    /// Longest prefix first.
    prefixes: Vec<(String, Arc<ComponentRuntime>)>,
}

impl RouteTable {
    /// Builds a table; routes were checked for collisions when the manifest was loaded.
    pub fn new(entries: impl IntoIterator<Item = (Route, Arc<ComponentRuntime>)>) -> Self {
        let mut table = RouteTable::default();
        for (route, rt) in entries {
            match route {
                Route::Exact(p) => {
                    table.exact.insert(p, rt);
                }
                Route::Prefix(p) => table.prefixes.push((p, rt)),
            }
        }
        table
            .prefixes
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        table
    }

    /// The component serving `path` (without query), if any.
    pub fn lookup(&self, path: &str) -> Option<&Arc<ComponentRuntime>> {
        if let Some(rt) = self.exact.get(path) {
            return Some(rt);
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| {
                path.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with('/') || prefix.is_empty()
                })
            })
            .map(|(_, rt)| rt)
    }
}

/// Everything that is running.
pub struct Registry {
    routes: ArcSwap<RouteTable>,
    components: ArcSwap<Vec<Arc<ComponentRuntime>>>,
}

impl Registry {
    /// A registry serving `components` on `routes`.
    pub fn new(components: Vec<Arc<ComponentRuntime>>, routes: RouteTable) -> Self {
        Registry {
            routes: ArcSwap::from_pointee(routes),
            components: ArcSwap::from_pointee(components),
        }
    }

    /// The current route table.
    pub fn routes(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.routes.load()
    }

    /// The running components.
    pub fn components(&self) -> Arc<Vec<Arc<ComponentRuntime>>> {
        self.components.load_full()
    }

    /// The running version of one component.
    pub fn component(&self, name: &str) -> Option<Arc<ComponentRuntime>> {
        self.components
            .load()
            .iter()
            .find(|c| &*c.name == name)
            .cloned()
    }
}
