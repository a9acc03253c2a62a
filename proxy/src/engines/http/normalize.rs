//! Path normalization: rules are matched against, and upstreams receive, the
//! same canonical path, so an encoding trick cannot make a rule see one path
//! and the upstream serve another.
//!
//! Steps, in order: validate characters; decode percent-encoded unreserved
//! characters (`%41` → `A`, `%2e` → `.`) and upper-case the others; apply the
//! listener's choice for `%2F`/`%5C`; merge repeated slashes; remove `.` and
//! `..` segments (RFC 3986 §5.2.4). The query string is not touched.
//!
//! Path forms common upstreams read differently from RFC 3986 are refused
//! unless the listener allows them (`ambiguous_paths`): a dot segment with
//! `;` parameters (`..;x`, also `..%3B`), which servlet containers read as
//! `..`, and a double percent-encoding (`%25` + two hex digits), which an
//! upstream that decodes twice reads as the encoded character.

use crate::config::{AmbiguousPaths, EscapedSlashes};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    #[error("the request target is not a path (must start with `/`)")]
    NotAbsolutePath,
    #[error("invalid percent-encoding at byte {0}")]
    BadPercentEncoding(usize),
    #[error("character {0:?} is not allowed in a path")]
    BadCharacter(char),
    #[error("byte 0x{0:02x} is not allowed in a path")]
    BadByte(u8),
    #[error("encoded slash or backslash (%2F, %5C) in the path; this listener rejects them")]
    EscapedSlash,
    #[error("encoded NUL (%00) in the path")]
    EncodedNul,
    #[error("a dot segment with `;` parameters in the path; this listener rejects them")]
    DotSegmentParameters,
    #[error("double percent-encoding (%25 and two hex digits) in the path; this listener rejects it")]
    DoubleEncoding,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` minus `%`, plus `/`.
fn is_path_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(b, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@' | b'/')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Normalize the path part of a request target.
pub fn normalize_path(
    path: &str,
    escaped: EscapedSlashes,
    ambiguous: AmbiguousPaths,
) -> Result<String, NormalizeError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(NormalizeError::NotAbsolutePath);
    }
    if is_normal(bytes) {
        return Ok(path.to_owned());
    }
    normalize_steps(bytes, escaped, ambiguous)
}

/// The steps, for a path that starts with `/`.
fn normalize_steps(bytes: &[u8], escaped: EscapedSlashes, ambiguous: AmbiguousPaths) -> Result<String, NormalizeError> {
    // 1-3: characters and percent-encoding
    let mut decoded = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b)))
            else {
                return Err(NormalizeError::BadPercentEncoding(i));
            };
            let value = hi << 4 | lo;
            match value {
                0 => return Err(NormalizeError::EncodedNul),
                b'/' | b'\\' => match escaped {
                    EscapedSlashes::Reject => return Err(NormalizeError::EscapedSlash),
                    EscapedSlashes::Keep => decoded.push_str(if value == b'/' { "%2F" } else { "%5C" }),
                    // a backslash is a separator to many servers: decode both to `/`
                    EscapedSlashes::Unescape => decoded.push('/'),
                },
                v if is_unreserved(v) => decoded.push(v as char),
                v => {
                    decoded.push('%');
                    decoded.push(char::from_digit((v >> 4) as u32, 16).unwrap().to_ascii_uppercase());
                    decoded.push(char::from_digit((v & 15) as u32, 16).unwrap().to_ascii_uppercase());
                }
            }
            i += 3;
            continue;
        }
        if !is_path_char(b) {
            return Err(if b.is_ascii() && !b.is_ascii_control() {
                NormalizeError::BadCharacter(b as char)
            } else {
                NormalizeError::BadByte(b)
            });
        }
        decoded.push(b as char);
        i += 1;
    }
    if ambiguous == AmbiguousPaths::Reject {
        refuse_ambiguous(&decoded)?;
    }
    // 4: merge slashes
    let mut merged = String::with_capacity(decoded.len());
    for c in decoded.chars() {
        if c == '/' && merged.ends_with('/') {
            continue;
        }
        merged.push(c);
    }
    // 5: dot segments
    Ok(remove_dot_segments(&merged))
}

/// Whether the steps below would give back `path` as it is, found in one
/// pass (most paths are): path characters only, no escapes, no empty
/// segment but a trailing one, no segment named `.` or `..` (also with `;`
/// parameters, which the steps refuse or keep as the listener says).
fn is_normal(path: &[u8]) -> bool {
    let mut segments = path[1..].split(|b| *b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let name = segment.split(|b| *b == b';').next().unwrap_or_default();
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || name == b"." || name == b".." || !segment.iter().all(|b| is_path_char(*b)) {
            return false;
        }
    }
    true
}

/// `decoded` has unreserved characters decoded and other escapes upper-case.
fn refuse_ambiguous(decoded: &str) -> Result<(), NormalizeError> {
    let bytes = decoded.as_bytes();
    if bytes.windows(5).any(|w| w.starts_with(b"%25") && w[3].is_ascii_hexdigit() && w[4].is_ascii_hexdigit()) {
        return Err(NormalizeError::DoubleEncoding);
    }
    for segment in decoded.split('/') {
        let name_end = [segment.find(';'), segment.find("%3B")].into_iter().flatten().min();
        if let Some(end) = name_end
            && matches!(&segment[..end], "." | "..")
        {
            return Err(NormalizeError::DotSegmentParameters);
        }
    }
    Ok(())
}

/// RFC 3986 §5.2.4 for an absolute path with no empty segments left.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let trailing_slash = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    for segment in path.split('/').skip(1) {
        match segment {
            "." | "" => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (trailing_slash && !segments.is_empty()) {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, NormalizeError> {
        normalize_path(p, EscapedSlashes::Reject, AmbiguousPaths::Reject)
    }

    #[test]
    fn dot_segments_with_parameters_and_double_encoding_are_refused() {
        for p in [
            "/public/..;/admin",
            "/public/..;jsessionid=1/admin",
            "/public/.;/admin",
            "/public/..%3B/admin",
            "/public/..%3b/admin",
            "/public/%2e%2e;/admin",
            "/public/.%2E%3Bx/admin",
        ] {
            assert_eq!(norm(p), Err(NormalizeError::DotSegmentParameters), "{p}");
        }
        for p in ["/public/%252e%252e/admin", "/a%252Fb", "/a%2541", "/a%25%32%65"] {
            assert_eq!(norm(p), Err(NormalizeError::DoubleEncoding), "{p}");
        }
        // parameters on names, and a lone encoded percent, are ordinary
        assert_eq!(norm("/a;v=1/b").unwrap(), "/a;v=1/b");
        assert_eq!(norm("/..a;x/b").unwrap(), "/..a;x/b");
        assert_eq!(norm("/100%25").unwrap(), "/100%25");
        assert_eq!(norm("/a%25zz").unwrap(), "/a%25zz");
        // the listener may allow them: forwarded as plain names
        let allow = |p| normalize_path(p, EscapedSlashes::Reject, AmbiguousPaths::Allow);
        assert_eq!(allow("/public/..;/admin").unwrap(), "/public/..;/admin");
        assert_eq!(allow("/public/%252e%252e/admin").unwrap(), "/public/%252e%252e/admin");
    }

    /// `normalize_path` gives what the steps give in each mode, and a path
    /// the one pass takes is one the steps give back as it is; how many
    /// of the modes' answers the one pass gave.
    fn agrees_with_the_steps(path: &str, modes: &[(EscapedSlashes, AmbiguousPaths)]) -> usize {
        let mut normal = 0;
        for &(escaped, ambiguous) in modes {
            let stepped = normalize_steps(path.as_bytes(), escaped, ambiguous);
            assert_eq!(normalize_path(path, escaped, ambiguous), stepped, "{path:?}");
            if is_normal(path.as_bytes()) {
                assert_eq!(stepped.as_deref(), Ok(path), "{path:?} is not normal");
                normal += 1;
            }
        }
        normal
    }

    #[test]
    fn the_one_pass_over_normal_paths_agrees_with_the_steps() {
        // every path of up to six characters from an alphabet of what the
        // steps treat specially, in every listener mode
        let alphabet = b"/.;a%2eF";
        let modes = [
            (EscapedSlashes::Reject, AmbiguousPaths::Reject),
            (EscapedSlashes::Keep, AmbiguousPaths::Allow),
            (EscapedSlashes::Unescape, AmbiguousPaths::Reject),
        ];
        let mut path = vec![b'/'];
        let mut normal = 0;
        fn each(path: &mut Vec<u8>, left: usize, alphabet: &[u8], visit: &mut dyn FnMut(&[u8])) {
            visit(path);
            if left == 0 {
                return;
            }
            for b in alphabet {
                path.push(*b);
                each(path, left - 1, alphabet, visit);
                path.pop();
            }
        }
        each(&mut path, 6, alphabet, &mut |p| normal += agrees_with_the_steps(std::str::from_utf8(p).unwrap(), &modes));
        assert!(normal > 1000, "the one pass takes most plain paths ({normal})");
    }

    #[test]
    fn the_one_pass_agrees_with_the_steps_on_every_path_character() {
        // random paths over every character the steps accept or treat
        // specially, and a few they refuse, in all six listener modes
        let alphabet: Vec<char> = "/.;%\\aZ09-_~!$&'()*+,=:@2eEfF5cC3bB é?#\0".chars().collect();
        let modes = [EscapedSlashes::Reject, EscapedSlashes::Keep, EscapedSlashes::Unescape]
            .into_iter()
            .flat_map(|e| [AmbiguousPaths::Reject, AmbiguousPaths::Allow].map(|a| (e, a)));
        let modes: Vec<_> = modes.collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut normal = 0;
        for _ in 0..50_000 {
            let len = 1 + next(16);
            let path: String = std::iter::once('/').chain((1..len).map(|_| alphabet[next(alphabet.len())])).collect();
            normal += agrees_with_the_steps(&path, &modes);
        }
        assert!(normal > 1000, "the one pass takes plain paths ({normal})");
    }

    #[test]
    fn plain_paths_are_unchanged() {
        for p in ["/", "/a", "/a/b", "/a/b/", "/a-b_c~d.e", "/x;y=1", "/@user:42", "/a+b"] {
            assert_eq!(norm(p).unwrap(), p, "{p}");
        }
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(norm("/a/./b").unwrap(), "/a/b");
        assert_eq!(norm("/a/../b").unwrap(), "/b");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(norm("/..").unwrap(), "/");
        assert_eq!(norm("/../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(norm("/a/..b/c").unwrap(), "/a/..b/c", "..b is a name, not a dot segment");
    }

    #[test]
    fn slashes_are_merged_before_dot_segments() {
        assert_eq!(norm("//a///b").unwrap(), "/a/b");
        assert_eq!(norm("/a//../b").unwrap(), "/b");
    }

    #[test]
    fn encoded_unreserved_characters_are_decoded() {
        assert_eq!(norm("/%61dmin").unwrap(), "/admin");
        assert_eq!(norm("/%7Euser").unwrap(), "/~user");
        assert_eq!(norm("/a%2db").unwrap(), "/a-b");
    }

    #[test]
    fn other_encodings_are_kept_upper_case() {
        assert_eq!(norm("/a%20b").unwrap(), "/a%20b");
        assert_eq!(norm("/a%3fb").unwrap(), "/a%3Fb");
        assert_eq!(norm("/caf%c3%a9").unwrap(), "/caf%C3%A9");
    }

    /// Attempts to reach /admin past a rule that allows only /public/.*
    #[test]
    fn bypass_attempts_normalize_to_what_the_upstream_would_serve() {
        assert_eq!(norm("/public/../admin").unwrap(), "/admin");
        assert_eq!(norm("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(norm("/public/%2E%2E/admin").unwrap(), "/admin");
        assert_eq!(norm("/public/.%2e/admin").unwrap(), "/admin");
        assert_eq!(norm("/public//..//admin").unwrap(), "/admin");
        assert_eq!(norm("/public/./../admin").unwrap(), "/admin");
        assert_eq!(norm("/%2e%2e/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(norm("/public/%2e%2e%2fadmin"), Err(NormalizeError::EscapedSlash));
        assert_eq!(norm("/public/..%5cadmin"), Err(NormalizeError::EscapedSlash));
        assert_eq!(norm("/public/..\\admin"), Err(NormalizeError::BadCharacter('\\')));
    }

    #[test]
    fn escaped_slash_choices() {
        assert_eq!(normalize_path("/a%2fb", EscapedSlashes::Keep, AmbiguousPaths::Reject).unwrap(), "/a%2Fb");
        assert_eq!(normalize_path("/a%5cb", EscapedSlashes::Keep, AmbiguousPaths::Reject).unwrap(), "/a%5Cb");
        assert_eq!(normalize_path("/a%2f..%2fb", EscapedSlashes::Keep, AmbiguousPaths::Reject).unwrap(), "/a%2F..%2Fb");
        assert_eq!(
            normalize_path("/public%2f..%2fadmin", EscapedSlashes::Unescape, AmbiguousPaths::Reject).unwrap(),
            "/admin"
        );
        assert_eq!(normalize_path("/a%5C%5Cb", EscapedSlashes::Unescape, AmbiguousPaths::Reject).unwrap(), "/a/b");
    }

    #[test]
    fn invalid_paths_are_rejected() {
        assert_eq!(norm("a/b"), Err(NormalizeError::NotAbsolutePath));
        assert_eq!(norm(""), Err(NormalizeError::NotAbsolutePath));
        assert_eq!(norm("*"), Err(NormalizeError::NotAbsolutePath));
        assert_eq!(norm("/a%zzb"), Err(NormalizeError::BadPercentEncoding(2)));
        assert_eq!(norm("/a%2"), Err(NormalizeError::BadPercentEncoding(2)));
        assert_eq!(norm("/a%"), Err(NormalizeError::BadPercentEncoding(2)));
        assert_eq!(norm("/a%00b"), Err(NormalizeError::EncodedNul));
        assert_eq!(norm("/a b"), Err(NormalizeError::BadCharacter(' ')));
        assert_eq!(norm("/a\"b"), Err(NormalizeError::BadCharacter('"')));
        assert_eq!(norm("/a#b"), Err(NormalizeError::BadCharacter('#')));
        assert_eq!(norm("/a\u{0}b"), Err(NormalizeError::BadByte(0)));
        assert_eq!(norm("/caf\u{e9}"), Err(NormalizeError::BadByte(0xc3)));
    }

    #[test]
    fn normalization_is_idempotent() {
        for p in ["/a/./b/../c//d/", "/%2e%2e/x%20y", "/a%3Fb/../c", "/", "/a/b/.."] {
            let once = norm(p).unwrap();
            assert_eq!(norm(&once).unwrap(), once, "{p}");
        }
    }
}
