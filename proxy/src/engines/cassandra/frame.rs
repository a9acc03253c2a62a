//! CQL native protocol framing (v3, v4, v5) and the request and response
//! bodies weir reads.
//!
//! Every message is a frame: a 9-byte header (version with the response bit,
//! flags, stream id, opcode, body length) and a body. Protocol v5 keeps that
//! frame (the spec's "envelope") but, once STARTUP is answered (READY or
//! AUTHENTICATE), wraps it in segments: a 3-byte little-endian header
//! (17-bit payload length, self-contained bit) protected by a CRC24, then the
//! payload and its CRC32. A self-contained segment holds whole frames; a
//! frame longer than a segment's payload limit spans several that are not.
//! Compressed segments (5-byte header) are never seen: weir declines
//! compression (see `server`).

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

pub const HEADER: usize = 9;
/// The spec's limit on a frame body.
pub const MAX_BODY: usize = 256 << 20;
/// Largest segment payload (17 bits).
pub const MAX_PAYLOAD: usize = (128 << 10) - 1;
const SEGMENT_HEADER: usize = 6;
const SEGMENT_CRC: usize = 4;

pub const RESPONSE: u8 = 0x80;
pub const FLAG_COMPRESSED: u8 = 0x01;
const FLAG_TRACING: u8 = 0x02;
const FLAG_CUSTOM_PAYLOAD: u8 = 0x04;
const FLAG_WARNING: u8 = 0x08;

pub const OP_ERROR: u8 = 0x00;
pub const OP_STARTUP: u8 = 0x01;
pub const OP_READY: u8 = 0x02;
pub const OP_AUTHENTICATE: u8 = 0x03;
pub const OP_OPTIONS: u8 = 0x05;
pub const OP_SUPPORTED: u8 = 0x06;
pub const OP_QUERY: u8 = 0x07;
pub const OP_RESULT: u8 = 0x08;
pub const OP_PREPARE: u8 = 0x09;
pub const OP_EXECUTE: u8 = 0x0a;
pub const OP_REGISTER: u8 = 0x0b;
pub const OP_BATCH: u8 = 0x0d;
pub const OP_AUTH_RESPONSE: u8 = 0x0f;

/// Error codes weir answers with.
pub const ERR_PROTOCOL: u32 = 0x000a;
pub const ERR_UNAUTHORIZED: u32 = 0x2100;
pub const ERR_UNPREPARED: u32 = 0x2500;

pub fn opcode_name(op: u8) -> &'static str {
    match op {
        0x00 => "error",
        0x01 => "startup",
        0x02 => "ready",
        0x03 => "authenticate",
        0x05 => "options",
        0x06 => "supported",
        0x07 => "query",
        0x08 => "result",
        0x09 => "prepare",
        0x0a => "execute",
        0x0b => "register",
        0x0c => "event",
        0x0d => "batch",
        0x0e => "auth-challenge",
        0x0f => "auth-response",
        0x10 => "auth-success",
        _ => "unknown",
    }
}

/// Why bytes are not CQL; the connection closes with this in its flow.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameError(pub String);

