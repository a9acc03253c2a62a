//! Compiled HTTP rules and their evaluation against one request.

use std::borrow::Cow;

use regex::Regex;
use weir_filter_sdk::http::{HeaderOp, Request, RequestParts, append_header, remove_header, set_header};
use weir_filter_sdk::{ConfigError, headers};

use crate::config::{HttpRule, MismatchAction, PolicyConfig};

pub struct CompiledPolicy {
    groups: Vec<CompiledGroup>,
    /// Some rule has header-match actions: every group must run (their edits
    /// are side effects), so evaluation cannot stop at the first allow.
    have_header_matches: bool,
}

struct CompiledGroup {
    name: Option<String>,
    rules: Vec<CompiledRule>,
    have_header_matches: bool,
}

struct CompiledRule {
    /// All must hold for the rule to match.
    matchers: Vec<Matcher>,
    /// The rule's method is `CONNECT`: only such a rule may allow one.
    names_connect: bool,
    /// Run only when the matchers hold; a FAIL mismatch makes the rule deny.
    actions: Vec<HeaderAction>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Method,
    Path,
    Authority,
    Scheme,
    /// A regular header, name in lower case.
    Header(String),
}

enum Matcher {
    Pattern(Field, Pattern),
    Exact(Field, String),
    Present(Field),
}

struct HeaderAction {
    name: String,
    value: String,
    /// `None` is Cilium's default: a mismatch fails the rule.
    mismatch: Option<MismatchAction>,
}

impl CompiledPolicy {
    pub fn compile(config: &PolicyConfig) -> Result<Self, ConfigError> {
        let mut groups = Vec::with_capacity(config.groups.len());
        for (g, group) in config.groups.iter().enumerate() {
            let label = group.name.clone().unwrap_or_else(|| format!("groups[{g}]"));
            let mut rules = Vec::with_capacity(group.rules.len());
            for (r, rule) in group.rules.iter().enumerate() {
                rules.push(compile_rule(rule).map_err(|e| e.under(&format!("http[{r}]")).in_group(Some(&label)))?);
            }
            let have_header_matches = rules.iter().any(|r| !r.actions.is_empty());
            groups.push(CompiledGroup { name: group.name.clone(), rules, have_header_matches });
        }
        let have_header_matches = groups.iter().any(|g| g.have_header_matches);
        Ok(CompiledPolicy { groups, have_header_matches })
    }

    /// `Some(group name)` when allowed, `None` when denied. The name is left
    /// out when there is a single group: the host knows it already, and
    /// returning a string is a good part of a call's cost.
    pub fn evaluate(&self, view: &mut HeaderView<'_>) -> Option<Option<&str>> {
        if self.groups.is_empty() {
            return (view.method != "CONNECT").then_some(None);
        }
        let mut allowed_by = None;
        for group in &self.groups {
            if group.allows(view) {
                allowed_by.get_or_insert(if self.groups.len() > 1 { group.name.as_deref() } else { None });
                if !self.have_header_matches {
                    break;
                }
            }
        }
        allowed_by
    }
}

impl CompiledGroup {
    fn allows(&self, view: &mut HeaderView<'_>) -> bool {
        // a CONNECT opens a tunnel no later rule sees into: it takes a rule
        // whose method is CONNECT, never a peer's "all HTTP" or a rule that
        // leaves the method open
        let connect = view.method == "CONNECT";
        if self.rules.is_empty() {
            return !connect;
        }
        let mut matched = false;
        for rule in &self.rules {
            if (!connect || rule.names_connect) && rule.matches(view) {
                if !self.have_header_matches {
                    return true;
                }
                if rule.run_actions(view) {
                    matched = true;
                }
            }
        }
        matched
    }
}

impl CompiledRule {
    fn matches(&self, view: &HeaderView<'_>) -> bool {
        self.matchers.iter().all(|m| match m {
            Matcher::Pattern(field, pattern) => view.value(field).is_some_and(|v| pattern.matches(&v)),
            Matcher::Exact(field, want) => view.value(field).is_some_and(|v| v == want.as_str()),
            Matcher::Present(field) => view.value(field).is_some(),
        })
    }

    /// Cilium's `HeaderMatch::Matches` for the mismatch actions a policy can
    /// name. Returns false when a mismatch must fail the rule.
    fn run_actions(&self, view: &mut HeaderView<'_>) -> bool {
        let mut accepted = true;
        for action in &self.actions {
            let field = Field::Header(action.name.clone());
            let current = view.value(&field).map(Cow::into_owned);
            let presence_only = action.value.is_empty();
            let matches = match &current {
                Some(v) => presence_only || *v == action.value,
                None => false,
            };
            if matches {
                continue;
            }
            match action.mismatch {
                None => accepted = false,
                Some(MismatchAction::Log) => {}
                Some(MismatchAction::Add) => view.append(&action.name, &action.value),
                Some(MismatchAction::Delete) => {
                    if !presence_only && current.is_some() {
                        view.remove(&action.name);
                    }
                }
                Some(MismatchAction::Replace) => view.set(&action.name, &action.value),
            }
        }
        accepted
    }
}

