//! Upstream connections: pooled HTTP/1.1 and HTTP/2 clients per upstream
//! (plaintext, HTTP/2 with prior knowledge; or TLS, HTTP/2 by ALPN). The
//! connector dials the listener's upstream whatever the request's
//! authority, so requests keep the authority the client sent (Host /
//! `:authority`) while going where the listener says.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::net::{UpstreamBind, UpstreamTls};

/// Dials one fixed upstream address, with TLS if the listener says so.
#[derive(Clone)]
pub struct UpstreamConnector {
    address: SocketAddr,
    connect_timeout: Duration,
    bind: Option<UpstreamBind>,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connecting to {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(SocketAddr, std::io::Error),
}

/// A connection to an upstream, plaintext or TLS.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        match self {
            UpstreamStream::Plain(_) => Connected::new(),
            UpstreamStream::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                Connected::new().negotiated_h2()
            }
            UpstreamStream::Tls(_) => Connected::new(),
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, data),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
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
        let (address, timeout, bind, tls) = (self.address, self.connect_timeout, self.bind, self.tls.clone());
        Box::pin(async move {
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
                return Ok(TokioIo::new(UpstreamStream::Plain(stream)));
            };
            // the handshake shares the connect timeout: a peer that accepts
            // and says nothing is as unreachable as one that never answers
            let tls = tokio::time::timeout(timeout, connector.connect(name, stream))
                .await
                .map_err(|_| ConnectError::Timeout(address))?
                .map_err(|e| ConnectError::Tls(address, e))?;
            Ok(TokioIo::new(UpstreamStream::Tls(Box::new(tls))))
        })
    }
}

pub type UpstreamClient = Client<UpstreamConnector, super::body::TrackedBody>;

/// The HTTP/1.1 and HTTP/2 pools for one upstream.
pub struct UpstreamPools {
    pub http1: UpstreamClient,
    pub http2: UpstreamClient,
}

impl UpstreamPools {
    fn new(key: &UpstreamKey) -> Self {
        let connector = |tls: Option<&Arc<rustls::ClientConfig>>| UpstreamConnector {
            address: key.address,
            connect_timeout: key.connect_timeout,
            bind: key.bind,
            tls: tls
                .zip(key.tls.as_ref())
                .map(|(config, tls)| (tokio_rustls::TlsConnector::from(config.clone()), tls.server_name.clone())),
        };
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector(key.tls.as_ref().map(|t| &t.http1)));
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_while_idle(false)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector(key.tls.as_ref().map(|t| &t.http2)));
        UpstreamPools { http1, http2 }
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
    pub fn get(&self, key: UpstreamKey) -> Arc<UpstreamPools> {
        let mut pools = self.pools.lock().unwrap();
        if let Some(pools) = pools.get(&key) {
            return pools.clone();
        }
        let made = Arc::new(UpstreamPools::new(&key));
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
