//! The stream engine: TCP relayed byte for byte through the stream filters
//! (`l7proto`) that policy puts on the port, in the shape of Cilium
//! proxylib's `OnData`. Each connection gets its own filter instances, so a
//! parser's state lives in its instance.
//!
//! A port whose rules name no parser is relayed untouched (L3/L4 policy only).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::context::{Direction, Target};
use crate::engines::relay::{self, Snapshot};
use crate::engines::state::{OpenConnection, ProxyState};
use crate::model::{Audit, ConnectionVerdict, WouldBe};
use crate::observe::flow::{FlowDetail, FlowRecord, L7Flow, Verdict};
use crate::protocol::Protocol;
use crate::wasm::{ConnectionView, DedicatedInstance, FailurePolicy, stream as wit};

/// Most bytes a filter may leave undecided in one direction.
const MAX_UNDECIDED: usize = 1 << 20;
const READ_CHUNK: usize = 64 << 10;

/// What a batch of bytes turned into.
#[derive(Default)]
struct Output {
    /// On to the other side.
    forward: Vec<u8>,
    /// Back to the side the bytes came from.
    reply: Vec<u8>,
    flows: Vec<(Arc<str>, wit::Flow)>,
}

#[derive(Default)]
struct SideState {
    undecided: Vec<u8>,
    /// Bytes still to pass or drop without asking, from an earlier op.
    pass: usize,
    drop: usize,
    /// Don't ask again before the buffer holds this many bytes.
    need: usize,
    ended: bool,
}

/// One filter on the connection, with what it has not decided yet.
struct Stage {
    instance: DedicatedInstance,
    direction: Direction,
    sides: [SideState; 2],
    /// The filter failed and fails open: it sees nothing more.
    bypass: bool,
}

impl Stage {
    fn feed(
        &mut self,
        snap: &Snapshot,
        side: wit::Side,
        mut data: &[u8],
        end: bool,
        out: &mut Output,
    ) -> Result<(), String> {
        if self.bypass {
            out.forward.extend_from_slice(data);
            return Ok(());
        }
        let name = self.instance.filter().name.clone();
        let s = &mut self.sides[side as usize];
        s.ended |= end;
        // what earlier ops already decided
        while !data.is_empty() && (s.pass > 0 || s.drop > 0) {
            let n = data.len().min(if s.pass > 0 { s.pass } else { s.drop });
            if s.pass > 0 {
                out.forward.extend_from_slice(&data[..n]);
                s.pass -= n;
            } else {
                s.drop -= n;
            }
            data = &data[n..];
        }
        s.undecided.extend_from_slice(data);
        // checked before asking: a filter that keeps answering `more` must
        // not make weir buffer without bound
        if s.undecided.len() > MAX_UNDECIDED {
            return Err(format!("{name} left more than {MAX_UNDECIDED} bytes undecided"));
        }
        if s.undecided.len() < s.need && !s.ended {
            return Ok(());
        }
        while !s.undecided.is_empty() || (s.ended && end) {
            let view = ConnectionView { context: snap.context.clone(), direction: self.direction };
            let ops = match self.instance.on_stream_data(view, side, s.ended, &s.undecided) {
                Ok(ops) => ops,
                Err(failure) if self.instance.filter().failure == FailurePolicy::Open => {
                    tracing::debug!("{failure}; failing open: the rest of the connection is relayed unread");
                    self.bypass = true;
                    out.forward.append(&mut s.undecided);
                    return Ok(());
                }
                Err(failure) => return Err(failure.to_string()),
            };
            s.need = 0;
            let mut consumed = false;
            for op in ops {
                match op {
                    wit::Op::Pass(n) | wit::Op::Drop(n) => {
                        let pass = matches!(op, wit::Op::Pass(_));
                        let n = n as usize;
                        let k = n.min(s.undecided.len());
                        let taken = s.undecided.drain(..k);
                        if pass {
                            out.forward.extend(taken);
                            s.pass = n - k;
                        } else {
                            drop(taken);
                            s.drop = n - k;
                        }
                        consumed |= n > 0;
                    }
                    wit::Op::Inject(bytes) => out.forward.extend_from_slice(&bytes),
                    wit::Op::Reply(bytes) => out.reply.extend_from_slice(&bytes),
                    wit::Op::More(n) => s.need = s.undecided.len() + (n as usize).max(1),
                    wit::Op::Flow(flow) => out.flows.push((name.clone(), flow)),
                    wit::Op::Error(why) => return Err(format!("{name}: {why}")),
                }
            }
            // ask again only while the filter keeps deciding bytes
            if !consumed || s.pass > 0 || s.drop > 0 || s.ended {
                break;
            }
        }
        Ok(())
    }
}

pub async fn serve(state: Arc<ProxyState>, target: Target, client: TcpStream, peer: SocketAddr) {
    let conn = relay::Connection::new(state, target, peer, Protocol::Stream);
    let open = OpenConnection::new(&conn.state, &conn.listener);
    let _ = client.set_nodelay(true);
    let Some((snap, mut server, _upstream_slot)) = conn.open(&open, &client).await else { return };
    let mut client = client;
    let links = match &*snap.verdict {
        ConnectionVerdict::Forward(chain) => {
            if let Some(audit) = &chain.audit {
                record_audit(&conn, &snap, audit);
            }
            chain.links.clone()
        }
        ConnectionVerdict::Drop { .. } => Vec::new(),
    };
    if links.is_empty() {
        // no parser on this port: L3/L4 policy allowed it, bytes go as they
        // are (through the relay loop, for its idle timeout)
        if let Some(why) = relay_through(&conn, &snap, &mut [], &mut client, &mut server).await {
            conn.record(conn.flow(&snap, Verdict::Error, Some(format!("{why}; connection closed"))));
        }
        return;
    }
    let mut stages = Vec::new();
    for link in links {
        match link.filter.dedicated(conn.peer.ip(), conn.filter_instances_per_client(&snap)) {
            Ok(instance) => {
                stages.push(Stage { instance, direction: link.direction, sides: Default::default(), bypass: false })
            }
            Err(failure) => {
                conn.record(conn.flow(&snap, Verdict::Error, Some(failure.to_string())));
                return;
            }
        }
    }
    if let Some(why) = relay_through(&conn, &snap, &mut stages, &mut client, &mut server).await {
        let mut flow = conn.flow(&snap, Verdict::Error, Some(format!("{why}; connection closed")));
        flow.protocol = stages[0].instance.filter().name.to_string();
        conn.record(flow);
    }
}

