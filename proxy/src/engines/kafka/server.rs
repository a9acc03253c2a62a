//! One Kafka client connection, relayed to one broker connection.
//!
//! Two halves run at once so that neither direction can stall the other:
//!
//! - the request half reads a frame, parses it, asks the filter chain and
//!   either writes the frame to the broker or queues weir's own refusal;
//! - the response half keeps the queue in request order: it writes a refusal
//!   as soon as every request before it has been answered, and matches each
//!   broker response to the oldest forwarded request by correlation id.
//!
//! A frame that cannot be parsed is never forwarded: the connection closes
//! with a flow record saying why.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use super::codec::{self, Request, Topics};
use crate::context::Target;
use crate::engines::chain::Answer;
use crate::engines::relay::{self, Connection, Snapshot};
use crate::engines::state::{OpenConnection, ProxyState};
use crate::model::ListenerModel;
use crate::observe::flow::{FlowDetail, FlowRecord, KafkaFlow, Verdict};
use crate::protocol::Protocol;
use crate::wasm::kafka as wit;

/// Kafka's own default for `socket.request.max.bytes`.
const MAX_REQUEST: usize = 100 << 20;
/// Responses may be larger (`fetch.max.bytes` is 50 MiB by default).
const MAX_RESPONSE: usize = 256 << 20;
/// Capacity of the queue between the halves. The response half moves
/// entries out at once, so this is not what bounds requests in flight: the
/// broker's socket buffer is (the request half waits when it is full).
const QUEUE: usize = 1024;
const READ_CHUNK: usize = 64 << 10;
/// Reads of an answer's body, which is relayed as it comes: larger reads,
/// fewer system calls on 1 MiB Fetch answers.
const RELAY_CHUNK: usize = 256 << 10;

/// What the response half must send next, in request order.
enum Pending {
    /// The broker answers: its next response must carry this correlation id.
    Broker {
        correlation_id: i32,
        api_key: i16,
        api_version: i16,
        flow: Box<FlowRecord>,
        started: Instant,
        /// A refused Metadata request sent as a brokers-only one: its answer
        /// goes out naming these topics, refused; if the answer cannot be
        /// rewritten, weir's own refusal goes out instead.
        refused_metadata: Option<Box<(Vec<MetadataResponseTopic>, BytesMut)>>,
    },
    /// Weir answered (a refusal): these bytes.
    Local { response: BytesMut },
}

pub async fn serve(state: Arc<ProxyState>, target: Target, client: TcpStream, peer: SocketAddr) {
    let conn = Connection::new(state, target, peer, Protocol::Kafka);
    let open = OpenConnection::new(&conn.state, &conn.listener);
    let _ = client.set_nodelay(true);
    let Some((snap, broker, _upstream_slot)) = conn.open(&open, &client).await else { return };
    // a listener with `brokers` sends clients to weir's address for each
    // broker; the listener is the one this connection was accepted on
    let rewrite = snap.listener.config.broker_addresses.is_some().then(|| snap.listener.clone());
    let (client_read, client_write) = client.into_split();
    let (broker_read, broker_write) = broker.into_split();
    let (queue, queued) = mpsc::channel(QUEUE);
    let requests = requests(&conn, snap, client_read, broker_write, queue);
    let responses = responses(&conn, broker_read, client_write, queued, rewrite);
    // the response half ends the connection when the broker or the client
    // goes; the request half ends it on a bad frame or the client's EOF
    tokio::join!(requests, responses);
}

/// Why a connection is closed by weir, for its last flow record.
struct Closing(String);

