//! Upstream connections: pooled HTTP/1.1 and HTTP/2 (prior knowledge) clients
//! per upstream address. The connector dials the listener's upstream whatever
//! the request's authority, so requests keep the authority the client sent
//! (Host / `:authority`) while going where the listener says.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

/// Dials one fixed upstream address.
#[derive(Clone, Debug)]
pub struct UpstreamConnector {
    address: SocketAddr,
    connect_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connecting to {0}: {1}")]
    Io(SocketAddr, std::io::Error),
}

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (address, timeout) = (self.address, self.connect_timeout);
        Box::pin(async move {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
                .await
                .map_err(|_| ConnectError::Timeout(address))?
                .map_err(|e| ConnectError::Io(address, e))?;
            let _ = stream.set_nodelay(true);
            Ok(TokioIo::new(stream))
        })
    }
}

pub type UpstreamClient = Client<UpstreamConnector, super::service::TrackedBody>;

/// The HTTP/1.1 and HTTP/2 pools for one upstream.
pub struct UpstreamPools {
    pub http1: UpstreamClient,
    pub http2: UpstreamClient,
}

impl UpstreamPools {
    fn new(address: SocketAddr, connect_timeout: Duration) -> Self {
        let connector = UpstreamConnector { address, connect_timeout };
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_while_idle(false)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        UpstreamPools { http1, http2 }
    }
}

/// Pools by (address, connect timeout); they outlive policy reloads so warm
/// upstream connections survive them.
#[derive(Default)]
pub struct UpstreamRegistry {
    pools: Mutex<HashMap<(SocketAddr, Duration), Arc<UpstreamPools>>>,
}

impl UpstreamRegistry {
    pub fn get(&self, address: SocketAddr, connect_timeout: Duration) -> Arc<UpstreamPools> {
        self.pools
            .lock()
            .unwrap()
            .entry((address, connect_timeout))
            .or_insert_with(|| Arc::new(UpstreamPools::new(address, connect_timeout)))
            .clone()
    }

    /// Drop pools no listener uses any more.
    pub fn retain(&self, in_use: &[(SocketAddr, Duration)]) {
        self.pools.lock().unwrap().retain(|key, _| in_use.contains(key));
    }
}
