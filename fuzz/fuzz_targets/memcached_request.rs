//! memcached requests from clients: text, meta and binary.
//!
//! Input: the bytes of a connection. The first byte picks the protocol, as
//! memcached does; requests are then taken off the front one by one, as the
//! memcached engine does. Properties:
//! - a request covers at least one byte and no more than was received;
//! - framing depends on the request's own bytes only: the same request is
//!   read from exactly its bytes, and any shorter prefix of them is
//!   "incomplete" (never another request, never an error), so a client
//!   that sends slowly is read as one that sends at once;
//! - keys are bytes of the request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::memcached::codec::{self, Protocol};

fuzz_target!(|data: &[u8]| {
    let Some(&first) = data.first() else { return };
    let protocol = Protocol::of_first_byte(first);
    let mut rest = data;
    while !rest.is_empty() {
        let request = match codec::parse_request(protocol, rest) {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return,
        };
        assert!(request.len > 0 && request.len <= rest.len(), "request length {} of {}", request.len, rest.len());
        let own = &rest[..request.len];
        assert_eq!(
            codec::parse_request(protocol, own).as_ref(),
            Ok(&Some(request.clone())),
            "a request reads differently from its own bytes"
        );
        // the prefixes a slow client would leave in the buffer
        for cut in [0, 1, request.len / 2, request.len - 1] {
            if cut < request.len {
                assert_eq!(
                    codec::parse_request(protocol, &own[..cut]),
                    Ok(None),
                    "a prefix of {cut} of {} bytes is not incomplete",
                    request.len
                );
            }
        }
        for key in &request.keys {
            assert!(own.windows(key.len().max(1)).any(|w| w == &key[..]) || key.is_empty(), "a key not in the request");
        }
        let _ = (request.refusal(), request.keys_lossy());
        rest = &rest[request.len..];
    }
});
