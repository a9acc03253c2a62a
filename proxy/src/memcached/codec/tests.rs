use super::*;

fn text(buf: &[u8]) -> Request {
    parse_request(Protocol::Text, buf).unwrap().expect("complete")
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
fn broken_text_requests_are_errors() {
    let long = vec![b'g'; MAX_LINE + 2];
    assert!(parse_request(Protocol::Text, &long).unwrap_err().0.contains("longer than"));
    assert!(parse_request(Protocol::Text, b"set k 0 0 x\r\n").unwrap_err().0.contains("not a number"));
    assert!(parse_request(Protocol::Text, b"set k 0 0 2\r\nabcd\r\n").unwrap_err().0.contains("bad data chunk"));
    let huge = format!("set k 0 0 {}\r\n", MAX_VALUE + 1);
    assert!(parse_request(Protocol::Text, huge.as_bytes()).unwrap_err().0.contains("at most"));
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
    let r = parse_request(Protocol::Binary, &set).unwrap().unwrap();
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
    assert!(parse_request(Protocol::Binary, &short_body).unwrap_err().0.contains("longer than the body"));
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
    let text_barrier = parse_request(Protocol::Text, &barrier(Protocol::Text)).unwrap().unwrap();
    assert_eq!(text_barrier.reply, Reply::Flush);
    let bin = parse_request(Protocol::Binary, &barrier(Protocol::Binary)).unwrap().unwrap();
    assert_eq!((bin.reply, bin.opaque), (Reply::Flush, BARRIER_OPAQUE));
}
