//! Evaluation: the L3/L4 verdict for one side of a connection, and the L7
//! rules that then apply (the semantics are in the module above).

use ipnet::IpNet;

use super::rules::*;
use crate::context::Direction;
use crate::identity::{FIRST_ENDPOINT_IDENTITY, Identity};

/// The rules that select one subject. A caller asking many verdicts for one
/// endpoint (the datapath compiler asks one per peer, port and protocol)
/// selects the rules once, not once per question: with hundreds of policies
/// that selection was most of a rebuild.
pub struct SubjectRules<'a> {
    rules: Vec<&'a PolicyRule>,
    /// World and the other reserved identities have no policy of their own.
    reserved: bool,
}

impl PolicySet {
    /// The rules whose subject selector selects `subject`.
    pub fn for_subject(&self, subject: &Identity) -> SubjectRules<'_> {
        SubjectRules {
            rules: self.rules.iter().filter(|r| r.subject.selects(subject)).collect(),
            reserved: subject.id < FIRST_ENDPOINT_IDENTITY,
        }
    }

    /// The verdict for one side. `subject` is the endpoint whose policy is
    /// evaluated: the destination for ingress, the source for egress.
    pub fn evaluate<'a>(
        &'a self,
        direction: Direction,
        subject: &Identity,
        peer: PeerInfo<'_>,
        port: u16,
        protocol: L4Protocol,
    ) -> SideVerdict<'a> {
        self.for_subject(subject).evaluate(direction, peer, port, protocol)
    }

    /// Whether any rule selecting `subject` speaks about `direction` (only
    /// then can a verdict differ from "allow").
    pub fn concerns(&self, direction: Direction, subject: &Identity) -> bool {
        self.for_subject(subject).concerns(direction)
    }

    /// Whether `subject` is default-deny in `direction`.
    pub fn enforces(&self, direction: Direction, subject: &Identity) -> bool {
        self.for_subject(subject).rules.iter().any(|r| {
            let (allow, deny, default_deny) = r.sections(direction);
            default_deny && (allow.is_some() || deny.is_some())
        })
    }

    /// Every port range a rule selecting `subject` names in `direction`.
    pub fn port_ranges(&self, direction: Direction, subject: &Identity) -> Vec<&PortRange> {
        self.for_subject(subject).port_ranges(direction)
    }
}

impl<'a> SubjectRules<'a> {
    /// The verdict for this subject's side of a connection with `peer`.
    pub fn evaluate(
        &self,
        direction: Direction,
        peer: PeerInfo<'_>,
        port: u16,
        protocol: L4Protocol,
    ) -> SideVerdict<'a> {
        if self.reserved {
            return SideVerdict::Unenforced;
        }
        // the policies that make this side default-deny, for the reason
        let mut enforcing: Vec<&str> = Vec::new();
        let mut allowances = Vec::new();
        for rule in self.rules.iter().copied() {
            let (allow, deny, default_deny) = rule.sections(direction);
            if default_deny && (allow.is_some() || deny.is_some()) && !enforcing.contains(&rule.policy.as_str()) {
                enforcing.push(&rule.policy);
            }
            for peer_rule in deny.into_iter().flatten() {
                if let Some(ports) = peer_rule.matching_ports(peer, port, protocol) {
                    let at = ports.first().map_or(peer_rule.path.as_str(), |p| p.path.as_str());
                    return SideVerdict::Denied { reason: format!("denied by {} {at}", rule.policy) };
                }
            }
            for peer_rule in allow.into_iter().flatten() {
                let Some(ports) = peer_rule.matching_ports(peer, port, protocol) else { continue };
                if ports.is_empty() {
                    allowances.push(Allowance {
                        origin: format!("{} {}", rule.policy, peer_rule.path),
                        policy: &rule.policy,
                        l7: None,
                    });
                }
                for set in ports {
                    allowances.push(Allowance {
                        origin: format!("{} {}", rule.policy, set.path),
                        policy: &rule.policy,
                        l7: set.l7.as_ref(),
                    });
                }
            }
        }
        if !allowances.is_empty() {
            SideVerdict::Allowed(allowances)
        } else if !enforcing.is_empty() {
            let side = match direction {
                Direction::Ingress => "ingress",
                Direction::Egress => "egress",
            };
            SideVerdict::Denied {
                reason: format!(
                    "no {side} rule allows {} on {} (default deny of {})",
                    peer.identity.brief(),
                    protocol.describe_port(port),
                    enforcing.join(", ")
                ),
            }
        } else {
            SideVerdict::Unenforced
        }
    }

    /// Whether any of the rules speaks about `direction`.
    pub fn concerns(&self, direction: Direction) -> bool {
        self.rules.iter().any(|r| {
            let (allow, deny, _) = r.sections(direction);
            allow.is_some() || deny.is_some()
        })
    }

    /// Every port range the rules name in `direction`.
    pub fn port_ranges(&self, direction: Direction) -> Vec<&'a PortRange> {
        let mut out = Vec::new();
        for rule in &self.rules {
            let (allow, deny, _) = rule.sections(direction);
            for peer_rule in allow.into_iter().chain(deny).flatten() {
                for set in peer_rule.to_ports.iter().flatten() {
                    out.extend(set.ports.iter().filter(|p| p.start != 0));
                }
            }
        }
        out
    }
}

impl PolicySet {
    /// Every CIDR (and `except`) the rules name: each becomes a prefix with
    /// its own identity in the datapath's ipcache.
    pub fn cidrs(&self) -> Vec<IpNet> {
        let mut out = Vec::new();
        for rule in &self.rules {
            let sections = [&rule.ingress, &rule.ingress_deny, &rule.egress, &rule.egress_deny];
            for peer_rule in sections.into_iter().flatten().flatten() {
                for peer in peer_rule.peers.iter().flatten() {
                    if let Peer::Cidr { cidr, except } = peer {
                        out.push(*cidr);
                        out.extend(except.iter().copied());
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

impl PeerRule {
    /// `None` if the rule does not apply; otherwise the port rule sets that
    /// matched (empty when the rule has no `toPorts`: all ports, no L7).
    fn matching_ports(&self, peer: PeerInfo<'_>, port: u16, protocol: L4Protocol) -> Option<Vec<&PortRuleSet>> {
        if let Some(peers) = &self.peers
            && !peers.iter().any(|p| p.matches(&peer))
        {
            return None;
        }
        match &self.to_ports {
            None => Some(Vec::new()),
            Some(sets) => {
                let matched: Vec<&PortRuleSet> = sets
                    .iter()
                    .filter(|s| s.ports.is_empty() || s.ports.iter().any(|r| r.matches(port, protocol)))
                    .collect();
                (!matched.is_empty()).then_some(matched)
            }
        }
    }
}
