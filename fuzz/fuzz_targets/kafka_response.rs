//! Kafka broker responses weir rewrites: ApiVersions, narrowed to the
//! versions weir can judge.
//!
//! Input: two bytes of request version, then a whole response frame (length
//! prefix included) as the broker sent it. A narrowed answer must be a
//! well-formed frame that decodes again, with no empty version range for an API
//! weir knows, and
//! narrowing it again changes nothing.
#![no_main]

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, ResponseHeader};
use kafka_protocol::protocol::{Decodable, HeaderVersion};
use libfuzzer_sys::fuzz_target;
use weir::engines::kafka::codec;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // ApiVersions v0..=4 exist; other versions are tried too, as a client may send them
    let version = i16::from_be_bytes([data[0], data[1]]) % 8;
    let frame = &data[2..];
    let Some(narrowed) = codec::narrow_api_versions(frame, version) else { return };
    let mut buf = Bytes::copy_from_slice(&narrowed);
    assert_eq!(buf.get_i32() as usize, buf.len(), "the narrowed length prefix is wrong");
    let header_version = ApiVersionsResponse::header_version(version);
    ResponseHeader::decode(&mut buf, header_version).expect("the narrowed header decodes");
    let response = ApiVersionsResponse::decode(&mut buf, version).expect("the narrowed body decodes");
    // APIs weir does not know pass as the broker sent them
    for api in response.api_keys.iter().filter(|a| ApiKey::try_from(a.api_key).is_ok()) {
        assert!(api.min_version <= api.max_version, "an empty version range is advertised");
    }
    let again = codec::narrow_api_versions(&narrowed, version).expect("a narrowed answer narrows again");
    assert_eq!(again, narrowed, "narrowing is not idempotent");
});
