//! A guard under hyper's HTTP/1 parser for one ambiguity hyper resolves
//! silently: a request with both Content-Length and Transfer-Encoding.
//!
//! Hyper follows RFC 9112 §6.3 (Transfer-Encoding wins, Content-Length is
//! dropped, the connection closes after the response) and hides the dropped
//! header, so the service cannot see it. Weir refuses such requests outright:
//! the guard corrupts that head's Content-Length name so hyper's own parser
//! answers 400 and closes, in order after any earlier pipelined responses.
//!
//! To find every head hyper reads, the guard reads the byte stream exactly as
//! hyper does, with hyper's own pieces: heads are parsed by `httparse` (the
//! parser inside hyper, same version, same `ParserConfig`, the same header
//! table size [`MAX_HEADERS`] and buffer limit [`MAX_HEAD_BYTES`], which
//! `server.rs` sets on hyper from these constants); body length follows
//! hyper's `role.rs` (Transfer-Encoding, then Content-Length, in header
//! order); chunked bodies follow hyper's `decode.rs` state machine byte for
//! byte, with its limits; the HTTP/2 preface is detected as hyper-util's
//! auto builder does. Whatever the guard cannot frame (a head hyper refuses,
//! a head over hyper's limit, a malformed chunk) is handed to hyper so it
//! answers its own error, and nothing after it is ever passed on: hyper
//! closes there, and the guard discards the rest. So the guard never passes
//! a byte it has not framed the way hyper will.
//!
//! It works in place on the bytes the client sent: everything up to the end
//! of the last complete message part is passed on (a poisoned head is edited
//! where it lies); only an incomplete head (or an undecided preface) is held
//! back until the rest of it arrives. HTTP/2 connections pass untouched.
//!
//! A request hyper may upgrade (an `Upgrade` header on HTTP/1.1, or
//! CONNECT: hyper's `wants_upgrade`) is the last message the guard passes
//! until the service answers it ([`UpgradeGate`]): after a 101 the bytes
//! are the upgraded protocol's and pass untouched; after any other answer
//! they are HTTP again and framed as before. Until then the guard reads
//! nothing more from the client.
//!
//! The guard also knows when a keep-alive connection is at rest: every
//! request it passed was answered and flushed, no byte of a next one has
//! come, and hyper asks for more. Once that has lasted a while, it can end
//! hyper's connection there (an end of input where hyper closes gracefully,
//! and no shutdown), so the connection rests as its socket alone ([`Rest`],
//! `rest.rs`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use futures_util::task::AtomicWaker;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// hyper's header table size for a request (its `DEFAULT_MAX_HEADERS`); set
/// on hyper's builder from this constant. Also its trailer-count limit.
pub const MAX_HEADERS: usize = 100;
/// hyper's read buffer limit (its `DEFAULT_MAX_BUFFER_SIZE`), set on hyper's
/// builder from this constant: a head still incomplete at this many bytes is
/// refused by hyper (431).
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// hyper refuses request targets longer than this (its `MAX_URI_LEN`).
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;
/// hyper's limits inside a chunked body (`decode.rs`): extension bytes per
/// body, and trailer bytes (when `max_header_size` is not set).
const CHUNKED_EXTENSIONS_LIMIT: u64 = 16 << 10;
const TRAILER_LIMIT: usize = 16 << 10;
/// hyper's largest body length (`MAX_LEN` in body/length.rs).
const MAX_BODY_LEN: u64 = u64::MAX - 2;
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which protocols hyper may speak on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detect {
    /// hyper-util's auto builder: HTTP/2 if the first 24 bytes are its preface.
    Auto,
    /// HTTP/1 only (TLS with ALPN http/1.1).
    Http1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Auto mode, before the first bytes tell HTTP/1 from HTTP/2.
    Preface,
    /// Collecting a request head.
    Head,
    /// `n` body bytes left.
    Body(u64),
    /// Inside a chunked body.
    Chunked(Chunked),
    /// HTTP/2, or a connection upgraded after a 101: nothing to guard.
    PassThrough,
    /// After a request hyper may upgrade: nothing passes until the service
    /// has answered it (see [`UpgradeGate`]).
    AwaitUpgrade,
    /// hyper stops reading at what was passed on (it answers an error and
    /// closes): later bytes are discarded.
    Closed,
}

/// hyper's chunked decoder state (`ChunkedState` in decode.rs), with its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chunked {
    state: ChunkState,
    size: u64,
    extensions: u64,
    /// Trailer bytes so far; `None` until a trailer starts.
    trailer_bytes: Option<usize>,
    trailer_lines: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Body,
    BodyCr,
    BodyLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

enum ChunkStep {
    /// All of the input was consumed; the body goes on.
    More,
    /// The body ended after this many bytes.
    End(usize),
    /// hyper fails the body at the byte at this index.
    Invalid(usize),
}

impl Chunked {
    fn new() -> Self {
        Chunked { state: ChunkState::Start, size: 0, extensions: 0, trailer_bytes: None, trailer_lines: 0 }
    }

    /// One trailer byte into hyper's trailer buffer (`put_u8!`): false past its limit.
    fn put_trailer_byte(&mut self) -> bool {
        let bytes = self.trailer_bytes.get_or_insert(0);
        *bytes += 1;
        *bytes < TRAILER_LIMIT
    }

