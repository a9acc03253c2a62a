use super::*;

fn text(buf: &[u8]) -> Request {
    match parse_request(Protocol::Text, buf).unwrap().expect("complete") {
        Frame::Request(r) => r,
        Frame::Refused(r) => panic!("refused {:?}: {}", String::from_utf8_lossy(buf), r.why),
    }
}

/// What weir answers for memcached, how many bytes that covers, and whether
/// it closes.
fn refused(buf: &[u8]) -> (String, usize, bool) {
    match parse_request(Protocol::Text, buf).unwrap().expect("complete") {
        Frame::Refused(r) => (String::from_utf8_lossy(&r.answer).into_owned(), r.len, r.close),
        Frame::Request(r) => panic!("forwarded {:?} as {r:?}", String::from_utf8_lossy(buf)),
    }
}

fn binary_frame(buf: &[u8]) -> Frame {
    parse_request(Protocol::Binary, buf).unwrap().expect("complete")
}

#[test]
fn text_storage_commands_include_their_data_block() {
    let r = text(b"set k 0 0 5\r\nhello\r\nget k\r\n");
    assert_eq!((r.command.as_str(), r.len, r.reply), ("set", 20, Reply::One));
    assert_eq!(r.keys, vec![b"k".to_vec()]);
    assert_eq!(parse_request(Protocol::Text, b"set k 0 0 5\r\nhel").unwrap(), None, "waits for the data");
    let quiet = text(b"set k 0 0 1 noreply\r\nx\r\n");
    assert_eq!(quiet.reply, Reply::Quiet);
    assert_eq!(quiet.refusal(), None, "noreply: memcached answers nothing, neither does weir");
    let cas = text(b"cas k 0 0 1 99\r\nx\r\n");
    assert_eq!((cas.len, cas.reply), (19, Reply::One));
    let ms = text(b"ms k 2 T0 q\r\nhi\r\n");
    assert_eq!((ms.command.as_str(), ms.len, ms.reply), ("ms", 17, Reply::Quiet));
    assert_eq!(ms.refusal().unwrap(), TEXT_DENIED, "meta quiet mode still shows errors");
}

