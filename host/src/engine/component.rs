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
}

/// Checks that `bytes` is a component (not garbage, not a core module), with
/// a message that says what to do otherwise.
pub fn check_component_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!(
            "not a WebAssembly binary (it does not start with the `\\0asm` magic); point `source` at a .wasm component built for wasm32-wasip2"
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
    let has_handler = component
        .component_type()
        .exports(engine)
        .any(|(name, item)| {
            name.starts_with(INCOMING_HANDLER)
                && matches!(item.ty, ComponentItem::ComponentInstance(_))
        });
    if !has_handler {
        let exports: Vec<String> = component
            .component_type()
            .exports(engine)
            .map(|(n, _)| n.to_string())
            .collect();
        bail!(
            "the component does not export `wasi:http/incoming-handler` (it exports: {}); an HTTP service must export the wasi:http proxy world's handler, e.g. with `atoll_sdk::http_handler!`",
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            }
        );
    }
    Ok(LoadedComponent {
        component,
        digest,
        cached,
        elapsed: start.elapsed(),
    })
}
