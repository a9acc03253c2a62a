//! One request through the proxy: validate, normalize, filter, forward.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::{BodyEnd, EndHook, ProxyBody, TrackedBody};
use super::normalize::normalize_path;
use super::reply;
use super::tunnel::{self, Switched, UpgradeRequest};
use super::upstream::{Checkin, UpstreamError, UpstreamPools};
use crate::config::UpstreamProtocol;
use crate::context::{ConnectionContext, Target};
use crate::engines::chain::{self, ChainRun, Stopped};
use crate::engines::connection::Decision;
use crate::engines::state::ProxyState;
use crate::model::{ConnectionVerdict, FilterChain};
use crate::observe::flow::{FlowDetail, FlowRecord, HttpFlow, Verdict};
use crate::policy::L4Protocol;
use crate::wasm::{FilterFailure, http as wit, request_head_line};

/// Request bodies up to this size are read to the end when a request is
/// refused, so an HTTP/1.1 connection stays usable; larger ones close it.
const DRAIN_LIMIT: usize = 64 << 10;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// One downstream connection's view of the model (the connection step's
/// decision and the upstream pools it picks), made again when the model
/// changes.
struct Snapshot {
    decision: Decision,
    pools: Arc<UpstreamPools>,
}

impl std::ops::Deref for Snapshot {
    type Target = Decision;
    fn deref(&self) -> &Decision {
        &self.decision
    }
}

pub struct HttpConnection {
    state: Arc<ProxyState>,
    target: Target,
    peer: SocketAddr,
    id: u64,
    scheme: &'static str,
    next_request: AtomicU64,
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    /// The relay of a connection switched to another protocol (WebSocket):
    /// the connection is served until it ends.
    tunnel: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The latest request hyper could have switched after (an `Upgrade`
    /// header, CONNECT): its side of the connection, kept until weir
    /// switches it or the connection ends (then it is shut down).
    pending_upgrade: Mutex<Option<hyper::upgrade::OnUpgrade>>,
}

/// The concurrent streams an HTTP/2 client may open where the listener
/// speaks HTTP/1.1 to its upstream (100 elsewhere): each stream at the
/// upstream needs a connection of its own, so one client connection could
/// otherwise make weir open a hundred, and a few such clients spend the
/// node's descriptors. Said in SETTINGS, so the client queues the rest
/// itself: a stream weir made wait would not be read, and its unread DATA
/// would fill the connection's window and stall the streams being served.
/// Browsers keep six HTTP/1.1 connections per host.
pub const HTTP2_STREAMS_TO_HTTP1_UPSTREAM: u32 = 16;

/// A request in flight. If the client goes away, hyper drops the handler
/// future; the guard then still records the request's flow.
struct InFlight {
    conn: Arc<HttpConnection>,
    snap: Arc<Snapshot>,
    trace: Option<RequestTrace>,
}

impl InFlight {
    fn trace(&mut self) -> &mut RequestTrace {
        self.trace.as_mut().expect("a finished request is not traced further")
    }

