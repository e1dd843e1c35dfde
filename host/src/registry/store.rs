//! The registry on disk: which versions of each component exist, which one is
//! active, which is the canary, and what happened to them; plus each
//! version's binary, so a restarted host (or a rollback) needs no upload.
//!
//! `<data_dir>/registry/state.json` is small and changes only on operator
//! actions, so it is rewritten whole: to a temporary file, synced, then
//! renamed over the old one (a crash leaves the old or the new, never half).
//! Binaries live next to it as `components/<sha256>.wasm`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Events kept per component.
const MAX_EVENTS: usize = 50;

/// Everything persisted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// Per component name.
    #[serde(default)]
    pub components: BTreeMap<String, ComponentState>,
}

/// One component's versions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ComponentState {
    /// Digest of the manifest's `source` when it was last applied: while it
    /// is unchanged, what operators deployed since wins over it.
    pub manifest_digest: Option<String>,
    /// The version serving (`None` once removed).
    pub active: Option<VersionRecord>,
    /// The canary and its share of traffic.
    pub canary: Option<CanaryRecord>,
    /// Versions kept for rollback, oldest first (active and canary included).
    #[serde(default)]
    pub versions: Vec<VersionRecord>,
    /// What happened, oldest first (the last [`MAX_EVENTS`]).
    #[serde(default)]
    pub events: Vec<Event>,
}

/// One version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Semver.
    pub version: semver::Version,
    /// sha256 of the binary, hex.
    pub digest: String,
    /// When it was deployed (RFC 3339).
    pub deployed_at: String,
    /// `manifest`, `deploy` or `watch`.
    pub origin: String,
}

/// The canary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryRecord {
    /// The version.
    #[serde(flatten)]
    pub version: VersionRecord,
    /// Percent of requests and messages it gets.
    pub percent: u8,
}

/// Something that happened to a component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When (RFC 3339).
    pub at: String,
    /// `deploy`, `canary`, `promote`, `rollback`, `auto-rollback`, `remove`, `manifest`.
    pub kind: String,
    /// What, in words.
    pub message: String,
}

impl ComponentState {
    /// Appends an event, dropping the oldest past the cap.
    pub fn event(&mut self, kind: &str, message: impl Into<String>) {
        self.events.push(Event {
            at: now(),
            kind: kind.to_string(),
            message: message.into(),
        });
        if self.events.len() > MAX_EVENTS {
            let excess = self.events.len() - MAX_EVENTS;
            self.events.drain(..excess);
        }
    }

    /// Records a version (replacing an older record of the same version),
    /// then keeps the newest `keep` plus the active and canary ones.
    pub fn remember(&mut self, record: VersionRecord, keep: usize) {
        self.versions.retain(|v| v.version != record.version);
        self.versions.push(record);
        let pinned = |v: &VersionRecord| {
            self.active.as_ref() == Some(v) || self.canary.as_ref().map(|c| &c.version) == Some(v)
        };
        let mut excess = self.versions.len().saturating_sub(keep);
        let mut kept = Vec::with_capacity(self.versions.len());
        for v in std::mem::take(&mut self.versions) {
            if excess > 0 && !pinned(&v) {
                excess -= 1;
            } else {
                kept.push(v);
            }
        }
        self.versions = kept;
    }

    /// The kept record of `version`.
    pub fn find(&self, version: &semver::Version) -> Option<&VersionRecord> {
        self.versions.iter().rev().find(|v| &v.version == version)
    }
}

/// The current time as RFC 3339 (seconds).
pub fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The registry's files.
pub struct RegistryStore {
    dir: PathBuf,
    state: Mutex<State>,
    /// Held while binaries are written or pruned. Separate from `state`, so
    /// reading the state (views, `/metrics`) never waits for a large
    /// binary's write and fsync.
    blobs: Mutex<()>,
}