fn bad<T>(why: impl Into<String>) -> Result<T, FrameError> {
    Err(FrameError(why.into()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Without the response bit.
    pub version: u8,
    pub response: bool,
    pub flags: u8,
    pub stream: i16,
    pub opcode: u8,
    pub length: usize,
}

impl Header {
    pub fn parse(b: &[u8]) -> Header {
        Header {
            version: b[0] & 0x7f,
            response: b[0] & RESPONSE != 0,
            flags: b[1],
            stream: i16::from_be_bytes([b[2], b[3]]),
            opcode: b[4],
            length: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) as usize,
        }
    }
}

/// Splits a byte stream into frames, through segments once v5 framing is on.
#[derive(Default)]
pub struct Deframer {
    /// Bytes as read from the socket.
    pub raw: BytesMut,
    /// v5: segment payloads, the frames they carry.
    envelopes: BytesMut,
}

impl Deframer {
    /// The next whole frame (header included). `modern`: v5 segments.
    /// Frames whose header says something other than `response` are refused,
    /// as are bodies over `max`.
    pub fn next(&mut self, modern: bool, response: bool, max: usize) -> Result<Option<BytesMut>, FrameError> {
        if modern {
            while let Some(segment) = take_segment(&mut self.raw)? {
                self.envelopes.extend_from_slice(&segment);
            }
        }
        let buf = if modern { &mut self.envelopes } else { &mut self.raw };
        if buf.len() < HEADER {
            return Ok(None);
        }
        let header = Header::parse(buf);
        if header.response != response {
            let want = if response { "a response" } else { "a request" };
            return bad(format!("expected {want}, got version byte {:#04x}", buf[0]));
        }
        if header.length > max {
            return bad(format!("frame body of {} bytes is over the {max}-byte limit", header.length));
        }
        // no reservation for the declared length: a header alone must not
        // make weir allocate up to 256 MiB (reads grow the buffer as bytes come)
        let total = HEADER + header.length;
        if buf.len() < total {
            return Ok(None);
        }
        Ok(Some(buf.split_to(total)))
    }

    /// Bytes held that are not a whole frame yet.
    pub fn partial(&self) -> usize {
        self.raw.len() + self.envelopes.len()
    }
}

/// One whole segment's payload, CRCs checked.
fn take_segment(raw: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
    if raw.len() < SEGMENT_HEADER {
        return Ok(None);
    }
    let bits = u32::from_le_bytes([raw[0], raw[1], raw[2], 0]);
    let crc = u32::from_le_bytes([raw[3], raw[4], raw[5], 0]);
    if crc24(bits) != crc {
        return bad("v5 segment header CRC24 mismatch (compressed segments are not accepted)");
    }
    let len = (bits & 0x1ffff) as usize;
    let total = SEGMENT_HEADER + len + SEGMENT_CRC;
    if raw.len() < total {
        return Ok(None);
    }
    let mut segment = raw.split_to(total);
    segment.advance(SEGMENT_HEADER);
    let sent = u32::from_le_bytes(segment[len..].try_into().unwrap());
    segment.truncate(len);
    if crc32(&segment) != sent {
        return bad("v5 segment payload CRC32 mismatch");
    }
    Ok(Some(segment))
}

/// Writes whole frames, in v5 segments once `modern` is set.
#[derive(Default)]
pub struct Framer {
    pub out: Vec<u8>,
    /// v5: frames waiting to share a self-contained segment.
    batch: Vec<u8>,
}

impl Framer {
    pub fn push(&mut self, modern: bool, frame: &[u8]) {
        if !modern {
            self.out.extend_from_slice(frame);
            return;
        }
        if self.batch.len() + frame.len() > MAX_PAYLOAD {
            self.seal();
        }
        if frame.len() > MAX_PAYLOAD {
            // a large frame: in pieces, none self-contained
            for piece in frame.chunks(MAX_PAYLOAD) {
                write_segment(&mut self.out, piece, false);
            }
        } else {
            self.batch.extend_from_slice(frame);
        }
    }

    /// Write every pushed frame (nothing when none is pushed).
    pub async fn flush(&mut self, to: &mut (impl AsyncWrite + Unpin)) -> std::io::Result<()> {
        self.seal();
        if !self.out.is_empty() {
            to.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    #[cfg(test)]
    fn bytes(&mut self) -> &[u8] {
        self.seal();
        &self.out
    }

    fn seal(&mut self) {
        if !self.batch.is_empty() {
            write_segment(&mut self.out, &self.batch, true);
            self.batch.clear();
        }
    }
}

fn write_segment(out: &mut Vec<u8>, payload: &[u8], self_contained: bool) {
    let bits = payload.len() as u32 | (u32::from(self_contained) << 17);
    out.extend_from_slice(&bits.to_le_bytes()[..3]);
    out.extend_from_slice(&crc24(bits).to_le_bytes()[..3]);
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32(payload).to_le_bytes());
}

/// The protocol's CRC24 over the 3 header bytes (little-endian order).
fn crc24(bits: u32) -> u32 {
    let mut crc: u32 = 0x875060;
    for i in 0..3 {
        crc ^= ((bits >> (8 * i)) & 0xff) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x100_0000 != 0 {
                crc ^= 0x197_4f0b;
            }
        }
    }
    crc
}

/// CRC32 (zlib's) seeded with the protocol's four bytes.
fn crc32(payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[0xfa, 0x2d, 0x55, 0xca]);
    h.update(payload);
    h.finalize()
}

