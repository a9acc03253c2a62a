//! Built-in DNS policy filter: CiliumNetworkPolicy `rules.dns` semantics.
//!
//! The host hands this filter, per (endpoint, direction, port, peer identity),
//! the groups of DNS rules whose selector chose the peer. A query is allowed
//! when some group allows every one of its questions; a group with no rules
//! allows everything (an L3/L4 rule on the DNS port). Inside a group,
//! `matchName` and `matchPattern` entries are OR-ed.
//!
//! Tested as a component, through the real host: `proxy/tests/dns_rules.rs`.

use serde::Deserialize;
use weir_filter_sdk::ConfigError;
use weir_filter_sdk::dns::*;
use weir_fqdn_match::{NameMatcher, PreparedName};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyConfig {
    #[serde(default)]
    groups: Vec<GroupConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupConfig {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    rules: Vec<RuleConfig>,
}

/// Cilium's `PortRuleDNS` (a `FQDNSelector`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleConfig {
    match_name: Option<String>,
    match_pattern: Option<String>,
}

struct Group {
    name: Option<String>,
    /// Empty: every name.
    matchers: Vec<NameMatcher>,
}

impl Group {
    fn allows(&self, name: &PreparedName<'_>) -> bool {
        self.matchers.is_empty() || self.matchers.iter().any(|m| m.matches_prepared(name))
    }
}

pub struct DnsPolicy {
    groups: Vec<Group>,
}

impl DnsPolicy {
    pub fn compile(config: &str) -> Result<Self, ConfigError> {
        let parsed: PolicyConfig =
            serde_json::from_str(config).map_err(|e| ConfigError::new(format!("dns-policy config: {e}")))?;
        let mut groups = Vec::with_capacity(parsed.groups.len());
        for group in parsed.groups {
            let label = group.name.as_deref();
            let mut matchers = Vec::with_capacity(group.rules.len());
            for (i, rule) in group.rules.iter().enumerate() {
                // both fields in one entry: either may match, as in Cilium
                if rule.match_name.is_none() && rule.match_pattern.is_none() {
                    return Err(ConfigError::at(format!("dns[{i}]"), "give matchName or matchPattern").in_group(label));
                }
                if let Some(name) = &rule.match_name {
                    matchers.push(
                        NameMatcher::name(name).map_err(|e| {
                            ConfigError::at(format!("dns[{i}].matchName"), e.to_string()).in_group(label)
                        })?,
                    );
                }
                if let Some(pattern) = &rule.match_pattern {
                    matchers.push(NameMatcher::pattern(pattern).map_err(|e| {
                        ConfigError::at(format!("dns[{i}].matchPattern"), e.to_string()).in_group(label)
                    })?);
                }
            }
            groups.push(Group { name: group.name, matchers });
        }
        Ok(DnsPolicy { groups })
    }

    /// `Ok(what allowed it)` or `Err(the first name no group allows)`.
    pub fn judge<'a>(&self, names: impl Iterator<Item = &'a str>) -> Result<Option<&str>, String> {
        // split each name into labels once, not once per pattern
        let names: Vec<PreparedName<'a>> = names.map(PreparedName::new).collect();
        for group in &self.groups {
            if names.iter().all(|name| group.allows(name)) {
                return Ok(group.name.as_deref());
            }
        }
        let denied = names.iter().find(|name| !self.groups.iter().any(|g| g.allows(name)));
        Err(match denied {
            Some(name) => format!("no DNS rule allows {}", name.as_str()),
            None => "no single DNS rule allows every question".into(),
        })
    }
}

impl DnsFilter for DnsPolicy {
    fn configure(config: &str) -> Result<Self, String> {
        Ok(DnsPolicy::compile(config)?)
    }

    fn on_query(&self, _conn: &Connection, query: &Query) -> QueryDecision {
        match self.judge(query.questions.iter().map(|q| q.name.as_str())) {
            Ok(matched) => allow(matched.map(str::to_string)),
            Err(reason) => refuse(reason),
        }
    }
}

weir_filter_sdk::dns_filter!(DnsPolicy);
