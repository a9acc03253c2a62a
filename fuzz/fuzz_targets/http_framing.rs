//! The HTTP/1.1 framing guard against hyper's reading of the same bytes.
//!
//! Input: one byte choosing how the client's bytes are split into reads,
//! then the bytes a client sends. Properties:
//! - the guard adds or reorders nothing: what hyper reads is a prefix of
//!   the input (the guard passes nothing after a head hyper will refuse,
//!   since hyper closes there), except the `:` after a poisoned
//!   Content-Length name (now NUL);
//! - the split changes nothing but how much of a head hyper refuses is
//!   passed before the guard stops (the guard is a function of the stream);
//! - no request that hyper would accept from what the guard passed on
//!   carries both Content-Length and Transfer-Encoding: the guard saw every
//!   head hyper sees (a model of hyper 1.x's server parser follows the
//!   stream: httparse with 100 headers, RFC 9112 body framing, hyper's
//!   chunked decoder, and where hyper stops reading a connection).
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};
use weir::fuzzing::{Detect, FramingGuard, Rejected};

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let step = usize::from(split % 64) + 1;
    let whole = run(input, input.len().max(1), 8192);
    let pieces = run(input, step, usize::from(split / 64) * 3 + 1);
    // after a head hyper refuses, how much of that head the guard had passed
    // depends on the reads (hyper answers its error either way and reads
    // nothing after it): one output is a prefix of the other
    let shorter = whole.0.len().min(pieces.0.len());
    assert_eq!(whole.0[..shorter], pieces.0[..shorter], "the split changed what hyper reads (step {step})");
    hyper_model::check(&pieces.0);
    assert_eq!(whole.1.len(), pieces.1.len(), "the split changed what was rejected");
    let (out, rejected) = whole;
    assert!(out.len() <= input.len(), "bytes added");
    let mut poisoned = 0;
    for (i, (a, b)) in input.iter().zip(&out).enumerate() {
        if a != b {
            assert!(*a == b':' && *b == 0, "byte {i} changed from {a:#04x} to {b:#04x}");
            poisoned += 1;
        }
    }
    assert_eq!(poisoned, rejected.len(), "every poisoned head is reported once");
    hyper_model::check(&out);
});

/// A client that sends its bytes in reads of `step`.
struct Pieces<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// What hyper reads through the guard, with a read buffer of `buffer` bytes.
fn run(input: &[u8], step: usize, buffer: usize) -> (Vec<u8>, Vec<Rejected>) {
    let mut rejected = Vec::new();
    let mut guard = FramingGuard::new(Pieces { data: input, step }, Detect::Auto, |r| rejected.push(r));
    let mut out = Vec::with_capacity(input.len());
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut space = vec![0u8; buffer];
    loop {
        let mut buf = ReadBuf::new(&mut space);
        let Poll::Ready(result) = Pin::new(&mut guard).poll_read(&mut cx, &mut buf) else {
            panic!("the guard is pending on a reader that is always ready");
        };
        result.expect("an in-memory read cannot fail");
        if buf.filled().is_empty() {
            break;
        }
        out.extend_from_slice(buf.filled());
    }
    drop(guard);
    (out, rejected)
}

/// hyper 1.x's HTTP/1 server reading of a byte stream (proto/h1/role.rs and
/// decode.rs), as far as framing goes.
mod hyper_model {
    const MAX_HEADERS: usize = 100;

