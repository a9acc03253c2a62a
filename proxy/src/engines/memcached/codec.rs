//! memcached framing: where a request or a reply ends, what a request names.
//!
//! Text protocol: a command line ended by `\n` (normally `\r\n`), then a data
//! block of the declared length for storage commands (`set`, `cas`, `ms`...).
//! Binary protocol: a 24-byte header whose body length frames the packet.
//! The first byte of a connection decides which (>= 0x80: binary), as
//! memcached itself does.

/// Longest text command line: room for a multi-get of ~250 long keys.
pub const MAX_LINE: usize = 64 << 10;
/// Largest value or binary body (memcached's `-I` item size tops out at 1 GiB;
/// a node proxy buffers one request, so it stops well below that).
pub const MAX_VALUE: usize = 128 << 20;
const HEADER: usize = 24;
pub const REQUEST_MAGIC: u8 = 0x80;
pub const RESPONSE_MAGIC: u8 = 0x81;
/// Binary status weir answers a refusal with: memcached's "authentication
/// error" (what libmemcached reports as an auth failure).
pub const STATUS_DENIED: u16 = 0x0020;
pub const TEXT_DENIED: &[u8] = b"CLIENT_ERROR access denied\r\n";
const DENIED_BODY: &[u8] = b"access denied";
pub const OP_NOOP: u8 = 0x0a;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Text,
    Binary,
}

impl Protocol {
    /// As memcached negotiates: binary only for the request magic.
    pub fn of_first_byte(b: u8) -> Protocol {
        if b == REQUEST_MAGIC { Protocol::Binary } else { Protocol::Text }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Text => "text",
            Protocol::Binary => "binary",
        }
    }

    /// How weir's refusal shows in a flow record, as a server reply would.
    pub fn refusal_summary(self) -> &'static str {
        match self {
            Protocol::Text => "CLIENT_ERROR",
            Protocol::Binary => "0x0020",
        }
    }
}

/// What the server sends back for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// One reply: a text line (with a data block after `VA`), or one packet.
    One,
    /// Text retrieval: `VALUE` blocks until `END` (or an error line).
    Values,
    /// Text `stats` and crawler dumps: lines until `END` (or an error,
    /// `RESET`, `OK`, `BUSY`); binary `stat`: packets until one without a key.
    Lines,
    /// A text `mn` or binary `noop`: replies to earlier quiet requests may
    /// come first; this one ends at `MN` / the noop packet.
    Flush,
    /// A quiet request (`noreply`, meta `q`, binary `...q` opcodes): a reply
    /// comes only on a miss/error, so weir does not wait for one.
    Quiet,
    /// `quit`: the server closes the connection.
    Close,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub protocol: Protocol,
    /// The command word, or the binary opcode's name.
    pub command: String,
    pub opcode: Option<u8>,
    pub keys: Vec<Vec<u8>>,
    /// Bytes of the request on the wire.
    pub len: usize,
    pub reply: Reply,
    /// Binary: the request's opaque, echoed in its reply.
    pub opaque: u32,
    /// The commands the policy must allow, when not just `command`: a meta
    /// request whose flags make it do what other commands do (`mg` with
    /// `T` also touches, `ma` with mode `D` decrements).
    pub judge_as: Vec<&'static str>,
}

impl Request {
    /// The refusal the client sees, or `None` when it expects no reply at
    /// all (text `noreply`: memcached sends nothing back either).
    pub fn refusal(&self) -> Option<Vec<u8>> {
        match self.protocol {
            Protocol::Text if self.reply == Reply::Quiet && !is_meta(&self.command) => None,
            Protocol::Text => Some(TEXT_DENIED.to_vec()),
            Protocol::Binary => Some(binary_error(self.opcode.unwrap_or_default(), self.opaque)),
        }
    }

    pub fn keys_lossy(&self) -> Vec<String> {
        self.keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect()
    }
}

fn is_meta(command: &str) -> bool {
    matches!(command, "mg" | "ms" | "md" | "ma" | "mn" | "me")
}

/// A binary reply packet with weir's refusal status and "access denied".
fn binary_error(opcode: u8, opaque: u32) -> Vec<u8> {
    binary_status(opcode, opaque, STATUS_DENIED, DENIED_BODY)
}

/// A binary reply packet with `status` and `body` (an error message).
fn binary_status(opcode: u8, opaque: u32, status: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&[RESPONSE_MAGIC, opcode, 0, 0, 0, 0]);
    out.extend_from_slice(&status.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&opaque.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(body);
    out
}

