//! Compiling policy documents into rules: every field checked, every
//! problem reported with its path.

use std::net::IpAddr;

use ipnet::IpNet;
use weir_fqdn_match::NameMatcher;

use super::document::{
    self, CidrRule, EgressRule, FqdnSelector, IcmpRule, IngressRule, PolicyError, PortRule, PortValue, SourcedDocument,
};
use super::rules::*;
use super::selector::Selector;
use crate::context::Direction;
use crate::protocol::Protocol;

/// (field path, message)
type FieldError = (String, String);

impl PolicySet {
    /// Compile documents; every problem found is reported, not only the first.
    pub fn compile(documents: &[SourcedDocument]) -> Result<Self, Vec<PolicyError>> {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        let mut names = std::collections::HashMap::new();
        for doc in documents {
            let name = doc.name();
            // one name per kind, as the API server allows: a CNP, a WNP and a
            // NetworkPolicy may all be called `web`
            let kind_name = format!("{}/{}", doc.written_as, name);
            if let Some(first) = names.insert(kind_name, doc.file.clone()) {
                errors.push(PolicyError {
                    file: doc.file.clone(),
                    object: Some(format!("policy {name}")),
                    field: Some("metadata.name".into()),
                    message: format!("a policy of this kind and name is already defined in {first}"),
                });
                continue;
            }
            for (rule, path) in doc.rules() {
                match compile_rule(doc, rule, &path) {
                    Ok(compiled) => rules.push(compiled),
                    Err((field, message)) => errors.push(PolicyError {
                        file: doc.file.clone(),
                        object: Some(format!("policy {name}")),
                        field: Some(field),
                        message,
                    }),
                }
            }
        }
        if errors.is_empty() { Ok(PolicySet { rules }) } else { Err(errors) }
    }
}

fn unsupported(path: String, what: &str) -> FieldError {
    (path, format!("valid in CiliumNetworkPolicy but not supported by weir yet ({what})"))
}

fn compile_rule(doc: &SourcedDocument, rule: &document::Rule, path: &str) -> Result<PolicyRule, FieldError> {
    let namespace = doc.namespace();
    if rule.node_selector.is_some() {
        return Err(unsupported(format!("{path}.nodeSelector"), "host policies need the eBPF datapath"));
    }
    let Some(selector) = &rule.endpoint_selector else {
        return Err((format!("{path}.endpointSelector"), "required (use `{}` to select every endpoint)".into()));
    };
    let mut subject = Selector::compile(selector, &format!("{path}.endpointSelector"))?;
    if let Some(ns) = namespace {
        subject = subject.in_namespace(ns);
    }
    let audit = audited(doc, rule, path)?;
    let defaults = rule.enable_default_deny.clone().unwrap_or_default();
    let section = |name: &str| Section { path: format!("{path}.{name}"), namespace, deny: name.ends_with("Deny") };
    let ingress = compile_section(rule.ingress.as_deref(), section("ingress"), Direction::Ingress, ingress_rule)?;
    let ingress_deny =
        compile_section(rule.ingress_deny.as_deref(), section("ingressDeny"), Direction::Ingress, ingress_rule)?;
    let egress = compile_section(rule.egress.as_deref(), section("egress"), Direction::Egress, egress_rule)?;
    let egress_deny =
        compile_section(rule.egress_deny.as_deref(), section("egressDeny"), Direction::Egress, egress_rule)?;
    if audit {
        // a stream parser decides bytes, not requests: there is no request
        // to let through while reporting what it would have refused
        for set in super::rules::allowed_port_rule_sets([&ingress, &egress]) {
            if let Some(l7) = &set.l7
                && l7.kind() == Protocol::Stream
            {
                return Err((
                    format!("{}.l7proto", set.path),
                    "audit mode does not cover l7proto stream parsers yet (they decide bytes, not requests): enforce this rule or leave it out".into(),
                ));
            }
        }
    }
    Ok(PolicyRule {
        policy: doc.name(),
        file: doc.file.clone(),
        path: path.to_string(),
        subject,
        ingress,
        ingress_deny,
        egress,
        egress_deny,
        default_deny_ingress: defaults.ingress.unwrap_or(true),
        default_deny_egress: defaults.egress.unwrap_or(true),
        audit,
    })
}

