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
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use super::codec::{self, Frame, FrameError, Protocol, Refused, Reply, Request};
use crate::context::Target;
use crate::engines::chain::Answer;
use crate::engines::relay::{self, Connection, Snapshot};
use crate::engines::state::{OpenConnection, ProxyState};
use crate::observe::flow::{FlowDetail, FlowRecord, MemcachedFlow, Verdict};
use crate::wasm::memcached as wit;

/// Capacity of the queue between the halves. The response half moves
/// entries out at once, so this is not what bounds requests in flight: the
/// server's socket buffer is (the request half waits when it is full).
const QUEUE: usize = 1024;
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

pub async fn serve(state: Arc<ProxyState>, target: Target, client: TcpStream, peer: SocketAddr) {
    let conn = Connection::new(state, target, peer, crate::protocol::Protocol::Memcached);
    let open = OpenConnection::new(&conn.state, &conn.listener);
    let _ = client.set_nodelay(true);
    let Some((snap, server, _upstream_slot)) = conn.open(&open, &client).await else { return };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let (queue, queued) = mpsc::channel(QUEUE);
    // set by the request half from the first byte the client sends
    let protocol = OnceLock::new();
    tokio::join!(
        requests(&conn, snap, client_read, server_write, &protocol, queue),
        responses(&conn, server_read, client_write, &protocol, queued)
    );
}