/// A barrier weir sends after quiet requests so a refusal lands after their
/// replies: the server answers it, weir swallows the answer.
pub fn barrier(protocol: Protocol) -> Vec<u8> {
    match protocol {
        Protocol::Text => b"mn\r\n".to_vec(),
        Protocol::Binary => {
            let mut p = vec![REQUEST_MAGIC, OP_NOOP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            p.extend_from_slice(&BARRIER_OPAQUE.to_be_bytes());
            p.extend_from_slice(&[0; 8]);
            p
        }
    }
}

/// Opaque of weir's own binary barrier.
pub const BARRIER_OPAQUE: u32 = 0x5745_4952; // "WEIR"

#[derive(Debug, PartialEq, Eq)]
pub struct FrameError(pub String);

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(why: impl Into<String>) -> FrameError {
    FrameError(why.into())
}

/// What the client sent next.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A request memcached will execute as weir read it: judge, then forward.
    Request(Request),
    /// Bytes memcached would refuse: weir answers them as memcached would
    /// and forwards none of them.
    Refused(Refused),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub protocol: Protocol,
    pub command: String,
    /// Bytes of the client's stream this covers: the line, plus the data
    /// block memcached would swallow with its error.
    pub len: usize,
    /// memcached's answer (empty for a `noreply` request: none).
    pub answer: Vec<u8>,
    /// memcached closes the connection here, or weir does not trust what
    /// follows: weir closes it after the answer.
    pub close: bool,
    pub why: String,
}

/// The first request in `buf`: `Ok(None)` until all of it has arrived; an
/// error when weir closes the connection without an answer (as memcached
/// would, or where buffering more is not worth it).
pub fn parse_request(protocol: Protocol, buf: &[u8]) -> Result<Option<Frame>, FrameError> {
    match protocol {
        Protocol::Text => text::parse(buf),
        Protocol::Binary => parse_binary_request(buf),
    }
}

fn reply_number(token: Option<&&[u8]>, what: &str) -> Result<usize, FrameError> {
    let token = token.ok_or_else(|| bad(format!("missing {what}")))?;
    std::str::from_utf8(token)
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .ok_or_else(|| bad(format!("{what} {:?} is not a number", String::from_utf8_lossy(token))))
}

/// Binary opcode names (memcached's protocol_binary.h).
pub fn opcode_name(op: u8) -> String {
    let name = match op {
        0x00 => "get",
        0x01 => "set",
        0x02 => "add",
        0x03 => "replace",
        0x04 => "delete",
        0x05 => "increment",
        0x06 => "decrement",
        0x07 => "quit",
        0x08 => "flush",
        0x09 => "getq",
        0x0a => "noop",
        0x0b => "version",
        0x0c => "getk",
        0x0d => "getkq",
        0x0e => "append",
        0x0f => "prepend",
        0x10 => "stat",
        0x11 => "setq",
        0x12 => "addq",
        0x13 => "replaceq",
        0x14 => "deleteq",
        0x15 => "incrementq",
        0x16 => "decrementq",
        0x17 => "quitq",
        0x18 => "flushq",
        0x19 => "appendq",
        0x1a => "prependq",
        0x1b => "verbosity",
        0x1c => "touch",
        0x1d => "gat",
        0x1e => "gatq",
        0x20 => "sasl-list-mechs",
        0x21 => "sasl-auth",
        0x22 => "sasl-step",
        0x23 => "gatk",
        0x24 => "gatkq",
        other => return format!("opcode-{other}"),
    };
    name.to_string()
}

fn binary_quiet(op: u8) -> bool {
    matches!(op, 0x09 | 0x0d | 0x11..=0x16 | 0x18..=0x1a | 0x1e | 0x24)
}

/// `(opcode, key length, extras length, body length, opaque)` of a packet header.
type BinaryHeader = (u8, usize, usize, usize, u32);

/// A packet header, checked for consistency.
fn binary_header(buf: &[u8], magic: u8) -> Result<Option<BinaryHeader>, FrameError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    if buf[0] != magic {
        return Err(bad(format!("binary packet magic {:#04x}, expected {magic:#04x}", buf[0])));
    }
    let key_len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let extras = buf[4] as usize;
    let body = u32::from_be_bytes(buf[8..12].try_into().unwrap()) as usize;
    if body > MAX_VALUE {
        return Err(bad(format!("a {body}-byte binary body (weir relays at most {MAX_VALUE})")));
    }
    if key_len + extras > body {
        return Err(bad(format!("binary key ({key_len}) and extras ({extras}) longer than the body ({body})")));
    }
    Ok(Some((buf[1], key_len, extras, body, u32::from_be_bytes(buf[12..16].try_into().unwrap()))))
}

/// memcached's binary statuses for malformed requests.
const STATUS_EINVAL: u16 = 0x0004;
const STATUS_UNKNOWN_COMMAND: u16 = 0x0081;

