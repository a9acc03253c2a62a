//! Serving one accepted connection: TLS (ALPN h2 or http/1.1) or plaintext
//! (HTTP/1.1, or HTTP/2 with prior knowledge, told apart by the preface).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::body::ProxyBody;
use super::framing::{Answered, Answers, Detect, FramingGuard, MAX_HEAD_BYTES, MAX_HEADERS, Rejected, UpgradeGate};
use super::rest::{Lent, Readiness, Returned};
use super::service::HttpConnection;
use crate::context::ConnectionContext;
use crate::context::Target;
use crate::context::next_connection_id;
use crate::engines::state::ProxyState;
use crate::model::ConnectionVerdict;
use crate::observe::flow::{FlowDetail, FlowRecord, HttpFlow, Verdict};
use crate::observe::metrics::RequestLabels;

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
    let open = crate::engines::state::OpenConnection::new(&state, &listener);

    let tls = match &target {
        Target::Listener(name) => {
            let model = state.model.load();
            let Some(listener_model) = model.listeners.get(&**name) else { return };
            listener_model.tls.clone()
        }
        Target::Transparent { .. } => None,
    };
    let limits = crate::engines::http::heads::http_limits(&state, &target);
    let (head_timeout, idle_timeout) = (limits.request_head_timeout, limits.idle_timeout);
    let _ = stream.set_nodelay(true);
    let conn = Arc::new(HttpConnection::new(state.clone(), target, peer, next_connection_id(), tls.is_some()));

    // L3/L4 first: in the datapath a denied SYN never reaches the proxy.
    let Some((verdict, context)) = conn.accept_verdict() else { return };
    if let ConnectionVerdict::Drop { reason } = &*verdict {
        state.flows.record(FlowRecord {
            reason: Some(reason.clone()),
            ..FlowRecord::of(&context, crate::protocol::Protocol::Http, Verdict::Dropped)
        });
        open.drop_at_accept(&stream);
        return;
    }

    let on_reject = framing_rejected(state.clone(), context.clone());
    let on_head_timeout = {
        let (state, context) = (state.clone(), context.clone());
        move || crate::engines::http::heads::record_head_timeout(&state, &context, head_timeout)
    };
    let http2_idle = {
        let (state, context) = (state.clone(), context.clone());
        Http2Idle {
            timeout: idle_timeout,
            on_idle: Box::new(move |timeout| crate::engines::http::heads::record_http2_idle(&state, &context, timeout)),
        }
    };
    match tls {
        // hyper-util's own detection reads through the framing guard (which
        // holds back an incomplete head) with no timer: weir tells the
        // versions apart itself, under the head timeout
        None => match crate::engines::http::heads::detect_http_version(&stream, head_timeout).await {
            None => on_head_timeout(),
            // boxed (as TLS below): a task's size is that of its largest
            // state, and plaintext HTTP/1 connections are the many
            Some(crate::engines::http::heads::HttpVersion::Http2) => {
                Box::pin(serve_http2(conn, stream, head_timeout, on_head_timeout, http2_idle)).await
            }
            Some(crate::engines::http::heads::HttpVersion::Http1) => {
                serve_http1(conn, stream, on_reject, head_timeout, on_head_timeout, resting_gauge(&state, &listener))
                    .await
            }
        },
        Some(config) => {
            let resting = resting_gauge(&state, &listener);
            let http1 = (on_reject, resting);
            Box::pin(serve_tls(conn, stream, config, http1, head_timeout, on_head_timeout, http2_idle)).await
        }
    }
}

/// A TLS listener's connection: the handshake, then the protocol ALPN agreed.
async fn serve_tls<F>(
    conn: Arc<HttpConnection>,
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    (on_reject, resting): (F, Gauge),
    head_timeout: Option<Duration>,
    on_head_timeout: impl Fn(),
    http2_idle: Http2Idle,
) where
    F: FnMut(Rejected) + Unpin + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls_stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let (peer, listener) = conn.peer_and_listener();
            tracing::debug!(%peer, listener = &*listener, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            let (peer, listener) = conn.peer_and_listener();
            tracing::debug!(%peer, listener = &*listener, "TLS handshake timed out");
            return;
        }
    };
    match tls_stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => serve_http2(conn, tls_stream, head_timeout, on_head_timeout, http2_idle).await,
        _ => serve_http1(conn, tls_stream, on_reject, head_timeout, on_head_timeout, resting).await,
    }
}

