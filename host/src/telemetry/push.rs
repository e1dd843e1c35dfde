//! The optional OTLP metrics push: every `interval` the host reads the same
//! [`Snapshot`](super::metrics::Snapshot) `/metrics` renders and sends it to
//! the collector, and once more when the host stops, so the last counts
//! arrive. One task per running host, off the request path.
//!
//! Every push carries cumulative values, so a failed one loses nothing: the
//! next carries the counts again. Failures are counted and logged at most
//! once a minute; a push never panics and never holds up a request.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

use super::metrics;
use super::transport::{Signal, Transport};
use crate::bus::Bus;
use crate::config::MetricsPush;
use crate::gateway::Gateway;
use crate::registry::Registry;

/// How often a failing push is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What a push reads: the host's state.
pub struct Sources {
    /// Versions, edges, kv.
    pub registry: Arc<Registry>,
    /// Topics and subscriptions.
    pub bus: Arc<Bus>,
    /// Routes and upstreams.
    pub gateway: Arc<Gateway>,
}

/// A running push; [`Pusher::finish`] sends the final counts and stops it.
pub struct Pusher {
    config: MetricsPush,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Pusher {
    /// Starts pushing every `config.interval`, the first push one interval
    /// from now. `started` is when the host started: the start of every
    /// cumulative series. Must run on a tokio runtime.
    pub fn start(
        config: &MetricsPush,
        sources: Sources,
        started: SystemTime,
    ) -> anyhow::Result<Pusher> {
        let transport = Transport::new(&config.url, config.protocol, Signal::Metrics)?;
        let (stop, stopped) = oneshot::channel();
        let push = Push {
            sources,
            transport,
            service_name: config.service_name.clone(),
            started,
            pushed: 0,
            failed: 0,
            warned: None,
        };
        let task = tokio::spawn(push.run(config.interval, stopped));
        Ok(Pusher {
            config: config.clone(),
            stop,
            task,
        })
    }

    /// Where and how often it pushes.
    pub fn config(&self) -> &MetricsPush {
        &self.config
    }

    /// Pushes the final counts (waiting for the collector at most
    /// [`super::transport::EXPORT_TIMEOUT`]) and stops. Call it once the
    /// host serves nothing more.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the metrics push task failed");
        }
    }
}

/// The push task's state.
struct Push {
    sources: Sources,
    transport: Transport,
    service_name: String,
    started: SystemTime,
    pushed: u64,
    failed: u64,
    /// When a failure was last logged.
    warned: Option<Instant>,
}

impl Push {
    /// Pushes every `interval` until `stop` fires, then once more. A
    /// dropped [`Pusher`] (a host that failed to start, or was dropped
    /// without shutting down) stops it without a final push.
    async fn run(mut self, interval: Duration, mut stop: oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let finish = loop {
            tokio::select! {
                _ = tick.tick() => self.push().await,
                asked = &mut stop => break asked.is_ok(),
            }
        };
        if !finish {
            return;
        }
        self.push().await;
        tracing::info!(
            url = %self.transport.url(),
            pushed = self.pushed,
            failed = self.failed,
            "metrics push stopped"
        );
    }

    async fn push(&mut self) {
        let s = &self.sources;
        let request = metrics::snapshot(&s.registry, &s.bus, Some(&s.gateway)).to_otlp(
            &self.service_name,
            self.started,
            SystemTime::now(),
        );
        match self.transport.send(&request).await {
            Ok(()) => self.pushed += 1,
            Err(e) => {
                self.failed += 1;
                if self.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    self.warned = Some(Instant::now());
                    tracing::warn!(
                        url = %self.transport.url(),
                        failed = self.failed,
                        error = %e,
                        "pushing metrics failed; the next push carries the counts again (logged at most once a minute)"
                    );
                }
            }
        }
    }
}
