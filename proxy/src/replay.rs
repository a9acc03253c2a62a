//! `weir policy replay`: recorded flows judged again under a proposed policy
//! set, offline, with the same code and filters that judge live traffic.
//!
//! A flow record is not the traffic: what it does not carry cannot be judged
//! again, and the report says so per flow instead of guessing.
//! - HTTP records keep method, path and host, not headers: the request is
//!   judged as if it had none, and a rule that reads headers makes the
//!   answer approximate.
//! - Kafka records keep API, version, client id and topics, not the
//!   transactional id; memcached records keep command and keys.
//! - Cassandra and `l7proto` stream records are judged at L3/L4 only: their
//!   requests are not in the record in a form a filter reads.
//! - A connection refused at L3/L4 when recorded has no requests: where the
//!   proposed set lets it in and judges its requests, the answer is unknown.
//! - The kernel's flows (`tcp`, `udp`, ... from the eBPF datapath) are
//!   judged at L3/L4: where L7 rules apply, the proxy's own flows carry the
//!   requests. Its drops that were not policy's (a spoofed source, a full
//!   conntrack table) are counted with errors, not judged.
//! - toFQDNs: the addresses the file's DNS answers taught are taken as known
//!   from the answer on, for the rest of the file (TTLs are not replayed).
//!
//! Every rule is judged as enforced, audited ones too: replay is the preview.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use serde::Serialize;

use crate::context::ConnectionContext;
use crate::context::Direction;
use crate::engines::chain::{self, Answer, ChainRun, Stopped};
use crate::engines::kafka::codec::api_name;
use crate::identity::{Identity, Label, Labels};
use crate::model::{ChainLink, Connection, ConnectionVerdict, PolicyModel};
use crate::observe::flow::{FlowDetail, FlowPeer, FlowRecord, Verdict};
use crate::policy::{L4Protocol, PeerInfo, SideVerdict};
use crate::protocol::Protocol;
use crate::wasm::{FilterFailure, dns, http, kafka, memcached};

/// What a flow would get under the proposed policies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// Let through; by what.
    Allowed { by: String },
    /// Refused; why, naming the policy and rule (or the default deny and
    /// the policies that make it).
    Refused { because: String },
    /// The record does not carry what the answer depends on.
    Unknown { why: String },
}

/// One flow judged again.
#[derive(Clone, Debug, Serialize)]
pub struct Replayed {
    pub id: u64,
    pub recorded: Verdict,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The answer rests on something the record lacks (headers, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approximate: Option<String>,
    /// `GET /admin from app=web to app=api`
    pub summary: String,
}

impl Replayed {
    /// `Some(true)`: newly refused; `Some(false)`: newly allowed; `None`: no change or unknown.
    pub fn change(&self) -> Option<bool> {
        let was_allowed = matches!(self.recorded, Verdict::Forwarded | Verdict::Audited);
        match &self.outcome {
            Outcome::Allowed { .. } if !was_allowed => Some(false),
            Outcome::Refused { .. } if was_allowed => Some(true),
            _ => None,
        }
    }
}

/// The whole replay.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub read: usize,
    /// Flows not judged when recorded (errors: a bad request, an upstream down).
    pub skipped: usize,
    pub unchanged: usize,
    pub unknown: Vec<Replayed>,
    pub newly_refused: Vec<Replayed>,
    pub newly_allowed: Vec<Replayed>,
}

impl Report {
    pub fn changes(&self) -> bool {
        !self.newly_refused.is_empty() || !self.newly_allowed.is_empty()
    }

