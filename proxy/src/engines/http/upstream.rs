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

use crate::net::UpstreamBind;

/// Dials one fixed upstream address.
#[derive(Clone, Debug)]
pub struct UpstreamConnector {
    address: SocketAddr,
    connect_timeout: Duration,
    bind: Option<UpstreamBind>,
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
        let (address, timeout, bind) = (self.address, self.connect_timeout, self.bind);
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
            Ok(TokioIo::new(stream))
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
    fn new(address: SocketAddr, connect_timeout: Duration, bind: Option<UpstreamBind>) -> Self {
        let connector = UpstreamConnector { address, connect_timeout, bind };
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

type PoolKey = (SocketAddr, Duration, Option<UpstreamBind>);

/// Pools by (address, connect timeout, source binding); they outlive policy
/// reloads so warm upstream connections survive them.
#[derive(Default)]
pub struct UpstreamRegistry {
    pools: Mutex<HashMap<PoolKey, Arc<UpstreamPools>>>,
}

/// Transparent pools (one per client pod and destination) beyond this many
/// are dropped at the next reload; their idle connections close.
const MAX_TRANSPARENT_POOLS: usize = 10_000;

impl UpstreamRegistry {
    pub fn get(
        &self,
        address: SocketAddr,
        connect_timeout: Duration,
        bind: Option<UpstreamBind>,
    ) -> Arc<UpstreamPools> {
        self.pools
            .lock()
            .unwrap()
            .entry((address, connect_timeout, bind))
            .or_insert_with(|| Arc::new(UpstreamPools::new(address, connect_timeout, bind)))
            .clone()
    }

    /// Drop pools no listener uses any more (transparent ones stay, up to a
    /// bound: the datapath may send the same pod there again).
    pub fn retain(&self, in_use: &[(SocketAddr, Duration)]) {
        let mut pools = self.pools.lock().unwrap();
        let transparent = pools.keys().filter(|k| k.2.is_some()).count();
        pools.retain(|key, _| match key.2 {
            Some(_) => transparent <= MAX_TRANSPARENT_POOLS,
            None => in_use.contains(&(key.0, key.1)),
        });
    }
}