/// How memcached 1.6.18 (`dispatch_bin_command`) checks a packet's key,
/// extras and body lengths per opcode.
enum BinaryShape {
    /// The lengths it accepts; the body is the extras, the key and the value.
    Valid,
    /// A protocol error: memcached answers EINVAL and closes.
    Invalid,
    /// memcached accepts the header but reads only the extras and the key
    /// (stat, touch, gat): the rest of the body would be read as new
    /// packets. Weir refuses and closes.
    TrailingBody,
    /// An opcode memcached does not know: it answers "unknown command".
    Unknown,
}

fn binary_shape(op: u8, key: usize, extras: usize, body: usize) -> BinaryShape {
    use BinaryShape::*;
    let check = |ok: bool| if ok { Valid } else { Invalid };
    match op {
        // version, noop, quit, quitq, sasl-list-mechs
        0x0b | 0x0a | 0x07 | 0x17 | 0x20 => check(extras == 0 && key == 0 && body == 0),
        // flush, flushq
        0x08 | 0x18 => check(key == 0 && body == extras && (extras == 0 || extras == 4)),
        // set, add, replace and their quiet forms
        0x01..=0x03 | 0x11..=0x13 => check(extras == 8 && key != 0 && body >= key + 8),
        // get, getq, getk, getkq
        0x00 | 0x09 | 0x0c | 0x0d => check(extras == 0 && body == key && key > 0),
        // delete, deleteq
        0x04 | 0x14 => check(key > 0 && extras == 0 && body == key),
        // increment, decrement and their quiet forms
        0x05 | 0x06 | 0x15 | 0x16 => check(key > 0 && extras == 20 && body == key + 20),
        // append, prepend and their quiet forms
        0x0e | 0x0f | 0x19 | 0x1a => check(key > 0 && extras == 0),
        // sasl-auth, sasl-step
        0x21 | 0x22 => check(extras == 0 && key != 0),
        0x10 if extras != 0 => Invalid,
        0x10 if body != key => TrailingBody,
        0x10 => Valid,
        // touch, gat, gatq, gatk, gatkq
        0x1c | 0x1d | 0x1e | 0x23 | 0x24 if !(extras == 4 && key != 0) => Invalid,
        0x1c | 0x1d | 0x1e | 0x23 | 0x24 if body != key + 4 => TrailingBody,
        0x1c | 0x1d | 0x1e | 0x23 | 0x24 => Valid,
        _ => Unknown,
    }
}

fn parse_binary_request(buf: &[u8]) -> Result<Option<Frame>, FrameError> {
    if buf.len() >= HEADER && buf[0] == REQUEST_MAGIC {
        let (key_len, extras) = (u16::from_be_bytes([buf[2], buf[3]]) as usize, buf[4] as usize);
        let body = u32::from_be_bytes(buf[8..12].try_into().unwrap()) as usize;
        if key_len + extras > body {
            // memcached answers "unknown command" and closes
            let opaque = u32::from_be_bytes(buf[12..16].try_into().unwrap());
            return Ok(Some(Frame::Refused(Refused {
                protocol: Protocol::Binary,
                command: opcode_name(buf[1]),
                len: HEADER,
                answer: binary_status(buf[1], opaque, STATUS_UNKNOWN_COMMAND, b"Unknown command"),
                close: true,
                why: format!("binary key ({key_len}) and extras ({extras}) longer than the body ({body})"),
            })));
        }
    }
    let Some((op, key_len, extras, body, opaque)) = binary_header(buf, REQUEST_MAGIC)? else { return Ok(None) };
    let refused = |status: u16, message: &str, close: bool, why: String| {
        Ok(Some(Frame::Refused(Refused {
            protocol: Protocol::Binary,
            command: opcode_name(op),
            len: HEADER + body,
            answer: binary_status(op, opaque, status, message.as_bytes()),
            close,
            why,
        })))
    };
    if key_len > text::KEY_MAX {
        let why = format!("a {key_len}-byte binary key (memcached takes at most 250 and closes)");
        return refused(STATUS_EINVAL, "Invalid arguments", true, why);
    }
    let len = HEADER + body;
    if buf.len() < len {
        return Ok(None);
    }
    match binary_shape(op, key_len, extras, body) {
        BinaryShape::Valid => {}
        BinaryShape::Invalid => {
            let why = format!(
                "binary {} with key {key_len}, extras {extras}, body {body} bytes: memcached refuses these lengths and closes",
                opcode_name(op)
            );
            return refused(STATUS_EINVAL, "Invalid arguments", true, why);
        }
        BinaryShape::TrailingBody => {
            let why = format!(
                "binary {} with a body longer than its extras and key: memcached would read the rest as new requests",
                opcode_name(op)
            );
            return refused(STATUS_EINVAL, "Invalid arguments", true, why);
        }
        BinaryShape::Unknown => {
            // memcached swallows the body counted from after the key and
            // extras: with either, it would eat the next packet's first bytes
            let close = key_len + extras > 0;
            return refused(
                STATUS_UNKNOWN_COMMAND,
                "Unknown command",
                close,
                format!("unknown binary opcode {op:#04x}"),
            );
        }
    }
    let key = &buf[HEADER + extras..HEADER + extras + key_len];
    let reply = match op {
        0x07 => Reply::Close,
        0x17 => Reply::Close,
        0x10 => Reply::Lines,
        OP_NOOP => Reply::Flush,
        op if binary_quiet(op) => Reply::Quiet,
        _ => Reply::One,
    };
    let keys = if key_len > 0 { vec![key.to_vec()] } else { Vec::new() };
    Ok(Some(Frame::Request(Request {
        protocol: Protocol::Binary,
        command: opcode_name(op),
        opcode: Some(op),
        keys,
        len,
        reply,
        opaque,
        judge_as: Vec::new(),
    })))
}