impl RegistryStore {
    /// Opens (or creates) `<data_dir>/registry`.
    pub fn open(data_dir: &Path) -> anyhow::Result<RegistryStore> {
        let dir = data_dir.join("registry");
        std::fs::create_dir_all(dir.join("components"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("state.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is not a valid registry file; restore it from a backup, or move it away to start from the manifest alone",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(RegistryStore {
            dir,
            state: Mutex::new(state),
            blobs: Mutex::new(()),
        })
    }

    /// A copy of one component's state.
    pub fn component(&self, name: &str) -> Option<ComponentState> {
        self.lock().components.get(name).cloned()
    }

    /// Changes one component's state and writes the file; on a write error
    /// nothing changes, in memory or on disk.
    pub fn update<T>(
        &self,
        name: &str,
        change: impl FnOnce(&mut ComponentState) -> T,
    ) -> anyhow::Result<T> {
        self.update_with_blob(name, None, change)
    }

    /// Like [`update`](Self::update), first keeping a binary the new state
    /// refers to. Both happen under the blob lock, so a concurrent
    /// [`prune_blobs`](Self::prune_blobs) never sees the binary unreferenced.
    pub fn update_with_blob<T>(
        &self,
        name: &str,
        blob: Option<(&str, &[u8])>,
        change: impl FnOnce(&mut ComponentState) -> T,
    ) -> anyhow::Result<T> {
        let _blobs = blob.map(|_| self.blobs.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some((digest, bytes)) = blob {
            self.save_blob(digest, bytes)?;
        }
        let mut state = self.lock();
        let mut next = state.clone();
        let out = change(next.components.entry(name.to_string()).or_default());
        self.write(&next)?;
        *state = next;
        Ok(out)
    }

    /// Where a binary is kept.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("components").join(format!("{digest}.wasm"))
    }

    /// Keeps a binary (written once per digest, synced). Outside
    /// [`update_with_blob`](Self::update_with_blob), a concurrent prune may
    /// delete it again before a state refers to it.
    pub fn save_blob(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.blob_path(digest);
        if path.exists() {
            return Ok(());
        }
        write_atomically(&path, bytes)
    }

    /// A kept binary.
    pub fn read_blob(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.blob_path(digest);
        std::fs::read(&path).with_context(|| {
            format!(
                "the registry's copy of sha256:{digest} ({}) cannot be read; deploy that version again",
                path.display()
            )
        })
    }

    /// Deletes binaries no kept, active or canary version refers to (holding the blob lock
    /// throughout, so no update adds a reference meanwhile).
    pub fn prune_blobs(&self) {
        let _blobs = self.blobs.lock().unwrap_or_else(|e| e.into_inner());
        // Every kept version, and whatever is active or the canary.
        let wanted: std::collections::HashSet<String> = self
            .lock()
            .components
            .values()
            .flat_map(|c| {
                c.versions
                    .iter()
                    .chain(c.active.iter())
                    .chain(c.canary.iter().map(|k| &k.version))
                    .map(|v| format!("{}.wasm", v.digest))
            })
            .collect();
        let Ok(entries) = std::fs::read_dir(self.dir.join("components")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".wasm") && !wanted.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn write(&self, state: &State) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(state).context("encoding the registry")?;
        write_atomically(&self.dir.join("state.json"), &bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Writes a file so a crash leaves the old content or the new, never a mix.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        std::io::Result::Ok(())
    })();
    result.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(v: &str) -> VersionRecord {
        VersionRecord {
            version: v.parse().unwrap(),
            digest: format!("d{v}"),
            deployed_at: now(),
            origin: "deploy".into(),
        }
    }

    #[test]
    fn keeps_the_newest_versions_and_never_the_active_one_out() {
        let mut c = ComponentState {
            active: Some(record("1.0.0")),
            ..Default::default()
        };
        for v in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"] {
            c.remember(record(v), 2);
        }
        let kept: Vec<String> = c.versions.iter().map(|v| v.version.to_string()).collect();
        assert_eq!(kept, ["1.0.0", "1.3.0"]);
        assert!(c.find(&"1.3.0".parse().unwrap()).is_some());
        assert!(c.find(&"1.1.0".parse().unwrap()).is_none());
    }

    #[test]
    fn state_survives_reopening_and_a_failed_update_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = RegistryStore::open(dir.path()).unwrap();
        store
            .update("hello", |c| {
                c.active = Some(record("1.0.0"));
                c.event("deploy", "1.0.0");
            })
            .unwrap();
        store.save_blob("abc", b"\0asm").unwrap();
        let again = RegistryStore::open(dir.path()).unwrap();
        let c = again.component("hello").unwrap();
        assert_eq!(c.active.unwrap().version.to_string(), "1.0.0");
        assert_eq!(c.events.len(), 1);
        assert_eq!(again.read_blob("abc").unwrap(), b"\0asm");
        again.prune_blobs();
        assert!(
            again.read_blob("abc").is_err(),
            "an unreferenced blob is pruned"
        );

        // Make the file unwritable: the update fails and memory stays as it was.
        std::fs::remove_dir_all(dir.path().join("registry")).unwrap();
        assert!(again.update("hello", |c| c.active = None).is_err());
        assert!(again.component("hello").unwrap().active.is_some());
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("registry")).unwrap();
        std::fs::write(dir.path().join("registry/state.json"), "{not json").unwrap();
        let e = format!("{:#}", RegistryStore::open(dir.path()).err().unwrap());
        assert!(e.contains("is not a valid registry file"), "{e}");
    }
}
