//! The text and meta protocols, read exactly as memcached 1.6.18 reads them
//! (`proto_text.c`): its line splitting, its tokenizer (spaces only, 23
//! tokens and the rest), its checks per command, its number parsing
//! (`safe_strtol` and friends over glibc's `strtol`) and its base64 decoder.
//!
//! Weir forwards a request only when memcached will execute it as weir read
//! it. A request memcached refuses is answered by weir with memcached's own
//! error and never forwarded; the bytes after it are then read the way
//! memcached reads them (a refused `set` line leaves its data block to be
//! read as commands, a refused `ms` swallows it), so each of them is judged
//! too. Input whose meaning rests on a C library detail (a number memcached
//! reads leniently or truncates, a NUL byte) is refused and the connection
//! closed: weir does not guess.

use super::{Frame, FrameError, MAX_LINE, MAX_VALUE, Protocol, Refused, Reply, Request, bad};

/// memcached's `KEY_MAX_LENGTH`.
pub const KEY_MAX: usize = 250;
/// memcached closes a connection whose buffered line passes 2048 bytes
/// without a `\n`, unless it starts as a multi-get (`get `, `gets `).
pub const MAX_COMMAND_LINE: usize = 2048;
/// memcached's tokenizer keeps 23 tokens; the rest of the line is one more.
const MAX_TOKENS: usize = 23;
/// Meta commands refuse more than 19 tokens (`ntokens > 20` with the
/// tokenizer's terminal token).
const META_MAX_TOKENS: usize = 19;
const MAX_OPAQUE: usize = 32;

const BAD_FORMAT: &str = "CLIENT_ERROR bad command line format";

/// The first text request in `buf`: `Ok(None)` until all of it is here.
pub(super) fn parse(buf: &[u8]) -> Result<Option<Frame>, FrameError> {
    let limit = if starts_multi_get(buf) { MAX_LINE } else { MAX_COMMAND_LINE };
    let Some((content, line_len)) = line(buf, limit)? else { return Ok(None) };
    if content.contains(&0) {
        // memcached stops reading the line at a NUL (strlen); weir does not
        // forward bytes the server reads as something else
        return Ok(Some(refused("", line_len, BAD_FORMAT, false, true, "a NUL byte in the command line")));
    }
    let tokens: Vec<&[u8]> = content.split(|&b| b == b' ').filter(|t| !t.is_empty()).collect();
    Ok(Line { tokens: &tokens, line_len, buf }.parse())
}

/// memcached's exception to its line limit (`try_read_command_ascii`).
fn starts_multi_get(buf: &[u8]) -> bool {
    let spaces = buf.iter().take_while(|&&b| b == b' ').count();
    let rest = &buf[spaces..];
    spaces <= 100 && (rest.starts_with(b"get ") || rest.starts_with(b"gets "))
}

/// One line: `(its content, bytes including the \n)`. memcached strips one
/// `\r` before the `\n`, and only from a line longer than that `\r`.
pub(super) fn line(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    match buf.iter().take(max + 1).position(|&b| b == b'\n') {
        Some(nl) => {
            let content = &buf[..nl];
            let content = if content.len() > 1 { content.strip_suffix(b"\r").unwrap_or(content) } else { content };
            Ok(Some((content, nl + 1)))
        }
        None if buf.len() > max => {
            Err(bad(format!("a command line longer than {max} bytes (memcached closes such a connection too)")))
        }
        None => Ok(None),
    }
}

fn refused(command: &str, len: usize, answer: &str, noreply: bool, close: bool, why: &str) -> Frame {
    Frame::Refused(Refused {
        protocol: Protocol::Text,
        command: command.to_string(),
        len,
        answer: if noreply || answer.is_empty() { Vec::new() } else { format!("{answer}\r\n").into_bytes() },
        close,
        why: why.to_string(),
    })
}

struct Line<'a> {
    /// Every token of the line (get-family commands read them all).
    tokens: &'a [&'a [u8]],
    line_len: usize,
    buf: &'a [u8],
}