async fn requests(
    conn: &Connection,
    snap: Snapshot,
    mut client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
    protocol: &OnceLock<Protocol>,
    queue: mpsc::Sender<Pending>,
) {
    // what this connection may buffer (limits.rs)
    let mut held = conn.held(&snap);
    let mut snap = Some(snap);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    // a quiet request went out since the last barrier or flush
    let mut quiet_since_barrier = false;
    // bytes of a refused request that have not arrived yet: memcached
    // swallows them with its error, and so does weir (never parsed, never
    // forwarded)
    let mut swallow: usize = 0;
    'read: loop {
        if let Err(over) = held.cover(buf.len() + READ_CHUNK) {
            conn.record_error(&mut snap, format!("{over}; connection closed"));
            break;
        }
        let read = tokio::select! {
            // the response half gave up: stop reading requests
            _ = queue.closed() => break,
            read = conn.idle_guard(client.read_buf(&mut buf)) => match read {
                Ok(read) => read,
                Err(idle) => {
                    conn.record_error(&mut snap, format!("{idle}; connection closed"));
                    break;
                }
            },
        };
        match read {
            Ok(0) if buf.is_empty() => break,
            Ok(0) => {
                let why = format!("the client closed the connection inside a request ({} bytes read)", buf.len());
                conn.record_error(&mut snap, why);
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
        if swallow > 0 {
            let n = swallow.min(buf.len());
            let _ = buf.split_to(n);
            swallow -= n;
            if buf.is_empty() {
                continue;
            }
        }
        let protocol = *protocol.get_or_init(|| Protocol::of_first_byte(buf[0]));
        // every complete request in the buffer, forwarded in one write
        loop {
            let mut request = match codec::parse_request(protocol, &buf) {
                Ok(Some(Frame::Request(r))) => r,
                Ok(Some(Frame::Refused(refused))) => {
                    // memcached would refuse it: answer as it would, forward nothing
                    let close = refused.close;
                    if !close {
                        let here = refused.len.min(buf.len());
                        let _ = buf.split_to(here);
                        swallow = refused.len - here;
                    }
                    let Some(current) = conn.snapshot(snap.take()) else { break 'read };
                    let s = snap.insert(current);
                    conn.record(refused_flow(conn, s, &refused));
                    if !refused.answer.is_empty() {
                        if quiet_since_barrier {
                            out.extend_from_slice(&codec::barrier(protocol));
                            quiet_since_barrier = false;
                            if queue.send(Pending::Barrier).await.is_err() {
                                break 'read;
                            }
                        }
                        if queue.send(Pending::Local { response: refused.answer }).await.is_err() {
                            break 'read;
                        }
                    }
                    if close {
                        let _ = server.write_all(&out).await;
                        break 'read;
                    }
                    continue;
                }
                Ok(None) => break,
                Err(FrameError(why)) => {
                    let reason =
                        format!("unparsable memcached {} request ({why}); connection closed", protocol.as_str());
                    conn.record_error(&mut snap, reason);
                    let _ = server.write_all(&out).await;
                    break 'read;
                }
            };
            let frame = buf.split_to(request.len);
            let Some(current) = conn.snapshot(snap.take()) else { break 'read };
            let s = snap.insert(current);
            let started = Instant::now();
            let mut flow = FlowRecord {
                detail: Some(FlowDetail::Memcached(memcached_flow(&request))),
                ..conn.flow(s, Verdict::Forwarded, None)
            };
            match judge(s, &mut request, &mut flow) {
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
                            if queue.send(pending).await.is_err() {
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
                    if let Some(FlowDetail::Memcached(m)) = &mut flow.detail {
                        m.response = Some(protocol.refusal_summary().into());
                    }
                    conn.record(flow);
                    if quiet_since_barrier {
                        out.extend_from_slice(&codec::barrier(protocol));
                        quiet_since_barrier = false;
                        if queue.send(Pending::Barrier).await.is_err() {
                            break 'read;
                        }
                    }
                    if queue.send(Pending::Local { response }).await.is_err() {
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

/// Run the chain; `Some(verdict)` refuses the request (Denied, or Error when
/// a filter failed closed). A request that does what several commands do
/// (`judge_as`) is asked about each of them, with its keys.
fn judge(snap: &Snapshot, request: &mut Request, flow: &mut FlowRecord) -> Option<Verdict> {
    let protocol = match request.protocol {
        Protocol::Text => wit::Protocol::Text,
        Protocol::Binary => wit::Protocol::Binary,
    };
    // the flow has its own copy; nothing reads the keys after this
    let mut keys = std::mem::take(&mut request.keys);
    let judge_as = std::mem::take(&mut request.judge_as);
    let count = judge_as.len().max(1);
    for i in 0..count {
        let command = judge_as.get(i).map_or_else(|| request.command.clone(), |c| c.to_string());
        let keys = if i + 1 == count { std::mem::take(&mut keys) } else { keys.clone() };
        let wit_request = || wit::Request { protocol, command, opcode: request.opcode, keys };
        let refusal = relay::run_chain(
            snap,
            flow,
            wit_request,
            || (),
            |filter, view, wit_request| {
                Ok(match filter.on_memcached_request(view, wit_request)? {
                    wit::RequestDecision::Allow(allow) => Answer::Allow(allow.matched),
                    wit::RequestDecision::Deny(deny) => Answer::Deny((deny.reason, ())),
                })
            },
        );
        if let Some(refusal) = refusal {
            return Some(refusal.verdict);
        }
    }
    None
}

/// The flow of a request memcached would have refused: an error, with what
/// weir answered for the server.
fn refused_flow(conn: &Connection, snap: &Snapshot, refused: &Refused) -> FlowRecord {
    let answered = refused.answer.split(|&b| b == b' ' || b == b'\r').next().unwrap_or_default();
    let response = match refused.protocol {
        _ if refused.answer.is_empty() => None,
        Protocol::Text => Some(String::from_utf8_lossy(answered).into_owned()),
        Protocol::Binary => Some(format!("{:#06x}", u16::from_be_bytes([refused.answer[6], refused.answer[7]]))),
    };
    let reason = format!(
        "memcached would refuse this request ({}): answered for it, not forwarded{}",
        refused.why,
        if refused.close { "; connection closed" } else { "" }
    );
    FlowRecord {
        detail: Some(FlowDetail::Memcached(MemcachedFlow {
            protocol: refused.protocol.as_str().into(),
            command: refused.command.clone(),
            keys: Vec::new(),
            response,
        })),
        ..conn.flow(snap, Verdict::Error, Some(reason))
    }
}

async fn responses(
    conn: &Connection,
    mut server: OwnedReadHalf,
    mut client: OwnedWriteHalf,
    protocol: &OnceLock<Protocol>,
    mut queued: mpsc::Receiver<Pending>,
) {
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut requests_done = false;
    let closing = 'serve: loop {
        take_refusals(&mut pending, &mut out);
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
            // requests first: a reply is only understood once its request is
            // known. Both halves run on one task (join!), so nothing can be
            // queued between this check and the read below.
            biased;
            next = queued.recv(), if !requests_done => match next {
                Some(entry) => pending.push_back(entry),
                None => requests_done = true,
            },
            read = server.read_buf(&mut buf) => {
                match read {
                    Ok(0) if buf.is_empty() => break Some("the server closed the connection".to_string()),
                    Ok(0) => break Some("the server closed the connection inside a reply".to_string()),
                    Ok(_) => conn.idle.touch(),
                    Err(e) => break Some(format!("the server connection failed ({e})")),
                }
                let Some(&protocol) = protocol.get() else {
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
                    match pending.front_mut() {
                        Some(Pending::Barrier) if is_barrier_reply(protocol, &unit) => {
                            pending.pop_front();
                        }
                        Some(Pending::Server { reply, opcode, opaque, flow, started })
                            if codec::belongs_to(protocol, *reply, *opcode, *opaque, &unit) =>
                        {
                            out.extend_from_slice(&bytes);
                            if codec::ends_reply(protocol, *reply, &unit) {
                                if let Some(FlowDetail::Memcached(m)) = &mut flow.detail {
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
                    take_refusals(&mut pending, &mut out);
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

/// Move the refusals whose turn has come to the client's output.
fn take_refusals(pending: &mut VecDeque<Pending>, out: &mut Vec<u8>) {
    while let Some(Pending::Local { .. }) = pending.front() {
        let Some(Pending::Local { response }) = pending.pop_front() else { unreachable!() };
        out.extend_from_slice(&response);
    }
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
