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
    pub fn of_first_byte(b: u8) -> Protocol {
        if b >= 0x80 { Protocol::Binary } else { Protocol::Text }
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

/// A binary reply packet with `status` and the "access denied" body.
fn binary_error(opcode: u8, opaque: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + DENIED_BODY.len());
    out.extend_from_slice(&[RESPONSE_MAGIC, opcode, 0, 0, 0, 0]);
    out.extend_from_slice(&STATUS_DENIED.to_be_bytes());
    out.extend_from_slice(&(DENIED_BODY.len() as u32).to_be_bytes());
    out.extend_from_slice(&opaque.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(DENIED_BODY);
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

/// The first request in `buf`: `Ok(None)` until all of it has arrived.
pub fn parse_request(protocol: Protocol, buf: &[u8]) -> Result<Option<Request>, FrameError> {
    match protocol {
        Protocol::Text => parse_text_request(buf),
        Protocol::Binary => parse_binary_request(buf),
    }
}

/// One text line: `(its content without \r\n, bytes including the \n)`.
fn line(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    match buf.iter().take(max + 1).position(|&b| b == b'\n') {
        Some(nl) => {
            let content = &buf[..nl];
            Ok(Some((content.strip_suffix(b"\r").unwrap_or(content), nl + 1)))
        }
        None if buf.len() > max => Err(bad(format!("a text line longer than {max} bytes"))),
        None => Ok(None),
    }
}

fn number(token: Option<&&[u8]>, what: &str) -> Result<usize, FrameError> {
    let token = token.ok_or_else(|| bad(format!("missing {what}")))?;
    std::str::from_utf8(token)
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .ok_or_else(|| bad(format!("{what} {:?} is not a number", String::from_utf8_lossy(token))))
}

fn parse_text_request(buf: &[u8]) -> Result<Option<Request>, FrameError> {
    let Some((content, line_len)) = line(buf, MAX_LINE)? else { return Ok(None) };
    let tokens: Vec<&[u8]> = content.split(|&b| b == b' ').filter(|t| !t.is_empty()).collect();
    let command = tokens.first().map(|c| String::from_utf8_lossy(c).into_owned()).unwrap_or_default();
    let noreply = tokens.len() > 1 && tokens.last() == Some(&&b"noreply"[..]);
    let meta_quiet = tokens.iter().skip(2).any(|t| *t == b"q");
    let key = |i: usize| tokens.get(i).map(|k| vec![k.to_vec()]).unwrap_or_default();
    let quiet_or = |reply| if noreply { Reply::Quiet } else { reply };
    let (keys, reply, data) = match command.as_str() {
        "set" | "add" | "replace" | "append" | "prepend" | "cas" => {
            (key(1), quiet_or(Reply::One), Some(number(tokens.get(4), "data length")?))
        }
        "get" | "gets" => (tokens[1..].iter().map(|k| k.to_vec()).collect(), Reply::Values, None),
        "gat" | "gats" => (tokens.iter().skip(2).map(|k| k.to_vec()).collect(), Reply::Values, None),
        "delete" | "incr" | "decr" | "touch" => (key(1), quiet_or(Reply::One), None),
        "mg" | "md" | "ma" | "me" => (key(1), if meta_quiet { Reply::Quiet } else { Reply::One }, None),
        "ms" => {
            (key(1), if meta_quiet { Reply::Quiet } else { Reply::One }, Some(number(tokens.get(2), "data length")?))
        }
        "mn" => (Vec::new(), Reply::Flush, None),
        "stats" => {
            let single = matches!(tokens.get(1).map(|t| &t[..]), Some(b"reset") | Some(b"detail"))
                && tokens.get(2).map(|t| &t[..]) != Some(b"dump");
            (Vec::new(), if single { Reply::One } else { Reply::Lines }, None)
        }
        "lru_crawler" => {
            let dump = matches!(tokens.get(1).map(|t| &t[..]), Some(b"metadump") | Some(b"mgdump"));
            (Vec::new(), if dump { Reply::Lines } else { quiet_or(Reply::One) }, None)
        }
        "quit" | "shutdown" => (Vec::new(), Reply::Close, None),
        _ => (Vec::new(), quiet_or(Reply::One), None),
    };
    let mut len = line_len;
    if let Some(data) = data {
        if data > MAX_VALUE {
            return Err(bad(format!("a {data}-byte value (weir relays at most {MAX_VALUE})")));
        }
        len += data + 2;
        if buf.len() < len {
            return Ok(None);
        }
        if &buf[len - 2..len] != b"\r\n" {
            return Err(bad("the data block does not end with \\r\\n where its length says (bad data chunk)"));
        }
    }
    Ok(Some(Request { protocol: Protocol::Text, command, opcode: None, keys, len, reply, opaque: 0 }))
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

fn parse_binary_request(buf: &[u8]) -> Result<Option<Request>, FrameError> {
    let Some((op, key_len, extras, body, opaque)) = binary_header(buf, REQUEST_MAGIC)? else { return Ok(None) };
    let len = HEADER + body;
    if buf.len() < len {
        return Ok(None);
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
    Ok(Some(Request {
        protocol: Protocol::Binary,
        command: opcode_name(op),
        opcode: Some(op),
        keys,
        len,
        reply,
        opaque,
    }))
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
            let Some((content, line_len)) = line(buf, MAX_LINE)? else { return Ok(None) };
            // no token vector per reply: only VALUE and VA need a later word
            let mut tokens = content.split(|&b| b == b' ').filter(|t| !t.is_empty());
            let word = tokens.next().unwrap_or_default();
            let data = match word {
                b"VALUE" => Some(number(tokens.nth(2).as_ref(), "VALUE length")?),
                b"VA" => Some(number(tokens.next().as_ref(), "VA length")?),
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

#[cfg(test)]
mod tests;
