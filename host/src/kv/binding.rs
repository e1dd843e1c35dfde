//! `wasi:keyvalue` (store, atomics, batch) for a component's namespace.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::{
    KvError, LIST_PAGE, MAX_BATCH_KEYS, MAX_BUCKET_LEN, Namespace, bucket_prefix, encode_key,
};
use crate::bindings::wasi::keyvalue::{atomics, batch, store};
use crate::telemetry::span::{self, Span, SpanKind};

/// The `bucket` resource: an opened bucket of the component's namespace.
pub struct Bucket {
    prefix: Vec<u8>,
    /// `list-keys` cursors handed out: cursor `n` resumes after `cursors[n - 1]`.
    /// Resuming after a key (not at an offset) keeps paging linear and exact
    /// while other requests write.
    cursors: Vec<Vec<u8>>,
}

/// Per-invocation key-value state: the component's namespace and whether this
/// invocation wrote anything (then its response waits for durability).
pub struct KvState {
    namespace: Arc<dyn Namespace>,
    component: Arc<str>,
    max_value: usize,
    /// Most bytes one batch read may return (the component's memory limit).
    max_read: usize,
    dirty: bool,
    touched: bool,
    /// The version, named on the `kv.*` spans when they are exported.
    pub version: Option<Arc<str>>,
}

impl KvState {
    /// The `kv.*` span of one operation, current until it is dropped.
    fn span(&self, name: &'static str) -> span::Entered {
        Span::new(name, SpanKind::Internal)
            .with(|a| {
                a.str("component", &self.component)
                    .str("version", self.version.as_deref().unwrap_or(""));
            })
            .enter()
    }

    /// State for one invocation of `component`.
    pub fn new(
        namespace: Arc<dyn Namespace>,
        component: Arc<str>,
        max_value: usize,
        max_read: usize,
    ) -> Self {
        KvState {
            namespace,
            component,
            max_value,
            max_read,
            dirty: false,
            touched: false,
            version: None,
        }
    }

    /// Whether this invocation wrote (set, delete, increment, batch).
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// Whether this invocation used its store at all (it may have read a
    /// write that is not durable yet).
    pub fn touched(&self) -> bool {
        self.touched
    }
}

/// The borrowed view the generated `Host` traits are implemented on.
pub struct KvView<'a> {
    state: &'a mut KvState,
    table: &'a mut ResourceTable,
}

impl<'a> KvView<'a> {
    /// A view over a store's kv state and resource table.
    pub fn new(state: &'a mut KvState, table: &'a mut ResourceTable) -> Self {
        KvView { state, table }
    }

    fn bucket(&mut self, bucket: &Resource<Bucket>) -> Result<&mut Bucket, KvError> {
        self.state.touched = true;
        self.table
            .get_mut(bucket)
            .map_err(|e| KvError::Other(e.to_string()))
    }

    fn prefix(&mut self, bucket: &Resource<Bucket>) -> Result<Vec<u8>, KvError> {
        Ok(self.bucket(bucket)?.prefix.clone())
    }

    fn key(&mut self, bucket: &Resource<Bucket>, key: &str) -> Result<Vec<u8>, KvError> {
        encode_key(&self.bucket(bucket)?.prefix, key)
    }

