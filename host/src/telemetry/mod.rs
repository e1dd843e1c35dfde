//! Logging and tracing setup. Span names follow `capability.op`
//! (`gateway.request`, `component.invoke`, `kv.get`), always with `component`
//! and, where the version is known, `version`.
//!
//! The subscriber is layered, each layer with its own filter: the log lines
//! (`ATOLL_LOG`, default `info`), the log hub ([`logs`]), and the warnings
//! that become events of recorded spans ([`span::SpanEvents`]). The host's
//! spans themselves are not `tracing` spans: [`span`] records them (and
//! [`otlp`] exports them) without the subscriber's per-span work.

pub mod logs;
pub mod metrics;
pub mod otlp;
pub mod push;
pub mod span;
pub mod transport;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// Installs the global subscriber. The filter comes from `ATOLL_LOG` (then
/// `RUST_LOG`), default `info`; wasmtime's own chatter is kept at `warn`.
/// Trace export is not part of it: a host starts its exporter
/// ([`otlp::start`]) when its `[telemetry]` asks for one.
pub fn init(format: LogFormat) {
    let _ = install(format);
}

/// The log lines' filter.
fn log_filter() -> EnvFilter {
    let filter = std::env::var("ATOLL_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".to_string());
    EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"))
}

fn install(format: LogFormat) -> Result<(), tracing_subscriber::util::TryInitError> {
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Text => lines.with_target(false).boxed(),
        LogFormat::Json => lines.json().boxed(),
    };
    // The host's warnings and errors (not the admin API's), as events of
    // the recorded span that is current when they are logged (nothing is
    // recorded unless spans are exported or logged).
    let events = span::SpanEvents.with_filter(
        tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_event()
                && meta.target().starts_with("atoll")
                && !meta.target().starts_with("atoll::admin")
                && *meta.level() <= tracing::Level::WARN
        })
        .with_max_level_hint(LevelFilter::WARN),
    );
    tracing_subscriber::registry()
        .with(lines.with_filter(log_filter()))
        // The log hub takes the host's warnings and component events.
        .with(logs::HostEvents.with_filter(log_filter()))
        .with(events)
        .try_init()
}
