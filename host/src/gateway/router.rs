//! The edge pipeline: every request passes, in order,
//!
//! 1. trace context (the client's `traceparent`, or a new trace; returned in
//!    the response), and client-sent claim headers stripped;
//! 2. the in-flight limit (503 with Retry-After when overloaded);
//! 3. route lookup (404);
//! 4. auth: token (401) and scopes or roles (403);
//! 5. rate limit (429 with Retry-After);
//! 6. body limits: Content-Length over `max_body` (413) at once, then while
//!    the body streams (413), and a stalled body (408); both close the connection;
//! 7. the target: a component, an upstream's backends, or static files,
//!    within `request_timeout` for the response head (504);
//! 8. one call log row when the response body ends or is dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::watch;

use super::auth::{self, Verifier};
use super::calllog::{CallLog, CallRecord};
use super::dispatch::{self, Mode};
use super::files::StaticFiles;
use super::limits::{BodyWatch, LimitedBody, RequestBody};
use super::ratelimit::{self, RateLimiter};
use super::tls::TlsAcceptor;
use super::upstream::Upstream;
use super::{BoxError, GatewayBody, text_response};
use crate::config::{Edge, GatewaySettings, RouteSpec, RouteTarget};
use crate::kv::KvBackend;
use crate::registry::{ComponentRuntime, Registry, RouteTable, Service};
use crate::telemetry::otlp;
use crate::telemetry::span::{self, Span, SpanContext, SpanKind};

/// Why the gateway answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NotFound,
    Unauthorized,
    Forbidden,
    RateLimited,
    BodyTooLarge,
    BodyTimeout,
    Overloaded,
    Timeout,
    Removed,
    NoBackend,
}

impl Reason {
    /// Every reason, in the order of [`Reason::index`].
    pub const ALL: [Reason; 10] = [
        Reason::NotFound,
        Reason::Unauthorized,
        Reason::Forbidden,
        Reason::RateLimited,
        Reason::BodyTooLarge,
        Reason::BodyTimeout,
        Reason::Overloaded,
        Reason::Timeout,
        Reason::Removed,
        Reason::NoBackend,
    ];

