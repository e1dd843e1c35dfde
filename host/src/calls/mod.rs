//! Typed component-to-component calls.
//!
//! Component `pricing` exports a WIT interface (`shop:pricing/quote@1.2.0`);
//! component `booking` imports it and may call `pricing` (its manifest says
//! `[components.booking.calls.pricing]`). When `booking` is linked, each
//! function of the import becomes a host function (a trampoline) that, on
//! every call:
//!
//! 1. refuses a call deeper than `[host] max_call_depth`;
//! 2. finds the allowed callee whose running version exports a compatible
//!    version of the interface (semver: same major, at least the imported
//!    version; the newest when several do), picking its canary share;
//! 3. fails fast when the edge's bulkhead is full or its circuit is open;
//! 4. runs the function in a fresh instance of the callee, under the caller's
//!    remaining deadline (tightened by the edge's `timeout`), copying the
//!    values across (never sharing memory);
//! 5. retries an idempotent function on failure, with backoff, never past
//!    the deadline; records the outcome in the breaker and the callee's stats;
//! 6. on failure answers from the fallback (cache or component) if the edge
//!    has one, else traps the caller with a [`CallError`] that names what
//!    went wrong; the gateway turns it into 502/503/504/508.
//!
//! Deploy-time checks ([`check_imports`]) make sure every import has exactly
//! the callee the trampoline will find, with the same function types, so a
//! call never fails for a reason the operator could have been told earlier.

pub mod breaker;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmtime::component::types::{ComponentFunc, ComponentItem, Type};
use wasmtime::component::{Component, ComponentExportIndex, Linker, Val};
use wasmtime::{Engine, StoreContextMut};

use self::breaker::{Breaker, Outcome, Snapshot};
use crate::config::{CallSpec, Fallback};
use crate::engine::EPOCH_TICK;
use crate::registry::{ComponentRuntime, Registry};
use crate::sandbox::{self, DeadlineExceeded, InstanceState};
use crate::telemetry::span::{Span, SpanKind};

/// Where trampolines find the running components (set once the registry exists).
pub type RegistryHandle = Arc<OnceLock<Weak<Registry>>>;

/// Whether the host itself provides an interface (`wasi:*`, `atoll:*`);
/// every other import is a call to another component.
pub fn is_host_interface(name: &str) -> bool {
    name.starts_with("wasi:") || name.starts_with("atoll:")
}

/// An interface name split up: `ns:pkg/iface@1.2.0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceName {
    /// `ns:pkg/iface`.
    pub path: String,
    /// `1.2.0`, when versioned.
    pub version: Option<semver::Version>,
}

impl InterfaceName {
    /// Parses an import or export name.
    pub fn parse(name: &str) -> InterfaceName {
        match name.split_once('@') {
            Some((path, v)) => InterfaceName {
                path: path.to_string(),
                version: v.parse().ok(),
            },
            None => InterfaceName {
                path: name.to_string(),
                version: None,
            },
        }
    }

    /// Whether an export of version `offered` serves an import of this
    /// version: same major (same minor below 1.0) and at least as new.
    pub fn accepts(&self, offered: Option<&semver::Version>) -> bool {
        match (&self.version, offered) {
            (None, None) => true,
            (Some(want), Some(have)) => {
                // Cargo's rule: 0.0.x is exact, 0.y.x shares y, else the major.
                let same_line = match (want.major, want.minor) {
                    (0, 0) => have.major == 0 && have.minor == 0 && have.patch == want.patch,
                    (0, minor) => have.major == 0 && have.minor == minor,
                    (major, _) => have.major == major,
                };
                same_line && have >= want
            }
            _ => false,
        }
    }

    /// What `accepts` means, for messages: `1.x >= 1.2.0`.
    pub fn range(&self) -> String {
        match &self.version {
            None => "unversioned".to_string(),
            Some(v) if v.major == 0 && v.minor == 0 => format!("exactly {v}"),
            Some(v) if v.major == 0 => format!("0.{}.x >= {v}", v.minor),
            Some(v) => format!("{}.x >= {v}", v.major),
        }
    }
}

/// One function of an interface.
#[derive(Clone)]
pub struct Function {
    /// Its name in WIT.
    pub name: String,
    /// Its type.
    pub ty: ComponentFunc,
}

/// An interface a component imports from another component.
#[derive(Clone)]
pub struct CallImport {
    /// The full import name (`ns:pkg/iface@1.2.0`).
    pub name: String,
    /// Split up.
    pub interface: InterfaceName,
    /// Its functions.
    pub functions: Vec<Function>,
}

/// An interface a component exports for others to call.
#[derive(Clone)]
pub struct CallExport {
    /// The full export name.
    pub name: String,
    /// Its version.
    pub version: Option<semver::Version>,
    /// Its functions, with the index to find them in an instance.
    pub functions: HashMap<String, (ComponentExportIndex, ComponentFunc)>,
}

/// The interfaces a component exports to others, by `ns:pkg/iface`; one
/// component may export several versions of one interface (say `@1.3.0` and
/// `@2.0.0` while its callers move to the new major).
#[derive(Clone, Default)]
pub struct CallExports(HashMap<String, Vec<CallExport>>);

