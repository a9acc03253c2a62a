//! The model's filter chains: which filters a connection's requests pass,
//! each configured once per model.
//!
//! Validation configures every rule's filter with the configuration traffic
//! allowed by that rule alone hands it (one group, named as verdicts name
//! it), so a bad rule rejects the model and the common case, one allowing
//! rule, finds its filter configured when the first connection comes. A
//! connection several rules allow needs their groups in one configuration;
//! its verdict configures that once and the model keeps it. Errors come back
//! typed ([`Refusal`]: the field inside the rules, and a message) and are
//! reported at the field in the policy.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::{ChainLink, PolicyModel};
use crate::context::Direction;
use crate::policy::{Allowance, FqdnSelector, HttpRule, KafkaRule, L7Rules, PolicyError, ProtocolRules};
use crate::protocol::Protocol;
use crate::wasm::{
    ConfigureError, ConfiguredFilter, FailurePolicy, FilterComponent, FilterLimits, LoadError, Refusal, builtin,
};

/// Most configurations a model keeps; past it a verdict's combination is
/// configured again (the runtime shares identical ones while any is alive).
const MAX_KEPT: usize = 10_000;

/// Why a port's `l7proto` parser could not be set up.
enum StreamError {
    /// No such parser, or not a stream filter.
    Parser(String),
    /// Its source names it but cannot supply it yet: refuse, do not reject.
    Unavailable(String),
    Configure(ConfigureError),
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Parser(message) | StreamError::Unavailable(message) => f.write_str(message),
            StreamError::Configure(e) => e.fmt(f),
        }
    }
}

impl PolicyModel {
    /// The protocol a port's L7 rules are for: their own, or, for `wasm`
    /// rules alone, the world of the filters they name (a DNS filter on port
    /// 53 makes it a DNS port, as `dns: []` would).
    pub fn kind_of(&self, l7: &L7Rules) -> Protocol {
        if let ProtocolRules::Http(None) = &l7.rules
            && let Some(world) =
                l7.wasm.iter().find_map(|w| self.custom_filters.get(&w.name).map(|c| c.component.world()))
        {
            return world;
        }
        l7.kind()
    }

