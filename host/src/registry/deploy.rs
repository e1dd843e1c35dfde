//! Preparing versions and changing what serves: loading at start, deploy,
//! canary, promote, rollback, remove, and the automatic canary rollback.
//!
//! Every change follows one order, so a failure anywhere leaves the old
//! version serving and nothing half-done:
//!
//! 1. compile (or load the cached artifact) and link, off the request path;
//! 2. check that the version still provides what the manifest routes and
//!    subscribes to it;
//! 3. GET its health route, if the manifest declares one;
//! 4. write the registry file;
//! 5. swap the pointer (cannot fail).
//!
//! Changes to one component take its `changing` lock; a second deploy of the
//! same component while one runs is refused (409) rather than queued, so an
//! operator never waits on a compile they did not start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::types::ComponentItem;
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::p2::bindings::ProxyIndices;

use super::store::{CanaryRecord, ComponentState, VersionRecord, now};
use super::{
    Canary, ComponentRuntime, Deployment, HealthRecord, Registry, RegistryStore, RouteTable,
    Service, VersionStats,
};
use crate::bindings::handler::MessageHandlerIndices;
use crate::bus::{Bus, BusGrant};
use crate::config::{ComponentSpec, Manifest};
use crate::engine::{
    ArtifactCache, Engines, INCOMING_HANDLER, MESSAGE_HANDLER, check_component_bytes,
    load_component_bytes,
};
use crate::kv::{KvBackend, SledBackend};
use crate::policy::OutboundPolicy;
use crate::sandbox::Grants;

/// How often canaries are judged.
const CANARY_CHECK: Duration = Duration::from_millis(200);
/// How often running versions with a health route are checked.
const HEALTH_EVERY: Duration = Duration::from_secs(10);
/// How long a remove waits for in-flight work to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The manifest's `source`.
    Manifest,
    /// `atoll deploy` (the admin API).
    Deploy,
    /// `atoll up --watch` saw its source change.
    Watch,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Manifest => "manifest",
            Origin::Deploy => "deploy",
            Origin::Watch => "watch",
        }
    }
}

/// A deploy's parameters.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// The new version's semver.
    pub version: semver::Version,
    /// Make it a canary with this percent of traffic (1-99) instead of active.
    pub canary: Option<u8>,
    /// Allow a downgrade, or new bytes under a version already deployed.
    pub force: bool,
    /// Where it came from.
    pub origin: Origin,
}

/// What a change did, for the operator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeployReport {
    /// Component name.
    pub component: String,
    /// What happened, in one sentence.
    pub message: String,
    /// The version now concerned (deployed, promoted, rolled back to).
    pub version: Option<String>,
    /// Its digest.
    pub digest: Option<String>,
    /// The version that was active before.
    pub previous: Option<String>,
    /// The canary's share, when the change made or kept one.
    pub canary: Option<u8>,
    /// Whether nothing changed (the same bytes were already active).
    pub unchanged: bool,
    /// Whether a version was compiled (or loaded) and linked for this change;
    /// the timings below are about it.
    pub prepared: bool,
    /// Whether it was compiled (false: the compiled artifact was cached).
    pub compiled: bool,
    /// Milliseconds compiling or loading the artifact.
    pub compile_ms: f64,
    /// Milliseconds linking.
    pub link_ms: f64,
    /// The health route's answer.
    pub health_status: Option<u16>,
    /// Milliseconds the health check took.
    pub health_ms: Option<f64>,
    /// Milliseconds from the request to the swap.
    pub total_ms: f64,
    /// In-flight invocations a remove waited for.
    pub drained: Option<u64>,
}

/// Why a change was refused. Nothing changed in any case.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No such component in the manifest.
    #[error("unknown component `{0}`; the manifest declares: {1}")]
    UnknownComponent(String, String),
    /// Another change of the component is under way.
    #[error(
        "another deploy, promote, rollback or remove of `{0}` is under way; wait for it to finish and try again"
    )]
    Busy(String),
    /// The change contradicts the current state (downgrade, same version, ...).
    #[error("{0}")]
    Conflict(String),
    /// The input is not usable (not a component, bad version).
    #[error("{0}")]
    Invalid(String),
    /// The version does not compile, link, provide what is needed, or pass its health check.
    #[error("{what} was refused; nothing changed:\n  - {}", .problems.join("\n  - "))]
    Refused {
        /// Which version of which component.
        what: String,
        /// Each problem.
        problems: Vec<String>,
    },
    /// A version asked for is not kept.
    #[error("{0}")]
    NotFound(String),
    /// The host could not write its registry.
    #[error("{0}")]
    Internal(String),
}

impl DeployError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            DeployError::UnknownComponent(..) | DeployError::NotFound(_) => StatusCode::NOT_FOUND,
            DeployError::Busy(_) | DeployError::Conflict(_) => StatusCode::CONFLICT,
            DeployError::Invalid(_) => StatusCode::BAD_REQUEST,
            DeployError::Refused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            DeployError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

fn internal(e: impl std::fmt::Display) -> DeployError {
    DeployError::Internal(e.to_string())
}

/// What [`Registry::load`] builds a registry from.
pub struct RegistryParts<'a> {
    /// The manifest.
    pub manifest: &'a Manifest,
    /// The engines, one per stack size.
    pub engines: &'a Engines,
    /// The compiled-artifact cache.
    pub cache: ArtifactCache,
    /// The kv backend.
    pub kv: Arc<dyn KvBackend>,
    /// The storage the kv and the bus share.
    pub storage: Arc<SledBackend>,
    /// The bus.
    pub bus: Arc<Bus>,
}

