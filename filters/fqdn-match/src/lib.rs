//! DNS names as CiliumNetworkPolicy compares them.
//!
//! One implementation for both places that need it: the `dns-policy` filter
//! (which names a pod may look up) and the proxy's `toFQDNs` (which learned
//! addresses a pod may reach), so the two can never disagree.
//!
//! - Names compare case-insensitively, with or without the trailing dot.
//! - `matchName` is exact.
//! - In `matchPattern`, `*` matches zero or more DNS characters
//!   (`[-a-z0-9_]`) but never a dot; a lone `*` matches every name; a leading
//!   `**.` matches any number of labels below the rest of the pattern, but
//!   not the rest itself (`**.example.com` matches `a.b.example.com`, not
//!   `example.com`).
#![no_std]
extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// Longest name DNS allows (RFC 1035: 255 octets on the wire, 253 as text).
pub const MAX_NAME_LENGTH: usize = 253;

/// A DNS name in the form every comparison uses: lower case, no trailing dot.
pub fn normalize(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

fn is_dns_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// A compiled `matchName` or `matchPattern`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameMatcher {
    /// Every name (`matchPattern: "*"`).
    Any,
    Exact(String),
    Pattern {
        /// With a leading `**.`: at least one label must come before `rest`.
        any_depth: bool,
        /// Lower case, no trailing dot, `*` for a run of DNS characters.
        rest: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidName(pub String);

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl NameMatcher {
    /// `matchName`: letters, digits, `-`, `_` and dots.
    pub fn name(text: &str) -> Result<Self, InvalidName> {
        let name = normalize(text);
        check(&name, text, false)?;
        Ok(NameMatcher::Exact(name))
    }

    /// `matchPattern`: as `matchName`, plus `*` and a leading `**.`.
    pub fn pattern(text: &str) -> Result<Self, InvalidName> {
        let pattern = normalize(text);
        if pattern == "*" {
            return Ok(NameMatcher::Any);
        }
        let (any_depth, rest) = match pattern.strip_prefix("**.") {
            Some(rest) => (true, rest),
            None => (false, pattern.as_str()),
        };
        check(rest, text, true)?;
        if rest.contains("**") {
            return Err(InvalidName(format!("{text:?}: `**` is only allowed as a leading `**.`")));
        }
        if !rest.contains('*') && !any_depth {
            return Ok(NameMatcher::Exact(String::from(rest)));
        }
        Ok(NameMatcher::Pattern { any_depth, rest: rest.as_bytes().to_vec() })
    }

    /// Whether `name` (normalized, see [`normalize`]) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NameMatcher::Any => true,
            NameMatcher::Exact(exact) => exact == name,
            NameMatcher::Pattern { any_depth: false, rest } => glob(rest, name.as_bytes()),
            NameMatcher::Pattern { any_depth: true, rest } => {
                // try `rest` against every proper suffix that starts a label
                let bytes = name.as_bytes();
                bytes
                    .iter()
                    .enumerate()
                    .any(|(i, &b)| b == b'.' && i > 0 && labels_ok(&bytes[..i]) && glob(rest, &bytes[i + 1..]))
            }
        }
    }
}

fn labels_ok(prefix: &[u8]) -> bool {
    prefix.split(|&b| b == b'.').all(|label| !label.is_empty() && label.iter().all(|&b| is_dns_char(b)))
}

fn check(name: &str, original: &str, stars: bool) -> Result<(), InvalidName> {
    if name.is_empty() {
        return Err(InvalidName(format!("{original:?}: empty name")));
    }
    if name.len() > MAX_NAME_LENGTH {
        return Err(InvalidName(format!("{original:?}: longer than {MAX_NAME_LENGTH} characters")));
    }
    if let Some(bad) = name.bytes().find(|&b| !(is_dns_char(b) || b == b'.' || (stars && b == b'*'))) {
        let allowed =
            if stars { "letters, digits, '-', '_', '.' and '*'" } else { "letters, digits, '-', '_' and '.'" };
        return Err(InvalidName(format!("{original:?}: {:?} is not allowed (use {allowed})", bad as char)));
    }
    if name.split('.').any(str::is_empty) {
        return Err(InvalidName(format!("{original:?}: empty label (two dots in a row, or a leading dot)")));
    }
    Ok(())
}

