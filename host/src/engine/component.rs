//! Checking and compiling component binaries.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::ArtifactCache;

/// The export every HTTP component must have.
pub const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2";
/// The export every message-handling component must have.
pub const MESSAGE_HANDLER: &str = "atoll:bus/handler@0.1";

/// A compiled component and facts about it.
pub struct LoadedComponent {
    /// The compiled component.
    pub component: Component,
    /// sha256 of the binary, hex.
    pub digest: String,
    /// Whether it came from the artifact cache.
    pub cached: bool,
    /// Time spent compiling or loading.
    pub elapsed: std::time::Duration,
    /// Names of the interfaces it exports.
    pub exports: Vec<String>,
}

impl LoadedComponent {
    /// Whether it exports `interface` (any version; e.g. `wasi:http/incoming-handler@0.2`).
    pub fn exports(&self, interface: &str) -> bool {
        self.exports.iter().any(|e| e.starts_with(interface))
    }

    /// An error unless it exports `interface`; `why` says who needs it and how to add it.
    pub fn require(&self, interface: &str, why: &str) -> anyhow::Result<()> {
        if self.exports(interface) {
            return Ok(());
        }
        let name = interface.split('@').next().unwrap_or(interface);
        bail!(
            "the component does not export `{name}` (it exports: {}); {why}",
            if self.exports.is_empty() {
                "nothing".to_string()
            } else {
                self.exports.join(", ")
            }
        )
    }
}

/// Checks that `bytes` is a component (not garbage, not a core module), with
/// a message that says what to do otherwise.
pub fn check_component_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!(
            "not a WebAssembly binary (it does not start with the `\\0asm` magic); give a .wasm component built for wasm32-wasip2"
        );
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        bail!(
            "this is a core WebAssembly module, not a component; build with `--target wasm32-wasip2` (or `atoll build`), or wrap it with `wasm-tools component new`"
        );
    }
    if !wasmparser::Parser::is_component(bytes) {
        bail!("unsupported WebAssembly binary version; Atoll runs WASI 0.2 components");
    }
    Ok(())
}

/// Reads, checks and compiles a component (or loads it from the cache).
pub fn load_component(
    engine: &Engine,
    path: &Path,
    cache: Option<&ArtifactCache>,
) -> anyhow::Result<LoadedComponent> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "cannot read component file {}; check `source` in atoll.toml (a .wasm file or a crate directory)",
            path.display()
        )
    })?;
    load_component_bytes(engine, &bytes, cache)
}

/// Like [`load_component`] for bytes in memory.
pub fn load_component_bytes(
    engine: &Engine,
    bytes: &[u8],
    cache: Option<&ArtifactCache>,
) -> anyhow::Result<LoadedComponent> {
    let start = Instant::now();
    check_component_bytes(bytes)?;
    let digest = hex::encode(Sha256::digest(bytes));
    let (component, cached) = match cache.and_then(|c| c.load(engine, &digest)) {
        Some(c) => (c, true),
        None => {
            let artifact = engine
                .precompile_component(bytes)
                .map_err(anyhow::Error::from)
                .context("compiling the component")?;
            if let Some(Err(e)) = cache.map(|c| c.store(engine, &digest, &artifact)) {
                tracing::warn!(error = %format!("{e:#}"), "could not cache compiled component");
            }
            // SAFETY: `artifact` was produced just above by this engine.
            let c = unsafe { Component::deserialize(engine, &artifact) }
                .map_err(anyhow::Error::from)
                .context("loading the compiled component")?;
            (c, false)
        }
    };
    let exports = component
        .component_type()
        .exports(engine)
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
        .map(|(name, _)| name.to_string())
        .collect();
    Ok(LoadedComponent {
        component,
        digest,
        cached,
        elapsed: start.elapsed(),
        exports,
    })
}
