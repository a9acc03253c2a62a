//! memcached replies from the server, text and binary.
//!
//! Input: one byte choosing the protocol and the request kind the replies
//! answer, then the server's bytes. Reply units are taken off the front as
//! the memcached engine does; each covers at least one byte and no more than
//! was received, reads the same from exactly its own bytes, and any shorter
//! prefix of it is incomplete.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::engines::memcached::codec::{self, Protocol, Reply};

const REPLIES: [Reply; 6] = [Reply::One, Reply::Values, Reply::Lines, Reply::Flush, Reply::Quiet, Reply::Close];

fuzz_target!(|data: &[u8]| {
    let Some((&choice, mut rest)) = data.split_first() else { return };
    let protocol = if choice & 1 == 0 { Protocol::Text } else { Protocol::Binary };
    let reply = REPLIES[usize::from(choice >> 1) % REPLIES.len()];
    while !rest.is_empty() {
        let unit = match codec::parse_reply_unit(protocol, rest) {
            Ok(Some(u)) => u,
            Ok(None) | Err(_) => return,
        };
        assert!(unit.len > 0 && unit.len <= rest.len(), "reply length {} of {}", unit.len, rest.len());
        let own = &rest[..unit.len];
        let again = codec::parse_reply_unit(protocol, own);
        assert!(matches!(&again, Ok(Some(u)) if *u == unit), "a reply reads differently from its own bytes: {again:?}");
        for cut in [0, 1, unit.len / 2, unit.len - 1] {
            if cut < unit.len {
                let prefix = codec::parse_reply_unit(protocol, &own[..cut]);
                assert_eq!(prefix, Ok(None), "a {cut}-byte prefix of a {}-byte reply is not incomplete", unit.len);
            }
        }
        let _ = codec::ends_reply(protocol, reply, &unit);
        let _ = codec::belongs_to(protocol, reply, unit.opcode, unit.opaque, &unit);
        rest = &rest[unit.len..];
    }
});
