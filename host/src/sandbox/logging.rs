//! `wasi:logging`: guest log records go to the log hub
//! ([`crate::telemetry::logs`]) and become host `tracing` events, tagged
//! with the component, version and trace id of the invocation.

use wasmtime::component::{HasData, Linker};

use super::InstanceState;
use crate::bindings::wasi::logging::logging::{self, Level};
use crate::telemetry::logs::{self, Source};

struct HasLogging;

impl HasData for HasLogging {
    type Data<'a> = &'a mut InstanceState;
}

pub(super) fn add_to_linker(linker: &mut Linker<InstanceState>) -> anyhow::Result<()> {
    logging::add_to_linker::<InstanceState, HasLogging>(linker, |s| s)?;
    Ok(())
}

impl logging::Host for &mut InstanceState {
    fn log(&mut self, level: Level, context: String, message: String) -> wasmtime::Result<()> {
        let level = match level {
            Level::Trace => logs::Level::Trace,
            Level::Debug => logs::Level::Debug,
            Level::Info => logs::Level::Info,
            Level::Warn => logs::Level::Warn,
            Level::Error => logs::Level::Error,
            Level::Critical => logs::Level::Critical,
        };
        let origin = self.log_origin();
        let record = origin
            .record(level, Source::Log, &message)
            .with_context(&context);
        let component = &*origin.component;
        let version = &*origin.version;
        let context = record.context.as_deref().unwrap_or_default();
        let message = &*record.message;
        let trace_id = record.trace_id.map(tracing::field::display);
        let truncated = (record.truncated > 0).then_some(record.truncated);
        macro_rules! event {
            ($level:expr) => {
                tracing::event!(target: "guest", $level, component, version, context, trace_id, truncated, "{message}")
            };
        }
        match level {
            logs::Level::Trace => event!(tracing::Level::TRACE),
            logs::Level::Debug => event!(tracing::Level::DEBUG),
            logs::Level::Info => event!(tracing::Level::INFO),
            logs::Level::Warn => event!(tracing::Level::WARN),
            logs::Level::Error | logs::Level::Critical => event!(tracing::Level::ERROR),
        }
        logs::hub().push(record);
        Ok(())
    }
}