    fn check_batch(n: usize) -> Result<(), KvError> {
        if n > MAX_BATCH_KEYS {
            return Err(KvError::Other(format!(
                "batch names {n} keys; the limit is {MAX_BATCH_KEYS}"
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        if value.len() > self.state.max_value {
            return Err(KvError::Other(format!(
                "value is {} bytes; this component's kv_value_size limit is {}",
                value.len(),
                self.state.max_value
            )));
        }
        Ok(())
    }
}

struct HasKv;

impl HasData for HasKv {
    type Data<'a> = KvView<'a>;
}

/// Adds `wasi:keyvalue/{store,atomics,batch}` to a linker.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KvView<'_>,
) -> anyhow::Result<()> {
    store::add_to_linker::<T, HasKv>(linker, view)?;
    atomics::add_to_linker::<T, HasKv>(linker, view)?;
    batch::add_to_linker::<T, HasKv>(linker, view)?;
    Ok(())
}

impl store::Host for KvView<'_> {
    fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, KvError> {
        if identifier.len() > MAX_BUCKET_LEN {
            return Err(KvError::Other(format!(
                "bucket name is {} bytes; the limit is {MAX_BUCKET_LEN}",
                identifier.len()
            )));
        }
        self.table
            .push(Bucket {
                prefix: bucket_prefix(&identifier),
                cursors: Vec::new(),
            })
            .map_err(|e| KvError::Other(e.to_string()))
    }

    fn convert_error(&mut self, err: KvError) -> wasmtime::Result<store::Error> {
        Ok(match err {
            KvError::AccessDenied => store::Error::AccessDenied,
            KvError::Other(m) => store::Error::Other(m),
        })
    }
}

impl store::HostBucket for KvView<'_> {
    fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Result<Option<Vec<u8>>, KvError> {
        let _s = self.state.span("kv.get");
        let key = self.key(&bucket, &key)?;
        self.state.namespace.get(&key)
    }

    fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), KvError> {
        let _s = self.state.span("kv.set");
        self.check_value(&value)?;
        let key = self.key(&bucket, &key)?;
        self.state.dirty = true;
        self.state.namespace.set(&key, &value)
    }

    fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), KvError> {
        let _s = self.state.span("kv.delete");
        let key = self.key(&bucket, &key)?;
        self.state.dirty = true;
        self.state.namespace.delete(&key)
    }

    fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, KvError> {
        let _s = self.state.span("kv.exists");
        let key = self.key(&bucket, &key)?;
        self.state.namespace.contains(&key)
    }

    fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, KvError> {
        let _s = self.state.span("kv.list_keys");
        let namespace = self.state.namespace.clone();
        let b = self.bucket(&bucket)?;
        let after = match cursor {
            None => None,
            Some(c) => Some(
                usize::try_from(c)
                    .ok()
                    .and_then(|c| c.checked_sub(1))
                    .and_then(|i| b.cursors.get(i))
                    .ok_or_else(|| {
                        KvError::Other(format!(
                            "unknown list-keys cursor {c}; pass a cursor this bucket returned"
                        ))
                    })?
                    .clone(),
            ),
        };
        let raw = namespace.scan_keys(&b.prefix, after.as_deref(), LIST_PAGE)?;
        let cursor = match raw.last() {
            Some(last) if raw.len() == LIST_PAGE => {
                b.cursors.push(last.clone());
                Some(b.cursors.len() as u64)
            }
            _ => None,
        };
        let keys = raw
            .into_iter()
            .map(|k| String::from_utf8_lossy(&k[b.prefix.len()..]).into_owned())
            .collect();
        Ok(store::KeyResponse { keys, cursor })
    }

    fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, KvError> {
        let _s = self.state.span("kv.increment");
        let encoded = self.key(&bucket, &key)?;
        self.state.dirty = true;
        let mut result = 0;
        self.state.namespace.update(&encoded, &mut |current| {
            let now = match current {
                None => 0,
                Some(bytes) => std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| {
                        KvError::Other(format!("value of `{key}` is not a decimal counter"))
                    })?,
            };
            result = now
                .checked_add(delta)
                .ok_or_else(|| KvError::Other(format!("incrementing `{key}` overflows u64")))?;
            Ok(result.to_string().into_bytes())
        })?;
        Ok(result)
    }
}

