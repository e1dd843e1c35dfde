//! Where a provider's keys come from, and when they are read again: a JWKS
//! file (when it changes), a JWKS URL (every `refresh`, and on an unknown
//! key id at most once per few seconds), or the host's local key (never).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use tokio::sync::Mutex;

use super::jwks::{self, KeySet, MAX_JWKS_LEN};
use crate::config::AuthProvider;

/// How often a JWKS file's modification time is looked at.
const FILE_CHECK: Duration = Duration::from_secs(1);
/// The least time between two fetches of a JWKS URL caused by unknown key
/// ids (or `refresh` when shorter): a client sending made-up kids cannot
/// make the host hammer the identity provider.
const UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(5);
/// After a failed periodic fetch, the next one comes this soon (or after
/// `refresh` when shorter).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// The longest a JWKS fetch may take, connecting included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A provider's key source and what is known about its last read.
pub(super) enum Source {
    File {
        path: PathBuf,
        spec: AuthProvider,
        /// The file as last read; the lock makes one reader at a time.
        seen: Mutex<Option<Stamp>>,
    },
    Url {
        url: String,
        spec: AuthProvider,
        /// When it was last fetched; the lock makes one fetch at a time.
        fetched: Mutex<Instant>,
    },
    Local,
}

/// What tells a changed file: replaced (inode), rewritten (mtime, size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

async fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let meta = tokio::fs::metadata(path).await?;
    Ok(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        ino: meta.ino(),
    })
}

/// Reads and decodes a JWKS file.
async fn read_file(spec: &AuthProvider, path: &Path) -> anyhow::Result<KeySet> {
    let bytes = tokio::fs::read(path)
        .await
        .with_context(|| format!("cannot read the JWKS file {}", path.display()))?;
    if bytes.len() > MAX_JWKS_LEN {
        anyhow::bail!(
            "the JWKS file {} is larger than {} KiB",
            path.display(),
            MAX_JWKS_LEN >> 10
        );
    }
    jwks::parse(spec, &bytes).with_context(|| format!("the JWKS file {}", path.display()))
}

/// Fetches and decodes a JWKS URL.
async fn read_url(spec: &AuthProvider, url: &str) -> anyhow::Result<KeySet> {
    let bytes = tokio::time::timeout(FETCH_TIMEOUT, fetch(url))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {FETCH_TIMEOUT:?}"))
        .and_then(|r| r)
        .with_context(|| format!("cannot fetch the JWKS from {url}"))?;
    jwks::parse(spec, &bytes).with_context(|| format!("the JWKS from {url}"))
}

/// GET `url` (http or https; a 2xx answer of at most 1 MiB).
async fn fetch(url: &str) -> anyhow::Result<Bytes> {
    let uri: http::Uri = url.parse().context("not a URL")?;
    let authority = uri
        .authority()
        .context("the URL has no host")?
        .as_str()
        .to_string();
    let req = http::Request::get(uri)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "atoll")
        .body(Empty::<Bytes>::new().map_err(|e| match e {}))?;
    let options = wasmtime_wasi_http::RequestOptions {
        connect_timeout: Some(FETCH_TIMEOUT),
        first_byte_timeout: Some(FETCH_TIMEOUT),
        between_bytes_timeout: Some(FETCH_TIMEOUT),
    };
    let (res, io) = wasmtime_wasi_http::default_send_request(req, Some(options)).await?;
    // The connection's I/O runs beside the body read; it ends with it.
    let io = tokio::spawn(io);
    let status = res.status();
    let body = Limited::new(res.into_body(), MAX_JWKS_LEN).collect().await;
    io.abort();
    if !status.is_success() {
        anyhow::bail!("it answered {status}");
    }
    let body = body.map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?;
    Ok(body.to_bytes())
}

