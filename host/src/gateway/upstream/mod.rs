//! Load-balanced upstreams: a route's requests spread over several backends,
//! components of this host or plain HTTP servers (so an existing service
//! can sit behind Atoll during a migration).
//!
//! - Picking: `balance::Balancer` by the upstream's strategy among the
//!   backends available now; a pick reads a few atomics and takes no lock.
//!   `round_robin` ignores weights; `weighted` is smooth weighted round
//!   robin; `least_connections` counts requests in flight (until their
//!   response bodies end) and ignores weights; `ip_hash` keys on the
//!   connection's client IP (not `X-Forwarded-For`, which a client can write).
//! - Active health checks: every `interval` a GET of `path` on each backend
//!   (after a URL backend's own path; a component runs it like a request);
//!   2xx within `timeout` passes. `unhealthy_after` failures in a row take a
//!   backend out, `healthy_after` passes bring it back. Backends start healthy.
//! - Passive outlier detection: `consecutive_5xx` 5xx answers or failed
//!   connections in a row eject a backend for `eject_for`. It then returns
//!   on probation: its next failure ejects it again at once; a success
//!   clears it. Not counted: timeouts (the pipeline's 504) and requests whose
//!   client body broke a limit (the pipeline's 413/408).
//! - No backend available: 503 with Retry-After, no fail-open. Every signal
//!   says the backends fail, and sending to them anyway turns a clear 503
//!   into slow errors; recovery needs no traffic (health checks keep
//!   probing, ejections end by themselves). The cost: a health path that
//!   fails on every backend takes the upstream down.
//! - A backend that cannot be reached: a request without a body goes to one
//!   other backend; one with a body gets 502 naming the backend (the body may
//!   be partly sent).
//! - URL backends get HTTP/1.1 over pooled keep-alive connections (see
//!   `proxy` for the headers); upgrades (WebSocket) are not proxied.

mod balance;
mod proxy;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use self::balance::Balancer;
pub use self::balance::MAX_BACKENDS;
use self::proxy::ProxyClient;
use super::limits::RequestBody;
use super::router::{Gateway, Reason, Served};
use super::{BoxError, GatewayBody, text_response};
use crate::config::{BackendTarget, HealthCheckSpec, UpstreamSpec};
use crate::registry::{Registry, Service};

/// An upstream: its backends, their health, and the strategy that picks one.
pub struct Upstream {
    spec: UpstreamSpec,
    backends: Vec<Arc<Backend>>,
    balancer: Balancer,
    client: ProxyClient,
    /// Time zero of ejection deadlines.
    epoch: Instant,
}

/// One backend and what the upstream knows about it.
struct Backend {
    /// `http://host:port[/path]` or `component:NAME`.
    label: String,
    weight: u32,
    kind: Kind,
    /// What active health checks say (true without them).
    healthy: AtomicBool,
    /// Failures in a row seen by outlier detection.
    consecutive_failures: AtomicU32,
    /// Ejected until this many ms after the upstream's epoch (0: never ejected).
    ejected_until: AtomicU64,
    in_flight: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    ejections: AtomicU64,
}

enum Kind {
    Url(Uri),
    Component(Arc<Service>),
}

impl Backend {
    /// Whether it may get requests at `now` (ms after the epoch).
    fn available(&self, now: u64) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self.ejected_until.load(Ordering::Relaxed) <= now
            && match &self.kind {
                Kind::Url(_) => true,
                // A removed component has no version to run.
                Kind::Component(service) => service.deployment().active.is_some(),
            }
    }

    /// Counts a request to it, in flight until the guard drops.
    fn enter(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// What [`Upstream::view`] shows.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamView {
    /// Its name in the manifest.
    pub name: String,
    /// The strategy's manifest name.
    pub strategy: &'static str,
    /// The backends in manifest order.
    pub backends: Vec<BackendView>,
}

/// One backend's state and counters.
#[derive(Debug, Clone, Serialize)]
pub struct BackendView {
    /// `http://host:port[/path]` or `component:NAME`.
    pub target: String,
    /// Its weight.
    pub weight: u32,
    /// What active health checks say (true without them).
    pub healthy: bool,
    /// When outlier detection lets it back (Unix ms), while it is ejected.
    pub ejected_until: Option<u64>,
    /// Whether it gets requests now: healthy, not ejected, and (a
    /// component) not removed.
    pub available: bool,
    /// Requests it is serving now (until their response bodies end).
    pub in_flight: u64,
    /// Requests sent to it, retried ones included.
    pub requests: u64,
    /// Of those, the 5xx answers and failed connections.
    pub failures: u64,
    /// Times outlier detection ejected it.
    pub ejections: u64,
}