impl CallExports {
    /// The newest export that serves `import`.
    pub fn best(&self, import: &InterfaceName) -> Option<&CallExport> {
        self.0
            .get(&import.path)?
            .iter()
            .filter(|e| import.accepts(e.version.as_ref()))
            .max_by(|a, b| a.version.cmp(&b.version))
    }

    /// The names of every export of an interface (any version), for messages.
    pub fn names(&self, path: &str) -> Option<String> {
        let all = self.0.get(path)?;
        Some(
            all.iter()
                .map(|e| format!("`{}`", e.name))
                .collect::<Vec<_>>()
                .join(", "),
        )
    }

    /// Whether it exports nothing to other components.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a component imports from and exports to other components.
pub type Interfaces = (Vec<CallImport>, CallExports);

/// The interfaces a component imports from and exports to other
/// components; resources in them are refused (they cannot cross components).
pub fn interfaces(component: &Component, engine: &Engine) -> Result<Interfaces, Vec<String>> {
    let ty = component.component_type();
    let mut problems = Vec::new();
    let mut imports = Vec::new();
    for (name, item) in ty.imports(engine) {
        if is_host_interface(name) {
            continue;
        }
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        let mut functions = Vec::new();
        for (fname, fitem) in instance.exports(engine) {
            match fitem.ty {
                ComponentItem::ComponentFunc(f) => {
                    if let Some(what) = uses_resources(&f) {
                        problems.push(resource_problem("imports", name, fname, what));
                    }
                    functions.push(Function {
                        name: fname.to_string(),
                        ty: f,
                    });
                }
                ComponentItem::Resource(_) => {
                    problems.push(resource_problem("imports", name, fname, "a resource type"))
                }
                _ => {}
            }
        }
        imports.push(CallImport {
            name: name.to_string(),
            interface: InterfaceName::parse(name),
            functions,
        });
    }
    let mut exports: HashMap<String, Vec<CallExport>> = HashMap::new();
    for (name, item) in ty.exports(engine) {
        if is_host_interface(name) {
            continue;
        }
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        let Some(instance_index) = component.get_export_index(None, name) else {
            continue;
        };
        let mut functions = HashMap::new();
        let mut clean = true;
        for (fname, fitem) in instance.exports(engine) {
            match fitem.ty {
                ComponentItem::ComponentFunc(f) => {
                    if uses_resources(&f).is_some() {
                        clean = false;
                    }
                    if let Some(index) = component.get_export_index(Some(&instance_index), fname) {
                        functions.insert(fname.to_string(), (index, f));
                    }
                }
                ComponentItem::Resource(_) => clean = false,
                _ => {}
            }
        }
        // An export with resources is simply not callable from other
        // components; importing it is what is refused.
        if clean {
            let parsed = InterfaceName::parse(name);
            exports.entry(parsed.path).or_default().push(CallExport {
                name: name.to_string(),
                version: parsed.version,
                functions,
            });
        }
    }
    match problems.is_empty() {
        true => Ok((imports, CallExports(exports))),
        false => Err(problems),
    }
}

fn resource_problem(dir: &str, iface: &str, item: &str, what: &str) -> String {
    format!(
        "it {dir} `{iface}`, whose `{item}` uses {what}; resources cannot cross components (each call runs in a fresh instance of the callee), so pass plain values (records, lists, strings) instead"
    )
}

/// Whether a function's parameters or results contain a resource.
fn uses_resources(f: &ComponentFunc) -> Option<&'static str> {
    fn walk(t: &Type) -> bool {
        match t {
            Type::Own(_) | Type::Borrow(_) => true,
            Type::List(l) => walk(&l.ty()),
            Type::Record(r) => r.fields().any(|f| walk(&f.ty)),
            Type::Tuple(t) => t.types().any(|t| walk(&t)),
            Type::Variant(v) => v.cases().any(|c| c.ty.as_ref().is_some_and(walk)),
            Type::Option(o) => walk(&o.ty()),
            Type::Result(r) => {
                r.ok().as_ref().is_some_and(walk) || r.err().as_ref().is_some_and(walk)
            }
            Type::Future(_) | Type::Stream(_) | Type::ErrorContext => true,
            _ => false,
        }
    }
    let params = f.params().any(|(_, t)| walk(&t));
    let results = f.results().any(|t| walk(&t));
    (params || results).then_some("a resource (or future/stream) type")
}

/// Whether two function types are the same (parameters and results, structurally).
fn same_type(a: &ComponentFunc, b: &ComponentFunc) -> bool {
    a.params().len() == b.params().len()
        && a.results().len() == b.results().len()
        && a.params().zip(b.params()).all(|((_, x), (_, y))| x == y)
        && a.results().zip(b.results()).all(|(x, y)| x == y)
}

/// Which callee serves an import: among the allowed callees whose version
/// exports a compatible version of the interface, the newest.
fn choose<'a>(
    import: &InterfaceName,
    candidates: impl IntoIterator<Item = (&'a str, &'a ComponentRuntime)>,
) -> Option<(&'a str, &'a ComponentRuntime, &'a CallExport)> {
    candidates
        .into_iter()
        .filter_map(|(name, rt)| Some((name, rt, rt.call_exports.best(import)?)))
        .max_by(|a, b| a.2.version.cmp(&b.2.version))
}