async fn requests(
    conn: &Connection,
    snap: Snapshot,
    mut client: OwnedReadHalf,
    mut broker: OwnedWriteHalf,
    queue: mpsc::Sender<Pending>,
) {
    // what this connection may buffer (limits.rs), and its largest request
    let mut held = conn.held(&snap);
    let max_request = MAX_REQUEST.min(held.max_request());
    let mut snap = Some(snap);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        let frame = tokio::select! {
            // the response half gave up: stop reading requests
            _ = queue.closed() => break,
            frame = conn.idle_guard(read_frame(&mut client, &mut buf, max_request, Some(&mut held))) => {
                frame.unwrap_or_else(|idle| Err(FrameError::Bad(idle.to_string())))
            }
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(FrameError::Io(e)) if e.kind() != std::io::ErrorKind::UnexpectedEof => break,
            Err(FrameError::Io(e)) => {
                // a client that hangs up mid-request: nothing of it was sent on
                conn.record_error(&mut snap, e.to_string());
                break;
            }
            Err(FrameError::Bad(why)) => {
                conn.record_error(&mut snap, format!("{why}; connection closed"));
                break;
            }
        };
        let Some(current) = conn.snapshot(snap.take()) else { break };
        let s = snap.insert(current);
        let started = Instant::now();
        // one buffer: the parsed request borrows from the bytes that are forwarded
        let frame = frame.freeze();
        let request = match codec::parse_request(frame.slice(4..)) {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("unparsable Kafka request ({e}); not forwarded, connection closed");
                conn.record(FlowRecord {
                    detail: Some(FlowDetail::Kafka(bad_frame_flow(&frame))),
                    ..conn.flow(s, Verdict::Error, Some(reason))
                });
                break;
            }
        };
        let mut flow = FlowRecord {
            detail: Some(FlowDetail::Kafka(kafka_flow(&request))),
            ..conn.flow(s, Verdict::Forwarded, None)
        };
        if let Some(answer) = codec::api_versions_too_new(&request) {
            flow.reason = Some(format!(
                "ApiVersions v{} is newer than weir reads: answered UNSUPPORTED_VERSION, the client asks again",
                request.api_version
            ));
            conn.record(flow);
            if queue.send(Pending::Local { response: answer }).await.is_err() {
                break;
            }
            continue;
        }
        match judge(s, &request, &mut flow) {
            None => {
                if request.expects_response {
                    let pending = Pending::Broker {
                        correlation_id: request.correlation_id,
                        api_key: request.api_key,
                        api_version: request.api_version,
                        flow: Box::new(flow),
                        started,
                        refused_metadata: None,
                    };
                    if queue.send(pending).await.is_err() {
                        break;
                    }
                } else {
                    conn.record(flow);
                }
                if broker.write_all(&frame).await.is_err() {
                    break;
                }
            }
            Some(relay::Refusal { verdict, detail: code }) => {
                flow.verdict = verdict;
                if let Some(FlowDetail::Kafka(k)) = &mut flow.detail {
                    k.error_code = Some(code);
                }
                if !request.expects_response {
                    // acks=0: the client waits for nothing; the records are dropped
                    conn.record(flow);
                    continue;
                }
                let Some(response) = request.refusal(code) else {
                    let why = flow.reason.take().unwrap_or_default();
                    flow.reason = Some(format!("{why}; weir cannot answer this API, connection closed"));
                    conn.record(flow);
                    break;
                };
                // Metadata: the broker is asked for its brokers only, and its
                // answer carries the refusal (codec::brokers_only_metadata)
                let brokers_only = (request.api_key == ApiKey::Metadata as i16)
                    .then(|| codec::brokers_only_metadata(&frame[4..], request.api_version))
                    .flatten()
                    .zip(request.refused_metadata_topics(code));
                if let Some((brokers_only, topics)) = brokers_only {
                    let pending = Pending::Broker {
                        correlation_id: request.correlation_id,
                        api_key: request.api_key,
                        api_version: request.api_version,
                        flow: Box::new(flow),
                        started,
                        refused_metadata: Some(Box::new((topics, response))),
                    };
                    if queue.send(pending).await.is_err() || broker.write_all(&brokers_only).await.is_err() {
                        break;
                    }
                    continue;
                }
                conn.record(flow);
                if queue.send(Pending::Local { response }).await.is_err() {
                    break;
                }
            }
        }
    }
    // no more requests: the broker sees EOF once everything sent is answered
    let _ = broker.shutdown().await;
}

