//! Request body limits: a size cap checked while the body streams (chunked
//! included) and a cap on how long the reader waits for the client.
//!
//! The component, a proxied upstream or the static file server reads the body
//! through [`LimitedBody`]. When a limit is hit the reader gets an error and
//! [`BodyWatch`] remembers why, so the pipeline can answer 413 or 408 (and
//! close the connection) whatever the reader made of the error.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The request body every target reads.
pub type RequestBody = LimitedBody;

/// What happened to a request body while it was read.
#[derive(Debug, Default)]
pub struct BodyWatch {
    /// Bytes read so far.
    pub bytes: AtomicU64,
    /// The body went past `max_body`.
    pub too_large: AtomicBool,
    /// The client paused longer than `body_timeout`.
    pub timed_out: AtomicBool,
}

/// A request body with a size cap and an idle timeout.
pub struct LimitedBody {
    inner: Incoming,
    max: u64,
    idle: Duration,
    /// Armed while the reader waits for the client; reset when data comes.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    watch: Arc<BodyWatch>,
    failed: bool,
}

impl LimitedBody {
    /// Wraps a body: at most `max` bytes, at most `idle` between frames while
    /// the reader waits.
    pub fn new(inner: Incoming, max: u64, idle: Duration, watch: Arc<BodyWatch>) -> Self {
        LimitedBody {
            inner,
            max,
            idle,
            sleep: None,
            watch,
            failed: false,
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.sleep = None;
                if let Some(data) = frame.data_ref() {
                    let total = this
                        .watch
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if total > this.max {
                        this.failed = true;
                        this.watch.too_large.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(
                            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(total)),
                        )));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.failed = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let idle = this.idle;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.failed = true;
                        this.watch.timed_out.store(true, Ordering::Relaxed);
                        Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionReadTimeout)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