    /// Hand the flow over to the response body: it is recorded when the
    /// body ends, so a stream cut short shows as such. The upstream
    /// connection (HTTP/1.1) goes back to its pool when the body has ended
    /// whole; otherwise it is closed.
    fn record_at_end(mut self, status: u16, leg: UpstreamLeg) -> EndHook {
        let (conn, snap, mut trace) = (self.conn.clone(), self.snap.clone(), self.trace.take());
        let UpstreamLeg { request_aborted, checkin } = leg;
        Box::new(move |end: BodyEnd| {
            if let (BodyEnd::Complete, Some(checkin)) = (&end, checkin) {
                checkin.give_back();
            }
            let Some(trace) = trace.take() else { return };
            let (verdict, reason) = match end {
                BodyEnd::Complete => (Verdict::Forwarded, None),
                BodyEnd::Failed(_) if request_aborted.load(Ordering::Relaxed) => {
                    (Verdict::Error, Some("the client aborted the request body".to_string()))
                }
                BodyEnd::Failed(e) => (Verdict::Error, Some(format!("the response body failed: {e}"))),
                BodyEnd::Abandoned => {
                    (Verdict::Error, Some("the client went away before the response ended".to_string()))
                }
            };
            conn.record(&snap, trace, verdict, reason, Some(status));
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(trace) = self.trace.take() {
            let reason = "the client closed the connection before the response".to_string();
            self.conn.record(&self.snap, trace, Verdict::Error, Some(reason), None);
        }
    }
}

/// What the end of a forwarded response settles: whether the client broke
/// off its request body, and (HTTP/1.1) the upstream connection to give back.
struct UpstreamLeg {
    request_aborted: Arc<AtomicBool>,
    checkin: Option<Checkin>,
}

/// What a request's flow record needs, gathered along the way.
struct RequestTrace {
    started: Instant,
    http: HttpFlow,
    filter_time: Duration,
    matched: Option<String>,
    /// Time to the response head, when the upstream answered.
    latency: Option<Duration>,
    /// Why the audited rules would have refused the request, and which.
    audit: Option<(String, Vec<String>)>,
}

/// A request that passed the checks: its parts as they will be forwarded.
struct Checked {
    parts: http::request::Parts,
    body: Incoming,
    /// Normalized; empty when the request named none.
    authority: String,
    path_and_query: String,
    scheme: &'static str,
    /// Forwarded as an upgrade (WebSocket): the protocol and the client's
    /// side of the connection.
    upgrade: Option<UpgradeRequest>,
}

impl Checked {
    /// The request head as filters read it.
    fn head(&self) -> Vec<u8> {
        self.head_with(&self.parts.headers)
    }

    /// The same head with other headers (an audit's edits, never forwarded).
    fn head_with(&self, headers: &HeaderMap) -> Vec<u8> {
        let (method, path) = (self.parts.method.as_str(), &self.path_and_query);
        let mut head = request_head_line(method, path, &self.authority, self.scheme, headers.len() * 32);
        write_headers(&mut head, headers);
        head
    }

    /// The request back, for a stop that answers it without forwarding.
    fn into_request(self) -> Request<Incoming> {
        Request::from_parts(self.parts, self.body)
    }
}

/// How a stage ends a request before its response is handed on (boxed: it
/// carries the request, and only refusals pay for it).
#[allow(clippy::large_enum_variant)] // always boxed
enum Stop {
    /// Answer without forwarding. An HTTP/1.1 request body is read to the
    /// end (up to a limit) first, so the client can send its next request.
    Refuse { request: Request<Incoming>, response: Response<ProxyBody>, verdict: Verdict, reason: String },
    /// Answer now: the request was forwarded already.
    Finish { response: Response<ProxyBody>, verdict: Verdict, reason: String },
}

impl Stop {
    fn filter_failed(request: Request<Incoming>, failure: FilterFailure) -> Box<Stop> {
        let (response, reason) = (reply::filter_failed(), failure.to_string());
        Box::new(Stop::Refuse { request, response, verdict: Verdict::Error, reason })
    }

    async fn answer(self, flight: InFlight) -> Response<ProxyBody> {
        match self {
            Stop::Refuse { request, response, verdict, reason } => {
                let http1 = request.version() < Version::HTTP_2;
                let body = request.into_body();
                let response = if http1 && !body.is_end_stream() && !drain(body).await {
                    reply::closing(response)
                } else {
                    response
                };
                HttpConnection::finish(flight, verdict, Some(reason), response)
            }
            Stop::Finish { response, verdict, reason } => {
                HttpConnection::finish(flight, verdict, Some(reason), response)
            }
        }
    }
}

impl HttpConnection {
    pub fn new(state: Arc<ProxyState>, target: Target, peer: SocketAddr, id: u64, tls: bool) -> Self {
        HttpConnection {
            state,
            target,
            peer,
            id,
            scheme: if tls { "https" } else { "http" },
            next_request: AtomicU64::new(1),
            snapshot: Mutex::new(None),
            tunnel: Mutex::new(None),
            pending_upgrade: Mutex::new(None),
        }
    }

    /// The bound on an HTTP/2 client's concurrent streams this listener
    /// needs, if any ([`HTTP2_STREAMS_TO_HTTP1_UPSTREAM`]). Read when the
    /// connection starts; a reload that makes the upstream HTTP/1.1 reaches
    /// new connections (the descriptor slots bound the ones open).
    pub fn http2_stream_bound(&self) -> Option<u32> {
        let snap = self.snapshot()?;
        (snap.listener.config.upstream_protocol == UpstreamProtocol::Http1).then_some(HTTP2_STREAMS_TO_HTTP1_UPSTREAM)
    }

    /// Who connected, and to which listener (for logs).
    pub fn peer_and_listener(&self) -> (SocketAddr, Arc<str>) {
        (self.peer, self.target.name())
    }

    /// The model for this request; `None` if the listener is gone.
    fn snapshot(&self) -> Option<Arc<Snapshot>> {
        let model = self.state.model.load();
        let mut current = self.snapshot.lock().unwrap();
        if let Some(s) = current.as_ref().filter(|s| s.model.generation == model.generation) {
            return Some(s.clone());
        }
        // the old snapshot stays in `current` until the new one is made: its
        // FQDN lease keeps the address while the new verdict is computed
        let decision = Decision::make(
            &self.state,
            model.clone(),
            &self.target,
            self.peer,
            self.id,
            crate::protocol::Protocol::Http,
            L4Protocol::Tcp,
        )?;
        let config = &decision.listener.config;
        let pools = self.state.upstreams.get(
            super::upstream::UpstreamKey {
                address: config.upstream,
                connect_timeout: config.connect_timeout,
                bind: decision.bind,
                tls: decision.listener.upstream_tls.clone(),
            },
            &self.state.limits,
        );
        let snapshot = Arc::new(Snapshot { decision, pools });
        *current = Some(snapshot.clone());
        Some(snapshot)
    }

    /// The L3/L4 verdict at accept time (None: listener removed).
    pub fn accept_verdict(&self) -> Option<(Arc<ConnectionVerdict>, Arc<ConnectionContext>)> {
        self.snapshot().map(|s| (s.verdict.clone(), s.context.clone()))
    }

    /// One request: check it, let the filters judge it, forward it, let
    /// the filters see the response. Each stage either hands the request on
    /// or ends it with a [`Stop`].
    /// Told when this weir starts draining (`handover`).
    pub fn draining(&self) -> tokio::sync::watch::Receiver<bool> {
        self.state.handover.draining.subscribe()
    }

    pub fn is_draining(&self) -> bool {
        self.state.handover.is_draining()
    }

    pub async fn handle(self: Arc<Self>, mut request: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        // never forwarded with the request; kept until the answer is known
        if let Some(upgrade) = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() {
            self.decline(upgrade);
        }
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let version = request.version();
        let trace = RequestTrace {
            started,
            http: HttpFlow {
                method: request.method().to_string(),
                path: request.uri().path_and_query().map_or_else(|| request.uri().to_string(), |p| p.to_string()),
                host: authority_of(&request).unwrap_or_default(),
                version: version_text(version).into(),
                status: None,
                tunnel: None,
            },
            filter_time: Duration::ZERO,
            matched: None,
            latency: None,
            audit: None,
        };
        let Some(snap) = self.snapshot() else {
            return reply::closing(reply::upstream_unavailable());
        };
        let mut flight = InFlight { conn: self.clone(), snap: snap.clone(), trace: Some(trace) };
        let chain = match &*snap.verdict {
            ConnectionVerdict::Drop { reason } => {
                // the policy changed under an open connection
                let reason = format!("{reason} (policy changed; closing)");
                return Self::finish(flight, Verdict::Denied, Some(reason), reply::closing(reply::access_denied()));
            }
            ConnectionVerdict::Forward(chain) => chain,
        };
        let stages = async {
            let mut checked = self.check(&mut flight, request)?;
            // an upgrade keeps its head as judged: a policy change judges it again
            let head = checked.upgrade.is_some().then(|| checked.head());
            if let (Some(upgrade), Some(head)) = (&mut checked.upgrade, head) {
                upgrade.head = head;
            }
            let mut checked = self.filter_request(&mut flight, chain, checked, request_id)?;
            if checked.upgrade.as_ref().is_some_and(|u| u.connect) && !chain.has_rules() {
                let why = CONNECT_NEEDS_A_RULE.to_string();
                let (request, response) = (checked.into_request(), reply::method_not_allowed(&why));
                return Err(Box::new(Stop::Refuse { request, response, verdict: Verdict::Denied, reason: why }));
            }
            let upgrade = checked.upgrade.take();
            let (mut response, leg) = Self::forward(&snap, checked, version).await?;
            // a switched connection is the relay's, never the pool's
            let switched = self.switched(upgrade, &mut response)?;
            if let Err(stop) = Self::filter_response(&mut flight, chain, &mut response, request_id) {
                // not switched after all
                if let Some(switched) = switched {
                    self.decline(switched.client);
                }
                return Err(stop);
            }
            Ok::<_, Box<Stop>>((response, leg, switched))
        };
        let (response, leg, switched) = match stages.await {
            Ok(forwarded) => forwarded,
            Err(stop) => return stop.answer(flight).await,
        };
        if let Some(switched) = switched {
            return self.open_tunnel(flight, response, switched);
        }
        let (mut parts, body) = response.into_parts();
        parts.version = version;
        flight.trace().latency = Some(started.elapsed());
        let on_end = flight.record_at_end(parts.status.as_u16(), leg);
        Response::from_parts(parts, ProxyBody::upstream(body, on_end))
    }

    /// Framing and target checks, before anything is interpreted; the path
    /// normalized, and the hop-by-hop headers (and those `Connection` names)
    /// gone, so filters judge the request as it will be forwarded.
    fn check(&self, flight: &mut InFlight, request: Request<Incoming>) -> Result<Checked, Box<Stop>> {
        let refuse = |request, why: String| {
            Box::new(Stop::Refuse { request, response: reply::bad_request(&why), verdict: Verdict::Error, reason: why })
        };
        let authority = match check_request(&request) {
            Ok(authority) => authority,
            Err(why) => return Err(refuse(request, why)),
        };
        if request.method() == Method::CONNECT {
            return self.check_connect(flight, request);
        }
        let listener_config = &flight.snap.listener.config;
        // no authority (HTTP/1.0 without Host, HTTP/2 without :authority):
        // the upstream is sent its own address as Host, so rules judge that
        let named = if authority.is_empty() { listener_config.upstream.to_string() } else { authority };
        let authority = normalize_authority(named, self.scheme);
        let path = match normalize_path(
            request.uri().path(),
            listener_config.escaped_slashes,
            listener_config.ambiguous_paths,
        ) {
            Ok(path) => path,
            Err(e) => return Err(refuse(request, e.to_string())),
        };
        let path_and_query = match request.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        flight.trace().http.path = path_and_query.clone();
        flight.trace().http.host = authority.clone();
        let (mut parts, body) = request.into_parts();
        // a draining weir switches nothing: a WebSocket would pin it until
        // the drain ends; refused the switch, the client comes back to the new one
        let upgrade = upgrade_asked(&parts, &body, &flight.snap.listener.config).filter(|_| !self.is_draining());
        let checked = strip_hop_by_hop(&mut parts.headers).and_then(|()| check_request_headers(&parts));
        if let Err(why) = checked {
            return Err(refuse(Request::from_parts(parts, body), why));
        }
        if parts.version == Version::HTTP_2 {
            join_cookie_crumbs(&mut parts.headers);
        }
        // an upgrade weir forwards: filters judge it with the headers that
        // ask for it, as the upstream receives them
        let upgrade = upgrade.and_then(|protocol| {
            let client = self.pending_upgrade.lock().unwrap().take()?;
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol.clone());
            Some(UpgradeRequest { protocol, connect: false, client, head: Vec::new() })
        });
        Ok(Checked { parts, body, authority, path_and_query, scheme: self.scheme, upgrade })
    }

    /// A CONNECT weir may forward as a tunnel: HTTP/1.1, to an HTTP/1.1
    /// upstream (a forward proxy), without a body, naming `host:port`, with
    /// a Host header (if any) naming the same: the target is what rules
    /// match (`host`, and the request-target as the path) and what the
    /// upstream connects to. Whether a rule allows it is decided after the
    /// filters ([`HttpConnection::handle`]); anything else is refused here.
    fn check_connect(&self, flight: &mut InFlight, request: Request<Incoming>) -> Result<Checked, Box<Stop>> {
        let refuse = |request, why: String| {
            Box::new(Stop::Refuse {
                request,
                response: reply::method_not_allowed(&why),
                verdict: Verdict::Error,
                reason: why,
            })
        };
        let listener = &flight.snap.listener.config;
        let uri = request.uri();
        let target = uri
            .authority()
            .filter(|a| a.port().is_some() && uri.path_and_query().is_none())
            .map(|a| a.as_str().to_ascii_lowercase());
        let why = if request.version() != Version::HTTP_11 {
            Some("CONNECT is forwarded over HTTP/1.1 only")
        } else if listener.upstream_protocol == UpstreamProtocol::Http2 {
            Some("CONNECT needs an HTTP/1.1 upstream")
        } else if target.is_none() {
            Some("CONNECT needs a host:port target")
        } else if !request.body().is_end_stream() {
            Some("a CONNECT request has no body")
        } else if self.is_draining() {
            // a tunnel would pin this weir until the drain ends
            Some("weir is draining: CONNECT again")
        } else {
            None
        };
        let (None, Some(target)) = (why, target) else {
            return Err(refuse(request, why.unwrap_or_default().to_string()));
        };
        // the upstream connects to the request-target; a Host naming
        // another would let a rule judge a target the upstream never sees
        if let Some(host) = request.headers().get(header::HOST)
            && !host.as_bytes().eq_ignore_ascii_case(target.as_bytes())
        {
            return Err(refuse(request, "Host header differs from the CONNECT target".into()));
        }
        let Some(client) = self.pending_upgrade.lock().unwrap().take() else {
            return Err(refuse(request, "CONNECT without hyper's upgrade".into()));
        };
        flight.trace().http.path = target.clone();
        flight.trace().http.host = target.clone();
        let (mut parts, body) = request.into_parts();
        if let Err(why) = strip_hop_by_hop(&mut parts.headers).and_then(|()| check_request_headers(&parts)) {
            return Err(refuse(Request::from_parts(parts, body), why));
        }
        let upgrade = Some(UpgradeRequest {
            protocol: HeaderValue::from_static("CONNECT"),
            connect: true,
            client,
            head: Vec::new(),
        });
        Ok(Checked { parts, body, authority: target.clone(), path_and_query: target, scheme: self.scheme, upgrade })
    }

    /// A 101 from the upstream: the connection switches if weir asked for
    /// that protocol; a 101 it did not ask for is the upstream's fault.
    /// A CONNECT switches on a 2xx instead.
    fn switched(
        &self,
        upgrade: Option<UpgradeRequest>,
        response: &mut Response<Incoming>,
    ) -> Result<Option<Switched>, Box<Stop>> {
        let unasked = |why: &str| {
            Box::new(Stop::Finish { response: reply::upstream_failed(), verdict: Verdict::Error, reason: why.into() })
        };
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let (protocol, client, head) = match upgrade {
            Some(connect) if connect.connect && !switching => return Ok(self.connect_answered(connect, response)),
            Some(declined) if !switching => {
                self.decline(declined.client);
                return Ok(None);
            }
            None if !switching => return Ok(None),
            None => return Err(unasked("the upstream switched protocols unasked (101)")),
            Some(connect) if connect.connect => {
                self.decline(connect.client);
                return Err(unasked("the upstream answered a CONNECT with 101"));
            }
            Some(UpgradeRequest { protocol, client, head, .. }) => (protocol, client, head),
        };
        let answered = response.headers().get(header::UPGRADE);
        if answered.is_none_or(|a| !same_protocol(a, &protocol)) {
            return Err(unasked(&format!("the upstream switched to {answered:?}, not the {protocol:?} asked for")));
        }
        let upstream = hyper::upgrade::on(&mut *response);
        Ok(Some(Switched { protocol, connect: false, client, upstream, head }))
    }

    /// The upstream's answer to a CONNECT (not a 101): a 2xx opens the
    /// tunnel; after anything else the connection goes on as HTTP.
    fn connect_answered(&self, request: UpgradeRequest, response: &mut Response<Incoming>) -> Option<Switched> {
        let UpgradeRequest { protocol, client, head, .. } = request;
        if !response.status().is_success() {
            self.decline(client);
            return None;
        }
        let upstream = hyper::upgrade::on(&mut *response);
        Some(Switched { protocol, connect: true, client, upstream, head })
    }

    /// Answer 101 and relay the switched connection; its flow is recorded
    /// now (the upgrade request) and again when the relay ends.
    fn open_tunnel(
        self: &Arc<Self>,
        mut flight: InFlight,
        response: Response<Incoming>,
        switched: Switched,
    ) -> Response<ProxyBody> {
        let (mut parts, _) = response.into_parts();
        parts.version = Version::HTTP_11;
        if switched.connect {
            // a 2xx to CONNECT has no content and frames nothing (RFC 9110 §9.3.6)
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.remove(header::TRANSFER_ENCODING);
        } else {
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, switched.protocol.clone());
        }
        let status = parts.status.as_u16();
        let trace = flight.trace();
        trace.latency = Some(trace.started.elapsed());
        let (http, matched) = (trace.http.clone(), trace.matched.clone());
        let (conn, snap) = (self.clone(), flight.snap.clone());
        let idle_timeout = crate::engines::http::heads::http_limits(&self.state, &self.target).idle_timeout;
        let mut changed = self.state.model_changed.subscribe();
        // judged against the model the request started with: a change while
        // the upstream answered (a forward proxy dialling) is judged at once
        changed.mark_changed();
        let judge = self.clone();
        let (head, connect) = (switched.head.clone(), switched.connect);
        let refused = async move {
            while changed.changed().await.is_ok() {
                if let Some(why) = judge.upgrade_refused(&head, connect) {
                    return why;
                }
            }
            // weir is stopping: the relay ends with its connections
            std::future::pending().await
        };
        let relay = tokio::spawn(async move {
            let opened = Instant::now();
            let protocol = String::from_utf8_lossy(switched.protocol.as_bytes()).into_owned();
            let relayed = tunnel::relay(switched, idle_timeout, refused).await;
            let duration = opened.elapsed();
            let mut http = http;
            http.tunnel = Some(crate::observe::flow::TunnelFlow {
                protocol,
                from_client: relayed.from_client,
                from_upstream: relayed.from_upstream,
                duration_ms: duration.as_millis() as u64,
            });
            let trace = RequestTrace {
                started: opened,
                http,
                filter_time: Duration::ZERO,
                matched,
                latency: Some(duration),
                audit: None,
            };
            let verdict = match (relayed.refused, &relayed.ended_by) {
                (true, _) => Verdict::Denied,
                (false, Some(_)) => Verdict::Error,
                (false, None) => Verdict::Forwarded,
            };
            conn.record(&snap, trace, verdict, relayed.ended_by, Some(status));
        });
        *self.tunnel.lock().unwrap() = Some(relay);
        Self::finish(
            flight,
            Verdict::Forwarded,
            None,
            Response::from_parts(parts, ProxyBody::local(bytes::Bytes::new())),
        )
    }