/// A version compiled and linked, not yet serving.
struct Prepared {
    runtime: Arc<ComponentRuntime>,
    cached: bool,
    compile: Duration,
    link: Duration,
}

impl Registry {
    /// Loads every component of a manifest: the versions the registry file
    /// says are active (and canaries), or, for a component whose `source`
    /// changed since it was last applied (or that is new), that source.
    pub async fn load(parts: RegistryParts<'_>) -> anyhow::Result<Arc<Registry>> {
        let manifest = parts.manifest;
        let store = Arc::new(RegistryStore::open(&manifest.host.data_dir)?);
        let mut registry = Registry {
            services: BTreeMap::new(),
            routes: RouteTable::default(),
            store,
            cache: parts.cache.clone(),
            kv: parts.kv.clone(),
            keep_versions: manifest.host.keep_versions,
            max_call_depth: manifest.host.max_call_depth,
            handle: Default::default(),
            calls_lock: tokio::sync::Mutex::new(()),
        };
        let total = manifest.components.len();
        let mut routes = Vec::new();
        for (i, spec) in manifest.components.values().enumerate() {
            let service = registry
                .new_service(spec, &parts.engines.get(spec.limits.stack)?, &parts)
                .with_context(|| format!("component `{}`", spec.name))?;
            registry
                .start_service(&service, i + 1, total)
                .await
                .with_context(|| {
                    format!("component `{}` ({})", spec.name, spec.source.display())
                })?;
            routes.extend(spec.routes.iter().map(|r| (r.clone(), service.clone())));
            registry.services.insert(spec.name.clone(), service);
        }
        registry.routes = RouteTable::new(routes);
        registry.store.prune_blobs();
        let problems = registry.check_all_calls();
        if !problems.is_empty() {
            anyhow::bail!(
                "the components' calls do not fit together:\n  - {}",
                problems.join("\n  - ")
            );
        }
        let registry = Arc::new(registry);
        let _ = registry.handle.set(Arc::downgrade(&registry));
        Ok(registry)
    }

    fn new_service(
        &self,
        spec: &ComponentSpec,
        engine: &crate::engine::EngineHandle,
        parts: &RegistryParts<'_>,
    ) -> anyhow::Result<Arc<Service>> {
        let config: WasiConfigVariables = spec
            .config
            .iter()
            .chain(spec.secrets.iter())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let grants = Grants {
            component: Arc::from(spec.name.as_str()),
            version: Arc::from(""),
            namespace: self.kv.namespace(&spec.name)?,
            config: Arc::new(config),
            outbound: Arc::new(
                OutboundPolicy::new(&spec.allowed_outbound_hosts).map_err(|e| anyhow!(e))?,
            ),
            memory: spec.limits.memory as usize,
            stats: None,
            kv_value_size: spec.limits.kv_value_size as usize,
            bus: Some(Arc::new(BusGrant {
                bus: parts.bus.clone(),
                kv_tree: parts.storage.tree_of(&spec.name)?,
                max_value: spec.limits.kv_value_size as usize,
            })),
        };
        Ok(Arc::new(Service {
            spec: spec.clone(),
            engine: engine.clone(),
            grants,
            concurrency: Arc::new(Semaphore::new(spec.limits.max_concurrency as usize)),
            deployment: Default::default(),
            turn: AtomicU64::new(0),
            changing: tokio::sync::Mutex::new(()),
            rolling_back: AtomicBool::new(false),
            edges: spec
                .calls
                .iter()
                .map(|(callee, call)| {
                    let edge = crate::calls::Edge::new(Arc::from(spec.name.as_str()), call.clone());
                    (callee.clone(), Arc::new(edge))
                })
                .collect(),
        }))
    }

    /// Brings one component up at start.
    async fn start_service(
        &self,
        service: &Arc<Service>,
        index: usize,
        total: usize,
    ) -> anyhow::Result<()> {
        let spec = &service.spec;
        let saved = self.store.component(&spec.name);
        let source = resolve_source(&spec.source).await;
        let source = match (source, &saved) {
            (Ok(path), _) => {
                let bytes = std::fs::read(&path).with_context(|| {
                    format!(
                        "cannot read component file {}; check `source` in atoll.toml (a .wasm file or a crate directory)",
                        path.display()
                    )
                })?;
                Some((path, bytes))
            }
            (Err(e), Some(saved)) if saved.manifest_digest.is_some() => {
                tracing::warn!(
                    component = %spec.name,
                    error = %format!("{e:#}"),
                    "the manifest's source is unavailable; serving the versions the registry kept"
                );
                None
            }
            (Err(e), _) => return Err(e),
        };
        let digest = source.as_ref().map(|(_, b)| sha256(b));
        match (source, saved) {
            (None, Some(saved)) => self.restore(service, &saved, index, total).await,
            (Some(_), Some(saved)) if saved.manifest_digest == digest => {
                self.restore(service, &saved, index, total).await
            }
            (Some((path, bytes)), _) => {
                let version = spec
                    .version
                    .clone()
                    .or_else(|| crate_version(&spec.source))
                    .unwrap_or(semver::Version::new(0, 0, 0));
                tracing::info!(
                    "[{index}/{total}] loading `{}` {version} from {}",
                    spec.name,
                    path.display()
                );
                let digest = sha256(&bytes);
                let bytes = Arc::new(bytes);
                let prepared = self
                    .prepare(service, bytes.clone(), version.clone(), now())
                    .await?;
                log_ready(&prepared, index, total);
                let record = record_of(&prepared.runtime, Origin::Manifest);
                let keep = self.keep_versions;
                let blob = Some((digest.as_str(), bytes.as_slice()));
                self.store.update_with_blob(&spec.name, blob, |c| {
                    let changed = c.manifest_digest.is_some();
                    c.manifest_digest = Some(digest.clone());
                    c.active = Some(record.clone());
                    c.canary = None;
                    c.remember(record, keep);
                    c.event(
                        "manifest",
                        match changed {
                            true => format!(
                                "the manifest's source changed: {version} from {} is active",
                                path.display()
                            ),
                            false => format!("{version} from {} is active", path.display()),
                        },
                    );
                })?;
                service.swap(Deployment {
                    active: Some(prepared.runtime),
                    canary: None,
                });
                Ok(())
            }
            (None, None) => {
                unreachable!("an unavailable source without a registry is an error above")
            }
        }
    }