/// Relay until both sides are done; `Some(why)` when weir closed it.
async fn relay_through(
    conn: &relay::Connection,
    snap: &Snapshot,
    stages: &mut [Stage],
    client: &mut TcpStream,
    server: &mut TcpStream,
) -> Option<String> {
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let (mut from_client, mut from_server) = (BytesMut::with_capacity(READ_CHUNK), BytesMut::with_capacity(READ_CHUNK));
    let (mut client_done, mut server_done) = (false, false);
    let mut closing = None;
    // what the filters hold undecided counts against the buffer budgets (limits.rs)
    let mut held = conn.held(snap);
    while !(client_done && server_done) {
        let undecided: usize = stages.iter().flat_map(|s| &s.sides).map(|side| side.undecided.len()).sum();
        if let Err(over) = held.cover(undecided + 2 * READ_CHUNK) {
            return Some(over.to_string());
        }
        let (side, read) = tokio::select! {
            r = conn.idle_guard(client_read.read_buf(&mut from_client)), if !client_done => match r {
                Ok(r) => (wit::Side::Request, r),
                Err(idle) => return Some(idle.to_string()),
            },
            r = server_read.read_buf(&mut from_server), if !server_done => {
                conn.idle.touch();
                (wit::Side::Reply, r)
            }
        };
        let end = match read {
            Ok(0) => true,
            Ok(_) => false,
            Err(_) => return None,
        };
        let data = match side {
            wit::Side::Request => from_client.split(),
            wit::Side::Reply => from_server.split(),
        };
        // requests run through the stages in order, replies back through them
        let mut forwarded: Option<Vec<u8>> = None;
        let mut replies: Vec<Vec<u8>> = Vec::new();
        let order: Vec<usize> = match side {
            wit::Side::Request => (0..stages.len()).collect(),
            wit::Side::Reply => (0..stages.len()).rev().collect(),
        };
        // a filter that breaks the stream still gets what it decided before
        // the error sent on; then the connection closes
        let mut broken = None;
        for i in order {
            let mut out = Output::default();
            let input = forwarded.as_deref().unwrap_or(&data);
            if let Err(why) = stages[i].feed(snap, side, input, end, &mut out) {
                broken.get_or_insert(why);
            }
            record_flows(conn, snap, out.flows);
            if !out.reply.is_empty() {
                replies.push(out.reply);
            }
            forwarded = Some(out.forward);
        }
        let (forward_to, reply_to) = match side {
            wit::Side::Request => (&mut server_write, &mut client_write),
            wit::Side::Reply => (&mut client_write, &mut server_write),
        };
        for reply in replies {
            if reply_to.write_all(&reply).await.is_err() {
                return None;
            }
        }
        // no stages: the bytes go on as they came
        let bytes = forwarded.unwrap_or_else(|| data.to_vec());
        if !bytes.is_empty() && forward_to.write_all(&bytes).await.is_err() {
            return None;
        }
        if end {
            let _ = forward_to.shutdown().await;
            match side {
                wit::Side::Request => client_done = true,
                wit::Side::Reply => server_done = true,
            }
        }
        if let Some(why) = broken {
            // read no more requests; the server still answers what it got
            let _ = server_write.shutdown().await;
            client_done = true;
            closing.get_or_insert(why);
            if side == wit::Side::Reply {
                return closing;
            }
        }
    }
    closing
}

/// What audited rules would do to this connection, once, when it opens: a
/// stream has no requests of weir's own to audit one by one.
fn record_audit(conn: &relay::Connection, snap: &Snapshot, audit: &Audit) {
    let flow = match &audit.would {
        WouldBe::Drop(reason) => FlowRecord {
            audited_by: audit.policies.clone(),
            ..conn.flow(snap, Verdict::Audited, Some(format!("would be dropped: {reason}")))
        },
        // audited l7proto rules are refused at load; other parsers'
        // configurations come only from odd mixes of rules
        WouldBe::Judge(_) => conn.flow(
            snap,
            Verdict::Forwarded,
            Some("not audited: the audited rules would judge this stream with other parser rules".into()),
        ),
    };
    conn.record(flow);
}

fn record_flows(conn: &relay::Connection, snap: &Snapshot, flows: Vec<(Arc<str>, wit::Flow)>) {
    for (name, flow) in flows {
        let verdict = match flow.verdict {
            wit::FlowVerdict::Forwarded => Verdict::Forwarded,
            wit::FlowVerdict::Denied => Verdict::Denied,
            wit::FlowVerdict::Error => Verdict::Error,
        };
        let mut record = FlowRecord {
            detail: Some(FlowDetail::L7(L7Flow {
                l7proto: name.to_string(),
                fields: flow.fields.into_iter().collect(),
            })),
            ..conn.flow(snap, verdict, None)
        };
        record.protocol = name.to_string();
        match verdict {
            Verdict::Forwarded => record.matched = flow.reason,
            _ => record.reason = flow.reason,
        }
        conn.record(record);
    }
}
