//! DNS messages as the proxy needs them, on hickory-proto: read a query,
//! write the answers the proxy gives itself (REFUSED, NXDOMAIN, FORMERR,
//! SERVFAIL), and read what an allowed answer teaches (`toFQDNs`).
//!
//! Answers from the resolver are relayed as received; they are parsed only
//! to learn addresses and for the flow record.

use std::net::IpAddr;

use hickory_proto::ProtoError;
use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// The largest UDP answer the proxy itself writes (RFC 9715's safe size).
const OWN_UDP_PAYLOAD: u16 = 1232;

/// How the proxy writes a name: lower case, no trailing dot, `.` for the root.
pub fn name_text(name: &Name) -> String {
    let text = weir_fqdn_match::normalize(&name.to_ascii());
    if text.is_empty() { ".".into() } else { text }
}

pub fn type_text(qtype: RecordType) -> String {
    qtype.to_string()
}

/// A query that could not be parsed: the header, if there is one, so a
/// FORMERR can carry the client's id.
pub fn header_of(bytes: &[u8]) -> Option<Header> {
    Header::read(&mut BinDecoder::new(bytes)).ok()
}

/// An answer without records, for a query the proxy answers itself.
pub fn own_answer(query: &Message, rcode: ResponseCode) -> Vec<u8> {
    let mut answer = Message::new();
    answer
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(query.checking_disabled())
        .set_response_code(rcode);
    answer.add_queries(query.queries().iter().cloned());
    // a client that speaks EDNS expects an OPT record back (RFC 6891 7)
    if query.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(OWN_UDP_PAYLOAD);
        answer.set_edns(edns);
    }
    answer.to_vec().unwrap_or_else(|_| header_only(query.header(), rcode))
}

/// FORMERR for bytes that are not a DNS query (the id and opcode are kept).
pub fn format_error(header: &Header) -> Vec<u8> {
    header_only(header, ResponseCode::FormErr)
}

fn header_only(header: &Header, rcode: ResponseCode) -> Vec<u8> {
    let mut answer = Message::new();
    answer
        .set_id(header.id())
        .set_message_type(MessageType::Response)
        .set_op_code(header.op_code())
        .set_recursion_desired(header.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(rcode);
    answer.to_vec().expect("a header alone always encodes")
}

/// Read a message, and say what in it the proxy would relay without judging
/// it (`Some(why)`: answer FORMERR, forward nothing).
///
/// The proxy judges a query's questions; besides them a query may carry one
/// OPT record (EDNS) and nothing else. Answer or authority records, other
/// additional records (TSIG, SIG(0), a second OPT) and bytes after the last
/// record the header counts are refused rather than relayed for a resolver
/// to read in its own way. unbound answers FORMERR to all of these but the
/// trailing bytes, which it ignores (`worker_check_request`,
/// `parse_edns_from_query_pkt`).
pub fn read_query(bytes: &[u8]) -> Result<(Message, Option<String>), ProtoError> {
    let mut decoder = BinDecoder::new(bytes);
    let message = Message::read(&mut decoder)?;
    let unjudged = unjudged_content(bytes, &message, decoder.index());
    Ok((message, unjudged))
}

fn unjudged_content(bytes: &[u8], message: &Message, end: usize) -> Option<String> {
    // the header's counts as sent (hickory moves OPT and signatures out of
    // the additional records it keeps)
    let header = message.header();
    let (answers, authority, additional) =
        (header.answer_count(), header.name_server_count(), header.additional_count());
    if answers > 0 {
        return Some(format!("a query with {answers} answer record(s)"));
    }
    if authority > 0 {
        return Some(format!("a query with {authority} authority record(s)"));
    }
    if additional > 1 {
        return Some(format!("a query with {additional} additional records (one OPT at most)"));
    }
    // (hickory refuses an OPT record whose owner is not the root)
    if additional == 1 && message.extensions().is_none() {
        return Some("a query whose additional record is not an OPT record".into());
    }
    if end < bytes.len() {
        return Some(format!("{} byte(s) after the end of the query", bytes.len() - end));
    }
    None
}

/// Why a message is not a query the proxy passes on.
pub fn not_a_query(message: &Message) -> Option<String> {
    if message.message_type() != MessageType::Query {
        return Some("a response, not a query".into());
    }
    if message.op_code() != OpCode::Query {
        return Some(format!("opcode {:?} is not proxied (only QUERY)", message.op_code()));
    }
    if message.queries().is_empty() {
        return Some("no question".into());
    }
    None
}

/// Whether `answer` answers `query`: same id and the same questions (names
/// compared without case). Anything else is ignored, as a resolver would:
/// it is late, or spoofed.
pub fn answers(query: &Message, answer: &Message) -> bool {
    answer.id() == query.id()
        && answer.message_type() == MessageType::Response
        && answer.queries().len() == query.queries().len()
        && answer.queries().iter().zip(query.queries()).all(|(a, q)| {
            a.query_type() == q.query_type()
                && a.query_class() == q.query_class()
                // Name's equality ignores case (resolvers may echo 0x20 mixing)
                && a.name() == q.name()
        })
}

/// One record of an answer, as flows show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerRecord {
    pub name: String,
    pub rtype: String,
    pub data: String,
    pub ttl: u32,
}

