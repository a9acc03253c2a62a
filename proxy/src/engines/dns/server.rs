//! Serving DNS on a listener's UDP socket and TCP listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

use super::message::{self, AnswerRecord};
use crate::config::DnsRefusal;
use crate::context::{ConnectionContext, Target, next_connection_id};
use crate::engines::chain::{self, ChainRun, Stopped};
use crate::engines::connection::Decision;
use crate::engines::state::ProxyState;
use crate::model::{ConnectionVerdict, ListenerModel, PolicyModel};
use crate::observe::flow::{DnsAnswer, DnsFlow, FlowDetail, FlowRecord, Verdict};
use crate::observe::metrics::{DnsLabels, RequestLabels};
use crate::policy::L4Protocol;
use crate::protocol::Protocol;
use crate::wasm::dns;

/// Largest DNS message over UDP (and the TCP length prefix's limit).
const MAX_MESSAGE: usize = 65535;
/// A TCP client that sends nothing for this long is disconnected (RFC 7766 6.2.3).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct DnsSockets {
    pub udp: Arc<UdpSocket>,
    pub tcp: Arc<TcpListener>,
}

/// Bind UDP and TCP on the same address. `SO_REUSEPORT` lets a changed
/// listener bind before the old one stops, as for HTTP.
/// Either may be one a previous weir handed over (`handover`).
pub fn bind(addr: SocketAddr) -> std::io::Result<DnsSockets> {
    let udp = crate::handover::sockets::udp_socket(addr, false, || {
        let udp = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
        udp.set_reuse_address(true)?;
        udp.set_reuse_port(true)?;
        udp.set_nonblocking(true)?;
        // bursts of queries must not be dropped by a small default buffer
        let _ = udp.set_recv_buffer_size(4 << 20);
        udp.bind(&addr.into())?;
        Ok(udp.into())
    })?;
    let tcp = crate::engines::listeners::bind_stream(addr)?;
    Ok(DnsSockets { udp, tcp })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }

    fn protocol(self) -> L4Protocol {
        match self {
            Transport::Udp => L4Protocol::Udp,
            Transport::Tcp => L4Protocol::Tcp,
        }
    }
}

/// Receive queries until told to stop; each is answered on its own task.
pub async fn serve_udp(
    state: Arc<ProxyState>,
    name: Arc<str>,
    socket: Arc<UdpSocket>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    crate::handover::sockets::until_serving().await;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, peer)) => {
                    let query = buf[..len].to_vec();
                    let (state, name, socket) = (state.clone(), name.clone(), socket.clone());
                    let in_flight = state.handover.query();
                    tokio::spawn(async move {
                        let _in_flight = in_flight;
                        let mut upstream = Upstream::Udp;
                        let id = next_connection_id();
                        let target = Target::Listener(name.clone());
                        if let Some(answer) = exchange(&state, &target, peer, id, &query, &mut upstream).await
                            && let Err(e) = socket.send_to(&answer, peer).await
                        {
                            tracing::debug!(listener = &*name, %peer, "DNS answer not sent: {e}");
                        }
                    });
                }
                Err(e) => {
                    // ICMP errors from earlier sends surface here; keep serving
                    tracing::debug!(listener = &*name, "DNS receive failed: {e}");
                }
            },
        }
    }
}