/// Whether the rule is audited: `enforcementMode: audit` on a Weir kind, or
/// the object's `policy.weir.dev/audit: "true"` on any kind.
fn audited(doc: &SourcedDocument, rule: &document::Rule, path: &str) -> Result<bool, FieldError> {
    let annotation = match doc.document.metadata.annotations.get(document::AUDIT_ANNOTATION).map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err((
                format!("metadata.annotations[{}]", document::AUDIT_ANNOTATION),
                format!("{other:?}: give \"true\" (audit every rule of this object) or \"false\""),
            ));
        }
    };
    let Some(mode) = rule.enforcement_mode else { return Ok(annotation) };
    if !doc.written_as.starts_with(document::WEIR_API) {
        return Err((
            format!("{path}.enforcementMode"),
            format!(
                "a Weir field: Cilium's CRD would prune it and the rule enforce; on {} use the annotation {}: \"true\"",
                doc.written_as,
                document::AUDIT_ANNOTATION
            ),
        ));
    }
    match mode {
        document::EnforcementMode::Audit => Ok(true),
        document::EnforcementMode::Enforce if annotation => Err((
            format!("{path}.enforcementMode"),
            format!("enforce contradicts the object's annotation {}: \"true\"", document::AUDIT_ANNOTATION),
        )),
        document::EnforcementMode::Enforce => Ok(false),
    }
}

type PeerCompiler<R> = fn(&R, &str, Option<&str>) -> Result<Option<Vec<Peer>>, FieldError>;

/// Where a section sits and what kind it is.
struct Section<'a> {
    path: String,
    namespace: Option<&'a str>,
    deny: bool,
}

