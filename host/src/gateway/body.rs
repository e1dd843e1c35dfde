//! A response body that completes only once the invocation's writes are durable.
//!
//! The component may stream its response before its `handle` returns, and its
//! key-value writes are flushed after it returns. A client must never see a
//! complete response whose writes could still be lost, or that the guest
//! failed to finish, so this wrapper holds back only what would *complete*
//! the message until the invocation has ended well:
//! - with a `Content-Length`, the data frame that reaches that length (and
//!   anything after it, such as HTTP/2 trailers);
//! - otherwise (chunked HTTP/1.1, HTTP/2), the end of the stream and trailers.
//!
//! Everything else passes straight through, so streaming is unaffected.
//!
//! The `finished` future is polled on every poll (it may be the invocation's
//! task handle, or an outcome already known), so the end is released as soon
//! as the invocation ends.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame};

use super::BoxError;

/// Runs the invocation to its end: `Err` if the response must not be
/// completed (the guest failed, or its writes are not durable).
pub type Finished = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

pub struct DurableBody<B> {
    inner: B,
    /// Bytes still to come before the declared Content-Length is reached.
    remaining: Option<u64>,
    /// The frame that completes the message, and any after it (trailers).
    held: VecDeque<Frame<Bytes>>,
    inner_done: bool,
    finished: Option<Finished>,
    outcome: Option<Result<(), String>>,
}

impl<B> DurableBody<B> {
    pub fn new(inner: B, content_length: Option<u64>, finished: Finished) -> Self {
        DurableBody {
            inner,
            remaining: content_length,
            held: VecDeque::new(),
            inner_done: false,
            finished: Some(finished),
            outcome: None,
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
            // Learn the invocation's outcome as soon as it is known.
            if let Some(finished) = &mut this.finished
                && let Poll::Ready(outcome) = finished.as_mut().poll(cx)
            {
                this.finished = None;
                this.outcome = Some(outcome);
            }
            if this.inner_done {
                match this.outcome.take() {
                    // Still running; polled above, so we will be woken.
                    None if this.finished.is_some() => return Poll::Pending,
                    Some(Err(why)) => {
                        this.held.clear();
                        return Poll::Ready(Some(Err(why.into())));
                    }
                    _ => {}
                }
                return Poll::Ready(this.held.pop_front().map(Ok));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let completes = match (frame.data_ref(), this.remaining.as_mut()) {
                        (Some(data), Some(left)) => {
                            *left = left.saturating_sub(data.len() as u64);
                            *left == 0
                        }
                        // Without a length, only trailers (always last) are held.
                        (None, _) => true,
                        (Some(_), None) => false,
                    };
                    // From the completing frame on, everything waits (trailers
                    // may still follow a complete Content-Length body on h2).
                    if completes || !this.held.is_empty() {
                        this.held.push_back(frame);
                    } else {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => this.inner_done = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use http_body_util::channel::{Channel, Sender};
    use tokio::sync::oneshot;

    type Inner = Channel<Bytes>;

    fn body(
        length: Option<u64>,
    ) -> (
        Sender<Bytes>,
        oneshot::Sender<Result<(), String>>,
        DurableBody<Inner>,
    ) {
        let (tx, inner) = Channel::new(8);
        let (done_tx, done_rx) = oneshot::channel();
        let finished: Finished =
            Box::pin(async move { done_rx.await.unwrap_or(Err("dropped".into())) });
        (tx, done_tx, DurableBody::new(inner, length, finished))
    }

    fn data(s: &'static str) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(s.as_bytes()))
    }

    async fn next(b: &mut DurableBody<Inner>) -> Option<Bytes> {
        b.frame()
            .await
            .map(|f| f.ok().unwrap().into_data().ok().unwrap())
    }

    #[tokio::test]
    async fn chunked_streams_and_holds_only_the_end() {
        let (mut tx, done, mut b) = body(None);
        tx.try_send(data("a")).unwrap();
        assert_eq!(next(&mut b).await.unwrap(), "a", "not held back one frame");
        tx.try_send(data("b")).unwrap();
        assert_eq!(next(&mut b).await.unwrap(), "b");
        drop(tx);
        let end = tokio::spawn(async move { b.frame().await.is_none() });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!end.is_finished(), "the end waits for the invocation");
        done.send(Ok(())).unwrap();
        assert!(end.await.unwrap());
    }

    #[tokio::test]
    async fn content_length_holds_the_completing_frame() {
        let (mut tx, done, mut b) = body(Some(2));
        tx.try_send(data("a")).unwrap();
        assert_eq!(next(&mut b).await.unwrap(), "a");
        tx.try_send(data("b")).unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-check", "1".parse().unwrap());
        tx.try_send(Frame::trailers(trailers)).unwrap();
        drop(tx);
        let last = tokio::spawn(async move {
            let data = next(&mut b).await;
            let trailers = b.frame().await.unwrap().unwrap().into_trailers().unwrap();
            (data, trailers["x-check"].clone(), b.frame().await.is_none())
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!last.is_finished(), "the completing frame waits");
        done.send(Ok(())).unwrap();
        let (data, check, end) = last.await.unwrap();
        assert_eq!(
            (data, check, end),
            (Some(Bytes::from("b")), "1".parse().unwrap(), true)
        );
    }

    #[tokio::test]
    async fn failure_ends_the_body_with_an_error() {
        let (mut tx, done, mut b) = body(None);
        tx.try_send(data("a")).unwrap();
        assert_eq!(next(&mut b).await.unwrap(), "a");
        drop(tx);
        done.send(Err("trapped".into())).unwrap();
        let e = b.frame().await.unwrap().unwrap_err();
        assert_eq!(e.to_string(), "trapped");
    }
}