/// Checks that every call import of a caller version is served: an allowed
/// callee (from `running`, callee name -> its running versions) exports a
/// compatible version with the same function types. Returns the problems.
pub fn check_imports(
    caller: &str,
    imports: &[CallImport],
    allowed: &BTreeMap<String, CallSpec>,
    running: &dyn Fn(&str) -> Vec<Arc<ComponentRuntime>>,
    all_components: &[String],
) -> Vec<String> {
    let mut problems = Vec::new();
    for import in imports {
        let allowed_versions: Vec<(String, Arc<ComponentRuntime>)> = allowed
            .keys()
            .flat_map(|callee| {
                running(callee)
                    .into_iter()
                    .map(move |rt| (callee.clone(), rt))
            })
            .collect();
        let chosen = choose(
            &import.interface,
            allowed_versions
                .iter()
                .map(|(n, rt)| (n.as_str(), rt.as_ref())),
        );
        let Some((callee, _, _)) = chosen else {
            problems.push(unserved(caller, import, allowed, running, all_components));
            continue;
        };
        // Every running version of the chosen callee must serve it (a
        // canary as much as the active one), and so must a fallback component.
        let callee = callee.to_string();
        for rt in running(&callee) {
            problems.extend(serves(caller, &callee, &rt, import, ""));
        }
        if let Some(Fallback::Component(fallback)) =
            allowed.get(&callee).and_then(|c| c.fallback.as_ref())
        {
            let versions = running(fallback);
            if versions.is_empty() {
                problems.push(format!(
                    "`{fallback}`, the fallback of `{caller}`'s calls to `{callee}`, is not running"
                ));
            }
            let role = format!(" (the fallback of `{caller}`'s calls to `{callee}`)");
            for rt in versions {
                problems.extend(serves(caller, fallback, &rt, import, &role));
            }
        }
    }
    problems
}

/// What keeps one version of `callee` from serving `caller`'s import.
fn serves(
    caller: &str,
    callee: &str,
    rt: &ComponentRuntime,
    import: &CallImport,
    role: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(names) = rt.call_exports.names(&import.interface.path) else {
        problems.push(format!(
            "`{callee}`{role} {} does not export `{}` that `{caller}` imports",
            rt.version, import.interface.path
        ));
        return problems;
    };
    let Some(export) = rt.call_exports.best(&import.interface) else {
        problems.push(format!(
            "`{callee}`{role} {} exports {names}, which is not compatible with `{caller}`'s import `{}` (needs {})",
            rt.version,
            import.name,
            import.interface.range()
        ));
        return problems;
    };
    for f in &import.functions {
        match export.functions.get(&f.name) {
            None => problems.push(format!(
                "`{callee}`{role} {} exports `{}` without the function `{}` that `{caller}` imports",
                rt.version, export.name, f.name
            )),
            Some((_, ty)) if !same_type(ty, &f.ty) => problems.push(format!(
                "`{callee}`{role} {} exports `{}` function `{}` with a different type than `{caller}` imports (parameters or results differ)",
                rt.version, export.name, f.name
            )),
            Some(_) => {}
        }
    }
    problems
}

/// Why no allowed callee serves an import.
fn unserved(
    caller: &str,
    import: &CallImport,
    allowed: &BTreeMap<String, CallSpec>,
    running: &dyn Fn(&str) -> Vec<Arc<ComponentRuntime>>,
    all_components: &[String],
) -> String {
    // Someone exports it, but the edge is not allowed: a denial.
    for other in all_components {
        if other == caller || allowed.contains_key(other) {
            continue;
        }
        for rt in running(other) {
            if rt.call_exports.best(&import.interface).is_some() {
                crate::policy::count_call_denial();
                tracing::warn!(caller, callee = %other, interface = %import.name, "call denied by policy");
                return format!(
                    "`{caller}` imports `{}`, which `{other}` exports, but `{caller}` may not call `{other}`: add `[components.{caller}.calls.{other}]` to atoll.toml to allow it",
                    import.name
                );
            }
        }
    }
    // Exported, but in an incompatible version.
    for other in all_components {
        for rt in running(other) {
            if let Some(names) = rt.call_exports.names(&import.interface.path) {
                return format!(
                    "`{caller}` imports `{}`, but `{other}` {} exports {names}, which is not compatible (needs {})",
                    import.name,
                    rt.version,
                    import.interface.range()
                );
            }
        }
    }
    format!(
        "`{caller}` imports `{}`, which no component of this host exports; add the component that implements it and allow the call with `[components.{caller}.calls.NAME]`",
        import.name
    )
}

/// What went wrong with a call, as the caller's trap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFailure {
    /// The callee's circuit is open.
    CircuitOpen,
    /// The edge's bulkhead (`max_concurrent`) is full.
    BulkheadFull,
    /// No running version serves it, or it is at its concurrency limit.
    Unavailable,
    /// It did not answer within the deadline.
    Timeout,
    /// It trapped (or failed to instantiate).
    Failed,
    /// The call would nest deeper than `max_call_depth`.
    TooDeep,
    /// Its arguments are larger than the callee may hold.
    TooLarge,
}