fn compile_rule(rule: &HttpRule) -> Result<CompiledRule, ConfigError> {
    let mut matchers = Vec::new();
    for (field, pattern, name) in [
        (Field::Method, &rule.method, "method"),
        (Field::Path, &rule.path, "path"),
        (Field::Authority, &rule.host, "host"),
    ] {
        if let Some(pattern) = pattern.as_deref().filter(|p| !p.is_empty()) {
            // host names are case-insensitive; the host hands over the
            // authority normalized (lower case, no trailing dot or default port)
            let case_insensitive = field == Field::Authority;
            let pattern = Pattern::compile(pattern, case_insensitive).map_err(|e| ConfigError::at(name, e))?;
            matchers.push(Matcher::Pattern(field, pattern));
        }
    }
    for (i, header) in rule.headers.iter().enumerate() {
        // Cilium splits at the first space: "Name" means present,
        // "Name: value" (or "Name value") means that exact value.
        match header.split_once(' ') {
            Some((name, value)) => {
                let field = header_field(name.trim_end_matches(':'))
                    .map_err(|e| ConfigError::at(format!("headers[{i}]"), e))?;
                matchers.push(Matcher::Exact(field, value.to_string()));
            }
            None => {
                let field = header_field(header).map_err(|e| ConfigError::at(format!("headers[{i}]"), e))?;
                matchers.push(Matcher::Present(field));
            }
        }
    }
    let mut actions = Vec::new();
    for (i, hm) in rule.header_matches.iter().enumerate() {
        let field = header_field(&hm.name).map_err(|e| ConfigError::at(format!("headerMatches[{i}].name"), e))?;
        let Field::Header(name) = field else {
            return Err(ConfigError::at(
                format!("headerMatches[{i}].name"),
                format!("pseudo-header {:?} cannot be matched or edited here", hm.name),
            ));
        };
        match hm.mismatch {
            // No action: an ordinary matcher, as Cilium compiles it.
            None if hm.value.is_empty() => matchers.push(Matcher::Present(Field::Header(name))),
            None => matchers.push(Matcher::Exact(Field::Header(name), hm.value.clone())),
            Some(action) => {
                if hm.value.is_empty() && matches!(action, MismatchAction::Add | MismatchAction::Replace) {
                    return Err(ConfigError::at(
                        format!("headerMatches[{i}]"),
                        format!("mismatch {action:?} needs a value to write"),
                    ));
                }
                actions.push(HeaderAction { name, value: hm.value.clone(), mismatch: Some(action) })
            }
        }
    }
    // literally: a pattern written for requests (`.*`, `GET|POST|.*`) that
    // happens to match CONNECT does not open tunnels
    let names_connect = rule.method.as_deref() == Some("CONNECT");
    Ok(CompiledRule { matchers, names_connect, actions })
}

/// A Cilium regex, which must match the whole value. Literals and literal
/// prefixes (`GET`, `/public/.*`) are most rules; they skip the regex engine.
enum Pattern {
    Exact(String),
    Prefix(String),
    /// ASCII literals matched ignoring case (host names).
    ExactNoCase(String),
    PrefixNoCase(String),
    Regex(Regex),
}

impl Pattern {
    /// `case_insensitive` patterns are matched against lower-case values.
    fn compile(pattern: &str, case_insensitive: bool) -> Result<Self, String> {
        // Always compile, so an invalid pattern is rejected the same way
        // whichever form is used to match it.
        let flags = if case_insensitive { "(?i)" } else { "" };
        let regex = Regex::new(&format!("{flags}^(?:{pattern})$"))
            .map_err(|e| format!("invalid regular expression {pattern:?}: {e}"))?;
        let is_literal = |s: &str| !s.contains(|c: char| "\\.+*?()|[]{}^$#&-~ \t\n".contains(c) || c.is_whitespace());
        if is_literal(pattern) && (!case_insensitive || pattern.is_ascii()) {
            let literal = pattern.to_string();
            return Ok(if case_insensitive { Pattern::ExactNoCase(literal) } else { Pattern::Exact(literal) });
        }
        if let Some(prefix) = pattern.strip_suffix(".*") {
            if is_literal(prefix) && !prefix.is_empty() && (!case_insensitive || prefix.is_ascii()) {
                // `.` does not match a newline; values never contain one.
                let prefix = prefix.to_string();
                return Ok(if case_insensitive { Pattern::PrefixNoCase(prefix) } else { Pattern::Prefix(prefix) });
            }
        }
        Ok(Pattern::Regex(regex))
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Exact(literal) => value == literal,
            // values never hold a newline (it separates head lines), so
            // `.*` matching the rest of the value is a plain prefix test
            Pattern::Prefix(prefix) => value.starts_with(prefix.as_str()),
            Pattern::ExactNoCase(literal) => value.eq_ignore_ascii_case(literal),
            Pattern::PrefixNoCase(prefix) => {
                value.len() >= prefix.len() && value.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            }
            Pattern::Regex(regex) => regex.is_match(value),
        }
    }
}

