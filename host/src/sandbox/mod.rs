//! What one invocation of a component may touch, and nothing more.
//!
//! Every invocation gets a fresh [`InstanceState`]: a WASI context with no
//! preopened directories, no environment, no arguments, no sockets and no
//! name lookups; stdout/stderr captured into the host's log; outbound HTTP only
//! to the component's `allowed_outbound_hosts`; its own key-value namespace and
//! config values; and store limits (memory, instances, tables).

mod limiter;
mod logging;
mod output;

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::bus::{BusGrant, BusState, BusView};
use crate::kv::{KvState, KvView, Namespace};
use crate::policy::OutboundPolicy;
use crate::registry::VersionStats;
use crate::telemetry::span::{Span, SpanKind};
use limiter::Limiter;

pub use output::GuestOutput;

/// The `T` of every `Store<T>`: one invocation's world.
pub struct InstanceState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: Hooks,
    table: ResourceTable,
    limits: Limiter,
    kv: KvState,
    bus: BusState,
    config: Arc<WasiConfigVariables>,
    component: Arc<str>,
    /// Whose log records it makes (component, version, trace).
    origin: Arc<crate::telemetry::logs::Origin>,
    /// When this invocation must end: calls it makes inherit what is left.
    deadline: Instant,
    /// How many component-to-component calls deep this invocation is (0 for
    /// a request or a message).
    depth: u32,
    /// A component it called wrote to (or read from) its store: this
    /// invocation's outcome must wait for durability as if it had.
    nested_kv: (bool, bool),
}

/// What does not change between invocations of one component version.
#[derive(Clone)]
pub struct Grants {
    /// Component name (for logs and kv errors).
    pub component: Arc<str>,
    /// The version (for logs); empty in a component's template, set on each
    /// version's copy ([`Grants::for_version`]).
    pub version: Arc<str>,
    /// Its key-value namespace.
    pub namespace: Arc<dyn Namespace>,
    /// Its config values and secrets.
    pub config: Arc<WasiConfigVariables>,
    /// Where it may send HTTP requests.
    pub outbound: Arc<OutboundPolicy>,
    /// Linear memory limit in bytes.
    pub memory: usize,
    /// Where refused memory growths are counted: the version's stats
    /// (`None` in a component's template).
    pub stats: Option<Arc<VersionStats>>,
    /// Largest kv value in bytes.
    pub kv_value_size: usize,
    /// Its bus rights (`None` when the host runs without a bus).
    pub bus: Option<Arc<BusGrant>>,
}

impl Grants {
    /// A copy for one version of the component, counting into `stats`.
    pub fn for_version(&self, version: &semver::Version, stats: Arc<VersionStats>) -> Grants {
        Grants {
            version: Arc::from(version.to_string()),
            stats: Some(stats),
            ..self.clone()
        }
    }
}

/// Most resources (handles: buckets, streams, fields, ...) one instance may hold.
pub const MAX_RESOURCES: usize = 10_000;

/// Raised by the epoch callback when an invocation runs past its deadline.
#[derive(Debug, thiserror::Error)]
#[error("deadline exceeded")]
pub struct DeadlineExceeded;

impl InstanceState {
    /// Whether this invocation (or a component it called) wrote to a key-value store.
    pub fn kv_dirty(&self) -> bool {
        self.kv.dirty() || self.nested_kv.0
    }

    /// Whether this invocation (or a component it called) used a key-value store at all.
    pub fn kv_touched(&self) -> bool {
        self.kv.touched() || self.nested_kv.1
    }

    /// Takes over what a component it called did: its store use (so this
    /// invocation's outcome waits for durability) and its staged messages.
    pub fn adopt(&mut self, callee: &mut InstanceState) {
        self.nested_kv.0 |= callee.kv_dirty();
        self.nested_kv.1 |= callee.kv_touched();
        let staged = callee.bus.take_staged();
        self.bus.adopt(staged);
    }

    /// This invocation's bus state (staged publishes, trace context).
    pub fn bus_mut(&mut self) -> &mut BusState {
        &mut self.bus
    }

    /// This invocation's bus state.
    pub fn bus(&self) -> &BusState {
        &self.bus
    }

    /// When this invocation must end.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// How many calls deep it is.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Marks this invocation as a call `depth` deep.
    pub fn set_depth(&mut self, depth: u32) {
        self.depth = depth;
    }

    /// The component it runs.
    pub fn component(&self) -> &Arc<str> {
        &self.component
    }

    /// Names the version on this invocation's spans (`kv.*`, `bus.publish`,
    /// `http.outbound`); called only when they are recorded.
    pub fn trace_version(&mut self, grants: &Grants) {
        self.kv.version = Some(grants.version.clone());
        self.bus.version = Some(grants.version.clone());
        self.hooks.version = Some(grants.version.clone());
    }
}