    /// The built-in filters the rules use: the policy filter of the
    /// protocol each L7 rule's port speaks (as traffic decides it:
    /// [`Self::kind_of`], so `wasm` rules alone get their filter's protocol's),
    /// and the built-in parser an `l7proto` names.
    pub(super) fn builtins_used(&self) -> std::collections::BTreeSet<&'static str> {
        let sets = self.policies.rules.iter().flat_map(|rule| rule.allowed_port_rule_sets());
        sets.filter_map(|set| set.l7.as_ref())
            .filter_map(|l7| match (self.kind_of(l7), l7.l7proto()) {
                (Protocol::Stream, Some(name)) => builtin::stream_filter(name),
                (kind, _) => kind.spec().policy_filter,
            })
            .collect()
    }

    /// The built-in filter `name`, loaded on first use and then kept, as is
    /// a failure to load it (one attempt, one error per model). The model's
    /// rules load theirs when it is built ([`Self::builtins_used`]), so
    /// traffic never waits for one to compile; the lock is held while one
    /// loads, so a filter is never compiled twice at once.
    pub(super) fn builtin(&self, name: &'static str) -> Result<Arc<FilterComponent>, String> {
        let mut builtins = self.builtins.lock().unwrap();
        builtins
            .entry(name)
            .or_insert_with(|| {
                let bytes = builtin::find(name).expect("an embedded filter");
                self.runtime.load(name, bytes).map_err(|e: LoadError| e.to_string())
            })
            .clone()
    }

    /// Configure every filter a rule names, so bad rules are rejected now and
    /// not when traffic arrives. A rule of the API server's objects
    /// (`api_objects`, by file) that names a filter nobody supplies is no
    /// error: the WasmFilter may come later, and until then the traffic the
    /// rule judges is refused (`links_for`). Setting the policy aside instead
    /// would leave the endpoints it alone selects unpoliced.
    pub(super) fn validate_l7(&self, api_objects: &std::collections::HashSet<String>) -> Vec<PolicyError> {
        let mut errors = Vec::new();
        for rule in &self.policies.rules {
            for set in rule.allowed_port_rule_sets() {
                let Some(l7) = &set.l7 else { continue };
                let error = |field: String, message: String| PolicyError {
                    file: rule.file.clone(),
                    object: Some(format!("policy {}", rule.policy)),
                    field: Some(field),
                    message,
                };
                // named as the verdicts name this rule's group, so traffic
                // the rule allows alone uses the filter configured here
                let origin = format!("{} {}", rule.policy, set.path);
                let rules_at = |inner: Option<&str>, default: &str| match inner {
                    Some(field) => format!("{}.rules.{field}", set.path),
                    None => format!("{}.rules.{default}", set.path),
                };
                let builtin = match &l7.rules {
                    ProtocolRules::Http(rules) => rules.as_deref().map(|r| ("http", policy_config(&[(origin, r)]))),
                    ProtocolRules::Kafka(rules) => Some(("kafka", policy_config(&[(origin, rules.as_slice())]))),
                    // names were checked when the policy compiled; this
                    // checks that the filter takes what the host sends
                    ProtocolRules::Dns(rules) => Some(("dns", policy_config(&[(origin, rules.as_slice())]))),
                    ProtocolRules::Generic { protocol: Protocol::Stream, l7proto: name, l7: rules } => {
                        let config = policy_config(&[(origin, rules.as_deref().unwrap_or(&[]))]);
                        let supplied = self.custom_filters.get(name.as_str()).is_some_and(|c| c.supplied)
                            || (api_objects.contains(&rule.file) && !self.knows_stream_filter(name));
                        match self.configure_stream(name, config) {
                            Ok(_) | Err(StreamError::Unavailable(_)) => {}
                            // a WasmFilter: refused when traffic comes
                            Err(_) if supplied => {}
                            Err(StreamError::Parser(message)) => errors.push(error(rules_at(None, "l7proto"), message)),
                            Err(StreamError::Configure(e)) => {
                                let (field, message) = refusal_parts(e);
                                errors.push(error(
                                    rules_at(field.as_deref(), "l7"),
                                    format!("rejected by the {name} filter: {message}"),
                                ));
                            }
                        }
                        if !l7.wasm.is_empty() {
                            errors.push(error(
                                rules_at(Some("wasm"), ""),
                                format!("a port parsed by l7proto {name} has no other filters; chain in the parser"),
                            ));
                        }
                        None
                    }
                    ProtocolRules::Generic { l7: rules, .. } => {
                        Some(("l7", policy_config(&[(origin, rules.as_deref().unwrap_or(&[]))])))
                    }
                };
                if let Some((rules_field, config)) = builtin
                    && let Err(e) = self.configure_builtin(l7.kind(), config)
                {
                    let (field, message) = refusal_parts(e);
                    errors.push(error(rules_at(field.as_deref(), rules_field), message));
                }
                for w in &l7.wasm {
                    let wanted = self.kind_of(l7);
                    match self.custom_filters.get(&w.name) {
                        // checked against its rules once it loads
                        None if self.unavailable.contains_key(&w.name) => {}
                        // judged when traffic comes: what it refuses is
                        // refused (links_for), never let through
                        Some(custom) if custom.supplied => {}
                        // no WasmFilter of that name yet: refused when traffic comes
                        None if api_objects.contains(&rule.file) => {}
                        None => errors.push(error(
                            format!("{}.name", w.path),
                            format!("no filter named {:?} in weir.yaml `filters`", w.name),
                        )),
                        Some(custom) if custom.component.world() != wanted => errors.push(error(
                            format!("{}.name", w.path),
                            format!(
                                "filter {:?} implements {}, but this port carries {} rules ({} needed)",
                                w.name,
                                custom.component.world().world(),
                                wanted.rules_name(),
                                wanted.world()
                            ),
                        )),
                        Some(custom) => {
                            if let Err(e) =
                                self.configure(&custom.component, w.config.clone(), custom.limits, custom.failure)
                            {
                                let (field, message) = refusal_parts(e);
                                let at = match field {
                                    Some(field) => format!("{}.config.{field}", w.path),
                                    None => format!("{}.config", w.path),
                                };
                                errors.push(error(at, format!("rejected by the filter: {message}")));
                            }
                        }
                    }
                }
            }
        }
        errors
    }

    /// The filters a connection these allowances let in passes, on one side.
    pub(super) fn links_for(
        &self,
        direction: Direction,
        allowances: &[Allowance<'_>],
        kind: Protocol,
    ) -> Result<Vec<ChainLink>, String> {
        // Rules written for another protocol allow nothing here: a port
        // carries one protocol (Cilium refuses two parsers on one port).
        let (allowances, other): (Vec<&Allowance<'_>>, Vec<&Allowance<'_>>) =
            allowances.iter().partition(|a| a.l7.is_none_or(|l| self.kind_of(l) == kind));
        if allowances.is_empty() {
            let origin = other.first().map_or("", |a| a.origin.as_str());
            let theirs = other.first().and_then(|a| a.l7).map_or("other", |l| self.kind_of(l).rules_name());
            return Err(format!("{origin} has {theirs} rules; this listener speaks {}", kind.rules_name()));
        }
        let mut links = Vec::new();
        let allows_all = allowances.iter().any(|a| a.l7.is_none());
        let header_actions = allowances
            .iter()
            .filter_map(|a| a.l7.and_then(|l| l.http()))
            .flatten()
            .any(|rule| !rule.header_matches.is_empty());
        // A rule without L7 rules allows every request; the filter is only
        // needed when no such rule applies, or to run header actions.
        if !allows_all || header_actions {
            let config = match kind {
                Protocol::Http => policy_config::<HttpRule>(&groups(&allowances, |rules| rules.http())),
                Protocol::Dns => policy_config::<FqdnSelector>(&groups(&allowances, |rules| rules.dns())),
                Protocol::Kafka => policy_config::<KafkaRule>(&groups(&allowances, |rules| rules.kafka())),
                Protocol::Memcached | Protocol::Cassandra | Protocol::Stream => {
                    policy_config::<BTreeMap<String, String>>(&groups(&allowances, |rules| rules.generic()))
                }
            };
            let filter = if kind == Protocol::Stream {
                // one parser per port: every rule here must name the same one
                let mut names = allowances.iter().filter_map(|a| a.l7.and_then(|l| l.l7proto()));
                let name = names.next().unwrap_or_default();
                if let Some(other) = names.find(|n| *n != name) {
                    return Err(format!("rules for this port name two parsers, l7proto {name} and {other}"));
                }
                self.configure_stream(name, config).map_err(|e| match e {
                    StreamError::Parser(message) | StreamError::Unavailable(message) => message,
                    StreamError::Configure(e) => format!("rejected by the {name} filter: {e}"),
                })?
            } else {
                self.configure_builtin(kind, config)
                    .map_err(|e| format!("{}-policy configuration failed: {e}", kind.rules_name()))?
            };
            let judges = allowances.iter().filter(|a| a.l7.is_some()).map(|a| a.origin.clone()).collect();
            links.push(ChainLink { direction, filter, judges, rules: true });
        }
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for wasm in allowances.iter().filter_map(|a| a.l7).flat_map(|l| &l.wasm) {
            if seen.contains(&(wasm.name.as_str(), wasm.config.as_str())) {
                continue;
            }
            seen.push((&wasm.name, &wasm.config));
            let custom = self.custom_filters.get(&wasm.name).ok_or_else(|| self.missing(&wasm.name))?;
            if custom.component.world() != kind {
                return Err(format!(
                    "filter {:?} implements {}, but this port carries {} rules",
                    wasm.name,
                    custom.component.world().world(),
                    kind.rules_name()
                ));
            }
            let filter = self
                .configure(&custom.component, wasm.config.clone(), custom.limits, custom.failure)
                .map_err(|e| format!("filter {} configuration failed: {e}", wasm.name))?;
            let judges = allowances
                .iter()
                .filter(|a| a.l7.is_some_and(|l| l.wasm.iter().any(|w| w.name == wasm.name && w.config == wasm.config)))
                .map(|a| a.origin.clone())
                .collect();
            links.push(ChainLink { direction, filter, judges, rules: false });
        }
        Ok(links)
    }

    fn configure_builtin(&self, kind: Protocol, config: String) -> Result<Arc<ConfiguredFilter>, ConfigureError> {
        let Some(name) = kind.spec().policy_filter else {
            return Err(ConfigureError::Failed(format!("{kind} filters are named by l7proto")));
        };
        let component = self.builtin(name).map_err(ConfigureError::Failed)?;
        self.configure(&component, config, FilterLimits::default(), FailurePolicy::Closed)
    }

    /// The stream filter `l7proto: name` selects (weir.yaml `filters` first,
    /// then the built-in ones), configured with the port's `l7` rules.
    fn configure_stream(&self, name: &str, config: String) -> Result<Arc<ConfiguredFilter>, StreamError> {
        let (component, limits, failure) = match self.custom_filters.get(name) {
            Some(custom) => (custom.component.clone(), custom.limits, custom.failure),
            None if self.unavailable.contains_key(name) => return Err(StreamError::Unavailable(self.missing(name))),
            None => match builtin::stream_filter(name) {
                Some(name) => {
                    let component =
                        self.builtin(name).map_err(|e| StreamError::Configure(ConfigureError::Failed(e)))?;
                    (component, FilterLimits::default(), FailurePolicy::Closed)
                }
                None => {
                    let mut known: Vec<&str> = builtin::STREAM_FILTERS.to_vec();
                    known.extend(
                        self.custom_filters
                            .iter()
                            .filter(|(_, c)| c.component.world() == Protocol::Stream)
                            .map(|(n, _)| n.as_str()),
                    );
                    known.sort();
                    return Err(StreamError::Parser(format!(
                        "no parser {name:?}: weir parses memcache itself; stream filters here: {}",
                        known.join(", ")
                    )));
                }
            },
        };
        if component.world() != Protocol::Stream {
            return Err(StreamError::Parser(format!(
                "filter {name:?} implements {}; l7proto needs a stream-filter",
                component.world().world()
            )));
        }
        self.configure(&component, config, limits, failure).map_err(StreamError::Configure)
    }

    /// Why a rule's filter is not in the chain: a connection it would have
    /// judged is refused (fail closed).
    fn missing(&self, name: &str) -> String {
        match self.unavailable.get(name) {
            Some(why) => format!("filter {name:?} is not available ({why}): its rules refuse traffic until it is"),
            None => format!(
                "no filter {name:?} (no WasmFilter of that name, nothing in weir.yaml): its rules refuse traffic until there is one"
            ),
        }
    }

    /// A stream filter (`l7proto`) weir.yaml or a WasmFilter supplies, or a built-in one.
    fn knows_stream_filter(&self, name: &str) -> bool {
        self.custom_filters.contains_key(name) || builtin::stream_filter(name).is_some()
    }

    /// `component` with `config`: the one this model configured already, or
    /// configured now and kept.
    fn configure(
        &self,
        component: &Arc<FilterComponent>,
        config: String,
        limits: FilterLimits,
        failure: FailurePolicy,
    ) -> Result<Arc<ConfiguredFilter>, ConfigureError> {
        let key = (Arc::as_ptr(component) as usize, config);
        if let Some(filter) = self.configured.lock().unwrap().get(&key) {
            return Ok(filter.clone());
        }
        let filter = self.runtime.configure(component, key.1.clone(), limits, failure)?;
        let mut kept = self.configured.lock().unwrap();
        if kept.len() < MAX_KEPT {
            kept.insert(key, filter.clone());
        }
        Ok(filter)
    }

    /// How many filter configurations this model holds.
    pub fn configured_filters(&self) -> usize {
        self.configured.lock().unwrap().len()
    }
}

/// One group per allowance: its origin and the rules `rules` picks for this
/// protocol (none: the allowance allows everything).
fn groups<'a, R>(
    allowances: &[&Allowance<'a>],
    rules: impl Fn(&'a crate::policy::L7Rules) -> Option<&'a [R]>,
) -> Vec<(String, &'a [R])> {
    allowances.iter().map(|a| (a.origin.clone(), a.l7.and_then(&rules).unwrap_or(&[]))).collect()
}

/// A built-in filter's configuration: one group per allowing rule.
fn policy_config<R: Serialize>(groups: &[(String, &[R])]) -> String {
    let groups: Vec<_> =
        groups.iter().map(|(name, rules)| serde_json::json!({ "name": name, "rules": rules })).collect();
    serde_json::json!({ "groups": groups }).to_string()
}

/// The field inside the rules the filter named, and what it said.
fn refusal_parts(e: ConfigureError) -> (Option<String>, String) {
    match e {
        ConfigureError::Refused(Refusal { field, message, .. }) => (field, message),
        ConfigureError::Failed(message) => (None, message),
    }
}