    /// The report for people: changes grouped by the rule that makes them.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "{} flows read: {} unchanged, {} newly refused, {} newly allowed, {} unknown, {} not judged when recorded (errors)\n",
            self.read,
            self.unchanged,
            self.newly_refused.len(),
            self.newly_allowed.len(),
            self.unknown.len(),
            self.skipped
        );
        let sections: [(&str, &[Replayed]); 3] = [
            ("newly refused", &self.newly_refused),
            ("newly allowed", &self.newly_allowed),
            ("unknown", &self.unknown),
        ];
        for (title, flows) in sections {
            if flows.is_empty() {
                continue;
            }
            out.push_str(&format!("\n{title}:\n"));
            let mut groups: BTreeMap<&str, Vec<&Replayed>> = BTreeMap::new();
            for flow in flows {
                let key = match &flow.outcome {
                    Outcome::Allowed { by } => by.as_str(),
                    Outcome::Refused { because } => because.as_str(),
                    Outcome::Unknown { why } => why.as_str(),
                };
                groups.entry(key).or_default().push(flow);
            }
            for (cause, flows) in groups {
                out.push_str(&format!("  {} flow(s): {cause}\n", flows.len()));
                for flow in flows.iter().take(3) {
                    out.push_str(&format!("    e.g. flow {}: {}", flow.id, flow.summary));
                    if let Some(why) = &flow.approximate {
                        out.push_str(&format!(" (approximate: {why})"));
                    }
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// Judge `flows` (in recorded order) under `model`'s policies.
pub fn replay(model: &PolicyModel, flows: impl IntoIterator<Item = FlowRecord>) -> Report {
    let mut report = Report::default();
    let mut learned = Learned::default();
    for flow in flows {
        report.read += 1;
        // errors, and the kernel's drops that were not policy's (a spoofed
        // source, a full conntrack table), were not judged when recorded
        let policy_drop = flow.drop_reason.as_deref().is_none_or(|r| r == "policy" || r == "no_proxy");
        if flow.verdict == Verdict::Error || !policy_drop {
            report.skipped += 1;
            continue;
        }
        let replayed = judge_flow(model, &flow, &learned);
        // an answer the proposed rules refuse teaches nothing
        if matches!(replayed.outcome, Outcome::Allowed { .. }) {
            learned.learn(&flow);
        }
        match (&replayed.outcome, replayed.change()) {
            (Outcome::Unknown { .. }, _) => report.unknown.push(replayed),
            (_, Some(true)) => report.newly_refused.push(replayed),
            (_, Some(false)) => report.newly_allowed.push(replayed),
            (_, None) => report.unchanged += 1,
        }
    }
    report
}

/// Addresses DNS answers in the file taught, per client address.
#[derive(Default)]
struct Learned(HashMap<(IpAddr, IpAddr), Vec<Arc<str>>>);

impl Learned {
    fn learn(&mut self, flow: &FlowRecord) {
        let Some(answer) = flow.dns() else { return };
        if !matches!(flow.verdict, Verdict::Forwarded | Verdict::Audited) || answer.rcode.as_deref() != Some("NOERROR")
        {
            return;
        }
        let name: Arc<str> = Arc::from(answer.query.as_str());
        for record in answer.answers.iter().filter(|a| a.rtype == "A" || a.rtype == "AAAA") {
            if let Ok(address) = record.data.parse::<IpAddr>() {
                let names = self.0.entry((flow.source.address.ip(), address)).or_default();
                if !names.contains(&name) {
                    names.push(name.clone());
                }
            }
        }
    }

    fn names(&self, source: IpAddr, destination: IpAddr) -> &[Arc<str>] {
        self.0.get(&(source, destination)).map_or(&[], Vec::as_slice)
    }
}

fn identity_of(peer: &FlowPeer) -> Identity {
    Identity::new(peer.identity, Labels::new(peer.labels.iter().map(|l| Label::parse(l)).collect()))
}

fn judge_flow(model: &PolicyModel, flow: &FlowRecord, learned: &Learned) -> Replayed {
    let (source, destination) = (identity_of(&flow.source), identity_of(&flow.destination));
    // an ICMP flow with its type is judged by `icmps` rules, as the kernel
    // did; without one (older records, later fragments) as a port-less protocol
    let (protocol, port) = match (&flow.detail, flow.protocol.as_str(), flow.icmp_type) {
        (Some(FlowDetail::Dns(d)), _, _) if d.transport == "udp" => (L4Protocol::Udp, flow.port),
        (_, "udp", _) => (L4Protocol::Udp, flow.port),
        (_, "sctp", _) => (L4Protocol::Sctp, flow.port),
        (_, "icmp", Some(t)) => (L4Protocol::Icmp, L4Protocol::icmp_port(t)),
        (_, "icmpv6", Some(t)) => (L4Protocol::Icmp6, L4Protocol::icmp_port(t)),
        (_, "icmp" | "icmpv6" | "ip", _) => (L4Protocol::Other, flow.port),
        _ => (L4Protocol::Tcp, flow.port),
    };
    let names = learned.names(flow.source.address.ip(), flow.destination.address.ip());
    let source_peer = PeerInfo::new(&source, flow.source.address.ip().into());
    let destination_peer =
        PeerInfo { identity: &destination, address: flow.destination.address.ip().into(), learned_names: names };
    let summary = summary(flow);
    let Some(kind) = kind_of(flow) else {
        // the kernel's flow of a connection: its L3/L4 verdict is all there is
        let outcome = l3l4(model, source_peer, destination_peer, port, protocol);
        return Replayed { id: flow.id, recorded: flow.verdict, outcome, approximate: None, summary };
    };
    let connection = Connection { source: source_peer, destination: destination_peer, port: flow.port, protocol, kind };
    let mut approximate = None;
    let outcome = match model.judge(&model.policies, &connection) {
        ConnectionVerdict::Drop { reason } => Outcome::Refused { because: reason },
        ConnectionVerdict::Forward(chain) if chain.links.is_empty() => {
            Outcome::Allowed { by: allowed_by(&chain.allowed_by) }
        }
        ConnectionVerdict::Forward(chain) => {
            let context = Arc::new(ConnectionContext {
                id: flow.connection,
                source: Arc::new(source.clone()),
                destination: Arc::new(destination.clone()),
                source_endpoint: None,
                destination_endpoint: None,
                source_addr: flow.source.address,
                destination_addr: flow.destination.address,
                port: flow.port,
                listener: Arc::from(flow.listener.as_str()),
            });
            match judge_request(flow, &chain.links, &context) {
                Ok((Some(because), note)) => {
                    approximate = note;
                    Outcome::Refused { because }
                }
                Ok((None, note)) => {
                    approximate = note;
                    Outcome::Allowed { by: chain.allowed_by.join(", ") }
                }
                Err(why) => Outcome::Unknown { why },
            }
        }
    };
    Replayed { id: flow.id, recorded: flow.verdict, outcome, approximate, summary }
}

/// Both sides' L3/L4 verdicts, for a flow of the kernel's: where L7 rules
/// apply, the proxy judges the requests (and they are flows of their own).
fn l3l4(
    model: &PolicyModel,
    source: PeerInfo<'_>,
    destination: PeerInfo<'_>,
    port: u16,
    protocol: L4Protocol,
) -> Outcome {
    let policies = &model.policies;
    let sides = [
        policies.evaluate(Direction::Egress, source.identity, destination, port, protocol),
        policies.evaluate(Direction::Ingress, destination.identity, source, port, protocol),
    ];
    let mut by = Vec::new();
    let mut l7 = false;
    for side in sides {
        match side {
            SideVerdict::Denied { reason } => return Outcome::Refused { because: reason },
            SideVerdict::Unenforced => {}
            SideVerdict::Allowed(allowances) => {
                l7 |= allowances.iter().any(|a| a.l7.is_some());
                by.extend(allowances.into_iter().map(|a| a.origin));
            }
        }
    }
    let mut by = allowed_by(&by);
    if l7 {
        by.push_str("; its requests are judged at L7 by the proxy");
    }
    Outcome::Allowed { by }
}

/// The protocol whose rules apply to the flow's requests; `None` for the
/// kernel's L3/L4 flows (`tcp`, `udp`, ...: listener `datapath`).
fn kind_of(flow: &FlowRecord) -> Option<Protocol> {
    if flow.listener == "datapath" {
        return None;
    }
    Protocol::ALL.into_iter().find(|p| p.name() == flow.protocol).or(match &flow.detail {
        Some(FlowDetail::L7(_)) => Some(Protocol::Stream),
        _ => None,
    })
}

type Judgement = (Option<String>, Option<String>);

/// Run the links on the request the record describes: `(refusal, note)`,
/// or why it cannot be judged.
fn judge_request(
    flow: &FlowRecord,
    links: &[ChainLink],
    context: &Arc<ConnectionContext>,
) -> Result<Judgement, String> {
    let mut run = ChainRun::default();
    let stopped = match &flow.detail {
        None => {
            return Err(format!(
                "allowed at L3/L4 now; its {} requests, judged by {}, were never seen (refused at L3/L4 when recorded)",
                flow.protocol,
                names(links)
            ));
        }
        Some(FlowDetail::Http(h)) => {
            let head = crate::wasm::request_head_line(&h.method, &h.path, &h.host, "http", 0);
            let request = http::Request { id: 0, head };
            let note = links
                .iter()
                .any(|l| l.filter.config.contains("\"headers\"") || l.filter.config.contains("\"headerMatches\""))
                .then(|| "headers are not in flow records: judged as if the request had none".to_string());
            let stopped = chain::run(links, context, &mut run, |link, view| {
                Ok(match link.filter.on_request(view, &request)? {
                    http::RequestDecision::Allow(allow) => Answer::Allow(allow.matched),
                    http::RequestDecision::Deny(deny) => Answer::Deny(link.denial(&deny.reason)),
                })
            });
            return Ok((refusal(stopped), note.or_else(|| custom(links))));
        }
        Some(FlowDetail::Dns(d)) => {
            let questions = std::iter::once(&d.query)
                .chain(&d.more_questions)
                .map(|name| dns::Question {
                    name: name.clone(),
                    qtype: hickory_proto::rr::RecordType::from_str(&d.qtype).map_or(0, u16::from),
                    qclass: 1,
                })
                .collect();
            let transport = if d.transport == "tcp" { dns::Transport::Tcp } else { dns::Transport::Udp };
            let query = dns::Query { id: 0, questions, transport };
            chain::run(links, context, &mut run, |link, view| {
                Ok(match link.filter.on_query(view, &query)? {
                    dns::QueryDecision::Allow(allow) => Answer::Allow(allow.matched),
                    dns::QueryDecision::Deny(deny) => Answer::Deny(link.denial(&deny.reason)),
                })
            })
        }
        Some(FlowDetail::Kafka(k)) => {
            let Some(api_key) = (0..=i16::MAX).find(|key| api_name(*key) == k.api_key) else {
                return Err(format!("unknown Kafka API {:?}", k.api_key));
            };
            let topics = match k.topics.as_slice() {
                [] => kafka::Topics::None,
                [all] if all == "*" => kafka::Topics::All,
                named => kafka::Topics::Named(named.to_vec()),
            };
            let request = kafka::Request {
                api_key,
                api_version: k.api_version,
                correlation_id: k.correlation_id,
                client_id: (!k.client_id.is_empty()).then(|| k.client_id.clone()),
                topics,
                transactional_id: None,
            };
            chain::run(links, context, &mut run, |link, view| {
                Ok(match link.filter.on_kafka_request(view, &request)? {
                    kafka::RequestDecision::Allow(allow) => Answer::Allow(allow.matched),
                    kafka::RequestDecision::Deny(deny) => Answer::Deny(link.denial(&deny.reason)),
                })
            })
        }
        Some(FlowDetail::Memcached(m)) => {
            let request = memcached::Request {
                protocol: if m.protocol == "binary" { memcached::Protocol::Binary } else { memcached::Protocol::Text },
                command: m.command.clone(),
                opcode: None,
                keys: m.keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            };
            chain::run(links, context, &mut run, |link, view| {
                Ok(match link.filter.on_memcached_request(view, &request)? {
                    memcached::RequestDecision::Allow(allow) => Answer::Allow(allow.matched),
                    memcached::RequestDecision::Deny(deny) => Answer::Deny(link.denial(&deny.reason)),
                })
            })
        }
        Some(FlowDetail::Cassandra(_) | FlowDetail::L7(_)) => {
            return Err(format!(
                "allowed at L3/L4; {} requests are not replayed at L7 (the record does not carry what {} reads)",
                flow.protocol,
                names(links)
            ));
        }
    };
    Ok((refusal(stopped), custom(links)))
}

fn refusal(stopped: Option<Stopped<String>>) -> Option<String> {
    match stopped? {
        Stopped::Denied(reason) => Some(reason),
        Stopped::Failed(FilterFailure { filter, message, .. }) => Some(format!("{filter} failed (closed): {message}")),
    }
}

fn names(links: &[ChainLink]) -> String {
    links.iter().map(|l| l.filter.name.to_string()).collect::<Vec<_>>().join(", ")
}

/// A custom filter reads more of the request than a record keeps.
fn custom(links: &[ChainLink]) -> Option<String> {
    let custom: Vec<&str> = links
        .iter()
        .map(|l| &*l.filter.name)
        .filter(|name| !Protocol::ALL.iter().any(|p| p.spec().policy_filter == Some(*name)))
        .collect();
    (!custom.is_empty()).then(|| format!("custom filter {} judged the recorded fields only", custom.join(", ")))
}

fn summary(flow: &FlowRecord) -> String {
    let who = |peer: &FlowPeer| {
        let labels = peer.short_labels();
        if labels.is_empty() { peer.address.to_string() } else { labels.join(",") }
    };
    let what = match &flow.detail {
        Some(FlowDetail::Http(h)) => format!("{} {}", h.method, h.path),
        Some(FlowDetail::Dns(d)) => format!("{} {}", d.qtype, d.query),
        Some(FlowDetail::Kafka(k)) => format!("{} {}", k.api_key, k.topics.join(",")),
        Some(FlowDetail::Memcached(m)) => format!("{} {}", m.command, m.keys.join(" ")),
        _ => match flow.icmp_type {
            Some(t) => format!("{} type {t}", flow.protocol),
            None => format!("{} port {}", flow.protocol, flow.port),
        },
    };
    format!("{what} from {} to {}", who(&flow.source), who(&flow.destination))
}

/// What allowed a flow: the rules, joined, or that none applied.
fn allowed_by(rules: &[String]) -> String {
    if rules.is_empty() { "no policy selects either side".to_string() } else { rules.join(", ") }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::observe::flow::{DnsAnswer, DnsFlow, HttpFlow};
    use crate::observe::metrics::Metrics;

    const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: "/public/.*"}]}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEndpoints: [{matchLabels: {app: web}}]
    - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]
      toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchPattern: "*.example.com"}]}}]
    - toFQDNs: [{matchName: api.example.com}, {matchName: api.example.org}]
