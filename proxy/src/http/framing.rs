//! A guard under hyper's HTTP/1 parser for one ambiguity hyper resolves
//! silently: a request with both Content-Length and Transfer-Encoding.
//!
//! Hyper follows RFC 9112 §6.3 (Transfer-Encoding wins, Content-Length is
//! dropped, the connection closes after the response) and hides the dropped
//! header, so the request would be forwarded. Weir refuses such requests
//! outright. The guard follows message boundaries (heads, Content-Length and
//! chunked bodies), holds each request head back until it is complete, and
//! when one carries both headers it corrupts that head's Content-Length name
//! so hyper's own parser answers 400 and closes, in order after any earlier
//! pipelined responses. HTTP/2 connections are passed through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Heads larger than this are passed on unchecked; hyper refuses them (431).
const MAX_HEAD: usize = 128 << 10;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// Collecting a request head.
    #[default]
    Head,
    /// `n` body bytes left.
    Body(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// Stop inspecting (HTTP/2, an oversized head, a malformed body hyper will refuse).
    PassThrough,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// `n` data bytes left, then the CRLF after them.
    Data(u64),
    /// The CRLF after chunk data.
    DataEnd,
    /// Trailer lines after the last chunk, until an empty one.
    Trailers,
}

/// What the guard found wrong with a head, for the caller's flow record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub method: String,
    pub path: String,
}

/// The framing state machine, separate from I/O so it can be tested.
///
/// It works in place on the bytes the client sent: everything up to the end
/// of the last complete message part is passed on (a poisoned head is edited
/// where it lies), and only an incomplete head at the end is held back until
/// the rest of it arrives.
#[derive(Default)]
pub struct Framer {
    phase: Phase,
    /// An incomplete request head, held back from hyper.
    held: Vec<u8>,
    /// How many bytes of `held` were already searched for the head's end.
    held_scanned: usize,
    /// The current chunk-size or trailer line so far (already passed on).
    line: Vec<u8>,
    started: bool,
}

impl Framer {
    /// Check `input`, which continues the stream after what was passed on
    /// before (any held bytes are its start). Returns how many leading bytes
    /// may go to hyper; the rest is an incomplete head the caller must hold.
    fn scan(&mut self, input: &mut [u8], rejected: &mut Vec<Rejected>) -> usize {
        if !self.started && !input.is_empty() {
            self.started = true;
            if H2_PREFACE.starts_with(&input[..input.len().min(H2_PREFACE.len())]) {
                self.phase = Phase::PassThrough;
            }
        }
        let mut at = 0;
        while at < input.len() {
            let rest = &mut input[at..];
            match self.phase {
                Phase::PassThrough => return input.len(),
                Phase::Head => {
                    // only a head that starts `input` can have been searched before
                    let from = if at == 0 { self.held_scanned.saturating_sub(3) } else { 0 };
                    match find(&rest[from..], b"\r\n\r\n") {
                        Some(i) => {
                            let end = from + i + 4;
                            self.held_scanned = 0;
                            self.phase = check_head(&mut rest[..end], rejected);
                            at += end;
                        }
                        None if rest.len() > MAX_HEAD => {
                            // hyper refuses it (431); nothing left to guard
                            self.phase = Phase::PassThrough;
                            return input.len();
                        }
                        None => {
                            self.held_scanned = rest.len();
                            return at;
                        }
                    }
                }
                Phase::Body(left) => {
                    let (n, left) = consume(left, rest.len());
                    at += n;
                    self.phase = if left == 0 { Phase::Head } else { Phase::Body(left) };
                }
                Phase::Chunked(Chunk::Data(left)) => {
                    let (n, left) = consume(left, rest.len());
                    at += n;
                    self.phase = Phase::Chunked(if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) });
                }
                Phase::Chunked(state) => {
                    // line-based states: Size, DataEnd, Trailers; lines pass on as they come
                    let Some(newline) = rest.iter().position(|b| *b == b'\n') else {
                        self.line.extend_from_slice(rest);
                        if self.line.len() > 4096 {
                            self.phase = Phase::PassThrough;
                        }
                        return input.len();
                    };
                    self.line.extend_from_slice(&rest[..newline]);
                    at += newline + 1;
                    let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
                    let next = match state {
                        Chunk::Size => match parse_chunk_size(line) {
                            Some(0) => Phase::Chunked(Chunk::Trailers),
                            Some(size) => Phase::Chunked(Chunk::Data(size)),
                            None => Phase::PassThrough, // hyper will refuse the body
                        },
                        Chunk::DataEnd if line.is_empty() => Phase::Chunked(Chunk::Size),
                        Chunk::DataEnd => Phase::PassThrough,
                        Chunk::Trailers if line.is_empty() => Phase::Head,
                        Chunk::Trailers => Phase::Chunked(Chunk::Trailers),
                        Chunk::Data(_) => unreachable!("handled above"),
                    };
                    self.phase = next;
                    self.line.clear();
                }
            }
        }
        at
    }

    /// Append `input` to the held head and check it all; returns the bytes
    /// that may go to hyper (the slow path, when a head arrived in pieces).
    fn feed_held(&mut self, input: &[u8], rejected: &mut Vec<Rejected>) -> Vec<u8> {
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(input);
        let passed = self.scan(&mut data, rejected);
        self.held = data.split_off(passed);
        data
    }
}