    /// Why the policy in force no longer allows an upgrade request the
    /// relay of which is open (`head` as the filters first judged it);
    /// `None` while it still does. The enforced chain only: an audit never
    /// closes anything. A CONNECT needs a rule that allows it, as at first.
    fn upgrade_refused(&self, head: &[u8], connect: bool) -> Option<String> {
        let Some(snap) = self.snapshot() else {
            return Some("the listener was removed; connection closed".into());
        };
        let chain = match &*snap.verdict {
            ConnectionVerdict::Drop { reason } => return Some(format!("{reason} (policy changed; connection closed)")),
            ConnectionVerdict::Forward(chain) => chain,
        };
        if connect && !chain.has_rules() {
            return Some(format!("{CONNECT_NEEDS_A_RULE} (policy changed; connection closed)"));
        }
        let request = wit::Request { id: 0, head: head.to_vec() };
        let stopped = chain::run(&chain.links, &snap.context, &mut ChainRun::default(), |link, view| {
            Ok(match link.filter.on_request(view, &request)? {
                wit::RequestDecision::Allow(allow) => chain::Answer::Allow(allow.matched),
                wit::RequestDecision::Deny(deny) => chain::Answer::Deny(link.denial(&deny.reason)),
            })
        });
        match stopped? {
            Stopped::Denied(reason) => Some(format!("{reason} (policy changed; connection closed)")),
            Stopped::Failed(failure) => Some(format!("{failure} (policy changed; connection closed)")),
        }
    }