/// A response frame from weir: `body` after the header.
pub fn response(version: u8, stream: i16, opcode: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER + body.len());
    f.push(RESPONSE | version);
    f.push(0);
    f.extend_from_slice(&stream.to_be_bytes());
    f.push(opcode);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// An ERROR frame: code, message, then what the code adds (Unprepared: the id).
pub fn error(version: u8, stream: i16, code: u32, message: &str, extra: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(6 + message.len() + extra.len());
    body.put_u32(code);
    body.put_u16(message.len() as u16);
    body.extend_from_slice(message.as_bytes());
    body.extend_from_slice(extra);
    response(version, stream, OP_ERROR, &body)
}

/// The Unprepared error for `id`: drivers prepare the statement again (on
/// this connection, through weir) and retry.
pub fn unprepared(version: u8, stream: i16, id: &[u8]) -> Vec<u8> {
    let mut extra = Vec::with_capacity(2 + id.len());
    extra.put_u16(id.len() as u16);
    extra.extend_from_slice(id);
    error(version, stream, ERR_UNPREPARED, "prepared statement unknown to weir; prepare it again", &extra)
}

/// Reads the protocol's notations from a body.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    fn need(&self, n: usize, what: &str) -> Result<(), FrameError> {
        if self.0.len() < n { bad(format!("body ends inside {what}")) } else { Ok(()) }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FrameError> {
        self.need(n, what)?;
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub fn byte(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1, "a [byte]")?[0])
    }

    pub fn short(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.take(2, "a [short]")?.try_into().unwrap()))
    }

    pub fn int(&mut self) -> Result<i32, FrameError> {
        Ok(i32::from_be_bytes(self.take(4, "an [int]")?.try_into().unwrap()))
    }

    pub fn skip(&mut self, n: usize, what: &str) -> Result<(), FrameError> {
        self.take(n, what).map(|_| ())
    }

    pub fn string(&mut self) -> Result<&'a str, FrameError> {
        let n = self.short()? as usize;
        let b = self.take(n, "a [string]")?;
        std::str::from_utf8(b).or_else(|_| bad("a [string] that is not UTF-8"))
    }

    pub fn long_string(&mut self) -> Result<&'a str, FrameError> {
        let n = self.int()?;
        if n < 0 {
            return bad("a [long string] with a negative length");
        }
        let b = self.take(n as usize, "a [long string]")?;
        std::str::from_utf8(b).or_else(|_| bad("a [long string] that is not UTF-8"))
    }

    pub fn short_bytes(&mut self) -> Result<&'a [u8], FrameError> {
        let n = self.short()? as usize;
        self.take(n, "[short bytes]")
    }

    /// [bytes] / [value]: -1 null, -2 unset (values only).
    pub fn value(&mut self) -> Result<(), FrameError> {
        let n = self.int()?;
        match n {
            -2 | -1 => Ok(()),
            n if n < 0 => bad(format!("a [value] of length {n}")),
            n => self.skip(n as usize, "a [value]"),
        }
    }

    /// A [bytes map] (custom payloads): skipped.
    pub fn skip_bytes_map(&mut self) -> Result<(), FrameError> {
        for _ in 0..self.short()? {
            self.string()?;
            self.value()?;
        }
        Ok(())
    }

    pub fn string_map(&mut self) -> Result<Vec<(&'a str, &'a str)>, FrameError> {
        let n = self.short()?;
        (0..n).map(|_| Ok((self.string()?, self.string()?))).collect()
    }

    pub fn string_multimap(&mut self) -> Result<Vec<(&'a str, Vec<&'a str>)>, FrameError> {
        let n = self.short()?;
        (0..n)
            .map(|_| {
                let key = self.string()?;
                let m = self.short()?;
                Ok((key, (0..m).map(|_| self.string()).collect::<Result<_, _>>()?))
            })
            .collect()
    }
}