impl<'a> Line<'a> {
    /// The tokens memcached's tokenizer hands the other commands: 23 at most.
    fn capped(&self) -> &'a [&'a [u8]] {
        &self.tokens[..self.tokens.len().min(MAX_TOKENS)]
    }

    /// memcached's `set_noreply_maybe`: the last (capped) token is `noreply`.
    fn noreply(&self) -> bool {
        self.capped().len() > 1 && self.capped().last() == Some(&&b"noreply"[..])
    }

    fn command(&self) -> String {
        String::from_utf8_lossy(self.tokens.first().copied().unwrap_or_default()).into_owned()
    }

    fn refuse(&self, answer: &str, noreply: bool, why: &str) -> Option<Frame> {
        Some(refused(&self.command(), self.line_len, answer, noreply, false, why))
    }

    /// memcached's "ERROR": a command it does not know, or with a token
    /// count it does not take.
    fn error(&self) -> Option<Frame> {
        self.refuse("ERROR", false, "memcached does not know this command or its number of arguments")
    }

    fn lenient(&self, what: &str) -> Option<Frame> {
        let why = format!("{what} is a number memcached would read leniently or truncate; connection closed");
        Some(refused(&self.command(), self.line_len, BAD_FORMAT, false, true, &why))
    }

    /// A value weir will not buffer: memcached would refuse it as too large
    /// for its default item size and swallow it; weir answers the same and
    /// closes rather than read it all.
    fn too_large(&self, length: usize) -> Option<Frame> {
        let why = format!("a {length}-byte value (weir relays at most {MAX_VALUE}); connection closed");
        let answer = "SERVER_ERROR object too large for cache";
        Some(refused(&self.command(), self.line_len, answer, false, true, &why))
    }

    fn forward(&self, keys: Vec<Vec<u8>>, reply: Reply, data: usize) -> Option<Frame> {
        Some(Frame::Request(Request {
            protocol: Protocol::Text,
            command: self.command(),
            opcode: None,
            keys,
            len: self.line_len + data,
            reply,
            opaque: 0,
            judge_as: Vec::new(),
        }))
    }

    fn parse(&self) -> Option<Frame> {
        let t = self.capped();
        let n = t.len();
        if n == 0 || t[0].len() < 2 {
            return self.error();
        }
        let cmd = t[0];
        if cmd[0] == b'm' && cmd.len() == 2 {
            return match cmd[1] {
                b'g' | b's' | b'd' | b'a' => self.meta(cmd[1]),
                b'n' => self.forward(Vec::new(), Reply::Flush, 0),
                b'e' => self.meta_debug(),
                _ => self.error(),
            };
        }
        let quiet_or = |reply| if self.noreply() { Reply::Quiet } else { reply };
        match cmd {
            b"get" | b"gets" | b"bget" if n >= 2 => self.retrieval(false),
            b"gat" | b"gats" if n >= 2 => self.retrieval(true),
            b"set" | b"add" | b"replace" | b"append" | b"prepend" if n == 5 || n == 6 => self.storage(false),
            b"cas" if n == 6 || n == 7 => self.storage(true),
            b"incr" | b"decr" if n == 3 || n == 4 => {
                self.keyed(2, Width::U64, "CLIENT_ERROR invalid numeric delta argument", "the delta")
            }
            b"touch" if n == 3 || n == 4 => {
                self.keyed(2, Width::I32, "CLIENT_ERROR invalid exptime argument", "the exptime")
            }
            b"delete" if (2..=4).contains(&n) => self.delete(),
            b"verbosity" if n == 2 || n == 3 => match number(t[1], Width::U32) {
                Number::Value(_) => self.forward(Vec::new(), quiet_or(Reply::One), 0),
                Number::Refused => self.refuse(BAD_FORMAT, self.noreply(), "a verbosity level memcached refuses"),
                Number::Lenient => self.lenient("the verbosity level"),
            },
            b"cache_memlimit" if n == 2 || n == 3 => match number(t[1], Width::U32) {
                Number::Value(_) => self.forward(Vec::new(), quiet_or(Reply::One), 0),
                Number::Refused => self.refuse("ERROR", self.noreply(), "a memory limit memcached refuses"),
                Number::Lenient => self.lenient("the memory limit"),
            },
            b"flush_all" if (1..=3).contains(&n) => {
                // memcached reads a delay unless the token count says there is none
                if n != if self.noreply() { 2 } else { 1 } {
                    match number(t[1], Width::I32) {
                        Number::Value(_) => {}
                        Number::Refused => {
                            let answer = "CLIENT_ERROR invalid exptime argument";
                            return self.refuse(answer, self.noreply(), "a flush delay memcached refuses");
                        }
                        Number::Lenient => return self.lenient("the flush delay"),
                    }
                }
                self.forward(Vec::new(), quiet_or(Reply::One), 0)
            }
            b"stats" => {
                let single =
                    matches!(t.get(1).copied(), Some(b"reset") | Some(b"detail")) && t.get(2).copied() != Some(b"dump");
                self.forward(Vec::new(), if single { Reply::One } else { Reply::Lines }, 0)
            }
            b"lru_crawler" => {
                let dump = n == 3 && t[1] == b"metadump";
                self.forward(Vec::new(), if dump { Reply::Lines } else { Reply::One }, 0)
            }
            b"slabs" => {
                let quiet = n >= 3 && t[1] == b"automove" && self.noreply();
                self.forward(Vec::new(), if quiet { Reply::Quiet } else { Reply::One }, 0)
            }
            b"lru" if n >= 2 => self.forward(Vec::new(), quiet_or(Reply::One), 0),
            b"extstore" if n >= 2 => self.forward(Vec::new(), quiet_or(Reply::One), 0),
            b"watch" | b"refresh_certs" => self.forward(Vec::new(), quiet_or(Reply::One), 0),
            b"version" => self.forward(Vec::new(), Reply::One, 0),
            b"quit" | b"shutdown" => self.forward(Vec::new(), Reply::Close, 0),
            // a known command with a wrong token count, or a word memcached
            // looks up by its first letter
            _ if KNOWN_WORDS.contains(&cmd) || b"gsacidt".contains(&cmd[0]) => self.error(),
            _ if t[n - 1].starts_with(b"HTTP/") => {
                Some(refused(&self.command(), self.line_len, "", false, true, "an HTTP request (memcached closes)"))
            }
            _ => self.error(),
        }
    }

    /// `get`, `gets`, `bget`, `gat`, `gats`: every token after the command
    /// (and the exptime) is a key, however many.
    fn retrieval(&self, touch: bool) -> Option<Frame> {
        let mut keys = &self.tokens[1..];
        if touch {
            match number(keys[0], Width::I32) {
                Number::Value(_) => {}
                Number::Refused => {
                    return self.refuse("CLIENT_ERROR invalid exptime argument", false, "an exptime memcached refuses");
                }
                Number::Lenient => return self.lenient("the exptime"),
            }
            keys = &keys[1..];
        }
        if keys.iter().any(|k| k.len() > KEY_MAX) {
            return self.refuse(BAD_FORMAT, false, "a key longer than 250 bytes");
        }
        self.forward(keys.iter().map(|k| k.to_vec()).collect(), Reply::Values, 0)
    }

    /// `set`, `add`, `replace`, `append`, `prepend`, `cas`: the line, then a
    /// data block of the declared length and `\r\n`.
    fn storage(&self, cas: bool) -> Option<Frame> {
        let t = self.capped();
        let noreply = self.noreply();
        if t[1].len() > KEY_MAX {
            return self.refuse(BAD_FORMAT, noreply, "a key longer than 250 bytes");
        }
        let mut fields = vec![(t[2], Width::U32, "the flags"), (t[3], Width::I32, "the exptime")];
        fields.push((t[4], Width::I32, "the data length"));
        if cas {
            fields.push((t[5], Width::U64, "the cas unique"));
        }
        let mut length = 0;
        for (token, width, what) in fields {
            match number(token, width) {
                Number::Value(v) if what == "the data length" => length = v,
                Number::Value(_) => {}
                Number::Refused => return self.refuse(BAD_FORMAT, noreply, &format!("{what} memcached refuses")),
                Number::Lenient => return self.lenient(what),
            }
        }
        if !(0..=i32::MAX as i128 - 2).contains(&length) {
            return self.refuse(BAD_FORMAT, noreply, "a negative or oversized data length");
        }
        if length as usize > MAX_VALUE {
            return self.too_large(length as usize);
        }
        let keys = vec![t[1].to_vec()];
        self.data_block(length as usize, keys, if noreply { Reply::Quiet } else { Reply::One }, noreply)
    }

    /// The data block after a storage line: forwarded with it when it ends
    /// in `\r\n` where its length says; else memcached reads it, answers
    /// "bad data chunk" and goes on after it, and so does weir.
    fn data_block(&self, length: usize, keys: Vec<Vec<u8>>, reply: Reply, noreply: bool) -> Option<Frame> {
        let end = self.line_len + length + 2;
        if self.buf.len() < end {
            return None;
        }
        if &self.buf[end - 2..end] != b"\r\n" {
            let why = "the data block does not end with \\r\\n where its length says (bad data chunk)";
            return Some(refused(&self.command(), end, "CLIENT_ERROR bad data chunk", noreply, false, why));
        }
        self.forward(keys, reply, length + 2)
    }

    /// `incr`/`decr`/`touch`: a key and one number.
    fn keyed(&self, at: usize, width: Width, error: &str, what: &str) -> Option<Frame> {
        let t = self.capped();
        let noreply = self.noreply();
        if t[1].len() > KEY_MAX {
            return self.refuse(BAD_FORMAT, noreply, "a key longer than 250 bytes");
        }
        match number(t[at], width) {
            Number::Value(_) => {}
            Number::Refused => return self.refuse(error, noreply, &format!("{what} memcached refuses")),
            Number::Lenient => return self.lenient(what),
        }
        self.forward(vec![t[1].to_vec()], if noreply { Reply::Quiet } else { Reply::One }, 0)
    }

    /// `delete <key> [0] [noreply]`, nothing else.
    fn delete(&self) -> Option<Frame> {
        let t = self.capped();
        let noreply = self.noreply();
        if t.len() > 2 {
            let hold_is_zero = t[2] == b"0";
            let valid = (t.len() == 3 && (hold_is_zero || noreply)) || (t.len() == 4 && hold_is_zero && noreply);
            if !valid {
                let usage = "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]";
                return self.refuse(usage, noreply, "delete takes a key and noreply only");
            }
        }
        if t[1].len() > KEY_MAX {
            return self.refuse(BAD_FORMAT, noreply, "a key longer than 250 bytes");
        }
        self.forward(vec![t[1].to_vec()], if noreply { Reply::Quiet } else { Reply::One }, 0)
    }

    /// `me <key> [b]`.
    fn meta_debug(&self) -> Option<Frame> {
        let t = self.capped();
        if t.len() < 2 || t[1].len() > KEY_MAX {
            return self.refuse(BAD_FORMAT, false, "me needs a key of at most 250 bytes");
        }
        let mut key = t[1].to_vec();
        if t.len() >= 3 && t[2] == b"b" {
            match decode_key(&key) {
                Some(decoded) => key = decoded,
                None => return self.refuse(BAD_FORMAT, false, "a base64 key memcached (or weir) cannot decode"),
            }
        }
        self.forward(vec![key], Reply::One, 0)
    }

    /// `mg`, `ms`, `md`, `ma`, in the order memcached checks them.
    fn meta(&self, which: u8) -> Option<Frame> {
        let t = self.capped();
        if t.len() < 2 {
            return self.error();
        }
        let flags_from = if which == b's' { 3 } else { 2 };
        let mut length = None;
        if t[1].len() > KEY_MAX {
            return self.refuse(BAD_FORMAT, false, "a key longer than 250 bytes");
        }
        if which == b's' && t.len() == 2 {
            return self.refuse(BAD_FORMAT, false, "ms without a data length");
        }
        if t.len() > META_MAX_TOKENS {
            let answer = if which == b'g' {
                "CLIENT_ERROR options flags are too long"
            } else {
                "CLIENT_ERROR options flags too long"
            };
            return self.refuse(answer, false, "too many meta flags");
        }
        if which == b's' {
            match number(t[2], Width::I32) {
                Number::Value(v) if v > MAX_VALUE as i128 && v <= i32::MAX as i128 - 2 => {
                    return self.too_large(v as usize);
                }
                Number::Value(v) if (0..=i32::MAX as i128 - 2).contains(&v) => length = Some(v as usize),
                Number::Value(_) | Number::Refused => {
                    return self.refuse(BAD_FORMAT, false, "a data length memcached refuses");
                }
                Number::Lenient => return self.lenient("the data length"),
            }
        }
        // from here on, memcached swallows an ms's data block with its error
        let refuse = |answer: &str, why: &str| match length {
            Some(length) => {
                let end = self.line_len + length + 2;
                if self.buf.len() < end {
                    return None;
                }
                Some(refused(&self.command(), end, answer, false, false, why))
            }
            None => self.refuse(answer, false, why),
        };
        let flags = match meta_flags(t[1], &t[flags_from..]) {
            Ok(flags) => flags,
            Err(FlagError::Refused(answer)) => {
                let answer =
                    if matches!(which, b'd' | b'a') { "CLIENT_ERROR invalid or duplicate flag" } else { answer };
                return refuse(answer, "meta flags memcached refuses");
            }
            Err(FlagError::Lenient) => return self.lenient("a meta flag's number"),
        };
        if flags.opaque_too_long {
            return refuse("CLIENT_ERROR opaque token too long", "an opaque longer than 32 bytes");
        }
        let valid_mode = match (which, flags.mode) {
            (_, None) | (b'g' | b'd', _) => true,
            (b's', Some(m)) => matches!(m, b'E' | b'A' | b'P' | b'R' | b'S'),
            (_, Some(m)) => matches!(m, b'I' | b'+' | b'D' | b'-'),
        };
        if !valid_mode {
            let answer = if which == b's' {
                "CLIENT_ERROR invalid mode for ms M token"
            } else {
                "CLIENT_ERROR invalid mode for ma M token"
            };
            return refuse(answer, "a mode memcached does not know");
        }
        let reply = if flags.quiet { Reply::Quiet } else { Reply::One };
        let mut frame = match length {
            Some(length) => self.data_block(length, vec![flags.key.clone()], reply, false)?,
            None => self.forward(vec![flags.key.clone()], reply, 0)?,
        };
        if let Frame::Request(request) = &mut frame {
            request.judge_as = meta_effects(which, &flags);
        }
        Some(frame)
    }
}

