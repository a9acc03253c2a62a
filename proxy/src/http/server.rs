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

use super::framing::{FramingGuard, Rejected};
use super::service::HttpConnection;
use crate::context::ConnectionContext;
use crate::context::Target;
use crate::context::next_connection_id;
use crate::flow::{FlowRecord, HttpFlow, Verdict};
use crate::metrics::RequestLabels;
use crate::model::ConnectionVerdict;
use crate::state::ProxyState;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
                let io = FramingGuard::new(stream, on_reject);
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
                    let io = FramingGuard::new(tls_stream, on_reject);
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

enum Mode {
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(head_timeout).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(1000);
    let builder = match mode {
        Mode::Http1 => builder.http1_only(),
        Mode::Http2 => builder.http2_only(),
    };
    if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
        tracing::debug!("connection ended with an error: {e}");
        if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) {
            on_head_timeout();
        }
    }
}
