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
//! - keys are bytes of the request (but base64 meta keys, judged decoded).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::engines::memcached::codec::{self, Frame, Protocol};

fuzz_target!(|data: &[u8]| {
    let Some(&first) = data.first() else { return };
    let protocol = Protocol::of_first_byte(first);
    let mut rest = data;
    while !rest.is_empty() {
        let frame = match codec::parse_request(protocol, rest) {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => return,
        };
        // a refusal covers the bytes memcached would swallow with its error
        let (len, close) = match &frame {
            Frame::Request(r) => (r.len, false),
            Frame::Refused(r) => (r.len, r.close),
        };
        assert!(len > 0, "a frame of no bytes");
        if let Frame::Refused(_) = &frame
            && len > rest.len()
        {
            // the rest of a refused request is swallowed as it arrives
            return;
        }
        assert!(len <= rest.len(), "frame length {len} of {}", rest.len());
        let own = &rest[..len];
        if let Frame::Request(request) = &frame {
            assert!(
                matches!(codec::parse_request(protocol, own), Ok(Some(Frame::Request(ref again))) if again == request),
                "a request reads differently from its own bytes"
            );
            // the prefixes a slow client would leave in the buffer
            for cut in [0, 1, len / 2, len - 1] {
                if cut < len {
                    assert!(
                        matches!(codec::parse_request(protocol, &own[..cut]), Ok(None)),
                        "a prefix of {cut} of {len} bytes is not incomplete"
                    );
                }
            }
            // meta keys with the `b` flag are judged decoded (base64), as
            // memcached uses them: only other keys are bytes of the request
            let decoded = request.protocol == Protocol::Text && request.command.starts_with('m');
            for key in request.keys.iter().filter(|_| !decoded) {
                assert!(
                    own.windows(key.len().max(1)).any(|w| w == &key[..]) || key.is_empty(),
                    "a key not in the request"
                );
            }
            let _ = (request.refusal(), request.keys_lossy());
        }
        if close {
            return;
        }
        rest = &rest[len..];
    }
});
