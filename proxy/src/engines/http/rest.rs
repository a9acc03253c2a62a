//! Idle HTTP/1.1 keep-alive connections rest as their socket alone.
//!
//! hyper keeps a connection's read and write buffers (8 KiB each) and its
//! state for as long as the connection lives, requests or not. Between
//! requests weir ends hyper's connection instead (the framing guard reports
//! an end of input when everything was answered and hyper asks for more; see
//! `framing.rs`), keeps the guard and its socket, and waits for the client's
//! next bytes; then a new hyper connection reads on. An idle connection then
//! costs its socket, the guard and weir's per-connection state.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::framing::FramingGuard;

/// A client connection weir can wait on without reading from it.
pub trait Readiness {
    /// Resolves when the client sent something (or closed, or failed).
    fn readable(&self) -> impl Future<Output = ()> + Send + '_;
}

impl Readiness for TcpStream {
    async fn readable(&self) {
        let _ = TcpStream::readable(self).await;
    }
}

/// TLS: the guard rests only after a read found nothing, so rustls holds no
/// plaintext; whatever comes next arrives on the socket.
impl Readiness for tokio_rustls::server::TlsStream<TcpStream> {
    async fn readable(&self) {
        let _ = self.get_ref().0.readable().await;
    }
}

/// Where a guard comes back when it ended its hyper connection to rest.
pub type Returned<IO, F> = Arc<Mutex<Option<FramingGuard<IO, F>>>>;

/// The guard, lent to one hyper connection. When hyper drops it, a resting
/// guard goes back to `returned`; any other is dropped with its socket.
pub struct Lent<IO, F> {
    guard: Option<FramingGuard<IO, F>>,
    returned: Returned<IO, F>,
}

impl<IO, F> Lent<IO, F> {
    pub fn new(guard: FramingGuard<IO, F>, returned: Returned<IO, F>) -> Self {
        Lent { guard: Some(guard), returned }
    }

    fn guard(&mut self) -> Pin<&mut FramingGuard<IO, F>>
    where
        FramingGuard<IO, F>: Unpin,
    {
        Pin::new(self.guard.as_mut().expect("lent until dropped"))
    }
}

impl<IO, F> Drop for Lent<IO, F> {
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take().filter(FramingGuard::resting) {
            *self.returned.lock().unwrap() = Some(guard);
        }
    }
}

impl<IO, F> AsyncRead for Lent<IO, F>
where
    FramingGuard<IO, F>: AsyncRead + Unpin,
{
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.guard().poll_read(cx, buf)
    }
}

impl<IO, F> AsyncWrite for Lent<IO, F>
where
    FramingGuard<IO, F>: AsyncWrite + Unpin,
{
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.guard().poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.guard().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.guard().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.guard().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.guard.as_ref().is_some_and(|guard| guard.is_write_vectored())
    }
}