/// One reply unit at the start of `buf`.
#[derive(Debug, PartialEq, Eq)]
pub struct ReplyUnit {
    pub len: usize,
    /// Text: the first word (`STORED`, `VALUE`, `END`, `HD`, `MN`, ...).
    /// Binary: the status as `0x0001`.
    pub summary: String,
    /// Binary: opcode, opaque and whether it had a key (stat terminator).
    pub opcode: u8,
    pub opaque: u32,
    pub has_key: bool,
}

/// The first reply unit in `buf`: one text line (plus the data block after
/// `VALUE` or `VA`), or one binary packet.
pub fn parse_reply_unit(protocol: Protocol, buf: &[u8]) -> Result<Option<ReplyUnit>, FrameError> {
    match protocol {
        Protocol::Text => {
            let Some((content, line_len)) = text::line(buf, MAX_LINE)? else { return Ok(None) };
            // no token vector per reply: only VALUE and VA need a later word
            let mut tokens = content.split(|&b| b == b' ').filter(|t| !t.is_empty());
            let word = tokens.next().unwrap_or_default();
            let data = match word {
                b"VALUE" => Some(reply_number(tokens.nth(2).as_ref(), "VALUE length")?),
                b"VA" => Some(reply_number(tokens.next().as_ref(), "VA length")?),
                _ => None,
            };
            let mut len = line_len;
            if let Some(data) = data {
                if data > MAX_VALUE {
                    return Err(bad(format!("a {data}-byte value in a reply")));
                }
                len += data + 2;
                if buf.len() < len {
                    return Ok(None);
                }
            }
            let summary = String::from_utf8_lossy(word).into_owned();
            Ok(Some(ReplyUnit { len, summary, opcode: 0, opaque: 0, has_key: false }))
        }
        Protocol::Binary => {
            let Some((op, key_len, _, body, opaque)) = binary_header(buf, RESPONSE_MAGIC)? else { return Ok(None) };
            if buf.len() < HEADER + body {
                return Ok(None);
            }
            let status = u16::from_be_bytes([buf[6], buf[7]]);
            Ok(Some(ReplyUnit {
                len: HEADER + body,
                summary: format!("{status:#06x}"),
                opcode: op,
                opaque,
                has_key: key_len > 0,
            }))
        }
    }
}

/// Whether `unit` ends the reply to a request expecting `reply`.
pub fn ends_reply(protocol: Protocol, reply: Reply, unit: &ReplyUnit) -> bool {
    let word = unit.summary.as_str();
    let error = matches!(word, "ERROR" | "CLIENT_ERROR" | "SERVER_ERROR");
    match (protocol, reply) {
        (Protocol::Text, Reply::Values) => word != "VALUE",
        (Protocol::Text, Reply::Lines) => matches!(word, "END" | "RESET" | "OK" | "BUSY") || error,
        (Protocol::Binary, Reply::Lines) => !unit.has_key || unit.summary != "0x0000",
        _ => true,
    }
}

/// Whether `unit` is the reply of the pending request (and not a late reply
/// of a quiet request before it). Text replies carry no id: only `mn`'s
/// `MN` can be told apart. Binary replies echo the opcode and opaque.
pub fn belongs_to(protocol: Protocol, reply: Reply, opcode: u8, opaque: u32, unit: &ReplyUnit) -> bool {
    match protocol {
        Protocol::Text => reply != Reply::Flush || unit.summary == "MN",
        Protocol::Binary => unit.opcode == opcode && unit.opaque == opaque,
    }
}

mod text;

#[cfg(test)]
mod tests;