/// `*` matches a run of DNS characters; everything else matches itself.
/// Dynamic programming over (pattern, name) positions: linear in both, so
/// no pattern can make a lookup slow.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    // reachable[j]: name[..j] is matched by the pattern read so far
    let mut reachable = vec![false; name.len() + 1];
    reachable[0] = true;
    for &p in pattern {
        if p == b'*' {
            for j in 1..=name.len() {
                if !reachable[j] && reachable[j - 1] && is_dns_char(name[j - 1]) {
                    reachable[j] = true;
                }
            }
        } else {
            for j in (1..=name.len()).rev() {
                reachable[j] = reachable[j - 1] && name[j - 1] == p;
            }
            reachable[0] = false;
        }
    }
    reachable[name.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(p: &str) -> NameMatcher {
        NameMatcher::pattern(p).unwrap()
    }

    #[test]
    fn names_compare_without_case_or_trailing_dot() {
        let m = NameMatcher::name("Api.Example.COM.").unwrap();
        assert!(m.matches(&normalize("api.example.com")));
        assert!(m.matches(&normalize("API.EXAMPLE.COM.")));
        assert!(!m.matches(&normalize("api.example.co")));
        assert!(!m.matches(&normalize("xapi.example.com")));
    }

    #[test]
    fn star_stays_within_a_label() {
        let m = pat("*.example.com");
        assert!(m.matches("api.example.com"));
        assert!(m.matches("a-b_c9.example.com"));
        assert!(!m.matches("a.b.example.com"), "a star never crosses a dot");
        assert!(!m.matches("example.com"));
        let m = pat("api-*.example.com");
        assert!(m.matches("api-1.example.com"));
        assert!(m.matches("api-.example.com"));
        assert!(!m.matches("api.example.com"));
        let m = pat("*ex*.com");
        assert!(m.matches("example.com"));
        assert!(m.matches("ex.com"));
        assert!(!m.matches("sub.example.com"));
    }

    #[test]
    fn lone_star_matches_everything() {
        assert_eq!(pat("*"), NameMatcher::Any);
        assert_eq!(pat("*."), NameMatcher::Any);
        assert!(pat("*").matches("a.b.c"));
    }

    #[test]
    fn double_star_matches_any_depth_below_but_not_the_suffix() {
        let m = pat("**.example.com");
        assert!(m.matches("a.example.com"));
        assert!(m.matches("a.b.c.example.com"));
        assert!(!m.matches("example.com"));
        assert!(!m.matches("badexample.com"));
        let m = pat("**.*.example.com");
        assert!(m.matches("a.b.example.com"));
        assert!(!m.matches("b.example.com"));
    }

    #[test]
    fn patterns_without_stars_are_exact() {
        assert_eq!(pat("Example.com."), NameMatcher::Exact("example.com".into()));
    }

    #[test]
    fn invalid_names_are_refused_with_the_reason() {
        assert!(NameMatcher::name("exa mple.com").unwrap_err().0.contains("' '"));
        assert!(NameMatcher::name("*.example.com").is_err(), "matchName takes no stars");
        assert!(NameMatcher::pattern("a..b").unwrap_err().0.contains("empty label"));
        assert!(NameMatcher::pattern("a.**.b").is_err());
        assert!(NameMatcher::pattern("").is_err());
        assert!(NameMatcher::pattern(&"a".repeat(300)).is_err());
    }

    #[test]
    fn many_stars_stay_fast() {
        let m = pat(&"a*".repeat(60));
        assert!(m.matches(&"a".repeat(60)));
        assert!(!m.matches(&"a".repeat(59)));
        assert!(!m.matches(&alloc::format!("{}.b", "a".repeat(200))));
    }
}