"#;

    fn model() -> PolicyModel {
        PolicyModel::from_texts("{}", POLICY, Arc::new(Metrics::default())).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn peer(app: &str, address: &str) -> FlowPeer {
        labelled(&format!("k8s:app={app}"), address)
    }

    fn labelled(label: &str, address: &str) -> FlowPeer {
        let labels = [label.to_string(), "k8s:io.kubernetes.pod.namespace=default".into()];
        let identity = Identity::new(300, Labels::new(labels.iter().map(|l| Label::parse(l)).collect()));
        FlowPeer::new(&identity, address.parse::<SocketAddr>().unwrap())
    }

    fn world(address: &str) -> FlowPeer {
        FlowPeer::new(&Identity::reserved(crate::identity::reserved::WORLD), address.parse().unwrap())
    }

    fn flow(id: u64, protocol: &str, verdict: Verdict, source: FlowPeer, destination: FlowPeer) -> FlowRecord {
        let port = destination.address.port();
        FlowRecord { id, port, listener: "web".into(), ..FlowRecord::new(protocol, verdict, source, destination) }
    }

    #[test]
    fn kernel_flows_are_judged_at_l3l4_and_its_other_drops_are_not_judged() {
        let (client, web) = (peer("client", "10.0.0.1:40000"), peer("web", "10.0.0.2:80"));
        // the kernel's "redirected to the proxy": L7 rules apply, requests are the proxy's flows
        let redirected = FlowRecord {
            listener: "datapath".into(),
            ..flow(1, "tcp", Verdict::Forwarded, client.clone(), web.clone())
        };
        // SCTP to the web: no rule allows it (the HTTP rules name TCP 80)
        let sctp = FlowRecord {
            listener: "datapath".into(),
            ..flow(2, "sctp", Verdict::Dropped, client.clone(), web.clone())
        };
        // a spoofed packet's drop is not policy's
        let spoofed = FlowRecord {
            listener: "datapath".into(),
            drop_reason: Some("spoofed_source".into()),
            ..flow(3, "tcp", Verdict::Dropped, client.clone(), web.clone())
        };
        let report = replay(&model(), [redirected, sctp, spoofed]);
        assert_eq!((report.read, report.unchanged, report.skipped), (3, 2, 1), "{report:#?}");
        assert!(!report.changes(), "{report:#?}");
    }

    #[test]
    fn kernel_icmp_flows_are_judged_by_their_type() {
        const PINGABLE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: pingable}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      icmps: [{fields: [{type: 8}]}]
"#;
        let model =
            PolicyModel::from_texts("{}", PINGABLE, Arc::new(Metrics::default())).unwrap_or_else(|e| panic!("{e:?}"));
        let (client, web) = (peer("client", "10.0.0.1:0"), peer("web", "10.0.0.2:0"));
        // as the kernel recorded them: an echo request allowed, a timestamp
        // request dropped; both verdicts hold under the same policy
        let icmp = |id, icmp_type, verdict| FlowRecord {
            listener: "datapath".into(),
            icmp_type: Some(icmp_type),
            ..flow(id, "icmp", verdict, client.clone(), web.clone())
        };
        let report = replay(&model, [icmp(1, 8, Verdict::Forwarded), icmp(2, 13, Verdict::Dropped)]);
        assert_eq!((report.read, report.unchanged), (2, 2), "{report:#?}");
        assert!(!report.changes(), "{report:#?}");
        // recorded the other way round, both are changes, with the type named
        let report = replay(&model, [icmp(1, 8, Verdict::Dropped), icmp(2, 13, Verdict::Forwarded)]);
        assert_eq!(report.newly_allowed.iter().map(|f| f.id).collect::<Vec<_>>(), [1], "{report:#?}");
        assert_eq!(report.newly_refused.iter().map(|f| f.id).collect::<Vec<_>>(), [2], "{report:#?}");
        let refused = &report.newly_refused[0];
        assert!(refused.summary.starts_with("icmp type 13 from"), "{refused:#?}");
        match &refused.outcome {
            Outcome::Refused { because } => assert!(because.contains("ICMP type 13"), "{because}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_are_judged_by_the_filters_and_dns_answers_teach_only_when_allowed() {
        let (client, web) = (peer("client", "10.0.0.1:40000"), peer("web", "10.0.0.2:80"));
        let get = |id, path: &str, verdict| FlowRecord {
            detail: Some(FlowDetail::Http(HttpFlow { method: "GET".into(), path: path.into(), ..Default::default() })),
            ..flow(id, "http", verdict, client.clone(), web.clone())
        };
        let dns = |id, name: &str, address: &str| FlowRecord {
            detail: Some(FlowDetail::Dns(DnsFlow {
                query: name.into(),
                qtype: "A".into(),
                transport: "udp".into(),
                rcode: Some("NOERROR".into()),
                answers: vec![DnsAnswer { name: name.into(), rtype: "A".into(), data: address.into(), ttl: 30 }],
                ..Default::default()
            })),
            ..flow(id, "dns", Verdict::Forwarded, client.clone(), labelled("k8s:k8s-app=kube-dns", "10.0.0.53:53"))
        };
        let to_api = |id, address: &str| flow(id, "http", Verdict::Forwarded, client.clone(), world(address));
        let flows = [
            get(1, "/public/a", Verdict::Forwarded),
            get(2, "/admin", Verdict::Forwarded),
            get(3, "/public/b", Verdict::Denied),
            dns(4, "api.example.com", "192.0.2.10"),
            to_api(5, "192.0.2.10:443"),
            // refused by the DNS rules now: its answer teaches nothing
            dns(6, "api.example.org", "192.0.2.20"),
            to_api(7, "192.0.2.20:443"),
        ];
        let report = replay(&model(), flows);
        let ids = |flows: &[Replayed]| flows.iter().map(|f| f.id).collect::<Vec<_>>();
        assert_eq!(ids(&report.newly_refused), [2, 6, 7], "{report:#?}");
        assert_eq!(ids(&report.newly_allowed), [3], "{report:#?}");
        assert_eq!(report.unchanged, 3, "{report:#?}");
        let because = |id| match &report.newly_refused.iter().find(|f| f.id == id).unwrap().outcome {
            Outcome::Refused { because } => because.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(because(2), "http-policy: no HTTP rule matched (rules of default/web spec.ingress[0].toPorts[0])");
        assert!(because(6).starts_with("dns-policy: no DNS rule allows api.example.org"), "{}", because(6));
        assert!(because(7).starts_with("no egress rule allows"), "{}", because(7));
    }
}
