//! The filter SDK's request-head parser against the host's encoder.
//!
//! A filter reads the head the host wrote (`METHOD path authority scheme`,
//! then `name: value` lines); what it reads must be what the host judged
//! and will forward. Input, read as structure: a method, a request target
//! (normalized as the HTTP engine does), an authority, the scheme, and
//! headers; only values the HTTP engine lets through (`check_headers`) are
//! kept, and the head is encoded by the host's own functions. The SDK must
//! read back every field and every header, in order, exactly. The raw input
//! is also parsed as a head, which must never panic.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use weir::config::EscapedSlashes;
use weir_filter_sdk::http::Request;

fuzz_target!(|data: &[u8]| {
    // any bytes as a head: no panic
    let raw = Request { id: 0, head: data.to_vec() };
    let _ = (raw.parts(), raw.path_only(), raw.header("x"), raw.headers().count());

    let Ok(Some(head)) = host_head(&mut Unstructured::new(data)) else { return };
    let (method, path, authority, scheme, headers) = head;
    let mut encoded = weir::wasm::request_head_line(&method, &path, &authority, scheme, 0);
    weir::fuzzing::write_headers(&mut encoded, &headers);

    let request = Request { id: 1, head: encoded };
    let parts = request.parts();
    assert_eq!((parts.method, parts.path, parts.authority, parts.scheme), (&*method, &*path, &*authority, scheme));
    assert_eq!(request.path_only(), path.split_once('?').map_or(&*path, |(p, _)| p));
    let sent: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(n, _)| **n != http::header::HOST)
        .map(|(n, v)| (n.as_str(), std::str::from_utf8(v.as_bytes()).unwrap()))
        .collect();
    let read: Vec<(&str, &str)> = request.headers().collect();
    assert_eq!(read, sent, "the filter reads other headers than the host sent");
    for (name, _) in &sent {
        let first = std::str::from_utf8(headers.get(*name).unwrap().as_bytes()).unwrap();
        assert_eq!(request.header(name), Some(first), "header({name:?}) is not its first value");
    }
});

type Head = (String, String, String, &'static str, HeaderMap);

/// A head as the HTTP engine would hand it to a filter, or `None` when the
/// engine would refuse the request before any filter sees it.
fn host_head(u: &mut Unstructured) -> Result<Option<Head>> {
    let Ok(method) = http::Method::from_bytes(u.arbitrary::<&[u8]>()?) else { return Ok(None) };
    let Ok(target) = http::uri::PathAndQuery::try_from(u.arbitrary::<&[u8]>()?) else { return Ok(None) };
    let Ok(path) = weir::engines::http::normalize_path(
        target.path(),
        EscapedSlashes::Reject,
        weir::config::AmbiguousPaths::Reject,
    ) else {
        return Ok(None);
    };
    let path = match target.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let authority: &str = u.arbitrary()?;
    if !authority.is_empty()
        && (http::uri::Authority::try_from(authority).is_err()
            || authority.bytes().any(|b| b.is_ascii_whitespace() || b == b'/' || b == b'@'))
    {
        return Ok(None);
    }
    let scheme = if u.arbitrary()? { "https" } else { "http" };
    let mut headers = HeaderMap::new();
    for _ in 0..u.int_in_range(0..=8)? {
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(u.arbitrary::<&[u8]>()?), HeaderValue::from_bytes(u.arbitrary::<&[u8]>()?))
        else {
            continue;
        };
        headers.append(name, value);
    }
    if weir::fuzzing::check_headers(&headers).is_err() {
        return Ok(None);
    }
    Ok(Some((method.to_string(), path, authority.to_string(), scheme, headers)))
}
