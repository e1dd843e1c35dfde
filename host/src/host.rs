//! Starting and stopping a host from a manifest.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use tokio::sync::watch;

use crate::bus::Bus;
use crate::config::{ComponentSpec, Manifest, MetricsPush, OtlpExport};
use crate::engine::{ArtifactCache, Engines, PoolSize};
use crate::kv::{KvBackend, SledBackend};
use crate::registry::{Registry, RegistryParts};
use crate::telemetry::otlp;
use crate::telemetry::push::{Pusher, Sources};
use crate::{admin, gateway};

/// A host that is serving.
pub struct RunningHost {
    /// What `/readyz` reports.
    ready: Arc<std::sync::atomic::AtomicBool>,
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
    /// Background tasks that hold the registry (canary judge, health checks,
    /// source watcher): awaited on shutdown, so the stores close after them.
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    gateway: Arc<gateway::Gateway>,
    /// The OTLP metrics push, when `[telemetry]` or the environment asks
    /// for it.
    metrics: Option<Pusher>,
    /// The OTLP trace export, likewise.
    traces: Option<otlp::Exporter>,
    _engines: Engines,
}

/// Loads every component of a manifest (building crate sources, compiling or
/// using cached artifacts) and links them; nothing listens yet.
pub struct LoadedApp {
    manifest: Manifest,
    registry: Arc<Registry>,
    kv: Arc<dyn KvBackend>,
    bus: Arc<Bus>,
    gateway: Arc<gateway::Gateway>,
    engines: Engines,
    metrics: Option<MetricsPush>,
    traces: Option<OtlpExport>,
    /// When loading began: the start of the pushed cumulative series.
    started: std::time::SystemTime,
}

impl LoadedApp {
    /// Loads a manifest's components. Errors name the component and the
    /// problem. The trace export and metrics push settings are read first,
    /// from the manifest and this process's `OTEL_*` environment, so a bad
    /// one stops `atoll up` and `atoll check` before anything is compiled.
    pub async fn load(manifest: Manifest) -> anyhow::Result<LoadedApp> {
        let started = std::time::SystemTime::now();
        let traces = manifest
            .telemetry
            .resolve(|var| std::env::var(var).ok())
            .map_err(|m| anyhow!("trace export: {m}"))?;
        let metrics = manifest
            .telemetry
            .resolve_metrics(|var| std::env::var(var).ok())
            .map_err(|m| anyhow!("metrics push: {m}"))?;
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
        let registry = Registry::load(RegistryParts {
            manifest: &manifest,
            engines: &engines,
            cache: ArtifactCache::new(data_dir.join("cache")),
            kv: kv.clone(),
            storage,
            bus: bus.clone(),
        })
        .await?;
        let gateway = gateway::Gateway::build(gateway::GatewayParts {
            edge: &manifest.edge,
            registry: registry.clone(),
            kv: kv.clone(),
            data_dir,
        })
        .await?;
        Ok(LoadedApp {
            gateway,
            manifest,
            registry,
            kv,
            bus,
            engines,
            metrics,
            traces,
            started,
        })
    }