/// Accept TCP clients until told to stop.
pub async fn serve_tcp(
    state: Arc<ProxyState>,
    name: Arc<str>,
    listener: Arc<TcpListener>,
    mut stop: watch::Receiver<bool>,
) {
    crate::handover::sockets::until_serving().await;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // counted against the connection limits (limits.rs) while it lives
                    let target = Target::Listener(name.clone());
                    let Some(admitted) = crate::engines::listeners::admit(&state, &target, Protocol::Dns, &stream, peer) else { continue };
                    let _ = stream.set_nodelay(true);
                    let connection = tcp_connection(state.clone(), Target::Listener(name.clone()), stream, peer);
                    tokio::spawn(async move { let _admitted = admitted; connection.await });
                }
                Err(e) => {
                    tracing::warn!(listener = &*name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serve the TCP connections the datapath redirected to the DNS proxy.
pub async fn serve_transparent_tcp(state: Arc<ProxyState>, listener: Arc<TcpListener>, stop: watch::Receiver<bool>) {
    crate::engines::listeners::transparent_accept_loop(listener, stop, |c| {
        let (original_destination, source_identity) = (c.original_destination, c.source_identity);
        let counted = crate::context::Target::Transparent { original_destination, source_identity };
        let Some(admitted) = crate::engines::listeners::admit(&state, &counted, Protocol::Dns, &c.stream, c.peer)
        else {
            return;
        };
        let _ = c.stream.set_nodelay(true);
        let target = Target::Transparent { original_destination, source_identity };
        let connection = tcp_connection(state.clone(), target, c.stream, c.peer);
        tokio::spawn(async move {
            let _admitted = admitted;
            connection.await
        });
    })
    .await
}

/// `SO_RCVMARK` (Linux 5.19): each datagram's mark arrives as a control message.
const SO_RCVMARK: libc::c_int = 75;

/// The UDP socket the datapath assigns DNS datagrams to: `IP_TRANSPARENT`
/// so it takes datagrams addressed to any resolver, and each datagram comes
/// with its original destination and its mark.
pub fn bind_transparent_udp(addr: SocketAddr) -> std::io::Result<Arc<UdpSocket>> {
    crate::handover::sockets::udp_socket(addr, true, || bind_transparent_udp_socket(addr))
}

fn bind_transparent_udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
    socket.set_ip_transparent(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let on: libc::c_int = 1;
    let original_destination = if addr.is_ipv6() {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVORIGDSTADDR)
    } else {
        (libc::IPPROTO_IP, libc::IP_RECVORIGDSTADDR)
    };
    for (level, option) in [original_destination, (libc::SOL_SOCKET, SO_RCVMARK)] {
        // SAFETY: a valid fd and a c_int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                level,
                option,
                &on as *const _ as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// One datagram with where it was going and its mark.
struct Datagram {
    len: usize,
    peer: SocketAddr,
    original_destination: Option<SocketAddr>,
    mark: u32,
}

fn recv_with_origin(fd: std::os::fd::RawFd, buf: &mut [u8]) -> std::io::Result<Datagram> {
    // SAFETY: every pointer handed to recvmsg points into locals that outlive
    // the call, with their true lengths; control messages are read with the
    // CMSG macros within msg_controllen.
    unsafe {
        let mut peer: libc::sockaddr_storage = std::mem::zeroed();
        let mut control = [0u8; 128];
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &mut peer as *mut _ as *mut libc::c_void;
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = control.len();
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let v4 = |sa: &libc::sockaddr_in| {
            SocketAddr::from((u32::from_be(sa.sin_addr.s_addr).to_be_bytes(), u16::from_be(sa.sin_port)))
        };
        let v6 = |sa: &libc::sockaddr_in6| SocketAddr::from((sa.sin6_addr.s6_addr, u16::from_be(sa.sin6_port)));
        let peer = if i32::from(peer.ss_family) == libc::AF_INET6 {
            v6(&*(&peer as *const libc::sockaddr_storage as *const libc::sockaddr_in6))
        } else {
            v4(&*(&peer as *const libc::sockaddr_storage as *const libc::sockaddr_in))
        };
        let mut datagram = Datagram { len: n as usize, peer, original_destination: None, mark: 0 };
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_ORIGDSTADDR) => {
                    let sa = std::ptr::read_unaligned(data as *const libc::sockaddr_in);
                    datagram.original_destination = Some(v4(&sa));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_ORIGDSTADDR) => {
                    let sa = std::ptr::read_unaligned(data as *const libc::sockaddr_in6);
                    datagram.original_destination = Some(v6(&sa));
                }
                (libc::SOL_SOCKET, libc::SO_MARK) => {
                    datagram.mark = std::ptr::read_unaligned(data as *const u32);
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok(datagram)
    }
}

/// Serve the datagrams the datapath assigned to the DNS proxy; answers leave
/// from the resolver's address, as if the resolver had sent them.
pub async fn serve_transparent_udp(state: Arc<ProxyState>, socket: Arc<UdpSocket>, mut stop: watch::Receiver<bool>) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    let own = socket.local_addr().ok();
    let mut buf = vec![0u8; MAX_MESSAGE];
    crate::handover::sockets::until_serving().await;
    loop {
        let received = tokio::select! {
            _ = stop.changed() => break,
            r = socket.async_io(tokio::io::Interest::READABLE, || recv_with_origin(fd, &mut buf)) => r,
        };
        let datagram = match received {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!("transparent DNS receive failed: {e}");
                continue;
            }
        };
        let Some(original_destination) = datagram.original_destination.filter(|d| Some(*d) != own) else {
            continue; // sent to the proxy's own address: not redirected
        };
        let source_identity = crate::net::sender_identity(datagram.mark);
        let query = buf[..datagram.len].to_vec();
        let state = state.clone();
        let in_flight = state.handover.query();
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let target = Target::Transparent { original_destination, source_identity };
            let mut upstream = Upstream::Udp;
            let id = next_connection_id();
            if let Some(answer) = exchange(&state, &target, datagram.peer, id, &query, &mut upstream).await
                && let Err(e) = reply_from(original_destination, datagram.peer, source_identity, &answer)
            {
                tracing::debug!(%original_destination, peer = %datagram.peer, "DNS answer not sent: {e}");
            }
        });
    }
}

