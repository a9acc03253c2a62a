//! The framing guard against hyper itself: a seeded generator of hostile
//! HTTP/1.1 byte streams (line endings CRLF, LF and CR, obs-fold, header
//! counts and head sizes around hyper's limits, Content-Length and
//! Transfer-Encoding in every spelling, chunked bodies in every shape,
//! bodies that look like requests, random byte damage), sent in arbitrary
//! splits to hyper as weir configures it, once bare and once behind the
//! guard. What must hold:
//!
//! - every request hyper alone reads, the guard read too, at the same place
//!   in the stream, with the same target and body framing;
//! - behind the guard hyper reads exactly the same requests, except that it
//!   stops at (refuses) the first one with both Content-Length and
//!   Transfer-Encoding;
//! - no request that was sent with both ever reaches the service.
//!
//! And served as weir serves HTTP/1.1 — hyper's HTTP/1 server with upgrades,
//! the guard waiting for each answer to a request hyper may switch after
//! (some requests carry `Upgrade`), every upgrade declined — hyper reads the
//! same requests as behind the guard without upgrades.
//!
//! `WEIR_FRAMING_CASES=100000 cargo test -p weir --lib framing_differential`
//! runs more cases (default 600); `WEIR_FRAMING_SEED` picks the first seed.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::framing::tests::run_pieces;
use super::framing::{Detect, FramingGuard, MAX_HEAD_BYTES, MAX_HEADERS, Seen, SeenBody, UpgradeGate};
use super::server::{Mode, http1_builder, hyper_builder};

/// splitmix64: small, seedable, good enough to explore.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }
    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
}

/// One generated stream and what the generator meant by it.
struct Case {
    stream: Vec<u8>,
    pieces: Vec<usize>,
    /// Targets of requests sent with both Content-Length and Transfer-Encoding.
    smuggling: Vec<String>,
    /// Bytes were damaged at random: what was meant no longer holds.
    damaged: bool,
}

fn eol(rng: &mut Rng) -> &'static str {
    match rng.below(100) {
        0..70 => "\r\n",
        70..96 => "\n",
        _ => "\r",
    }
}

