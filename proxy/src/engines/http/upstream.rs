//! Upstream connections: pooled HTTP/1.1 and HTTP/2 clients per upstream
//! (plaintext, HTTP/2 with prior knowledge; or TLS, HTTP/2 by ALPN). The
//! connector dials the listener's upstream whatever the request's
//! authority, so requests keep the authority the client sent (Host /
//! `:authority`) while going where the listener says.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::TrackedBody;
use crate::limits::{IdleUpstreams, Limits, NoUpstreamSlot, UpstreamSlot};
use crate::net::{UpstreamBind, UpstreamTls};

/// Dials one fixed upstream address, with TLS if the listener says so.
#[derive(Clone)]
pub struct UpstreamConnector {
    address: SocketAddr,
    connect_timeout: Duration,
    bind: Option<UpstreamBind>,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// Every upstream socket is counted against the process's descriptors.
    limits: Arc<Limits>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connecting to {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(SocketAddr, std::io::Error),
    #[error("connecting to {0}: {1}")]
    NoSlot(SocketAddr, NoUpstreamSlot),
}

/// A connection to an upstream, plaintext or TLS, with the descriptor
/// slot it holds until it closes.
pub enum UpstreamStream {
    Plain(TcpStream, UpstreamSlot),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>, UpstreamSlot),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        match self {
            UpstreamStream::Plain(_, _) => Connected::new(),
            UpstreamStream::Tls(tls, _) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                Connected::new().negotiated_h2()
            }
            UpstreamStream::Tls(_, _) => Connected::new(),
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s, _) => Pin::new(s).poll_write(cx, data),
            UpstreamStream::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s, _) => s.is_write_vectored(),
            UpstreamStream::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s, _) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = TokioIo<UpstreamStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        Box::pin(self.clone().dial())
    }
}

impl UpstreamConnector {
    /// Connect (and shake hands, for TLS) within the connect timeout.
    async fn dial(self) -> Result<TokioIo<UpstreamStream>, ConnectError> {
        let UpstreamConnector { address, connect_timeout: timeout, bind, tls, limits } = self;
        let slot = limits.upstream_slot_or_make_room().await.map_err(|e| ConnectError::NoSlot(address, e))?;
        let connect = async move {
            match bind {
                None => TcpStream::connect(address).await,
                Some(bind) => bind.connect(address)?.connect(address).await,
            }
        };
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ConnectError::Timeout(address))?
            .map_err(|e| ConnectError::Io(address, e))?;
        let _ = stream.set_nodelay(true);
        let Some((connector, name)) = tls else {
            return Ok(TokioIo::new(UpstreamStream::Plain(stream, slot)));
        };
        // the handshake shares the connect timeout: a peer that accepts
        // and says nothing is as unreachable as one that never answers
        let tls = tokio::time::timeout(timeout, connector.connect(name, stream))
            .await
            .map_err(|_| ConnectError::Timeout(address))?
            .map_err(|e| ConnectError::Tls(address, e))?;
        Ok(TokioIo::new(UpstreamStream::Tls(Box::new(tls), slot)))
    }
}

/// HTTP/2 connections to one upstream (hyper-util's pool: one connection
/// carries every stream, so its per-request costs are not HTTP/1's).
pub type Http2Client = Client<UpstreamConnector, TrackedBody>;

/// The HTTP/1.1 and HTTP/2 pools for one upstream.
pub struct UpstreamPools {
    pub http1: Arc<Http1Pool>,
    pub http2: Http2Client,
}

impl UpstreamPools {
    fn new(key: &UpstreamKey, limits: &Arc<Limits>) -> Self {
        let connector = |tls: Option<&Arc<rustls::ClientConfig>>| UpstreamConnector {
            limits: limits.clone(),
            address: key.address,
            connect_timeout: key.connect_timeout,
            bind: key.bind,
            tls: tls
                .zip(key.tls.as_ref())
                .map(|(config, tls)| (tokio_rustls::TlsConnector::from(config.clone()), tls.server_name.clone())),
        };
        let http1 = Arc::new(Http1Pool::new(connector(key.tls.as_ref().map(|t| &t.http1))));
        let idle: Arc<dyn IdleUpstreams> = http1.clone();
        limits.register_idle(Arc::downgrade(&idle));
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_while_idle(false)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector(key.tls.as_ref().map(|t| &t.http2)));
        UpstreamPools { http1, http2 }
    }
}

