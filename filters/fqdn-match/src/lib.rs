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
use alloc::vec::Vec;
use core::fmt;

/// Longest name DNS allows (RFC 1035: 255 octets on the wire, 253 as text).
pub const MAX_NAME_LENGTH: usize = 253;

/// Longest label (RFC 1035).
pub const MAX_LABEL_LENGTH: usize = 63;

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
        /// With a leading `**.`: at least one label must come before `labels`.
        any_depth: bool,
        /// One per label, in name order; a `*` never crosses a dot, so a
        /// pattern is matched label by label.
        labels: Vec<LabelPattern>,
    },
}

/// One label of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelPattern {
    Literal(String),
    /// Contains `*`: each matches a run of DNS characters.
    Glob(String),
}

impl LabelPattern {
    fn matches(&self, label: &str) -> bool {
        match self {
            LabelPattern::Literal(text) => text == label,
            LabelPattern::Glob(glob) => label.bytes().all(is_dns_char) && wildcard(glob.as_bytes(), label.as_bytes()),
        }
    }
}

/// A name split into labels once, to be tried against many matchers.
pub struct PreparedName<'a> {
    text: &'a str,
    labels: Vec<&'a str>,
}

impl<'a> PreparedName<'a> {
    /// `name` must be normalized (see [`normalize`]).
    pub fn new(name: &'a str) -> Self {
        PreparedName { text: name, labels: name.split('.').collect() }
    }

    pub fn as_str(&self) -> &'a str {
        self.text
    }
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
        let labels = rest
            .split('.')
            .map(|label| {
                if label.contains('*') {
                    LabelPattern::Glob(String::from(label))
                } else {
                    LabelPattern::Literal(String::from(label))
                }
            })
            .collect();
        Ok(NameMatcher::Pattern { any_depth, labels })
    }

    /// Whether `name` (normalized, see [`normalize`]) matches.
    pub fn matches(&self, name: &str) -> bool {
        self.matches_prepared(&PreparedName::new(name))
    }

    /// The same for a name already split, when one name meets many matchers.
    pub fn matches_prepared(&self, name: &PreparedName<'_>) -> bool {
        match self {
            NameMatcher::Any => true,
            NameMatcher::Exact(exact) => exact == name.text,
            NameMatcher::Pattern { any_depth, labels } => {
                let (n, p) = (name.labels.len(), labels.len());
                let fits = if *any_depth { n > p } else { n == p };
                // the last labels are the most distinct: compare from the end
                fits && labels.iter().rev().zip(name.labels.iter().rev()).all(|(pattern, label)| pattern.matches(label))
                    && (!*any_depth || name.labels[..n - p].iter().all(|l| !l.is_empty() && l.bytes().all(is_dns_char)))
            }
        }
    }
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
    if name.split('.').any(|label| label.len() > MAX_LABEL_LENGTH) {
        return Err(InvalidName(format!("{original:?}: a label is longer than {MAX_LABEL_LENGTH} characters")));
    }
    Ok(())
}

/// Glob match inside one label, where `*` matches any run (the caller has
/// checked the label holds DNS characters only). The classic two-pointer
/// walk: linear in practice, no allocation, and never worse than
/// pattern x label (both at most 63 bytes).
fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            // let the last star take one more character
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
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
    fn names_with_other_characters_never_match_a_star() {
        assert!(!pat("*.example.com").matches("a b.example.com"));
        assert!(!pat("*.example.com").matches("*.example.com"));
        assert!(pat("a*z.example.com").matches("abcz.example.com"));
        assert!(!pat("a*z.example.com").matches("abc.example.com"));
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
        // the pathological case for backtracking matchers
        let m = pat(&alloc::format!("{}z", "a*".repeat(30)));
        assert!(m.matches(&alloc::format!("{}z", "a".repeat(61))));
        assert!(!m.matches(&"a".repeat(62)));
        assert!(!m.matches(&alloc::format!("{}z", "a".repeat(29))));
        assert!(NameMatcher::pattern(&"a".repeat(64)).unwrap_err().0.contains("label is longer"));
    }
}
