//! The body of a response sent downstream: streamed from the upstream, or
//! written by weir itself.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a streamed response body ended.
#[derive(Debug)]
pub enum BodyEnd {
    Complete,
    Failed(String),
    /// Dropped before the end: the client went away.
    Abandoned,
}

/// Called once when a streamed body ends, however it ends.
pub type EndHook = Box<dyn FnOnce(BodyEnd) + Send>;

pub enum ProxyBody {
    Upstream(Incoming, Option<EndHook>),
    Local(Full<Bytes>),
}

impl ProxyBody {
    pub fn local(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Local(Full::new(bytes.into()))
    }

    /// Stream an upstream body, calling `on_end` when it ends.
    pub fn upstream(body: Incoming, on_end: EndHook) -> Self {
        if body.is_end_stream() {
            // hyper will not poll an empty body: it ends now
            on_end(BodyEnd::Complete);
            return ProxyBody::Upstream(body, None);
        }
        ProxyBody::Upstream(body, Some(on_end))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut *self {
            ProxyBody::Upstream(body, hook) => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                let end = match &polled {
                    Poll::Ready(None) => Some(BodyEnd::Complete),
                    Poll::Ready(Some(Err(e))) => Some(BodyEnd::Failed(e.to_string())),
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => Some(BodyEnd::Complete),
                    _ => None,
                };
                // take the hook only when the body has ended
                if let Some(end) = end
                    && let Some(hook) = hook.take()
                {
                    hook(end);
                }
                polled.map_err(Into::into)
            }
            ProxyBody::Local(body) => Pin::new(body).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(body, _) => body.is_end_stream(),
            ProxyBody::Local(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(body, _) => body.size_hint(),
            ProxyBody::Local(body) => body.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let ProxyBody::Upstream(body, hook) = self
            && let Some(hook) = hook.take()
        {
            hook(if body.is_end_stream() { BodyEnd::Complete } else { BodyEnd::Abandoned });
        }
    }
}

/// The downstream request body, noting whether the client broke it off.
pub struct TrackedBody {
    inner: Incoming,
    aborted: Arc<AtomicBool>,
}

impl TrackedBody {
    pub fn new(inner: Incoming, aborted: Arc<AtomicBool>) -> Self {
        TrackedBody { inner, aborted }
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        loop {
            let polled = Pin::new(&mut self.inner).poll_frame(cx);
            match &polled {
                Poll::Ready(Some(Err(_))) => self.aborted.store(true, Ordering::Relaxed),
                // Request trailers are headers no filter judged: they are
                // not forwarded (docs/http.md).
                Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                    tracing::debug!("request trailers dropped");
                    continue;
                }
                _ => {}
            }
            return polled;
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