fn generate(rng: &mut Rng) -> Case {
    let mut stream = Vec::new();
    let mut smuggling = Vec::new();
    let messages = 1 + rng.below(4);
    for m in 0..messages {
        let target = format!("/m{m}");
        if rng.percent(10) {
            stream.extend_from_slice(rng.pick(&["\r\n", "\n", "\r\n\r\n", "\n\r\n"]).as_bytes());
        }
        let method = rng.pick(&["GET", "POST", "PUT", "PRI", "OPTIONS"]);
        let version = if rng.percent(92) { "HTTP/1.1" } else { "HTTP/1.0" };
        let mut head = format!("{method} {target} {version}{}", eol(rng));
        let mut lines: Vec<String> = Vec::new();
        if rng.percent(90) {
            lines.push("Host: x".into());
        }
        let length = rng.below(40);
        let cl = |rng: &mut Rng| -> String {
            let spelled = rng.pick(&["Content-Length: ", "content-length:", "CONTENT-LENGTH:  ", "Content-Length :"]);
            let value = match rng.below(10) {
                0 => format!("0{length}"),
                1 => format!("{length}, {length}"),
                2 => format!("+{length}"),
                3 => format!("{length} "),
                _ => length.to_string(),
            };
            format!("{spelled}{value}")
        };
        let te = |rng: &mut Rng| -> String {
            rng.pick(&[
                "Transfer-Encoding: chunked",
                "transfer-encoding: Chunked",
                "Transfer-Encoding:chunked ",
                "Transfer-Encoding: gzip, chunked",
                "Transfer-Encoding: chunked, gzip",
                "Transfer-Encoding: xchunked",
                "Transfer-Encoding: chunked\u{0}",
                "Transfer-Encoding : chunked",
            ])
            .to_string()
        };
        let (mut has_cl, mut has_te) = (false, false);
        match rng.below(10) {
            0..3 => {}
            3..6 => {
                lines.push(cl(rng));
                has_cl = true;
            }
            6..8 => {
                lines.push(te(rng));
                has_te = true;
            }
            _ => {
                let (a, b) = (cl(rng), te(rng));
                if rng.percent(50) {
                    lines.extend([a, b]);
                } else {
                    lines.extend([b, a]);
                }
                has_cl = true;
                has_te = true;
            }
        }
        if rng.percent(10) {
            lines.push(if rng.percent(50) { cl(rng) } else { te(rng) });
        }
        // a request hyper may switch protocols after
        if rng.percent(15) {
            lines.push(rng.pick(&["Upgrade: websocket", "upgrade: h2c", "Upgrade:", "UPGRADE: x, y"]).to_string());
        }
        // header counts around hyper's table size
        let fillers = match rng.below(10) {
            0 => MAX_HEADERS - 3 + rng.below(6),
            _ => rng.below(4),
        };
        for i in 0..fillers {
            lines.insert(rng.below(lines.len() + 1), format!("X-F{i}: v"));
        }
        if rng.percent(5) {
            let at = rng.below(lines.len() + 1);
            lines.insert(at, " folded".into());
        }
        for line in &lines {
            head.push_str(line);
            head.push_str(eol(rng));
        }
        // heads around hyper's size limit
        if rng.percent(3) {
            let want = MAX_HEAD_BYTES - 64 + rng.below(128);
            let pad = want.saturating_sub(head.len() + 12);
            head.push_str("X-Pad: ");
            head.push_str(&"p".repeat(pad));
            head.push_str(eol(rng));
        }
        head.push_str(eol(rng));
        stream.extend_from_slice(head.as_bytes());
        // an intended smuggle: the generator's own spelling makes both headers real
        let real_cl = lines.iter().any(|l| l.to_ascii_lowercase().starts_with("content-length:"));
        let real_te = lines.iter().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:"));
        if real_cl && real_te {
            smuggling.push(target.clone());
        }
        // a body that, misframed, reads as a request
        let hidden = format!("GET /hidden{m} HTTP/1.1\r\nHost: x\r\n\r\n");
        if has_te && (rng.percent(80) || !has_cl) {
            for _ in 0..rng.below(3) {
                let data = if rng.percent(50) { hidden.clone() } else { "hello".into() };
                let size = match rng.below(6) {
                    0 => format!("{:0>20x}", data.len()),
                    1 => format!("{:X}", data.len()),
                    2 => format!("{:x} ;ext=1", data.len()),
                    3 => format!("{:x};e", data.len()),
                    _ => format!("{:x}", data.len()),
                };
                stream.extend_from_slice(size.as_bytes());
                stream.extend_from_slice(if rng.percent(90) { b"\r\n" } else { b"\n" });
                stream.extend_from_slice(data.as_bytes());
                stream.extend_from_slice(if rng.percent(92) { b"\r\n" } else { b"\n" });
            }
            stream.extend_from_slice(rng.pick(&["0", "000", "0;x"]).as_bytes());
            stream.extend_from_slice(b"\r\n");
            if rng.percent(20) {
                stream.extend_from_slice(rng.pick(&["X-T: 1\r\n", "X-T: 1\n", "Content-Length: 5\r\n"]).as_bytes());
            }
            stream.extend_from_slice(b"\r\n");
        } else if has_cl {
            let body = hidden.as_bytes().iter().chain(b"0123456789".iter().cycle()).take(length);
            stream.extend(body);
        }
    }
    let damaged = rng.percent(30);
    if damaged {
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(stream.len());
            let byte = *rng.pick(&[&b'\r', &b'\n', &b' ', &b'\t', &b':', &b'0', &b'a', &b';']);
            match rng.below(3) {
                0 => stream[at] = byte,
                1 => stream.insert(at, byte),
                _ => {
                    stream.remove(at);
                }
            }
        }
    }
    // arbitrary splits, often tiny at the start
    let mut pieces = Vec::new();
    let mut left = stream.len();
    while left > 0 {
        let n = if pieces.len() < 4 && rng.percent(50) { 1 + rng.below(4) } else { 1 + rng.below(3000) };
        let n = n.min(left);
        pieces.push(n);
        left -= n;
    }
    Case { stream, pieces, smuggling, damaged }
}

