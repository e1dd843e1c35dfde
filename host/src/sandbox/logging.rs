//! `wasi:logging`: guest log records become host `tracing` events tagged with
//! the component.

use wasmtime::component::{HasData, Linker};

use super::InstanceState;
use crate::bindings::wasi::logging::logging::{self, Level};

struct HasLogging;

impl HasData for HasLogging {
    type Data<'a> = &'a mut InstanceState;
}

pub(super) fn add_to_linker(linker: &mut Linker<InstanceState>) -> anyhow::Result<()> {
    logging::add_to_linker::<InstanceState, HasLogging>(linker, |s| s)?;
    Ok(())
}

/// Longest message kept from one record; the rest is cut.
const MAX_MESSAGE: usize = 16 * 1024;

impl logging::Host for &mut InstanceState {
    fn log(&mut self, level: Level, context: String, message: String) -> wasmtime::Result<()> {
        let component = &*self.component;
        let message = truncate(&message, MAX_MESSAGE);
        let context = truncate(&context, 256);
        match level {
            Level::Trace => tracing::trace!(target: "guest", component, context, "{message}"),
            Level::Debug => tracing::debug!(target: "guest", component, context, "{message}"),
            Level::Info => tracing::info!(target: "guest", component, context, "{message}"),
            Level::Warn => tracing::warn!(target: "guest", component, context, "{message}"),
            Level::Error | Level::Critical => {
                tracing::error!(target: "guest", component, context, "{message}")
            }
        }
        Ok(())
    }
}

pub(super) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