    /// The relay of the connection's switched protocol, if it switched.
    pub fn take_tunnel(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.tunnel.lock().unwrap().take()
    }

    /// hyper's side of a switch weir did not make, kept until the
    /// connection ends (then it is shut down properly).
    fn decline(&self, client: hyper::upgrade::OnUpgrade) {
        *self.pending_upgrade.lock().unwrap() = Some(client);
    }

    /// The connection's side of the last upgrade hyper could have made and
    /// weir did not (see `pending_upgrade`).
    pub fn take_declined_upgrade(&self) -> Option<hyper::upgrade::OnUpgrade> {
        self.pending_upgrade.lock().unwrap().take()
    }

    /// The request filters, in chain order: each allows (maybe editing
    /// headers), denies, or fails (closed or open, as configured).
    fn filter_request(
        &self,
        flight: &mut InFlight,
        chain: &FilterChain,
        mut checked: Checked,
        request_id: u64,
    ) -> Result<Checked, Box<Stop>> {
        // a listener without filters never reads the head
        if chain.links.is_empty() && chain.audit.is_none() {
            return Ok(checked);
        }
        let mut head = wit::Request { id: request_id, head: checked.head() };
        let connect = checked.upgrade.as_ref().is_some_and(|u| u.connect);
        let mut run = ChainRun::default();
        let stopped = chain::run(&chain.links, &flight.snap.context, &mut run, |link, view| {
            match link.filter.on_request(view, &head)? {
                wit::RequestDecision::Allow(allow) => {
                    if !allow.edits.is_empty() {
                        // an edit weir cannot apply is the filter's failure
                        apply_edits(&mut checked.parts.headers, &allow.edits).map_err(|why| FilterFailure {
                            filter: link.filter.name.clone(),
                            kind: crate::wasm::FailureKind::Trap,
                            message: why,
                        })?;
                        head.head = checked.head();
                    }
                    Ok(chain::Answer::Allow(allow.matched))
                }
                wit::RequestDecision::Deny(deny) => {
                    let response = match deny.reply {
                        None => reply::access_denied(),
                        Some(custom) => custom_reply(custom, connect).unwrap_or_else(|why| {
                            tracing::warn!(filter = &*link.filter.name, "invalid deny reply: {why}");
                            reply::access_denied()
                        }),
                    };
                    Ok(chain::Answer::Deny((response, link.denial(&deny.reason))))
                }
            }
        });
        // the audited rules see the request as the enforced filters left
        // it, with their own edits on a copy that is never forwarded
        if stopped.is_none()
            && let Some(audit) = &chain.audit
        {
            let mut headers = checked.parts.headers.clone();
            let mut audited = head.clone();
            let would = chain::audit(audit, &flight.snap.context, &mut run, |link, view| {
                Ok(match link.filter.on_request(view, &audited)? {
                    wit::RequestDecision::Allow(allow) => {
                        if !allow.edits.is_empty() && apply_edits(&mut headers, &allow.edits).is_ok() {
                            audited.head = checked.head_with(&headers);
                        }
                        chain::Answer::Allow(allow.matched)
                    }
                    wit::RequestDecision::Deny(deny) => chain::Answer::Deny(link.denial(&deny.reason)),
                })
            });
            if let Some(reason) = would {
                flight.trace().audit = Some((reason, audit.policies.clone()));
            }
        }
        let trace = flight.trace();
        trace.filter_time += run.filter_time;
        if !run.matched.is_empty() {
            trace.matched = Some(run.matched.join("; "));
        }
        match stopped {
            None => {}
            Some(Stopped::Denied((response, reason))) => {
                let request = checked.into_request();
                return Err(Box::new(Stop::Refuse { request, response, verdict: Verdict::Denied, reason }));
            }
            Some(Stopped::Failed(failure)) => return Err(Stop::filter_failed(checked.into_request(), failure)),
        }
        Ok(checked)
    }