/// What the service saw of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Served {
    method: String,
    target: String,
    /// `Some(n)` for a Content-Length body, `None` for chunked.
    length: Option<u64>,
    body: Result<Vec<u8>, String>,
}

/// Send `case`'s stream in its pieces, yielding between them (until the
/// server stops reading).
async fn write_pieces<W: tokio::io::AsyncWrite + Unpin>(out: &mut W, case: &Case) {
    let mut at = 0;
    for n in &case.pieces {
        if out.write_all(&case.stream[at..at + n]).await.is_err() {
            return;
        }
        at += n;
        tokio::task::yield_now().await;
    }
}

impl Served {
    /// What the service saw of `request`, its body read to the end.
    async fn of(request: hyper::Request<Incoming>) -> Served {
        let method = request.method().to_string();
        let target = request.uri().to_string();
        let length = hyper::body::Body::size_hint(request.body()).exact();
        let chunked = request.headers().contains_key(http::header::TRANSFER_ENCODING);
        let body = match request.into_body().collect().await {
            Ok(collected) => Ok(collected.to_bytes().to_vec()),
            Err(e) => Err(e.to_string()),
        };
        let length = if chunked { None } else { Some(length.unwrap_or(0)) };
        Served { method, target, length, body }
    }
}

/// Serve `case` with hyper as weir configures it, bare or behind the guard.
async fn serve(case: &Case, guarded: bool) -> Vec<Served> {
    let (client, server) = tokio::io::duplex(4 << 20);
    let served = Arc::new(Mutex::new(Vec::new()));
    let record = served.clone();
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let record = record.clone();
        async move {
            let served = Served::of(request).await;
            record.lock().unwrap().push(served);
            Ok::<_, Infallible>(hyper::Response::new(Empty::<Bytes>::new()))
        }
    });
    let mut builder = hyper_builder(Mode::Auto, None);
    // let hyper finish what it read after the client stops sending
    builder.http1().half_close(true);
    let connection = async {
        if guarded {
            let io = FramingGuard::new(server, Detect::Auto, |_| {});
            let _ = builder.serve_connection(TokioIo::new(io), service).await;
        } else {
            let _ = builder.serve_connection(TokioIo::new(server), service).await;
        }
    };
    let (mut read_half, mut write_half) = tokio::io::split(client);
    let send = async {
        write_pieces(&mut write_half, case).await;
        let _ = write_half.shutdown().await;
    };
    let drain = async {
        let mut sink = Vec::new();
        let _ = read_half.read_to_end(&mut sink).await;
    };
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(20), async { tokio::join!(connection, send, drain) }).await;
    served.lock().unwrap().clone()
}

/// Serve `case` as weir serves HTTP/1.1: hyper's HTTP/1 server with
/// upgrades, behind the guard and its upgrade gate, every upgrade declined
/// (the service answers 200). The client stays until hyper has served what
/// it will, then hangs up: weir's hyper takes a half-close as the end.
async fn serve_with_upgrades(case: &Case) -> Vec<Served> {
    let (client, server) = tokio::io::duplex(4 << 20);
    let served = Arc::new(Mutex::new(Vec::new()));
    let record = served.clone();
    let gate = Arc::new(UpgradeGate::default());
    let answers = gate.clone();
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let (record, answers) = (record.clone(), answers.clone());
        let upgradable = request.extensions().get::<hyper::upgrade::OnUpgrade>().is_some();
        async move {
            let served = Served::of(request).await;
            record.lock().unwrap().push(served);
            if upgradable {
                answers.answered(false);
            }
            Ok::<_, Infallible>(hyper::Response::new(Empty::<Bytes>::new()))
        }
    });
    let io = FramingGuard::with_upgrades(server, Detect::Http1, |_| {}, gate);
    let connection = async {
        let _ = http1_builder(None).serve_connection(TokioIo::new(io), service).with_upgrades().await;
    };
    let (mut read_half, mut write_half) = tokio::io::split(client);
    let send = async {
        write_pieces(&mut write_half, case).await;
        // hang up once hyper serves nothing more: everything here is in
        // memory on one thread, so rounds of yielding with no new request
        // served mean there is none to come (no clock: a busy machine
        // cannot make this early)
        let (mut last, mut quiet) = (usize::MAX, 0);
        while quiet < 3 {
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            let now = served.lock().unwrap().len();
            quiet = if now == last { quiet + 1 } else { 0 };
            last = now;
        }
        let _ = write_half.shutdown().await;
    };
    let drain = async {
        let mut sink = Vec::new();
        let _ = read_half.read_to_end(&mut sink).await;
    };
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(20), async { tokio::join!(connection, send, drain) }).await;
    served.lock().unwrap().clone()
}