impl CallFailure {
    /// `circuit open`, `bulkhead full`, ...
    pub fn as_str(&self) -> &'static str {
        match self {
            CallFailure::CircuitOpen => "circuit open",
            CallFailure::BulkheadFull => "bulkhead full",
            CallFailure::Unavailable => "unavailable",
            CallFailure::Timeout => "timeout",
            CallFailure::Failed => "callee failed",
            CallFailure::TooDeep => "call depth exceeded",
            CallFailure::TooLarge => "arguments too large",
        }
    }

    /// The HTTP status a request that failed this way gets.
    pub fn status(&self) -> u16 {
        match self {
            CallFailure::CircuitOpen | CallFailure::BulkheadFull | CallFailure::Unavailable => 503,
            CallFailure::Timeout => 504,
            CallFailure::Failed | CallFailure::TooLarge => 502,
            CallFailure::TooDeep => 508,
        }
    }

    fn retryable(&self) -> bool {
        matches!(
            self,
            CallFailure::Failed | CallFailure::Timeout | CallFailure::Unavailable
        )
    }
}

/// A failed call, which traps the caller.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "call from `{caller}` to `{callee}` `{function}` failed: {} ({detail}){}",
    .failure.as_str(),
    .origin.as_ref().map(|o| format!(", in the nested call {o}")).unwrap_or_default()
)]
pub struct CallError {
    /// What went wrong.
    pub failure: CallFailure,
    /// The calling component.
    pub caller: String,
    /// The called component.
    pub callee: String,
    /// `interface#function`.
    pub function: String,
    /// More about it.
    pub detail: String,
    /// Where it happened, when deeper in the call chain
    /// (`` `b` -> `c` `iface#f` ``).
    pub origin: Option<String>,
}

/// Counters of one edge.
#[derive(Default)]
pub struct EdgeStats {
    /// Calls made (attempts not counted twice).
    pub calls: AtomicU64,
    /// Calls that answered.
    pub ok: AtomicU64,
    /// Attempts that failed (trap, timeout, unavailable).
    pub failed: AtomicU64,
    /// Attempts that timed out.
    pub timeouts: AtomicU64,
    /// Retries made.
    pub retries: AtomicU64,
    /// Calls refused by the open circuit.
    pub circuit_open: AtomicU64,
    /// Calls refused by the bulkhead.
    pub bulkhead_full: AtomicU64,
    /// Calls answered by the fallback.
    pub fallbacks: AtomicU64,
    /// Calls refused for depth.
    pub too_deep: AtomicU64,
}

/// One allowed edge (caller -> callee) and its guards; shared by all
/// versions of the caller.
pub struct Edge {
    /// The calling component.
    pub caller: Arc<str>,
    /// Its settings.
    pub spec: CallSpec,
    /// Its circuit breaker.
    pub breaker: Breaker,
    bulkhead: Arc<Semaphore>,
    cache: Option<Mutex<ResultCache>>,
    /// Its counters.
    pub stats: EdgeStats,
}

/// Largest arguments plus results the cache fallback keeps, in bytes.
const MAX_CACHED: usize = 64 << 10;

/// The last results per arguments, for the cache fallback (first in, first out).
struct ResultCache {
    capacity: usize,
    entries: HashMap<String, Vec<Val>>,
    order: VecDeque<String>,
}

impl ResultCache {
    fn put(&mut self, key: String, results: &[Val]) {
        if self.entries.insert(key.clone(), results.to_vec()).is_none() {
            self.order.push_back(key);
            if self.order.len() > self.capacity
                && let Some(old) = self.order.pop_front()
            {
                self.entries.remove(&old);
            }
        }
    }
}

impl Edge {
    /// An edge with fresh guards.
    pub fn new(caller: Arc<str>, spec: CallSpec) -> Edge {
        Edge {
            caller,
            breaker: Breaker::new(spec.breaker.clone()),
            bulkhead: Arc::new(Semaphore::new(spec.max_concurrent as usize)),
            cache: match spec.fallback {
                Some(Fallback::Cache(n)) => Some(Mutex::new(ResultCache {
                    capacity: n,
                    entries: HashMap::new(),
                    order: VecDeque::new(),
                })),
                _ => None,
            },
            stats: EdgeStats::default(),
            spec,
        }
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> Snapshot {
        self.breaker.snapshot(Instant::now())
    }

    fn idempotent(&self, function: &str) -> bool {
        self.spec
            .idempotent
            .iter()
            .any(|f| f == "*" || f == function)
    }

    /// The cache key: sha256 of the interface, function and arguments.
    fn cache_key(interface: &str, function: &str, params: &[Val]) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(interface.as_bytes());
        h.update(b"#");
        h.update(function.as_bytes());
        h.update(format!("{params:?}").as_bytes());
        hex::encode(h.finalize())
    }
}

