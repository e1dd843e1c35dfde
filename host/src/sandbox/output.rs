//! Guest stdout/stderr, captured line by line into the log hub
//! ([`crate::telemetry::logs`]) and the host's log, each line with the
//! component, version and trace id of the invocation that wrote it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::InstanceState;
use crate::telemetry::logs::{self, Level, MAX_MESSAGE, Origin, Source, TraceId};

/// A guest output stream (`stdout` or `stderr`) of one invocation.
#[derive(Clone)]
pub struct GuestOutput {
    origin: Arc<Origin>,
    source: Source,
}

impl GuestOutput {
    /// The invocation's stdout.
    pub fn stdout(origin: Arc<Origin>) -> Self {
        GuestOutput {
            origin,
            source: Source::Stdout,
        }
    }

    /// The invocation's stderr.
    pub fn stderr(origin: Arc<Origin>) -> Self {
        GuestOutput {
            origin,
            source: Source::Stderr,
        }
    }

    fn writer(&self) -> LineWriter {
        LineWriter {
            out: self.clone(),
            line: Vec::new(),
            cut: 0,
        }
    }
}

impl InstanceState {
    /// Whose log records this invocation makes. The trace context is put on
    /// the store after it is made (by the gateway, a delivery or a call), so
    /// it is picked up here, on the first WASI or logging call after that:
    /// the streams that share the origin write only through WASI calls.
    pub(super) fn log_origin(&mut self) -> &Origin {
        if self.origin.trace_id().is_none()
            && let Some(id) = self
                .bus
                .traceparent
                .as_deref()
                .and_then(TraceId::from_traceparent)
        {
            self.origin.set_trace(id);
        }
        &self.origin
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.writer())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.writer())
    }
}

/// Splits what a guest writes into lines. A line longer than
/// [`MAX_MESSAGE`] keeps its first bytes; the rest is counted, not held, so
/// a guest cannot grow host memory by writing without a newline.
struct LineWriter {
    out: GuestOutput,
    line: Vec<u8>,
    /// Bytes of the current line dropped past [`MAX_MESSAGE`].
    cut: u64,
}

impl LineWriter {
    fn push(&mut self, mut bytes: &[u8]) {
        loop {
            let (part, newline) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], true),
                None => (bytes, false),
            };
            let room = MAX_MESSAGE.saturating_sub(self.line.len()).min(part.len());
            self.line.extend_from_slice(&part[..room]);
            self.cut += (part.len() - room) as u64;
            if !newline {
                return;
            }
            self.emit();
            bytes = &bytes[part.len() + 1..];
        }
    }

    fn emit(&mut self) {
        // A cut may split a character: leave its first bytes out too.
        let mut end = self.line.len();
        if self.cut > 0
            && let Err(e) = std::str::from_utf8(&self.line)
            && e.error_len().is_none()
        {
            end = e.valid_up_to();
        }
        let cut = self.cut + (self.line.len() - end) as u64;
        let text = String::from_utf8_lossy(&self.line[..end]);
        let text = text.trim_end_matches('\r');
        let origin = &self.out.origin;
        let record = origin
            .record(Level::Info, self.out.source, text)
            .cut_before(cut);
        tracing::info!(
            target: "guest",
            component = &*origin.component,
            version = &*origin.version,
            stream = self.out.source.as_str(),
            trace_id = record.trace_id.map(tracing::field::display),
            truncated = (cut > 0).then_some(cut),
            "{text}"
        );
        logs::hub().push(record);
        self.line.clear();
        self.cut = 0;
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() || self.cut > 0 {
            self.emit();
        }
    }
}

#[async_trait::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::logs::{LogQuery, LogRecord, hub};

    fn writer(component: &str) -> LineWriter {
        let origin = Arc::new(Origin::new(Arc::from(component), Arc::from("2.0.0")));
        origin.set_trace(TraceId(7));
        GuestOutput::stderr(origin).writer()
    }

    fn records(component: &str) -> Vec<Arc<LogRecord>> {
        hub().query(&LogQuery {
            component: Some(component.into()),
            ..LogQuery::default()
        })
    }

    #[test]
    fn lines_split_on_newlines_across_writes() {
        let mut w = writer("output-lines");
        w.push(b"one\ntw");
        w.push(b"o\r\n\nthree");
        assert_eq!(records("output-lines").len(), 3);
        drop(w);
        let got = records("output-lines");
        let text: Vec<&str> = got.iter().map(|r| &*r.message).collect();
        assert_eq!(text, ["one", "two", "", "three"]);
        for r in &got {
            assert_eq!(
                (r.source, r.level, &*r.version, r.trace_id, r.truncated),
                (Source::Stderr, Level::Info, "2.0.0", Some(TraceId(7)), 0)
            );
        }
    }

    #[test]
    fn a_long_line_is_cut_and_counted_without_being_held() {
        let mut w = writer("output-long");
        // "é" is two bytes; after the "a" the cut falls inside one.
        let line = format!("a{}", "é".repeat(MAX_MESSAGE));
        for chunk in line.as_bytes().chunks(1000) {
            w.push(chunk);
            assert!(w.line.len() <= MAX_MESSAGE);
        }
        w.push(b"\nnext\n");
        let got = records("output-long");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].message.len(), MAX_MESSAGE - 1);
        assert!(got[0].message[1..].chars().all(|c| c == 'é'));
        assert_eq!(got[0].truncated, (line.len() - (MAX_MESSAGE - 1)) as u64);
        assert_eq!((&*got[1].message, got[1].truncated), ("next", 0));
    }
}