    fn feed(&mut self, input: &[u8]) -> ChunkStep {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() {
            if self.state == Body {
                let n = usize::try_from(self.size).unwrap_or(usize::MAX).min(input.len() - i);
                self.size -= n as u64;
                i += n;
                if self.size == 0 {
                    self.state = BodyCr;
                }
                continue;
            }
            let b = input[i];
            let hex = (b as char).to_digit(16).filter(|_| b.is_ascii_hexdigit());
            let next = match (self.state, b) {
                (Start, _) | (Size, _) if hex.is_some() => {
                    match self.size.checked_mul(16).and_then(|s| s.checked_add(u64::from(hex.unwrap()))) {
                        Some(size) => self.size = size,
                        None => return ChunkStep::Invalid(i),
                    }
                    Some(Size)
                }
                (Size | SizeLws, b'\t' | b' ') => Some(SizeLws),
                (Size | SizeLws, b';') => Some(Extension),
                (Size | SizeLws | Extension, b'\r') => Some(SizeLf),
                (Extension, b'\n') => None,
                (Extension, _) => {
                    self.extensions += 1;
                    (self.extensions < CHUNKED_EXTENSIONS_LIMIT).then_some(Extension)
                }
                (SizeLf, b'\n') if self.size == 0 => Some(EndCr),
                (SizeLf, b'\n') => Some(Body),
                (BodyCr, b'\r') => Some(BodyLf),
                (BodyLf, b'\n') => Some(Start),
                (Trailer, _) => self.put_trailer_byte().then_some(if b == b'\r' { TrailerLf } else { Trailer }),
                (TrailerLf, b'\n') => {
                    if self.trailer_lines >= MAX_HEADERS {
                        return ChunkStep::Invalid(i);
                    }
                    self.trailer_lines += 1;
                    self.put_trailer_byte().then_some(EndCr)
                }
                (EndCr, b'\r') => match self.trailer_bytes {
                    Some(_) => self.put_trailer_byte().then_some(EndLf),
                    None => Some(EndLf),
                },
                (EndCr, _) => match self.trailer_bytes {
                    // the first trailer byte starts the buffer unchecked
                    None => {
                        self.trailer_bytes = Some(1);
                        Some(Trailer)
                    }
                    Some(_) => self.put_trailer_byte().then_some(Trailer),
                },
                (EndLf, b'\n') => {
                    if self.trailer_bytes.is_some() && !self.put_trailer_byte() {
                        return ChunkStep::Invalid(i);
                    }
                    return ChunkStep::End(i + 1);
                }
                _ => None,
            };
            match next {
                Some(state) => self.state = state,
                None => return ChunkStep::Invalid(i),
            }
            i += 1;
        }
        ChunkStep::More
    }
}

/// What the guard found wrong with a head, for the caller's flow record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub method: String,
    pub path: String,
}

/// How the guard framed a head hyper accepts (kept for tests).
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Request {
        method: String,
        target: String,
        body: SeenBody,
    },
    /// Content-Length with Transfer-Encoding: poisoned, hyper answers 400.
    Poisoned {
        target: String,
    },
    /// A head hyper refuses: nothing is read after it.
    Refused,
    /// A head over [`MAX_HEAD_BYTES`]: hyper answers 431.
    TooLarge,
}

#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeenBody {
    Length(u64),
    Chunked,
}

/// What one complete or incomplete head means.
enum Head {
    /// Not complete yet: hold it.
    Incomplete,
    /// A request hyper accepts: `len` head bytes, then its body; whether
    /// hyper may upgrade the connection after it.
    Framed { len: usize, body: Phase, upgrade: bool },
    /// Content-Length with Transfer-Encoding: the head (`len` bytes) was poisoned.
    Poisoned { len: usize },
    /// hyper refuses the head (400, …): give it these bytes (the whole head
    /// when its end is known, else all there is), then nothing more.
    RefusedByHyper(Option<usize>),
    /// Longer than [`MAX_HEAD_BYTES`]: hyper gets exactly that many bytes of
    /// it, so it answers 431 and can never complete it (a single large read
    /// can take hyper's own buffer past its limit), then nothing more.
    TooLarge,
}

/// The framing state machine, separate from I/O so it can be tested.
pub struct Framer {
    phase: Phase,
    /// An incomplete request head (or undecided preface), held back from hyper.
    held: Vec<u8>,
    /// How much of `held` the last full parse saw (hyper's `partial_len`).
    partial_len: Option<usize>,
    /// Length at the last full parse, to re-parse at least at each doubling
    /// (so a head hyper refuses early is answered early, at linear cost).
    parsed_at: usize,
    /// Wait for the service's answer after a request hyper may upgrade
    /// (off when hyper serves without upgrades: it never upgrades).
    upgrades: bool,
    /// The message being passed is one hyper may upgrade after.
    upgrade_pending: bool,
    /// Request heads passed on, all told.
    requests: u64,
    /// A head hyper may upgrade after was passed (whatever the answer:
    /// hyper keeps that upgrade pending until its connection ends).
    upgrade_asked: bool,
    #[cfg(test)]
    pub seen: Vec<Seen>,
}

impl Framer {
    pub fn new(detect: Detect) -> Self {
        Framer {
            phase: if detect == Detect::Auto { Phase::Preface } else { Phase::Head },
            held: Vec::new(),
            partial_len: None,
            parsed_at: 0,
            upgrades: false,
            upgrade_pending: false,
            requests: 0,
            upgrade_asked: false,
            #[cfg(test)]
            seen: Vec::new(),
        }
    }

    fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Where a request that ended goes next: the next head, or a wait for
    /// the answer if hyper may upgrade after it.
    fn message_ended(&mut self) -> Phase {
        if std::mem::take(&mut self.upgrade_pending) { Phase::AwaitUpgrade } else { Phase::Head }
    }

    /// The service answered the request hyper may upgrade after: with 101
    /// (`switched`) the rest is the new protocol's, else HTTP again.
    fn upgrade_decided(&mut self, switched: bool) {
        if self.phase == Phase::AwaitUpgrade {
            self.phase = if switched { Phase::PassThrough } else { Phase::Head };
        }
    }