/// Run the chain; `Some` refuses the request with a Kafka error code.
fn judge(snap: &Snapshot, request: &Request, flow: &mut FlowRecord) -> Option<relay::Refusal<i16>> {
    let wit_request = || wit::Request {
        api_key: request.api_key,
        api_version: request.api_version,
        correlation_id: request.correlation_id,
        client_id: request.client_id.clone(),
        topics: match &request.topics {
            Topics::None => wit::Topics::None,
            Topics::Named(t) => wit::Topics::Named(t.clone()),
            Topics::All => wit::Topics::All,
            Topics::Unknown => wit::Topics::Unknown,
        },
        transactional_id: request.transactional_id.clone(),
    };
    let default_code = || request.default_error_code();
    relay::run_chain(snap, flow, wit_request, default_code, |filter, view, wit_request| {
        Ok(match filter.on_kafka_request(view, wit_request)? {
            wit::RequestDecision::Allow(allow) => Answer::Allow(allow.matched),
            wit::RequestDecision::Deny(deny) => {
                Answer::Deny((deny.reason, deny.error_code.unwrap_or_else(default_code)))
            }
        })
    })
}

async fn responses(
    conn: &Connection,
    mut broker: OwnedReadHalf,
    mut client: OwnedWriteHalf,
    mut queued: mpsc::Receiver<Pending>,
    rewrite: Option<Arc<ListenerModel>>,
) {
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    // answers weir reads whole (to rewrite them) are reserved from the same
    // process-wide budget as requests: a cluster's Metadata can be megabytes
    let mut held = crate::limits::Held::new(&conn.state.limits, MAX_RESPONSE);
    let mut requests_done = false;
    let closing = loop {
        // refusals whose turn has come go out now
        while let Some(Pending::Local { .. }) = pending.front() {
            let Some(Pending::Local { response }) = pending.pop_front() else { unreachable!() };
            if client.write_all(&response).await.is_err() {
                break;
            }
        }
        if requests_done && pending.is_empty() {
            break None;
        }
        tokio::select! {
            // requests first: a response is only understood once its request
            // is known. Both halves run on one task (join!), so nothing can be
            // queued between this check and the read below.
            biased;
            next = queued.recv(), if !requests_done => match next {
                Some(p) => pending.push_back(p),
                None => requests_done = true,
            },
            head = read_head(&mut broker, &mut buf, MAX_RESPONSE, head_only(&pending)) => match head {
                Ok(Some(len)) => {
                    conn.idle.touch();
                    let Some(Pending::Broker { correlation_id, api_key, api_version, mut flow, started, refused_metadata }) = pending.pop_front() else {
                        break Some(Closing("the broker sent a response nobody asked for".into()));
                    };
                    let got = i32::from_be_bytes(buf[4..8].try_into().unwrap());
                    if got != correlation_id {
                        flow.verdict = Verdict::Error;
                        flow.reason = Some(format!("the broker answered correlation id {got}, expected {correlation_id}; connection closed"));
                        conn.record(*flow);
                        break Some(Closing("the broker answered out of order".into()));
                    }
                    // answers weir rewrites are read whole; every other one
                    // goes through as it arrives (a 1 MiB Fetch answer is not
                    // held back until its last byte is in)
                    let rewrites = rewrite.as_ref().filter(|_| codec::names_brokers(api_key, api_version));
                    let relayed = if api_key == 18 || refused_metadata.is_some() || rewrites.is_some() {
                        let whole = read_frame(&mut broker, &mut buf, MAX_RESPONSE, Some(&mut held)).await;
                        let relayed = match whole {
                            Ok(Some(mut frame)) => {
                                if api_key == 18 && let Some(narrowed) = codec::narrow_api_versions(&frame, api_version) {
                                    frame = narrowed;
                                }
                                if let Some(refusal) = refused_metadata {
                                    let (topics, own) = *refusal;
                                    frame = codec::metadata_answer_refusing(&frame, api_version, topics).unwrap_or(own);
                                }
                                match rewrites.map(|listener| rewrite_brokers(listener, &frame, api_key, api_version)) {
                                    None => client.write_all(&frame).await.map_err(|_| Relay::ClientGone),
                                    Some(Ok(rewritten)) => client.write_all(&rewritten).await.map_err(|_| Relay::ClientGone),
                                    // an answer naming brokers weir cannot
                                    // rewrite would send the client around it
                                    Some(Err(why)) => Err(Relay::Broker(why)),
                                }
                            }
                            Ok(None) => Err(Relay::Broker("the broker closed the connection".into())),
                            Err(FrameError::Io(e)) => Err(Relay::Broker(format!("the broker connection failed ({e})"))),
                            Err(FrameError::Bad(why)) => Err(Relay::Broker(format!("broker response: {why}"))),
                        };
                        // the answer is gone: hold only what was read past it
                        let _ = held.cover(buf.len());
                        relayed
                    } else {
                        relay_body(&mut broker, &mut buf, &mut client, 4 + len, &conn.state.metrics.kafka_spliced_bytes).await
                    };
                    flow.latency_us = Some(started.elapsed().as_micros() as u64);
                    match relayed {
                        Ok(()) => conn.record(*flow),
                        Err(Relay::ClientGone) => {
                            flow.verdict = Verdict::Error;
                            flow.reason = Some("the client went away before the response".into());
                            conn.record(*flow);
                            break None;
                        }
                        Err(Relay::Broker(why)) => {
                            // the client may hold part of this answer: it sees
                            // the connection close, as if the broker had gone
                            flow.verdict = Verdict::Error;
                            flow.reason = Some(format!("{why} inside a response; connection closed"));
                            conn.record(*flow);
                            break Some(Closing(why));
                        }
                    }
                }
                Ok(None) => break Some(Closing("the broker closed the connection".into())),
                Err(FrameError::Io(e)) => break Some(Closing(format!("the broker connection failed ({e})"))),
                Err(FrameError::Bad(why)) => break Some(Closing(format!("broker response: {why}"))),
            },
        }
    };
    if let Some(Closing(why)) = closing {
        // what was asked and not answered: the client sees the connection
        // close, as it would if the broker had gone
        for p in pending.drain(..) {
            if let Pending::Broker { mut flow, .. } = p {
                flow.verdict = Verdict::Error;
                flow.reason = Some(format!("{why} before responding"));
                conn.record(*flow);
            }
        }
    }
    let _ = client.shutdown().await;
}