/// The classic commands a meta request does beyond its own (each judged
/// with its keys): `mg` with `T` touches, with `N` creates the missing item;
/// `ma` increments or decrements by its mode and creates with `N`.
fn meta_effects(which: u8, flags: &MetaFlags) -> Vec<&'static str> {
    let mut effects = Vec::new();
    match which {
        b'g' if flags.touch || flags.vivify => {
            effects.push("mg");
            if flags.touch {
                effects.push("touch");
            }
            if flags.vivify {
                effects.push("add");
            }
        }
        b'a' => {
            effects.push(if matches!(flags.mode, Some(b'D' | b'-')) { "decr" } else { "incr" });
            if flags.vivify {
                effects.push("add");
            }
        }
        _ => {}
    }
    effects
}

/// Commands outside `process_command_ascii`'s first-letter branches that
/// answer ERROR when their token count is wrong (the `HTTP/` check only runs
/// for words it does not know).
const KNOWN_WORDS: &[&[u8]] = &[b"replace", b"prepend", b"bget", b"flush_all", b"verbosity", b"lru", b"extstore"];

struct MetaFlags {
    /// The key memcached will use (decoded when the `b` flag is given).
    key: Vec<u8>,
    quiet: bool,
    touch: bool,
    vivify: bool,
    mode: Option<u8>,
    opaque_too_long: bool,
}

