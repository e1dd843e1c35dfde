//! `atoll up --watch`: when a component's source changes, rebuild it and
//! hot swap it in, through the same path as `atoll deploy` (compile, link,
//! health check, swap), so a broken build never replaces a working version.
//!
//! A crate directory is watched recursively (its `target/` and hidden
//! directories excepted: builds write there); a `.wasm` source is watched
//! through its directory, since cargo and editors replace files by renaming.
//! Events are debounced: a save that touches several files builds once.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::deploy::{Origin, resolve_source, sha256};
use super::{DeployRequest, Registry};

/// Quiet time after the last change before rebuilding.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Watches every component's source until `stop` flips.
pub async fn watch_sources(
    registry: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, notify::EventKind::Access(_))
        {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })?;
    // What to watch -> the components it is the source of.
    let mut sources: BTreeMap<String, PathBuf> = BTreeMap::new();
    for service in registry.services() {
        let source = service.spec.source.clone();
        let source = source.canonicalize().unwrap_or(source);
        let (target, mode) = match source.is_dir() {
            true => (source.clone(), RecursiveMode::Recursive),
            false => match source.parent() {
                Some(dir) => (dir.to_path_buf(), RecursiveMode::NonRecursive),
                None => continue,
            },
        };
        if let Err(e) = watcher.watch(&target, mode) {
            tracing::warn!(component = service.name(), path = %target.display(), error = %e, "cannot watch the source; changes to it will not be deployed");
            continue;
        }
        tracing::info!(component = service.name(), path = %source.display(), "watching for changes");
        sources.insert(service.name().to_string(), source);
    }
    let mut generation = 0u64;
    loop {
        let first = tokio::select! {
            p = rx.recv() => match p {
                Some(p) => p,
                None => return Ok(()),
            },
            _ = stop.changed() => return Ok(()),
        };
        let mut changed = vec![first];
        // Debounce: gather until things are quiet.
        loop {
            tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => changed.push(p),
                    None => return Ok(()),
                },
                _ = tokio::time::sleep(DEBOUNCE) => break,
                _ = stop.changed() => return Ok(()),
            }
        }
        for (name, source) in &sources {
            if !changed.iter().any(|p| affects(source, p)) {
                continue;
            }
            generation += 1;
            redeploy(&registry, name, source, generation).await;
        }
    }
}

/// Whether a change at `path` may change the component built from `source`.
fn affects(source: &Path, path: &Path) -> bool {
    if source.is_dir() {
        let Ok(inside) = path.strip_prefix(source) else {
            return false;
        };
        // Build output and editor/VCS state do not change the source.
        !inside.components().any(|c| match c {
            Component::Normal(s) => s == "target" || s.to_string_lossy().starts_with('.'),
            _ => false,
        })
    } else {
        path == source || path.file_name() == source.file_name() && path.parent() == source.parent()
    }
}

/// Rebuilds (for a crate) and deploys a component's source.
async fn redeploy(registry: &Registry, name: &str, source: &Path, generation: u64) {
    let Some(service) = registry.service(name) else {
        return;
    };
    tracing::info!(component = name, "source changed; rebuilding");
    let wasm = match resolve_source(source).await {
        Ok(wasm) => wasm,
        Err(e) => {
            tracing::error!(component = name, error = %format!("{e:#}"), "rebuild failed; the running version keeps serving");
            return;
        }
    };
    let bytes = match tokio::fs::read(&wasm).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(component = name, path = %wasm.display(), error = %e, "cannot read the rebuilt component");
            return;
        }
    };
    let active = service.deployment().active.clone();
    if active.as_ref().is_some_and(|a| a.digest == sha256(&bytes)) {
        tracing::info!(
            component = name,
            "rebuilt binary is unchanged; nothing to deploy"
        );
        return;
    }
    // The manifest's version, marked as a watch build (`1.2.0+watch.3`).
    let mut version = service
        .spec
        .version
        .clone()
        .or_else(|| active.as_ref().map(|a| a.version.clone()))
        .unwrap_or(semver::Version::new(0, 0, 0));
    version.build = semver::BuildMetadata::new(&format!("watch.{generation}"))
        .unwrap_or(semver::BuildMetadata::EMPTY);
    let request = DeployRequest {
        version,
        canary: None,
        // A developer's rebuild replaces whatever runs, older or not.
        force: true,
        origin: Origin::Watch,
    };
    // (A successful deploy logs itself.)
    if let Err(e) = registry.deploy(name, bytes, request).await {
        tracing::error!(component = name, "{e}; the running version keeps serving");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_output_and_hidden_files_are_not_changes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path();
        assert!(affects(src, &src.join("src/lib.rs")));
        assert!(affects(src, &src.join("Cargo.toml")));
        assert!(!affects(
            src,
            &src.join("target/wasm32-wasip2/release/x.wasm")
        ));
        assert!(!affects(src, &src.join(".git/index")));
        assert!(!affects(src, Path::new("/elsewhere/src/lib.rs")));
        let file = src.join("app.wasm");
        assert!(affects(&file, &src.join("app.wasm")));
        assert!(!affects(&file, &src.join("other.wasm")));
    }
}
