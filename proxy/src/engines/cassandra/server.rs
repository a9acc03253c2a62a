//! One CQL client connection, relayed to one server connection.
//!
//! The request half frames requests, reads what each runs (statements and
//! tables, following `USE` and prepared statements), asks the filter chain
//! and forwards the allowed ones unchanged; the response half relays the
//! server's frames, learns from them (the keyspace a `USE` set, the id a
//! PREPARE got, when v5 framing starts) and writes weir's own answers. CQL
//! clients match responses by stream id, so weir's answers need no ordering
//! against the server's, only whole-frame (and, in v5, whole-segment)
//! boundaries. Weir matches them the same way, so it allows one request per
//! stream at a time: a request on a stream still in flight (or on a
//! negative one, the server's) is refused with a protocol error, and every
//! answer teaches weir about exactly the request it answers.
//!
//! Compression is declined: weir empties the `COMPRESSION` list of the
//! server's SUPPORTED answer, so drivers connect uncompressed, and answers a
//! STARTUP that asks for it anyway with a protocol error naming the reason.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};

use super::cql::{self, Statement};
use super::frame::{self, BatchEntry, Deframer, FrameError, Framer, HEADER, Header, RequestBody, ResponseBody};
use crate::context::Target;
use crate::engines::chain::Answer;
use crate::engines::relay::{self, Connection, Snapshot};
use crate::engines::state::{OpenConnection, ProxyState};
use crate::observe::flow::{CassandraFlow, CqlStatementFlow, FlowDetail, FlowRecord, Verdict};
use crate::protocol::Protocol;
use crate::wasm::cassandra as wit;

/// Capacity of the queue between the halves (see the memcached engine: the
/// server's socket buffer, not this, bounds requests in flight).
const QUEUE: usize = 1024;
const READ_CHUNK: usize = 64 << 10;
const SUPPORTED_VERSIONS: std::ops::RangeInclusive<u8> = 3..=5;
const DENIED_MESSAGE: &str = "Request Unauthorized by network policy";

/// What the halves share. Both run on one task, so the request half sees
/// what the response half learned before it reads the client's next bytes.
struct Shared {
    /// The connection's protocol version (its first frame's).
    version: OnceLock<u8>,
    /// v5 segment framing, in both directions (STARTUP was answered).
    modern: AtomicBool,
    /// The keyspace of the last successful `USE`.
    keyspace: Mutex<Option<String>>,
    /// How many forwarded turning points have been answered (see
    /// `Asked::turning_point`).
    turns_answered: watch::Sender<u64>,
    /// The server, for the prepared-statement ids it hands out.
    upstream: SocketAddr,
    /// Stream ids forwarded and not answered yet. A request on one of them
    /// is refused: its answer could not be told from the first one's, and
    /// weir would learn from the wrong request (a `USE` never learned, a
    /// PREPARE's id filed under another statement).
    in_flight: Mutex<HashSet<i16>>,
}

impl Shared {
    fn modern(&self) -> bool {
        self.modern.load(Ordering::Acquire)
    }
}

enum Pending {
    /// The server answers this stream.
    Server(Box<Asked>),
    /// Weir answered: this frame.
    Local(Vec<u8>),
}

struct Asked {
    stream: i16,
    opcode: u8,
    flow: FlowRecord,
    started: Instant,
    /// PREPARE: what the statement runs, to file under the id it gets.
    prepares: Option<Prepares>,
    /// Its answer changes how the client's next bytes read: a `USE` (the
    /// keyspace names are qualified with) or a STARTUP (v5 framing starts
    /// after READY). Weir reads nothing more from the client until it is
    /// answered, so a pipelined request is never read one way by weir and
    /// another by the server.
    turning_point: bool,
}

/// A forwarded PREPARE: its text and the keyspace it was read in (the
/// server's id for it must be the MD5 Cassandra computes of them), and what
/// it runs.
struct Prepares {
    query: String,
    keyspace: Option<String>,
    statements: Arc<[Statement]>,
}

