//! Starting and stopping a host from a manifest.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow};
use tokio::sync::{Semaphore, watch};
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::p2::bindings::ProxyIndices;

use crate::bindings::handler::MessageHandlerIndices;
use crate::bus::{Bus, BusGrant};
use crate::config::{ComponentSpec, Manifest};
use crate::engine::{
    ArtifactCache, Engines, INCOMING_HANDLER, MESSAGE_HANDLER, PoolSize, load_component,
};
use crate::kv::{KvBackend, SledBackend};
use crate::policy::OutboundPolicy;
use crate::registry::{ComponentRuntime, Registry, RouteTable};
use crate::sandbox::Grants;
use crate::{admin, build, gateway};

/// A host that is serving.
pub struct RunningHost {
    addr: SocketAddr,
    registry: Arc<Registry>,
    shutdown: watch::Sender<bool>,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
    kv: Arc<dyn KvBackend>,
    bus: Arc<Bus>,
    grace: std::time::Duration,
    admin_addr: SocketAddr,
    admin: tokio::task::JoinHandle<anyhow::Result<()>>,
    data_dir: PathBuf,
    _engines: Engines,
}

/// Loads every component of a manifest (building crate sources, compiling or
/// using cached artifacts) and links them; nothing listens yet.
pub struct LoadedApp {
    manifest: Manifest,
    registry: Arc<Registry>,
    kv: Arc<dyn KvBackend>,
    bus: Arc<Bus>,
    engines: Engines,
}

impl LoadedApp {
    /// Loads a manifest's components. Errors name the component and the problem.
    pub async fn load(manifest: Manifest) -> anyhow::Result<LoadedApp> {
        let data_dir = &manifest.host.data_dir;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data_dir {}", data_dir.display()))?;
        let storage = Arc::new(SledBackend::open(&data_dir.join("kv"))?);
        let kv: Arc<dyn KvBackend> = storage.clone();
        let bus = Bus::open(&manifest, storage.clone()).context("opening the message bus")?;
        let specs: Vec<&ComponentSpec> = manifest.components.values().collect();
        // One pool per engine (per stack size), sized for its own components.
        let mut stacks: BTreeMap<u64, Vec<(u32, u64)>> = BTreeMap::new();
        for c in &specs {
            stacks
                .entry(c.limits.stack)
                .or_default()
                .push((c.limits.max_concurrency, c.limits.memory));
        }
        let pools = stacks
            .into_iter()
            .map(|(stack, limits)| (stack, PoolSize::for_components(limits)))
            .collect();
        let fallback = PoolSize::for_components([(100, 64 << 20)]);
        let engines = Engines::new(pools, fallback)?;
        let cache = ArtifactCache::new(data_dir.join("cache"));
        let mut runtimes = Vec::new();
        let mut routes = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let grant = Arc::new(BusGrant {
                bus: bus.clone(),
                kv_tree: storage.tree_of(&spec.name)?,
                max_value: spec.limits.kv_value_size as usize,
            });
            let rt = load_one(
                spec,
                &engines,
                &cache,
                kv.as_ref(),
                grant,
                i + 1,
                specs.len(),
            )
            .await
            .with_context(|| format!("component `{}` ({})", spec.name, spec.source.display()))?;
            let rt = Arc::new(rt);
            routes.extend(spec.routes.iter().map(|r| (r.clone(), rt.clone())));
            runtimes.push(rt);
        }
        let registry = Arc::new(Registry::new(runtimes, RouteTable::new(routes)));
        Ok(LoadedApp {
            manifest,
            registry,
            kv,
            bus,
            engines,
        })
    }

    /// Binds the listener and starts serving.
    pub async fn serve(self) -> anyhow::Result<RunningHost> {
        let data_dir = self.manifest.host.data_dir.clone();
        let listener = gateway::bind(self.manifest.host.listen).await?;
        let addr = gateway::local_addr(&listener)?;
        let token = admin::load_or_create_token(&data_dir)?;
        if !self.manifest.host.admin_listen.ip().is_loopback() {
            // No TLS on the admin API yet: the token would cross the network in clear.
            tracing::warn!(
                admin_listen = %self.manifest.host.admin_listen,
                "the admin API listens beyond loopback without TLS; its token travels in clear text"
            );
        }
        let admin_listener = admin::bind(self.manifest.host.admin_listen).await?;
        let admin_addr = gateway::local_addr(&admin_listener)?;
        admin::write_discovery(&data_dir, admin_addr)?;
        let (shutdown, rx) = watch::channel(false);
        let admin = tokio::spawn(admin::serve(
            admin_listener,
            Arc::new(admin::AdminState {
                bus: self.bus.clone(),
                token: Arc::from(token),
            }),
            rx.clone(),
        ));
        self.bus.start(self.registry.clone());
        let served = tokio::spawn(gateway::serve(
            listener,
            self.registry.clone(),
            self.kv.clone(),
            rx,
            self.manifest.host.shutdown_grace,
        ));
        Ok(RunningHost {
            addr,
            registry: self.registry,
            shutdown,
            served,
            kv: self.kv,
            bus: self.bus,
            grace: self.manifest.host.shutdown_grace,
            admin_addr,
            admin,
            data_dir,
            _engines: self.engines,
        })
    }
}