/// Loads a JWKS file provider's first keys.
pub(super) async fn load_file(
    spec: &AuthProvider,
    path: &Path,
) -> anyhow::Result<(Source, KeySet)> {
    let seen = stamp(path)
        .await
        .with_context(|| format!("cannot read the JWKS file {}", path.display()))?;
    let keys = read_file(spec, path).await?;
    let source = Source::File {
        path: path.to_path_buf(),
        spec: spec.clone(),
        seen: Mutex::new(Some(seen)),
    };
    Ok((source, keys))
}

/// Loads a JWKS URL provider's first keys.
pub(super) async fn load_url(spec: &AuthProvider, url: &str) -> anyhow::Result<(Source, KeySet)> {
    let keys = read_url(spec, url).await?;
    let source = Source::Url {
        url: url.to_string(),
        spec: spec.clone(),
        fetched: Mutex::new(Instant::now()),
    };
    Ok((source, keys))
}

impl Source {
    /// Time to the first background refresh; `None` when keys never change.
    pub fn refresh_interval(&self) -> Option<Duration> {
        match self {
            Source::File { .. } => Some(FILE_CHECK),
            Source::Url { spec, .. } => Some(spec.refresh),
            Source::Local => None,
        }
    }

    /// A background refresh; returns the time to the next one.
    pub async fn refresh(&self, provider: &str, keys: &ArcSwap<KeySet>) -> Duration {
        match self {
            Source::File { .. } => {
                self.reload_file_if_changed(provider, keys).await;
                FILE_CHECK
            }
            Source::Url { url, spec, fetched } => {
                let mut fetched = fetched.lock().await;
                let ok = fetch_into(spec, url, provider, keys).await;
                *fetched = Instant::now();
                if ok {
                    spec.refresh
                } else {
                    spec.refresh.min(RETRY_AFTER_FAILURE)
                }
            }
            Source::Local => Duration::MAX,
        }
    }

    /// A token named a key id the set lacks: read the file again if it
    /// changed, fetch the URL if the last fetch is a few seconds old.
    /// Callers arriving during a fetch wait for it and then see its keys.
    pub async fn reload_for_unknown_kid(&self, provider: &str, keys: &ArcSwap<KeySet>) {
        match self {
            Source::File { .. } => self.reload_file_if_changed(provider, keys).await,
            Source::Url { url, spec, fetched } => {
                let mut fetched = fetched.lock().await;
                if fetched.elapsed() < spec.refresh.min(UNKNOWN_KID_COOLDOWN) {
                    return;
                }
                fetch_into(spec, url, provider, keys).await;
                *fetched = Instant::now();
            }
            Source::Local => {}
        }
    }

    async fn reload_file_if_changed(&self, provider: &str, keys: &ArcSwap<KeySet>) {
        let Source::File { path, spec, seen } = self else {
            return;
        };
        let mut seen = seen.lock().await;
        let now = stamp(path).await.ok();
        if now == *seen {
            return;
        }
        // Remember the stamp even when the read fails: a broken file is
        // reported once, not every second, and read again when it changes.
        *seen = now;
        match read_file(spec, path).await {
            Ok(set) => replace(provider, keys, set),
            Err(e) => tracing::warn!(
                provider,
                "keeping the previous keys: {e:#}; fix the file and it is read again"
            ),
        }
    }
}

/// Fetches a URL's keys into `keys`; false (and a warning) on failure.
async fn fetch_into(
    spec: &AuthProvider,
    url: &str,
    provider: &str,
    keys: &ArcSwap<KeySet>,
) -> bool {
    match read_url(spec, url).await {
        Ok(set) => {
            replace(provider, keys, set);
            true
        }
        Err(e) => {
            tracing::warn!(provider, "keeping the previous keys: {e:#}");
            false
        }
    }
}

/// Swaps in a new key set, logging when its key ids changed.
fn replace(provider: &str, keys: &ArcSwap<KeySet>, set: KeySet) {
    let before = keys.load().kids();
    if before != set.kids() {
        tracing::info!(provider, keys = %set.describe(), "auth keys changed");
    }
    keys.store(std::sync::Arc::new(set));
}