pub async fn serve(state: Arc<ProxyState>, target: Target, client: TcpStream, peer: SocketAddr) {
    let conn = Connection::new(state, target, peer, Protocol::Cassandra);
    let open = OpenConnection::new(&conn.state, &conn.listener);
    let _ = client.set_nodelay(true);
    let Some((snap, server, _upstream_slot)) = conn.open(&open, &client).await else { return };
    let shared = Shared {
        version: OnceLock::new(),
        modern: AtomicBool::new(false),
        keyspace: Mutex::new(None),
        turns_answered: watch::channel(0).0,
        upstream: snap.listener.config.upstream,
        in_flight: Mutex::new(HashSet::new()),
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let (queue, queued) = mpsc::channel(QUEUE);
    tokio::join!(
        requests(&conn, &shared, snap, client_read, server_write, queue),
        responses(&conn, &shared, server_read, client_write, queued)
    );
}

/// What to do with one request frame.
enum Step {
    Forward(Box<Asked>),
    Answer(Vec<u8>),
    /// Answer, then close (an unsupported protocol version).
    AnswerAndClose(Vec<u8>),
    Close,
}

async fn requests(
    conn: &Connection,
    shared: &Shared,
    snap: Snapshot,
    mut client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
    queue: mpsc::Sender<Pending>,
) {
    // what this connection may buffer (limits.rs), and its largest frame
    let mut held = conn.held(&snap);
    let max_body = frame::MAX_BODY.min(held.max_request());
    let mut snap = Some(snap);
    let mut input = Deframer::default();
    let mut output = Framer::default();
    let mut turns_sent = 0u64;
    let mut turns_answered = shared.turns_answered.subscribe();
    'read: loop {
        if let Err(over) = held.cover(input.partial() + READ_CHUNK) {
            conn.record_error(&mut snap, format!("{over}; connection closed"));
            break;
        }
        input.raw.reserve(READ_CHUNK);
        let read = tokio::select! {
            // the response half gave up: stop reading requests
            _ = queue.closed() => break,
            read = conn.idle_guard(client.read_buf(&mut input.raw)) => match read {
                Ok(read) => read,
                Err(idle) => {
                    conn.record_error(&mut snap, format!("{idle}; connection closed"));
                    break;
                }
            },
        };
        match read {
            Ok(0) if input.partial() == 0 => break,
            Ok(0) => {
                let why = format!("the client closed the connection inside a frame ({} bytes read)", input.partial());
                conn.record_error(&mut snap, why);
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
        loop {
            // a turning point in flight: its answer decides how the next
            // frame reads (its framing, its keyspace), so wait before parsing
            if turns_sent > *turns_answered.borrow() && input.partial() > 0 {
                if output.flush(&mut server).await.is_err() {
                    break 'read;
                }
                tokio::select! {
                    _ = queue.closed() => break 'read,
                    answered = turns_answered.wait_for(|n| *n >= turns_sent) => if answered.is_err() { break 'read },
                }
            }
            let request = match input.next(shared.modern(), false, max_body) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(FrameError(why)) => {
                    conn.record_error(&mut snap, format!("unparsable CQL ({why}); connection closed"));
                    break 'read;
                }
            };
            let Some(current) = conn.snapshot(snap.take()) else { break 'read };
            let s = snap.insert(current);
            match step(conn, shared, s, &request) {
                Step::Forward(asked) => {
                    turns_sent += u64::from(asked.turning_point);
                    shared.in_flight.lock().unwrap().insert(asked.stream);
                    if queue.send(Pending::Server(asked)).await.is_err() {
                        break 'read;
                    }
                    output.push(shared.modern(), &request);
                }
                Step::Answer(answer) => {
                    if queue.send(Pending::Local(answer)).await.is_err() {
                        break 'read;
                    }
                }
                Step::AnswerAndClose(answer) => {
                    let _ = queue.send(Pending::Local(answer)).await;
                    break 'read;
                }
                Step::Close => break 'read,
            }
        }
        if output.flush(&mut server).await.is_err() {
            break;
        }
    }
    let _ = output.flush(&mut server).await;
    // no more requests: the server sees EOF once everything sent is answered
    let _ = server.shutdown().await;
}

/// Read, judge and place one request frame.
fn step(conn: &Connection, shared: &Shared, snap: &Snapshot, request: &[u8]) -> Step {
    let header = Header::parse(request);
    let started = Instant::now();
    let mut cassandra = CassandraFlow {
        version: header.version,
        opcode: frame::opcode_name(header.opcode).into(),
        stream: header.stream,
        ..Default::default()
    };
    let version = *shared.version.get_or_init(|| header.version);
    if !SUPPORTED_VERSIONS.contains(&header.version) || header.version != version {
        let why = format!(
            "Invalid or unsupported protocol version ({}); supported versions are (3/v3, 4/v4, 5/v5){}",
            header.version,
            if header.version != version { format!(" and this connection speaks v{version}") } else { String::new() }
        );
        cassandra.response = Some(format!("error {:#06x}", frame::ERR_PROTOCOL));
        let flow = FlowRecord {
            detail: Some(FlowDetail::Cassandra(cassandra)),
            ..conn.flow(snap, Verdict::Error, Some(why.clone()))
        };
        conn.record(flow);
        // v1 and v2 frame headers differ: nothing weir could answer in
        if header.version < 3 {
            return Step::Close;
        }
        return Step::AnswerAndClose(frame::error(header.version, header.stream, frame::ERR_PROTOCOL, &why, &[]));
    }
    let error_flow = |cassandra: CassandraFlow, why: String| FlowRecord {
        detail: Some(FlowDetail::Cassandra(cassandra)),
        ..conn.flow(snap, Verdict::Error, Some(why))
    };
    // One request per stream at a time, and none on the server's (negative)
    // streams: every answer then belongs to exactly one request. Refused with
    // a protocol error on that stream; the connection stays open.
    let stream_refused = if header.stream < 0 {
        Some(format!("stream id {} is negative: those are the server's (events)", header.stream))
    } else if shared.in_flight.lock().unwrap().contains(&header.stream) {
        Some(format!("stream id {} is still in flight: reuse a stream only once its answer has arrived", header.stream))
    } else {
        None
    };
    if let Some(why) = stream_refused {
        cassandra.response = Some(format!("error {:#06x}", frame::ERR_PROTOCOL));
        conn.record(error_flow(cassandra, why.clone()));
        return Step::Answer(frame::error(version, header.stream, frame::ERR_PROTOCOL, &why, &[]));
    }
    let body = match frame::request_body(header.version, header.flags, header.opcode, &request[HEADER..]) {
        Ok(body) => body,
        Err(FrameError(why)) => {
            conn.record(error_flow(
                cassandra,
                format!("unparsable CQL {} ({why}); connection closed", frame::opcode_name(header.opcode)),
            ));
            return Step::Close;
        }
    };
    let keyspace = shared.keyspace.lock().unwrap().clone();
    let prepared = |id: &[u8]| conn.state.cql_prepared.get(shared.upstream, id);
    let mut prepare_of = None;
    // shared, not copied, for an EXECUTE of a prepared statement (the common case)
    let statements: Arc<[Statement]> = match &body {
        RequestBody::Startup { compression: Some(algorithm) } => {
            let why = format!(
                "weir reads every CQL request and does not decompress them: connect without compression \
                 (asked for {algorithm})"
            );
            cassandra.response = Some(format!("error {:#06x}", frame::ERR_PROTOCOL));
            conn.record(error_flow(cassandra, why.clone()));
            return Step::Answer(frame::error(version, header.stream, frame::ERR_PROTOCOL, &why, &[]));
        }
        RequestBody::Startup { compression: None } | RequestBody::Handshake => Arc::new([]),
        RequestBody::Query { query, keyspace: ks } => cql::classify(query, ks.or(keyspace.as_deref())).into(),
        RequestBody::Prepare { query, keyspace: ks } => {
            let ks = ks.or(keyspace.as_deref());
            prepare_of = Some((query.to_string(), ks.map(str::to_string)));
            cql::classify(query, ks).into()
        }
        RequestBody::Execute { id } => match prepared(id) {
            Some(statements) => statements,
            None => return unknown_prepared(conn, snap, &header, cassandra, id),
        },
        RequestBody::Batch { entries, keyspace: ks } => {
            let mut all = Vec::new();
            for entry in entries {
                match entry {
                    BatchEntry::Query(query) => all.extend(cql::classify(query, ks.or(keyspace.as_deref()))),
                    BatchEntry::Prepared(id) => match prepared(id) {
                        Some(statements) => all.extend(statements.iter().cloned()),
                        None => return unknown_prepared(conn, snap, &header, cassandra, id),
                    },
                }
            }
            all.into()
        }
    };
    cassandra.statements =
        statements.iter().map(|s| CqlStatementFlow { action: s.action.clone(), table: s.table.clone() }).collect();
    let mut flow =
        FlowRecord { detail: Some(FlowDetail::Cassandra(cassandra)), ..conn.flow(snap, Verdict::Forwarded, None) };
    if let Some(verdict) = judge(snap, &header, &statements, keyspace, &mut flow) {
        flow.verdict = verdict;
        if let Some(FlowDetail::Cassandra(c)) = &mut flow.detail {
            c.response = Some(format!("error {:#06x}", frame::ERR_UNAUTHORIZED));
        }
        conn.record(flow);
        return Step::Answer(frame::error(version, header.stream, frame::ERR_UNAUTHORIZED, DENIED_MESSAGE, &[]));
    }
    let turning_point = header.opcode == frame::OP_STARTUP
        || (matches!(header.opcode, frame::OP_QUERY | frame::OP_EXECUTE)
            && statements.len() == 1
            && statements[0].action == "use");
    let prepares = prepare_of.map(|(query, keyspace)| Prepares { query, keyspace, statements });
    Step::Forward(Box::new(Asked {
        stream: header.stream,
        opcode: header.opcode,
        flow,
        started,
        prepares,
        turning_point,
    }))
}

/// An EXECUTE (or batch entry) of an id weir has not seen prepared: it
/// cannot be judged, so weir answers Unprepared and the driver prepares the
/// statement again, through weir, and retries.
fn unknown_prepared(conn: &Connection, snap: &Snapshot, header: &Header, mut c: CassandraFlow, id: &[u8]) -> Step {
    c.response = Some(format!("error {:#06x}", frame::ERR_UNPREPARED));
    let why = format!("prepared statement {} unknown to weir; answered Unprepared", hex(id));
    conn.record(FlowRecord { detail: Some(FlowDetail::Cassandra(c)), ..conn.flow(snap, Verdict::Error, Some(why)) });
    Step::Answer(frame::unprepared(header.version, header.stream, id))
}

/// Cassandra's prepared-statement id (QueryProcessor.computeId): the MD5 of
/// the keyspace the statement was prepared in followed by its text, or of
/// the text alone (fully qualified statements, and servers before 4.0.2).
fn cassandras_prepared_id(id: &[u8], query: &str, keyspace: Option<&str>) -> bool {
    use md5::{Digest, Md5};
    let with_keyspace = keyspace.map(|ks| Md5::new().chain_update(ks).chain_update(query).finalize());
    id == Md5::digest(query).as_slice() || with_keyspace.is_some_and(|digest| id == digest.as_slice())
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Run the chain; `Some(verdict)` refuses the request (Denied, or Error when
/// a filter failed closed).
fn judge(
    snap: &Snapshot,
    header: &Header,
    statements: &[Statement],
    keyspace: Option<String>,
    flow: &mut FlowRecord,
) -> Option<Verdict> {
    let wit_request = || wit::Request {
        version: header.version,
        opcode: frame::opcode_name(header.opcode).into(),
        stream_id: header.stream,
        statements: statements
            .iter()
            .map(|s| wit::Statement { action: s.action.clone(), table: s.table.clone(), query: s.query.clone() })
            .collect(),
        keyspace,
    };
    let refusal = relay::run_chain(
        snap,
        flow,
        wit_request,
        || (),
        |filter, view, wit_request| {
            Ok(match filter.on_cassandra_request(view, wit_request)? {
                wit::RequestDecision::Allow(allow) => Answer::Allow(allow.matched),
                wit::RequestDecision::Deny(deny) => Answer::Deny((deny.reason, ())),
            })
        },
    );
    refusal.map(|r| r.verdict)
}

async fn responses(
    conn: &Connection,
    shared: &Shared,
    mut server: OwnedReadHalf,
    mut client: OwnedWriteHalf,
    mut queued: mpsc::Receiver<Pending>,
) {
    let mut asked: HashMap<i16, Box<Asked>> = HashMap::new();
    let mut input = Deframer::default();
    let mut output = Framer::default();
    let mut requests_done = false;
    let closing = 'serve: loop {
        if output.flush(&mut client).await.is_err() {
            break None;
        }
        if requests_done && asked.is_empty() {
            break None;
        }
        input.raw.reserve(READ_CHUNK);
        tokio::select! {
            // requests first: a response is only understood once its request
            // is known. Both halves run on one task (join!), so nothing can be
            // queued between this check and the read below.
            biased;
            next = queued.recv(), if !requests_done => match next {
                Some(Pending::Server(a)) => {
                    if let Some(mut old) = asked.insert(a.stream, a) {
                        old.flow.verdict = Verdict::Error;
                        old.flow.reason = Some("the client reused the stream id before the answer".into());
                        conn.record(old.flow);
                    }
                }
                Some(Pending::Local(answer)) => output.push(shared.modern(), &answer),
                None => requests_done = true,
            },
            read = server.read_buf(&mut input.raw) => {
                match read {
                    Ok(0) if input.partial() == 0 => break Some("the server closed the connection".to_string()),
                    Ok(0) => break Some("the server closed the connection inside a frame".to_string()),
                    Ok(_) => conn.idle.touch(),
                    Err(e) => break Some(format!("the server connection failed ({e})")),
                }
                loop {
                    let response = match input.next(shared.modern(), true, frame::MAX_BODY) {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(FrameError(why)) => break 'serve Some(format!("unparsable response ({why})")),
                    };
                    let header = Header::parse(&response);
                    let body = match frame::response_body(header.flags, header.opcode, &response[HEADER..]) {
                        Ok(body) => body,
                        Err(FrameError(why)) => break 'serve Some(format!("unparsable {} response ({why})", frame::opcode_name(header.opcode))),
                    };
                    let Some(a) = (header.stream >= 0).then(|| asked.remove(&header.stream)).flatten() else {
                        // events (stream -1), and answers to no request weir forwarded
                        output.push(shared.modern(), &response);
                        continue;
                    };
                    shared.in_flight.lock().unwrap().remove(&header.stream);
                    let turning_point = a.turning_point;
                    let answers_startup = a.opcode == frame::OP_STARTUP;
                    let rewritten = learn(conn, shared, a, &header, &body, &response);
                    output.push(shared.modern(), rewritten.as_deref().unwrap_or(&response));
                    // v5: segments from the frame after the one that answers STARTUP
                    if answers_startup
                        && header.version == 5
                        && matches!(header.opcode, frame::OP_READY | frame::OP_AUTHENTICATE)
                    {
                        shared.modern.store(true, Ordering::Release);
                    }
                    // last: the request half reads on once this is counted
                    if turning_point {
                        shared.turns_answered.send_modify(|n| *n += 1);
                    }
                }
            },
        }
    };
    let _ = output.flush(&mut client).await;
    if let Some(why) = closing {
        tracing::debug!(connection = conn.id, "closing: {why}");
        // what was asked and not answered: the client sees the connection
        // close, as it would if the server had gone
        for (_, mut a) in asked.drain() {
            a.flow.verdict = Verdict::Error;
            a.flow.reason = Some(format!("{why} before responding"));
            conn.record(a.flow);
        }
    }
    let _ = client.shutdown().await;
}

/// What an answer teaches weir, then its flow record. `Some`: the frame to
/// send the client instead (SUPPORTED without compression).
fn learn(
    conn: &Connection,
    shared: &Shared,
    mut a: Box<Asked>,
    header: &Header,
    body: &ResponseBody<'_>,
    response: &[u8],
) -> Option<Vec<u8>> {
    let summary = match body {
        ResponseBody::Error { code } => format!("error {code:#06x}"),
        ResponseBody::SetKeyspace(keyspace) => {
            *shared.keyspace.lock().unwrap() = Some(keyspace.to_string());
            "set-keyspace".into()
        }
        ResponseBody::Prepared { id } => {
            if let Some(p) = a.prepares.take() {
                if cassandras_prepared_id(id, &p.query, p.keyspace.as_deref()) {
                    conn.state.cql_prepared.insert(shared.upstream, id, p.statements);
                } else {
                    // weir read the statement in another keyspace than the
                    // server did, or the answer is not this PREPARE's: its
                    // EXECUTEs are answered Unprepared, never judged as it
                    a.flow.verdict = Verdict::Error;
                    a.flow.reason = Some(format!(
                        "prepared id {} is not the MD5 Cassandra computes for this statement in keyspace {}; not filed",
                        hex(id),
                        p.keyspace.as_deref().unwrap_or("(none)")
                    ));
                }
            }
            "prepared".into()
        }
        ResponseBody::Result(kind) => (*kind).into(),
        ResponseBody::Other => frame::opcode_name(header.opcode).into(),
    };
    let rewritten = match (a.opcode, header.opcode) {
        (frame::OP_OPTIONS, frame::OP_SUPPORTED) => frame::supported_without_compression(response).ok().flatten(),
        _ => None,
    };
    if let Some(FlowDetail::Cassandra(c)) = &mut a.flow.detail {
        c.response = Some(summary);
    }
    a.flow.latency_us = Some(a.started.elapsed().as_micros() as u64);
    conn.record(a.flow);
    rewritten
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn prepared_ids_are_cassandras_md5_of_keyspace_and_text() {
        // md5("SELECT * FROM t") and md5("app" + "SELECT * FROM t")
        let bare = unhex("cd36a2072e7f9deaa746db7480200944");
        let in_app = unhex("0476978415be409d24aa9c2a604a6677");
        assert!(cassandras_prepared_id(&bare, "SELECT * FROM t", None));
        assert!(cassandras_prepared_id(&bare, "SELECT * FROM t", Some("app")), "fully qualified: no keyspace");
        assert!(cassandras_prepared_id(&in_app, "SELECT * FROM t", Some("app")));
        assert!(!cassandras_prepared_id(&in_app, "SELECT * FROM t", Some("other")), "read in another keyspace");
        assert!(!cassandras_prepared_id(&in_app, "SELECT * FROM u", Some("app")), "another statement");
    }
}
