//! Inputs the fuzz targets (`fuzz/`, docs/fuzzing.md) found, each pinned
//! here with the property it broke. Open findings are not here: they are in
//! docs/fuzzing.md with their inputs in `fuzz/corpus/<target>/`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// dns_message: an OPT record in the answer section. hickory parses it,
/// but its `Display` fails, and `to_string` in the flow record panicked.
#[test]
fn dns_answer_with_an_opt_record_is_shown_without_panicking() {
    let bytes = b"\x00\x02\x01\x00\x00\x01\x00\x01\x00\x00\x00\x00\x01\x00\x00\x09\
                  \x00\x01\x65\x00\x00\x29\x04\xd0\x00\x02\x04\xd0\x00\x02\x01\x01";
    let answer = hickory_proto::op::Message::from_vec(bytes).expect("hickory parses it");
    let records = crate::engines::dns::message::answer_records(&answer);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].rtype, "OPT");
}

/// A client that sends its bytes in the given reads.
struct Reads(std::collections::VecDeque<&'static [u8]>);

impl AsyncRead for Reads {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(read) = self.0.pop_front() {
            buf.put_slice(read);
        }
        Poll::Ready(Ok(()))
    }
}

/// How many requests the framing guard rejects from a client sending `reads`.
fn guard_rejections(reads: &[&'static [u8]]) -> usize {
    let mut rejected = 0;
    let mut guard = crate::engines::http::framing::FramingGuard::new(
        Reads(reads.iter().copied().collect()),
        crate::engines::http::framing::Detect::Auto,
        |_| rejected += 1,
    );
    let mut cx = Context::from_waker(std::task::Waker::noop());
    loop {
        let mut space = [0u8; 4096];
        let mut buf = ReadBuf::new(&mut space);
        let Poll::Ready(Ok(())) = Pin::new(&mut guard).poll_read(&mut cx, &mut buf) else { panic!("not ready") };
        if buf.filled().is_empty() {
            break;
        }
    }
    drop(guard);
    rejected
}

const CL_AND_TE: &[u8] =
    b"OST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

/// http_framing: a request whose first read is one byte, `P`, is taken for
/// the start of the HTTP/2 preface (`PRI * HTTP/2.0`) and the guard stops
/// inspecting the connection, so a later Content-Length + Transfer-Encoding
/// request reaches hyper unpoisoned (issue 22, class 6: "a request split in
/// its first bytes"; a first read `PRI /a HTTP/1.1` did the same). Fixed by
/// the guard that reads the stream as hyper does (the preface is decided on
/// all 24 bytes).
#[test]
fn a_first_read_of_one_byte_does_not_switch_the_framing_guard_off() {
    assert_eq!(guard_rejections(&[b"P", CL_AND_TE]), 1, "the CL+TE request is rejected");
}

/// http_framing: empty lines before a request line (which hyper, like
/// httparse, skips) make the guard take `\r\n\r\n` for a whole head it
/// cannot parse, and it stops inspecting: the CL+TE request behind them
/// reaches hyper unpoisoned. Fixed by the same rewrite (httparse skips them).
#[test]
fn empty_lines_before_a_request_do_not_switch_the_framing_guard_off() {
    assert_eq!(guard_rejections(&[b"\r\n\r\nP", CL_AND_TE]), 1, "the CL+TE request is rejected");
}

/// kafka_request: a 23-byte Metadata v1 request declaring 721 million topics.
/// kafka-protocol 0.18 reserves for all of them before decoding one
/// (`Vec::with_capacity(n)`, 46 GB): the allocation failed and the process
/// aborted, every connection with it. Fixed by weir's allocator, which serves
/// such a reservation as address space (`reservations`): the decoder runs out
/// of bytes and the request is a parse error (the Kafka engine closes that
/// one connection).
#[test]
fn a_kafka_request_declaring_a_huge_array_is_a_parse_error() {
    let frame = include_bytes!("../../fuzz/corpus/kafka_request/huge-metadata-array");
    let error = crate::engines::kafka::codec::parse_request(bytes::Bytes::from_static(frame)).unwrap_err();
    assert!(error.to_string().starts_with("Metadata v1 body:"), "{error}");
}

/// kafka_response: an ApiVersions answer declaring a huge `api_keys` array,
/// the same crate code from `narrow_api_versions`: a broker (or anything
/// answering on its address) aborted weir. Fixed likewise; the answer is not
/// decodable, so it is passed on as the broker sent it.
#[test]
fn a_kafka_response_declaring_a_huge_array_is_left_as_it_is() {
    let input = include_bytes!("../../fuzz/corpus/kafka_response/huge-api-versions-array");
    let version = i16::from_be_bytes([input[0], input[1]]) % 8;
    assert!(crate::engines::kafka::codec::narrow_api_versions(&input[2..], version).is_none());
}

/// An ApiVersions answer with an unknown tagged field numbered past
/// i32::MAX decodes, but kafka-protocol encodes it without that field, so
/// the narrowed frame did not decode again (fuzz/corpus/kafka_response/
/// negative-tagged-field, found by CI's fuzzing). An answer that does not read
/// back as the one narrowed is passed on as the broker sent it.
#[test]
fn a_kafka_response_that_does_not_encode_back_is_left_as_it_is() {
    let input = include_bytes!("../../fuzz/corpus/kafka_response/negative-tagged-field");
    let version = i16::from_be_bytes([input[0], input[1]]) % 8;
    assert!(crate::engines::kafka::codec::narrow_api_versions(&input[2..], version).is_none());
    // a well-formed answer is still narrowed
    let seed = include_bytes!("../../fuzz/corpus/kafka_response/seed-apiversions-v3");
    let version = i16::from_be_bytes([seed[0], seed[1]]) % 8;
    assert!(crate::engines::kafka::codec::narrow_api_versions(&seed[2..], version).is_some());
}