/// A request body, as far as policy needs it.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestBody<'a> {
    /// `COMPRESSION` asked for, if any.
    Startup {
        compression: Option<&'a str>,
    },
    /// QUERY and PREPARE; `keyspace`: v5's per-request keyspace.
    Query {
        query: &'a str,
        keyspace: Option<&'a str>,
    },
    Prepare {
        query: &'a str,
        keyspace: Option<&'a str>,
    },
    Execute {
        id: &'a [u8],
    },
    Batch {
        entries: Vec<BatchEntry<'a>>,
        keyspace: Option<&'a str>,
    },
    /// OPTIONS, REGISTER, AUTH_RESPONSE: nothing policy reads.
    Handshake,
}

#[derive(Debug, PartialEq, Eq)]
pub enum BatchEntry<'a> {
    Query(&'a str),
    Prepared(&'a [u8]),
}

// query parameter flags (Cassandra's QueryOptions.Codec.Flag, bit = ordinal)
const VALUES: u32 = 0x01;
// 0x02, skip metadata, carries nothing
const PAGE_SIZE: u32 = 0x04;
const PAGING_STATE: u32 = 0x08;
const SERIAL_CONSISTENCY: u32 = 0x10;
const TIMESTAMP: u32 = 0x20;
const NAMES_FOR_VALUES: u32 = 0x40;
const WITH_KEYSPACE: u32 = 0x80;
const NOW_IN_SECONDS: u32 = 0x100;
/// Every flag Cassandra 5.0 reads; v5 carries them in an [int].
const KNOWN_FLAGS: u32 = 0x1ff;

/// Parse a request body of protocol `version` (`flags` from its header).
pub fn request_body(version: u8, flags: u8, opcode: u8, body: &[u8]) -> Result<RequestBody<'_>, FrameError> {
    let mut r = Reader(body);
    if flags & FLAG_COMPRESSED != 0 {
        return bad("a compressed frame, though no compression was agreed");
    }
    if flags & FLAG_CUSTOM_PAYLOAD != 0 {
        r.skip_bytes_map()?;
    }
    let parsed = match opcode {
        OP_STARTUP => {
            let options = r.string_map()?;
            let compression = options.iter().find(|(k, _)| k.eq_ignore_ascii_case("COMPRESSION")).map(|(_, v)| *v);
            RequestBody::Startup { compression }
        }
        OP_OPTIONS | OP_REGISTER | OP_AUTH_RESPONSE => RequestBody::Handshake,
        OP_QUERY => {
            let query = r.long_string()?;
            let keyspace = query_options(version, &mut r, false)?;
            RequestBody::Query { query, keyspace }
        }
        OP_PREPARE => {
            let query = r.long_string()?;
            let mut keyspace = None;
            // v5: Cassandra always reads the flags (a body without them is
            // broken, not a PREPARE without keyspace)
            if version >= 5 {
                let flags = r.int()? as u32;
                if flags & 0x01 != 0 {
                    keyspace = Some(r.string()?);
                }
            }
            RequestBody::Prepare { query, keyspace }
        }
        OP_EXECUTE => RequestBody::Execute { id: r.short_bytes()? },
        OP_BATCH => {
            let _kind = r.byte()?;
            let n = r.short()?;
            let mut entries = Vec::with_capacity(n as usize);
            for _ in 0..n {
                entries.push(match r.byte()? {
                    0 => BatchEntry::Query(r.long_string()?),
                    1 => BatchEntry::Prepared(r.short_bytes()?),
                    k => return bad(format!("batch entry kind {k}")),
                });
                for _ in 0..r.short()? {
                    r.value()?;
                }
            }
            let keyspace = query_options(version, &mut r, true)?;
            RequestBody::Batch { entries, keyspace }
        }
        op => return bad(format!("opcode {op:#04x} ({}) is not a request", opcode_name(op))),
    };
    Ok(parsed)
}