/// How one try at a backend ended.
enum Outcome {
    /// It answered (or the gateway answered for it).
    Served(Served),
    /// It could not be connected to; the request was not sent.
    Unreachable(String),
}

impl Upstream {
    /// Resolves component backends in the registry.
    pub fn new(spec: &UpstreamSpec, registry: &Registry) -> anyhow::Result<Arc<Upstream>> {
        if spec.backends.is_empty() {
            bail!("no backends; list at least one");
        }
        if spec.backends.len() > MAX_BACKENDS {
            bail!(
                "{} backends; an upstream has at most {MAX_BACKENDS}: split it into several",
                spec.backends.len()
            );
        }
        let mut backends = Vec::new();
        for b in &spec.backends {
            let (label, kind) = match &b.target {
                BackendTarget::Url(uri) => (url_label(uri), Kind::Url(uri.clone())),
                BackendTarget::Component(name) => {
                    let service = registry.service(name).ok_or_else(|| {
                        anyhow!("backend component `{name}` is not a component of this host")
                    })?;
                    (b.target.to_string(), Kind::Component(service.clone()))
                }
            };
            backends.push(Arc::new(Backend {
                label,
                weight: b.weight,
                kind,
                healthy: AtomicBool::new(true),
                consecutive_failures: AtomicU32::new(0),
                ejected_until: AtomicU64::new(0),
                in_flight: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                ejections: AtomicU64::new(0),
            }));
        }
        let labels: Vec<String> = backends.iter().map(|b| b.label.clone()).collect();
        let weights = backends.iter().map(|b| b.weight.max(1)).collect();
        Ok(Arc::new(Upstream {
            balancer: Balancer::new(spec.strategy, weights, &labels),
            spec: spec.clone(),
            backends,
            client: proxy::client(),
            epoch: Instant::now(),
        }))
    }

    /// Its name in the manifest.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// What the manifest says.
    pub fn spec(&self) -> &UpstreamSpec {
        &self.spec
    }

    /// Each backend's state and counters, for metrics and the admin API.
    pub fn view(&self) -> UpstreamView {
        let now = self.now_ms();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        UpstreamView {
            name: self.spec.name.clone(),
            strategy: self.spec.strategy.name(),
            backends: self
                .backends
                .iter()
                .map(|b| {
                    let until = b.ejected_until.load(Ordering::Relaxed);
                    BackendView {
                        target: b.label.clone(),
                        weight: b.weight,
                        healthy: b.healthy.load(Ordering::Relaxed),
                        ejected_until: (until > now).then(|| wall + (until - now)),
                        available: b.available(now),
                        in_flight: b.in_flight.load(Ordering::Relaxed),
                        requests: b.requests.load(Ordering::Relaxed),
                        failures: b.failures.load(Ordering::Relaxed),
                        ejections: b.ejections.load(Ordering::Relaxed),
                    }
                })
                .collect(),
        }
    }

    /// Starts active health checks (if configured) until `shutdown` flips:
    /// one loop per backend, so a slow backend does not delay the others.
    pub fn spawn_health_checks(
        self: &Arc<Self>,
        gateway: Arc<Gateway>,
        shutdown: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let spec = self.spec.health.clone()?;
        let mut loops = JoinSet::new();
        for i in 0..self.backends.len() {
            loops.spawn(self.clone().check_loop(
                i,
                spec.clone(),
                gateway.clone(),
                shutdown.clone(),
            ));
        }
        Some(tokio::spawn(async move {
            while loops.join_next().await.is_some() {}
        }))
    }

    /// Picks a backend and sends the request there.
    pub async fn forward(
        &self,
        gateway: &Gateway,
        req: Request<RequestBody>,
        client: SocketAddr,
    ) -> Served {
        let in_flight = |i: usize| self.backends[i].in_flight.load(Ordering::Relaxed);
        let now = self.now_ms();
        let Some(mut target) = self
            .balancer
            .pick(self.available(now), client.ip(), in_flight)
        else {
            return self.no_backend(now);
        };
        let (parts, body) = req.into_parts();
        // Without a body the request can go to another backend when the
        // first cannot be reached: URL backends get an empty body, and the
        // original stays for a component.
        let replayable = body.is_end_stream();
        let mut body = Some(body);
        let mut unreachable = Vec::new();
        loop {
            let head = copy_head(&parts);
            let outcome = self
                .attempt(gateway, target, head, &mut body, replayable, client)
                .await;
            let why = match outcome {
                Outcome::Served(served) => return served,
                Outcome::Unreachable(why) => why,
            };
            tracing::debug!(
                upstream = %self.spec.name,
                backend = %self.backends[target].label,
                "backend unreachable: {why}"
            );
            unreachable.push(format!("{} ({why})", self.backends[target].label));
            let retry = match replayable && unreachable.len() == 1 {
                true => self.balancer.pick_other(
                    self.available(self.now_ms()),
                    target,
                    client.ip(),
                    in_flight,
                ),
                false => None,
            };
            match retry {
                Some(next) => target = next,
                None => {
                    let label = self.backends[target].label.clone();
                    let text = format!(
                        "atoll: upstream `{}`: could not connect to backend {}\n",
                        self.spec.name,
                        unreachable.join("; then to ")
                    );
                    return bad_gateway(label, text);
                }
            }
        }
    }