    /// As the call log and metrics write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotFound => "not_found",
            Reason::Unauthorized => "unauthorized",
            Reason::Forbidden => "forbidden",
            Reason::RateLimited => "rate_limited",
            Reason::BodyTooLarge => "body_too_large",
            Reason::BodyTimeout => "body_timeout",
            Reason::Overloaded => "overloaded",
            Reason::Timeout => "timeout",
            Reason::Removed => "removed",
            Reason::NoBackend => "no_backend",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counts of the gateway's own answers, by reason.
#[derive(Default)]
pub struct Rejections([AtomicU64; 10]);

impl Rejections {
    fn add(&self, reason: Reason) {
        self.0[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// (reason, count) for every reason.
    pub fn counts(&self) -> impl Iterator<Item = (Reason, u64)> + '_ {
        Reason::ALL
            .iter()
            .map(|r| (*r, self.0[r.index()].load(Ordering::Relaxed)))
    }
}

/// What a target answered, and who did.
pub struct Served {
    pub response: Response<GatewayBody>,
    /// The component version that ran it.
    pub component: Option<Arc<ComponentRuntime>>,
    /// The upstream backend that served it.
    pub backend: Option<String>,
    /// Set when the gateway answered instead of a target.
    pub rejected: Option<Reason>,
}

impl Served {
    /// The gateway's own answer.
    pub fn rejected(response: Response<GatewayBody>, reason: Reason) -> Served {
        Served {
            response,
            component: None,
            backend: None,
            rejected: Some(reason),
        }
    }
}

/// What serves a route.
enum Target {
    Component(Arc<Service>),
    Upstream(Arc<Upstream>),
    Static(StaticFiles),
}

/// A route with its target and policy, ready to serve.
pub struct EdgeRoute {
    /// What the manifest says.
    pub spec: RouteSpec,
    /// The pattern as written (`/orders/...`).
    pub pattern: Arc<str>,
    target: Target,
    verifier: Option<Arc<Verifier>>,
    limiter: Option<RateLimiter>,
    /// The gateway's own answers on this route.
    pub rejections: Rejections,
}

impl EdgeRoute {
    /// Token buckets held, when the route is rate limited.
    pub fn rate_limit_buckets(&self) -> Option<usize> {
        self.limiter.as_ref().map(RateLimiter::buckets)
    }
}

/// Routes, policies and targets: the gateway's state.
pub struct Gateway {
    registry: Arc<Registry>,
    kv: Arc<dyn KvBackend>,
    routes: RouteTable<Arc<EdgeRoute>>,
    /// Every route, in manifest order (for views and housekeeping).
    all: Vec<Arc<EdgeRoute>>,
    upstreams: Vec<Arc<Upstream>>,
    verifiers: Vec<Arc<Verifier>>,
    tls: Option<Arc<TlsAcceptor>>,
    settings: GatewaySettings,
    calls: Option<Arc<CallLog>>,
    in_flight: AtomicUsize,
    /// Answers not tied to a route (404, overload).
    pub unrouted: Rejections,
}

/// What [`Gateway::build`] needs.
pub struct GatewayParts<'a> {
    pub edge: &'a Edge,
    pub registry: Arc<Registry>,
    pub kv: Arc<dyn KvBackend>,
    pub data_dir: &'a Path,
}

impl Gateway {
    /// Builds every route's target and policy: loads auth keys (a bad JWKS
    /// fails here), the TLS certificate, and opens the call log. Nothing
    /// runs until [`Gateway::spawn_tasks`].
    pub async fn build(parts: GatewayParts<'_>) -> anyhow::Result<Arc<Gateway>> {
        let GatewayParts {
            edge,
            registry,
            kv,
            data_dir,
        } = parts;
        let tls = match &edge.gateway.tls {
            Some(spec) => Some(TlsAcceptor::load(spec).context("loading [gateway.tls]")?),
            None => None,
        };
        let mut verifiers = std::collections::BTreeMap::new();
        for (name, provider) in &edge.auth {
            let verifier = Verifier::load(provider, data_dir)
                .await
                .with_context(|| format!("loading the keys of auth provider `{name}`"))?;
            verifiers.insert(name.clone(), verifier);
        }
        let mut upstreams = std::collections::BTreeMap::new();
        for (name, spec) in &edge.upstreams {
            let upstream = Upstream::new(spec, &registry)
                .with_context(|| format!("setting up upstream `{name}`"))?;
            upstreams.insert(name.clone(), upstream);
        }
        let calls = match edge.gateway.call_log.enabled {
            true => Some(
                CallLog::open(data_dir, &edge.gateway.call_log).context("opening the call log")?,
            ),
            false => None,
        };
        let mut all = Vec::new();
        for spec in &edge.routes {
            let target = match &spec.target {
                RouteTarget::Component(name) => Target::Component(
                    registry
                        .service(name)
                        .with_context(|| format!("route {}: no component `{name}`", spec.route))?
                        .clone(),
                ),
                RouteTarget::Upstream(name) => Target::Upstream(
                    upstreams
                        .get(name)
                        .with_context(|| format!("route {}: no upstream `{name}`", spec.route))?
                        .clone(),
                ),
                RouteTarget::Static(files) => Target::Static(StaticFiles::new(files, &spec.route)),
            };
            all.push(Arc::new(EdgeRoute {
                pattern: Arc::from(spec.route.to_string()),
                verifier: spec.auth.as_ref().and_then(|a| verifiers.get(a).cloned()),
                limiter: spec.rate_limit.as_ref().map(RateLimiter::new),
                spec: spec.clone(),
                target,
                rejections: Rejections::default(),
            }));
        }
        Ok(Arc::new(Gateway {
            routes: RouteTable::new(all.iter().map(|r| (r.spec.route.clone(), r.clone()))),
            all,
            upstreams: upstreams.into_values().collect(),
            verifiers: verifiers.into_values().collect(),
            tls,
            registry,
            kv,
            settings: edge.gateway.clone(),
            calls,
            in_flight: AtomicUsize::new(0),
            unrouted: Rejections::default(),
        }))
    }

    /// Starts key refresh, health checks, certificate reload, call log
    /// retention and housekeeping; they end when `shutdown` flips.
    pub fn spawn_tasks(
        self: &Arc<Self>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for verifier in &self.verifiers {
            tasks.extend(verifier.spawn_refresh(shutdown.clone()));
        }
        for upstream in &self.upstreams {
            tasks.extend(upstream.spawn_health_checks(self.clone(), shutdown.clone()));
        }
        if let Some(tls) = &self.tls {
            tasks.push(tls.spawn_reload(shutdown.clone()));
        }
        if let Some(log) = &self.calls {
            tasks.push(log.spawn_retention(shutdown.clone()));
        }
        tasks.push(tokio::spawn(self.clone().housekeeping(shutdown)));
        tasks
    }