#[test]
fn text_multi_key_commands_name_every_key() {
    let r = text(b"get a b  c\r\n");
    assert_eq!(r.keys, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    assert_eq!(r.reply, Reply::Values);
    let gat = text(b"gat 100 x y\n");
    assert_eq!(gat.keys, vec![b"x".to_vec(), b"y".to_vec()], "the exptime is not a key");
    assert_eq!(text(b"stats\r\n").reply, Reply::Lines);
    assert_eq!(text(b"stats reset\r\n").reply, Reply::One);
    assert_eq!(text(b"mn\r\n").reply, Reply::Flush);
    assert_eq!(text(b"quit\r\n").reply, Reply::Close);
}

#[test]
fn broken_text_requests_are_answered_as_memcached_answers_them() {
    let long = vec![b'g'; MAX_LINE + 2];
    assert!(parse_request(Protocol::Text, &long).unwrap_err().0.contains("longer than"));
    // memcached answers a bad number and reads the next line as a command:
    // the "data block" is not swallowed
    let bad_number = b"set k 0 0 x\r\nget secret\r\n";
    assert_eq!(refused(bad_number), ("CLIENT_ERROR bad command line format\r\n".into(), 13, false));
    // a wrong data block is read whole, answered, and the stream goes on after it
    let chunk = b"set k 0 0 2\r\nabcd\r\n";
    assert_eq!(refused(chunk), ("CLIENT_ERROR bad data chunk\r\n".into(), 17, false));
    let huge = format!("set k 0 0 {}\r\n", MAX_VALUE + 1);
    let (answer, _, close) = refused(huge.as_bytes());
    assert!(answer.starts_with("SERVER_ERROR object too large") && close);
}

fn binary_packet(magic: u8, op: u8, key: &[u8], extras: &[u8], value: &[u8], opaque: u32) -> Vec<u8> {
    let body = extras.len() + key.len() + value.len();
    let mut p = vec![magic, op];
    p.extend_from_slice(&(key.len() as u16).to_be_bytes());
    p.extend_from_slice(&[extras.len() as u8, 0, 0, 0]);
    p.extend_from_slice(&(body as u32).to_be_bytes());
    p.extend_from_slice(&opaque.to_be_bytes());
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(extras);
    p.extend_from_slice(key);
    p.extend_from_slice(value);
    p
}

#[test]
fn binary_requests_frame_by_body_length() {
    let set = binary_packet(REQUEST_MAGIC, 0x11, b"key", &[0; 8], b"value", 7);
    assert_eq!(Protocol::of_first_byte(set[0]), Protocol::Binary);
    let Frame::Request(r) = binary_frame(&set) else { panic!("refused") };
    assert_eq!((r.command.as_str(), r.len, r.reply, r.opaque), ("setq", set.len(), Reply::Quiet, 7));
    assert_eq!(r.keys, vec![b"key".to_vec()]);
    assert_eq!(parse_request(Protocol::Binary, &set[..30]).unwrap(), None);
    let refusal = r.refusal().unwrap();
    let unit = parse_reply_unit(Protocol::Binary, &refusal).unwrap().unwrap();
    assert_eq!((unit.opcode, unit.opaque, unit.summary.as_str()), (0x11, 7, "0x0020"));
    let mut bad_magic = set.clone();
    bad_magic[0] = 0x81;
    assert!(parse_request(Protocol::Binary, &bad_magic).is_err());
    let mut short_body = set.clone();
    short_body[8..12].copy_from_slice(&2u32.to_be_bytes());
    let Frame::Refused(short) = binary_frame(&short_body) else { panic!("forwarded") };
    assert!(short.why.contains("longer than the body") && short.close, "{short:?}");
}

#[test]
fn replies_end_where_the_request_kind_says() {
    let values = b"VALUE a 0 3\r\nabc\r\nVALUE b 0 1\r\nx\r\nEND\r\n";
    let mut at = 0;
    let mut units = Vec::new();
    while at < values.len() {
        let u = parse_reply_unit(Protocol::Text, &values[at..]).unwrap().unwrap();
        at += u.len;
        units.push(ends_reply(Protocol::Text, Reply::Values, &u));
    }
    assert_eq!(units, vec![false, false, true]);
    let va = parse_reply_unit(Protocol::Text, b"VA 2 f\r\nhi\r\n").unwrap().unwrap();
    assert_eq!(va.len, 12);
    assert_eq!(parse_reply_unit(Protocol::Text, b"VA 2 f\r\nh").unwrap(), None);
    let mn = parse_reply_unit(Protocol::Text, b"MN\r\n").unwrap().unwrap();
    assert!(belongs_to(Protocol::Text, Reply::Flush, 0, 0, &mn));
    assert!(!belongs_to(Protocol::Text, Reply::Flush, 0, 0, &va), "a quiet mg's hit before mn's MN");
    let stat = binary_packet(RESPONSE_MAGIC, 0x10, b"pid", &[], b"1", 0);
    let end = binary_packet(RESPONSE_MAGIC, 0x10, b"", &[], b"", 0);
    let u = parse_reply_unit(Protocol::Binary, &stat).unwrap().unwrap();
    assert!(!ends_reply(Protocol::Binary, Reply::Lines, &u));
    let u = parse_reply_unit(Protocol::Binary, &end).unwrap().unwrap();
    assert!(ends_reply(Protocol::Binary, Reply::Lines, &u));
}

#[test]
fn the_barrier_is_a_request_weir_recognises() {
    let text_barrier = text(&barrier(Protocol::Text));
    assert_eq!(text_barrier.reply, Reply::Flush);
    let Frame::Request(bin) = binary_frame(&barrier(Protocol::Binary)) else { panic!("refused") };
    assert_eq!((bin.reply, bin.opaque), (Reply::Flush, BARRIER_OPAQUE));
}

const BAD_FORMAT: &str = "CLIENT_ERROR bad command line format\r\n";

#[test]
fn numbers_are_read_as_memcacheds_safe_strto_functions_read_them() {
    use text::{Number::*, Width::*, number};
    assert_eq!(number(b"42", U32), Value(42));
    assert_eq!(number(b"-1", I32), Value(-1));
    assert_eq!(number(b"18446744073709551615", U64), Value(u64::MAX as i128));
    // memcached refuses these: it answers an error
    for (token, width) in [
        (&b"x"[..], U32),
        (b"", I32),
        (b"5x", I32),
        (b"-1", U32),
        (b"-", I32),
        (b"18446744073709551616", U64),
        (b"9223372036854775808", I32),
        (b"0x10", U32),
    ] {
        assert_eq!(number(token, width), Refused, "{:?}", String::from_utf8_lossy(token));
    }
    // memcached takes these, through C details weir does not forward
    for (token, width) in [
        (&b"+5"[..], I32),
        (b"\t5", I32),
        (b"5\tjunk", I32),
        (b"-0", U32),
        (b"4294967296", U32),
        (b"4294967301", I32),
        (b"2147483648", I32),
    ] {
        assert_eq!(number(token, width), Lenient, "{:?}", String::from_utf8_lossy(token));
    }
}

#[test]
fn storage_lines_memcached_refuses_leave_their_data_to_be_read_as_commands() {
    let line = |s: &str| s.len();
    for bad in [
        "set public/a 0 abc 20\r\n",             // exptime
        "set public/a x 0 20\r\n",               // flags
        "set public/a -1 0 20\r\n",              // negative flags
        "set public/a 0 0 -20\r\n",              // negative length
        "set public/a 0 0 20 noreply extra\r\n", // a token too many
        "set public/a 0 0\r\n",                  // a token short
        "cas public/a 0 0 20\r\n",               // no cas unique
        "cas public/a 0 0 20 x\r\n",             // a bad cas unique
        "add public/a 0 0 99999999999999999999\r\n",
    ] {
        let buf = format!("{bad}get secret\r\n");
        let (answer, len, close) = refused(buf.as_bytes());
        assert_eq!(len, line(bad), "{bad:?}: only the line is consumed");
        assert!(!close && (answer == BAD_FORMAT || answer == "ERROR\r\n"), "{bad:?}: {answer:?}");
        // and the next request is the one memcached reads next
        assert_eq!(text(&buf.as_bytes()[len..]).keys, vec![b"secret".to_vec()]);
    }
    let long_key = format!("set {} 0 0 1\r\nx\r\n", "k".repeat(251));
    assert_eq!(refused(long_key.as_bytes()), (BAD_FORMAT.into(), long_key.len() - 3, false));
    assert_eq!(text(format!("set {} 0 0 1\r\nx\r\n", "k".repeat(250)).as_bytes()).len, 265);
    // noreply silences memcached's errors too
    assert_eq!(refused(b"set k 0 x 1 noreply\r\n"), (String::new(), 21, false));
    // a 7th token that is not noreply is ignored by memcached: forwarded, answered
    assert_eq!(text(b"set k 0 0 1 whatever\r\nx\r\n").reply, Reply::One);
    // numbers memcached reads leniently close the connection
    for lenient in ["set k 0 0 +1\r\nx\r\n", "set k 4294967296 0 1\r\nx\r\n", "set k 0 0 1\tjunk\r\nx\r\n"] {
        assert!(refused(lenient.as_bytes()).2, "{lenient:?}");
    }
}

#[test]
fn the_tokenizer_is_memcacheds_spaces_only_and_23_tokens() {
    // tabs are part of a token: this key has a tab in it
    assert_eq!(text(b"get a\tb\r\n").keys, vec![b"a\tb".to_vec()]);
    // one \r is stripped, a second one belongs to the key
    assert_eq!(text(b"get a\r\r\n").keys, vec![b"a\r".to_vec()]);
    // a get reads every key, past memcached's 23 tokens
    let many: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    assert_eq!(text(format!("get {}\r\n", many.join(" ")).as_bytes()).keys.len(), 40);
    // other commands see 23 tokens and "the rest": too many for delete
    let (answer, _, _) = refused(format!("delete k {}\r\n", many.join(" ")).as_bytes());
    assert_eq!(answer, "ERROR\r\n");
    // a NUL ends memcached's view of the line: weir refuses and closes
    assert!(refused(b"get public/a\0 secret\r\n").2);
    // too short, unknown, a wrong token count: ERROR, the connection goes on
    for line in ["x\r\n", "\r\n", "frobnicate k\r\n", "get\r\n", "incr k\r\n", "mx k\r\n", "verbosity\r\n"] {
        assert_eq!(refused(line.as_bytes()), ("ERROR\r\n".into(), line.len(), false), "{line:?}");
    }
    // memcached closes on what looks like HTTP
    assert_eq!(refused(b"GET / HTTP/1.1\r\n"), (String::new(), 16, true));
    // a non-get line is closed past 2048 bytes, as memcached closes it
    let long = format!("set {} 0 0 1\r\n", "k".repeat(3000));
    assert!(parse_request(Protocol::Text, long.as_bytes()).unwrap_err().0.contains("2048"));
    assert_eq!(text(format!("get {}\r\n", vec!["k"; 2000].join(" ")).as_bytes()).keys.len(), 2000);
}

#[test]
fn single_line_commands_are_checked_as_memcached_checks_them() {
    assert_eq!(text(b"delete k\r\n").reply, Reply::One);
    assert_eq!(text(b"delete k 0\r\n").reply, Reply::One);
    assert_eq!(text(b"delete k noreply\r\n").reply, Reply::Quiet);
    assert_eq!(text(b"delete k 0 noreply\r\n").reply, Reply::Quiet);
    let usage = "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n";
    assert_eq!(refused(b"delete k 5\r\n").0, usage);
    assert_eq!(refused(b"delete k 5 noreply\r\n").0, "", "memcached's noreply silences it");
    assert_eq!(refused(b"incr k x\r\n").0, "CLIENT_ERROR invalid numeric delta argument\r\n");
    assert_eq!(refused(b"incr k -1\r\n").0, "CLIENT_ERROR invalid numeric delta argument\r\n");
    assert_eq!(refused(b"touch k x\r\n").0, "CLIENT_ERROR invalid exptime argument\r\n");
    assert_eq!(refused(b"gat x k\r\n").0, "CLIENT_ERROR invalid exptime argument\r\n");
    assert_eq!(refused(format!("get a {}\r\n", "k".repeat(251)).as_bytes()).0, BAD_FORMAT);
    assert_eq!(refused(format!("incr {} 1\r\n", "k".repeat(251)).as_bytes()).0, BAD_FORMAT);
    assert_eq!(text(b"bget k\r\n").keys, vec![b"k".to_vec()]);
    // noreply only where memcached reads it
    assert_eq!(text(b"version noreply\r\n").reply, Reply::One);
    assert_eq!(text(b"get noreply\r\n").keys, vec![b"noreply".to_vec()]);
    assert_eq!(text(b"flush_all noreply\r\n").reply, Reply::Quiet);
    assert_eq!(refused(b"flush_all x\r\n").0, "CLIENT_ERROR invalid exptime argument\r\n");
    assert_eq!(text(b"lru_crawler metadump all\r\n").reply, Reply::Lines);
}

#[test]
fn meta_commands_are_checked_and_swallowed_as_memcached_does() {
    // ms: an error before the data length leaves the data to be read as commands
    let long_key = format!("ms {} 12\r\n", "k".repeat(251));
    assert_eq!(refused(format!("{long_key}get secret\r\n").as_bytes()), (BAD_FORMAT.into(), long_key.len(), false));
    assert_eq!(refused(b"ms k\r\n").0, BAD_FORMAT);
    assert_eq!(refused(b"ms k x\r\nhi\r\n"), (BAD_FORMAT.into(), 8, false));
    // after it, memcached swallows the data block with its error
    let swallowed = b"ms k 10 Z\r\nget secret\r\n";
    assert_eq!(refused(swallowed), ("CLIENT_ERROR invalid flag\r\n".into(), swallowed.len(), false));
    assert_eq!(parse_request(Protocol::Text, b"ms k 12 Z\r\nget").unwrap(), None, "waits for what it swallows");
    assert_eq!(refused(b"ms k 2 T1 T2\r\nhi\r\n").0, "CLIENT_ERROR duplicate flag\r\n");
    assert_eq!(refused(b"ms k 2 Tx\r\nhi\r\n").0, "CLIENT_ERROR bad token in command line format\r\n");
    assert_eq!(refused(b"ms k 2 MX\r\nhi\r\n").0, "CLIENT_ERROR invalid mode for ms M token\r\n");
    assert_eq!(refused(b"ms k 2 Mxx\r\nhi\r\n").0, "CLIENT_ERROR incorrect length for M token\r\n");
    let opaque = format!("ms k 2 O{}\r\nhi\r\n", "x".repeat(32));
    assert_eq!(refused(opaque.as_bytes()).0, "CLIENT_ERROR opaque token too long\r\n");
    assert_eq!(refused(b"ms k 2\r\nhiXY").0, "CLIENT_ERROR bad data chunk\r\n");
    // md and ma have their own message for any flag error
    assert_eq!(refused(b"md k Z\r\n").0, "CLIENT_ERROR invalid or duplicate flag\r\n");
    assert_eq!(refused(b"ma k q q\r\n").0, "CLIENT_ERROR invalid or duplicate flag\r\n");
    assert_eq!(refused(b"mg k Z\r\n").0, "CLIENT_ERROR invalid flag\r\n");
    assert_eq!(refused(b"mg\r\n").0, "ERROR\r\n");
    let flags: Vec<&str> = "v t c f s k h l u O1 P L I q N1 R1 T1 C1".split(' ').collect();
    assert_eq!(
        refused(format!("mg k {}\r\n", flags.join(" ")).as_bytes()).0,
        "CLIENT_ERROR options flags are too long\r\n"
    );
    // a flag is its first byte: "quiet" is q
    assert_eq!(text(b"mg k v quiet\r\n").reply, Reply::Quiet);
    assert_eq!(text(b"md k q\r\n").reply, Reply::Quiet);
}

#[test]
fn meta_flags_that_do_more_are_judged_as_the_commands_they_do() {
    assert!(text(b"mg k v\r\n").judge_as.is_empty());
    assert_eq!(text(b"mg k v T30\r\n").judge_as, vec!["mg", "touch"]);
    assert_eq!(text(b"mg k N30\r\n").judge_as, vec!["mg", "add"]);
    assert_eq!(text(b"ma k\r\n").judge_as, vec!["incr"]);
    assert_eq!(text(b"ma k MD\r\n").judge_as, vec!["decr"]);
    assert_eq!(text(b"ma k M- N0 J5\r\n").judge_as, vec!["decr", "add"]);
    assert_eq!(refused(b"ma k MX\r\n").0, "CLIENT_ERROR invalid mode for ma M token\r\n");
}

#[test]
fn base64_keys_are_judged_decoded() {
    // "secret"
    assert_eq!(text(b"mg c2VjcmV0 b v\r\n").keys, vec![b"secret".to_vec()]);
    assert_eq!(text(b"ms c2VjcmV0 2 b\r\nhi\r\n").keys, vec![b"secret".to_vec()]);
    assert_eq!(text(b"md c2VjcmV0 b q\r\n").keys, vec![b"secret".to_vec()]);
    assert_eq!(text(b"ma c2VjcmV0 b\r\n").keys, vec![b"secret".to_vec()]);
    assert_eq!(text(b"me c2VjcmV0 b\r\n").keys, vec![b"secret".to_vec()]);
    // any token starting with b is the flag
    assert_eq!(text(b"mg c2VjcmV0 bogus\r\n").keys, vec![b"secret".to_vec()]);
    // padding
    assert_eq!(text(b"mg YQ== b\r\n").keys, vec![b"a".to_vec()]);
    assert_eq!(text(b"mg YWI= b\r\n").keys, vec![b"ab".to_vec()]);
    // undecodable: memcached's error (and an ms swallows its data)
    assert_eq!(refused(b"mg c2Vjc b\r\n").0, "CLIENT_ERROR error decoding key\r\n");
    assert_eq!(refused(b"ms c2Vjc 2 b\r\nhi\r\n"), ("CLIENT_ERROR error decoding key\r\n".into(), 18, false));
    assert_eq!(refused(b"md c2Vjc b\r\n").0, "CLIENT_ERROR invalid or duplicate flag\r\n");
    // memcached would skip the bytes outside the alphabet and read "secret":
    // weir does not forward that
    assert_eq!(text::memcached_base64_decode(b"c2Vj!cmV0"), Some(b"secret".to_vec()));
    assert_eq!(refused(b"mg c2Vj!cmV0 b\r\n").0, "CLIENT_ERROR error decoding key\r\n");
    assert_eq!(text::memcached_base64_decode(b"YQ==c2Vj"), Some(b"a".to_vec()), "stops at padding");
    assert_eq!(text::decode_key(b"YQ==c2Vj"), None);
    assert_eq!(text::memcached_base64_decode(b"Y==="), None);
    // me takes only the exact token b
    assert_eq!(text(b"me c2VjcmV0 bx\r\n").keys, vec![b"c2VjcmV0".to_vec()]);
}

#[test]
fn binary_lengths_are_checked_per_opcode_as_memcached_does() {
    let refused_with = |p: &[u8]| match binary_frame(p) {
        Frame::Refused(r) => (u16::from_be_bytes([r.answer[6], r.answer[7]]), r.close),
        Frame::Request(r) => panic!("forwarded {r:?}"),
    };
    // a get whose body carries more than its key: memcached closes
    assert_eq!(refused_with(&binary_packet(REQUEST_MAGIC, 0x00, b"k", &[], b"get x", 0)), (0x0004, true));
    // a set without its 8 bytes of extras
    assert_eq!(refused_with(&binary_packet(REQUEST_MAGIC, 0x01, b"k", &[], b"v", 0)), (0x0004, true));
    // stat and touch read only their key (and extras): the rest would be new packets
    let hidden = binary_packet(REQUEST_MAGIC, 0x04, b"secret", &[], &[], 0);
    assert_eq!(refused_with(&binary_packet(REQUEST_MAGIC, 0x10, b"", &[], &hidden, 0)), (0x0004, true));
    assert_eq!(refused_with(&binary_packet(REQUEST_MAGIC, 0x1c, b"k", &[0; 4], &hidden, 0)), (0x0004, true));
    // keys memcached will not take
    assert_eq!(refused_with(&binary_packet(REQUEST_MAGIC, 0x00, &[b'k'; 251], &[], &[], 0)), (0x0004, true));
    // an unknown opcode is answered; with key or extras memcached would eat
    // the next packet's bytes, so weir closes
    assert_eq!(refused_with(&binary_packet(REQUEST_MAGIC, 0x1b, b"", &[], &[], 0)), (0x0081, false));
    assert_eq!(refused_with(&binary_packet(REQUEST_MAGIC, 0x1b, b"", &[0; 4], &[], 0)), (0x0081, true));
    // valid shapes go through
    for p in [
        binary_packet(REQUEST_MAGIC, 0x10, b"items", &[], &[], 0),
        binary_packet(REQUEST_MAGIC, 0x1d, b"k", &[0; 4], &[], 0),
        binary_packet(REQUEST_MAGIC, 0x05, b"k", &[0; 20], &[], 0),
        binary_packet(REQUEST_MAGIC, 0x0e, b"k", &[], b"more", 0),
        binary_packet(REQUEST_MAGIC, 0x08, b"", &[0; 4], &[], 0),
    ] {
        assert!(matches!(binary_frame(&p), Frame::Request(_)), "{p:?}");
    }
    // only 0x80 negotiates the binary protocol, as in memcached
    assert_eq!(Protocol::of_first_byte(0x81), Protocol::Text);
}
