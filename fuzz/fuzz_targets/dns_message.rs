//! DNS messages from clients (queries) and from the resolver (answers).
//!
//! Input: a UDP payload. It goes the DNS engine's way: hickory parses it;
//! bytes that do not parse get a FORMERR built from their header; a query
//! gets the answers weir writes itself (REFUSED, NXDOMAIN, SERVFAIL), which
//! must parse back as answers to that very query; as a resolver answer it
//! is read for the flow record and `toFQDNs` learning. Nothing may panic.
#![no_main]

use hickory_proto::op::{Message, ResponseCode};
use libfuzzer_sys::fuzz_target;
use weir::engines::dns::message;

fuzz_target!(|data: &[u8]| {
    let parsed = match Message::from_vec(data) {
        Ok(m) => m,
        Err(_) => {
            if let Some(header) = message::header_of(data) {
                let formerr = message::format_error(&header);
                let back = Message::from_vec(&formerr).expect("weir's FORMERR parses");
                assert_eq!(back.id(), header.id(), "FORMERR carries the client's id");
            }
            return;
        }
    };
    for q in parsed.queries() {
        let name = message::name_text(q.name());
        assert!(!name.is_empty());
        message::type_text(q.query_type());
    }
    if message::not_a_query(&parsed).is_none() {
        for rcode in [ResponseCode::Refused, ResponseCode::NXDomain, ResponseCode::ServFail] {
            let own = message::own_answer(&parsed, rcode);
            let answer = Message::from_vec(&own).expect("weir's own answer parses");
            assert!(message::answers(&parsed, &answer), "weir's own {rcode} does not answer the query it answers");
        }
    }
    // the same bytes as a resolver's answer to themselves
    message::answers(&parsed, &parsed);
    for (name, addresses) in message::learned_addresses(&parsed) {
        assert!(!name.is_empty() && !addresses.is_empty());
    }
    message::answer_records(&parsed);
});