/// A fresh store for one invocation, interrupted once `deadline` passes.
pub fn new_store(engine: &Engine, grants: &Grants, deadline: Instant) -> Store<InstanceState> {
    let mut wasi = WasiCtxBuilder::new();
    let origin = Arc::new(crate::telemetry::logs::Origin::new(
        grants.component.clone(),
        grants.version.clone(),
    ));
    // Nothing is granted: the builder's defaults are no env, no args, no
    // preopens, closed stdin, and a socket check that denies every address.
    wasi.stdout(GuestOutput::stdout(origin.clone()))
        .stderr(GuestOutput::stderr(origin.clone()))
        .allow_ip_name_lookup(false)
        .allow_tcp(false)
        .allow_udp(false);
    let state = InstanceState {
        wasi: wasi.build(),
        http: WasiHttpCtx::new(),
        hooks: Hooks {
            component: grants.component.clone(),
            version: None,
            outbound: grants.outbound.clone(),
        },
        table: {
            // Resources are host memory: bound how many one instance may hold.
            let mut table = ResourceTable::new();
            table.set_max_capacity(MAX_RESOURCES);
            table
        },
        limits: Limiter {
            limits: StoreLimitsBuilder::new()
                .memory_size(grants.memory)
                .instances(64)
                .tables(64)
                .memories(16)
                .trap_on_grow_failure(false)
                .build(),
            stats: grants.stats.clone(),
        },
        kv: KvState::new(
            grants.namespace.clone(),
            grants.component.clone(),
            grants.kv_value_size,
            grants.memory,
        ),
        bus: BusState::new(grants.bus.clone(), grants.component.clone(), grants.memory),
        config: grants.config.clone(),
        component: grants.component.clone(),
        origin,
        deadline,
        depth: 0,
        nested_kv: (false, false),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    // Check the deadline on every epoch tick; in between, yield to the async
    // runtime so a guest that never calls the host cannot hold a worker.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Err(DeadlineExceeded.into())
        } else {
            // tokio's own yield: a plain `Yield` wakes the task at once, and
            // with as many spinning guests as workers the runtime would
            // rarely get to its timers and sockets (other requests stall).
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        }
    });
    store
}

/// A linker with every capability Atoll provides (granting happens per store).
pub fn linker(engine: &Engine) -> anyhow::Result<Linker<InstanceState>> {
    let mut linker = Linker::new(engine);
    // All of WASI p2 (cli, io, clocks, random, filesystem, sockets): Rust std
    // guests import filesystem and environment even when unused. The context
    // above grants none of it.
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    wasmtime_wasi_config::add_to_linker(&mut linker, |s: &mut InstanceState| {
        WasiConfig::from(&*s.config)
    })?;
    crate::kv::add_to_linker(&mut linker, |s: &mut InstanceState| {
        KvView::new(&mut s.kv, &mut s.table)
    })?;
    crate::bus::add_to_linker(&mut linker, |s: &mut InstanceState| {
        BusView::new(&mut s.bus, &mut s.table)
    })?;
    logging::add_to_linker(&mut linker)?;
    Ok(linker)
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        // Guest output is written through WASI calls: its records get the trace.
        self.log_origin();
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// wasi-http hooks: the outbound policy, and the `http.outbound` span.
struct Hooks {
    component: Arc<str>,
    /// Set when spans are exported ([`InstanceState::trace_version`]).
    version: Option<Arc<str>>,
    outbound: Arc<OutboundPolicy>,
}

type BoxedSend = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<wasmtime_wasi_http::WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        mut request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> BoxedSend {
        if let Err(denied) = self.outbound.check(request.uri()) {
            tracing::warn!(component = %self.component, "{denied}");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        tracing::debug!(component = %self.component, uri = %request.uri(), "outbound request");
        // The span names the destination, never the path or query (they may
        // carry tokens); the request carries the span's trace context.
        let span = Span::new("http.outbound", SpanKind::Client).with(|a| {
            a.str("component", &self.component)
                .str("version", self.version.as_deref().unwrap_or(""))
                .str("method", request.method().as_str())
                .str("host", request.uri().host().unwrap_or(""));
            if let Some(port) = request.uri().port_u16() {
                a.uint("port", u64::from(port));
            }
        });
        if let Some(tp) = span.exported_traceparent()
            && let Ok(value) = http::HeaderValue::try_from(tp)
        {
            request.headers_mut().insert("traceparent", value);
        }
        let traced = span.clone();
        Box::new(span.instrument(async move {
            use http_body_util::BodyExt;
            let sent = wasmtime_wasi_http::default_send_request(request, options).await;
            traced.record(|a| match &sent {
                Ok((res, _)) => {
                    a.int("status", i64::from(res.status().as_u16()));
                    if res.status().is_server_error() {
                        a.error();
                    }
                }
                Err(_) => _ = a.error(),
            });
            let (res, io) = sent?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        }))
    }
}