/// Flow records for requests the framing guard refused (hyper answers them 400).
fn framing_rejected(state: Arc<ProxyState>, context: Arc<ConnectionContext>) -> impl FnMut(Rejected) + Unpin {
    move |rejected: Rejected| {
        state.metrics.requests.get_or_create(&RequestLabels { protocol: "http", verdict: "error" }).inc();
        state.flows.record(FlowRecord {
            reason: Some("Content-Length together with Transfer-Encoding: refused (400)".into()),
            detail: Some(FlowDetail::Http(HttpFlow {
                method: rejected.method,
                path: rejected.path,
                host: String::new(),
                version: "HTTP/1.1".into(),
                status: Some(400),
                ..Default::default()
            })),
            ..FlowRecord::of(&context, crate::protocol::Protocol::Http, Verdict::Error)
        });
    }
}

pub(super) enum Mode {
    /// hyper's own version detection: only the framing differential test
    /// serves this way (weir detects the version itself, under the head timeout)
    #[cfg(test)]
    Auto,
    Http2,
}

/// How long an idle HTTP/2 connection has to finish its GOAWAY exchange.
const HTTP2_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Streams open on one HTTP/2 connection, and when the last one ended or a
/// new one started.
#[derive(Default)]
struct StreamActivity {
    open: std::sync::atomic::AtomicUsize,
    idle: crate::limits::Idle,
}

impl StreamActivity {
    /// Resolves when no stream has been open for the idle timeout (never
    /// when there is none).
    async fn idle_for(&self) -> Duration {
        loop {
            if let Err(timeout) = self.idle.guard(std::future::pending::<()>()).await {
                if self.open.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                    return timeout.0;
                }
                self.idle.touch();
            }
        }
    }
}

/// One request's stream, from its head to the end of its response body.
struct OpenStream(Arc<StreamActivity>);