    /// One try at backend `i`.
    async fn attempt(
        &self,
        gateway: &Gateway,
        i: usize,
        head: Request<()>,
        body: &mut Option<RequestBody>,
        replayable: bool,
        client: SocketAddr,
    ) -> Outcome {
        let backend = &self.backends[i];
        let guard = backend.enter();
        match &backend.kind {
            Kind::Component(service) => {
                // A component always answers; it is the last try, so the body is still here.
                let Some(body) = body.take() else {
                    return Outcome::Served(bad_gateway(
                        backend.label.clone(),
                        "atoll: the request body was already sent to another backend\n".into(),
                    ));
                };
                let mut served = gateway.serve_component(service, head.map(|()| body)).await;
                let failed =
                    served.rejected.is_some() || served.response.status().is_server_error();
                self.record(i, failed);
                served.backend = Some(backend.label.clone());
                served.response = track(served.response, guard);
                Outcome::Served(served)
            }
            Kind::Url(base) => {
                let send = match (replayable, body.take()) {
                    (false, Some(body)) => body.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
                    (_, rest) => {
                        *body = rest;
                        proxy::empty()
                    }
                };
                let https = gateway.settings().tls.is_some();
                let req = match proxy::backend_request(head.map(|()| send), base, client, https) {
                    Ok(req) => req,
                    Err(why) => {
                        return Outcome::Served(bad_gateway(
                            backend.label.clone(),
                            format!("atoll: cannot address backend {}: {why}\n", backend.label),
                        ));
                    }
                };
                match self.client.request(req).await {
                    Ok(res) => {
                        self.record(i, res.status().is_server_error());
                        Outcome::Served(Served {
                            response: track(proxy::client_response(res), guard),
                            component: None,
                            backend: Some(backend.label.clone()),
                            rejected: None,
                        })
                    }
                    Err(e) if e.is_connect() => {
                        self.record(i, true);
                        Outcome::Unreachable(proxy::error_chain(&e))
                    }
                    Err(e) => {
                        // The client's body failing (too large, too slow) is
                        // not the backend's fault; the pipeline answers 413/408.
                        if !client_body_failed(&e) {
                            self.record(i, true);
                        }
                        Outcome::Served(bad_gateway(
                            backend.label.clone(),
                            format!(
                                "atoll: upstream `{}`: backend {} failed: {}\n",
                                self.spec.name,
                                backend.label,
                                proxy::error_chain(&e)
                            ),
                        ))
                    }
                }
            }
        }
    }

    /// Passive outlier detection: a success clears backend `i`'s count, a
    /// failure adds to it and may eject it.
    fn record(&self, i: usize, failed: bool) {
        let backend = &self.backends[i];
        if !failed {
            backend.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        backend.failures.fetch_add(1, Ordering::Relaxed);
        let limit = self.spec.outlier.consecutive_5xx;
        if limit == 0 {
            return;
        }
        let n = backend.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < limit {
            return;
        }
        // Probation after it returns: one more failure ejects it again.
        backend
            .consecutive_failures
            .store(limit - 1, Ordering::Relaxed);
        let now = self.now_ms();
        let until = now + self.spec.outlier.eject_for.as_millis() as u64;
        let before = backend.ejected_until.swap(until, Ordering::Relaxed);
        if before <= now {
            backend.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                upstream = %self.spec.name,
                backend = %backend.label,
                "backend ejected for {} after {n} failures in a row (5xx or no connection)",
                humantime::format_duration(self.spec.outlier.eject_for)
            );
        }
    }