/// Defines a trampoline for every function of every call import on `linker`.
pub fn link(
    linker: &mut Linker<InstanceState>,
    imports: &[CallImport],
    edges: &BTreeMap<String, Arc<Edge>>,
    registry: &RegistryHandle,
    max_depth: u32,
) -> anyhow::Result<()> {
    for import in imports {
        let mut instance = linker.instance(&import.name)?;
        let target = Arc::new(Target {
            interface: import.interface.clone(),
            edges: edges.values().cloned().collect(),
            registry: registry.clone(),
            max_depth,
        });
        for f in &import.functions {
            let target = target.clone();
            let function: Arc<str> = Arc::from(f.name.as_str());
            instance.func_new_async(&f.name, move |store, _ty, params, results| {
                let target = target.clone();
                let function = function.clone();
                Box::new(async move {
                    target
                        .call(store, &function, params, results)
                        .await
                        .map_err(wasmtime::Error::new)
                })
            })?;
        }
    }
    Ok(())
}

/// What one imported interface's trampolines share.
struct Target {
    interface: InterfaceName,
    edges: Vec<Arc<Edge>>,
    registry: RegistryHandle,
    max_depth: u32,
}

impl Target {
    async fn call(
        &self,
        mut store: StoreContextMut<'_, InstanceState>,
        function: &str,
        params: &[Val],
        results: &mut [Val],
    ) -> Result<(), CallError> {
        let caller = store.data().component().clone();
        let depth = store.data().depth() + 1;
        let deadline = store.data().deadline();
        let traceparent = store.data().bus().traceparent.clone();
        let fail = |failure: CallFailure, callee: &str, detail: String| CallError {
            failure,
            caller: caller.to_string(),
            callee: callee.to_string(),
            function: format!("{}#{function}", self.interface.path),
            detail,
            origin: None,
        };
        let registry =
            self.registry.get().and_then(Weak::upgrade).ok_or_else(|| {
                fail(CallFailure::Unavailable, "?", "the host is stopping".into())
            })?;
        // The allowed callee serving this interface now (checked at deploy).
        let active: Vec<(&str, Arc<ComponentRuntime>)> = self
            .edges
            .iter()
            .filter_map(|e| {
                let service = registry.service(&e.spec.callee)?;
                Some((e.spec.callee.as_str(), service.deployment().active.clone()?))
            })
            .collect();
        let Some((callee, _, _)) = choose(
            &self.interface,
            active.iter().map(|(n, rt)| (*n, rt.as_ref())),
        ) else {
            return Err(fail(
                CallFailure::Unavailable,
                "?",
                format!("no running component serves `{}`", self.interface.path),
            ));
        };
        let callee = callee.to_string();
        let edge = self
            .edges
            .iter()
            .find(|e| e.spec.callee == callee)
            .expect("the chosen callee is one of the edges");
        edge.stats.calls.fetch_add(1, Ordering::Relaxed);
        if depth > self.max_depth {
            edge.stats.too_deep.fetch_add(1, Ordering::Relaxed);
            return Err(fail(
                CallFailure::TooDeep,
                &callee,
                format!(
                    "this call would be {depth} deep; `[host] max_call_depth` is {}",
                    self.max_depth
                ),
            ));
        }
        // `component` and `version` name the callee version that answered
        // (the fallback's, when it did).
        let span = Span::new("call.invoke", SpanKind::Client).with(|a| {
            a.str("caller", &caller).str("callee", &callee).display(
                "function",
                format_args!("{}#{function}", self.interface.path),
            );
        });
        // Exported: the callee runs under this span.
        let traceparent = span.exported_traceparent().or(traceparent);
        let call = CallContext {
            origin: Mutex::new(None),
            registry: &registry,
            edge,
            interface: &self.interface,
            function,
            deadline,
            depth,
            traceparent,
            tries: AtomicU32::new(0),
            span: span.clone(),
        };
        let result = span
            .clone()
            .instrument(call.run(store.data_mut(), params, results))
            .await;
        span.record(|a| {
            a.str(
                "outcome",
                match &result {
                    Ok(how) => how.as_str(),
                    Err((f, _)) => f.as_str(),
                },
            );
            let tries = call.tries.load(Ordering::Relaxed);
            a.uint("attempts", u64::from(tries))
                .uint("retries", u64::from(tries.saturating_sub(1)))
                .str("breaker", edge.breaker_state().state.as_str());
            if result.is_err() {
                a.error();
            }
        });
        match result {
            Ok(_) => Ok(()),
            Err((failure, detail)) => {
                let mut error = fail(failure, &callee, detail);
                error.origin = call.origin.lock().unwrap_or_else(|e| e.into_inner()).take();
                tracing::warn!(caller = %caller, callee = %callee, function, failure = error.failure.as_str(), origin = error.origin.as_deref().unwrap_or(""), "{}", error.detail);
                Err(error)
            }
        }
    }
}

/// A breaker ticket that is given back if its call never finishes (its
/// future dropped), so a half-open probe slot is never lost.
struct Admitted<'a> {
    breaker: &'a Breaker,
    ticket: Option<breaker::Ticket>,
}

impl Admitted<'_> {
    fn record(mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.record(ticket, outcome, Instant::now());
        }
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.cancel(ticket);
        }
    }
}

/// How a call was answered.
enum Answered {
    Callee,
    Fallback,
}

impl Answered {
    fn as_str(&self) -> &'static str {
        match self {
            Answered::Callee => "ok",
            Answered::Fallback => "fallback",
        }
    }
}

