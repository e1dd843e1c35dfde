//! An in-memory backend for unit tests and ephemeral hosts (`sync` is a no-op).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::{KvBackend, KvError, Namespace, UpdateFn, scan_start};

/// Stores that live as long as the process.
#[derive(Default)]
pub struct MemoryBackend {
    namespaces: Mutex<HashMap<String, Arc<MemoryNamespace>>>,
}

#[async_trait::async_trait]
impl KvBackend for MemoryBackend {
    fn namespace(&self, component: &str) -> anyhow::Result<Arc<dyn Namespace>> {
        let mut all = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        Ok(all.entry(component.to_string()).or_default().clone())
    }

    async fn sync(&self) -> anyhow::Result<()> {
        Ok(())
    }

    fn has_pending(&self) -> bool {
        false
    }

    fn flush_blocking(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

#[derive(Default)]
struct MemoryNamespace {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryNamespace {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Namespace for MemoryNamespace {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.map().get(key).cloned())
    }

    fn set(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.map().insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<(), KvError> {
        self.map().remove(key);
        Ok(())
    }

    fn contains(&self, key: &[u8]) -> Result<bool, KvError> {
        Ok(self.map().contains_key(key))
    }

    fn scan_keys(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, KvError> {
        Ok(self
            .map()
            .range((scan_start(prefix, after), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, _)| k.clone())
            .collect())
    }

    fn update(&self, key: &[u8], f: &mut UpdateFn<'_>) -> Result<Vec<u8>, KvError> {
        let mut map = self.map();
        let new = f(map.get(key).map(Vec::as_slice))?;
        map.insert(key.to_vec(), new.clone());
        Ok(new)
    }

    fn apply_batch(&self, sets: &[(Vec<u8>, Vec<u8>)], deletes: &[Vec<u8>]) -> Result<(), KvError> {
        let mut map = self.map();
        for (k, v) in sets {
            map.insert(k.clone(), v.clone());
        }
        for k in deletes {
            map.remove(k);
        }
        Ok(())
    }
}
