//! Kafka request frames from clients.
//!
//! Input: a request frame without its length prefix (what the Kafka engine
//! hands `codec::parse_request`). A parsed request is judged and may be
//! refused: its refusal must be a well-formed response of the request's own
//! API and version (length prefix right, the request's correlation id, a
//! body the Kafka client can decode). Nothing may panic or allocate by
//! declaration.
#![no_main]

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{ApiKey, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Decodable;
use libfuzzer_sys::fuzz_target;
use weir::engines::kafka::codec::{self, Topics};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = codec::parse_request(Bytes::copy_from_slice(data)) else { return };
    if let Topics::Named(names) = &request.topics {
        for (i, name) in names.iter().enumerate() {
            assert!(!name.is_empty(), "an empty topic name is judged as a topic");
            assert!(!names[..i].contains(name), "topic {name:?} listed twice");
        }
    }
    let _ = codec::api_name(request.api_key);
    let code = request.default_error_code();
    let Some(response) = request.refusal(code) else { return };
    let mut frame = response.freeze();
    assert!(frame.len() >= 8, "a refusal shorter than its header");
    let length = frame.get_i32();
    assert_eq!(length as usize, frame.len(), "the refusal's length prefix is wrong");
    let key = ApiKey::try_from(request.api_key).expect("only known APIs are refused with a response");
    let header = ResponseHeader::decode(&mut frame, key.response_header_version(request.api_version))
        .expect("the refusal's header decodes");
    assert_eq!(header.correlation_id, request.correlation_id, "the refusal answers another request");
    ResponseKind::decode(key, &mut frame, request.api_version).expect("the refusal's body decodes");
    assert!(frame.is_empty(), "bytes after the refusal's body");
});