    /// Loads the active version and canary the registry file names.
    async fn restore(
        &self,
        service: &Arc<Service>,
        saved: &ComponentState,
        index: usize,
        total: usize,
    ) -> anyhow::Result<()> {
        let name = service.name();
        let mut deployment = Deployment::default();
        if let Some(active) = &saved.active {
            tracing::info!(
                "[{index}/{total}] loading `{name}` {} from the registry",
                active.version
            );
            let prepared = self.prepare_kept(service, active).await?;
            log_ready(&prepared, index, total);
            deployment.active = Some(prepared.runtime);
        } else {
            tracing::info!(
                "[{index}/{total}] `{name}` was removed; deploy a version to serve it again"
            );
        }
        if let Some(canary) = &saved.canary {
            let prepared = self.prepare_kept(service, &canary.version).await?;
            tracing::info!(
                "[{index}/{total}] `{name}` canary {} gets {}% of traffic",
                canary.version.version,
                canary.percent
            );
            deployment.canary = Some(Canary {
                runtime: prepared.runtime,
                percent: canary.percent,
            });
        }
        service.swap(deployment);
        Ok(())
    }

    async fn prepare_kept(
        &self,
        service: &Service,
        record: &VersionRecord,
    ) -> Result<Prepared, DeployError> {
        let store = self.store.clone();
        let digest = record.digest.clone();
        let bytes = tokio::task::spawn_blocking(move || store.read_blob(&digest))
            .await
            .map_err(internal)?
            .map_err(|e| DeployError::NotFound(format!("{e:#}")))?;
        self.prepare(
            service,
            Arc::new(bytes),
            record.version.clone(),
            record.deployed_at.clone(),
        )
        .await
    }

