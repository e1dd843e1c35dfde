//! A response body that completes only once the invocation's writes are durable.
//!
//! The component may stream its response before its `handle` returns, and its
//! key-value writes are flushed after it returns. A client must never see a
//! complete response whose writes could still be lost, so this wrapper holds
//! back the last frame (and so the end of the message) until the invocation
//! finished and its group commit, if it wrote anything, completed. Earlier
//! frames pass straight through: streaming is unaffected.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::oneshot;

use super::BoxError;

/// Sent by the invocation task when it has finished: `Err` if the response
/// must not be completed (writes not durable, or the guest failed mid-body).
pub type Finished = Result<(), String>;

pub struct DurableBody<B> {
    inner: B,
    held: Option<Frame<Bytes>>,
    inner_done: bool,
    finished: Option<oneshot::Receiver<Finished>>,
}

impl<B> DurableBody<B> {
    pub fn new(inner: B, finished: oneshot::Receiver<Finished>) -> Self {
        DurableBody {
            inner,
            held: None,
            inner_done: false,
            finished: Some(finished),
        }
    }
}

impl<B> Body for DurableBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.inner_done {
                if let Some(finished) = &mut this.finished {
                    let outcome = ready!(Pin::new(finished).poll(cx))
                        .unwrap_or_else(|_| Err("invocation ended abnormally".into()));
                    this.finished = None;
                    if let Err(why) = outcome {
                        this.held = None;
                        return Poll::Ready(Some(Err(why.into())));
                    }
                }
                return Poll::Ready(this.held.take().map(Ok));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Some(previous) = this.held.replace(frame) {
                        return Poll::Ready(Some(Ok(previous)));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => this.inner_done = true,
            }
        }
    }
}
