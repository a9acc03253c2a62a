//! The flat header buffer: `name: value\n` lines, names in lower case.
//!
//! The host passes headers as one byte buffer because a list of records costs
//! an allocation per string on every call. These helpers read it without
//! allocating.

/// Iterate `(name, value)` pairs in wire order.
pub fn iter(buf: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    // The host only ever writes valid UTF-8 (header bytes outside visible
    // ASCII are rejected before filters run); fall back to empty on misuse.
    let text = core::str::from_utf8(buf).unwrap_or("");
    text.split_terminator('\n').filter_map(|line| {
        let (name, value) = line.split_once(':')?;
        Some((name, value.strip_prefix(' ').unwrap_or(value)))
    })
}

/// The first value of `name` (compared case-insensitively).
pub fn get<'a>(buf: &'a [u8], name: &str) -> Option<&'a str> {
    iter(buf).find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

/// Every value of `name`, joined with `,` as HTTP allows for repeated headers;
/// `None` if the header is absent.
pub fn get_joined(buf: &[u8], name: &str) -> Option<String> {
    let mut joined: Option<String> = None;
    for (_, value) in iter(buf).filter(|(n, _)| n.eq_ignore_ascii_case(name)) {
        match &mut joined {
            Some(all) => {
                all.push(',');
                all.push_str(value);
            }
            None => joined = Some(value.to_string()),
        }
    }
    joined
}

/// A request head in the host's format (for tests).
pub fn encode_head<'a>(
    method: &str,
    path: &str,
    authority: &str,
    scheme: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<u8> {
    let mut head = format!("{method} {path} {authority} {scheme}\n").into_bytes();
    head.extend(encode(headers));
    head
}

/// Encode pairs in the host's format (for tests and for filters that build buffers).
pub fn encode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut buf = Vec::new();
    for (name, value) in pairs {
        buf.extend(name.bytes().map(|b| b.to_ascii_lowercase()));
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'\n');
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_values_and_joins_repeats() {
        let buf = encode([("X-A", "1"), ("accept", "text/html"), ("x-a", "2"), ("empty", "")]);
        assert_eq!(get(&buf, "x-a"), Some("1"));
        assert_eq!(get(&buf, "ACCEPT"), Some("text/html"));
        assert_eq!(get_joined(&buf, "x-a").as_deref(), Some("1,2"));
        assert_eq!(get(&buf, "empty"), Some(""));
        assert_eq!(get(&buf, "missing"), None);
        assert_eq!(iter(&buf).count(), 4);
    }

    #[test]
    fn request_heads_parse_back() {
        let head = encode_head("GET", "/a?b=c", "example.com:80", "https", [("x-a", "1")]);
        let request = crate::http::Request { id: 1, head };
        assert_eq!(request.method(), "GET");
        assert_eq!(request.path(), "/a?b=c");
        assert_eq!(request.path_only(), "/a");
        assert_eq!(request.authority(), "example.com:80");
        assert_eq!(request.scheme(), "https");
        assert_eq!(request.header("X-A"), Some("1"));
        let empty_authority = crate::http::Request { id: 2, head: encode_head("GET", "/", "", "http", []) };
        assert_eq!((empty_authority.authority(), empty_authority.scheme()), ("", "http"));
    }

    #[test]
    fn value_may_contain_colons() {
        let buf = encode([("referer", "http://a:8080/x")]);
        assert_eq!(get(&buf, "referer"), Some("http://a:8080/x"));
    }
}