/// An answer naming brokers, naming weir's listeners for them instead. A
/// broker without one is named as it is and said so in the log, or, with
/// `unlisted_brokers: refuse`, the answer is refused.
fn rewrite_brokers(listener: &ListenerModel, frame: &[u8], api_key: i16, version: i16) -> Result<BytesMut, String> {
    let (rewritten, unknown) =
        codec::rewrite_brokers(frame, api_key, version, &|id| listener.config.broker_address(id))?;
    if !unknown.is_empty() && listener.config.unlisted_brokers == crate::config::UnlistedBrokers::Refuse {
        return Err(format!(
            "an answer naming brokers {unknown:?}, which have no weir listener (`brokers:`; unlisted_brokers: refuse)"
        ));
    }
    // once a minute at most: every client's Metadata names the same brokers
    static WARNED: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let due = || {
        let mut last = WARNED.lock().unwrap();
        let due = last.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(60));
        if due {
            *last = Some(Instant::now());
        }
        due
    };
    if !unknown.is_empty() && due() {
        tracing::warn!(
            listener = listener.config.name,
            "brokers {unknown:?} have no weir listener (`brokers:` in weir.yaml): clients told of them connect to \
             them directly"
        );
    }
    Ok(rewritten)
}

enum FrameError {
    Io(std::io::Error),
    /// Not Kafka framing: a negative or oversized length.
    Bad(String),
}

/// Why relaying an answer stopped.
enum Relay {
    ClientGone,
    Broker(String),
}

/// Read until `buf` holds a response's length and correlation id; the
/// length (what follows the length field). `None`: the broker closed
/// between answers.
async fn read_head(
    reader: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    max: usize,
    head_only: bool,
) -> Result<Option<usize>, FrameError> {
    while buf.len() < 8 {
        if buf.capacity() - buf.len() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        let read = if head_only {
            let want = 8 - buf.len();
            let mut head = (&mut *buf).limit(want);
            reader.read_buf(&mut head).await
        } else {
            reader.read_buf(buf).await
        };
        match read {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => {
                let why = format!("the peer closed the connection inside a frame ({} bytes read)", buf.len());
                return Err(FrameError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, why)));
            }
            Ok(_) => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let len = i32::from_be_bytes(buf[..4].try_into().unwrap());
    if len < 4 || len as usize > max {
        return Err(FrameError::Bad(format!("frame length {len} outside 4..={max}")));
    }
    Ok(Some(len as usize))
}