    /// The TLS acceptor, when `[gateway.tls]` is set.
    pub fn tls(&self) -> Option<&Arc<TlsAcceptor>> {
        self.tls.as_ref()
    }

    /// The request limits and the rest of `[gateway]`.
    pub fn settings(&self) -> &GatewaySettings {
        &self.settings
    }

    /// The call log, when it is on.
    pub fn call_log(&self) -> Option<&Arc<CallLog>> {
        self.calls.as_ref()
    }

    /// Every route with its policy and counters.
    pub fn routes(&self) -> &[Arc<EdgeRoute>] {
        &self.all
    }

    /// The upstreams.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// Forgets idle rate limit buckets every minute.
    async fn housekeeping(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    for route in &self.all {
                        if let Some(limiter) = &route.limiter {
                            limiter.forget_idle();
                        }
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Handles one request end to end; never fails (errors become responses).
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<GatewayBody> {
        let started = Instant::now();
        // The client's trace context, if it sent a valid one.
        let client = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(SpanContext::parse);
        let head_only = req.method() == http::Method::HEAD;
        auth::strip_claim_headers(req.headers_mut());
        let span = if span::recording() {
            Span::continuing("gateway.request", SpanKind::Server, client).with(|a| {
                a.str("method", req.method().as_str())
                    .str("path", req.uri().path());
            })
        } else {
            // Not recorded, but the response carries a trace context and
            // what is logged on its way the request's trace id.
            Span::context_only(SpanContext {
                trace: client.map_or_else(span::new_trace_id, |c| c.trace),
                span: span::new_span_id(),
                sampled: client.is_none_or(|c| c.sampled),
            })
        };
        let own = span.context().expect("a request's span has a context");
        let traceparent = header(own);
        if otlp::exporting() || client.is_none() {
            // Components, calls, messages and upstreams continue the
            // exported span, or the trace the gateway started.
            req.headers_mut().insert("traceparent", traceparent.clone());
        }
        let row = self.calls.as_ref().map(|_| CallRecord {
            time_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            client: peer.ip().to_string(),
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            trace_id: format!("{:032x}", own.trace),
            ..CallRecord::default()
        });
        let watch = Arc::new(BodyWatch::default());
        let mut exchange = Exchange::default();
        let traced = span.clone();
        let mut res = span
            .instrument(self.route(req, peer, &watch, &mut exchange))
            .await;
        traced.record(|a| {
            a.int("status", i64::from(res.status().as_u16()));
            if res.status().is_server_error() {
                a.error();
            }
            if let Some(c) = &exchange.component {
                a.str("component", &c.name).display("version", &c.version);
            }
        });
        drop(traced);
        res.headers_mut().insert("traceparent", traceparent);
        let (Some(log), Some(mut row)) = (&self.calls, row) else {
            return res;
        };
        row.route = exchange.route.map(|r| r.to_string());
        if let Some(c) = &exchange.component {
            row.component = Some(c.name.to_string());
            row.version = Some(c.version.to_string());
        }
        row.backend = exchange.backend;
        row.subject = exchange.subject;
        row.rejected = exchange.rejected.map(|r| r.as_str().to_string());
        row.status = res.status().as_u16();
        let (parts, body) = res.into_parts();
        // hyper stops polling a body once it has sent its declared length,
        // so reaching that length is completion too. A HEAD answer has no body.
        let expected = match head_only {
            true => Some(0),
            false => dispatch::content_length(&parts.headers).or(body.size_hint().exact()),
        };
        let body = Logged {
            inner: body,
            row: Some(row),
            started,
            log: log.clone(),
            watch,
            bytes: 0,
            expected,
        };
        Response::from_parts(parts, body.boxed_unsync())
    }

    /// Steps 2 to 7 of the pipeline.
    async fn route(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        watch: &Arc<BodyWatch>,
        exchange: &mut Exchange,
    ) -> Response<GatewayBody> {
        let Some(_in_flight) = InFlight::enter(&self.in_flight, self.settings.max_in_flight) else {
            self.unrouted.add(Reason::Overloaded);
            exchange.rejected = Some(Reason::Overloaded);
            let mut res = text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "atoll: the gateway is at its request limit; retry shortly",
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return res;
        };
        let path = req.uri().path();
        let Some(route) = self.routes.lookup(path) else {
            self.unrouted.add(Reason::NotFound);
            exchange.rejected = Some(Reason::NotFound);
            return text_response(StatusCode::NOT_FOUND, format!("atoll: no route for {path}"));
        };
        exchange.route = Some(route.pattern.clone());
        // The route stage is this attribute of the request's span (an
        // event per request would cost an allocation or three when exporting).
        span::record_current(|a| {
            a.str("route", &route.pattern);
        });
        let reject = |exchange: &mut Exchange, reason: Reason, res| {
            route.rejections.add(reason);
            exchange.rejected = Some(reason);
            res
        };

        let mut req = req;
        if let Some(verifier) = &route.verifier {
            let stage = Span::new("gateway.auth", SpanKind::Internal);
            let outcome = |outcome| stage.record(|a| _ = a.str("outcome", outcome));
            let claims = match stage
                .clone()
                .instrument(verifier.verify(req.headers()))
                .await
            {
                Ok(claims) => claims,
                Err(res) => {
                    outcome("unauthorized");
                    return reject(exchange, Reason::Unauthorized, res);
                }
            };
            exchange.subject = Some(claims.subject.clone());
            if let Err(res) = auth::authorize(&claims, &route.spec.scopes, &route.spec.roles) {
                outcome("forbidden");
                return reject(exchange, Reason::Forbidden, res);
            }
            outcome("ok");
            auth::add_claim_headers(req.headers_mut(), &claims);
        }
        if let Some(limiter) = &route.limiter {
            let stage = Span::new("gateway.rate_limit", SpanKind::Internal);
            let outcome = |outcome| stage.record(|a| _ = a.str("outcome", outcome));
            let _stage = stage.clone().enter();
            let key = limiter.key(peer.ip(), exchange.subject.as_deref(), req.headers());
            if let Err(wait) = limiter.check(&key) {
                outcome("limited");
                return reject(
                    exchange,
                    Reason::RateLimited,
                    ratelimit::too_many_requests(wait, &route.pattern),
                );
            }
            outcome("ok");
        }
        let max_body = self.settings.max_body;
        if dispatch::content_length(req.headers()).is_some_and(|n| n > max_body) {
            return reject(exchange, Reason::BodyTooLarge, body_too_large(max_body));
        }
        let req = req.map(|body| {
            LimitedBody::new(body, max_body, self.settings.body_timeout, watch.clone())
        });

        let served = self.within_timeout(self.serve(route, req, peer)).await;
        let served = match served {
            Ok(served) => served,
            Err(_) => {
                return reject(
                    exchange,
                    Reason::Timeout,
                    text_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "atoll: no response within the gateway's request_timeout ({:?})",
                            self.settings.request_timeout
                        ),
                    ),
                );
            }
        };
        exchange.component = served.component;
        exchange.backend = served.backend;
        if watch.too_large.load(Ordering::Relaxed) {
            return reject(exchange, Reason::BodyTooLarge, body_too_large(max_body));
        }
        if watch.timed_out.load(Ordering::Relaxed) {
            let mut res = text_response(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "atoll: the request body stalled for longer than body_timeout ({:?})",
                    self.settings.body_timeout
                ),
            );
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return reject(exchange, Reason::BodyTimeout, res);
        }
        if let Some(reason) = served.rejected {
            return reject(exchange, reason, served.response);
        }
        served.response
    }