    pub fn check(mut stream: &[u8]) {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            let head_len = match request.parse(stream) {
                Ok(httparse::Status::Complete(n)) => n,
                // incomplete at EOF, or 400: hyper reads no further
                _ => return,
            };
            let method = request.method.unwrap();
            if http::Method::from_bytes(method.as_bytes()).is_err()
                || http::Uri::try_from(request.path.unwrap()).is_err()
            {
                return;
            }
            let http11 = request.version == Some(1);
            let mut keep_alive = http11;
            let (mut length, mut content_length, mut te, mut chunked) = (None, false, false, false);
            for h in request.headers.iter() {
                let name = h.name.to_ascii_lowercase();
                let value = h.value;
                match name.as_str() {
                    "transfer-encoding" => {
                        if !http11 {
                            return; // 400
                        }
                        te = true;
                        chunked = is_chunked(value);
                    }
                    "content-length" => {
                        content_length = true;
                        if te {
                            continue;
                        }
                        let Some(n) = digits(value) else { return };
                        match length {
                            Some(prev) if prev != n => return,
                            _ => length = Some(n),
                        }
                    }
                    "connection" => {
                        let v = String::from_utf8_lossy(value).to_ascii_lowercase();
                        if v.split(',').any(|t| t.trim() == "close") {
                            keep_alive = false;
                        } else if !http11 && v.split(',').any(|t| t.trim() == "keep-alive") {
                            keep_alive = true;
                        }
                    }
                    "upgrade" => return, // hyper hands the connection over; weir refuses upgrades
                    _ => {}
                }
            }
            if method == "CONNECT" {
                return;
            }
            if te && !chunked {
                return; // 400
            }
            assert!(
                !(te && content_length),
                "hyper accepts a request with both Content-Length and Transfer-Encoding that the guard \
                 did not poison: {:?}",
                String::from_utf8_lossy(&stream[..head_len])
            );
            stream = &stream[head_len..];
            if chunked {
                match chunked_body(stream) {
                    Some(n) => stream = &stream[n..],
                    None => return,
                }
            } else if let Some(n) = length {
                let Ok(n) = usize::try_from(n) else { return };
                if n > stream.len() {
                    return;
                }
                stream = &stream[n..];
            }
            if !keep_alive {
                return;
            }
        }
    }

    fn is_chunked(value: &[u8]) -> bool {
        std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
    }

    fn digits(value: &[u8]) -> Option<u64> {
        if value.is_empty() {
            return None;
        }
        value.iter().try_fold(0u64, |n, b| {
            if b.is_ascii_digit() { n.checked_mul(10)?.checked_add(u64::from(b - b'0')) } else { None }
        })
    }

    /// The length of a complete chunked body at the start of `b` as hyper's
    /// decoder reads it; `None`: an error or the stream ends inside it.
    fn chunked_body(b: &[u8]) -> Option<usize> {
        #[derive(Clone, Copy)]
        enum S {
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
        let (mut state, mut size, mut i, mut extensions, mut trailers) = (S::Start, 0u64, 0usize, 0u64, 0usize);
        let hex = |c: u8| (c as char).to_digit(16).map(u64::from);
        loop {
            if let S::Body = state {
                let n = usize::try_from(size).ok()?;
                if b.len() - i < n {
                    return None;
                }
                i += n;
                state = S::BodyCr;
                continue;
            }
            let c = *b.get(i)?;
            i += 1;
            state = match state {
                S::Start => {
                    size = hex(c)?;
                    S::Size
                }
                S::Size => match c {
                    b'\t' | b' ' => S::SizeLws,
                    b';' => S::Extension,
                    b'\r' => S::SizeLf,
                    c => {
                        size = size.checked_mul(16)?.checked_add(hex(c)?)?;
                        S::Size
                    }
                },
                S::SizeLws => match c {
                    b'\t' | b' ' => S::SizeLws,
                    b';' => S::Extension,
                    b'\r' => S::SizeLf,
                    _ => return None,
                },
                S::Extension => match c {
                    b'\r' => S::SizeLf,
                    b'\n' => return None,
                    _ => {
                        extensions += 1;
                        if extensions >= 16 * 1024 {
                            return None;
                        }
                        S::Extension
                    }
                },
                S::SizeLf if c == b'\n' => {
                    if size == 0 {
                        S::EndCr
                    } else {
                        S::Body
                    }
                }
                S::SizeLf => return None,
                S::Body => unreachable!(),
                S::BodyCr if c == b'\r' => S::BodyLf,
                S::BodyLf if c == b'\n' => {
                    size = 0;
                    S::Start
                }
                S::BodyCr | S::BodyLf => return None,
                S::Trailer if c == b'\r' => S::TrailerLf,
                S::Trailer => S::Trailer,
                S::TrailerLf if c == b'\n' => {
                    if trailers >= MAX_HEADERS {
                        return None;
                    }
                    trailers += 1;
                    S::EndCr
                }
                S::TrailerLf => return None,
                S::EndCr if c == b'\r' => S::EndLf,
                S::EndCr => S::Trailer,
                S::EndLf if c == b'\n' => return Some(i),
                S::EndLf => return None,
            };
        }
    }
}