    /// Send the request upstream, in the version the listener asks for, and
    /// wait for the response head.
    async fn forward(
        snap: &Snapshot,
        checked: Checked,
        version: Version,
    ) -> Result<(Response<Incoming>, UpstreamLeg), Box<Stop>> {
        let Checked { mut parts, body, authority, path_and_query, .. } = checked;
        let upstream_h2 = match snap.listener.config.upstream_protocol {
            UpstreamProtocol::Auto => version == Version::HTTP_2,
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
        };
        // never empty: `check` judged the upstream's address where the client named none
        let connect = parts.method == Method::CONNECT;
        let uri = if connect {
            // authority-form, as the client sent it (checked: host:port)
            Uri::builder().authority(authority.as_str()).build()
        } else {
            Uri::builder().scheme("http").authority(authority.as_str()).path_and_query(path_and_query).build()
        };
        let uri = match uri {
            Ok(uri) => uri,
            Err(e) => {
                let why = format!("cannot form the upstream URI: {e}");
                return Err(Box::new(Stop::Refuse {
                    request: Request::from_parts(parts, body),
                    response: reply::bad_request(&why),
                    verdict: Verdict::Error,
                    reason: why,
                }));
            }
        };
        if upstream_h2 {
            parts.uri = uri;
            parts.version = Version::HTTP_2;
            parts.headers.remove(header::HOST);
        } else {
            // origin-form (a CONNECT's authority-form): the authority goes in Host
            parts.uri = if connect { uri } else { uri.path_and_query().cloned().map_or(uri, Uri::from) };
            parts.version = Version::HTTP_11;
            if let Ok(host) = HeaderValue::from_str(&authority) {
                parts.headers.insert(header::HOST, host);
            }
        }
        let aborted = Arc::new(AtomicBool::new(false));
        let request = Request::from_parts(parts, TrackedBody::new(body, aborted.clone()));
        let sent = if upstream_h2 {
            snap.pools.http2.request(request).await.map(|response| (response, None)).map_err(UpstreamError::Http2Pool)
        } else if connect {
            // never on a pooled connection: a forward proxy may keep per-connection
            // state (its authentication) that would then be another client's
            snap.pools.http1.request_on_new(request).await.map(|(response, checkin)| (response, Some(checkin)))
        } else {
            snap.pools.http1.request(request).await.map(|(response, checkin)| (response, Some(checkin)))
        };
        match sent {
            // an HTTP/1.0 upstream is not asked again on the connection:
            // hyper would send it the next requests as HTTP/1.0, and a
            // body of unknown length (chunked) as none
            Ok((response, checkin)) => {
                // nor is a CONNECT's, whatever the forward proxy answered:
                // it may keep per-connection state (its authentication)
                let refused_connect = connect && !response.status().is_success();
                let checkin = checkin.filter(|_| response.version() == Version::HTTP_11 && !refused_connect);
                Ok((response, UpstreamLeg { request_aborted: aborted, checkin }))
            }
            Err(e) => {
                let (response, reason) = if aborted.load(Ordering::Relaxed) {
                    (reply::bad_request("request body aborted"), "client aborted the request body".to_string())
                } else if e.is_connect() {
                    (reply::upstream_unavailable(), format!("upstream connect failed: {}", error_chain(&e)))
                } else {
                    (reply::upstream_failed(), format!("upstream failed: {}", error_chain(&e)))
                };
                Err(Box::new(Stop::Finish { response, verdict: Verdict::Error, reason }))
            }
        }
    }

    /// The response hooks, ingress side first (the chain in reverse), for
    /// the filters that still want responses.
    fn filter_response(
        flight: &mut InFlight,
        chain: &FilterChain,
        response: &mut Response<Incoming>,
        request_id: u64,
    ) -> Result<(), Box<Stop>> {
        strip_response_hop_by_hop(response.headers_mut());
        if !chain.links.iter().any(|link| link.filter.wants_responses()) {
            return Ok(());
        }
        let mut head = wit::Response {
            request_id,
            status: response.status().as_u16(),
            headers: flat_headers(response.headers()).unwrap_or_default(),
        };
        let responders = chain.links.iter().rev().filter(|link| link.filter.wants_responses());
        let connect = flight.trace().http.method == Method::CONNECT.as_str();
        let mut run = ChainRun::default();
        let stopped = chain::run(responders, &flight.snap.context, &mut run, |link, view| {
            match link.filter.on_response(view, &head)? {
                wit::ResponseDecision::IgnoreResponses => link.filter.ignore_responses(),
                wit::ResponseDecision::Pass(edits) if edits.is_empty() => {}
                wit::ResponseDecision::Pass(edits) => match apply_edits(response.headers_mut(), &edits) {
                    Ok(()) => head.headers = flat_headers(response.headers()).unwrap_or_default(),
                    Err(why) => tracing::warn!(filter = &*link.filter.name, "invalid response edit ignored: {why}"),
                },
                wit::ResponseDecision::Replace(custom) => {
                    let replaced = custom_reply(custom, connect).unwrap_or_else(|_| reply::filter_failed());
                    return Ok(chain::Answer::Deny((replaced, link.filter.name.clone())));
                }
            }
            Ok(chain::Answer::Allow(None))
        });
        flight.trace().filter_time += run.filter_time;
        match stopped {
            None => {}
            Some(Stopped::Denied((response, filter))) => {
                let reason = format!("{filter}: replaced the upstream response");
                return Err(Box::new(Stop::Finish { response, verdict: Verdict::Denied, reason }));
            }
            Some(Stopped::Failed(failure)) => {
                let (response, reason) = (reply::filter_failed(), failure.to_string());
                return Err(Box::new(Stop::Finish { response, verdict: Verdict::Error, reason }));
            }
        }
        Ok(())
    }

    fn finish(
        mut flight: InFlight,
        verdict: Verdict,
        reason: Option<String>,
        response: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        if let Some(trace) = flight.trace.take() {
            flight.conn.record(&flight.snap, trace, verdict, reason, Some(response.status().as_u16()));
        }
        response
    }