    /// Runs `serving` within `request_timeout`. Most targets answer within
    /// their first poll (a component that sets its response at once); only
    /// one still pending arms the timer, so the common request registers
    /// and cancels no timer entry.
    async fn within_timeout(
        &self,
        serving: impl std::future::Future<Output = Served>,
    ) -> Result<Served, tokio::time::error::Elapsed> {
        let mut serving = std::pin::pin!(serving);
        match dispatch::poll_once(serving.as_mut()).await {
            std::task::Poll::Ready(served) => Ok(served),
            std::task::Poll::Pending => {
                tokio::time::timeout(self.settings.request_timeout, serving).await
            }
        }
    }

    /// Step 7: the route's target.
    async fn serve(
        &self,
        route: &EdgeRoute,
        req: Request<RequestBody>,
        peer: SocketAddr,
    ) -> Served {
        match &route.target {
            Target::Component(service) => self.serve_component(service, req).await,
            Target::Upstream(upstream) => upstream.forward(self, req, peer).await,
            Target::Static(files) => Served {
                response: files
                    .serve(req.method(), req.uri().path(), req.headers())
                    .await,
                component: None,
                backend: None,
                rejected: None,
            },
        }
    }

    /// Runs a request on a component's active version (or its canary).
    pub async fn serve_component(
        &self,
        service: &Arc<Service>,
        req: Request<RequestBody>,
    ) -> Served {
        let Some(rt) = service.pick() else {
            return Served::rejected(
                text_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "atoll: component `{}` is removed; `atoll deploy` or `atoll rollback` brings it back",
                        service.name()
                    ),
                ),
                Reason::Removed,
            );
        };
        let started = Instant::now();
        let res = dispatch::invoke(rt.clone(), self.kv.clone(), req, Mode::Request).await;
        rt.stats.answered(res.status().as_u16(), started.elapsed());
        // The version's own 5xx count against it (a canary is judged by
        // them), the host's limits do not. (A failure after the head is sent
        // is not counted.)
        let host_limit = res.extensions().get::<dispatch::HostLimit>().is_some();
        rt.stats
            .record(res.status().is_server_error() && !host_limit);
        Served {
            response: res,
            component: Some(rt),
            backend: None,
            rejected: None,
        }
    }

    /// GETs `path` on a component's active version, for health checks.
    pub async fn probe_component(
        &self,
        service: &Arc<Service>,
        path: &str,
    ) -> Result<(u16, String), String> {
        let rt = service
            .pick()
            .ok_or_else(|| format!("component `{}` is removed", service.name()))?;
        dispatch::probe(rt, self.kv.clone(), path).await
    }

    /// The registry the routes point into.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