/// Send the client the `total` bytes of one answer whose head is in `buf`:
/// what is buffered, then the rest as it arrives, one read-sized chunk at a
/// time (weir holds at most a chunk of an answer, whatever its size). The
/// rest of a large answer goes through a pipe with `splice(2)` instead: the
/// bytes never enter weir (a 1 MiB Fetch answer was two copies of it).
async fn relay_body(
    broker: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    client: &mut OwnedWriteHalf,
    total: usize,
    spliced: &prometheus_client::metrics::counter::Counter,
) -> Result<(), Relay> {
    let mut left = total;
    loop {
        let n = buf.len().min(left);
        if n > 0 {
            client.write_all(&buf[..n]).await.map_err(|_| Relay::ClientGone)?;
            buf.advance(n);
            left -= n;
        }
        if left == 0 {
            return Ok(());
        }
        if left >= SPLICE_AT
            && let Some(pipe) = Splicer::new()
        {
            let relayed = pipe.relay(broker, client, left).await;
            if relayed.is_ok() {
                spliced.inc_by(left as u64);
            }
            return relayed;
        }
        // empty here: reserving reuses the allocation it owns
        buf.reserve(RELAY_CHUNK.min(left));
        match broker.read_buf(buf).await {
            Ok(0) => return Err(Relay::Broker("the broker closed the connection".into())),
            Ok(_) => {}
            Err(e) => return Err(Relay::Broker(format!("the broker connection failed ({e})"))),
        }
    }
}

/// Whether the next answer is read up to its head alone: a Fetch answer is
/// usually large, and what a read takes past the head is copied into weir
/// and out again instead of spliced. Other answers are small, and one read
/// takes several of them.
fn head_only(pending: &VecDeque<Pending>) -> bool {
    matches!(pending.front(), Some(Pending::Broker { api_key, .. }) if *api_key == ApiKey::Fetch as i16)
}

/// Answers with at least this much left unread go through [`Splicer`].
const SPLICE_AT: usize = 64 << 10;

/// A pipe between the broker's socket and the client's, for `splice(2)`,
/// made for one large answer and closed after it: a connection holds no
/// descriptors for it between answers, and few pipes exist at once (the
/// kernel's per-user pipe pages stay for the ones that do).
struct Splicer {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
}

impl Splicer {
    /// `None` when the pipe cannot be made (out of descriptors): the answer
    /// then goes through weir's buffer.
    fn new() -> Option<Splicer> {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array on success
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return None;
        }
        // SAFETY: both descriptors are new and owned here alone
        let (read, write) =
            unsafe { (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1])) };
        // a larger pipe moves an answer in fewer calls (the default is 64 KiB;
        // refused above /proc/sys/fs/pipe-max-size, which is fine)
        // SAFETY: fcntl on a descriptor this function owns
        unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 1 << 20) };
        Some(Splicer { read, write })
    }

    /// Move `left` bytes from `broker` to `client`. The pipe is empty
    /// before and after (every byte spliced in is spliced out before the
    /// next read), so an error leaves nothing behind for the next answer —
    /// the connection closes on one anyway.
    async fn relay(&self, broker: &OwnedReadHalf, client: &OwnedWriteHalf, mut left: usize) -> Result<(), Relay> {
        use std::os::fd::AsRawFd;
        use tokio::io::Interest;
        let (from, to): (&TcpStream, &TcpStream) = (broker.as_ref(), client.as_ref());
        let mut low_water = 1;
        while left > 0 {
            // wake for a large piece of the answer, not for every segment
            let want = left.min(WAKE_AT);
            if want != low_water {
                set_rcvlowat(from.as_raw_fd(), want);
                low_water = want;
            }
            let moved = loop {
                from.readable().await.map_err(|e| Relay::Broker(format!("the broker connection failed ({e})")))?;
                let spliced = from
                    .try_io(Interest::READABLE, || splice(from.as_raw_fd(), self.write.as_raw_fd(), left.min(1 << 20)));
                match spliced {
                    Ok(0) => return Err(Relay::Broker("the broker closed the connection".into())),
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(Relay::Broker(format!("the broker connection failed ({e})"))),
                }
            };
            let mut in_pipe = moved;
            while in_pipe > 0 {
                to.writable().await.map_err(|_| Relay::ClientGone)?;
                match to.try_io(Interest::WRITABLE, || splice(self.read.as_raw_fd(), to.as_raw_fd(), in_pipe)) {
                    Ok(n) => in_pipe -= n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return Err(Relay::ClientGone),
                }
            }
            left -= moved;
        }
        set_rcvlowat(from.as_raw_fd(), 1);
        Ok(())
    }
}