enum FlagError {
    /// memcached answers this (the last error its flag parser noted).
    Refused(&'static str),
    /// A number memcached reads leniently.
    Lenient,
}

/// memcached's `_meta_flag_preparse`: each token is a flag named by its
/// first byte; a repeated flag, a byte >= 127 or an unknown flag stops the
/// parse; a bad value is noted and the parse goes on.
fn meta_flags(key: &[u8], tokens: &[&[u8]]) -> Result<MetaFlags, FlagError> {
    let mut flags =
        MetaFlags { key: key.to_vec(), quiet: false, touch: false, vivify: false, mode: None, opaque_too_long: false };
    let mut seen = [false; 127];
    let mut error: Option<&'static str> = None;
    let mut lenient = false;
    let mut check = |value: &[u8], width: Width, message: &'static str, error: &mut Option<&'static str>| match number(
        value, width,
    ) {
        Number::Value(_) => {}
        Number::Refused => *error = Some(message),
        Number::Lenient => lenient = true,
    };
    const BAD_TOKEN: &str = "CLIENT_ERROR bad token in command line format";
    for token in tokens {
        let flag = token[0];
        if flag >= 127 || seen[flag as usize] {
            return Err(FlagError::Refused("CLIENT_ERROR duplicate flag"));
        }
        seen[flag as usize] = true;
        let value = &token[1..];
        match flag {
            b'b' => match decode_key(key) {
                Some(decoded) => flags.key = decoded,
                None => error = Some("CLIENT_ERROR error decoding key"),
            },
            b'N' | b'T' | b'R' => {
                flags.vivify |= flag == b'N';
                flags.touch |= flag == b'T';
                check(value, Width::I32, BAD_TOKEN, &mut error);
            }
            // memcached notes the error but keeps its previous message
            b'F' => check(value, Width::U32, error.unwrap_or(BAD_FORMAT), &mut error),
            b'C' => check(value, Width::U64, BAD_TOKEN, &mut error),
            b'J' => check(value, Width::U64, "CLIENT_ERROR invalid numeric initial value", &mut error),
            b'D' => check(value, Width::U64, "CLIENT_ERROR invalid numeric delta value", &mut error),
            b'M' if token.len() != 2 => error = Some("CLIENT_ERROR incorrect length for M token"),
            b'M' => flags.mode = Some(token[1]),
            b'q' => flags.quiet = true,
            b'O' => flags.opaque_too_long = token.len() > MAX_OPAQUE,
            b'P' | b'L' | b'k' | b's' | b't' | b'c' | b'f' | b'v' | b'h' | b'u' | b'l' | b'I' => {}
            _ => return Err(FlagError::Refused("CLIENT_ERROR invalid flag")),
        }
    }
    match error {
        Some(message) => Err(FlagError::Refused(message)),
        None if lenient => Err(FlagError::Lenient),
        None => Ok(flags),
    }
}

/// The key a `b` flag names: memcached's decoding, refused unless the text
/// is plain padded base64 (memcached skips bytes outside the alphabet and
/// stops at the first padded block; weir does not forward text another
/// decoder could read differently).
pub fn decode_key(text: &[u8]) -> Option<Vec<u8>> {
    if !canonical_base64(text) {
        return None;
    }
    memcached_base64_decode(text)
}

fn base64_value(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        b'=' => Some(0),
        _ => None,
    }
}