fn body_too_large(max: u64) -> Response<GatewayBody> {
    let mut res = text_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "atoll: the request body is larger than the gateway's max_body ({})",
            bytesize::ByteSize::b(max).display().iec()
        ),
    );
    // The rest of the body is not read: the connection cannot carry another request.
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// What the pipeline learned about a request, for its log row and span.
#[derive(Default)]
struct Exchange {
    route: Option<Arc<str>>,
    component: Option<Arc<ComponentRuntime>>,
    backend: Option<String>,
    subject: Option<String>,
    rejected: Option<Reason>,
}

/// A slot of `max_in_flight`, given back on drop.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize, max: usize) -> Option<InFlight<'a>> {
        let before = count.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(count);
        (before < max).then_some(guard)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A `traceparent` header.
fn header(context: SpanContext) -> HeaderValue {
    HeaderValue::from_bytes(&context.traceparent_bytes()).expect("hex is a valid header value")
}

/// A response body that writes the request's call log row exactly once:
/// when it ends, fails, or is dropped (the client went away).
struct Logged {
    inner: GatewayBody,
    row: Option<CallRecord>,
    started: Instant,
    log: Arc<CallLog>,
    watch: Arc<BodyWatch>,
    bytes: u64,
    /// The body's declared length, when known.
    expected: Option<u64>,
}

impl Logged {
    fn complete(&self) -> bool {
        self.inner.is_end_stream() || self.expected == Some(self.bytes)
    }

    fn finish(&mut self, complete: bool) {
        if let Some(mut row) = self.row.take() {
            row.latency_us = self.started.elapsed().as_micros() as u64;
            row.bytes_out = self.bytes;
            row.bytes_in = self.watch.bytes.load(Ordering::Relaxed);
            row.complete = complete;
            self.log.record(row);
        }
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.complete() {
                    this.finish(true);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Ready(None) => this.finish(true),
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

impl Drop for Logged {
    fn drop(&mut self) {
        // A body hyper never polled (HEAD, 204, 304, an empty body) is
        // complete when dropped with nothing left to send; so is one that
        // reached its declared length.
        let complete = self.complete();
        self.finish(complete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = SpanContext::parse(ok).unwrap();
        assert_eq!(
            format!("{:032x}", c.trace),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(c.span, 0x00f067aa0ba902b7);
        assert!(c.sampled);
        assert_eq!(c.traceparent(), ok);
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(SpanContext::parse(bad).is_none(), "{bad}");
        }
    }
}