impl batch::Host for KvView<'_> {
    fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, KvError> {
        let _s = self.state.span("kv.get_many");
        Self::check_batch(keys.len())?;
        let prefix = self.prefix(&bucket)?;
        // The result is built in host memory before the guest sees it: bound
        // it by the component's memory limit.
        let mut total = 0usize;
        keys.into_iter()
            .map(|k| {
                let v = self.state.namespace.get(&encode_key(&prefix, &k)?)?;
                total += v.as_ref().map_or(0, Vec::len) + k.len();
                if total > self.state.max_read {
                    return Err(KvError::Other(format!(
                        "get-many would return more than {} bytes (this component's memory limit); ask for fewer keys",
                        self.state.max_read
                    )));
                }
                Ok(v.map(|v| (k, v)))
            })
            .collect()
    }

    fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), KvError> {
        let _s = self.state.span("kv.set_many");
        Self::check_batch(key_values.len())?;
        let prefix = self.prefix(&bucket)?;
        let mut sets = Vec::with_capacity(key_values.len());
        for (k, v) in key_values {
            self.check_value(&v)?;
            sets.push((encode_key(&prefix, &k)?, v));
        }
        self.state.dirty = true;
        self.state.namespace.apply_batch(&sets, &[])
    }

    fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> Result<(), KvError> {
        let _s = self.state.span("kv.delete_many");
        Self::check_batch(keys.len())?;
        let prefix = self.prefix(&bucket)?;
        let deletes = keys
            .iter()
            .map(|k| encode_key(&prefix, k))
            .collect::<Result<Vec<_>, _>>()?;
        self.state.dirty = true;
        self.state.namespace.apply_batch(&[], &deletes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvBackend, MAX_KEY_LEN, MemoryBackend};
    use store::{Host as _, HostBucket as _};

    struct Fixture {
        state: KvState,
        table: ResourceTable,
    }

    impl Fixture {
        fn new(backend: &MemoryBackend, component: &str) -> Fixture {
            Fixture {
                state: KvState::new(
                    backend.namespace(component).unwrap(),
                    component.into(),
                    16,
                    1 << 20,
                ),
                table: ResourceTable::new(),
            }
        }
        fn view(&mut self) -> KvView<'_> {
            KvView::new(&mut self.state, &mut self.table)
        }
        fn open(&mut self, name: &str) -> u32 {
            self.view().open(name.to_string()).unwrap().rep()
        }
    }

    fn b(rep: u32) -> Resource<Bucket> {
        Resource::new_borrow(rep)
    }

    #[test]
    fn set_get_delete_exists_and_dirty() {
        let backend = MemoryBackend::default();
        let mut f = Fixture::new(&backend, "a");
        let bucket = f.open("default");
        assert!(!f.state.dirty());
        assert_eq!(f.view().get(b(bucket), "k".into()).unwrap(), None);
        assert!(!f.state.dirty(), "reads do not make an invocation dirty");
        f.view().set(b(bucket), "k".into(), b"v".to_vec()).unwrap();
        assert!(f.state.dirty());
        assert_eq!(
            f.view().get(b(bucket), "k".into()).unwrap(),
            Some(b"v".to_vec())
        );
        assert!(f.view().exists(b(bucket), "k".into()).unwrap());
        f.view().delete(b(bucket), "k".into()).unwrap();
        assert!(!f.view().exists(b(bucket), "k".into()).unwrap());
    }

    #[test]
    fn buckets_and_components_are_separate() {
        let backend = MemoryBackend::default();
        let mut a = Fixture::new(&backend, "a");
        let mut other = Fixture::new(&backend, "b");
        let x = a.open("x");
        let y = a.open("y");
        a.view().set(b(x), "k".into(), b"in-x".to_vec()).unwrap();
        assert_eq!(a.view().get(b(y), "k".into()).unwrap(), None);
        for name in ["x", "a", "../a", "", "kv/a"] {
            let bucket = other.open(name);
            assert_eq!(
                other.view().get(b(bucket), "k".into()).unwrap(),
                None,
                "{name}"
            );
            let keys = other.view().list_keys(b(bucket), None).unwrap();
            assert!(keys.keys.is_empty(), "{name}");
        }
    }

    #[test]
    fn limits_are_guest_errors() {
        let backend = MemoryBackend::default();
        let mut f = Fixture::new(&backend, "a");
        let bucket = f.open("default");
        let e = f
            .view()
            .set(b(bucket), "k".into(), vec![0; 17])
            .unwrap_err();
        assert_eq!(
            e,
            KvError::Other("value is 17 bytes; this component's kv_value_size limit is 16".into())
        );
        let e = f
            .view()
            .get(b(bucket), "k".repeat(MAX_KEY_LEN + 1))
            .unwrap_err();
        assert!(matches!(e, KvError::Other(m) if m.contains("the limit is 8192")));
        assert!(f.view().open("b".repeat(256)).is_err());
        let too_many = vec!["k".to_string(); crate::kv::MAX_BATCH_KEYS + 1];
        let e = batch::Host::get_many(&mut f.view(), b(bucket), too_many).unwrap_err();
        assert!(matches!(e, KvError::Other(m) if m.contains("the limit is 10000")));
        // A read that would return more than the memory limit is refused.
        f.state.max_value = 1 << 20;
        f.state.max_read = 1 << 20;
        f.view()
            .set(b(bucket), "big".into(), vec![7; 600 << 10])
            .unwrap();
        let e = batch::Host::get_many(&mut f.view(), b(bucket), vec!["big".into(), "big".into()])
            .unwrap_err();
        assert!(matches!(e, KvError::Other(m) if m.contains("memory limit")));
    }

    #[test]
    fn increment_counts_and_rejects_non_numbers() {
        use atomics::Host as _;
        let backend = MemoryBackend::default();
        let mut f = Fixture::new(&backend, "a");
        f.state.max_value = 64;
        let bucket = f.open("default");
        assert_eq!(f.view().increment(b(bucket), "n".into(), 2).unwrap(), 2);
        assert_eq!(f.view().increment(b(bucket), "n".into(), 3).unwrap(), 5);
        assert_eq!(
            f.view().get(b(bucket), "n".into()).unwrap(),
            Some(b"5".to_vec())
        );
        f.view()
            .set(b(bucket), "s".into(), b"abc".to_vec())
            .unwrap();
        let e = f.view().increment(b(bucket), "s".into(), 1).unwrap_err();
        assert_eq!(
            e,
            KvError::Other("value of `s` is not a decimal counter".into())
        );
        f.view()
            .set(b(bucket), "max".into(), u64::MAX.to_string().into_bytes())
            .unwrap();
        assert!(f.view().increment(b(bucket), "max".into(), 1).is_err());
    }

    #[test]
    fn batches_and_listing() {
        use batch::Host as _;
        let backend = MemoryBackend::default();
        let mut f = Fixture::new(&backend, "a");
        let bucket = f.open("default");
        let pairs: Vec<_> = (0..3).map(|i| (format!("k{i}"), vec![i as u8])).collect();
        f.view().set_many(b(bucket), pairs).unwrap();
        let got = f
            .view()
            .get_many(b(bucket), vec!["k0".into(), "zz".into(), "k2".into()])
            .unwrap();
        assert_eq!(
            got,
            vec![
                Some(("k0".into(), vec![0])),
                None,
                Some(("k2".into(), vec![2]))
            ]
        );
        f.view().delete_many(b(bucket), vec!["k1".into()]).unwrap();
        let keys = f.view().list_keys(b(bucket), None).unwrap();
        assert_eq!(keys.keys, vec!["k0".to_string(), "k2".to_string()]);
        assert_eq!(keys.cursor, None);
    }

    #[test]
    fn listing_pages_with_a_cursor() {
        let backend = MemoryBackend::default();
        let mut f = Fixture::new(&backend, "a");
        f.state.max_value = 1;
        let bucket = f.open("default");
        for i in 0..LIST_PAGE + 5 {
            f.view()
                .set(b(bucket), format!("k{i:05}"), vec![1])
                .unwrap();
        }
        let first = f.view().list_keys(b(bucket), None).unwrap();
        assert_eq!(first.keys.len(), LIST_PAGE);
        // A key written before the cursor's position does not shift the next page.
        f.view().set(b(bucket), "a-first".into(), vec![1]).unwrap();
        let second = f.view().list_keys(b(bucket), first.cursor).unwrap();
        assert_eq!(second.keys.len(), 5);
        assert_eq!(second.cursor, None);
        assert_eq!(second.keys[0], format!("k{:05}", LIST_PAGE));
        assert_eq!(second.keys[4], format!("k{:05}", LIST_PAGE + 4));
        assert!(f.view().list_keys(b(bucket), Some(99)).is_err());
        assert!(f.view().list_keys(b(bucket), Some(0)).is_err());
    }
}