fn canonical_base64(text: &[u8]) -> bool {
    let body = text.strip_suffix(b"==").or_else(|| text.strip_suffix(b"=")).unwrap_or(text);
    !text.is_empty() && text.len().is_multiple_of(4) && body.iter().all(|&b| b != b'=' && base64_value(b).is_some())
}

/// memcached's `base64_decode` (`base64.c`), byte for byte: `None` where it
/// returns 0.
pub fn memcached_base64_decode(src: &[u8]) -> Option<Vec<u8>> {
    let count = src.iter().filter(|&&b| base64_value(b).is_some()).count();
    if count == 0 || !count.is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(count / 4 * 3);
    let (mut block, mut filled, mut pad) = ([0u8; 4], 0, 0);
    for &b in src {
        let Some(v) = base64_value(b) else { continue };
        if b == b'=' {
            pad += 1;
        }
        block[filled] = v;
        filled += 1;
        if filled == 4 {
            out.push((block[0] << 2) | (block[1] >> 4));
            out.push((block[1] << 4) | (block[2] >> 2));
            out.push((block[2] << 6) | block[3]);
            filled = 0;
            if pad > 0 {
                match pad {
                    1 => out.truncate(out.len() - 1),
                    2 => out.truncate(out.len() - 2),
                    _ => return None,
                }
                break;
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// `safe_strtoul` into a `uint32_t` (flags, levels).
    U32,
    /// `safe_strtol` into an `int32_t` (exptimes, data lengths).
    I32,
    /// `safe_strtoull` (cas, deltas).
    U64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Number {
    /// Plain decimal digits in range: memcached reads this value.
    Value(i128),
    /// memcached refuses it (answers its error).
    Refused,
    /// memcached takes it, but through a C detail (leading space or `+`,
    /// junk after a tab, `-0`, a value truncated to 32 bits): weir refuses.
    Lenient,
}

/// A number token as memcached's `safe_strto*` (glibc, LP64) reads it.
pub fn number(token: &[u8], width: Width) -> Number {
    if !c_accepts(token, width) {
        return Number::Refused;
    }
    let digits = match (width, token.strip_prefix(b"-")) {
        (Width::I32, Some(rest)) => rest,
        _ => token,
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || digits.len() > 20 {
        return Number::Lenient;
    }
    let magnitude: i128 = std::str::from_utf8(digits).unwrap().parse().unwrap();
    let value = if digits.len() < token.len() { -magnitude } else { magnitude };
    let fits = match width {
        Width::U32 => (0..=u32::MAX as i128).contains(&value),
        Width::I32 => (i32::MIN as i128..=i32::MAX as i128).contains(&value),
        Width::U64 => (0..=u64::MAX as i128).contains(&value),
    };
    if fits { Number::Value(value) } else { Number::Lenient }
}

fn c_isspace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Whether `safe_strtoul`/`safe_strtol`/`safe_strtoull` return true: glibc's
/// strto* (leading white space, a sign, decimal digits, ERANGE past 64
/// bits), then the end must be white space or the end of the token; an
/// unsigned value that is negative as a signed one is refused when the token
/// has a `-`.
fn c_accepts(token: &[u8], width: Width) -> bool {
    let mut at = token.iter().take_while(|&&b| c_isspace(b)).count();
    let negative = token.get(at) == Some(&b'-');
    if matches!(token.get(at), Some(b'-' | b'+')) {
        at += 1;
    }
    let digits = token[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return false;
    }
    let end = at + digits;
    if end < token.len() && !c_isspace(token[end]) {
        return false;
    }
    let mut magnitude: u128 = 0;
    for &d in &token[at..end] {
        magnitude = magnitude.saturating_mul(10).saturating_add((d - b'0') as u128);
    }
    match width {
        Width::I32 => {
            let limit = if negative { 1u128 << 63 } else { (1u128 << 63) - 1 };
            magnitude <= limit
        }
        Width::U32 | Width::U64 => {
            if magnitude > u64::MAX as u128 {
                return false;
            }
            let value = if negative { (magnitude as u64).wrapping_neg() } else { magnitude as u64 };
            !((value as i64) < 0 && token.contains(&b'-'))
        }
    }
}