fn compile_section<R: HasPorts>(
    rules: Option<&[R]>,
    section: Section<'_>,
    direction: Direction,
    peers: PeerCompiler<R>,
) -> Result<Option<Vec<PeerRule>>, FieldError> {
    let Some(rules) = rules else { return Ok(None) };
    let Section { path, namespace, deny } = section;
    let mut compiled = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let peers = peers(rule, &at, namespace)?;
        let to_ports = match (rule.to_ports(), rule.icmps()) {
            (Some(_), Some(_)) => {
                return Err((
                    format!("{at}.icmps"),
                    "cannot be combined with toPorts in one rule (as in Cilium); write two rules".into(),
                ));
            }
            (None, Some(icmps)) if icmps.is_empty() => {
                // Cilium would read it as absent (every ICMP message and
                // every port); in a deny rule that is the opposite of "none"
                return Err((format!("{at}.icmps"), "names no ICMP type; leave it out or name one".into()));
            }
            (None, Some(icmps)) => Some(
                icmps
                    .iter()
                    .enumerate()
                    .map(|(j, rule)| compile_icmp_rule(rule, &format!("{at}.icmps[{j}]")))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            (Some(port_rules), None) => Some(
                port_rules
                    .iter()
                    .enumerate()
                    .map(|(j, pr)| compile_port_rule(pr, &format!("{at}.toPorts[{j}]"), deny, direction))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            (None, None) => None,
        };
        compiled.push(PeerRule { path: at, peers, to_ports });
    }
    Ok(Some(compiled))
}

trait HasPorts {
    fn to_ports(&self) -> Option<&Vec<PortRule>>;
    fn icmps(&self) -> Option<&Vec<IcmpRule>>;
}

/// An `icmps` entry: the ICMP types it names, as port ranges of one type
/// each (the type plus one: see `L4Protocol::Icmp`). Only the kernel sees
/// ICMP; in local mode such a rule covers nothing the proxy carries.
fn compile_icmp_rule(rule: &IcmpRule, at: &str) -> Result<PortRuleSet, FieldError> {
    if rule.fields.is_empty() {
        return Err((format!("{at}.fields"), "names no ICMP type".into()));
    }
    let mut ports = Vec::with_capacity(rule.fields.len());
    for (i, field) in rule.fields.iter().enumerate() {
        let here = format!("{at}.fields[{i}]");
        let (ipv6, protocol) = match field.family.as_deref() {
            None | Some("IPv4") => (false, L4Protocol::Icmp),
            Some("IPv6") => (true, L4Protocol::Icmp6),
            Some(other) => return Err((format!("{here}.family"), format!("{other:?} is not IPv4 or IPv6"))),
        };
        let number = match &field.icmp_type {
            PortValue::Number(n) => u8::try_from(*n).ok(),
            PortValue::Text(text) => text.parse::<u8>().ok().or_else(|| icmp_type_named(text, ipv6)),
        };
        let Some(number) = number else {
            let family = if ipv6 { "ICMPv6" } else { "ICMP" };
            let written = match &field.icmp_type {
                PortValue::Number(n) => n.to_string(),
                PortValue::Text(t) => format!("{t:?}"),
            };
            return Err((
                format!("{here}.type"),
                format!("{written} is not an {family} type (a number 0-255 or Cilium's name, e.g. EchoRequest)"),
            ));
        };
        if number == 255 {
            // the kernel keys a type by one byte, type + 1: 255 wraps to "every type"
            return Err((format!("{here}.type"), "255 is reserved in ICMP and ICMPv6 and cannot be named".into()));
        }
        let port = L4Protocol::icmp_port(number);
        ports.push(PortRange { start: port, end: port, protocol });
    }
    Ok(PortRuleSet { path: at.to_string(), ports, l7: None })
}

impl HasPorts for IngressRule {
    fn to_ports(&self) -> Option<&Vec<PortRule>> {
        self.to_ports.as_ref()
    }
    fn icmps(&self) -> Option<&Vec<IcmpRule>> {
        self.icmps.as_ref()
    }
}

impl HasPorts for EgressRule {
    fn to_ports(&self) -> Option<&Vec<PortRule>> {
        self.to_ports.as_ref()
    }
    fn icmps(&self) -> Option<&Vec<IcmpRule>> {
        self.icmps.as_ref()
    }
}

fn ingress_rule(rule: &IngressRule, at: &str, namespace: Option<&str>) -> Result<Option<Vec<Peer>>, FieldError> {
    for (present, field, why) in [
        (rule.from_requires.is_some(), "fromRequires", "deprecated in Cilium"),
        (rule.from_groups.is_some(), "fromGroups", "cloud provider groups"),
        (rule.from_nodes.is_some(), "fromNodes", "node selection needs Kubernetes"),
        (rule.authentication.is_some(), "authentication", "mutual authentication"),
    ] {
        if present {
            return Err(unsupported(format!("{at}.{field}"), why));
        }
    }
    peers(
        at,
        namespace,
        ("fromEndpoints", rule.from_endpoints.as_ref()),
        ("fromCIDR", rule.from_cidr.as_ref()),
        ("fromCIDRSet", rule.from_cidr_set.as_ref()),
        ("fromEntities", rule.from_entities.as_ref()),
    )
}

fn egress_rule(rule: &EgressRule, at: &str, namespace: Option<&str>) -> Result<Option<Vec<Peer>>, FieldError> {
    for (present, field, why) in [
        (rule.to_requires.is_some(), "toRequires", "deprecated in Cilium"),
        (rule.to_services.is_some(), "toServices", "service selection needs Kubernetes"),
        (rule.to_groups.is_some(), "toGroups", "cloud provider groups"),
        (rule.to_nodes.is_some(), "toNodes", "node selection needs Kubernetes"),
        (rule.authentication.is_some(), "authentication", "mutual authentication"),
    ] {
        if present {
            return Err(unsupported(format!("{at}.{field}"), why));
        }
    }
    if let Some(selectors) = &rule.to_fqdns {
        let others = [
            ("toEndpoints", rule.to_endpoints.is_some()),
            ("toCIDR", rule.to_cidr.is_some()),
            ("toCIDRSet", rule.to_cidr_set.is_some()),
            ("toEntities", rule.to_entities.is_some()),
        ];
        if let Some((other, _)) = others.iter().find(|(_, present)| *present) {
            return Err((
                format!("{at}.toFQDNs"),
                format!("cannot be combined with {other} in one rule (as in Cilium); write two egress rules"),
            ));
        }
        if selectors.is_empty() {
            return Err((format!("{at}.toFQDNs"), "an empty list selects nothing; omit the field".into()));
        }
        let matchers = selectors
            .iter()
            .enumerate()
            .map(|(i, sel)| fqdn_matchers(sel, &format!("{at}.toFQDNs[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let peers = selectors
            .iter()
            .zip(matchers)
            .map(|(selector, matchers)| Peer::Fqdn(FqdnPeer { selector: selector.clone(), matchers }))
            .collect();
        return Ok(Some(peers));
    }
    peers(
        at,
        namespace,
        ("toEndpoints", rule.to_endpoints.as_ref()),
        ("toCIDR", rule.to_cidr.as_ref()),
        ("toCIDRSet", rule.to_cidr_set.as_ref()),
        ("toEntities", rule.to_entities.as_ref()),
    )
}

type Named<'a, T> = (&'a str, Option<&'a Vec<T>>);

fn peers(
    at: &str,
    namespace: Option<&str>,
    endpoints: Named<'_, document::Selector>,
    cidrs: Named<'_, String>,
    cidr_sets: Named<'_, CidrRule>,
    entities: Named<'_, String>,
) -> Result<Option<Vec<Peer>>, FieldError> {
    let mut out = Vec::new();
    let mut any_field = false;
    let empty = |field: &str| {
        (format!("{at}.{field}"), "an empty list selects nothing; omit the field to match every peer".to_string())
    };
    if let (field, Some(list)) = endpoints {
        any_field = true;
        if list.is_empty() {
            return Err(empty(field));
        }
        for (i, sel) in list.iter().enumerate() {
            let mut compiled = Selector::compile(sel, &format!("{at}.{field}[{i}]"))?;
            if let Some(ns) = namespace {
                compiled = compiled.in_namespace(ns);
            }
            out.push(Peer::Endpoints(compiled));
        }
    }
    if let (field, Some(list)) = cidrs {
        any_field = true;
        if list.is_empty() {
            return Err(empty(field));
        }
        for (i, text) in list.iter().enumerate() {
            let cidr = parse_cidr(text).map_err(|m| (format!("{at}.{field}[{i}]"), m))?;
            out.push(Peer::Cidr { cidr, except: Vec::new() });
        }
    }
    if let (field, Some(list)) = cidr_sets {
        any_field = true;
        if list.is_empty() {
            return Err(empty(field));
        }
        for (i, set) in list.iter().enumerate() {
            let here = format!("{at}.{field}[{i}]");
            if set.cidr_group_ref.is_some() || set.cidr_group_selector.is_some() {
                return Err(unsupported(format!("{here}.cidrGroupRef"), "CiliumCIDRGroup needs Kubernetes"));
            }
            let Some(text) = &set.cidr else {
                return Err((format!("{here}.cidr"), "required".into()));
            };
            let cidr = parse_cidr(text).map_err(|m| (format!("{here}.cidr"), m))?;
            let mut except = Vec::new();
            for (j, e) in set.except.iter().flatten().enumerate() {
                let net = parse_cidr(e).map_err(|m| (format!("{here}.except[{j}]"), m))?;
                if !cidr.contains(&net) {
                    return Err((format!("{here}.except[{j}]"), format!("{net} is not inside {cidr}")));
                }
                except.push(net);
            }
            out.push(Peer::Cidr { cidr, except });
        }
    }
    if let (field, Some(list)) = entities {
        any_field = true;
        if list.is_empty() {
            return Err(empty(field));
        }
        for (i, name) in list.iter().enumerate() {
            let entity = Entity::parse(name).ok_or_else(|| {
                (
                    format!("{at}.{field}[{i}]"),
                    format!(
                        "unknown entity {name:?}; use all, world, cluster, host, remote-node, kube-apiserver, \
                         health, init, unmanaged or ingress"
                    ),
                )
            })?;
            out.push(Peer::Entity(entity));
        }
    }
    Ok(any_field.then_some(out))
}

/// A `matchName`/`matchPattern` pair, checked with the same code that matches it.
fn fqdn_matchers(selector: &FqdnSelector, at: &str) -> Result<Vec<NameMatcher>, FieldError> {
    let mut out = Vec::new();
    if let Some(name) = &selector.match_name {
        out.push(NameMatcher::name(name).map_err(|e| (format!("{at}.matchName"), e.to_string()))?);
    }
    if let Some(pattern) = &selector.match_pattern {
        out.push(NameMatcher::pattern(pattern).map_err(|e| (format!("{at}.matchPattern"), e.to_string()))?);
    }
    if out.is_empty() {
        return Err((at.to_string(), "give matchName or matchPattern".into()));
    }
    Ok(out)
}

fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("{text:?} is not a CIDR (like 10.0.0.0/8 or 2001:db8::/32)"))
}

fn compile_port_rule(rule: &PortRule, at: &str, deny: bool, direction: Direction) -> Result<PortRuleSet, FieldError> {
    for (present, field, why) in [
        (rule.terminating_tls.is_some(), "terminatingTLS", "TLS interception"),
        (rule.originating_tls.is_some(), "originatingTLS", "TLS origination"),
        (rule.server_names.is_some(), "serverNames", "SNI rules"),
        (rule.listener.is_some(), "listener", "Envoy listeners"),
    ] {
        if present {
            return Err(unsupported(format!("{at}.{field}"), why));
        }
    }
    let mut ports = Vec::new();
    for (i, p) in rule.ports.iter().flatten().enumerate() {
        let here = format!("{at}.ports[{i}]");
        let start = match &p.port {
            None => 0,
            Some(document::PortValue::Number(n)) => {
                u16::try_from(*n).map_err(|_| (format!("{here}.port"), format!("{n} is not a port (0-65535)")))?
            }
            Some(document::PortValue::Text(t)) => match t.parse::<u16>() {
                Ok(n) => n,
                Err(_) if t.parse::<i64>().is_ok() => {
                    return Err((format!("{here}.port"), format!("{t} is not a port (0-65535)")));
                }
                Err(_) => {
                    return Err(unsupported(format!("{here}.port"), "named ports need Kubernetes pod specs"));
                }
            },
        };
        let end = match p.end_port {
            None => start,
            Some(_) if start == 0 => {
                return Err((format!("{here}.endPort"), "a range needs a start port other than 0".into()));
            }
            Some(e) if e < start as i64 || e > 65535 => {
                return Err((format!("{here}.endPort"), format!("{e} must be between port ({start}) and 65535")));
            }
            Some(e) => e as u16,
        };
        let protocol = match p.protocol.as_deref() {
            None => L4Protocol::Any,
            Some(text) => L4Protocol::parse(text).ok_or_else(|| {
                let msg = if text.starts_with("ICMP") {
                    format!("{text} is not a toPorts protocol; ICMP is allowed by type in `icmps` (as in Cilium)")
                } else {
                    format!("unknown protocol {text:?}; use TCP, UDP, SCTP or ANY")
                };
                (format!("{here}.protocol"), msg)
            })?,
        };
        ports.push(PortRange { start, end, protocol });
    }
    let l7 = match &rule.rules {
        None => None,
        Some(_) if deny => {
            return Err((format!("{at}.rules"), "deny rules carry L3/L4 only; L7 rules go in allow sections".into()));
        }
        Some(rules) => {
            let rules_at = format!("{at}.rules");
            if rules.l7.is_some() && rules.l7proto.is_none() {
                return Err((format!("{rules_at}.l7"), "l7 rules need l7proto (the parser that reads them)".into()));
            }
            let generic = rules.l7proto.as_deref().map(Protocol::of_l7proto);
            if let Some(name) = rules.l7proto.as_deref()
                && (name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
            {
                return Err((format!("{rules_at}.l7proto"), format!("{name:?} is not a parser name")));
            }
            if ports.is_empty() || ports.iter().any(|p| p.start == 0) {
                return Err((format!("{at}.ports"), "L7 rules need a specific port".into()));
            }
            let given: Vec<(&str, Protocol)> = [
                (rules.http.is_some(), "http", Protocol::Http),
                (rules.dns.is_some(), "dns", Protocol::Dns),
                (rules.kafka.is_some(), "kafka", Protocol::Kafka),
                (generic.is_some(), "l7proto", generic.unwrap_or(Protocol::Stream)),
            ]
            .into_iter()
            .filter(|(present, _, _)| *present)
            .map(|(_, field, kind)| (field, kind))
            .collect();
            if let [(first, _), (second, _), ..] = given[..] {
                return Err((
                    format!("{rules_at}.{second}"),
                    format!(
                        "one port rule carries the rules of one protocol; put {first} and {second} in separate toPorts"
                    ),
                ));
            }
            // `wasm` alone: an HTTP port, unless a wasm filter says otherwise
            // (checked when the filters configure)
            let kind = given.first().map_or(Protocol::Http, |(_, kind)| *kind);
            match kind {
                Protocol::Http | Protocol::Kafka | Protocol::Memcached | Protocol::Cassandra | Protocol::Stream => {
                    if let Some(p) = ports.iter().find(|p| !matches!(p.protocol, L4Protocol::Tcp | L4Protocol::Any)) {
                        let what = match kind {
                            Protocol::Http => "HTTP rules".to_string(),
                            Protocol::Kafka => "Kafka rules".to_string(),
                            _ => format!("l7proto {}", rules.l7proto.as_deref().unwrap_or_default()),
                        };
                        return Err((format!("{at}.ports"), format!("{what} need TCP (or ANY), not {:?}", p.protocol)));
                    }
                }
                Protocol::Dns => {
                    if direction == Direction::Ingress {
                        return Err((
                            format!("{rules_at}.dns"),
                            "DNS rules apply to egress only (as in Cilium)".into(),
                        ));
                    }
                    if let Some(p) = ports.iter().find(|p| p.protocol == L4Protocol::Sctp) {
                        return Err((
                            format!("{at}.ports"),
                            format!("DNS runs over UDP and TCP, not {:?}", p.protocol),
                        ));
                    }
                    for (i, selector) in rules.dns.iter().flatten().enumerate() {
                        fqdn_matchers(selector, &format!("{rules_at}.dns[{i}]"))?;
                    }
                }
            }
            if let Some(http) = &rules.http {
                for (i, h) in http.iter().enumerate() {
                    for (j, hm) in h.header_matches.iter().enumerate() {
                        let here = format!("{rules_at}.http[{i}].headerMatches[{j}]");
                        if hm.secret.is_some() {
                            return Err(unsupported(format!("{here}.secret"), "secrets need the Kubernetes API"));
                        }
                        if let Some(m) = &hm.mismatch
                            && !["LOG", "ADD", "DELETE", "REPLACE"].contains(&m.as_str())
                        {
                            return Err((
                                format!("{here}.mismatch"),
                                format!("unknown action {m:?}; use LOG, ADD, DELETE or REPLACE"),
                            ));
                        }
                    }
                }
            }
            let wasm = rules
                .wasm
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, w)| WasmRef {
                    name: w.name.clone(),
                    config: w.config_text(),
                    path: format!("{rules_at}.wasm[{i}]"),
                })
                .collect();
            let rules = match kind {
                Protocol::Http => ProtocolRules::Http(rules.http.clone()),
                Protocol::Dns => ProtocolRules::Dns(rules.dns.clone().unwrap_or_default()),
                Protocol::Kafka => ProtocolRules::Kafka(rules.kafka.clone().unwrap_or_default()),
                Protocol::Memcached | Protocol::Cassandra | Protocol::Stream => ProtocolRules::Generic {
                    protocol: kind,
                    l7proto: rules.l7proto.clone().unwrap_or_default(),
                    l7: rules.l7.clone(),
                },
            };
            Some(L7Rules { rules, wasm })
        }
    };
    Ok(PortRuleSet { path: at.to_string(), ports, l7 })
}
