//! Built-in memcached policy filter: CiliumNetworkPolicy `l7proto: memcache`
//! with `l7` rules of `command`, `keyExact`, `keyPrefix`, `keyRegex`.
//!
//! A rule matches a request when its `command` group holds the request's
//! command (text and meta commands by name, binary ones by opcode) and, if a
//! key condition is given, the key satisfies it (`keyExact`, else
//! `keyPrefix`, else `keyRegex`, the first one given, as in Cilium). A rule
//! with no fields matches every request; one with a key condition but no
//! `command` is refused (as in Cilium).
//!
//! The host names the commands a meta request does when its flags make it
//! do more than its own (`mg` with `T` is also judged as `touch`, with `N`
//! as `add`; `ma` is judged as `incr` or `decr` by its mode): each must be
//! allowed.
//!
//! Weir judges multi-key requests key by key: `get a b` is allowed when
//! every key is allowed by some rule for `get` (Cilium wants one rule to
//! allow them all). A request without keys (`stats`, `version`) needs a rule
//! whose group holds its command. A group with no rules allows everything.
//!
//! Tested end to end, with a real memcached and real clients:
//! `integration/tests/memcached_local.rs`.

use std::collections::BTreeMap;

use weir_filter_sdk::ConfigError;
use weir_filter_sdk::l7_rules::{Group, compile_groups};
use weir_filter_sdk::memcached::*;

/// A command group: the text commands and binary opcodes a rule's
/// `command` names. Cilium's table, with the meta commands added where they
/// do the same thing.
struct CommandGroup {
    name: &'static str,
    text: &'static [&'static str],
    binary: &'static [u8],
}

const STORAGE_TEXT: &[&str] = &["add", "set", "replace", "append", "prepend", "cas", "incr", "decr", "ms", "ma"];
const STORAGE_BINARY: &[u8] = &[1, 2, 3, 5, 6, 17, 18, 19, 21, 22, 25, 26];

const GROUPS: &[CommandGroup] = &[
    CommandGroup { name: "add", text: &["add"], binary: &[2, 18] },
    CommandGroup { name: "set", text: &["set", "ms"], binary: &[1, 17] },
    CommandGroup { name: "replace", text: &["replace"], binary: &[3, 19] },
    CommandGroup { name: "append", text: &["append"], binary: &[14, 25] },
    CommandGroup { name: "prepend", text: &["prepend"], binary: &[15, 26] },
    CommandGroup { name: "cas", text: &["cas"], binary: &[] },
    CommandGroup { name: "incr", text: &["incr", "ma"], binary: &[5, 21] },
    CommandGroup { name: "decr", text: &["decr", "ma"], binary: &[6, 22] },
    CommandGroup { name: "storage", text: STORAGE_TEXT, binary: STORAGE_BINARY },
    CommandGroup { name: "get", text: &["get", "gets", "bget", "mg"], binary: &[0, 9, 12, 13] },
    CommandGroup { name: "delete", text: &["delete", "md"], binary: &[4, 20] },
    CommandGroup { name: "touch", text: &["touch"], binary: &[28] },
    CommandGroup { name: "gat", text: &["gat", "gats"], binary: &[29, 30, 35, 36] },
    CommandGroup {
        name: "writeGroup",
        text: &[
            "add", "set", "replace", "append", "prepend", "cas", "incr", "decr", "delete", "touch", "ms", "md", "ma",
        ],
        binary: &[1, 2, 3, 4, 5, 6, 17, 18, 19, 20, 21, 22, 25, 26, 28],
    },
    CommandGroup { name: "slabs", text: &["slabs"], binary: &[] },
    CommandGroup { name: "lru", text: &["lru"], binary: &[] },
    CommandGroup { name: "lru_crawler", text: &["lru_crawler"], binary: &[] },
    CommandGroup { name: "watch", text: &["watch"], binary: &[] },
    CommandGroup { name: "stats", text: &["stats"], binary: &[16] },
    CommandGroup { name: "flush_all", text: &["flush_all"], binary: &[8, 24] },
    CommandGroup { name: "cache_memlimit", text: &["cache_memlimit"], binary: &[] },
    CommandGroup { name: "version", text: &["version"], binary: &[11] },
    CommandGroup { name: "verbosity", text: &["verbosity"], binary: &[27] },
    CommandGroup { name: "quit", text: &["quit"], binary: &[7, 23] },
    CommandGroup { name: "noop", text: &["mn"], binary: &[10] },
    CommandGroup { name: "debug", text: &["me"], binary: &[] },
    CommandGroup { name: "sasl-list-mechs", text: &[], binary: &[32] },
    CommandGroup { name: "sasl-auth", text: &[], binary: &[33] },
    CommandGroup { name: "sasl-step", text: &[], binary: &[34] },
];