    /// Binds the listener and starts serving.
    pub async fn serve(self) -> anyhow::Result<RunningHost> {
        let data_dir = self.manifest.host.data_dir.clone();
        // First push one interval from now; if serving fails below, the
        // dropped pusher stops without pushing.
        let metrics = match &self.metrics {
            Some(config) => Some(
                Pusher::start(
                    config,
                    Sources {
                        registry: self.registry.clone(),
                        bus: self.bus.clone(),
                        gateway: self.gateway.clone(),
                    },
                    self.started,
                )
                .map_err(|e| anyhow!("metrics push: {e:#}"))?,
            ),
            None => None,
        };
        // Before anything is served or delivered, so every request's spans
        // are exported; one exporter per process (see `otlp`).
        let traces = match &self.traces {
            Some(export) => {
                let started = otlp::start(export).map_err(|e| anyhow!("trace export: {e:#}"))?;
                if started.is_none() {
                    tracing::warn!(
                        endpoint = %export.url,
                        "this process already exports traces for another host; this host's spans go there too"
                    );
                }
                started
            }
            None => None,
        };
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
        let gateway = self.gateway.clone();
        let gateway_tasks = gateway.spawn_tasks(rx.clone());
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let admin = tokio::spawn(admin::serve(
            admin_listener,
            Arc::new(admin::AdminState {
                bus: self.bus.clone(),
                registry: self.registry.clone(),
                ready: ready.clone(),
                token: Arc::from(token),
                calls: gateway.call_log().cloned(),
                gateway: Some(gateway.clone()),
            }),
            rx.clone(),
        ));
        self.bus.start(self.registry.clone());
        let mut tasks = vec![
            tokio::spawn(self.registry.clone().watch_canaries(rx.clone())),
            tokio::spawn(self.registry.clone().watch_health(rx.clone())),
        ];
        tasks.extend(gateway_tasks);
        let served = tokio::spawn(gateway::serve(
            listener,
            gateway.clone(),
            rx,
            self.manifest.host.shutdown_grace,
        ));
        // The listener is bound and accepting: ready.
        ready.store(true, std::sync::atomic::Ordering::Release);
        Ok(RunningHost {
            ready,
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
            tasks: std::sync::Mutex::new(tasks),
            gateway,
            metrics,
            traces,
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

    /// The gateway: routes, policies, call log.
    pub fn gateway(&self) -> &Arc<gateway::Gateway> {
        &self.gateway
    }

    /// The message bus.
    pub fn bus(&self) -> &Arc<Bus> {
        &self.bus
    }

    /// Where the admin API listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Where this host's spans are exported, if it exports them.
    pub fn trace_export(&self) -> Option<&str> {
        self.traces.as_ref().map(otlp::Exporter::describe)
    }

    /// Where and how often the metrics are pushed, if they are.
    pub fn metrics_push(&self) -> Option<&MetricsPush> {
        self.metrics.as_ref().map(Pusher::config)
    }

    /// Rebuilds and hot swaps a component whenever its source changes
    /// (`atoll up --watch`), until the host stops.
    pub fn watch_sources(&self) {
        let registry = self.registry.clone();
        let stop = self.shutdown.subscribe();
        let task = tokio::spawn(async move {
            if let Err(e) = crate::registry::watch_sources(registry, stop).await {
                tracing::error!(error = %format!("{e:#}"), "watching sources failed; changes will not be deployed");
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    /// Stops accepting, lets in-flight requests finish (up to the grace
    /// period), pushes the final metrics if they are pushed, then flushes
    /// the stores.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.ready
            .store(false, std::sync::atomic::Ordering::Release);
        let _ = self.shutdown.send(true);
        self.served
            .await
            .map_err(|e| anyhow!("gateway task failed: {e}"))??;
        self.bus.shutdown(self.grace).await;
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        // Nothing is served any more: these are the final counts, and the
        // last spans are queued.
        if let Some(metrics) = self.metrics {
            metrics.finish().await;
        }
        if let Some(traces) = self.traces {
            traces.shutdown().await;
        }
        match self.admin.await {
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "admin API stopped with an error")
            }
            Err(e) => tracing::warn!(error = %e, "admin API task failed"),
            Ok(Ok(())) => {}
        }
        admin::remove_discovery(&self.data_dir);
        if let Some(log) = self.gateway.call_log()
            && let Err(e) = log.close().await
        {
            tracing::warn!(error = %format!("{e:#}"), "closing the call log failed");
        }
        let kv = self.kv.clone();
        tokio::task::spawn_blocking(move || kv.flush_blocking())
            .await
            .map_err(|e| anyhow!("flush task failed: {e}"))??;
        tracing::info!("stores flushed; stopped");
        Ok(())
    }
}
