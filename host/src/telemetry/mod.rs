//! Logging and tracing setup. Span names follow `capability.op`
//! (`gateway.request`, `component.invoke`, `kv.get`), always with `component`
//! and, where the version is known, `version`.
//!
//! The subscriber is layered, each layer with its own filter: the log lines
//! (`ATOLL_LOG`, default `info`), the log hub ([`logs`]), and, only when
//! `[telemetry]` or the `OTEL_*` environment asks for it, the OTLP trace
//! export ([`otlp`]), which sees the host's debug-level spans without them
//! appearing in the log.

pub mod logs;
pub mod metrics;
pub mod otlp;
pub mod push;
pub mod transport;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::OtlpExport;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// Installs the global subscriber, without trace export. The filter comes
/// from `ATOLL_LOG` (then `RUST_LOG`), default `info`; wasmtime's own chatter
/// is kept at `warn`.
pub fn init(format: LogFormat) {
    let _ = install(format, None);
}

/// Installs the global subscriber and, when `export` is set, the OTLP trace
/// export whose requests run on `runtime`. The returned exporter must be
/// shut down when the host stops, to send what is still queued.
pub fn init_with_export(
    format: LogFormat,
    export: Option<&OtlpExport>,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<Option<otlp::Exporter>> {
    let Some(export) = export else {
        init(format);
        return Ok(None);
    };
    let exporter = otlp::provider(export, runtime.clone())?;
    install(format, Some(&exporter)).map_err(|e| {
        anyhow::anyhow!("cannot install the trace export: a log subscriber is already set ({e})")
    })?;
    Ok(Some(exporter))
}

/// The log lines' filter.
fn log_filter() -> EnvFilter {
    let filter = std::env::var("ATOLL_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".to_string());
    EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"))
}

fn install(
    format: LogFormat,
    exporter: Option<&otlp::Exporter>,
) -> Result<(), tracing_subscriber::util::TryInitError> {
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Text => lines.with_target(false).boxed(),
        LogFormat::Json => lines.json().boxed(),
    };
    // The host's own spans at debug and its warnings (as span events); not
    // guest output, not other crates, not the admin API, and not the
    // connection span (a request is a trace's root, or the client's child).
    let traces = exporter.map(|e| {
        otlp::layer(e).with_filter(
            tracing_subscriber::filter::filter_fn(|meta| {
                meta.target().starts_with("atoll")
                    && !meta.target().starts_with("atoll::admin")
                    && meta.name() != "gateway.connection"
                    && match meta.is_span() {
                        true => *meta.level() <= tracing::Level::DEBUG,
                        false => *meta.level() <= tracing::Level::WARN,
                    }
            })
            .with_max_level_hint(LevelFilter::DEBUG),
        )
    });
    tracing_subscriber::registry()
        .with(lines.with_filter(log_filter()))
        // The log hub takes the host's warnings and component events.
        .with(logs::HostEvents.with_filter(log_filter()))
        .with(traces)
        .try_init()
}