/// Read QUERY's (or BATCH's) options exactly as Cassandra's
/// `QueryOptions.Codec.decode` does, in every version: the flags are a
/// [byte] before v5 and an [int] from v5, and Cassandra 4 and 5 honour
/// every flag the [byte] can carry, `with keyspace` (0x80) included, in v3
/// and v4 too. Returns that keyspace, which decides unqualified names.
fn query_options<'a>(version: u8, r: &mut Reader<'a>, batch: bool) -> Result<Option<&'a str>, FrameError> {
    let _consistency = r.short()?;
    let flags = if version >= 5 { r.int()? as u32 } else { u32::from(r.byte()?) };
    if flags & !KNOWN_FLAGS != 0 {
        return bad(format!(
            "query flags {flags:#x}: weir does not know what Cassandra reads for {:#x}",
            flags & !KNOWN_FLAGS
        ));
    }
    if batch && flags & NAMES_FOR_VALUES != 0 {
        // Cassandra refuses named values in a batch too
        return bad("named values in a batch");
    }
    if flags & VALUES != 0 {
        for _ in 0..r.short()? {
            if flags & NAMES_FOR_VALUES != 0 {
                r.string()?;
            }
            r.value()?;
        }
    }
    // then, in this order, what each flag adds
    if flags & PAGE_SIZE != 0 {
        r.int()?;
    }
    if flags & PAGING_STATE != 0 {
        r.value()?;
    }
    if flags & SERIAL_CONSISTENCY != 0 {
        r.short()?;
    }
    if flags & TIMESTAMP != 0 {
        r.skip(8, "a timestamp")?;
    }
    let keyspace = if flags & WITH_KEYSPACE != 0 { Some(r.string()?) } else { None };
    if flags & NOW_IN_SECONDS != 0 {
        r.int()?;
    }
    Ok(keyspace)
}

/// What a response says, as far as weir follows it.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseBody<'a> {
    Error {
        code: u32,
    },
    SetKeyspace(&'a str),
    Prepared {
        id: &'a [u8],
    },
    /// Another RESULT kind.
    Result(&'static str),
    Other,
}

pub fn response_body(flags: u8, opcode: u8, body: &[u8]) -> Result<ResponseBody<'_>, FrameError> {
    let mut r = Reader(body);
    if flags & FLAG_COMPRESSED != 0 {
        return bad("a compressed frame, though no compression was agreed");
    }
    // what may come before the body, in this order
    if flags & FLAG_TRACING != 0 {
        r.skip(16, "a tracing id")?;
    }
    if flags & FLAG_WARNING != 0 {
        for _ in 0..r.short()? {
            r.string()?;
        }
    }
    if flags & FLAG_CUSTOM_PAYLOAD != 0 {
        r.skip_bytes_map()?;
    }
    Ok(match opcode {
        OP_ERROR => ResponseBody::Error { code: r.int()? as u32 },
        OP_RESULT => match r.int()? {
            1 => ResponseBody::Result("void"),
            2 => ResponseBody::Result("rows"),
            3 => ResponseBody::SetKeyspace(r.string()?),
            4 => ResponseBody::Prepared { id: r.short_bytes()? },
            5 => ResponseBody::Result("schema-change"),
            _ => ResponseBody::Result("unknown"),
        },
        _ => ResponseBody::Other,
    })
}

/// SUPPORTED with an empty `COMPRESSION` list, so drivers connect
/// uncompressed (the key stays: the Python driver requires it).
/// `None`: a frame with flags (a body prefix) is left as it is.
pub fn supported_without_compression(frame: &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
    let header = Header::parse(frame);
    if header.flags != 0 {
        return Ok(None);
    }
    let options = Reader(&frame[HEADER..]).string_multimap()?;
    let mut body = Vec::new();
    body.put_u16(options.len() as u16);
    for (key, values) in &options {
        put_string(&mut body, key);
        let values: &[&str] = if key.eq_ignore_ascii_case("COMPRESSION") { &[] } else { values };
        body.put_u16(values.len() as u16);
        for v in values {
            put_string(&mut body, v);
        }
    }
    Ok(Some(response(header.version, header.stream, OP_SUPPORTED, &body)))
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.put_u16(s.len() as u16);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests;