/// What an answer teaches: for each question name, the A and AAAA addresses
/// reached from it by following CNAMEs inside the answer section, with TTLs
/// (the smallest along the chain: the address is only as fresh as every link).
pub fn learned_addresses(answer: &Message) -> Vec<(String, Vec<(IpAddr, u32)>)> {
    let records = answer.answers();
    let mut out = Vec::new();
    for question in answer.queries() {
        let mut name = question.name().to_lowercase();
        let mut chain_ttl = u32::MAX;
        let mut addresses = Vec::new();
        // a chain longer than the records is a loop
        for _ in 0..=records.len() {
            let mut next = None;
            for record in records.iter().filter(|r| r.name().to_lowercase() == name) {
                match record.data() {
                    RData::A(a) => addresses.push((IpAddr::V4(a.0), record.ttl().min(chain_ttl))),
                    RData::AAAA(a) => addresses.push((IpAddr::V6(a.0), record.ttl().min(chain_ttl))),
                    RData::CNAME(target) if next.is_none() => {
                        next = Some((target.0.to_lowercase(), record.ttl()));
                    }
                    _ => {}
                }
            }
            match next {
                Some((target, ttl)) if addresses.is_empty() => {
                    name = target;
                    chain_ttl = chain_ttl.min(ttl);
                }
                _ => break,
            }
        }
        if !addresses.is_empty() {
            out.push((name_text(question.name()), addresses));
        }
    }
    out
}

/// The answer section, for flows.
pub fn answer_records(answer: &Message) -> Vec<AnswerRecord> {
    answer
        .answers()
        .iter()
        .map(|r| AnswerRecord {
            name: name_text(r.name()),
            rtype: r.record_type().to_string(),
            data: record_data_text(r.data()),
            ttl: r.ttl(),
        })
        .collect()
}