impl OpenStream {
    fn new(activity: &Arc<StreamActivity>) -> Self {
        activity.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        activity.idle.touch();
        OpenStream(activity.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.0.idle.touch();
    }
}

/// A response body that keeps its stream counted as open (HTTP/2), and
/// counts its response as finished (HTTP/1), until hyper drops it.
struct CountedBody {
    body: ProxyBody,
    _open: Option<OpenStream>,
    _answered: Option<Answered>,
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = super::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// An HTTP/2 connection that starts no request for `timeout` is shut down
/// gracefully (hyper's HTTP/2 server has no idle timeout of its own; its
/// PINGs only find dead peers, not idle ones).
struct Http2Idle {
    timeout: Option<Duration>,
    on_idle: Box<dyn FnOnce(Duration) + Send>,
}

/// The service hyper calls for each request of one client connection.
/// `activity`: streams counted for HTTP/2's idle timeout; `gate`: where
/// HTTP/1 tells the framing guard how a request hyper may upgrade after was
/// answered; `answers`: responses counted as finished for the guard's rest.
fn exchange_service(
    conn: Arc<HttpConnection>,
    activity: Option<Arc<StreamActivity>>,
    gate: Option<Arc<UpgradeGate>>,
    answers: Option<Answers>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<CountedBody>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    let http1 = gate.is_some();
    service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let open = activity.as_ref().map(OpenStream::new);
        let answered = answers.as_ref().map(Answers::mark);
        let conn = conn.clone();
        // hyper may switch protocols after this request: the framing
        // guard waits for the answer before reading on
        let gate = gate.clone().filter(|_| request.extensions().get::<hyper::upgrade::OnUpgrade>().is_some());
        let connect = request.method() == http::Method::CONNECT;
        // boxed: for HTTP/2 hyper spawns a task per stream holding this
        // future, and moving the whole exchange's state into it was the
        // largest copy of an h2 request (h2 +11% rps; HTTP/1.1, which
        // keeps it in its dispatcher, the same within noise)
        let exchange = Box::pin(conn.clone().handle(request));
        async move {
            let mut response = exchange.await.map(|body| CountedBody { body, _open: open, _answered: answered });
            // hyper switches after a 101, and after a 2xx to a CONNECT
            let status = response.status();
            let switched = status == http::StatusCode::SWITCHING_PROTOCOLS || (connect && status.is_success());
            if let Some(gate) = gate {
                gate.answered(switched);
            }
            // a weir handing over: the client's next request opens a new
            // connection (to the new weir) instead of racing a close
            if http1 && conn.is_draining() && !switched {
                response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    })
}

/// HTTP/1.1, through the framing guard. hyper serves while the client sends
/// requests; when the client is quiet between them, the guard ends hyper's
/// connection and the connection rests as its socket alone (`rest.rs`)
/// until the client speaks again (a new hyper connection reads on), the
/// head timeout passes (hyper's would have, too: it counts from the end of
/// the last response), or weir drains.
async fn serve_http1<IO, F>(
    conn: Arc<HttpConnection>,
    io: IO,
    on_reject: F,
    head_timeout: Option<Duration>,
    on_head_timeout: impl Fn(),
    resting: Gauge,
) where
    IO: AsyncRead + AsyncWrite + Readiness + Unpin + Send + 'static,
    F: FnMut(Rejected) + Unpin + Send + 'static,
{
    let gate = Arc::new(UpgradeGate::default());
    let mut guard = FramingGuard::with_upgrades(io, Detect::Http1, on_reject, gate.clone());
    let rest_after = head_timeout.map_or(REST_AFTER, |timeout| REST_AFTER.min(timeout / 2));
    let answers = guard.rest_between_requests(rest_after);
    let service = exchange_service(conn.clone(), None, Some(gate), Some(answers));
    let mut draining = conn.draining();
    let returned: Returned<IO, F> = Arc::default();
    loop {
        guard.wake();
        let lent = Lent::new(guard, returned.clone());
        // a new hyper connection's head timeout is whole again: its timer
        // covers every later head on it too, which a rest's leftover would cut
        let connection = http1_builder(head_timeout).serve_connection(TokioIo::new(lent), service.clone());
        // boxed: a resting connection keeps none of hyper's state
        let result = drive(Box::pin(connection.with_upgrades()), &mut draining, true, None).await;
        let Some(rested) = returned.lock().unwrap().take() else {
            ended(result, &on_head_timeout);
            break;
        };
        guard = rested;
        let _counted = Counted::new(&resting);
        // hyper's timer would have run from when its wait for a head began
        let waiting_since = guard.quiet_since().unwrap_or_else(tokio::time::Instant::now);
        let head_deadline = head_timeout.map(|timeout| waiting_since + timeout);
        let head_timed_out = async {
            match head_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = guard.get_ref().readable() => {}
            () = head_timed_out => {
                on_head_timeout();
                return;
            }
            () = drain_started(&mut draining, true) => {
                guard.wake();
                let _ = tokio::time::timeout(HTTP2_SHUTDOWN_GRACE, guard.shutdown()).await;
                return;
            }
        }
    }
    finish_switched(&conn).await;
}

/// The listener's count of resting connections.
fn resting_gauge(state: &ProxyState, listener: &str) -> Gauge {
    let labels = crate::observe::metrics::ListenerLabels { listener: listener.to_string() };
    state.metrics.resting_connections.get_or_create(&labels).clone()
}

/// Counted in a gauge while it lives.
struct Counted<'a>(&'a Gauge);

impl<'a> Counted<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Counted(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How long an HTTP/1 connection is quiet between requests before it rests
/// (at most half the head timeout).
const REST_AFTER: Duration = Duration::from_secs(1);

/// HTTP/2 (TLS with ALPN h2, or prior knowledge).
async fn serve_http2<IO>(
    conn: Arc<HttpConnection>,
    io: IO,
    head_timeout: Option<Duration>,
    on_head_timeout: impl Fn(),
    http2_idle: Http2Idle,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // a stream open or started is activity; bytes alone are not (weir's own
    // keep-alive PINGs are answered by idle peers too)
    let activity = Arc::new(StreamActivity::default());
    activity.idle.set_timeout(http2_idle.timeout);
    let counted = http2_idle.timeout.map(|_| activity.clone());
    let service = exchange_service(conn.clone(), counted, None, None);
    let mut draining = conn.draining();
    let mut builder = hyper_builder(Mode::Http2, head_timeout);
    if let Some(streams) = conn.http2_stream_bound() {
        builder.http2().max_concurrent_streams(streams);
    }
    let connection = builder.serve_connection(TokioIo::new(io), service);
    ended(drive(connection, &mut draining, false, Some((&activity, http2_idle))).await, &on_head_timeout);
    finish_switched(&conn).await;
}

/// hyper's connection ended: a head that did not come in time has its flow.
fn ended(result: Result<(), Box<dyn std::error::Error + Send + Sync>>, on_head_timeout: &impl Fn()) {
    if let Err(e) = result {
        tracing::debug!("connection ended with an error: {e}");
        if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) {
            on_head_timeout();
        }
    }
}

