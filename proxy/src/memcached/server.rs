//! One memcached client connection, relayed to one server connection.
//!
//! The request half frames requests, asks the filter chain about each and
//! forwards the allowed ones; the response half keeps replies in request
//! order, writing weir's refusals where their turn comes. memcached answers
//! in order, so the only puzzle is quiet requests (`noreply`, meta `q`,
//! binary `...q`), which are answered only sometimes: weir does not wait for
//! them, relays any late answer as it comes, and before a refusal that
//! follows one it sends the server a barrier (`mn`, binary `noop`) whose
//! answer it swallows, so the refusal cannot overtake their answers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use super::codec::{self, FrameError, Protocol, Reply, Request};
use crate::config::ListenerProtocol;
use crate::context::Target;
use crate::flow::{FlowRecord, MemcachedFlow, Verdict};
use crate::metrics::{MemcachedLabels, RequestLabels};
use crate::model::ConnectionVerdict;
use crate::relay::{self, Snapshot};
use crate::state::{OpenConnection, ProxyState};
use crate::wasm::{ConnectionView, FailurePolicy, memcached as wit};

/// Requests judged and not yet answered; beyond it the client waits.
const MAX_IN_FLIGHT: usize = 1024;
const READ_CHUNK: usize = 64 << 10;

/// What the response half must send next, in request order.
enum Pending {
    /// The server answers this request.
    Server { reply: Reply, opcode: u8, opaque: u32, flow: Box<FlowRecord>, started: Instant },
    /// Weir's barrier: its answer is swallowed.
    Barrier,
    /// Weir answered (a refusal): these bytes.
    Local { response: Vec<u8> },
}

struct Connection(relay::Connection);

impl std::ops::Deref for Connection {
    type Target = relay::Connection;
    fn deref(&self) -> &relay::Connection {
        &self.0
    }
}

impl Connection {
    fn record(&self, flow: FlowRecord) {
        let verdict = flow.verdict.as_str();
        if let Some(m) = &flow.memcached {
            let labels = MemcachedLabels { command: m.command.clone(), verdict };
            self.state.metrics.memcached_requests.get_or_create(&labels).inc();
            self.state.metrics.requests.get_or_create(&RequestLabels { protocol: "memcached", verdict }).inc();
        }
        self.state.flows.record(flow);
    }

    /// A connection-level error record (bad frame, peer gone).
    fn record_error(&self, snap: &mut Option<Snapshot>, why: String, request: Option<MemcachedFlow>) {
        if let Some((s, _)) = self.snapshot(snap.take()) {
            let flow = FlowRecord { memcached: request, ..self.flow(&s, Verdict::Error, Some(why)) };
            self.record(flow);
            *snap = Some(s);
        }
    }
}

pub async fn serve(state: Arc<ProxyState>, target: Target, client: TcpStream, peer: SocketAddr) {
    let conn = Connection(relay::Connection::new(state, target, peer, ListenerProtocol::Memcached, "memcached"));
    let open = OpenConnection::new(&conn.state, &conn.listener);
    let _ = client.set_nodelay(true);
    let Some((snap, server)) = conn.open(&open, &client).await else { return };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let (queue, queued) = mpsc::channel(MAX_IN_FLIGHT);
    tokio::join!(
        requests(&conn, snap, client_read, server_write, queue),
        responses(&conn, server_read, client_write, queued)
    );
}

