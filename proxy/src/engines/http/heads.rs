//! The limits on an HTTP connection's request heads and idle HTTP/2
//! connections (the values are in `limits.rs`), and the flows of connections
//! they close.

use std::time::Duration;

use crate::limits::ListenerLimits;

/// The limits of the listener an HTTP connection came in on (the request-head
/// timeout for HTTP/1; the idle timeout for HTTP/2: HTTP/1 keep-alive
/// connections end at the head timeout).
pub fn http_limits(state: &crate::engines::state::ProxyState, target: &crate::context::Target) -> ListenerLimits {
    let model = state.model.load();
    let listener = match target {
        crate::context::Target::Listener(name) => model.listeners.get(&**name).map(|l| l.config.limits.clone()),
        crate::context::Target::Transparent { .. } => None,
    };
    ListenerLimits::of(&model.config.limits, &listener.unwrap_or_default())
}

/// The flow of an HTTP/2 connection that started no request for
/// `idle_timeout`: it is shut down gracefully (GOAWAY; streams still open
/// finish first).
pub fn record_http2_idle(
    state: &crate::engines::state::ProxyState,
    context: &crate::context::ConnectionContext,
    timeout: Duration,
) {
    let labels = crate::observe::metrics::ListenerLabels { listener: context.listener.to_string() };
    state.metrics.connections_closed_idle.get_or_create(&labels).inc();
    state.flows.record(crate::observe::flow::FlowRecord {
        reason: Some(format!(
            "no HTTP/2 request for {} (idle_timeout): connection shut down with GOAWAY",
            crate::units::duration::format(timeout)
        )),
        ..crate::observe::flow::FlowRecord::of(
            context,
            crate::protocol::Protocol::Http,
            crate::observe::flow::Verdict::Error,
        )
    });
}

/// What a plaintext HTTP client speaks, told by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    /// HTTP/2 with prior knowledge: the connection preface.
    Http2,
}

/// Wait (at most `timeout`) until the first bytes tell HTTP/1 from the
/// HTTP/2 preface; `None`: they did not come in time (a client that connects
/// and sends nothing, or stops inside the preface). A peer that closes or
/// fails reads as HTTP/1, whose server then sees the end itself.
pub async fn detect_http_version(stream: &tokio::net::TcpStream, timeout: Option<Duration>) -> Option<HttpVersion> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let detect = async {
        let mut first = [0u8; PREFACE.len()];
        loop {
            let n = match stream.peek(&mut first).await {
                Ok(n) => n,
                Err(_) => return HttpVersion::Http1,
            };
            if n == 0 || first[..n] != PREFACE[..n] {
                return HttpVersion::Http1;
            }
            if n == PREFACE.len() {
                return HttpVersion::Http2;
            }
            // a prefix of the preface (rare): look again shortly
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    match timeout {
        Some(timeout) => tokio::time::timeout(timeout, detect).await.ok(),
        None => Some(detect.await),
    }
}

/// The flow of an HTTP connection closed because no whole request head came
/// within `request_head_timeout` (hyper's timer, or the version wait).
pub fn record_head_timeout(
    state: &crate::engines::state::ProxyState,
    context: &crate::context::ConnectionContext,
    timeout: Option<Duration>,
) {
    let labels = crate::observe::metrics::ListenerLabels { listener: context.listener.to_string() };
    state.metrics.connections_closed_idle.get_or_create(&labels).inc();
    let timeout = timeout.map_or_else(|| "its timeout".into(), crate::units::duration::format);
    state.flows.record(crate::observe::flow::FlowRecord {
        reason: Some(format!("no whole request head within {timeout} (request_head_timeout): connection closed")),
        ..crate::observe::flow::FlowRecord::of(
            context,
            crate::protocol::Protocol::Http,
            crate::observe::flow::Verdict::Error,
        )
    });
}