/// Send `answer` to `peer` from `from` (the resolver's address), marked as
/// the proxy's so the datapath passes it once.
fn reply_from(from: SocketAddr, peer: SocketAddr, identity: Option<u32>, answer: &[u8]) -> std::io::Result<()> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(from), socket2::Type::DGRAM, None)?;
    socket.set_ip_transparent(true)?;
    socket.set_reuse_address(true)?;
    socket.set_mark(crate::net::from_proxy_mark(identity.unwrap_or(0)))?;
    socket.bind(&from.into())?;
    socket.send_to(answer, &peer.into())?;
    Ok(())
}

/// Several queries may come on one connection, pipelined: they are answered
/// in order, over one connection to the resolver.
async fn tcp_connection(state: Arc<ProxyState>, target: Target, mut stream: TcpStream, peer: SocketAddr) {
    let mut upstream = Upstream::Tcp(None);
    let id = next_connection_id();
    let mut draining = state.handover.draining.subscribe();
    loop {
        // a draining weir answers what it was asked and closes the connection
        // when it is idle (RFC 7766 6.2.3: clients open a new one)
        let asked = tokio::time::timeout(TCP_IDLE_TIMEOUT, async {
            if *draining.borrow() {
                return false;
            }
            tokio::select! {
                readable = stream.readable() => readable.is_ok(),
                () = crate::handover::stopped(&mut draining) => false,
            }
        });
        if !matches!(asked.await, Ok(true)) {
            return;
        }
        let query = match tokio::time::timeout(TCP_IDLE_TIMEOUT, read_framed(&mut stream)).await {
            Ok(Ok(Some(query))) => query,
            Ok(Ok(None)) | Err(_) => return, // closed, or idle too long
            Ok(Err(e)) => {
                tracing::debug!(?target, %peer, "DNS over TCP: {e}");
                return;
            }
        };
        let Some(answer) = exchange(&state, &target, peer, id, &query, &mut upstream).await else {
            // nothing to say (dropped by policy, or not DNS at all): hang up
            return;
        };
        if write_framed(&mut stream, &answer).await.is_err() {
            return;
        }
    }
}

/// One length-prefixed message; `None` at a clean end of stream.
async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut message = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}