/// Decide what follows a complete head; poison it if it is ambiguous.
fn check_head(head: &mut [u8], rejected: &mut Vec<Rejected>) -> Phase {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    let (length, chunked, content_length_at) = match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {
            let mut length: Option<u64> = None;
            let mut chunked = false;
            let mut transfer_encoding = false;
            let mut content_length_at = None;
            for h in request.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok());
                    // where the name sits in `head`, to poison it
                    content_length_at = Some(h.name.as_ptr() as usize + h.name.len() - head.as_ptr() as usize);
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    transfer_encoding = true;
                    chunked = h
                        .value
                        .rsplit(|b| *b == b',')
                        .next()
                        .is_some_and(|last| String::from_utf8_lossy(last).trim().eq_ignore_ascii_case("chunked"));
                }
            }
            let poison_at = content_length_at.filter(|_| transfer_encoding);
            if poison_at.is_some() {
                let (method, path) = (request.method.unwrap_or(""), request.path.unwrap_or(""));
                rejected.push(Rejected { method: method.to_string(), path: path.to_string() });
            }
            (length, chunked, poison_at)
        }
        // hyper answers parse errors itself and closes
        _ => return Phase::PassThrough,
    };
    if let Some(at) = content_length_at {
        // "Content-Length:" becomes "Content-Length\0": an invalid header
        // name, so hyper refuses the request with 400 and closes.
        head[at] = 0;
        return Phase::PassThrough;
    }
    if chunked {
        Phase::Chunked(Chunk::Size)
    } else {
        match length {
            Some(n) if n > 0 => Phase::Body(n),
            _ => Phase::Head,
        }
    }
}

/// Of `available` bytes, how many belong to a part with `left` bytes to go,
/// and how many it has left after them.
fn consume(left: u64, available: usize) -> (usize, u64) {
    let n = usize::try_from(left).unwrap_or(usize::MAX).min(available);
    (n, left - n as u64)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.split(|b| *b == b';').next()?;
    let digits = std::str::from_utf8(digits).ok()?.trim();
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// The guard around a client connection's I/O.
pub struct FramingGuard<IO, F> {
    io: IO,
    framer: Framer,
    on_reject: F,
    /// Checked bytes not yet handed to hyper (slow path only).
    ready: Vec<u8>,
    eof: bool,
}

impl<IO, F: FnMut(Rejected)> FramingGuard<IO, F> {
    pub fn new(io: IO, on_reject: F) -> Self {
        FramingGuard { io, framer: Framer::default(), on_reject, ready: Vec::new(), eof: false }
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
            if this.framer.held.is_empty() {
                // Fast path: read straight into hyper's buffer and check in place.
                let start = buf.filled().len();
                ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
                let end = buf.filled().len();
                if end == start {
                    return Poll::Ready(Ok(())); // EOF
                }
                let passed = start + this.framer.scan(&mut buf.filled_mut()[start..], &mut rejected);
                rejected.drain(..).for_each(&mut this.on_reject);
                if passed < end {
                    this.framer.held.extend_from_slice(&buf.filled()[passed..]);
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
                this.ready = this.framer.feed_held(read.filled(), &mut rejected);
                rejected.drain(..).for_each(&mut this.on_reject);
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin, F: Unpin> AsyncWrite for FramingGuard<IO, F> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that sends `input` in pieces of `step` bytes.
    struct Pieces(std::collections::VecDeque<Vec<u8>>);

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

    /// Send `input` in pieces of `step` bytes through the guard; return what
    /// hyper would read (with a small and a large read buffer) and what was rejected.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, Vec<Rejected>) {
        let mut results = [8usize, 8192].map(|buffer| {
            let pieces = Pieces(input.chunks(step).map(<[u8]>::to_vec).collect());
            let mut rejected = Vec::new();
            let mut guard = FramingGuard::new(pieces, |r| rejected.push(r));
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
            drop(guard);
            (out, rejected)
        });
        assert_eq!(results[0], results[1], "the read buffer size changes nothing");
        std::mem::take(&mut results[0])
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

    #[test]
    fn http2_is_passed_through() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        for step in [1, 3, 100] {
            let (out, rejected) = run(preface, step);
            assert_eq!(out, preface);
            assert!(rejected.is_empty());
        }
    }

    #[test]
    fn malformed_chunks_stop_inspection_without_losing_bytes() {
        let stream = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET /next HTTP/1.1\r\n\r\n";
        let (out, _) = run(stream, 3);
        assert_eq!(out, stream);
    }
}