async fn requests(
    conn: &Connection,
    snap: Snapshot,
    mut client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
    queue: mpsc::Sender<(Protocol, Pending)>,
) {
    let mut snap = Some(snap);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut protocol = None;
    // a quiet request went out since the last barrier or flush
    let mut quiet_since_barrier = false;
    'read: loop {
        let read = tokio::select! {
            // the response half gave up: stop reading requests
            _ = queue.closed() => break,
            read = client.read_buf(&mut buf) => read,
        };
        match read {
            Ok(0) if buf.is_empty() => break,
            Ok(0) => {
                let why = format!("the client closed the connection inside a request ({} bytes read)", buf.len());
                conn.record_error(&mut snap, why, None);
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
        let protocol = *protocol.get_or_insert_with(|| Protocol::of_first_byte(buf[0]));
        // every complete request in the buffer, forwarded in one write
        loop {
            let request = match codec::parse_request(protocol, &buf) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(FrameError(why)) => {
                    let reason =
                        format!("unparsable memcached {} request ({why}); connection closed", protocol.as_str());
                    conn.record_error(&mut snap, reason, None);
                    let _ = server.write_all(&out).await;
                    break 'read;
                }
            };
            let frame = buf.split_to(request.len);
            let Some((current, _)) = conn.snapshot(snap.take()) else { break 'read };
            let s = snap.insert(current);
            let started = Instant::now();
            let mut flow =
                FlowRecord { memcached: Some(memcached_flow(&request)), ..conn.flow(s, Verdict::Forwarded, None) };
            match judge(s, &request, &mut flow) {
                None => {
                    out.extend_from_slice(&frame);
                    match request.reply {
                        Reply::Quiet | Reply::Close => {
                            // no answer to wait for (a late one is relayed as it comes)
                            quiet_since_barrier |= request.reply == Reply::Quiet;
                            conn.record(flow);
                        }
                        reply => {
                            quiet_since_barrier &= reply != Reply::Flush;
                            let opcode = request.opcode.unwrap_or_default();
                            let pending = Pending::Server {
                                reply,
                                opcode,
                                opaque: request.opaque,
                                flow: Box::new(flow),
                                started,
                            };
                            if queue.send((protocol, pending)).await.is_err() {
                                break 'read;
                            }
                        }
                    }
                    if request.reply == Reply::Close {
                        let _ = server.write_all(&out).await;
                        break 'read;
                    }
                }
                Some(verdict) => {
                    flow.verdict = verdict;
                    let Some(response) = request.refusal() else {
                        // text noreply: the client waits for nothing
                        conn.record(flow);
                        continue;
                    };
                    if let Some(m) = &mut flow.memcached {
                        m.response = Some(
                            codec::parse_reply_unit(protocol, &response)
                                .ok()
                                .flatten()
                                .map(|u| u.summary)
                                .unwrap_or_default(),
                        );
                    }
                    conn.record(flow);
                    if quiet_since_barrier {
                        out.extend_from_slice(&codec::barrier(protocol));
                        quiet_since_barrier = false;
                        if queue.send((protocol, Pending::Barrier)).await.is_err() {
                            break 'read;
                        }
                    }
                    if queue.send((protocol, Pending::Local { response })).await.is_err() {
                        break 'read;
                    }
                }
            }
        }
        if !out.is_empty() {
            if server.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
    }
    // no more requests: the server sees EOF once everything sent is answered
    let _ = server.shutdown().await;
}

/// Run the chain. `Some(verdict)` refuses the request (Denied, or Error when
/// a filter failed closed); the flow gets the reason and what matched.
fn judge(snap: &Snapshot, request: &Request, flow: &mut FlowRecord) -> Option<Verdict> {
    let chain = match &*snap.verdict {
        ConnectionVerdict::Drop { reason } => {
            flow.reason = Some(format!("{reason} (policy changed under an open connection)"));
            return Some(Verdict::Denied);
        }
        ConnectionVerdict::Forward(chain) => chain,
    };
    if chain.links.is_empty() {
        return None;
    }
    let wit_request = wit::Request {
        protocol: match request.protocol {
            Protocol::Text => wit::Protocol::Text,
            Protocol::Binary => wit::Protocol::Binary,
        },
        command: request.command.clone(),
        opcode: request.opcode,
        keys: request.keys.clone(),
    };
    let mut filter_time = Duration::ZERO;
    let mut matched = Vec::new();
    let mut outcome = None;
    for link in &chain.links {
        let view = ConnectionView { context: snap.context.clone(), direction: link.direction };
        let started = Instant::now();
        let decision = link.filter.on_memcached_request(view, &wit_request);
        let elapsed = started.elapsed();
        link.filter.observe_duration(elapsed);
        filter_time += elapsed;
        match decision {
            Ok(wit::RequestDecision::Allow(allow)) => matched.extend(allow.matched),
            Ok(wit::RequestDecision::Deny(deny)) => {
                flow.reason = Some(deny.reason);
                outcome = Some(Verdict::Denied);
                break;
            }
            Err(failure) if link.filter.failure == FailurePolicy::Open => {
                tracing::debug!("{failure}; failing open");
            }
            Err(failure) => {
                flow.reason = Some(failure.to_string());
                outcome = Some(Verdict::Error);
                break;
            }
        }
    }
    flow.filter_us = filter_time.as_micros() as u64;
    if !matched.is_empty() {
        flow.matched = Some(matched.join(", "));
    }
    outcome
}

async fn responses(
    conn: &Connection,
    mut server: OwnedReadHalf,
    mut client: OwnedWriteHalf,
    mut queued: mpsc::Receiver<(Protocol, Pending)>,
) {
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut protocol = None;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut requests_done = false;
    let closing = 'serve: loop {
        // refusals whose turn has come
        while let Some(Pending::Local { .. }) = pending.front() {
            let Some(Pending::Local { response }) = pending.pop_front() else { unreachable!() };
            out.extend_from_slice(&response);
        }
        if !out.is_empty() {
            if client.write_all(&out).await.is_err() {
                break None;
            }
            out.clear();
        }
        if requests_done && pending.is_empty() {
            break None;
        }
        tokio::select! {
            // requests first: a reply is only understood once its request is known
            biased;
            next = queued.recv(), if !requests_done => match next {
                Some((p, entry)) => {
                    protocol = Some(p);
                    pending.push_back(entry);
                }
                None => requests_done = true,
            },
            read = server.read_buf(&mut buf) => {
                match read {
                    Ok(0) if buf.is_empty() => break Some("the server closed the connection".to_string()),
                    Ok(0) => break Some("the server closed the connection inside a reply".to_string()),
                    Ok(_) => {}
                    Err(e) => break Some(format!("the server connection failed ({e})")),
                }
                // the replies may be for requests queued after the select
                // chose this branch
                while let Ok((p, entry)) = queued.try_recv() {
                    protocol = Some(p);
                    pending.push_back(entry);
                }
                let Some(protocol) = protocol else {
                    break Some("the server sent bytes before any request".to_string());
                };
                // every complete reply unit, attributed in order
                loop {
                    let unit = match codec::parse_reply_unit(protocol, &buf) {
                        Ok(Some(unit)) => unit,
                        Ok(None) => break,
                        Err(FrameError(why)) => break 'serve Some(format!("unparsable reply ({why})")),
                    };
                    let bytes = buf.split_to(unit.len);
                    while let Ok((_, entry)) = queued.try_recv() {
                        pending.push_back(entry);
                    }
                    match pending.front_mut() {
                        Some(Pending::Barrier) if is_barrier_reply(protocol, &unit) => {
                            pending.pop_front();
                        }
                        Some(Pending::Server { reply, opcode, opaque, flow, started })
                            if codec::belongs_to(protocol, (*opcode, *opaque, *reply), &unit) =>
                        {
                            out.extend_from_slice(&bytes);
                            if codec::ends_reply(protocol, *reply, &unit) {
                                if let Some(m) = &mut flow.memcached {
                                    m.response = Some(unit.summary.clone());
                                }
                                flow.latency_us = Some(started.elapsed().as_micros() as u64);
                                let Some(Pending::Server { flow, .. }) = pending.pop_front() else { unreachable!() };
                                conn.record(*flow);
                            }
                        }
                        // a quiet request's late answer (or a `watch` log line)
                        _ => out.extend_from_slice(&bytes),
                    }
                    // refusals right behind it go out in the same write
                    while let Some(Pending::Local { .. }) = pending.front() {
                        let Some(Pending::Local { response }) = pending.pop_front() else { unreachable!() };
                        out.extend_from_slice(&response);
                    }
                }
            },
        }
    };
    if !out.is_empty() {
        let _ = client.write_all(&out).await;
    }
    if let Some(why) = closing {
        tracing::debug!(connection = conn.id, "closing: {why}");
        // what was asked and not answered: the client sees the connection
        // close, as it would if the server had gone
        for p in pending.drain(..) {
            if let Pending::Server { mut flow, .. } = p {
                flow.verdict = Verdict::Error;
                flow.reason = Some(format!("{why} before replying"));
                conn.record(*flow);
            }
        }
    }
    let _ = client.shutdown().await;
}

fn is_barrier_reply(protocol: Protocol, unit: &codec::ReplyUnit) -> bool {
    match protocol {
        Protocol::Text => unit.summary == "MN",
        Protocol::Binary => unit.opcode == codec::OP_NOOP && unit.opaque == codec::BARRIER_OPAQUE,
    }
}

fn memcached_flow(request: &Request) -> MemcachedFlow {
    MemcachedFlow {
        protocol: request.protocol.as_str().into(),
        command: request.command.clone(),
        keys: request.keys_lossy(),
        response: None,
    }
}