/// After hyper's connection ended: a switched connection is served (and
/// counted open) until its relay ends; a connection that ended after an
/// upgrade weir declined is closed properly.
async fn finish_switched(conn: &HttpConnection) {
    if let Some(relay) = conn.take_tunnel() {
        let _ = relay.await;
    }
    // hyper hands a connection that ended after a declined upgrade (or a
    // CONNECT) to that upgrade instead of shutting it down: close it
    // properly (a TLS client expects its close_notify)
    if let Some(declined) = conn.take_declined_upgrade()
        && let Ok(Ok(upgraded)) = tokio::time::timeout(HTTP2_SHUTDOWN_GRACE, declined).await
    {
        let _ = tokio::time::timeout(HTTP2_SHUTDOWN_GRACE, TokioIo::new(upgraded).shutdown()).await;
    }
}

/// A hyper connection `drive` serves: one that can shut down gracefully.
trait Graceful: Future<Output = Result<(), Self::Error>> {
    type Error: Into<Box<dyn std::error::Error + Send + Sync>>;
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<C: Graceful + ?Sized> Graceful for Pin<Box<C>> {
    type Error = C::Error;
    fn graceful_shutdown(self: Pin<&mut Self>) {
        self.get_mut().as_mut().graceful_shutdown()
    }
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    Self: Future<Output = hyper::Result<()>>,
{
    type Error = hyper::Error;
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S, E, B> Graceful for auto::Connection<'_, I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper_util::server::conn::auto::HttpServerConnExec<S::Future, B>,
    Self: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    type Error = Box<dyn std::error::Error + Send + Sync>;
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::Connection::graceful_shutdown(self)
    }
}

/// Serve the connection until it ends, drains or (HTTP/2, `idle`) idles.
async fn drive<C: Graceful>(
    connection: C,
    draining: &mut tokio::sync::watch::Receiver<bool>,
    http1: bool,
    idle: Option<(&StreamActivity, Http2Idle)>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tokio::pin!(connection);
    let (activity, http2_idle) = idle.unzip();
    let idle_for = async {
        match activity {
            Some(activity) => activity.idle_for().await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        // draining (`handover`): HTTP/2 says GOAWAY at once (streams in
        // flight finish, new ones go elsewhere); HTTP/1 first answers with
        // `Connection: close` (above), and after a grace closes what is idle
        () = drain_started(draining, http1) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        timeout = idle_for => {
            if let Some(http2_idle) = http2_idle {
                (http2_idle.on_idle)(timeout);
            }
            connection.as_mut().graceful_shutdown();
            // nothing is in flight: a peer that does not finish the shutdown
            // (answer its PING) within the grace is closed
            match tokio::time::timeout(HTTP2_SHUTDOWN_GRACE, connection).await {
                Ok(result) => result,
                Err(_) => Ok(()),
            }
        }
    };
    result.map_err(Into::into)
}

/// How long a draining weir lets an HTTP/1 client's next request arrive on
/// a connection (and learn `Connection: close`) before closing it idle.
const HTTP1_DRAIN_GRACE: Duration = Duration::from_secs(1);

async fn drain_started(draining: &mut tokio::sync::watch::Receiver<bool>, http1: bool) {
    crate::handover::stopped(draining).await;
    if http1 {
        tokio::time::sleep(HTTP1_DRAIN_GRACE).await;
    }
}

/// hyper's HTTP/1 server for client connections. The parser limits are set
/// from the framing guard's constants: the guard reads heads as hyper does
/// (`hyper_builder` sets the same on the auto builder).
pub(super) fn http1_builder(head_timeout: Option<Duration>) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .keep_alive(true)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
}

/// hyper's settings for client connections: HTTP/2 (and, in tests, both
/// versions as hyper-util tells them apart). The HTTP/1 parser limits are
/// set from the framing guard's constants, as in `http1_builder`.
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
        Mode::Http2 => builder.http2_only(),
    }
}
