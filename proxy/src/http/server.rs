//! Serving one accepted connection: TLS (ALPN h2 or http/1.1) or plaintext
//! (HTTP/1.1, or HTTP/2 with prior knowledge, told apart by the preface).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::framing::{Detect, FramingGuard, MAX_HEAD_BYTES, MAX_HEADERS, Rejected};
use super::service::HttpConnection;
use crate::context::ConnectionContext;
use crate::context::Target;
use crate::context::next_connection_id;
use crate::flow::{FlowRecord, HttpFlow, Verdict};
use crate::metrics::RequestLabels;
use crate::model::ConnectionVerdict;
use crate::state::ProxyState;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Envoy's recommended `max_concurrent_streams` for edge proxies (nginx: 128).
const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams a client may reset before weir accepted them (h2's default;
/// rapid reset past it is answered with GOAWAY ENHANCE_YOUR_CALM).
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams weir may reset for the client's protocol errors before GOAWAY.
const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Envoy's `max_request_headers_kb` default (60 KiB); nginx allows 32 KiB.
const H2_MAX_HEADER_LIST_SIZE: u32 = 60 << 10;
/// Bytes buffered per stream towards a slow reader (hyper's default).
const H2_MAX_SEND_BUFFER: usize = 400 << 10;
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

pub async fn serve(state: Arc<ProxyState>, target: Target, stream: TcpStream, peer: SocketAddr) {
    let listener = target.name();
    let open = crate::state::OpenConnection::new(&state, &listener);

    let tls = match &target {
        Target::Listener(name) => {
            let model = state.model.load();
            let Some(listener_model) = model.listeners.get(&**name) else { return };
            listener_model.tls.clone()
        }
        Target::Transparent { .. } => None,
    };
    let head_timeout = crate::limits::http_head_timeout(&state, &target);
    let _ = stream.set_nodelay(true);
    let conn = Arc::new(HttpConnection::new(state.clone(), target, peer, next_connection_id(), tls.is_some()));

    // L3/L4 first: in the datapath a denied SYN never reaches the proxy.
    let Some((verdict, context)) = conn.accept_verdict() else { return };
    if let ConnectionVerdict::Drop { reason } = &*verdict {
        state
            .flows
            .record(FlowRecord { reason: Some(reason.clone()), ..FlowRecord::of(&context, "http", Verdict::Dropped) });
        open.drop_at_accept(&stream);
        return;
    }

    let on_reject = framing_rejected(state.clone(), context.clone());
    let on_head_timeout = {
        let (state, context) = (state.clone(), context.clone());
        move || crate::limits::record_head_timeout(&state, &context, head_timeout)
    };
    match tls {
        // hyper-util's own detection reads through the framing guard (which
        // holds back an incomplete head) with no timer: weir tells the
        // versions apart itself, under the head timeout
        None => match crate::limits::detect_http_version(&stream, head_timeout).await {
            None => on_head_timeout(),
            Some(crate::limits::HttpVersion::Http2) => {
                serve_http(conn, stream, Mode::Http2, head_timeout, on_head_timeout).await
            }
            Some(crate::limits::HttpVersion::Http1) => {
                let io = FramingGuard::new(stream, Detect::Http1, on_reject);
                serve_http(conn, io, Mode::Http1, head_timeout, on_head_timeout).await
            }
        },
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let tls_stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, listener = &*listener, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, listener = &*listener, "TLS handshake timed out");
                    return;
                }
            };
            match tls_stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => serve_http(conn, tls_stream, Mode::Http2, head_timeout, on_head_timeout).await,
                _ => {
                    let io = FramingGuard::new(tls_stream, Detect::Http1, on_reject);
                    serve_http(conn, io, Mode::Http1, head_timeout, on_head_timeout).await
                }
            }
        }
    }
}

/// Flow records for requests the framing guard refused (hyper answers them 400).
fn framing_rejected(state: Arc<ProxyState>, context: Arc<ConnectionContext>) -> impl FnMut(Rejected) + Unpin {
    move |rejected: Rejected| {
        state.metrics.requests.get_or_create(&RequestLabels { protocol: "http", verdict: "error" }).inc();
        state.flows.record(FlowRecord {
            reason: Some("Content-Length together with Transfer-Encoding: refused (400)".into()),
            http: Some(HttpFlow {
                method: rejected.method,
                path: rejected.path,
                host: String::new(),
                version: "HTTP/1.1".into(),
                status: Some(400),
            }),
            ..FlowRecord::of(&context, "http", Verdict::Error)
        });
    }
}

pub(super) enum Mode {
    /// hyper's own version detection: only the framing differential test
    /// serves this way (weir detects the version itself, under the head timeout)
    #[cfg(test)]
    Auto,
    Http1,
    Http2,
}

/// `head_timeout`: how long a request head may take, from when hyper starts
/// waiting for it (so it also ends idle keep-alive connections); `None`: no limit.
async fn serve_http<IO>(
    conn: Arc<HttpConnection>,
    io: IO,
    mode: Mode,
    head_timeout: Option<Duration>,
    on_head_timeout: impl FnOnce(),
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(conn.handle(request).await) }
    });
    if let Err(e) = hyper_builder(mode, head_timeout).serve_connection(TokioIo::new(io), service).await {
        tracing::debug!("connection ended with an error: {e}");
        if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) {
            on_head_timeout();
        }
    }
}

/// hyper's settings for client connections. The HTTP/1 parser limits are
/// set from the framing guard's constants: the guard reads heads as hyper does.
/// `head_timeout`: see `serve_http`.
pub(super) fn hyper_builder(mode: Mode, head_timeout: Option<Duration>) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .keep_alive(true)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES);
    // HTTP/2 flood limits, as Envoy and nginx set them (docs/http.md): rapid
    // reset (CVE-2023-44487) and streams reset for errors end the connection
    // with GOAWAY; header lists are bounded while they are decoded (HPACK
    // bombs, CONTINUATION floods); a peer that stops answering PINGs is cut.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
        .max_header_list_size(H2_MAX_HEADER_LIST_SIZE)
        .max_send_buf_size(H2_MAX_SEND_BUFFER)
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT);
    match mode {
        #[cfg(test)]
        Mode::Auto => builder,
        Mode::Http1 => builder.http1_only(),
        Mode::Http2 => builder.http2_only(),
    }
}