/// A record's data as text. hickory's `Display` fails for some record data
/// it decoded (found by fuzzing, see docs/fuzzing.md), and `to_string`
/// panics on that: an answer must never take the DNS engine down.
fn record_data_text(data: &RData) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    match write!(text, "{data}") {
        Ok(()) => text,
        Err(_) => format!("({} data weir cannot show)", data.record_type()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME};
    use hickory_proto::rr::{DNSClass, Record};
    use std::str::FromStr;

    fn query(name: &str, qtype: RecordType, edns: bool) -> Message {
        let mut m = Message::new();
        m.set_id(4242).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
        if edns {
            m.set_edns(Edns::new());
        }
        m
    }

    #[test]
    fn own_answers_keep_id_question_and_edns() {
        let q = query("Api.Example.com.", RecordType::A, true);
        let answer = Message::from_vec(&own_answer(&q, ResponseCode::Refused)).unwrap();
        assert_eq!(answer.id(), 4242);
        assert_eq!(answer.message_type(), MessageType::Response);
        assert_eq!(answer.response_code(), ResponseCode::Refused);
        assert_eq!(answer.queries(), q.queries());
        assert!(answer.recursion_desired() && answer.recursion_available());
        assert!(answer.extensions().is_some(), "EDNS in, EDNS out");
        assert!(answer.answers().is_empty());
        let plain =
            Message::from_vec(&own_answer(&query("a.b.", RecordType::AAAA, false), ResponseCode::NXDomain)).unwrap();
        assert!(plain.extensions().is_none());
        assert_eq!(plain.response_code(), ResponseCode::NXDomain);
    }

    #[test]
    fn garbage_gets_formerr_with_its_id_when_it_has_a_header() {
        let mut bytes = query("a.b.", RecordType::A, false).to_vec().unwrap();
        bytes.truncate(15); // header plus a broken question
        assert!(Message::from_vec(&bytes).is_err());
        let header = header_of(&bytes).unwrap();
        let answer = Message::from_vec(&format_error(&header)).unwrap();
        assert_eq!((answer.id(), answer.response_code()), (4242, ResponseCode::FormErr));
        assert!(header_of(&[1, 2, 3]).is_none());
    }

    /// `bytes` with its header's count at `at` (6 answers, 8 authority, 10
    /// additional) set to `count`.
    fn with_count(mut bytes: Vec<u8>, at: usize, count: u16) -> Vec<u8> {
        bytes[at..at + 2].copy_from_slice(&count.to_be_bytes());
        bytes
    }

    #[test]
    fn only_questions_and_one_opt_record_are_relayed() {
        let plain = query("www.example.com.", RecordType::A, false).to_vec().unwrap();
        let edns = query("www.example.com.", RecordType::A, true).to_vec().unwrap();
        for ok in [&plain, &edns] {
            let (message, unjudged) = read_query(ok).unwrap();
            assert_eq!(unjudged, None);
            assert_eq!(message.queries().len(), 1);
        }
        let unjudged = |bytes: &[u8]| read_query(bytes).unwrap().1.unwrap_or_default();

        // a second question behind QDCOUNT=1, and plain garbage, after the message
        let mut second = plain.clone();
        second.extend_from_slice(&query("secret.example.org.", RecordType::A, false).to_vec().unwrap()[12..]);
        assert_eq!(unjudged(&second), "24 byte(s) after the end of the query");
        let mut garbage = edns.clone();
        garbage.extend_from_slice(b"\xffjunk");
        assert!(unjudged(&garbage).contains("after the end"), "{}", unjudged(&garbage));

        // records of a kind a query does not carry
        let record =
            Record::from_rdata(Name::from_str("secret.example.org.").unwrap(), 60, RData::A(A::new(1, 2, 3, 4)));
        let mut with_answer = query("www.example.com.", RecordType::A, false);
        with_answer.add_answer(record.clone());
        assert!(unjudged(&with_answer.to_vec().unwrap()).contains("1 answer record"));
        let mut with_authority = query("www.example.com.", RecordType::A, false);
        with_authority.add_name_server(record.clone());
        assert!(unjudged(&with_authority.to_vec().unwrap()).contains("1 authority record"));
        let mut with_additional = query("www.example.com.", RecordType::A, false);
        with_additional.add_additional(record.clone());
        assert!(unjudged(&with_additional.to_vec().unwrap()).contains("not an OPT record"));
        let mut two = query("www.example.com.", RecordType::A, true);
        two.add_additional(record);
        assert!(unjudged(&two.to_vec().unwrap()).contains("2 additional records"));

        // an OPT record owned by another name than the root
        let mut owned = plain.clone();
        owned = with_count(owned, 10, 1);
        owned.extend_from_slice(&[1, b'x', 0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
        assert!(read_query(&owned).is_err(), "malformed: FORMERR, as unbound answers");
        // the same record with the root as its owner is fine
        let mut root = with_count(plain.clone(), 10, 1);
        root.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
        assert_eq!(read_query(&root).unwrap().1, None);
    }

    #[test]
    fn responses_and_other_opcodes_are_not_queries() {
        let mut m = query("a.b.", RecordType::A, false);
        assert_eq!(not_a_query(&m), None);
        m.set_message_type(MessageType::Response);
        assert!(not_a_query(&m).unwrap().contains("response"));
        let mut m = query("a.b.", RecordType::A, false);
        m.set_op_code(OpCode::Update);
        assert!(not_a_query(&m).unwrap().contains("Update"));
        assert!(not_a_query(&Message::new()).unwrap().contains("no question"));
    }

    #[test]
    fn addresses_are_learned_through_cname_chains_with_the_shortest_ttl() {
        let q = query("www.Example.com.", RecordType::A, false);
        let mut answer = q.clone();
        answer.set_message_type(MessageType::Response);
        let name = |n: &str| Name::from_str(n).unwrap();
        let mut cname = Record::from_rdata(name("www.example.com."), 30, RData::CNAME(CNAME(name("edge.cdn.net."))));
        cname.set_dns_class(DNSClass::IN);
        answer.add_answer(cname);
        answer.add_answer(Record::from_rdata(name("edge.cdn.net."), 300, RData::A(A::new(192, 0, 2, 7))));
        answer.add_answer(Record::from_rdata(
            name("edge.cdn.net."),
            20,
            RData::AAAA(AAAA::from_str("2001:db8::7").unwrap()),
        ));
        // an unrelated record does not teach anything
        answer.add_answer(Record::from_rdata(name("evil.example."), 300, RData::A(A::new(203, 0, 113, 1))));
        assert!(answers(&q, &answer));
        let learned = learned_addresses(&answer);
        assert_eq!(learned.len(), 1);
        assert_eq!(learned[0].0, "www.example.com");
        assert_eq!(learned[0].1, vec![("192.0.2.7".parse().unwrap(), 30), ("2001:db8::7".parse().unwrap(), 20)]);

        let mut other = answer.clone();
        other.set_id(1);
        assert!(!answers(&q, &other), "another id is not our answer");
    }

    #[test]
    fn a_cname_loop_ends() {
        let q = query("a.example.", RecordType::A, false);
        let mut answer = q.clone();
        answer.set_message_type(MessageType::Response);
        let name = |n: &str| Name::from_str(n).unwrap();
        answer.add_answer(Record::from_rdata(name("a.example."), 5, RData::CNAME(CNAME(name("b.example.")))));
        answer.add_answer(Record::from_rdata(name("b.example."), 5, RData::CNAME(CNAME(name("a.example.")))));
        assert!(learned_addresses(&answer).is_empty());
    }
}