    fn record(
        &self,
        snap: &Snapshot,
        mut trace: RequestTrace,
        verdict: Verdict,
        reason: Option<String>,
        status: Option<u16>,
    ) {
        let elapsed = trace.latency.unwrap_or_else(|| trace.started.elapsed());
        trace.http.status = status;
        // forwarded, though an audited rule would have refused it
        let (verdict, reason, audited_by) = match trace.audit.take() {
            Some((why, policies)) if verdict == Verdict::Forwarded => (Verdict::Audited, Some(why), policies),
            _ => (verdict, reason, Vec::new()),
        };
        // a relay's end is no request (its upgrade request was counted)
        if trace.http.tunnel.is_none() {
            self.state.metrics.http_request(verdict.as_str(), elapsed);
        }
        let policies = match &*snap.verdict {
            ConnectionVerdict::Forward(chain) => chain.allowed_by.clone(),
            ConnectionVerdict::Drop { .. } => Vec::new(),
        };
        self.state.flows.record(FlowRecord {
            reason,
            policies,
            matched: trace.matched,
            audited_by,
            detail: Some(FlowDetail::Http(trace.http)),
            latency_us: Some(elapsed.as_micros() as u64),
            filter_us: trace.filter_time.as_micros() as u64,
            ..FlowRecord::of(&snap.context, crate::protocol::Protocol::Http, verdict)
        });
    }
}

fn version_text(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// The authority a rule's `host` is matched against: the URI's (HTTP/2
/// `:authority`, or an absolute-form HTTP/1 target), else the Host header.
fn authority_of<B>(request: &Request<B>) -> Option<String> {
    request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
}

/// Reject requests whose framing or target two parsers could read differently.
/// Returns the authority.
fn check_request<B>(request: &Request<B>) -> Result<String, String> {
    let headers = request.headers();
    let hosts: Vec<&HeaderValue> = headers.get_all(header::HOST).iter().collect();
    if hosts.len() > 1 {
        return Err("more than one Host header".into());
    }
    if hosts.first().is_some_and(|host| host.to_str().is_err()) {
        // read as no Host, the upstream would be sent another
        return Err("Host header is not text".into());
    }
    // hyper's HTTP/1 reader refuses other lengths; the h2 crate takes an
    // empty one as 0 and a repeated one as is, and both would reach an
    // HTTP/1.1 upstream as written
    let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    if lengths > 1 {
        return Err("more than one Content-Length".into());
    }
    if headers.get(header::CONTENT_LENGTH).is_some_and(|v| v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit))
    {
        return Err("Content-Length is not a number".into());
    }
    if request.version() < Version::HTTP_2 {
        let has_te = headers.contains_key(header::TRANSFER_ENCODING);
        if has_te && lengths > 0 {
            return Err("both Content-Length and Transfer-Encoding".into());
        }
        // hyper only checks that the last coding is chunked; weir forwards
        // the body decoded from chunked alone, so nothing else may be applied
        let mut codings =
            headers.get_all(header::TRANSFER_ENCODING).iter().flat_map(|v| v.as_bytes().split(|b| *b == b','));
        if has_te
            && !(codings.next().is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
                && codings.next().is_none())
        {
            return Err("Transfer-Encoding other than one chunked".into());
        }
        if request.version() == Version::HTTP_11 && hosts.is_empty() && request.uri().authority().is_none() {
            return Err("HTTP/1.1 request without Host".into());
        }
    }
    let authority = authority_of(request).unwrap_or_default();
    if let (Some(uri_authority), Some(host)) = (request.uri().authority(), hosts.first()) {
        // HTTP/2 may carry both; they must agree or rules and upstream disagree
        if request.version() == Version::HTTP_2 && host.as_bytes() != uri_authority.as_str().as_bytes() {
            return Err("Host header differs from :authority".into());
        }
    }
    if authority.bytes().any(|b| b.is_ascii_whitespace() || b == b'/' || b == b'@') {
        return Err("invalid authority".into());
    }
    Ok(authority)
}

/// The authority as rules match it and the upstream receives it: host in
/// lower case without a trailing dot, and no port when it is the scheme's
/// default (RFC 3986 §6.2.2-6.2.3), so `API.Example.:80` is `api.example`.
fn normalize_authority(mut authority: String, scheme: &str) -> String {
    authority.make_ascii_lowercase();
    let normalized = {
        let (host, port) = match authority.strip_prefix('[') {
            // an IPv6 literal: the port follows the `]`
            Some(_) => match authority.find(']') {
                Some(end) => (&authority[..=end], authority[end + 1..].strip_prefix(':')),
                None => return authority,
            },
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority.as_str(), None),
            },
        };
        let host = match host.strip_suffix('.') {
            Some(stripped) if !stripped.is_empty() && !host.starts_with('[') => stripped,
            _ => host,
        };
        let default_port = if scheme == "https" { 443 } else { 80 };
        // the port as it stays: a number without its leading zeros
        let port = match port {
            None | Some("") => None,
            Some(port) if port.bytes().all(|b| b.is_ascii_digit()) => match port.parse::<u16>() {
                Ok(p) if p == default_port => None,
                Ok(_) => Some(port.trim_start_matches('0')).filter(|p| !p.is_empty()).or(Some("0")),
                Err(_) => Some(port),
            },
            Some(port) => Some(port),
        };
        // both parts are the authority's own text: of its length, the
        // normal form is the authority itself (most are), given back as it is
        match port {
            _ if host.len() + port.map_or(0, |p| p.len() + 1) == authority.len() => None,
            Some(port) => Some(format!("{host}:{port}")),
            None => Some(host.to_string()),
        }
    };
    normalized.unwrap_or(authority)
}

/// Headers as the filters see them: `name: value\n`, Host left out (it is
/// `authority`). Values must be text: control characters and invalid UTF-8
/// are refused rather than passed to a filter in some lossy form.
fn flat_headers(headers: &HeaderMap) -> Result<Vec<u8>, String> {
    check_headers(headers)?;
    let mut out = Vec::with_capacity(headers.len() * 32);
    write_headers(&mut out, headers);
    Ok(out)
}

/// The headers a filter sees: all but Host (the head's first line has it).
fn filter_visible(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    headers.iter().filter(|(name, _)| **name != header::HOST)
}

/// Filters read header values as text: refuse anything else.
pub(crate) fn check_headers(headers: &HeaderMap) -> Result<(), String> {
    match filter_visible(headers).find(|(_, value)| !is_text(value)) {
        Some((name, _)) => Err(format!("header {name} has bytes that are not text")),
        None => Ok(()),
    }
}

fn is_text(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    std::str::from_utf8(bytes).is_ok() && !bytes.iter().any(|b| b.is_ascii_control() && *b != b'\t')
}

/// A request's headers as an HTTP/1.1 upstream will read them: names that
/// are tokens (RFC 9110 §5.1; the `http` crate also takes `"` and others
/// from HTTP/2, which an HTTP/1.1 server drops or refuses), and values
/// without leading or trailing blanks (RFC 9113 §8.2.1: HTTP/1.1 readers
/// trim them, so a filter would judge `"1 "` where the upstream reads `1`).
/// HTTP/1 requests hold to both by construction (httparse reads tokens and
/// trims values): for them only [`check_headers`] runs.
fn check_request_headers(parts: &http::request::Parts) -> Result<(), String> {
    if parts.version < Version::HTTP_2 {
        return check_headers(&parts.headers);
    }
    let blank = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
    for (name, value) in &parts.headers {
        if *name != header::HOST && !is_text(value) {
            return Err(format!("header {name} has bytes that are not text"));
        }
        if !name.as_str().bytes().all(is_tchar) {
            return Err(format!("header name {:?} is not a token", name.as_str()));
        }
        if blank(value.as_bytes().first()) || blank(value.as_bytes().last()) {
            return Err(format!("header {name} has blanks around its value"));
        }
    }
    Ok(())
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// HTTP/2 may split `Cookie` into crumbs, one header each (RFC 9113
/// §8.2.3); before anyone reads them they are one header again, joined
/// with `"; "`, as an HTTP/1.1 upstream must receive them and as rules
/// written for one `Cookie` header expect.
fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    let (Some(_), Some(_)) = (crumbs.next(), crumbs.next()) else { return };
    let mut joined = Vec::new();
    for crumb in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    // the crumbs were valid values; so is their join
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Append a `name: value\n` line per visible header.
pub(crate) fn write_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in filter_visible(headers) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
}

/// Headers a filter may not touch: they decide framing or routing.
fn protected(name: &HeaderName) -> bool {
    [header::HOST, header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::CONNECTION, header::UPGRADE, header::TE]
        .contains(name)
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

fn apply_edits(headers: &mut HeaderMap, edits: &[wit::HeaderOp]) -> Result<(), String> {
    let parse = |h: &wit::Header| -> Result<(HeaderName, HeaderValue), String> {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| format!("invalid header name {:?}", h.name))?;
        let value = HeaderValue::from_str(&h.value).map_err(|_| format!("invalid value for header {name}"))?;
        if protected(&name) {
            return Err(format!("filters may not edit {name}"));
        }
        Ok((name, value))
    };
    for edit in edits {
        match edit {
            wit::HeaderOp::Set(h) => {
                let (name, value) = parse(h)?;
                headers.insert(name, value);
            }
            wit::HeaderOp::Append(h) => {
                let (name, value) = parse(h)?;
                headers.append(name, value);
            }
            wit::HeaderOp::Remove(name) => {
                let name =
                    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))?;
                if protected(&name) {
                    return Err(format!("filters may not edit {name}"));
                }
                headers.remove(name);
            }
        }
    }
    Ok(())
}