/// One call in progress.
struct CallContext<'a> {
    /// Where a failure deeper in the chain happened.
    origin: Mutex<Option<String>>,
    registry: &'a Registry,
    edge: &'a Edge,
    interface: &'a InterfaceName,
    function: &'a str,
    deadline: Instant,
    depth: u32,
    traceparent: Option<String>,
    /// Attempts made (the callee's and the fallback component's).
    tries: AtomicU32,
    /// `call.invoke`, to name the version that answered.
    span: Span,
}

type Failure = (CallFailure, String);

impl CallContext<'_> {
    async fn run(
        &self,
        caller: &mut InstanceState,
        params: &[Val],
        results: &mut [Val],
    ) -> Result<Answered, Failure> {
        let edge = self.edge;
        let outcome = match edge.bulkhead.clone().try_acquire_owned() {
            Err(_) => {
                edge.stats.bulkhead_full.fetch_add(1, Ordering::Relaxed);
                Err((
                    CallFailure::BulkheadFull,
                    format!(
                        "{} calls are already in flight from `{}` (max_concurrent)",
                        edge.spec.max_concurrent, edge.caller
                    ),
                ))
            }
            Ok(_permit) => self.attempts(caller, params, results).await,
        };
        match outcome {
            Ok(()) => {
                edge.stats.ok.fetch_add(1, Ordering::Relaxed);
                // Only small answers are kept: the cache is bounded by
                // entries times MAX_CACHED bytes.
                let size: usize = params.iter().chain(results.iter()).map(value_size).sum();
                if let Some(cache) = edge.cache.as_ref().filter(|_| size <= MAX_CACHED) {
                    let key = Edge::cache_key(&self.interface.path, self.function, params);
                    cache
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .put(key, results);
                }
                Ok(Answered::Callee)
            }
            Err(failure) => match self.fallback(caller, params, results).await {
                Some(()) => {
                    edge.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(caller = %edge.caller, callee = %edge.spec.callee, function = self.function, failure = failure.0.as_str(), "answered from the fallback: {}", failure.1);
                    Ok(Answered::Fallback)
                }
                None => Err(failure),
            },
        }
    }

    /// The call with its retries.
    async fn attempts(
        &self,
        caller: &mut InstanceState,
        params: &[Val],
        results: &mut [Val],
    ) -> Result<(), Failure> {
        let edge = self.edge;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            // Where a failure happened is about this attempt only.
            self.origin.lock().unwrap_or_else(|e| e.into_inner()).take();
            let ticket = match edge.breaker.admit(Instant::now()) {
                Ok(ticket) => Admitted {
                    breaker: &edge.breaker,
                    ticket: Some(ticket),
                },
                Err(refused) => {
                    edge.stats.circuit_open.fetch_add(1, Ordering::Relaxed);
                    return Err((
                        CallFailure::CircuitOpen,
                        format!(
                            "the circuit to `{}` is open; it probes again in {:?}",
                            edge.spec.callee, refused.retry_in
                        ),
                    ));
                }
            };
            let started = Instant::now();
            let result = match self.registry.component(&edge.spec.callee) {
                Some(rt) => self.once(&rt, caller, params, results).await,
                None => Err((
                    CallFailure::Unavailable,
                    format!("`{}` is not running (removed?)", edge.spec.callee),
                )),
            };
            let took = started.elapsed();
            match &result {
                // Not the callee's doing: the caller's arguments, or a call
                // deeper down that the depth limit stopped (counted there).
                Err((CallFailure::TooLarge | CallFailure::TooDeep, _)) => drop(ticket),
                _ => ticket.record(Outcome {
                    failed: result.is_err(),
                    slow: edge.breaker.is_slow(took),
                }),
            }
            let Err((failure, detail)) = result else {
                return Ok(());
            };
            edge.stats.failed.fetch_add(1, Ordering::Relaxed);
            if failure == CallFailure::Timeout {
                edge.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            // Retry only what is safe to repeat, and only within the budget.
            let backoff = edge.spec.retry_backoff.as_secs_f64()
                * 2f64.powi(attempt.saturating_sub(1).min(20) as i32);
            let backoff = Duration::from_secs_f64(backoff / 2.0 + fastrand::f64() * backoff / 2.0);
            let retry = failure.retryable()
                && edge.idempotent(self.function)
                && attempt <= edge.spec.retries
                && Instant::now() + backoff < self.deadline;
            if !retry {
                let tried = match attempt {
                    1 => String::new(),
                    n => format!(" (after {n} attempts)"),
                };
                return Err((failure, format!("{detail}{tried}")));
            }
            edge.stats.retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(callee = %edge.spec.callee, function = self.function, attempt, ?backoff, "retrying: {detail}");
            tokio::time::sleep(backoff).await;
        }
    }

    /// One attempt: a fresh instance of `rt`, the function, the values back.
    async fn once(
        &self,
        rt: &Arc<ComponentRuntime>,
        caller: &mut InstanceState,
        params: &[Val],
        results: &mut [Val],
    ) -> Result<(), Failure> {
        let Some(export) = rt.call_exports.best(self.interface) else {
            return Err((
                CallFailure::Unavailable,
                format!(
                    "`{}` {} does not export `{}`",
                    rt.name, rt.version, self.interface.path
                ),
            ));
        };
        let Some((index, _)) = export.functions.get(self.function) else {
            return Err((
                CallFailure::Unavailable,
                format!(
                    "`{}` {} has no function `{}`",
                    rt.name, rt.version, self.function
                ),
            ));
        };
        let size: usize = params.iter().map(value_size).sum();
        if size > rt.limits.memory as usize {
            return Err((
                CallFailure::TooLarge,
                format!(
                    "the arguments take {size} bytes, more than `{}`'s memory limit ({} bytes)",
                    rt.name, rt.limits.memory
                ),
            ));
        }
        let Ok(_permit) = rt.concurrency.clone().try_acquire_owned() else {
            return Err((
                CallFailure::Unavailable,
                format!(
                    "`{}` is at its concurrency limit ({})",
                    rt.name, rt.limits.max_concurrency
                ),
            ));
        };
        let _in_flight = rt.stats.enter();
        let deadline = match self.edge.spec.timeout {
            Some(t) => self.deadline.min(Instant::now() + t),
            None => self.deadline,
        };
        let called = Instant::now();
        self.tries.fetch_add(1, Ordering::Relaxed);
        let mut store = sandbox::new_store(&rt.engine, &rt.grants, deadline);
        store.data_mut().set_depth(self.depth);
        store.data_mut().bus_mut().traceparent = self.traceparent.clone();
        if self.span.is_recording() {
            self.span.record(|a| {
                a.str("component", &rt.name).display("version", &rt.version);
            });
            store.data_mut().trace_version(&rt.grants);
        }
        let run = async {
            let instance = rt.pre.instantiate_async(&mut store).await?;
            let func = instance
                .get_func(&mut store, index)
                .ok_or_else(|| wasmtime::Error::msg("the export is not a function"))?;
            func.call_async(&mut store, params, results).await
        };
        let grace = tokio::time::Instant::from_std(deadline + 2 * EPOCH_TICK);
        let result = match tokio::time::timeout_at(grace, run).await {
            Ok(r) => r,
            Err(_) => Err(wasmtime::Error::new(DeadlineExceeded)),
        };
        rt.stats.observe(called.elapsed());
        // Only what is this version's own doing counts against it (a canary
        // is judged by it): not a failure of a call it made, not a full pool.
        let pool_full = |e: &wasmtime::Error| {
            e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                .is_some()
        };
        match &result {
            Ok(()) => rt.stats.record(false),
            Err(e) if e.downcast_ref::<DeadlineExceeded>().is_some() => {
                rt.stats.record(true);
                rt.stats.limit(crate::registry::Limit::Deadline)
            }
            Err(e) if pool_full(e) => rt.stats.limit(crate::registry::Limit::Pool),
            Err(e) if e.downcast_ref::<CallError>().is_some() => {}
            Err(e) => {
                rt.stats.record(true);
                rt.stats.trapped(e)
            }
        }
        match result {
            Ok(()) => {
                // Its writes and messages become the caller's to make durable.
                caller.adopt(store.data_mut());
                Ok(())
            }
            Err(e) if e.downcast_ref::<DeadlineExceeded>().is_some() => Err((
                CallFailure::Timeout,
                match self.edge.spec.timeout {
                    Some(t) if deadline < self.deadline => {
                        format!("no answer within the edge's timeout ({t:?})")
                    }
                    _ => "no answer within the caller's remaining deadline".to_string(),
                },
            )),
            Err(e) if pool_full(&e) => Err((
                CallFailure::Unavailable,
                "the host is at its instance limit".to_string(),
            )),
            Err(e) => {
                // A callee's own failed call keeps its kind (and its message).
                if let Some(inner) = e.downcast_ref::<CallError>() {
                    let origin = inner.origin.clone().unwrap_or_else(|| {
                        format!(
                            "`{}` -> `{}` `{}`",
                            inner.caller, inner.callee, inner.function
                        )
                    });
                    *self.origin.lock().unwrap_or_else(|e| e.into_inner()) = Some(origin);
                    return Err((inner.failure.clone(), inner.detail.clone()));
                }
                let what = match e.downcast_ref::<wasmtime::Trap>() {
                    Some(trap) => format!("trap: {trap}"),
                    None => e.root_cause().to_string(),
                };
                Err((
                    CallFailure::Failed,
                    format!("`{}` {} {what}", rt.name, rt.version),
                ))
            }
        }
    }

    /// The fallback's answer, if the edge has one and it can answer.
    async fn fallback(
        &self,
        caller: &mut InstanceState,
        params: &[Val],
        results: &mut [Val],
    ) -> Option<()> {
        match self.edge.spec.fallback.as_ref()? {
            Fallback::Cache(_) => {
                let cache = self.edge.cache.as_ref()?;
                let key = Edge::cache_key(&self.interface.path, self.function, params);
                let cache = cache.lock().unwrap_or_else(|e| e.into_inner());
                let hit = cache.entries.get(&key)?;
                for (slot, value) in results.iter_mut().zip(hit) {
                    *slot = value.clone();
                }
                Some(())
            }
            Fallback::Component(name) => {
                let rt = self.registry.component(name)?;
                // (Checked at deploy; a version mismatch here would be a bug.)
                rt.call_exports.best(self.interface)?;
                // The reported failure stays the callee's, not the fallback's.
                let origin = self.origin.lock().unwrap_or_else(|e| e.into_inner()).take();
                let answered = self.once(&rt, caller, params, results).await;
                *self.origin.lock().unwrap_or_else(|e| e.into_inner()) = origin;
                if let Err((f, detail)) = answered {
                    tracing::warn!(fallback = %name, failure = f.as_str(), "the fallback failed too: {detail}");
                    return None;
                }
                Some(())
            }
        }
    }
}