/// HTTP/1.1 connections to one upstream, kept open between requests.
///
/// weir's own rather than hyper-util's legacy client: that client spawns a
/// task per request to wait until the connection can take the next one,
/// keys its pool by the request's scheme and authority (cloned and hashed
/// per request) and rewrites every URI. Here a connection goes back to the
/// pool when its response body has ended (`Checkin`), which for HTTP/1.1 is
/// when hyper's connection can take the next request; the rare connection
/// that is not ready by then is waited for by a task of its own. A pool with
/// idle connections has a sweeper that closes the expired ones.
pub struct Http1Pool {
    connector: UpstreamConnector,
    idle: Mutex<Idle>,
}

/// A pool's idle connections, and whether a sweeper watches them.
#[derive(Default)]
struct Idle {
    /// Ready connections, the most recently used last (taken first: warm
    /// connections stay warm, the oldest expire).
    connections: VecDeque<IdleConnection>,
    swept: bool,
}

struct IdleConnection {
    connection: Pooled,
    since: Instant,
}

/// A connection of the pool: what sends on it, and the task that drives
/// it (hyper's side), through which one closed for room is ended at once.
struct Pooled {
    sender: http1::SendRequest<TrackedBody>,
    task: tokio::task::AbortHandle,
}

/// Idle upstream connections older than this are closed (hyper-util's
/// legacy pool used the same; nginx's keep-alive timeout is 75 s and
/// closes its side first, which the pool notices at once).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream at most; the oldest beyond go.
const POOL_MAX_IDLE: usize = 1024;
/// How often a pool with idle connections closes the expired ones.
const POOL_SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How long a connection whose response ended before its request body did
/// may wait for the rest of the body before it is closed instead of pooled.
const POOL_READY_WAIT: Duration = Duration::from_secs(30);

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Http(hyper::Error),
    #[error(transparent)]
    Http2Pool(hyper_util::client::legacy::Error),
}

impl UpstreamError {
    /// The upstream could not be reached at all (weir answers 503).
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Connect(_) => true,
            UpstreamError::Http(_) => false,
            UpstreamError::Http2Pool(e) => e.is_connect(),
        }
    }
}

/// A pooled connection lent to one request: given back when the response
/// body has ended (`give_back`), closed when dropped instead.
pub struct Checkin {
    pool: Weak<Http1Pool>,
    connection: Pooled,
}

impl Checkin {
    /// The response ended cleanly: the connection can take another request
    /// once hyper says so (never after `Connection: close`, a 101, or a
    /// response that ended with the connection).
    pub fn give_back(mut self) {
        if self.connection.sender.is_ready() {
            if let Some(pool) = self.pool.upgrade() {
                pool.put(self.connection);
            }
            return;
        }
        if self.connection.sender.is_closed() {
            return;
        }
        // the request body may still be on its way (the upstream answered
        // early): wait for it off the request's path, for a while
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(POOL_READY_WAIT, self.connection.sender.ready()).await
                && let Some(pool) = self.pool.upgrade()
            {
                pool.put(self.connection);
            }
        });
    }
}

impl Http1Pool {
    fn new(connector: UpstreamConnector) -> Self {
        Http1Pool { connector, idle: Mutex::default() }
    }