enum KeyMatch {
    Any,
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    Regex(regex::bytes::Regex),
}

impl KeyMatch {
    fn matches(&self, key: &[u8]) -> bool {
        match self {
            KeyMatch::Any => true,
            KeyMatch::Exact(k) => key == k.as_slice(),
            KeyMatch::Prefix(p) => key.starts_with(p),
            KeyMatch::Regex(r) => r.is_match(key),
        }
    }
}

struct Rule {
    /// `None`: every command (a rule with no fields).
    group: Option<&'static CommandGroup>,
    key: KeyMatch,
}

impl Rule {
    fn command_matches(&self, request: &Request) -> bool {
        let Some(group) = self.group else { return true };
        match (request.protocol, request.opcode) {
            (Protocol::Binary, Some(op)) => group.binary.contains(&op),
            _ => group.text.contains(&request.command.as_str()),
        }
    }
}

pub struct MemcachedPolicy {
    groups: Vec<Group<Rule>>,
}

fn compile(fields: &BTreeMap<String, String>) -> Result<Rule, ConfigError> {
    let mut group = None;
    for (name, value) in fields {
        match name.as_str() {
            "command" => {
                group = Some(GROUPS.iter().find(|g| g.name == value).ok_or_else(|| {
                    let names: Vec<_> = GROUPS.iter().map(|g| g.name).collect();
                    ConfigError::at("command", format!("unknown command {value:?}; use one of {}", names.join(", ")))
                })?);
            }
            "keyExact" | "keyPrefix" | "keyRegex" => {}
            other => {
                return Err(ConfigError::at(
                    other,
                    "unknown field; memcache rules have command, keyExact, keyPrefix and keyRegex",
                ));
            }
        }
    }
    // the first one given wins, as in Cilium
    let key = if let Some(k) = fields.get("keyExact") {
        KeyMatch::Exact(k.as_bytes().to_vec())
    } else if let Some(p) = fields.get("keyPrefix") {
        KeyMatch::Prefix(p.as_bytes().to_vec())
    } else if let Some(r) = fields.get("keyRegex") {
        // anchored like Cilium's other regexes are not: Go's regexp.Match
        // finds the pattern anywhere in the key, and so does this
        KeyMatch::Regex(
            regex::bytes::Regex::new(r)
                .map_err(|e| ConfigError::at("keyRegex", format!("invalid regular expression: {e}")))?,
        )
    } else {
        KeyMatch::Any
    };
    if group.is_none() && !matches!(key, KeyMatch::Any) {
        return Err(ConfigError::new("a key is given but no command (Cilium refuses this too)"));
    }
    Ok(Rule { group, key })
}

impl MemcachedFilter for MemcachedPolicy {
    fn configure(config: &str) -> Result<Self, String> {
        Ok(MemcachedPolicy { groups: compile_groups(config, "memcached-policy", compile)? })
    }

    fn on_request(&self, _conn: &Connection, request: &Request) -> RequestDecision {
        if let Some(open) = self.groups.iter().find(|g| g.rules.is_empty()) {
            return allow(open.name.clone());
        }
        let rules = || self.groups.iter().flat_map(|g| g.rules.iter().map(move |r| (g, r)));
        let mut matched: Option<&Group<Rule>> = None;
        if request.keys.is_empty() {
            match rules().find(|(_, r)| r.command_matches(request)) {
                Some((g, _)) => matched = Some(g),
                None => return deny(format!("command {} is not allowed", request.command)),
            }
        }
        for key in &request.keys {
            match rules().find(|(_, r)| r.command_matches(request) && r.key.matches(key)) {
                Some((g, _)) => matched = matched.or(Some(g)),
                None => {
                    return deny(format!(
                        "key {:?} is not allowed for {}",
                        String::from_utf8_lossy(key),
                        request.command
                    ));
                }
            }
        }
        allow(matched.and_then(|g| g.name.clone()))
    }
}

weir_filter_sdk::memcached_filter!(MemcachedPolicy);
