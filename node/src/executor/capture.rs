//! Bounded capture of a guest's stdout and stderr.
//!
//! Output beyond the cap is dropped and remembered as truncated, rather than trapping the
//! guest (wasmtime's `MemoryOutputPipe` traps), so a chatty function still completes and the
//! caller sees a marker instead of an error.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

#[derive(Clone, Debug)]
pub struct Capture {
    inner: Arc<Mutex<Buf>>,
}

#[derive(Debug)]
struct Buf {
    data: BytesMut,
    cap: usize,
    truncated: bool,
}

impl Capture {
    pub fn new(cap: usize) -> Self {
        Capture {
            inner: Arc::new(Mutex::new(Buf {
                data: BytesMut::new(),
                cap,
                truncated: false,
            })),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let room = b.cap.saturating_sub(b.data.len());
        if bytes.len() > room {
            b.truncated = true;
        }
        let take = bytes.len().min(room);
        b.data.extend_from_slice(&bytes[..take]);
    }

    /// The captured bytes and whether any were dropped.
    pub fn take(&self) -> (Bytes, bool) {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let data = std::mem::take(&mut b.data).freeze();
        (data, b.truncated)
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always accept: what does not fit is dropped and marked, never an error.
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_cap_is_dropped_and_marked() {
        let c = Capture::new(5);
        c.push(b"abc");
        c.push(b"defg");
        let (data, truncated) = c.take();
        assert_eq!(&data[..], b"abcde");
        assert!(truncated);
    }

    #[test]
    fn output_within_the_cap_is_kept_whole() {
        let c = Capture::new(8);
        c.push(b"abc");
        assert_eq!(c.take(), (Bytes::from_static(b"abc"), false));
    }
}