fn header_field(name: &str) -> Result<Field, String> {
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        ":method" => return Ok(Field::Method),
        ":path" => return Ok(Field::Path),
        ":authority" | "host" => return Ok(Field::Authority),
        ":scheme" => return Ok(Field::Scheme),
        _ => {}
    }
    let valid =
        !lower.is_empty() && lower.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if valid { Ok(Field::Header(lower)) } else { Err(format!("{name:?} is not a valid header name")) }
}

/// The request as rules see it: the original head plus the edits made so far
/// by header-match actions (later rules see earlier edits, as in Envoy).
pub struct HeaderView<'r> {
    request: &'r Request,
    /// Method and path are what most rules test: found up front. The rest of
    /// the head is parsed only if a rule asks for it.
    method: &'r str,
    path: &'r str,
    rest: core::cell::Cell<Option<RequestParts<'r>>>,
    /// Materialized on the first edit; until then values come from the buffer.
    edited: Option<Vec<(String, String)>>,
    edits: Vec<HeaderOp>,
}

impl<'r> HeaderView<'r> {
    pub fn new(request: &'r Request) -> Self {
        let (method, path) = method_and_path(&request.head);
        HeaderView { request, method, path, rest: core::cell::Cell::new(None), edited: None, edits: Vec::new() }
    }

    pub fn into_edits(self) -> Vec<HeaderOp> {
        self.edits
    }

    fn parts(&self) -> RequestParts<'r> {
        match self.rest.get() {
            Some(parts) => parts,
            None => {
                let parts = self.request.parts();
                self.rest.set(Some(parts));
                parts
            }
        }
    }

    fn value(&self, field: &Field) -> Option<Cow<'_, str>> {
        match field {
            Field::Method => Some(Cow::Borrowed(self.method)),
            Field::Path => Some(Cow::Borrowed(self.path)),
            Field::Authority => Some(Cow::Borrowed(self.parts().authority)),
            Field::Scheme => Some(Cow::Borrowed(self.parts().scheme)),
            Field::Header(name) => match &self.edited {
                None => join(headers::iter(self.parts().headers), name),
                Some(list) => join(list.iter().map(|(n, v)| (n.as_str(), v.as_str())), name),
            },
        }
    }

    fn materialize(&mut self) -> &mut Vec<(String, String)> {
        let headers = self.parts().headers;
        self.edited.get_or_insert_with(|| headers::iter(headers).map(|(n, v)| (n.to_string(), v.to_string())).collect())
    }

    fn append(&mut self, name: &str, value: &str) {
        self.materialize().push((name.to_string(), value.to_string()));
        self.edits.push(append_header(name, value));
    }

    fn remove(&mut self, name: &str) {
        self.materialize().retain(|(n, _)| n != name);
        self.edits.push(remove_header(name));
    }

    fn set(&mut self, name: &str, value: &str) {
        let list = self.materialize();
        list.retain(|(n, _)| n != name);
        list.push((name.to_string(), value.to_string()));
        self.edits.push(set_header(name, value));
    }
}

/// The first two fields of the request line, without scanning the rest.
fn method_and_path(head: &[u8]) -> (&str, &str) {
    let field = |from: usize| {
        let len = head[from..].iter().position(|b| matches!(b, b' ' | b'\n')).unwrap_or(head.len() - from);
        (core::str::from_utf8(&head[from..from + len]).unwrap_or(""), from + len + 1)
    };
    let (method, next) = field(0);
    let path = if next <= head.len() { field(next).0 } else { "" };
    (method, path)
}

/// All values of `name` joined with ',' (Envoy's getAllOfHeaderAsString);
/// borrowed when there is exactly one.
fn join<'a>(mut pairs: impl Iterator<Item = (&'a str, &'a str)>, name: &str) -> Option<Cow<'a, str>> {
    let first = pairs.by_ref().find(|(n, _)| *n == name)?.1;
    let mut joined: Option<String> = None;
    for (_, v) in pairs.filter(|(n, _)| *n == name) {
        let s = joined.get_or_insert_with(|| first.to_string());
        s.push(',');
        s.push_str(v);
    }
    Some(joined.map_or(Cow::Borrowed(first), Cow::Owned))
}
