//! A connection upgraded to another protocol (WebSocket), or turned into a
//! tunnel by CONNECT. Weir judged the request like any other; once the
//! upstream answered 101 (a 2xx to CONNECT), the client's and the
//! upstream's connections are joined and bytes relayed both
//! ways, unjudged, until either side closes (the other is shut down for
//! writing, so a half-close passes), both sides stay quiet for the
//! listener's `idle_timeout`, or a new policy no longer allows the upgrade
//! request (judged again at every policy change; then both sides are closed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::limits::Idle;

/// Bytes read at once in each direction.
const TUNNEL_BUFFER: usize = 16 << 10;

/// A request weir forwards as an upgrade: the protocol asked for (`CONNECT`
/// for a tunnel), and the client's side of the connection once hyper has
/// sent the 101 (the 2xx).
pub struct UpgradeRequest {
    pub protocol: HeaderValue,
    /// A CONNECT: switched by a 2xx, not a 101 naming the protocol.
    pub connect: bool,
    pub client: OnUpgrade,
    /// The request head as the filters first judged it, to judge it again
    /// when the policy changes.
    pub head: Vec<u8>,
}

/// Both ends of a switched connection, waiting to be joined.
pub struct Switched {
    pub protocol: HeaderValue,
    pub connect: bool,
    pub client: OnUpgrade,
    pub upstream: OnUpgrade,
    pub head: Vec<u8>,
}

/// What a tunnel relayed, and why it ended.
pub struct Relayed {
    pub from_client: u64,
    pub from_upstream: u64,
    /// `None`: closed by a side; else why weir ended it.
    pub ended_by: Option<String>,
    /// Ended because the policy no longer allows it.
    pub refused: bool,
}

/// Join the two connections and relay until they are done, or until
/// `refused` says why the policy no longer allows them.
pub async fn relay(
    switched: Switched,
    idle_timeout: Option<Duration>,
    refused: impl std::future::Future<Output = String>,
) -> Relayed {
    let (from_client, from_upstream) = (AtomicU64::new(0), AtomicU64::new(0));
    let (client, upstream) = tokio::join!(switched.client, switched.upstream);
    let (client, upstream) = match (client, upstream) {
        (Ok(client), Ok(upstream)) => (client, upstream),
        (Err(e), _) => return failed(format!("the client's side did not switch: {e}")),
        (_, Err(e)) => return failed(format!("the upstream's side did not switch: {e}")),
    };
    let idle = Idle::default();
    idle.set_timeout(idle_timeout);
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (upstream_read, upstream_write) = tokio::io::split(TokioIo::new(upstream));
    let pumps = async {
        tokio::try_join!(
            pump(client_read, upstream_write, &idle, &from_client),
            pump(upstream_read, client_write, &idle, &from_upstream),
        )
    };
    // refused: the pumps, and with them both connections, are dropped
    let (ended_by, refused) = tokio::select! {
        ended = pumps => (ended.err(), false),
        why = refused => (Some(why), true),
    };
    Relayed {
        from_client: from_client.load(Ordering::Relaxed),
        from_upstream: from_upstream.load(Ordering::Relaxed),
        ended_by,
        refused,
    }
}

fn failed(why: String) -> Relayed {
    Relayed { from_client: 0, from_upstream: 0, ended_by: Some(why), refused: false }
}

/// One direction: read, write on, until the reader's end (then shut the
/// writer down: the other direction may go on), an error or idleness.
async fn pump<R, W>(mut from: R, mut to: W, idle: &Idle, moved: &AtomicU64) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; TUNNEL_BUFFER];
    loop {
        let n = match idle.guard(from.read(&mut buf)).await {
            Err(timeout) => return Err(format!("nothing moved for {} (idle_timeout)", duration(timeout.0))),
            Ok(Err(e)) => return Err(format!("read failed: {e}")),
            Ok(Ok(0)) => {
                let _ = to.shutdown().await;
                return Ok(());
            }
            Ok(Ok(n)) => n,
        };
        moved.fetch_add(n as u64, Ordering::Relaxed);
        match idle.guard(to.write_all(&buf[..n])).await {
            Err(timeout) => return Err(format!("a write waited {} (idle_timeout)", duration(timeout.0))),
            Ok(Err(e)) => return Err(format!("write failed: {e}")),
            Ok(Ok(())) => {}
        }
    }
}

fn duration(d: Duration) -> String {
    crate::units::duration::format(d)
}
