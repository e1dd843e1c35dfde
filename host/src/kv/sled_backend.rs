//! The default backend: one sled database per host, one tree per component.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use super::commit::WriteTracker;
use super::stats::{KvStats, Op, OpCounts};
use super::{GroupCommit, KvBackend, KvError, Namespace, UpdateFn, scan_start};

/// Opens a sled database, waiting up to 3 s for its file lock: a host that
/// is stopping (or one whose start just failed in this process) lets go of
/// it a moment after it is dropped, as sled's own threads end.
pub fn open_locked(config: sled::Config) -> sled::Result<sled::Db> {
    let mut waited = std::time::Duration::ZERO;
    loop {
        match config.open() {
            // sled reports the lock only in its message (kind `Other`).
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && waited < std::time::Duration::from_secs(3) =>
            {
                let pause = std::time::Duration::from_millis(50);
                std::thread::sleep(pause);
                waited += pause;
            }
            other => return other,
        }
    }
}

/// sled-backed stores with group-commit durability.
pub struct SledBackend {
    db: sled::Db,
    commit: GroupCommit,
    stats: Arc<KvStats>,
}

impl SledBackend {
    /// Opens (or creates) the database at `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<SledBackend> {
        let db = open_locked(
            sled::Config::new()
                .path(dir)
                // Durability comes from our group commit; sled's own timer
                // flush stays on as a backstop for writes nobody waited for.
                .flush_every_ms(Some(500)),
        )
        .with_context(|| {
            format!(
                "opening key-value store at {} (is another atoll using this data_dir?)",
                dir.display()
            )
        })?;
        let flush_db = db.clone();
        let stats = Arc::new(KvStats::default());
        let observed = stats.clone();
        let commit = GroupCommit::start_observed(
            "kv",
            Box::new(move || {
                flush_db.flush().context("flushing sled")?;
                Ok(())
            }),
            Box::new(move |took, ok| observed.flushed(took, ok)),
        )?;
        Ok(SledBackend { db, commit, stats })
    }

    /// The underlying database, for the bus and benchmarks.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Counts writes made outside a namespace (the bus) toward the shared group commit.
    pub fn tracker(&self) -> WriteTracker {
        self.commit.tracker()
    }

    /// The tree holding one component's keys (for transactions spanning it and the bus).
    pub fn tree_of(&self, component: &str) -> anyhow::Result<sled::Tree> {
        self.db
            .open_tree(format!("kv/{component}"))
            .with_context(|| format!("opening the key-value tree of `{component}`"))
    }
}

#[async_trait::async_trait]
impl KvBackend for SledBackend {
    fn namespace(&self, component: &str) -> anyhow::Result<Arc<dyn Namespace>> {
        let tree = self.tree_of(component)?;
        Ok(Arc::new(SledNamespace {
            tree,
            writes: self.commit.tracker(),
            ops: self.stats.component(component),
        }))
    }

    async fn sync(&self) -> anyhow::Result<()> {
        self.commit.sync().await
    }

    fn has_pending(&self) -> bool {
        self.commit.has_pending()
    }

    fn flush_blocking(&self) -> anyhow::Result<()> {
        self.db.flush().context("flushing key-value store")?;
        Ok(())
    }

    fn stats(&self) -> Option<&KvStats> {
        Some(&self.stats)
    }
}

struct SledNamespace {
    tree: sled::Tree,
    writes: WriteTracker,
    ops: Arc<OpCounts>,
}

impl Namespace for SledNamespace {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.ops.add(Op::Get);
        Ok(self
            .tree
            .get(key)
            .map_err(KvError::backend)?
            .map(|v| v.to_vec()))
    }

    fn contains(&self, key: &[u8]) -> Result<bool, KvError> {
        self.ops.add(Op::Exists);
        self.tree.contains_key(key).map_err(KvError::backend)
    }

    fn set(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.ops.add(Op::Set);
        self.writes.note_write();
        self.tree.insert(key, value).map_err(KvError::backend)?;
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<(), KvError> {
        self.ops.add(Op::Delete);
        self.writes.note_write();
        self.tree.remove(key).map_err(KvError::backend)?;
        Ok(())
    }

    fn scan_keys(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, KvError> {
        self.ops.add(Op::List);
        self.tree
            .range::<Vec<u8>, _>((scan_start(prefix, after), Bound::Unbounded))
            .keys()
            .take_while(|k| k.as_ref().map_or(true, |k| k.starts_with(prefix)))
            .take(limit)
            .map(|k| k.map(|k| k.to_vec()).map_err(KvError::backend))
            .collect()
    }

    fn update(&self, key: &[u8], f: &mut UpdateFn<'_>) -> Result<Vec<u8>, KvError> {
        self.ops.add(Op::Update);
        // compare-and-swap loop: sled's update_and_fetch cannot carry an error out.
        let mut current = self.tree.get(key).map_err(KvError::backend)?;
        loop {
            let new = f(current.as_deref())?;
            self.writes.note_write();
            match self
                .tree
                .compare_and_swap(key, current.as_ref(), Some(new.as_slice()))
                .map_err(KvError::backend)?
            {
                Ok(()) => return Ok(new),
                Err(conflict) => current = conflict.current,
            }
        }
    }

    fn apply_batch(&self, sets: &[(Vec<u8>, Vec<u8>)], deletes: &[Vec<u8>]) -> Result<(), KvError> {
        self.ops.add(Op::Batch);
        let mut batch = sled::Batch::default();
        for (k, v) in sets {
            batch.insert(k.as_slice(), v.as_slice());
        }
        for k in deletes {
            batch.remove(k.as_slice());
        }
        self.writes.note_write();
        self.tree.apply_batch(batch).map_err(KvError::backend)
    }
}