/// Bytes a value copies into the callee (as laid out in its memory, without
/// padding).
fn value_size(v: &Val) -> usize {
    match v {
        Val::Bool(_) | Val::U8(_) | Val::S8(_) => 1,
        Val::U16(_) | Val::S16(_) => 2,
        Val::U32(_) | Val::S32(_) | Val::Float32(_) | Val::Char(_) | Val::Enum(_) => 4,
        Val::String(s) => s.len() + 8,
        Val::List(items) => items.iter().map(value_size).sum::<usize>() + 8,
        Val::Tuple(items) => items.iter().map(value_size).sum(),
        Val::Record(fields) => fields.iter().map(|(_, v)| value_size(v)).sum(),
        Val::Variant(_, Some(v)) | Val::Option(Some(v)) => 4 + value_size(v),
        Val::Result(Ok(Some(v)) | Err(Some(v))) => 4 + value_size(v),
        _ => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_compatibility() {
        let import = InterfaceName::parse("shop:pricing/quote@1.2.0");
        assert_eq!(import.path, "shop:pricing/quote");
        let v = |s: &str| semver::Version::parse(s).unwrap();
        assert!(import.accepts(Some(&v("1.2.0"))));
        assert!(import.accepts(Some(&v("1.9.3"))));
        assert!(!import.accepts(Some(&v("1.1.9"))));
        assert!(!import.accepts(Some(&v("2.0.0"))));
        assert!(!import.accepts(None));
        assert_eq!(import.range(), "1.x >= 1.2.0");
        let zero = InterfaceName::parse("a:b/c@0.3.1");
        assert!(zero.accepts(Some(&v("0.3.4"))));
        assert!(!zero.accepts(Some(&v("0.4.0"))));
        assert_eq!(zero.range(), "0.3.x >= 0.3.1");
        assert!(InterfaceName::parse("a:b/c").accepts(None));
        let tiny = InterfaceName::parse("a:b/c@0.0.3");
        assert!(tiny.accepts(Some(&v("0.0.3"))));
        assert!(!tiny.accepts(Some(&v("0.0.4"))));
    }

    #[test]
    fn one_component_may_export_several_versions_of_an_interface() {
        let export = |v: &str| CallExport {
            name: format!("shop:pricing/quote@{v}"),
            version: Some(v.parse().unwrap()),
            functions: HashMap::new(),
        };
        let exports = CallExports(HashMap::from([(
            "shop:pricing/quote".to_string(),
            vec![export("1.3.0"), export("2.0.0"), export("1.5.0")],
        )]));
        let best = |import: &str| {
            exports
                .best(&InterfaceName::parse(import))
                .map(|e| e.name.clone())
        };
        assert_eq!(
            best("shop:pricing/quote@1.2.0").unwrap(),
            "shop:pricing/quote@1.5.0"
        );
        assert_eq!(
            best("shop:pricing/quote@2.0.0").unwrap(),
            "shop:pricing/quote@2.0.0"
        );
        assert_eq!(best("shop:pricing/quote@3.0.0"), None);
        assert_eq!(best("shop:other/quote@1.0.0"), None);
        assert_eq!(
            exports.names("shop:pricing/quote").unwrap(),
            "`shop:pricing/quote@1.3.0`, `shop:pricing/quote@2.0.0`, `shop:pricing/quote@1.5.0`"
        );
        assert!(!exports.is_empty());
    }

    #[test]
    fn failures_map_to_statuses() {
        assert_eq!(CallFailure::CircuitOpen.status(), 503);
        assert_eq!(CallFailure::Timeout.status(), 504);
        assert_eq!(CallFailure::Failed.status(), 502);
        assert_eq!(CallFailure::TooDeep.status(), 508);
        let e = CallError {
            failure: CallFailure::CircuitOpen,
            caller: "booking".into(),
            callee: "pricing".into(),
            function: "shop:pricing/quote#greet".into(),
            detail: "open".into(),
            origin: None,
        };
        assert_eq!(
            e.to_string(),
            "call from `booking` to `pricing` `shop:pricing/quote#greet` failed: circuit open (open)"
        );
    }

    #[test]
    fn the_cache_keeps_the_newest_entries() {
        let mut c = ResultCache {
            capacity: 2,
            entries: HashMap::new(),
            order: VecDeque::new(),
        };
        for i in 0..3u32 {
            c.put(format!("k{i}"), &[Val::U32(i)]);
        }
        assert!(!c.entries.contains_key("k0"));
        assert_eq!(c.entries["k2"], vec![Val::U32(2)]);
        assert_eq!(value_size(&Val::String("abc".into())), 11);
        assert_eq!(value_size(&Val::List(vec![Val::U8(0); 1000])), 1008);
    }
}