    /// Check `input`, which continues the stream after what was passed on
    /// before (any held bytes are its start). Returns how many leading bytes
    /// may go to hyper. The rest is an incomplete head the caller must hold,
    /// or, once the framer is closed, bytes to discard.
    fn scan(&mut self, input: &mut [u8], rejected: &mut Vec<Rejected>) -> usize {
        let mut at = 0;
        loop {
            let rest = &mut input[at..];
            match self.phase {
                Phase::Closed | Phase::AwaitUpgrade => return at,
                Phase::PassThrough => return input.len(),
                Phase::Preface => {
                    let n = rest.len().min(H2_PREFACE.len());
                    if rest[..n] != H2_PREFACE[..n] {
                        self.phase = Phase::Head;
                    } else if n == H2_PREFACE.len() {
                        self.phase = Phase::PassThrough;
                    } else {
                        return at; // undecided: hold
                    }
                }
                Phase::Head => {
                    if rest.is_empty() {
                        return at;
                    }
                    // only a head that starts `input` can have been held before
                    let partial_len = if at == 0 { self.partial_len } else { None };
                    match self.read_head(rest, partial_len, rejected) {
                        Head::Incomplete => return at,
                        Head::Framed { len, body, upgrade } => {
                            at += len;
                            self.requests += 1;
                            self.upgrade_asked |= upgrade;
                            self.upgrade_pending = upgrade && self.upgrades;
                            self.phase = if body == Phase::Head { self.message_ended() } else { body };
                        }
                        Head::Poisoned { len } => {
                            self.phase = Phase::Closed;
                            return at + len;
                        }
                        Head::RefusedByHyper(len) => {
                            self.phase = Phase::Closed;
                            return len.map_or(input.len(), |len| at + len);
                        }
                        Head::TooLarge => {
                            self.phase = Phase::Closed;
                            return at + MAX_HEAD_BYTES;
                        }
                    }
                }
                Phase::Body(left) => {
                    if rest.is_empty() {
                        return at;
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    at += n;
                    let left = left - n as u64;
                    self.phase = if left == 0 { self.message_ended() } else { Phase::Body(left) };
                }
                Phase::Chunked(mut chunked) => {
                    if rest.is_empty() {
                        return at;
                    }
                    match chunked.feed(rest) {
                        ChunkStep::More => {
                            self.phase = Phase::Chunked(chunked);
                            return input.len();
                        }
                        ChunkStep::End(n) => {
                            at += n;
                            self.phase = self.message_ended();
                        }
                        ChunkStep::Invalid(i) => {
                            // hyper fails the body at this byte and reads no further
                            self.phase = Phase::Closed;
                            return at + i + 1;
                        }
                    }
                }
            }
        }
    }

    /// Parse the head at the start of `input` as hyper's `Server::parse` does.
    fn read_head(&mut self, input: &mut [u8], partial_len: Option<usize>, rejected: &mut Vec<Rejected>) -> Head {
        // hyper re-parses a partial head only when its end may have arrived
        if let Some(prev) = partial_len
            && !is_complete_fast(input, prev)
            && input.len() < self.parsed_at.saturating_mul(2)
            && input.len() < MAX_HEAD_BYTES
        {
            self.partial_len = Some(input.len());
            return Head::Incomplete;
        }
        self.parsed_at = input.len();
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let len = match httparse::ParserConfig::default().parse_request(&mut request, input) {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => len,
            Ok(httparse::Status::Complete(_)) => return self.too_large(),
            Ok(httparse::Status::Partial) if input.len() >= MAX_HEAD_BYTES => return self.too_large(),
            Ok(httparse::Status::Partial) => {
                self.partial_len = Some(input.len());
                return Head::Incomplete;
            }
            Err(_) => return self.refused(None),
        };
        self.partial_len = None;
        self.parsed_at = 0;
        let (method, target) = (request.method.unwrap_or_default(), request.path.unwrap_or_default());
        if target.len() > MAX_URI_LEN
            || http::Method::from_bytes(method.as_bytes()).is_err()
            || http::Uri::try_from(target).is_err()
        {
            return self.refused(Some(len));
        }
        let http11 = request.version == Some(1);
        // role.rs, header by header: a Transfer-Encoding drops any Content-Length,
        // a Content-Length after a Transfer-Encoding is not even parsed.
        let (mut has_length, mut has_te, mut chunked, mut length) = (false, false, false, None::<u64>);
        // hyper's `wants_upgrade`: CONNECT, then each Upgrade header sets it
        // to whether the request is HTTP/1.1
        let mut upgrade = method == "CONNECT";
        let mut length_name_end = None;
        for h in request.headers.iter() {
            if h.name.len() >= 1 << 16 || http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                return self.refused(Some(len));
            }
            if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = http11;
            }
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                if !http11 {
                    return self.refused(Some(len));
                }
                has_te = true;
                length = None;
                chunked = is_chunked(h.value);
            } else if h.name.eq_ignore_ascii_case("content-length") {
                has_length = true;
                // where the name ends in `input`, to poison it
                length_name_end.get_or_insert(h.name.as_ptr() as usize + h.name.len() - input.as_ptr() as usize);
                if has_te {
                    continue;
                }
                match from_digits(h.value) {
                    Some(n) if n <= MAX_BODY_LEN && length.is_none_or(|prev| prev == n) => length = Some(n),
                    _ => return self.refused(Some(len)),
                }
            }
        }
        if has_length && has_te {
            rejected.push(Rejected { method: method.to_string(), path: target.to_string() });
            #[cfg(test)]
            self.seen.push(Seen::Poisoned { target: target.to_string() });
            // "Content-Length:" becomes "Content-Length\0": an invalid header
            // name, so hyper refuses the request with 400 and closes.
            if let Some(at) = length_name_end {
                input[at] = 0;
            }
            return Head::Poisoned { len };
        }
        if has_te && !chunked {
            return self.refused(Some(len));
        }
        let body = match (chunked, length) {
            (true, _) => Phase::Chunked(Chunked::new()),
            (false, Some(n)) if n > 0 => Phase::Body(n),
            _ => Phase::Head,
        };
        #[cfg(test)]
        self.seen.push(Seen::Request {
            method: method.to_string(),
            target: target.to_string(),
            body: if chunked { SeenBody::Chunked } else { SeenBody::Length(length.unwrap_or(0)) },
        });
        Head::Framed { len, body, upgrade }
    }

    fn refused(&mut self, len: Option<usize>) -> Head {
        #[cfg(test)]
        self.seen.push(Seen::Refused);
        Head::RefusedByHyper(len)
    }

    fn too_large(&mut self) -> Head {
        #[cfg(test)]
        self.seen.push(Seen::TooLarge);
        Head::TooLarge
    }

    /// Append `input` to the held bytes and check them all; returns the bytes
    /// that may go to hyper (the slow path, when a head arrived in pieces).
    fn feed_held(&mut self, input: &[u8], rejected: &mut Vec<Rejected>) -> Vec<u8> {
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(input);
        let passed = self.scan(&mut data, rejected);
        let rest = data.split_off(passed);
        if !self.is_closed() {
            self.held = rest;
        }
        data
    }
}