    /// Compiles (or loads from the cache) and links a version, and checks it
    /// provides what the manifest's routes and subscriptions need.
    async fn prepare(
        &self,
        service: &Service,
        bytes: Arc<Vec<u8>>,
        version: semver::Version,
        deployed_at: String,
    ) -> Result<Prepared, DeployError> {
        let spec = &service.spec;
        let what = format!("version {version} of `{}`", spec.name);
        let refused = |problems: Vec<String>| DeployError::Refused {
            what: what.clone(),
            problems,
        };
        check_component_bytes(&bytes).map_err(|e| DeployError::Invalid(format!("{e:#}")))?;
        let engine = service.engine.engine.clone();
        let cache = self.cache.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            load_component_bytes(&engine, &bytes, Some(&cache))
        })
        .await
        .map_err(internal)?
        .map_err(|e| refused(vec![format!("{e:#}")]))?;
        let started = Instant::now();
        let (call_imports, call_exports) =
            crate::calls::interfaces(&loaded.component, &service.engine.engine)
                .map_err(&refused)?;
        // Imports from other components become trampolines, on a copy of the
        // host's linker for this version alone.
        let linker = match call_imports.is_empty() {
            true => service.engine.linker.clone(),
            false => {
                let mut linker = (*service.engine.linker).clone();
                crate::calls::link(
                    &mut linker,
                    &call_imports,
                    &service.edges,
                    &self.handle,
                    self.max_call_depth,
                )
                .map_err(|e| refused(vec![format!("linking its calls: {e:#}")]))?;
                Arc::new(linker)
            }
        };
        let mut problems = Vec::new();
        let pre = match linker.instantiate_pre(&loaded.component) {
            Ok(pre) => Some(pre),
            Err(e) => {
                problems.push(format!(
                    "cannot link: {e:#}. Atoll provides wasi:http (incoming-handler, outgoing-handler), wasi:keyvalue (store, atomics, batch), wasi:config/store, wasi:logging, atoll:bus and the wasi:cli/io/clocks/random/filesystem/sockets interfaces of WASI 0.2"
                ));
                None
            }
        };
        // Something must be able to invoke it: routes, subscriptions, or other
        // components calling its exports. With none of these, it is an HTTP
        // service by default.
        let invoked_otherwise = !spec.subscriptions.is_empty() || !call_exports.is_empty();
        if !spec.routes.is_empty() || !invoked_otherwise {
            let routes = spec
                .routes
                .iter()
                .map(|r| format!("`{r}`"))
                .collect::<Vec<_>>();
            let why = match routes.is_empty() {
                true => "an HTTP service must export the wasi:http proxy world's handler, e.g. with `atoll_sdk::http_handler!`".to_string(),
                false => format!(
                    "its routes ({}) need it; export it with `atoll_sdk::http_handler!`",
                    routes.join(", ")
                ),
            };
            if let Err(e) = loaded.require(INCOMING_HANDLER, &why) {
                problems.push(e.to_string());
            }
        }
        if let Some(sub) = spec.subscriptions.first()
            && let Err(e) = loaded.require(
                MESSAGE_HANDLER,
                &format!(
                    "it subscribes to topic `{}`, so it must export a message handler, e.g. with `atoll_sdk::message_handler!`",
                    sub.topic
                ),
            )
        {
            problems.push(e.to_string());
        }
        let Some(pre) = pre.filter(|_| problems.is_empty()) else {
            return Err(refused(problems));
        };
        let http =
            match loaded.exports(INCOMING_HANDLER) {
                true => Some(ProxyIndices::new(&pre).map_err(|e| {
                    refused(vec![format!("linking the wasi:http proxy world: {e:#}")])
                })?),
                false => None,
            };
        let handler = match loaded.exports(MESSAGE_HANDLER) {
            true => Some(
                MessageHandlerIndices::new(&pre)
                    .map_err(|e| refused(vec![format!("linking atoll:bus/handler: {e:#}")]))?,
            ),
            false => None,
        };
        let imports = loaded
            .component
            .component_type()
            .imports(&service.engine.engine)
            .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
            .map(|(name, _)| name.to_string())
            .collect();
        let stats = Arc::new(VersionStats::default());
        let grants = service.grants.for_version(&version, stats.clone());
        let runtime = Arc::new(ComponentRuntime {
            name: service.grants.component.clone(),
            version,
            digest: loaded.digest,
            engine: service.engine.engine.clone(),
            pre,
            http,
            handler,
            grants,
            limits: spec.limits.clone(),
            concurrency: service.concurrency.clone(),
            exports: loaded.exports,
            imports,
            deployed_at,
            stats,
            health: Default::default(),
            call_imports,
            call_exports,
        });
        Ok(Prepared {
            runtime,
            cached: loaded.cached,
            compile: loaded.elapsed,
            link: started.elapsed(),
        })
    }

    /// GETs the component's health route on one version and records the
    /// answer on it; `None` when the component declares no health route.
    async fn probe_health(
        &self,
        service: &Service,
        runtime: &Arc<ComponentRuntime>,
    ) -> Option<HealthRecord> {
        let path = service.spec.health.as_ref()?;
        let started = Instant::now();
        let answer = crate::gateway::probe(runtime.clone(), self.kv.clone(), path).await;
        let (status, error) = match &answer {
            Ok((status, _)) if (200..300).contains(status) => (Some(*status), None),
            Ok((status, body)) => (
                Some(*status),
                Some(format!(
                    "its health check GET {path} answered {status}: {}",
                    body.trim()
                )),
            ),
            Err(e) => (
                None,
                Some(format!("its health check GET {path} failed: {e}")),
            ),
        };
        let record = HealthRecord {
            status,
            at: now(),
            error,
            took: started.elapsed(),
        };
        *runtime.health.lock().unwrap_or_else(|e| e.into_inner()) = Some(record.clone());
        Some(record)
    }

    /// Checks a prepared version's health; refuses it unless it answers 2xx
    /// (and records the refusal as an event).
    async fn check_health(
        &self,
        service: &Service,
        runtime: &Arc<ComponentRuntime>,
        report: &mut DeployReport,
    ) -> Result<(), DeployError> {
        let Some(record) = self.probe_health(service, runtime).await else {
            return Ok(());
        };
        report.health_ms = Some(ms(record.took));
        report.health_status = record.status;
        match record.error {
            None => Ok(()),
            Some(problem) => Err(DeployError::Refused {
                what: format!("version {} of `{}`", runtime.version, service.name()),
                problems: vec![problem],
            }),
        }
    }

    /// Records a refused version as an event, so `atoll ps` can show it.
    async fn note_refusal(&self, name: &str, error: &DeployError) {
        if let DeployError::Refused { what, problems } = error {
            let message = format!("{what}: {}", problems.join("; "));
            if let Err(e) = self
                .persist(name, move |c| c.event("refused", message))
                .await
            {
                tracing::warn!(component = name, error = %e, "could not record the refusal");
            }
        }
    }

    /// Problems with the components' calls as they run now (checked at start).
    fn check_all_calls(&self) -> Vec<String> {
        self.check_calls_with(None)
    }

    /// Problems with the components' calls if component `name` ran
    /// `versions` instead of what it runs now: its own imports, and what its
    /// callers import from it.
    fn check_calls_with(&self, replace: Option<(&str, Vec<Arc<ComponentRuntime>>)>) -> Vec<String> {
        let all: Vec<String> = self.services.keys().cloned().collect();
        let running = |n: &str| -> Vec<Arc<ComponentRuntime>> {
            match &replace {
                Some((r, versions)) if *r == n => versions.clone(),
                _ => self
                    .services
                    .get(n)
                    .map(|s| {
                        let d = s.deployment();
                        d.active
                            .iter()
                            .cloned()
                            .chain(d.canary.as_ref().map(|c| c.runtime.clone()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        };
        let mut problems = Vec::new();
        for service in self.services.values() {
            for rt in running(service.name()) {
                for p in crate::calls::check_imports(
                    service.name(),
                    &rt.call_imports,
                    &service.spec.calls,
                    &running,
                    &all,
                ) {
                    if !problems.contains(&p) {
                        problems.push(p);
                    }
                }
            }
        }
        problems
    }

    /// Refuses a change that would leave a call unserved.
    fn refuse_broken_calls(
        &self,
        name: &str,
        versions: Vec<Arc<ComponentRuntime>>,
        what: impl FnOnce() -> String,
    ) -> Result<(), DeployError> {
        let problems = self.check_calls_with(Some((name, versions)));
        match problems.is_empty() {
            true => Ok(()),
            false => Err(DeployError::Refused {
                what: what(),
                problems,
            }),
        }
    }

    /// The component `name` and its change lock: refused (409) while another
    /// deploy, promote, rollback or remove of it is under way.
    fn begin_change(
        &self,
        name: &str,
    ) -> Result<(&Arc<Service>, tokio::sync::MutexGuard<'_, ()>), DeployError> {
        let service = self.service_named(name)?;
        let changing = service
            .changing
            .try_lock()
            .map_err(|_| DeployError::Busy(name.to_string()))?;
        Ok((service, changing))
    }

    fn service_named(&self, name: &str) -> Result<&Arc<Service>, DeployError> {
        self.services.get(name).ok_or_else(|| {
            DeployError::UnknownComponent(
                name.to_string(),
                self.services.keys().cloned().collect::<Vec<_>>().join(", "),
            )
        })
    }

    /// Writes the registry file off the async workers.
    async fn persist(
        &self,
        name: &str,
        change: impl FnOnce(&mut ComponentState) + Send + 'static,
    ) -> Result<(), DeployError> {
        self.persist_with(name, None, change).await
    }

    /// Keeps a binary and writes the registry file that refers to it.
    async fn persist_with(
        &self,
        name: &str,
        blob: Option<(String, Arc<Vec<u8>>)>,
        change: impl FnOnce(&mut ComponentState) + Send + 'static,
    ) -> Result<(), DeployError> {
        let store = self.store.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            let blob = blob.as_ref().map(|(d, b)| (d.as_str(), b.as_slice()));
            store.update_with_blob(&name, blob, change)
        })
        .await
        .map_err(internal)?
        .map_err(|e| DeployError::Internal(format!("{e:#}; nothing changed")))
    }

    /// Deploys new bytes as the active version or a canary.
    pub async fn deploy(
        &self,
        name: &str,
        bytes: Vec<u8>,
        request: DeployRequest,
    ) -> Result<DeployReport, DeployError> {
        let result = self.deploy_once(name, bytes, request).await;
        if let Err(e) = &result {
            self.note_refusal(name, e).await;
        }
        result
    }

    async fn deploy_once(
        &self,
        name: &str,
        bytes: Vec<u8>,
        request: DeployRequest,
    ) -> Result<DeployReport, DeployError> {
        let started = Instant::now();
        let (service, _changing) = self.begin_change(name)?;
        check_component_bytes(&bytes).map_err(|e| DeployError::Invalid(format!("{e:#}")))?;
        let digest = sha256(&bytes);
        let version = request.version.clone();
        let current = service.deployment();
        let active = current.active.as_ref();
        let mut report = DeployReport {
            component: name.to_string(),
            version: Some(version.to_string()),
            digest: Some(digest.clone()),
            previous: active.map(|a| a.version.to_string()),
            canary: request.canary,
            ..Default::default()
        };
        if let Some(active) = active {
            if active.version == version && active.digest == digest {
                // Deploying what is active again ends a canary, like a rollback.
                let dropped = " (the canary was dropped)";
                if request.canary.is_some() {
                    return Err(DeployError::Conflict(format!(
                        "{name} {version} (sha256:{}) is already active; a canary must be a different version",
                        short(&digest)
                    )));
                } else if current.canary.is_none() {
                    report.unchanged = true;
                    report.message = format!(
                        "{name} {version} (sha256:{}) is already active; nothing changed",
                        short(&digest)
                    );
                    report.total_ms = ms(started.elapsed());
                    return Ok(report);
                }
                self.persist(name, move |c| {
                    c.canary = None;
                    c.event("rollback", format!("{version} deployed again{dropped}"));
                })
                .await?;
                service.swap(Deployment {
                    active: current.active.clone(),
                    canary: None,
                });
                report.message = format!("{name} {} is active{dropped}", active.version);
                report.total_ms = ms(started.elapsed());
                return Ok(report);
            }
            if request.canary.is_some() && active.version == version {
                // A kept version is told apart by its number: a canary with
                // the active one's would replace the active one's record.
                return Err(DeployError::Conflict(format!(
                    "{name} {version} is the active version's number; give the canary its own version"
                )));
            }
            if active.version == version && !request.force {
                return Err(DeployError::Conflict(format!(
                    "{name} {version} is already deployed with different bytes (sha256:{} there, sha256:{} here); give the new build a new version, or pass --force to replace it",
                    short(&active.digest),
                    short(&digest)
                )));
            }
            // Precedence ignores build metadata (`1.2.0+watch.3` is 1.2.0).
            if version.cmp_precedence(&active.version).is_lt() && !request.force {
                return Err(DeployError::Conflict(format!(
                    "{version} is older than the active {name} {}; pass --force to downgrade, or `atoll rollback {name} --to {version}` if it is kept",
                    active.version
                )));
            }
        } else if request.canary.is_some() {
            return Err(DeployError::Conflict(format!(
                "`{name}` has no active version for a canary to share traffic with; deploy it without --canary first"
            )));
        }
        let blob = Arc::new(bytes);
        let prepared = self
            .prepare(service, blob.clone(), version.clone(), now())
            .await?;
        report.prepared = true;
        report.compiled = !prepared.cached;
        report.compile_ms = ms(prepared.compile);
        report.link_ms = ms(prepared.link);
        let versions = match request.canary {
            Some(_) => current
                .active
                .iter()
                .cloned()
                .chain([prepared.runtime.clone()])
                .collect(),
            None => vec![prepared.runtime.clone()],
        };
        let what = || format!("version {version} of `{name}`");
        self.refuse_broken_calls(name, versions.clone(), what)?;
        self.check_health(service, &prepared.runtime, &mut report)
            .await?;
        // Checked again with other components' changes held off until the swap.
        let _calls = self.calls_lock.lock().await;
        self.refuse_broken_calls(name, versions, what)?;

        let record = record_of(&prepared.runtime, request.origin);
        let keep = self.keep_versions;
        let previous = report.previous.clone();
        let deployment = match request.canary {
            Some(percent) => {
                let record = record.clone();
                let blob = Some((digest.clone(), blob.clone()));
                self.persist_with(name, blob, move |c| {
                    c.canary = Some(CanaryRecord {
                        version: record.clone(),
                        percent,
                    });
                    c.remember(record.clone(), keep);
                    c.event(
                        "canary",
                        format!("{} gets {percent}% of traffic", record.version),
                    );
                })
                .await?;
                report.message = format!("{name} {version} is a canary with {percent}% of traffic");
                Deployment {
                    active: current.active.clone(),
                    canary: Some(Canary {
                        runtime: prepared.runtime,
                        percent,
                    }),
                }
            }
            None => {
                let record = record.clone();
                let origin = request.origin;
                let blob = Some((digest.clone(), blob.clone()));
                self.persist_with(name, blob, move |c| {
                    c.active = Some(record.clone());
                    c.canary = None;
                    c.remember(record.clone(), keep);
                    let from = previous.map(|p| format!(" (was {p})")).unwrap_or_default();
                    c.event(
                        origin.as_str(),
                        format!("{} is active{from}", record.version),
                    );
                })
                .await?;
                report.message = match &report.previous {
                    Some(p) => format!("{name} {version} is active (was {p})"),
                    None => format!("{name} {version} is active"),
                };
                Deployment {
                    active: Some(prepared.runtime),
                    canary: None,
                }
            }
        };
        service.swap(deployment);
        report.total_ms = ms(started.elapsed());
        tracing::info!(component = name, %version, digest = short(&digest), ms = report.total_ms, "{}", report.message);
        self.prune().await;
        Ok(report)
    }

    /// Makes the canary the active version.
    pub async fn promote(&self, name: &str) -> Result<DeployReport, DeployError> {
        let started = Instant::now();
        let (service, _changing) = self.begin_change(name)?;
        let current = service.deployment();
        let Some(canary) = &current.canary else {
            return Err(DeployError::Conflict(format!(
                "`{name}` has no canary to promote; `atoll deploy {name} FILE --version V --canary PERCENT` starts one"
            )));
        };
        let version = canary.runtime.version.clone();
        let previous = current.active.as_ref().map(|a| a.version.to_string());
        let from = previous.clone();
        self.persist(name, move |c| {
            if let Some(canary) = c.canary.take() {
                c.active = Some(canary.version);
            }
            let from = from.map(|p| format!(" (was {p})")).unwrap_or_default();
            c.event(
                "promote",
                format!("canary {version} promoted: it is active{from}"),
            );
        })
        .await?;
        let runtime = canary.runtime.clone();
        service.swap(Deployment {
            active: Some(runtime.clone()),
            canary: None,
        });
        Ok(DeployReport {
            component: name.to_string(),
            message: format!(
                "{name} {} is active (promoted from canary)",
                runtime.version
            ),
            version: Some(runtime.version.to_string()),
            digest: Some(runtime.digest.clone()),
            previous,
            total_ms: ms(started.elapsed()),
            ..Default::default()
        })
    }

    /// Drops the canary (without `to`), or makes a kept version active.
    pub async fn rollback(
        &self,
        name: &str,
        to: Option<semver::Version>,
    ) -> Result<DeployReport, DeployError> {
        let started = Instant::now();
        let (service, _changing) = self.begin_change(name)?;
        let current = service.deployment();
        let active = current.active.clone();
        let previous = active.as_ref().map(|a| a.version.to_string());
        if to.is_none()
            && let Some(canary) = &current.canary
        {
            let version = canary.runtime.version.clone();
            self.persist(name, move |c| {
                c.canary = None;
                c.event("rollback", format!("canary {version} rolled back"));
            })
            .await?;
            service.swap(Deployment {
                active: active.clone(),
                canary: None,
            });
            return Ok(DeployReport {
                component: name.to_string(),
                message: format!(
                    "{name}: canary {} rolled back; {} serves all traffic",
                    canary.runtime.version,
                    previous.as_deref().unwrap_or("nothing")
                ),
                version: previous.clone(),
                previous,
                total_ms: ms(started.elapsed()),
                ..Default::default()
            });
        }
        let saved = self.store.component(name).unwrap_or_default();
        let kept = || {
            saved
                .versions
                .iter()
                .map(|v| v.version.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let target = match &to {
            Some(v) => saved.find(v).cloned().ok_or_else(|| {
                DeployError::NotFound(format!("{name} {v} is not kept; kept versions: {}", kept()))
            })?,
            // The kept version deployed just before the active one. (Versions
            // are told apart by version, not digest: two versions may have
            // the same bytes.)
            None => {
                let is_active = |v: &VersionRecord| {
                    active
                        .as_ref()
                        .is_some_and(|a| a.version == v.version && a.digest == v.digest)
                };
                let position = saved
                    .versions
                    .iter()
                    .position(is_active)
                    .unwrap_or(saved.versions.len());
                saved.versions[..position].last().cloned().ok_or_else(|| {
                    DeployError::NotFound(format!(
                        "`{name}` has no earlier version to roll back to; kept versions: {}",
                        kept()
                    ))
                })?
            }
        };
        let already = active
            .as_ref()
            .is_some_and(|a| a.version == target.version && a.digest == target.digest);
        if already && current.canary.is_none() {
            return Ok(DeployReport {
                component: name.to_string(),
                message: format!(
                    "{name} {} is already active; nothing changed",
                    target.version
                ),
                version: Some(target.version.to_string()),
                unchanged: true,
                total_ms: ms(started.elapsed()),
                ..Default::default()
            });
        }
        let prepared = self.prepare_kept(service, &target).await?;
        let mut report = DeployReport {
            component: name.to_string(),
            version: Some(target.version.to_string()),
            digest: Some(target.digest.clone()),
            previous: previous.clone(),
            prepared: true,
            compiled: !prepared.cached,
            compile_ms: ms(prepared.compile),
            link_ms: ms(prepared.link),
            ..Default::default()
        };
        let what = || format!("rolling `{name}` back to {}", target.version);
        self.refuse_broken_calls(name, vec![prepared.runtime.clone()], what)?;
        self.check_health(service, &prepared.runtime, &mut report)
            .await?;
        let _calls = self.calls_lock.lock().await;
        self.refuse_broken_calls(name, vec![prepared.runtime.clone()], what)?;
        let record = target.clone();
        let from = previous.clone();
        self.persist(name, move |c| {
            c.active = Some(record.clone());
            c.canary = None;
            let from = from.map(|p| format!(" (was {p})")).unwrap_or_default();
            c.event(
                "rollback",
                format!("rolled back to {}{from}", record.version),
            );
        })
        .await?;
        service.swap(Deployment {
            active: Some(prepared.runtime),
            canary: None,
        });
        report.message = format!(
            "{name} {} is active (rolled back from {})",
            target.version,
            previous.as_deref().unwrap_or("nothing")
        );
        report.total_ms = ms(started.elapsed());
        tracing::info!(component = name, "{}", report.message);
        Ok(report)
    }

    /// Stops routing to a component, then waits for its in-flight work.
    /// Its versions stay kept: a deploy or rollback brings it back.
    pub async fn remove(&self, name: &str) -> Result<DeployReport, DeployError> {
        let started = Instant::now();
        let (service, _changing) = self.begin_change(name)?;
        let current = service.deployment();
        let Some(active) = current.active.clone() else {
            return Err(DeployError::Conflict(format!(
                "`{name}` is already removed; `atoll deploy` or `atoll rollback {name} --to VERSION` brings it back"
            )));
        };
        let calls = self.calls_lock.lock().await;
        self.refuse_broken_calls(name, Vec::new(), || format!("removing `{name}`"))?;
        let version = active.version.clone();
        self.persist(name, move |c| {
            c.active = None;
            c.canary = None;
            c.event("remove", format!("removed (was {version})"));
        })
        .await?;
        service.swap(Deployment::default());
        drop(calls);
        let max = service.spec.limits.max_concurrency;
        let in_flight = u64::from(max) - service.concurrency.available_permits() as u64;
        // Draining: every slot free means nothing runs on any version.
        let drained = match tokio::time::timeout(
            DRAIN_TIMEOUT,
            service.concurrency.acquire_many(max),
        )
        .await
        {
            Ok(Ok(permits)) => {
                drop(permits);
                true
            }
            _ => false,
        };
        let message = match drained {
            true => format!(
                "{name} removed: {} no longer serves; {in_flight} in-flight invocations finished",
                active.version
            ),
            false => {
                let still = u64::from(max) - service.concurrency.available_permits() as u64;
                format!(
                    "{name} removed: {} takes no new work, but {still} invocations were still running {DRAIN_TIMEOUT:?} later (they finish on their own, bounded by the deadline)",
                    active.version
                )
            }
        };
        tracing::info!(component = name, "{message}");
        Ok(DeployReport {
            component: name.to_string(),
            message,
            previous: Some(active.version.to_string()),
            drained: drained.then_some(in_flight),
            total_ms: ms(started.elapsed()),
            ..Default::default()
        })
    }

    async fn prune(&self) {
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.prune_blobs()).await;
    }

    /// Judges canaries every [`CANARY_CHECK`] until `stop` flips: one whose
    /// error rate over its window passes `max_error_rate` (with at least
    /// `min_requests` in the window) is rolled back.
    pub async fn watch_canaries(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(CANARY_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            for service in self.services.values() {
                let Some(canary) = &service.deployment().canary else {
                    continue;
                };
                let policy = &service.spec.canary;
                let window = canary.runtime.stats.window(policy.window);
                if window.total() < policy.min_requests
                    || window.error_rate() <= policy.max_error_rate
                    || service.rolling_back.swap(true, Ordering::AcqRel)
                {
                    continue;
                }
                let reason = format!(
                    "error rate {:.0}% ({} of {}) over the last {} is above the limit of {:.0}%",
                    window.error_rate() * 100.0,
                    window.failed,
                    window.total(),
                    humantime::format_duration(policy.window),
                    policy.max_error_rate * 100.0
                );
                let registry = self.clone();
                let service = service.clone();
                let digest = canary.runtime.digest.clone();
                tokio::spawn(async move {
                    registry.auto_rollback(&service, &digest, reason).await;
                    service.rolling_back.store(false, Ordering::Release);
                });
            }
        }
    }

    /// Checks the health route of every running version now and every
    /// [`HEALTH_EVERY`] until `stop` flips, for `atoll ps`; a version turning
    /// unhealthy or healthy again is logged.
    pub async fn watch_health(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(HEALTH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            for service in self.services.values() {
                let deployment = service.deployment();
                let versions = deployment
                    .active
                    .iter()
                    .chain(deployment.canary.as_ref().map(|c| &c.runtime));
                for runtime in versions {
                    let was_ok = runtime.health().is_none_or(|h| h.error.is_none());
                    let Some(now) = self.probe_health(service, runtime).await else {
                        break;
                    };
                    match (&now.error, was_ok) {
                        (Some(e), true) => {
                            tracing::warn!(component = service.name(), version = %runtime.version, "health check failing: {e}")
                        }
                        (None, false) => {
                            tracing::info!(component = service.name(), version = %runtime.version, "health check passing again")
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    async fn auto_rollback(&self, service: &Service, digest: &str, reason: String) {
        let _changing = service.changing.lock().await;
        let current = service.deployment();
        let Some(canary) = current
            .canary
            .as_ref()
            .filter(|c| c.runtime.digest == digest)
        else {
            return; // promoted or replaced meanwhile
        };
        let version = canary.runtime.version.clone();
        let message = format!("canary {version} rolled back automatically: {reason}");
        let event = message.clone();
        // The swap comes first here: a failing canary must stop taking
        // traffic even if the registry file cannot be written.
        service.swap(Deployment {
            active: current.active.clone(),
            canary: None,
        });
        tracing::warn!(component = service.name(), "{message}");
        if let Err(e) = self
            .persist(service.name(), move |c| {
                c.canary = None;
                c.event("auto-rollback", event);
            })
            .await
        {
            tracing::error!(component = service.name(), error = %e, "could not record the automatic rollback; the canary may return after a restart");
        }
    }
}

fn record_of(runtime: &ComponentRuntime, origin: Origin) -> VersionRecord {
    VersionRecord {
        version: runtime.version.clone(),
        digest: runtime.digest.clone(),
        deployed_at: runtime.deployed_at.clone(),
        origin: origin.as_str().to_string(),
    }
}

fn log_ready(prepared: &Prepared, index: usize, total: usize) {
    let rt = &prepared.runtime;
    tracing::info!(
        "[{index}/{total}] `{}` {} ready: sha256:{} ({} in {:.0?}, linked in {:.0?})",
        rt.name,
        rt.version,
        short(&rt.digest),
        if prepared.cached {
            "cached artifact"
        } else {
            "compiled"
        },
        prepared.compile,
        prepared.link,
    );
}

/// sha256 of bytes, hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The `package.version` of a crate directory's Cargo.toml, following
/// `version.workspace = true` to the workspace's `[workspace.package]`.
fn crate_version(source: &Path) -> Option<semver::Version> {
    let read = |dir: &Path| -> Option<toml::Table> {
        std::fs::read_to_string(dir.join("Cargo.toml"))
            .ok()?
            .parse()
            .ok()
    };
    let manifest = read(source)?;
    let version = manifest.get("package")?.get("version")?;
    if let Some(v) = version.as_str() {
        return v.parse().ok();
    }
    // Inherited: the nearest parent directory with a [workspace] table.
    version.get("workspace")?.as_bool()?.then_some(())?;
    source.ancestors().skip(1).find_map(|dir| {
        let ws = read(dir)?;
        let v = ws
            .get("workspace")?
            .get("package")?
            .get("version")?
            .as_str()?;
        v.parse().ok()
    })
}

/// A `source` is a .wasm file, or a crate directory to build first.
pub async fn resolve_source(source: &Path) -> anyhow::Result<PathBuf> {
    if source.is_dir() {
        let dir = source.to_path_buf();
        return tokio::task::spawn_blocking(move || {
            crate::build::build_crate(&dir, &crate::build::BuildOptions::default())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_versions_are_read_directly_or_from_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path();
        std::fs::write(
            ws.join("Cargo.toml"),
            "[workspace]\nmembers = [\"a\", \"b\"]\n[workspace.package]\nversion = \"2.3.4\"\n",
        )
        .unwrap();
        for (name, version) in [
            ("a", "version = \"1.0.1\""),
            ("b", "version.workspace = true"),
        ] {
            std::fs::create_dir(ws.join(name)).unwrap();
            std::fs::write(
                ws.join(name).join("Cargo.toml"),
                format!("[package]\nname = \"{name}\"\n{version}\n"),
            )
            .unwrap();
        }
        assert_eq!(
            crate_version(&ws.join("a")),
            Some(semver::Version::new(1, 0, 1))
        );
        assert_eq!(
            crate_version(&ws.join("b")),
            Some(semver::Version::new(2, 3, 4))
        );
        assert_eq!(crate_version(&ws.join("missing")), None);
    }
}