    /// Send `request` (origin-form URI, Host set) on a pooled connection or
    /// a new one. A pooled connection the upstream closed meanwhile hands
    /// the request back unsent; it is then sent on a new connection. A
    /// request hyper has begun to write is never sent again.
    pub async fn request(
        self: &Arc<Self>,
        request: Request<TrackedBody>,
    ) -> Result<(Response<Incoming>, Checkin), UpstreamError> {
        let mut request = request;
        if let Some(mut connection) = self.take() {
            match connection.sender.try_send_request(request).await {
                Ok(response) => return Ok((response, Checkin { pool: Arc::downgrade(self), connection })),
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(UpstreamError::Http(failed.into_error())),
                },
            }
        }
        self.request_on_new(request).await
    }

    /// Send `request` on a new connection, never a pooled one (a CONNECT).
    pub async fn request_on_new(
        self: &Arc<Self>,
        request: Request<TrackedBody>,
    ) -> Result<(Response<Incoming>, Checkin), UpstreamError> {
        let mut connection = self.connect().await?;
        match connection.sender.send_request(request).await {
            Ok(response) => Ok((response, Checkin { pool: Arc::downgrade(self), connection })),
            Err(e) => Err(UpstreamError::Http(e)),
        }
    }

    /// Change the idle connections under their lock; the process's count
    /// of idle connections (`Limits`) follows what the change did.
    fn change_idle<R>(&self, change: impl FnOnce(&mut Idle) -> R) -> R {
        let mut idle = self.idle.lock().unwrap();
        let before = idle.connections.len();
        let out = change(&mut idle);
        let after = idle.connections.len();
        let limits = &self.connector.limits;
        if after > before {
            limits.idle_added(after - before);
        } else if after < before {
            limits.idle_removed(before - after);
        }
        out
    }

    /// The most recently used connection still open, if any.
    fn take(&self) -> Option<Pooled> {
        self.change_idle(|idle| {
            while let Some(IdleConnection { connection, since }) = idle.connections.pop_back() {
                if connection.sender.is_ready() && since.elapsed() < POOL_IDLE_TIMEOUT {
                    return Some(connection);
                }
            }
            None
        })
    }

    fn put(self: &Arc<Self>, connection: Pooled) {
        self.change_idle(|idle| {
            idle.connections.push_back(IdleConnection { connection, since: Instant::now() });
            // past the bound, the oldest goes (dropped: closed); the expired
            // ones are the sweeper's
            if idle.connections.len() > POOL_MAX_IDLE {
                idle.connections.pop_front();
            }
            // a pool that goes quiet must still close what expires in it
            if !idle.swept
                && let Ok(runtime) = tokio::runtime::Handle::try_current()
            {
                idle.swept = true;
                runtime.spawn(Self::sweep(Arc::downgrade(self)));
            }
        })
    }

    /// Close expired and closed idle connections every `POOL_SWEEP_EVERY`
    /// until the pool has none (the next `put` starts a sweeper again) or
    /// is dropped.
    async fn sweep(pool: Weak<Self>) {
        loop {
            tokio::time::sleep(POOL_SWEEP_EVERY).await;
            let Some(pool) = pool.upgrade() else { return };
            let emptied = pool.change_idle(|idle| {
                idle.connections.retain(|c| !c.connection.sender.is_closed() && c.since.elapsed() < POOL_IDLE_TIMEOUT);
                idle.swept = !idle.connections.is_empty();
                !idle.swept
            });
            if emptied {
                return;
            }
        }
    }

    /// A new connection; hyper's side of it runs in a task of its own
    /// (with upgrades: a WebSocket takes the connection over after a 101).
    async fn connect(&self) -> Result<Pooled, UpstreamError> {
        let io = self.connector.clone().dial().await?;
        let (sender, connection) = http1::Builder::new().handshake(io).await.map_err(UpstreamError::Http)?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        Ok(Pooled { sender, task: task.abort_handle() })
    }

    /// Idle connections held now.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().unwrap().connections.len()
    }
}

impl IdleUpstreams for Http1Pool {
    fn close_idle(&self, n: usize) -> usize {
        self.change_idle(|idle| {
            let n = n.min(idle.connections.len());
            // the longest idle first, ended now: its descriptor is wanted
            idle.connections.drain(..n).map(|idle| idle.connection.task.abort()).count()
        })
    }

    fn idle_since(&self) -> Option<std::time::Instant> {
        self.idle.lock().unwrap().connections.front().map(|idle| idle.since.into_std())
    }
}

impl Drop for Http1Pool {
    fn drop(&mut self) {
        let idle = self.idle.get_mut().map_or(0, |idle| idle.connections.len());
        self.connector.limits.idle_removed(idle);
    }
}