    /// Health checks of backend `i`, until shutdown.
    async fn check_loop(
        self: Arc<Self>,
        i: usize,
        spec: HealthCheckSpec,
        gateway: Arc<Gateway>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let backend = &self.backends[i];
        let mut tick = tokio::time::interval(spec.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Results in a row that disagree with the current state.
        let mut streak = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let check = tokio::time::timeout(spec.timeout, self.check(i, &gateway, &spec.path));
            let result = tokio::select! {
                r = check => r.unwrap_or_else(|_| {
                    Err(format!("no answer within {}", humantime::format_duration(spec.timeout)))
                }),
                _ = shutdown.changed() => return,
            };
            let healthy = backend.healthy.load(Ordering::Relaxed);
            let (change, needed) = match (&result, healthy) {
                (Ok(()), true) | (Err(_), false) => {
                    streak = 0;
                    continue;
                }
                (Ok(()), false) => (true, spec.healthy_after),
                (Err(_), true) => (false, spec.unhealthy_after),
            };
            streak += 1;
            if streak < needed {
                continue;
            }
            streak = 0;
            backend.healthy.store(change, Ordering::Relaxed);
            match result {
                Ok(()) => tracing::info!(
                    upstream = %self.spec.name,
                    backend = %backend.label,
                    "backend healthy again after {needed} passed health checks"
                ),
                Err(why) => tracing::info!(
                    upstream = %self.spec.name,
                    backend = %backend.label,
                    "backend unhealthy after {needed} failed health checks; last: {why}"
                ),
            }
        }
    }

    /// One health check of backend `i`: 2xx passes.
    async fn check(&self, i: usize, gateway: &Gateway, path: &str) -> Result<(), String> {
        let status = match &self.backends[i].kind {
            Kind::Url(base) => proxy::probe(&self.client, base, path).await?,
            Kind::Component(service) => {
                let (status, body) = gateway.probe_component(service, path).await?;
                if !(200..300).contains(&status) {
                    let first = body.lines().next().unwrap_or_default();
                    return Err(format!("GET {path} answered {status}: {first}"));
                }
                status
            }
        };
        match (200..300).contains(&status) {
            true => Ok(()),
            false => Err(format!("GET {path} answered {status}")),
        }
    }

    /// The backends available at `now`, as a mask.
    fn available(&self, now: u64) -> u64 {
        self.backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.available(now))
            .fold(0, |mask, (i, _)| mask | 1u64 << i)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// 503 with Retry-After: when the first ejection ends, or one health
    /// check interval.
    fn no_backend(&self, now: u64) -> Served {
        let (mut unhealthy, mut ejected, mut removed) = (0, 0, 0);
        let mut wait: Option<u64> = None;
        for b in &self.backends {
            let until = b.ejected_until.load(Ordering::Relaxed);
            if !b.healthy.load(Ordering::Relaxed) {
                unhealthy += 1;
                if let Some(h) = &self.spec.health {
                    let ms = h.interval.as_millis() as u64 * u64::from(h.healthy_after);
                    wait = Some(wait.map_or(ms, |w| w.min(ms)));
                }
            } else if until > now {
                ejected += 1;
                wait = Some(wait.map_or(until - now, |w| w.min(until - now)));
            } else {
                removed += 1;
            }
        }
        let mut why = Vec::new();
        for (n, what) in [
            (unhealthy, "failing health checks"),
            (ejected, "ejected after errors"),
            (removed, "a removed component"),
        ] {
            if n > 0 {
                why.push(format!("{n} {what}"));
            }
        }
        let mut res = text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "atoll: upstream `{}` has no backend available ({}); retry later\n",
                self.spec.name,
                why.join(", ")
            ),
        );
        let seconds = Duration::from_millis(wait.unwrap_or(1000))
            .as_secs_f64()
            .ceil()
            .max(1.0) as u64;
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        Served::rejected(res, Reason::NoBackend)
    }
}

/// `http://host:port` plus the path when it has one.
fn url_label(uri: &Uri) -> String {
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    match uri.path() {
        "" | "/" => format!("http://{authority}"),
        path => format!("http://{authority}{path}"),
    }
}

/// The request line and headers, to send once more.
fn copy_head(parts: &http::request::Parts) -> Request<()> {
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req
}

/// Whether a client error came from the request body the client sends.
fn client_body_failed(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<wasmtime_wasi_http::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// 502 from the gateway for a backend that failed.
fn bad_gateway(backend: String, text: String) -> Served {
    Served {
        response: text_response(StatusCode::BAD_GATEWAY, text),
        component: None,
        backend: Some(backend),
        rejected: None,
    }
}

/// A request in flight at a backend: counted until dropped.
struct InFlight(Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps the request in flight until its response body ends.
fn track(res: Response<GatewayBody>, guard: InFlight) -> Response<GatewayBody> {
    res.map(|inner| {
        Tracked {
            inner,
            guard: Some(guard),
        }
        .boxed_unsync()
    })
}

struct Tracked {
    inner: GatewayBody,
    guard: Option<InFlight>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) if !this.inner.is_end_stream() => {}
            Poll::Ready(_) => this.guard = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let u: Uri = "http://127.0.0.1:9000".parse().unwrap();
        assert_eq!(url_label(&u), "http://127.0.0.1:9000");
        let u: Uri = "http://127.0.0.1:9000/v1".parse().unwrap();
        assert_eq!(url_label(&u), "http://127.0.0.1:9000/v1");
    }
}