fn check(case: &Case, bare: &[Served], guarded: &[Served], seen: &[Seen]) -> Result<(), String> {
    // where the guard stops: a poisoned head, one hyper refuses, one too large
    let stop = seen.iter().position(|s| !matches!(s, Seen::Request { .. })).unwrap_or(seen.len());
    // every request hyper reads before it, the guard read the same way
    for (i, request) in bare.iter().enumerate().take(stop) {
        let Some(Seen::Request { method, target, body }) = seen.get(i) else {
            return Err(format!("request {i}: hyper read {request:?}, the guard nothing"));
        };
        let length = match body {
            SeenBody::Length(n) => Some(*n),
            SeenBody::Chunked => None,
        };
        let target = http::Uri::try_from(target.as_str()).map(|u| u.to_string()).unwrap_or_default();
        if *method != request.method || target != request.target || length != request.length {
            return Err(format!("request {i}: hyper read {request:?}, the guard {:?}", seen[i]));
        }
    }
    match seen.get(stop) {
        // hyper alone reads a CL+TE request (Transfer-Encoding wins) and closes
        Some(Seen::Poisoned { target })
            if bare.len() > stop + 1 || bare.get(stop).is_some_and(|r| r.target != *target) =>
        {
            return Err(format!("hyper read past a CL+TE request: {:?}", &bare[stop..]));
        }
        // a head hyper refuses: hyper alone reads nothing more either
        Some(Seen::Refused) if bare.len() > stop => {
            return Err(format!("hyper read {:?} where the guard saw a head hyper refuses", &bare[stop..]));
        }
        // hyper alone may accept a head past its limit, when one read takes its
        // buffer beyond it; the guard refuses every one (431)
        _ => {}
    }
    // behind the guard hyper reads the same, up to where the guard stops
    if guarded != &bare[..stop.min(bare.len())] {
        return Err(format!("behind the guard hyper read {guarded:?}\nbare: {bare:?}\nseen: {seen:?}"));
    }
    if !case.damaged
        && let Some(smuggled) = guarded.iter().find(|r| case.smuggling.contains(&r.target))
    {
        return Err(format!("a request with Content-Length and Transfer-Encoding passed: {smuggled:?}"));
    }
    Ok(())
}

#[test]
fn the_guard_sees_every_head_hyper_reads_with_the_same_framing() {
    let cases: u64 = std::env::var("WEIR_FRAMING_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    let first: u64 = std::env::var("WEIR_FRAMING_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut smuggles = 0;
    for seed in first..first + cases {
        let case = generate(&mut Rng(seed));
        smuggles += case.smuggling.len();
        let bare = runtime.block_on(serve(&case, false));
        let guarded = runtime.block_on(serve(&case, true));
        let mut at = 0;
        let pieces: Vec<&[u8]> = case
            .pieces
            .iter()
            .map(|n| {
                at += n;
                &case.stream[at - n..at]
            })
            .collect();
        let (_, _, seen) = run_pieces(&pieces, Detect::Auto);
        let shown = || String::from_utf8_lossy(&case.stream[..case.stream.len().min(2000)]).into_owned();
        if let Err(why) = check(&case, &bare, &guarded, &seen) {
            panic!("seed {seed} (pieces {:?}): {why}\nstream: {:?}", &case.pieces[..case.pieces.len().min(8)], shown());
        }
        // as weir serves HTTP/1.1, with upgrades (declined): the same requests
        let with_upgrades = runtime.block_on(serve_with_upgrades(&case));
        assert_eq!(with_upgrades, guarded, "seed {seed}: with upgrades\nstream: {:?}", shown());
    }
    assert!(smuggles > cases as usize / 10, "the generator must try smuggling often ({smuggles})");
}