/// A filter's own reply, for a request or in place of a response (`connect`:
/// to a CONNECT).
fn custom_reply(custom: wit::Reply, connect: bool) -> Result<Response<ProxyBody>, String> {
    let status = StatusCode::from_u16(custom.status).map_err(|_| format!("invalid status {}", custom.status))?;
    if status.is_informational() {
        // a 101 would tell the client a switch happened that did not
        return Err(format!("a reply may not be informational ({status})"));
    }
    if connect && status.is_success() {
        // so would a 2xx to a CONNECT: that its tunnel opened
        return Err(format!("a reply to a CONNECT may not be a success ({status})"));
    }
    let mut headers = Vec::with_capacity(custom.headers.len());
    for h in custom.headers {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| format!("invalid header name {:?}", h.name))?;
        if protected(&name) {
            return Err(format!("a reply may not set {name}"));
        }
        let value = HeaderValue::from_str(&h.value).map_err(|_| format!("invalid value for header {name}"))?;
        headers.push((name, value));
    }
    Ok(reply::custom(status, headers, custom.body))
}

/// Why a CONNECT is refused where no `http` rule applies (a listener no
/// policy selects, a port allowed at L3/L4 only): only a rule naming the
/// method opens a tunnel (the `http-policy` filter holds the rest to that).
const CONNECT_NEEDS_A_RULE: &str = "CONNECT needs an http rule that allows it";

/// The protocol a request asks to switch to, when weir forwards the switch:
/// HTTP/1.1 `GET` without a body, `Connection: upgrade`, one protocol in
/// `Upgrade` that the listener allows, and an HTTP/1.1 upstream. Any other
/// `Upgrade` is dropped with the hop-by-hop headers (the upstream sees a
/// plain request): an `h2c` switch would carry requests no rule judged.
fn upgrade_asked(
    parts: &http::request::Parts,
    body: &Incoming,
    listener: &crate::config::ListenerConfig,
) -> Option<HeaderValue> {
    if parts.version != Version::HTTP_11
        || parts.method != Method::GET
        || !body.is_end_stream()
        || listener.upstream_protocol == UpstreamProtocol::Http2
    {
        return None;
    }
    let asks = connection_options(&parts.headers).ok()?.contains(&header::UPGRADE);
    let mut values = parts.headers.get_all(header::UPGRADE).iter();
    let (value, None) = (values.next()?, values.next()) else { return None };
    let name = value.to_str().ok()?.split('/').next()?;
    let allowed = listener.upgrades.iter().any(|u| u.eq_ignore_ascii_case(name.trim()));
    (asks && allowed && !value.as_bytes().contains(&b',')).then(|| value.clone())
}

/// Whether an answer's `Upgrade` names the protocol asked for (case aside).
fn same_protocol(answered: &HeaderValue, asked: &HeaderValue) -> bool {
    let name =
        |v: &HeaderValue| v.to_str().ok().and_then(|s| s.split('/').next()).map(|s| s.trim().to_ascii_lowercase());
    name(answered).is_some() && name(answered) == name(asked)
}

/// Headers a `Connection` header may not name: they say where the request
/// goes and how its body is read, for every recipient (RFC 9110 §7.6.1).
const END_TO_END: [HeaderName; 5] =
    [header::HOST, header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::CONTENT_TYPE, header::CONTENT_ENCODING];

/// Hop-by-hop headers describe one connection and are not forwarded: the
/// fixed ones, and every header the `Connection` header names. Done before
/// any filter sees the request, so a rule never judges a header the
/// upstream will not receive. A `Connection` header naming an end-to-end
/// header is refused.
fn strip_hop_by_hop(headers: &mut HeaderMap) -> Result<(), String> {
    let listed = connection_options(headers)?;
    remove_hop_by_hop(headers, listed);
    // request trailers are dropped (TrackedBody): announcing them would lie
    headers.remove(header::TRAILER);
    Ok(())
}

/// An upstream's response: what `Connection` names is dropped, unless it is
/// end-to-end (then only the fixed hop-by-hop headers are).
fn strip_response_hop_by_hop(headers: &mut HeaderMap) {
    let listed = connection_options(headers).unwrap_or_default();
    remove_hop_by_hop(headers, listed);
}

/// The header names a `Connection` header lists (every line of it).
fn connection_options(headers: &HeaderMap) -> Result<Vec<HeaderName>, String> {
    let mut listed = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let value = value.to_str().map_err(|_| "Connection header is not text".to_string())?;
        for option in value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            // the two options nearly every head carries, without parsing them
            let name = if option.eq_ignore_ascii_case("keep-alive") {
                KEEP_ALIVE
            } else if option.eq_ignore_ascii_case("close") {
                CLOSE
            } else {
                HeaderName::from_bytes(option.as_bytes())
                    .map_err(|_| format!("Connection header names {option:?}, not a header name"))?
            };
            if END_TO_END.contains(&name) {
                return Err(format!("Connection header names the end-to-end header {name}"));
            }
            listed.push(name);
        }
    }
    Ok(listed)
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// `Connection: close` names a header `close` too (RFC 9110 §7.6.1).
const CLOSE: HeaderName = HeaderName::from_static("close");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

fn remove_hop_by_hop(headers: &mut HeaderMap, listed: Vec<HeaderName>) {
    for name in listed {
        headers.remove(name);
    }
    // found in one look over the names: removing a name that is absent
    // (most heads have none of these) still hashes it. Removed in this
    // order whatever the head's: a removal moves the map's last entry into
    // the gap, so the order of what is left depends on it.
    let fixed = [header::CONNECTION, header::TRANSFER_ENCODING, header::UPGRADE, KEEP_ALIVE, PROXY_CONNECTION];
    let mut present = [false; 5];
    for name in headers.keys() {
        if let Some(i) = fixed.iter().position(|f| f == name) {
            present[i] = true;
        }
    }
    for (name, _) in fixed.into_iter().zip(present).filter(|(_, present)| *present) {
        headers.remove(name);
    }
    // TE: only "trailers" may cross (gRPC needs it)
    if headers.get(header::TE).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers")) {
        headers.remove(header::TE);
    }
}

