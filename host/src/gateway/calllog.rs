//! The call log (placeholder API; helper CALLLOG writes it).

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::config::CallLogSpec;

/// One request as the call log keeps it. Never the Authorization header or bodies.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CallRecord {
    /// When the request arrived, Unix milliseconds.
    pub time_ms: u64,
    /// Client IP address.
    pub client: String,
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The route pattern that matched, if any.
    pub route: Option<String>,
    /// The component that served it, if any.
    pub component: Option<String>,
    /// Its version.
    pub version: Option<String>,
    /// The upstream backend (URL or component) that served it, if any.
    pub backend: Option<String>,
    pub status: u16,
    /// From the request's arrival to the end of the response body, microseconds.
    pub latency_us: u64,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// W3C trace id (32 hex).
    pub trace_id: String,
    /// The verified token's subject.
    pub subject: Option<String>,
    /// Why the gateway itself answered, when it did: "not_found", "unauthorized",
    /// "forbidden", "rate_limited", "body_too_large", "body_timeout",
    /// "overloaded", "timeout", "no_backend", "removed".
    pub rejected: Option<String>,
    /// Whether the response body was sent completely.
    pub complete: bool,
}

/// A query over the log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CallQuery {
    pub component: Option<String>,
    pub route: Option<String>,
    /// `404`, or a class such as `5xx`.
    pub status: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Newest N (default 100).
    pub limit: Option<usize>,
}

/// The log table in `data_dir/calls`.
pub struct CallLog {
    follow: broadcast::Sender<Arc<CallRecord>>,
}

impl CallLog {
    /// Opens (or creates) the log.
    pub fn open(_data_dir: &Path, _spec: &CallLogSpec) -> anyhow::Result<Arc<CallLog>> {
        Ok(Arc::new(CallLog {
            follow: broadcast::channel(1024).0,
        }))
    }

    /// Records a row; never blocks the request and never fails it.
    pub fn record(&self, record: CallRecord) {
        let _ = self.follow.send(Arc::new(record));
    }

    /// Rows matching `q`, oldest first.
    pub async fn query(&self, _q: &CallQuery) -> anyhow::Result<Vec<CallRecord>> {
        Ok(Vec::new())
    }

    /// New rows as they are recorded.
    pub fn follow(&self) -> broadcast::Receiver<Arc<CallRecord>> {
        self.follow.subscribe()
    }

    /// Deletes rows past the retention limits until `shutdown` flips.
    pub fn spawn_retention(
        self: &Arc<Self>,
        _shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async {})
    }

    /// Writes what is pending and closes.
    pub async fn close(&self) -> anyhow::Result<()> {
        Ok(())
    }
}
