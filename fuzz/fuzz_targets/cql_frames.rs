//! CQL native protocol: v3/v4 frames, v5 segments (CRC24/CRC32), and the
//! request and response bodies weir reads.
//!
//! Input: one byte of choices (v5 segment framing or plain frames, requests
//! or responses, the read size), then the bytes of a connection. Frames are
//! taken off the stream as the Cassandra engine does, and each body is read
//! (requests: their CQL classified; SUPPORTED: rewritten without
//! compression). Properties:
//! - the read size changes nothing: the same frames, and an error either
//!   way (which error, and how many frames before it, see below);
//! - what weir writes reads back: frames re-framed by weir's `Framer` (v5
//!   segments included) deframe to the same frames, and the rewritten
//!   SUPPORTED is a frame whose body reads.
#![no_main]

use std::future::Future;
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use weir::engines::cassandra::cql;
use weir::engines::cassandra::frame::{self, BatchEntry, Deframer, Framer, HEADER, Header, RequestBody};

fuzz_target!(|data: &[u8]| {
    let Some((&choice, stream)) = data.split_first() else { return };
    let modern = choice & 1 != 0;
    let response = choice & 2 != 0;
    let step = usize::from(choice >> 2) + 1;
    let (frames, error) = deframe(modern, response, stream, stream.len().max(1));
    let (split_frames, split_error) = deframe(modern, response, stream, step);
    assert_eq!(error.is_some(), split_error.is_some(), "the read size decides whether the stream is refused");
    if error.is_none() {
        assert_eq!(frames, split_frames, "the read size changed the frames");
    } else {
        // v5: `Deframer::next` unwraps every segment that has arrived before
        // it looks at the frames, so a bad segment in the same read as good
        // ones is refused before their frames are served, and with another
        // error (docs/fuzzing.md). The connection closes either way; the
        // frames that were served must agree.
        let served = frames.len().min(split_frames.len());
        assert_eq!(frames[..served], split_frames[..served], "the read size changed the frames");
    }

    for f in &frames {
        let header = Header::parse(f);
        let body = &f[HEADER..];
        if response {
            let _ = frame::response_body(header.flags, header.opcode, body);
            if header.opcode == frame::OP_SUPPORTED
                && let Ok(Some(rewritten)) = frame::supported_without_compression(f)
            {
                let again = Header::parse(&rewritten);
                assert_eq!(again.length, rewritten.len() - HEADER, "the rewritten SUPPORTED's length is wrong");
                frame::Reader(&rewritten[HEADER..]).string_multimap().expect("the rewritten SUPPORTED reads");
            }
        } else if let Ok(parsed) = frame::request_body(header.version, header.flags, header.opcode, body) {
            match parsed {
                RequestBody::Query { query, keyspace } | RequestBody::Prepare { query, keyspace } => {
                    cql::classify(query, keyspace);
                }
                RequestBody::Batch { entries, keyspace } => {
                    for e in entries {
                        if let BatchEntry::Query(q) = e {
                            cql::classify(q, keyspace);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    // weir's own framing of these frames reads back as them
    let mut framer = Framer::default();
    for f in &frames {
        framer.push(modern, f);
    }
    let mut written = Vec::new();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let Poll::Ready(flushed) = std::pin::pin!(framer.flush(&mut written)).poll(&mut cx) else {
        panic!("writing to a Vec is never pending");
    };
    flushed.unwrap();
    let (again, error) = deframe(modern, response, &written, written.len().max(1));
    assert_eq!(error, None, "weir's own framing does not deframe");
    assert_eq!(again, frames, "weir's own framing deframes to other frames");
});

/// Every frame of `stream` read `step` bytes at a time, and the error that
/// ended the connection, if any.
fn deframe(modern: bool, response: bool, stream: &[u8], step: usize) -> (Vec<Vec<u8>>, Option<String>) {
    let mut input = Deframer::default();
    let mut frames = Vec::new();
    for chunk in stream.chunks(step) {
        input.raw.extend_from_slice(chunk);
        loop {
            match input.next(modern, response, frame::MAX_BODY) {
                Ok(Some(f)) => frames.push(f.to_vec()),
                Ok(None) => break,
                Err(e) => return (frames, Some(e.0)),
            }
        }
    }
    (frames, None)
}