/// Read and discard a refused request's body. True if it ended in time.
async fn drain(mut body: Incoming) -> bool {
    let mut read = 0usize;
    let result = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        read += data.len();
                        if read > DRAIN_LIMIT {
                            return false;
                        }
                    }
                }
                Err(_) => return false,
            }
        }
        true
    })
    .await;
    result.unwrap_or(false)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filters_reply_may_not_be_informational() {
        let reply = |status| wit::Reply { status, headers: Vec::new(), body: Vec::new() };
        for status in [100, 101, 103] {
            let refused = custom_reply(reply(status), false).err().unwrap_or_default();
            assert!(refused.contains("informational"), "{status}");
        }
        assert_eq!(custom_reply(reply(418), false).unwrap().status(), 418);
    }

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h).unwrap();
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));

        let mut grpc = HeaderMap::new();
        grpc.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut grpc).unwrap();
        assert!(grpc.contains_key(header::TE));

        // what is left is in the order that removing every fixed name in
        // a fixed order leaves (a removal moves the last entry into the gap)
        let names = ["keep-alive", "upgrade", "proxy-connection", "x-a", "x-b", "x-c"];
        for rotation in 0..names.len() {
            let mut head = HeaderMap::new();
            for name in names.iter().cycle().skip(rotation).take(names.len()) {
                head.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
            }
            let mut expected = head.clone();
            for name in ["connection", "transfer-encoding", "upgrade", "keep-alive", "proxy-connection"] {
                expected.remove(name);
            }
            strip_hop_by_hop(&mut head).unwrap();
            let order = |h: &HeaderMap| h.keys().map(HeaderName::to_string).collect::<Vec<_>>();
            assert_eq!(order(&head), order(&expected), "rotation {rotation}");
        }
    }

    #[test]
    fn connection_may_not_name_end_to_end_headers() {
        for named in ["host", "Content-Length", "transfer-encoding", "content-type", "close, Content-Encoding"] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_str(named).unwrap());
            assert!(strip_hop_by_hop(&mut h).is_err(), "{named}");
        }
        let mut bad = HeaderMap::new();
        bad.insert(header::CONNECTION, HeaderValue::from_static("x y"));
        assert!(strip_hop_by_hop(&mut bad).is_err(), "not a header name");
        let mut two = HeaderMap::new();
        two.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        two.append(header::CONNECTION, HeaderValue::from_static("x-a"));
        two.insert("x-a", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut two).unwrap();
        assert!(two.is_empty(), "every Connection line counts: {two:?}");
    }

    #[test]
    fn flat_headers_skip_host_and_refuse_binary() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("example"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        assert_eq!(flat_headers(&h).unwrap(), b"x-a: 1\nx-a: 2\n");
        h.insert("x-bin", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        assert!(flat_headers(&h).is_err());
        let mut utf8 = HeaderMap::new();
        utf8.insert("x-name", HeaderValue::from_bytes("café".as_bytes()).unwrap());
        assert_eq!(flat_headers(&utf8).unwrap(), "x-name: café\n".as_bytes());
    }

    #[test]
    fn edits_apply_in_order_and_framing_headers_are_protected() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("old"));
        let edits = vec![
            wit::HeaderOp::Append(wit::Header { name: "x-a".into(), value: "two".into() }),
            wit::HeaderOp::Set(wit::Header { name: "x-b".into(), value: "b".into() }),
            wit::HeaderOp::Remove("x-a".into()),
        ];
        apply_edits(&mut h, &edits).unwrap();
        assert!(!h.contains_key("x-a"));
        assert_eq!(h["x-b"], "b");
        for bad in ["content-length", "Transfer-Encoding", "host"] {
            let edit = wit::HeaderOp::Set(wit::Header { name: bad.into(), value: "1".into() });
            assert!(apply_edits(&mut h, &[edit]).is_err(), "{bad}");
        }
        let newline = wit::HeaderOp::Set(wit::Header { name: "x-c".into(), value: "a\r\nb".into() });
        assert!(apply_edits(&mut h, &[newline]).is_err());
    }

    #[test]
    fn authorities_are_matched_and_forwarded_normalized() {
        for (given, scheme, want) in [
            ("api.example", "http", "api.example"),
            ("API.Example", "http", "api.example"),
            ("api.example.", "http", "api.example"),
            ("api.example:80", "http", "api.example"),
            ("API.EXAMPLE.:80", "http", "api.example"),
            ("api.example:", "http", "api.example"),
            ("api.example:080", "http", "api.example"),
            ("api.example:443", "http", "api.example:443"),
            ("api.example:443", "https", "api.example"),
            ("api.example:8080", "http", "api.example:8080"),
            ("[::1]:80", "http", "[::1]"),
            ("[::1]:8080", "http", "[::1]:8080"),
            ("10.0.0.1.:80", "http", "10.0.0.1"),
            ("api.example.:8080", "http", "api.example:8080"),
            ("api.example:08080", "http", "api.example:8080"),
            ("api.example:0", "http", "api.example:0"),
            ("api.example:99999", "http", "api.example:99999"),
            ("api.example.:99999", "http", "api.example:99999"),
            ("api.example:x1", "http", "api.example:x1"),
            ("API.example.:x1", "http", "api.example:x1"),
            ("[::1]", "http", "[::1]"),
            ("[::1", "http", "[::1"),
            ("", "http", ""),
        ] {
            assert_eq!(normalize_authority(given.to_string(), scheme), want, "{given} ({scheme})");
        }
    }

    #[test]
    fn http2_heads_are_held_to_what_an_http1_upstream_reads() {
        let h2 = |headers: &[(&str, &[u8])]| {
            let mut b = Request::builder().uri("http://a/").version(Version::HTTP_2);
            for (n, v) in headers {
                b = b.header(*n, HeaderValue::from_bytes(v).unwrap());
            }
            b.body(()).unwrap()
        };
        // lengths the h2 crate lets through
        assert!(check_request(&h2(&[("content-length", b"")])).is_err(), "empty");
        assert!(check_request(&h2(&[("content-length", b"5"), ("content-length", b"5")])).is_err(), "twice");
        assert!(check_request(&h2(&[("content-length", b"+5")])).is_err(), "signed");
        assert!(check_request(&h2(&[("content-length", b"5")])).is_ok());
        // a Host that is no text would be read as none and another sent
        assert!(check_request(&h2(&[("host", "a\u{e9}".as_bytes())])).is_err());

        let headers = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                // as the h2 crate reads names: it also takes `"`
                h.append(HeaderName::from_lowercase(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let h2_head = |pairs: &[(&str, &str)]| {
            let (mut parts, ()) = Request::builder().version(Version::HTTP_2).body(()).unwrap().into_parts();
            parts.headers = headers(pairs);
            parts
        };
        for value in ["reader ", "\treader", " reader", "reader\t"] {
            assert!(check_request_headers(&h2_head(&[("x-role", value)])).is_err(), "{value:?}");
        }
        assert!(check_request_headers(&h2_head(&[("x-role", "a reader")])).is_ok(), "blanks inside are text");
        assert!(check_request_headers(&h2_head(&[("x\"role", "reader")])).is_err(), "not a token");
        assert!(check_request_headers(&h2_head(&[("x-role", "")])).is_ok(), "empty values are values");

        let mut crumbs = headers(&[("cookie", "a=1"), ("x-other", "1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        join_cookie_crumbs(&mut crumbs);
        let cookies: Vec<_> = crumbs.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
        let mut one = headers(&[("cookie", "a=1; b=2")]);
        join_cookie_crumbs(&mut one);
        assert_eq!(one.get_all(header::COOKIE).iter().collect::<Vec<_>>(), ["a=1; b=2"]);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let req = |headers: &[(&str, &str)]| {
            let mut b = Request::builder().uri("/").version(Version::HTTP_11);
            for (n, v) in headers {
                b = b.header(*n, *v);
            }
            b.body(()).unwrap()
        };
        assert!(check_request(&req(&[("host", "a")])).is_ok());
        assert!(
            check_request(&req(&[("host", "a"), ("content-length", "1"), ("transfer-encoding", "chunked")])).is_err()
        );
        assert!(check_request(&req(&[("host", "a"), ("content-length", "1"), ("content-length", "2")])).is_err());
        assert!(check_request(&req(&[("host", "a"), ("content-length", "1, 1")])).is_err());
        assert!(check_request(&req(&[("host", "a"), ("transfer-encoding", "chunked")])).is_ok());
        assert!(check_request(&req(&[("host", "a"), ("transfer-encoding", " Chunked ")])).is_ok());
        for codings in
            [&["gzip, chunked"][..], &["chunked, chunked"], &["chunked", "chunked"], &["identity", "chunked"]]
        {
            let te: Vec<(&str, &str)> = codings.iter().map(|c| ("transfer-encoding", *c)).collect();
            assert!(check_request(&req(&[&[("host", "a")], te.as_slice()].concat())).is_err(), "{codings:?}");
        }
        assert!(check_request(&req(&[("host", "a"), ("host", "b")])).is_err());
        assert!(check_request(&req(&[])).is_err(), "HTTP/1.1 needs Host");
        let h2 = Request::builder().uri("http://a/").version(Version::HTTP_2).header("host", "b").body(()).unwrap();
        assert!(check_request(&h2).is_err());
    }
}