/// How weir reaches an upstream; pools are kept per value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamKey {
    pub address: SocketAddr,
    pub connect_timeout: Duration,
    /// The client pod's address and mark, for a transparent connection.
    pub bind: Option<UpstreamBind>,
    pub tls: Option<Arc<UpstreamTls>>,
}

/// Pools by [`UpstreamKey`]; they outlive policy reloads so warm upstream
/// connections survive them.
#[derive(Default)]
pub struct UpstreamRegistry {
    pools: Mutex<HashMap<UpstreamKey, Arc<UpstreamPools>>>,
}

/// Transparent pools (one per client pod and destination) beyond this many
/// are dropped at the next reload; their idle connections close.
const MAX_TRANSPARENT_POOLS: usize = 10_000;

impl UpstreamRegistry {
    pub fn get(&self, key: UpstreamKey, limits: &Arc<Limits>) -> Arc<UpstreamPools> {
        let mut pools = self.pools.lock().unwrap();
        if let Some(pools) = pools.get(&key) {
            return pools.clone();
        }
        let made = Arc::new(UpstreamPools::new(&key, limits));
        pools.insert(key, made.clone());
        made
    }

    /// Drop pools no listener uses any more (transparent ones stay, up to a
    /// bound: the datapath may send the same pod there again).
    pub fn retain(&self, in_use: &[UpstreamKey]) {
        let mut pools = self.pools.lock().unwrap();
        let transparent = pools.keys().filter(|k| k.bind.is_some()).count();
        pools.retain(|key, _| match key.bind {
            Some(_) => transparent <= MAX_TRANSPARENT_POOLS,
            None => in_use.contains(key),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection as hyper's client sees it, to an in-memory peer that
    /// never speaks: ready for a request until its peer goes.
    async fn idle_connection() -> (Pooled, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let (mut sender, connection) = http1::handshake(TokioIo::new(ours)).await.unwrap();
        let task = tokio::spawn(connection).abort_handle();
        sender.ready().await.unwrap();
        (Pooled { sender, task }, theirs)
    }

    fn pool() -> Arc<Http1Pool> {
        let connector = UpstreamConnector {
            address: "127.0.0.1:9".parse().unwrap(),
            connect_timeout: Duration::from_secs(1),
            bind: None,
            tls: None,
            limits: Limits::new(crate::limits::Descriptors::for_limit(256)),
        };
        Arc::new(Http1Pool::new(connector))
    }

    #[tokio::test]
    async fn idle_connections_closed_for_room_end_at_once_the_longest_idle_first() {
        use tokio::io::AsyncReadExt as _;
        let pool = pool();
        let (first, mut peer1) = idle_connection().await;
        let (second, mut peer2) = idle_connection().await;
        pool.put(first);
        pool.put(second);
        assert_eq!(pool.close_idle(1), 1);
        assert_eq!(pool.idle_count(), 1);
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(1), peer1.read(&mut byte)).await;
        assert_eq!(read.expect("ended, not left for its task's next turn").unwrap(), 0);
        let read = tokio::time::timeout(Duration::from_millis(100), peer2.read(&mut byte)).await;
        assert!(read.is_err(), "the other stays open");
        assert_eq!(pool.close_idle(5), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_close_when_they_expire_though_no_request_comes() {
        let pool = pool();
        let (first, _peer1) = idle_connection().await;
        let (second, _peer2) = idle_connection().await;
        pool.put(first);
        pool.put(second);
        assert_eq!(pool.idle_count(), 2);
        tokio::time::sleep(POOL_IDLE_TIMEOUT - POOL_SWEEP_EVERY).await;
        assert_eq!(pool.idle_count(), 2, "not expired yet");
        tokio::time::sleep(POOL_SWEEP_EVERY * 2).await;
        assert_eq!(pool.idle_count(), 0, "expired with no request to notice");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_its_peer_closed_is_not_taken() {
        let pool = pool();
        let (gone, peer) = idle_connection().await;
        let (open, _peer) = idle_connection().await;
        pool.put(open);
        pool.put(gone);
        drop(peer);
        // hyper's connection task reads the end of the stream
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let taken = pool.take().expect("the open connection");
        assert!(!taken.sender.is_closed());
        assert!(pool.take().is_none(), "the closed one was dropped, not lent");
    }
}