/// hyper's `is_complete_fast`: can a head that was partial at `prev_len`
/// bytes have ended in `bytes`?
fn is_complete_fast(bytes: &[u8], prev_len: usize) -> bool {
    let bytes = &bytes[prev_len.saturating_sub(3)..];
    bytes.iter().enumerate().any(|(i, b)| match b {
        b'\r' => bytes[i + 1..].starts_with(b"\n\r\n"),
        b'\n' => bytes[i + 1..].starts_with(b"\n") || bytes[i + 1..].starts_with(b"\r\n"),
        _ => false,
    })
}

/// hyper's `headers::is_chunked_`: the last coding of the value is `chunked`.
fn is_chunked(value: &[u8]) -> bool {
    http::HeaderValue::from_bytes(value)
        .ok()
        .and_then(|v| {
            v.to_str().ok().and_then(|s| s.rsplit(',').next()).map(|last| last.trim().eq_ignore_ascii_case("chunked"))
        })
        .unwrap_or(false)
}

/// hyper's `headers::from_digits`: ASCII digits only, no sign, no spaces.
fn from_digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, b| match b {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

/// How the service tells the guard its answer to a request hyper may
/// upgrade after. Answers come in request order, and the guard passes no
/// later request before it took the answer, so one slot is enough.
#[derive(Default)]
pub struct UpgradeGate {
    /// 0: not answered yet; 1: switched protocols (101); 2: anything else.
    answer: AtomicU8,
    waker: AtomicWaker,
}

impl UpgradeGate {
    /// The service answered such a request; `switched`: with 101.
    pub fn answered(&self, switched: bool) {
        self.answer.store(if switched { 1 } else { 2 }, Ordering::Release);
        self.waker.wake();
    }

    /// The answer, if there is one (else `cx` is woken when it comes).
    fn take(&self, cx: &Context<'_>) -> Option<bool> {
        self.waker.register(cx.waker());
        match self.answer.swap(0, Ordering::AcqRel) {
            0 => None,
            answer => Some(answer == 1),
        }
    }
}

/// Whether hyper's connection may end because the client is quiet between
/// requests (see the module's last paragraph).
pub struct Rest {
    /// Responses the service finished (hyper dropped their bodies: their
    /// last bytes are in hyper's buffer), counted by the service.
    answered: Arc<AtomicU64>,
    /// hyper wrote since it last flushed.
    unflushed: bool,
    /// `answered` when hyper last flushed.
    answered_at_flush: u64,
    /// The guard ended hyper's connection to rest.
    resting: bool,
    /// How long the connection must have been at rest before hyper's
    /// connection ends (a busy client's next request is usually on its way:
    /// a new hyper connection per request would cost more than it saves).
    after: Duration,
    /// When hyper last found the connection at rest with nothing to read,
    /// unless something moved since.
    quiet_since: Option<Instant>,
    /// Fires `after` past `quiet_since` (kept between quiet spells: moving
    /// a pending timer later is cheap).
    timer: Option<Pin<Box<Sleep>>>,
}

/// The service's count of finished responses, for the guard's [`Rest`].
#[derive(Clone)]
pub struct Answers(Arc<AtomicU64>);

impl Answers {
    /// A response's mark: it counts as finished when dropped (the service
    /// keeps it in the response's body, which hyper drops once the body's
    /// last bytes are in its buffer).
    pub fn mark(&self) -> Answered {
        Answered(self.0.clone())
    }
}

pub struct Answered(Arc<AtomicU64>);

impl Drop for Answered {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// The guard around a client connection's I/O.
pub struct FramingGuard<IO, F> {
    io: IO,
    framer: Framer,
    on_reject: F,
    /// Checked bytes not yet handed to hyper (slow path only).
    ready: Vec<u8>,
    eof: bool,
    /// Where the service's answers to upgradable requests arrive, when
    /// hyper serves with upgrades.
    gate: Option<Arc<UpgradeGate>>,
    /// When the connection may rest between requests (if it may).
    rest: Option<Rest>,
}

impl<IO, F: FnMut(Rejected)> FramingGuard<IO, F> {
    pub fn new(io: IO, detect: Detect, on_reject: F) -> Self {
        FramingGuard {
            io,
            framer: Framer::new(detect),
            on_reject,
            ready: Vec::new(),
            eof: false,
            gate: None,
            rest: None,
        }
    }

    /// A guard for a hyper that serves upgrades: after each request it may
    /// upgrade, the guard waits for the service's answer through `gate`.
    pub fn with_upgrades(io: IO, detect: Detect, on_reject: F, gate: Arc<UpgradeGate>) -> Self {
        let mut guard = Self::new(io, detect, on_reject);
        guard.framer.upgrades = true;
        guard.gate = Some(gate);
        guard
    }
}

impl<IO, F> FramingGuard<IO, F> {
    /// Let hyper's connection end when the client has been quiet between
    /// requests for `after`; returns the count of finished responses the
    /// service keeps.
    pub fn rest_between_requests(&mut self, after: Duration) -> Answers {
        let answered = Arc::new(AtomicU64::new(0));
        self.rest = Some(Rest {
            answered: answered.clone(),
            unflushed: false,
            answered_at_flush: 0,
            resting: false,
            after,
            quiet_since: None,
            timer: None,
        });
        Answers(answered)
    }

    /// Since when the connection has been at rest (hyper's wait for a head
    /// began about then).
    pub fn quiet_since(&self) -> Option<Instant> {
        self.rest.as_ref().and_then(|rest| rest.quiet_since)
    }

    /// The guard ended hyper's connection to rest.
    pub fn resting(&self) -> bool {
        self.rest.as_ref().is_some_and(|rest| rest.resting)
    }

    /// Lend the guard to a new hyper connection (after a rest, or at first).
    pub fn wake(&mut self) {
        if let Some(rest) = &mut self.rest {
            rest.resting = false;
            rest.quiet_since = None;
        }
        // a new hyper connection has no pending upgrade
        self.framer.upgrade_asked = false;
        // held bytes from an earlier slow path need not keep their capacity
        if self.framer.held.is_empty() {
            self.framer.held = Vec::new();
        }
        if self.ready.is_empty() {
            self.ready = Vec::new();
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// hyper asks for more and nothing came: may its connection end here?
    /// Only at a message boundary with nothing held, every request passed
    /// answered and all of hyper's writes flushed after the last answer, and
    /// no upgrade pending in hyper.
    fn may_rest(&self) -> bool {
        let framer = &self.framer;
        self.rest.as_ref().is_some_and(|rest| {
            !rest.unflushed
                && rest.answered_at_flush == framer.requests
                && rest.answered.load(Ordering::Acquire) == framer.requests
        }) && framer.phase == Phase::Head
            && framer.held.is_empty()
            && !framer.upgrade_asked
            && self.ready.is_empty()
            && !self.eof
    }

    /// hyper found nothing to read: end its connection now? Yes once the
    /// connection has been at rest for `Rest::after` (else `cx` is woken
    /// when it will have been).
    fn rest_now(&mut self, cx: &mut Context<'_>) -> bool {
        let at_rest = self.may_rest();
        let Some(rest) = &mut self.rest else { return false };
        if !at_rest {
            rest.quiet_since = None;
            return false;
        }
        if !rest.after.is_zero() {
            if rest.quiet_since.is_none() {
                let deadline = *rest.quiet_since.insert(Instant::now()) + rest.after;
                match &mut rest.timer {
                    Some(timer) => timer.as_mut().reset(deadline),
                    None => rest.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
            }
            if rest.timer.as_mut().is_none_or(|timer| timer.as_mut().poll(cx).is_pending()) {
                return false;
            }
        } else {
            rest.quiet_since.get_or_insert_with(Instant::now);
        }
        rest.resting = true;
        rest.timer = None; // a resting connection holds no timer
        true
    }

    /// Bytes moved: the connection is not quiet.
    fn stirred(&mut self) {
        if let Some(rest) = &mut self.rest {
            rest.quiet_since = None;
        }
    }
}

impl<IO: AsyncRead + Unpin, F: FnMut(Rejected) + Unpin> AsyncRead for FramingGuard<IO, F> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let mut rejected = Vec::new();
        loop {
            if !this.ready.is_empty() {
                let n = buf.remaining().min(this.ready.len());
                buf.put_slice(&this.ready[..n]);
                this.ready.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.framer.phase == Phase::AwaitUpgrade {
                let Some(switched) = this.gate.as_ref().and_then(|gate| gate.take(cx)) else {
                    // keep watching the client while the answer is awaited:
                    // its hang-up must reach hyper, which then abandons the
                    // request as it would any other. What it sends is held
                    // (up to a head's worth; then it waits, unread).
                    if this.framer.held.len() >= MAX_HEAD_BYTES {
                        return Poll::Pending;
                    }
                    let mut scratch = [0u8; 4096];
                    let mut read = ReadBuf::new(&mut scratch);
                    ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
                    if read.filled().is_empty() {
                        this.eof = true;
                        return Poll::Ready(Ok(()));
                    }
                    this.framer.held.extend_from_slice(read.filled());
                    continue;
                };
                this.framer.upgrade_decided(switched);
                if !this.framer.held.is_empty() {
                    // what came after the request: the new protocol's, or HTTP
                    this.ready = this.framer.feed_held(&[], &mut rejected);
                    rejected.drain(..).for_each(&mut this.on_reject);
                }
                continue;
            }
            if this.framer.held.is_empty() && !this.framer.is_closed() {
                // Fast path: read straight into hyper's buffer and check in place.
                let start = buf.filled().len();
                match Pin::new(&mut this.io).poll_read(cx, buf) {
                    // an end of input at rest: hyper closes gracefully (and
                    // `poll_shutdown` leaves the socket open)
                    Poll::Pending if this.rest_now(cx) => return Poll::Ready(Ok(())),
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(result) => result?,
                }
                let end = buf.filled().len();
                if end == start {
                    return Poll::Ready(Ok(())); // EOF
                }
                this.stirred();
                let passed = start + this.framer.scan(&mut buf.filled_mut()[start..], &mut rejected);
                rejected.drain(..).for_each(&mut this.on_reject);
                if passed < end {
                    if !this.framer.is_closed() {
                        this.framer.held.extend_from_slice(&buf.filled()[passed..]);
                    }
                    buf.set_filled(passed);
                }
                if passed > start {
                    return Poll::Ready(Ok(()));
                }
                // only the start of a head arrived: keep reading
            } else {
                let mut scratch = [0u8; 4096];
                let mut read = ReadBuf::new(&mut scratch);
                ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
                if read.filled().is_empty() {
                    // hand over a head that never completed, then EOF
                    this.ready = std::mem::take(&mut this.framer.held);
                    this.eof = true;
                    continue;
                }
                if this.framer.is_closed() {
                    continue; // hyper reads nothing more: discard
                }
                this.stirred();
                this.ready = this.framer.feed_held(read.filled(), &mut rejected);
                rejected.drain(..).for_each(&mut this.on_reject);
            }
        }
    }
}

impl<IO, F> FramingGuard<IO, F> {
    fn wrote(&mut self, written: &Poll<io::Result<usize>>) {
        if let (Some(rest), Poll::Ready(Ok(1..))) = (&mut self.rest, written) {
            rest.unflushed = true;
            rest.quiet_since = None;
        }
    }
}

impl<IO: AsyncWrite + Unpin, F: Unpin> AsyncWrite for FramingGuard<IO, F> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, data);
        self.wrote(&written);
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        // hyper flushes its socket only once its own buffer is empty
        if let (Some(rest), Poll::Ready(Ok(()))) = (&mut self.rest, &flushed) {
            rest.unflushed = false;
            rest.answered_at_flush = rest.answered.load(Ordering::Acquire);
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.resting() {
            return Poll::Ready(Ok(())); // hyper's connection ended, not the client's
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A client that sends `input` in the given pieces.
    pub(crate) struct Pieces(pub std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            if let Some(mut piece) = self.0.pop_front() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    self.0.push_front(piece.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Send `pieces` through the guard; return what hyper would read (with
    /// a small and a large read buffer), what was rejected and what was seen.
    pub(crate) fn run_pieces(pieces: &[&[u8]], detect: Detect) -> (Vec<u8>, Vec<Rejected>, Vec<Seen>) {
        let mut results = [8usize, 8192].map(|buffer| {
            let pieces = Pieces(pieces.iter().map(|p| p.to_vec()).collect());
            let mut rejected = Vec::new();
            let mut guard = FramingGuard::new(pieces, detect, |r| rejected.push(r));
            let mut out = Vec::new();
            let mut cx = Context::from_waker(std::task::Waker::noop());
            loop {
                let mut space = vec![0u8; buffer];
                let mut buf = ReadBuf::new(&mut space);
                let Poll::Ready(result) = Pin::new(&mut guard).poll_read(&mut cx, &mut buf) else {
                    panic!("a ready reader never leaves the guard pending");
                };
                result.unwrap();
                if buf.filled().is_empty() {
                    break;
                }
                out.extend_from_slice(buf.filled());
            }
            let seen = std::mem::take(&mut guard.framer.seen);
            drop(guard);
            (out, rejected, seen)
        });
        // the read buffer size changes nothing, except how much of a head
        // hyper refuses is handed over before the rest is discarded
        let [small, large] = &mut results;
        assert_eq!((&small.1, &small.2), (&large.1, &large.2), "the read buffer size changes nothing");
        assert!(large.0.starts_with(&small.0), "the read buffer size changes nothing");
        std::mem::take(large)
    }

    fn run(input: &[u8], step: usize) -> (Vec<u8>, Vec<Rejected>) {
        let pieces: Vec<&[u8]> = input.chunks(step).collect();
        let (out, rejected, _) = run_pieces(&pieces, Detect::Auto);
        (out, rejected)
    }

    const CLEAN: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
        POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\n\
        GET /fake HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n\
        POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n\
        GET /d HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn clean_traffic_passes_unchanged_in_any_split() {
        for step in [1, 2, 3, 7, 64, 4096] {
            let (out, rejected) = run(CLEAN, step);
            assert_eq!(out, CLEAN, "step {step}");
            assert!(rejected.is_empty(), "a body that looks like a head is not a head (step {step})");
        }
    }

    #[test]
    fn content_length_with_transfer_encoding_is_poisoned() {
        for (head, path) in [
            (
                &b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
                "/x",
            ),
            (b"POST /y HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 4\r\nHost: x\r\n\r\n", "/y"),
        ] {
            for step in [1, 5, 4096] {
                let first: &[u8] = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n";
                let stream = [first, head].concat();
                let (out, rejected) = run(&stream, step);
                assert_eq!(rejected, vec![Rejected { method: "POST".into(), path: path.into() }], "step {step}");
                let mut headers = [httparse::EMPTY_HEADER; 16];
                let second = &out[first.len()..];
                assert!(httparse::Request::new(&mut headers).parse(second).is_err(), "hyper must refuse it");
                assert_eq!(&out[..first.len()], first, "earlier requests untouched");
            }
        }
    }

    /// The shapes the attack run used to walk the old guard out of step,
    /// each followed by a CL+TE request that must be caught.
    #[test]
    fn heads_hyper_reads_are_the_heads_the_guard_reads() {
        let smuggled: &[u8] =
            b"POST /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        let many_headers: Vec<u8> = (0..MAX_HEADERS - 2).flat_map(|i| format!("X-{i}: v\r\n").into_bytes()).collect();
        let big = vec![b'a'; 200 << 10];
        let walkers: Vec<Vec<u8>> = vec![
            b"GET /crlf-lf HTTP/1.1\r\nHost: x\r\n\n".to_vec(),
            b"GET /lf HTTP/1.1\nHost: x\n\n".to_vec(),
            [b"GET /many HTTP/1.1\r\nHost: x\r\n".as_slice(), &many_headers, b"\r\n"].concat(),
            [b"GET /big HTTP/1.1\r\nHost: x\r\nX-Big: ".as_slice(), &big, b"\r\n\r\n"].concat(),
            b"POST /zeros HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              00000000000000000000005\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        ];
        for walker in &walkers {
            for first in [1, 2, 3, 5, 17] {
                let stream = [walker.as_slice(), smuggled].concat();
                let pieces: Vec<&[u8]> = [&stream[..first]].into_iter().chain(stream[first..].chunks(4096)).collect();
                let (_, rejected, seen) = run_pieces(&pieces, Detect::Auto);
                let name = String::from_utf8_lossy(&walker[..walker.len().min(24)]).into_owned();
                assert_eq!(rejected.len(), 1, "{name:?} split at {first}: {seen:?}");
                assert_eq!(rejected[0].path, "/smuggled");
                assert_eq!(seen.len(), 2, "{name:?}: {seen:?}");
            }
        }
    }

    #[test]
    fn http2_is_passed_through_only_after_the_whole_preface() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        for step in [1, 3, 100] {
            let (out, rejected) = run(preface, step);
            assert_eq!(out, preface);
            assert!(rejected.is_empty());
        }
        // a request starting like the preface is HTTP/1 once it differs
        let (_, rejected) =
            run(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 1);
        assert_eq!(rejected.len(), 1);
        // HTTP/1-only connections never switch
        let pieces: Vec<&[u8]> = vec![b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"];
        let (out, _, seen) = run_pieces(&pieces, Detect::Http1);
        assert_eq!(out, pieces[0], "hyper answers it (400)");
        assert_eq!(seen, vec![Seen::Refused]);
    }

    /// Read through a guard that serves upgrades until it returns Pending
    /// (waiting for an answer) or the end.
    fn read_until_pending<IO: AsyncRead + Unpin, F: FnMut(Rejected) + Unpin>(
        guard: &mut FramingGuard<IO, F>,
    ) -> (Vec<u8>, bool) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        loop {
            let mut space = vec![0u8; 64];
            let mut buf = ReadBuf::new(&mut space);
            match Pin::new(&mut *guard).poll_read(&mut cx, &mut buf) {
                Poll::Pending => return (out, true),
                Poll::Ready(result) => result.unwrap(),
            }
            if buf.filled().is_empty() {
                return (out, false);
            }
            out.extend_from_slice(buf.filled());
        }
    }

    /// A client that sends its pieces and then waits (never hangs up).
    struct ThenWaits(Pieces);

    impl AsyncRead for ThenWaits {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            if self.0.0.is_empty() {
                return Poll::Pending;
            }
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    #[test]
    fn nothing_passes_after_an_upgradable_request_until_it_is_answered() {
        let upgrade = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        let after: &[u8] = b"GET /next HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for switched in [true, false] {
            for step in [1, 7, 4096] {
                let input = [&upgrade[..], after].concat();
                let pieces = ThenWaits(Pieces(input.chunks(step).map(<[u8]>::to_vec).collect()));
                let gate = Arc::new(UpgradeGate::default());
                let mut rejected = Vec::new();
                let mut guard = FramingGuard::with_upgrades(pieces, Detect::Http1, |r| rejected.push(r), gate.clone());
                let (passed, pending) = read_until_pending(&mut guard);
                assert!(pending, "the guard waits for the answer");
                assert_eq!(passed, upgrade, "only the upgradable request passed");
                gate.answered(switched);
                let (rest, pending) = read_until_pending(&mut guard);
                assert!(pending, "the client is still there");
                drop(guard);
                if switched {
                    // the new protocol's bytes, untouched, even if they look like HTTP
                    assert_eq!(rest, after);
                    assert!(rejected.is_empty());
                } else {
                    // HTTP again: the next head is framed (and poisoned)
                    assert_ne!(rest, after);
                    assert_eq!(rejected.len(), 1, "step {step}");
                }
            }
        }
        // CONNECT and HTTP/1.1 Upgrade wait; HTTP/1.0 Upgrade does not (hyper's rule)
        for (request, waits) in [
            (&b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"[..], true),
            (b"GET / HTTP/1.0\r\nUpgrade: websocket\r\n\r\n", false),
            (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\n\r\n", true),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", false),
        ] {
            let pieces = ThenWaits(Pieces([request.to_vec(), after.to_vec()].into()));
            let gate = Arc::new(UpgradeGate::default());
            let mut guard = FramingGuard::with_upgrades(pieces, Detect::Http1, |_| {}, gate);
            let (passed, _) = read_until_pending(&mut guard);
            assert_eq!(passed == request, waits, "{}", String::from_utf8_lossy(request));
        }
        // a client that hangs up while the answer is awaited: hyper reads
        // the end (and abandons the request), nothing after the request passes
        let pieces = Pieces([upgrade.to_vec(), after.to_vec()].into());
        let mut guard = FramingGuard::with_upgrades(pieces, Detect::Http1, |_| {}, Arc::new(UpgradeGate::default()));
        assert_eq!(read_until_pending(&mut guard), (upgrade.to_vec(), false));
    }

    /// A client that sends its pieces, then waits; what it is sent is
    /// counted, and whether it was shut down.
    struct Quiet {
        pieces: Pieces,
        shut_down: bool,
    }

    impl AsyncRead for Quiet {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            if self.pieces.0.is_empty() {
                return Poll::Pending;
            }
            Pin::new(&mut self.pieces).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Quiet {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut_down = true;
            Poll::Ready(Ok(()))
        }
    }

    fn write_as_hyper<IO: AsyncWrite + Unpin, F: Unpin>(guard: &mut FramingGuard<IO, F>, data: &[u8]) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(Pin::new(&mut *guard).poll_write(&mut cx, data), Poll::Ready(Ok(_))));
    }

    fn flush_as_hyper<IO: AsyncWrite + Unpin, F: Unpin>(guard: &mut FramingGuard<IO, F>) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(Pin::new(&mut *guard).poll_flush(&mut cx), Poll::Ready(Ok(()))));
    }

    #[test]
    fn a_connection_rests_only_when_every_request_was_answered_and_flushed() {
        let two: &[u8] =
            b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        let client = Quiet { pieces: Pieces([two.to_vec()].into()), shut_down: false };
        let gate = Arc::new(UpgradeGate::default());
        let mut guard = FramingGuard::with_upgrades(client, Detect::Http1, |_| {}, gate);
        let answers = guard.rest_between_requests(Duration::ZERO);
        let (passed, waits) = read_until_pending(&mut guard);
        assert_eq!((&passed[..], waits), (two, true), "both requests passed, nothing answered: hyper waits");

        // the first answer, written and flushed: one request is still open
        let first = answers.mark();
        write_as_hyper(&mut guard, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        drop(first);
        flush_as_hyper(&mut guard);
        assert_eq!(read_until_pending(&mut guard), (vec![], true));
        assert!(!guard.resting());

        // the second answer's bytes written, then flushed before its body
        // was dropped (its end may still come): not yet
        let second = answers.mark();
        write_as_hyper(&mut guard, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(read_until_pending(&mut guard), (vec![], true), "not flushed");
        flush_as_hyper(&mut guard);
        drop(second);
        assert_eq!(read_until_pending(&mut guard), (vec![], true), "flushed before the answer ended");
        assert!(!guard.resting());
        flush_as_hyper(&mut guard);

        // at rest: hyper reads an end, and its shutdown leaves the client alone
        assert_eq!(read_until_pending(&mut guard), (vec![], false));
        assert!(guard.resting());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut guard).poll_shutdown(&mut cx).is_ready());
        assert!(!guard.io.shut_down, "a resting client was shut down");

        // woken for a new hyper connection: an incomplete head is held, never a rest
        guard.wake();
        assert!(!guard.resting());
        guard.io.pieces.0.push_back(b"GET /c HTTP/1.1\r\nHo".to_vec());
        assert_eq!(read_until_pending(&mut guard), (vec![], true));
        guard.io.pieces.0.push_back(b"st: a\r\n\r\n".to_vec());
        assert_eq!(read_until_pending(&mut guard), (b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), true));
        drop(answers.mark());
        flush_as_hyper(&mut guard);
        assert_eq!(read_until_pending(&mut guard), (vec![], false), "answered and flushed: at rest again");

        // a request hyper may upgrade keeps hyper's connection to its end, answered or not
        guard.wake();
        let gate = guard.gate.clone().unwrap();
        guard
            .io
            .pieces
            .0
            .push_back(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n".to_vec());
        assert!(read_until_pending(&mut guard).1);
        gate.answered(false);
        drop(answers.mark());
        flush_as_hyper(&mut guard);
        assert_eq!(read_until_pending(&mut guard), (vec![], true));
        assert!(!guard.resting());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_rests_once_it_has_been_at_rest_for_the_delay() {
        let request: &[u8] = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n";
        let client = Quiet { pieces: Pieces([request.to_vec()].into()), shut_down: false };
        let mut guard = FramingGuard::with_upgrades(client, Detect::Http1, |_| {}, Arc::new(UpgradeGate::default()));
        let answers = guard.rest_between_requests(Duration::from_secs(1));
        assert_eq!(read_until_pending(&mut guard), (request.to_vec(), true));
        drop(answers.mark());
        flush_as_hyper(&mut guard);
        // at rest from now: not yet long enough
        assert_eq!(read_until_pending(&mut guard), (vec![], true));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(read_until_pending(&mut guard), (vec![], true));
        // bytes moved (hyper wrote): the quiet starts again
        write_as_hyper(&mut guard, b"x");
        flush_as_hyper(&mut guard);
        assert_eq!(read_until_pending(&mut guard), (vec![], true));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(read_until_pending(&mut guard), (vec![], true), "600 ms since the write");
        assert!(!guard.resting());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(read_until_pending(&mut guard), (vec![], false), "1.1 s at rest");
        assert!(guard.resting());
        let quiet = guard.quiet_since().expect("the quiet's start");
        assert_eq!(quiet.elapsed(), Duration::from_millis(1100));
    }

    #[test]
    fn what_hyper_refuses_is_passed_and_nothing_is_framed_after_it() {
        let next: &[u8] = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n";
        for (refused, cut) in [
            (&b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..], true),
            (b"POST /te HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", true),
            (b"GET /v HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", true),
            (b"GET /cr HTTP/1.1\rHost: x\r\r", false),
            (b"GET /fold HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n", false),
        ] {
            let stream = [refused, next].concat();
            for step in [1, 3, 4096] {
                let pieces: Vec<&[u8]> = stream.chunks(step).collect();
                let (out, _, seen) = run_pieces(&pieces, Detect::Auto);
                assert!(stream.starts_with(&out), "bytes are passed unchanged");
                assert!(seen.iter().all(|s| !matches!(s, Seen::Request { target, .. } if target == "/next")));
                if cut {
                    // the end of what hyper refuses is known: nothing after it is passed
                    assert!(!String::from_utf8_lossy(&out).contains("/next"), "{}", String::from_utf8_lossy(&out));
                }
            }
        }
    }
}
