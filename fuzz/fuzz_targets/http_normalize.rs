//! Path normalization: the path rules are matched against is the path the
//! upstream receives.
//!
//! Input: a request target as a client sends it. It is read as hyper reads
//! it (`http::Uri`), normalized under each `escapedSlashes` choice, and the
//! result checked:
//! - canonical: absolute, no empty, `.` or `..` segments, no
//!   percent-encoded unreserved character, every escape upper-case;
//! - no encoded slash or backslash unless the listener keeps them;
//! - idempotent: normalizing the result again changes nothing;
//! - forwarded as judged: the upstream URI weir builds from it (the HTTP
//!   engine's `Uri::builder().path_and_query(..)`) carries exactly that path
//!   and the query as received.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::config::{AmbiguousPaths, EscapedSlashes};
use weir::engines::http::normalize_path;

fuzz_target!(|data: &[u8]| {
    let Ok(uri) = http::Uri::try_from(data) else { return };
    let (path, query) = (uri.path(), uri.query());
    let modes = [EscapedSlashes::Reject, EscapedSlashes::Keep, EscapedSlashes::Unescape]
        .into_iter()
        .flat_map(|e| [(e, AmbiguousPaths::Reject), (e, AmbiguousPaths::Allow)]);
    for (mode, ambiguous) in modes {
        let Ok(normalized) = normalize_path(path, mode, ambiguous) else { continue };
        check_canonical(&normalized, mode);
        assert_eq!(
            normalize_path(&normalized, mode, ambiguous).as_deref(),
            Ok(normalized.as_str()),
            "normalization is not idempotent ({mode:?}, {ambiguous:?}) for {path:?}"
        );
        let path_and_query = match query {
            Some(q) => format!("{normalized}?{q}"),
            None => normalized.clone(),
        };
        let upstream = http::Uri::builder()
            .scheme("http")
            .authority("upstream.test")
            .path_and_query(path_and_query.as_str())
            .build()
            .unwrap_or_else(|e| panic!("weir cannot forward its own normalized path {path_and_query:?}: {e}"));
        assert_eq!(upstream.path(), normalized, "the upstream receives another path than the one judged");
        assert_eq!(upstream.query(), query, "the query changed on the way");
    }
});

fn check_canonical(p: &str, mode: EscapedSlashes) {
    assert!(p.starts_with('/'), "not absolute: {p:?}");
    assert!(!p.contains("//"), "an empty segment: {p:?}");
    for segment in p.split('/').skip(1) {
        assert!(segment != "." && segment != "..", "a dot segment in {p:?}");
    }
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let escape = &p[i + 1..i + 3];
            assert!(escape.bytes().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()), "lower-case escape in {p:?}");
            let value = u8::from_str_radix(escape, 16).unwrap();
            assert!(
                !(value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~')),
                "an encoded unreserved character in {p:?}"
            );
            assert_ne!(value, 0, "an encoded NUL in {p:?}");
            if matches!(value, b'/' | b'\\') {
                assert_eq!(mode, EscapedSlashes::Keep, "an encoded slash in {p:?} under {mode:?}");
            }
            i += 3;
        } else {
            assert!(b[i].is_ascii_graphic() && b[i] != b'\\', "byte {:#04x} in {p:?}", b[i]);
            i += 1;
        }
    }
}
