//! Blocking helpers over `wasi:io/streams`.

use crate::bindings::wasi::io::streams::{InputStream, OutputStream, StreamError};

/// The most `blocking-write-and-flush` accepts in one call.
const WRITE_CHUNK: usize = 4096;
const READ_CHUNK: u64 = 64 * 1024;

/// Reads `stream` until the other side closes it.
pub(crate) fn read_to_end(stream: &InputStream) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(out),
            Err(StreamError::LastOperationFailed(err)) => return Err(first_line(&err)),
        }
    }
}

/// Writes all of `bytes` to `stream`, flushing as it goes.
pub(crate) fn write_all(stream: &OutputStream, bytes: &[u8]) -> Result<(), String> {
    for chunk in bytes.chunks(WRITE_CHUNK) {
        match stream.blocking_write_and_flush(chunk) {
            Ok(()) => {}
            Err(StreamError::Closed) => return Err("stream closed".to_string()),
            Err(StreamError::LastOperationFailed(err)) => return Err(first_line(&err)),
        }
    }
    Ok(())
}

/// The first line of a stream error's debug text: hosts may append a whole
/// backtrace (wasmtime does when `RUST_BACKTRACE` is set), which does not
/// belong in a response body.
fn first_line(err: &crate::bindings::wasi::io::error::Error) -> String {
    let text = err.to_debug_string();
    text.lines()
        .next()
        .unwrap_or("stream failed")
        .trim()
        .to_string()
}