impl RunningHost {
    /// Loads a manifest and serves it.
    pub async fn start(manifest: Manifest) -> anyhow::Result<RunningHost> {
        LoadedApp::load(manifest).await?.serve().await
    }

    /// Where the gateway listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What is running.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The message bus.
    pub fn bus(&self) -> &Arc<Bus> {
        &self.bus
    }

    /// Where the admin API listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Stops accepting, lets in-flight requests finish (up to the grace
    /// period), then flushes the stores.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.served
            .await
            .map_err(|e| anyhow!("gateway task failed: {e}"))??;
        self.bus.shutdown(self.grace).await;
        match self.admin.await {
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "admin API stopped with an error")
            }
            Err(e) => tracing::warn!(error = %e, "admin API task failed"),
            Ok(Ok(())) => {}
        }
        admin::remove_discovery(&self.data_dir);
        let kv = self.kv.clone();
        tokio::task::spawn_blocking(move || kv.flush_blocking())
            .await
            .map_err(|e| anyhow!("flush task failed: {e}"))??;
        tracing::info!("stores flushed; stopped");
        Ok(())
    }
}

async fn load_one(
    spec: &ComponentSpec,
    engines: &Engines,
    cache: &ArtifactCache,
    kv: &dyn KvBackend,
    bus: Arc<BusGrant>,
    index: usize,
    total: usize,
) -> anyhow::Result<ComponentRuntime> {
    let wasm = resolve_source(&spec.source).await?;
    let handle = engines.get(spec.limits.stack)?;
    tracing::info!(
        "[{index}/{total}] loading `{}` from {}",
        spec.name,
        wasm.display()
    );
    let engine = handle.engine.clone();
    let cache = cache.clone();
    let path = wasm.clone();
    let loaded = tokio::task::spawn_blocking(move || load_component(&engine, &path, Some(&cache)))
        .await
        .map_err(|e| anyhow!("compile task failed: {e}"))??;
    let started = Instant::now();
    let instance_pre = handle.linker.instantiate_pre(&loaded.component).map_err(|e| {
        anyhow!(
            "cannot link: {e:#}. Atoll provides wasi:http (incoming-handler, outgoing-handler), wasi:keyvalue (store, atomics, batch), wasi:config/store, wasi:logging and the wasi:cli/io/clocks/random/filesystem/sockets interfaces of WASI 0.2"
        )
    })?;
    if !spec.routes.is_empty() || spec.subscriptions.is_empty() {
        loaded.require(
            INCOMING_HANDLER,
            "an HTTP service must export the wasi:http proxy world's handler, e.g. with `atoll_sdk::http_handler!`",
        )?;
    }
    if let Some(sub) = spec.subscriptions.first() {
        loaded.require(
            MESSAGE_HANDLER,
            &format!(
                "it subscribes to topic `{}`, so it must export a message handler, e.g. with `atoll_sdk::message_handler!`",
                sub.topic
            ),
        )?;
    }
    let http = match loaded.exports(INCOMING_HANDLER) {
        true => Some(
            ProxyIndices::new(&instance_pre)
                .map_err(anyhow::Error::from)
                .context("linking the wasi:http proxy world")?,
        ),
        false => None,
    };
    let handler = match loaded.exports(MESSAGE_HANDLER) {
        true => Some(
            MessageHandlerIndices::new(&instance_pre)
                .map_err(anyhow::Error::from)
                .context("linking atoll:bus/handler")?,
        ),
        false => None,
    };
    tracing::info!(
        "[{index}/{total}] `{}` ready: sha256:{} ({} in {:.0?}, linked in {:.0?})",
        spec.name,
        &loaded.digest[..12],
        if loaded.cached {
            "cached artifact"
        } else {
            "compiled"
        },
        loaded.elapsed,
        started.elapsed(),
    );
    let config: WasiConfigVariables = spec
        .config
        .iter()
        .chain(spec.secrets.iter())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let name: Arc<str> = Arc::from(spec.name.as_str());
    Ok(ComponentRuntime {
        grants: Grants {
            component: name.clone(),
            namespace: kv.namespace(&spec.name)?,
            config: Arc::new(config),
            outbound: Arc::new(
                OutboundPolicy::new(&spec.allowed_outbound_hosts).map_err(|e| anyhow!(e))?,
            ),
            memory: spec.limits.memory as usize,
            kv_value_size: spec.limits.kv_value_size as usize,
            bus: Some(bus),
        },
        name,
        digest: loaded.digest,
        engine: handle.engine,
        pre: instance_pre,
        http,
        handler,
        limits: spec.limits.clone(),
        concurrency: Arc::new(Semaphore::new(spec.limits.max_concurrency as usize)),
    })
}

/// A `source` is a .wasm file, or a crate directory to build first.
async fn resolve_source(source: &Path) -> anyhow::Result<PathBuf> {
    if source.is_dir() {
        let dir = source.to_path_buf();
        return tokio::task::spawn_blocking(move || {
            build::build_crate(&dir, &build::BuildOptions::default())
        })
        .await
        .map_err(|e| anyhow!("build task failed: {e}"))?;
    }
    if !source.exists() {
        anyhow::bail!(
            "source not found: {} does not exist; set `source` to a .wasm component or a crate directory (build one with `atoll build <crate dir>`)",
            source.display()
        );
    }
    Ok(source.to_path_buf())
}