async fn write_framed(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| std::io::Error::other("DNS message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// How queries reach the resolver: a fresh UDP socket per query (a random
/// source port each time, as resolvers do against spoofing), or the TCP
/// connection that belongs to the client's TCP connection.
enum Upstream {
    Udp,
    /// With its descriptor slot (docs/limits.md).
    Tcp(Option<(TcpStream, crate::limits::UpstreamSlot)>),
}

impl Upstream {
    fn transport(&self) -> Transport {
        match self {
            Upstream::Udp => Transport::Udp,
            Upstream::Tcp(_) => Transport::Tcp,
        }
    }

    /// Send the query as received (over UDP with an id of the proxy's, see
    /// [`super::upstream`]), and wait for its answer.
    async fn forward(
        &mut self,
        state: &ProxyState,
        resolver: SocketAddr,
        bytes: &[u8],
        query: &Message,
    ) -> std::io::Result<(Vec<u8>, Message)> {
        match self {
            Upstream::Udp => {
                let answer_bytes = state.dns_upstreams.exchange(resolver, bytes).await?;
                let answer = Message::from_vec(&answer_bytes)
                    .map_err(|e| std::io::Error::other(format!("malformed answer from the resolver: {e}")))?;
                if !message::answers(query, &answer) {
                    return Err(std::io::Error::other("the resolver's answer does not match the question"));
                }
                Ok((answer_bytes, answer))
            }
            Upstream::Tcp(connection) => {
                // a kept connection the resolver closed meanwhile fails at
                // once: then try once more on a new one
                for attempt in 0..2 {
                    let reused = connection.is_some();
                    if connection.is_none() {
                        let slot = state.limits.upstream_slot_or_make_room().await.map_err(std::io::Error::other)?;
                        let stream = TcpStream::connect(resolver).await?;
                        let _ = stream.set_nodelay(true);
                        *connection = Some((stream, slot));
                    }
                    let (stream, _) = connection.as_mut().expect("connected above");
                    let result = async {
                        write_framed(stream, bytes).await?;
                        read_framed(stream)
                            .await?
                            .ok_or_else(|| std::io::Error::other("the resolver closed the connection"))
                    }
                    .await;
                    match result {
                        Ok(answer_bytes) => {
                            let answer = Message::from_vec(&answer_bytes).map_err(|e| {
                                std::io::Error::other(format!("malformed answer from the resolver: {e}"))
                            })?;
                            if !message::answers(query, &answer) {
                                *connection = None;
                                return Err(std::io::Error::other("the resolver answered another query"));
                            }
                            return Ok((answer_bytes, answer));
                        }
                        Err(e) => {
                            *connection = None;
                            if !reused || attempt == 1 {
                                return Err(e);
                            }
                        }
                    }
                }
                unreachable!("the second attempt returns")
            }
        }
    }
}

/// What happened to one query, for the flow record.
struct Outcome {
    verdict: Verdict,
    reason: Option<String>,
    matched: Option<String>,
    /// What the client was sent, if anything.
    answer: Option<Vec<u8>>,
    rcode: Option<ResponseCode>,
    answers: Vec<AnswerRecord>,
    truncated: bool,
}

impl Outcome {
    /// Nothing is sent back.
    fn silent(verdict: Verdict, reason: String) -> Self {
        Outcome {
            verdict,
            reason: Some(reason),
            matched: None,
            answer: None,
            rcode: None,
            answers: Vec::new(),
            truncated: false,
        }
    }

    /// The proxy answers with `answer` (code `rcode`) itself.
    fn answered(verdict: Verdict, reason: String, answer: Vec<u8>, rcode: ResponseCode) -> Self {
        Outcome { answer: Some(answer), rcode: Some(rcode), ..Outcome::silent(verdict, reason) }
    }

    /// The proxy answers `query` with `rcode` and no records.
    fn own(verdict: Verdict, reason: String, query: &Message, rcode: ResponseCode) -> Self {
        Outcome::answered(verdict, reason, message::own_answer(query, rcode), rcode)
    }
}

/// Judge one query, forward it if allowed, learn from the answer, record the
/// flow. Returns what to send back (`None`: send nothing).
async fn exchange(
    state: &Arc<ProxyState>,
    target: &Target,
    peer: SocketAddr,
    connection: u64,
    bytes: &[u8],
    upstream: &mut Upstream,
) -> Option<Vec<u8>> {
    let started = Instant::now();
    let transport = upstream.transport();
    // the connection step, for each exchange (the verdict is cached per model)
    let decision =
        Decision::make(state, state.model.load_full(), target, peer, connection, Protocol::Dns, transport.protocol())?;
    let (model, listener, context) = (&decision.model, &decision.listener, &decision.context);
    let mut flow = DnsFlow { transport: transport.as_str().into(), ..Default::default() };
    let mut filter_time = Duration::ZERO;
    let mut policies = Vec::new();
    let mut audited_by = Vec::new();

    let outcome = match message::read_query(bytes) {
        Err(e) => match message::header_of(bytes) {
            // answering a response would let two proxies ping-pong forever
            Some(header) if header.message_type() == hickory_proto::op::MessageType::Query => Outcome::answered(
                Verdict::Error,
                format!("malformed query: {e}"),
                message::format_error(&header),
                ResponseCode::FormErr,
            ),
            _ => Outcome::silent(Verdict::Error, format!("not a DNS query, dropped: {e}")),
        },
        Ok((query, unjudged)) => {
            if let Some(first) = query.queries().first() {
                flow.query = message::name_text(first.name());
                flow.qtype = message::type_text(first.query_type());
                flow.more_questions = query.queries()[1..].iter().map(|q| message::name_text(q.name())).collect();
            }
            if let Some(why) = message::not_a_query(&query) {
                if query.message_type() == hickory_proto::op::MessageType::Response {
                    Outcome::silent(Verdict::Error, why)
                } else if query.queries().is_empty() {
                    Outcome::own(Verdict::Error, why, &query, ResponseCode::FormErr)
                } else {
                    Outcome::own(Verdict::Denied, why, &query, ResponseCode::Refused)
                }
            } else if let Some(why) = unjudged {
                // never relay bytes no rule looked at
                let reason = format!("malformed query: {why}; not forwarded");
                Outcome::own(Verdict::Error, reason, &query, ResponseCode::FormErr)
            } else {
                match &*decision.verdict {
                    ConnectionVerdict::Drop { reason } => Outcome::silent(Verdict::Dropped, reason.clone()),
                    ConnectionVerdict::Forward(chain) => {
                        policies = chain.allowed_by.clone();
                        let judged = judge(model, context, chain, &query, transport, &mut filter_time);
                        match judged {
                            Err(outcome) => outcome,
                            Ok(Judged { matched, audit }) => {
                                let mut outcome = forward(state, model, listener, upstream, peer, bytes, &query).await;
                                outcome.matched = matched;
                                // answered, though an audited rule would have refused it
                                if let Some((why, policies)) = audit
                                    && outcome.verdict == Verdict::Forwarded
                                {
                                    outcome.verdict = Verdict::Audited;
                                    outcome.reason = Some(why);
                                    audited_by = policies;
                                }
                                outcome
                            }
                        }
                    }
                }
            }
        }
    };

    flow.rcode = outcome.rcode.map(rcode_text);
    flow.truncated = outcome.truncated;
    flow.answers = outcome
        .answers
        .into_iter()
        .map(|a| DnsAnswer { name: a.name, rtype: a.rtype, data: a.data, ttl: a.ttl })
        .collect();
    let metrics = &state.metrics;
    metrics
        .dns_queries
        .get_or_create(&DnsLabels {
            verdict: outcome.verdict.as_str(),
            rcode: flow.rcode.clone().unwrap_or("none".into()),
        })
        .inc();
    metrics.requests.get_or_create(&RequestLabels { protocol: "dns", verdict: outcome.verdict.as_str() }).inc();
    state.flows.record(FlowRecord {
        reason: outcome.reason,
        policies,
        matched: outcome.matched,
        audited_by,
        detail: Some(FlowDetail::Dns(flow)),
        latency_us: Some(started.elapsed().as_micros() as u64),
        filter_us: filter_time.as_micros() as u64,
        ..FlowRecord::of(context, crate::protocol::Protocol::Dns, outcome.verdict)
    });
    outcome.answer
}

/// A query the chain allowed.
struct Judged {
    /// What allowed it.
    matched: Option<String>,
    /// Why the audited rules would have refused it, and which.
    audit: Option<(String, Vec<String>)>,
}

/// Run the filter chain (and the audited rules'). `Ok` when it allows the
/// query, or the outcome of a refusal.
fn judge(
    model: &PolicyModel,
    context: &Arc<ConnectionContext>,
    chain: &crate::model::FilterChain,
    query: &Message,
    transport: Transport,
    filter_time: &mut Duration,
) -> Result<Judged, Outcome> {
    if chain.links.is_empty() && chain.audit.is_none() {
        return Ok(Judged { matched: chain.allowed_by.first().cloned(), audit: None });
    }
    let wit_query = dns::Query {
        id: query.id(),
        questions: query
            .queries()
            .iter()
            .map(|q| dns::Question {
                name: message::name_text(q.name()),
                qtype: u16::from(q.query_type()),
                qclass: u16::from(q.query_class()),
            })
            .collect(),
        transport: match transport {
            Transport::Udp => dns::Transport::Udp,
            Transport::Tcp => dns::Transport::Tcp,
        },
    };
    let refusal = |rcode: Option<dns::Refusal>| match rcode {
        Some(dns::Refusal::Nxdomain) => ResponseCode::NXDomain,
        Some(dns::Refusal::Refused) => ResponseCode::Refused,
        None => match model.config.dns.refusal {
            DnsRefusal::Refused => ResponseCode::Refused,
            DnsRefusal::Nxdomain => ResponseCode::NXDomain,
        },
    };
    let mut run = ChainRun { filter_time: *filter_time, matched: Vec::new() };
    let stopped = chain::run(&chain.links, context, &mut run, |link, view| {
        Ok(match link.filter.on_query(view, &wit_query)? {
            dns::QueryDecision::Allow(allow) => chain::Answer::Allow(allow.matched),
            dns::QueryDecision::Deny(deny) => {
                chain::Answer::Deny(dns::Deny { reason: link.denial(&deny.reason), ..deny })
            }
        })
    });
    let audit = match (&stopped, &chain.audit) {
        (None, Some(audit)) => chain::audit(audit, context, &mut run, |link, view| {
            Ok(match link.filter.on_query(view, &wit_query)? {
                dns::QueryDecision::Allow(allow) => chain::Answer::Allow(allow.matched),
                dns::QueryDecision::Deny(deny) => chain::Answer::Deny(link.denial(&deny.reason)),
            })
        })
        .map(|why| (why, audit.policies.clone())),
        _ => None,
    };
    *filter_time = run.filter_time;
    match stopped {
        None if chain.links.is_empty() => Ok(Judged { matched: chain.allowed_by.first().cloned(), audit }),
        None => Ok(Judged { matched: run.matched.pop(), audit }),
        Some(Stopped::Denied(deny)) => Err(Outcome::own(Verdict::Denied, deny.reason, query, refusal(deny.rcode))),
        Some(Stopped::Failed(failure)) => {
            Err(Outcome::own(Verdict::Error, failure.to_string(), query, ResponseCode::ServFail))
        }
    }
}

/// Send an allowed query to the resolver and relay its answer; learn the
/// addresses it names for the client endpoint.
async fn forward(
    state: &Arc<ProxyState>,
    model: &PolicyModel,
    listener: &ListenerModel,
    upstream: &mut Upstream,
    peer: SocketAddr,
    bytes: &[u8],
    query: &Message,
) -> Outcome {
    let resolver = listener.config.upstream;
    let timeout = model.config.dns.upstream_timeout;
    let asked = Instant::now();
    let result = tokio::time::timeout(timeout, upstream.forward(state, resolver, bytes, query)).await;
    let (answer_bytes, answer) = match result {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            if let Upstream::Tcp(connection) = upstream {
                *connection = None;
            }
            let reason = format!("resolver {resolver}: {e}");
            return Outcome::own(Verdict::Error, reason, query, ResponseCode::ServFail);
        }
        Err(_) => {
            if let Upstream::Tcp(connection) = upstream {
                *connection = None; // an answer may still come: never read it as the next one's
            }
            let reason = format!("resolver {resolver} did not answer within {timeout:?}");
            return Outcome::own(Verdict::Error, reason, query, ResponseCode::ServFail);
        }
    };
    state.metrics.dns_upstream_duration.observe(asked.elapsed().as_secs_f64());
    if answer.response_code() == ResponseCode::NoError
        && let Some(endpoint) = model.identities.endpoint(peer.ip())
    {
        let endpoint = endpoint.qualified_name();
        let mut learned_new = false;
        let mut successor_applied = Vec::new();
        for (name, addresses) in message::learned_addresses(&answer) {
            learned_new |= state.fqdn.learn(&endpoint, &name, &addresses);
            // during a hand-over the new weir learns it too
            successor_applied.extend(state.handover.forward_learned(&endpoint, &name, &addresses));
        }
        if learned_new {
            datapath_caught_up(state).await;
        }
        for applied in successor_applied {
            // after it: only the new weir's maps can let the client connect
            if tokio::time::timeout(Duration::from_millis(500), applied).await.is_err() {
                tracing::warn!("the new weir did not take a learned address within 500ms; answering anyway");
            }
        }
    }
    Outcome {
        verdict: Verdict::Forwarded,
        reason: None,
        matched: None,
        rcode: Some(answer.response_code()),
        answers: message::answer_records(&answer),
        truncated: answer.truncated(),
        answer: Some(answer_bytes),
    }
}

/// With the eBPF datapath, hold an answer that taught new addresses until the
/// kernel's maps allow them: a client connects the moment it has the answer,
/// and a SYN dropped for a map not yet written costs it a second.
async fn datapath_caught_up(state: &ProxyState) {
    const MOST: Duration = Duration::from_millis(500);
    // handed over: the maps are the new weir's (see the forwarding above)
    if !state.datapath_active.load(std::sync::atomic::Ordering::Relaxed) || state.handover.handed_over() {
        return;
    }
    let wanted = state.fqdn.generation();
    let mut applied = state.fqdn_applied.subscribe();
    if tokio::time::timeout(MOST, applied.wait_for(|g| *g >= wanted)).await.is_err() {
        tracing::warn!("the datapath did not take newly learned addresses within {MOST:?}; answering anyway");
    }
}

fn rcode_text(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}