/// How much of an answer being spliced the broker's socket gathers before it
/// wakes weir: each wakeup of a task on another core is an interrupt to it.
const WAKE_AT: usize = 256 << 10;

/// `SO_RCVLOWAT`: the socket is readable only with `bytes` queued (or at
/// its end). Linux grows the receive buffer to fit, so the sender is never
/// held below the mark.
fn set_rcvlowat(fd: std::os::fd::RawFd, bytes: usize) {
    let bytes = bytes as libc::c_int;
    // SAFETY: setsockopt with an int option on a descriptor the caller holds open
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// One non-blocking `splice(2)` of up to `len` bytes.
fn splice(from: std::os::fd::RawFd, to: std::os::fd::RawFd, len: usize) -> std::io::Result<usize> {
    // SAFETY: splice between two descriptors the caller holds open, with no
    // offsets (sockets and pipes have none)
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// Read one length-prefixed frame (prefix included). `Ok(None)`: a clean EOF
/// between frames. Cancel-safe: a partly read frame stays in `buf`. With
/// `held`, the declared frame is reserved from the buffer budget before
/// its body is read.
async fn read_frame(
    reader: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    max: usize,
    mut held: Option<&mut crate::limits::Held>,
) -> Result<Option<BytesMut>, FrameError> {
    loop {
        if buf.len() >= 4 {
            let len = i32::from_be_bytes(buf[..4].try_into().unwrap());
            // 4: a correlation id at least
            if len < 4 || len as usize > max {
                return Err(FrameError::Bad(format!("frame length {len} outside 4..={max}")));
            }
            let total = 4 + len as usize;
            if buf.len() >= total {
                return Ok(Some(buf.split_to(total)));
            }
            if let Some(held) = held.as_deref_mut() {
                held.cover(total.max(buf.len())).map_err(|over| FrameError::Bad(over.to_string()))?;
                // the connection's budget covers the whole frame: one
                // allocation for it, not one per chunk as it grows
                buf.reserve(total - buf.len());
            } else {
                // a chunk at a time: a length prefix alone must not make weir
                // allocate up to the frame limit
                buf.reserve((total - buf.len()).min(READ_CHUNK));
            }
        } else {
            buf.reserve(READ_CHUNK);
        }
        match reader.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => {
                let why = format!("the peer closed the connection inside a frame ({} bytes read)", buf.len());
                return Err(FrameError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, why)));
            }
            Ok(_) => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
}

fn kafka_flow(request: &Request) -> KafkaFlow {
    KafkaFlow {
        api_key: codec::api_name(request.api_key),
        api_version: request.api_version,
        correlation_id: request.correlation_id,
        client_id: request.client_id.clone().unwrap_or_default(),
        topics: match &request.topics {
            Topics::Named(t) => t.clone(),
            Topics::All => vec!["*".into()],
            Topics::None | Topics::Unknown => Vec::new(),
        },
        error_code: None,
    }
}

/// What a frame that did not parse still shows: its API key and version.
fn bad_frame_flow(frame: &[u8]) -> KafkaFlow {
    let mut head = &frame[4..];
    let api_key = if head.len() >= 2 { head.get_i16() } else { -1 };
    let api_version = if head.len() >= 2 { head.get_i16() } else { -1 };
    let correlation_id = if head.len() >= 4 { head.get_i32() } else { -1 };
    KafkaFlow { api_key: codec::api_name(api_key), api_version, correlation_id, ..Default::default() }
}
