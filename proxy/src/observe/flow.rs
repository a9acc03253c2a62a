//! Flow records: one per L7 request and per dropped connection. They go to
//! the log, to a bounded history, and to live subscribers (`/flows`,
//! `weir observe`).

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::metrics::{NamespaceFlowLabels, NamespaceName, PolicyLabels};

use crate::context::ConnectionContext;
use crate::identity::{Endpoint, Identity, Label};
use crate::protocol::Protocol;

pub use super::detail::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Sent on to the upstream.
    Forwarded,
    /// Refused at L7 by a filter (HTTP 403 or the filter's reply).
    Denied,
    /// Refused at L3/L4: the connection was closed unserved.
    Dropped,
    /// Not served for another reason: bad request, filter failure, upstream down.
    Error,
    /// Forwarded, though an audited rule would have refused it (the reason
    /// says how and why).
    Audited,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Forwarded => "forwarded",
            Verdict::Denied => "denied",
            Verdict::Dropped => "dropped",
            Verdict::Error => "error",
            Verdict::Audited => "audited",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Verdict::Forwarded, Verdict::Denied, Verdict::Dropped, Verdict::Error, Verdict::Audited]
            .into_iter()
            .find(|v| v.as_str() == text)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowPeer {
    pub identity: u32,
    /// Shared with the identity: a flow costs no label copies.
    pub labels: Arc<[String]>,
    pub address: SocketAddr,
    /// The workload's namespace and name (a pod; in local mode a `weir.yaml`
    /// endpoint or a listener's destination), when the address is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Arc<str>>,
}

impl FlowPeer {
    pub fn new(identity: &Identity, address: SocketAddr) -> Self {
        FlowPeer {
            identity: identity.id,
            labels: identity.label_strings().clone(),
            address,
            namespace: None,
            pod: None,
        }
    }

    /// The same, naming the workload at the address.
    pub fn of(identity: &Identity, address: SocketAddr, endpoint: Option<&Endpoint>) -> Self {
        FlowPeer {
            namespace: endpoint.map(|e| e.namespace.clone()),
            pod: endpoint.map(|e| e.name.clone()),
            ..FlowPeer::new(identity, address)
        }
    }

    /// `namespace/name` or `name`.
    fn workload(&self) -> Option<String> {
        match (&self.namespace, &self.pod) {
            (Some(ns), Some(pod)) if !ns.is_empty() => Some(format!("{ns}/{pod}")),
            (_, Some(pod)) => Some(pod.to_string()),
            _ => None,
        }
    }

    /// The labels that tell workloads apart, without their source
    /// (`app=web`): the namespace label goes, it is shown on its own.
    pub fn short_labels(&self) -> Vec<&str> {
        self.labels
            .iter()
            .filter(|l| !l.starts_with("k8s:io.kubernetes.pod.namespace="))
            .map(|l| l.split_once(':').map_or(l.as_str(), |(_, rest)| rest))
            .collect()
    }

    fn brief(&self) -> String {
        let labels = self.short_labels();
        let labels = if labels.is_empty() { self.identity.to_string() } else { labels.join(",") };
        match self.workload() {
            Some(workload) => format!("{} {workload}[{labels}]", self.address),
            None => format!("{}[{labels}]", self.address),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    pub time: FlowTime,
    pub id: u64,
    pub protocol: String,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// L3/L4 rules that allowed the connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// What an L7 filter said allowed the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<String>,
    /// An audited flow's audited policies (those selecting either side).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audited_by: Vec<String>,
    /// A kernel drop's kind (`policy`, `no_proxy`, `spoofed_source`,
    /// `conntrack_full`, ...): only the first two are policy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
    pub source: FlowPeer,
    pub destination: FlowPeer,
    pub listener: String,
    pub port: u16,
    /// An ICMP or ICMPv6 message's type, as the kernel's programs read it
    /// (none for a later fragment, which carries no ICMP header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    pub connection: u64,
    /// The protocol's own part, shown under its name (`"http": {...}`).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<FlowDetail>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    #[serde(default)]
    pub filter_us: u64,
}

impl FlowRecord {
    /// A record of who talked to whom and nothing more: callers name what
    /// they add (`FlowRecord { reason, detail, ..FlowRecord::new(...) }`).
    pub fn new(protocol: &str, verdict: Verdict, source: FlowPeer, destination: FlowPeer) -> FlowRecord {
        FlowRecord {
            time: FlowTime::default(),
            id: 0,
            protocol: protocol.into(),
            verdict,
            reason: None,
            policies: Vec::new(),
            matched: None,
            audited_by: Vec::new(),
            drop_reason: None,
            source,
            destination,
            listener: String::new(),
            port: 0,
            icmp_type: None,
            connection: 0,
            detail: None,
            latency_us: None,
            filter_us: 0,
        }
    }

    /// A record of a connection the proxy holds: its peers, listener, port and id.
    pub fn of(context: &ConnectionContext, protocol: Protocol, verdict: Verdict) -> FlowRecord {
        FlowRecord {
            listener: context.listener.to_string(),
            port: context.port,
            connection: context.id,
            ..FlowRecord::new(
                protocol.name(),
                verdict,
                FlowPeer::of(&context.source, context.source_addr, context.source_endpoint.as_deref()),
                FlowPeer::of(&context.destination, context.destination_addr, context.destination_endpoint.as_deref()),
            )
        }
    }

    /// One line for logs and `weir observe`.
    pub fn to_text(&self) -> String {
        let mut line = format!(
            "{} {:<5} {:<9} {} -> {}",
            self.time,
            self.protocol,
            self.verdict.as_str(),
            self.source.brief(),
            self.destination.brief()
        );
        if let Some(detail) = &self.detail {
            detail.write_text(&mut line);
        }
        if let Some(l) = self.latency_us {
            let _ = write!(line, " {:.2}ms", l as f64 / 1000.0);
        }
        if let Some(m) = &self.matched {
            let _ = write!(line, " matched=\"{m}\"");
        }
        if let Some(r) = &self.reason {
            let _ = write!(line, " reason=\"{r}\"");
        }
        line
    }
}

/// Readers' accessors: `flow.http()` is the HTTP part, if the flow has one.
macro_rules! accessors {
    ($($name:ident: $variant:ident => $ty:ty;)*) => {
        impl FlowRecord {
            $(pub fn $name(&self) -> Option<&$ty> {
                match &self.detail {
                    Some(FlowDetail::$variant(d)) => Some(d),
                    _ => None,
                }
            })*
        }
    };
}

accessors! {
    http: Http => HttpFlow;
    dns: Dns => DnsFlow;
    kafka: Kafka => KafkaFlow;
    memcached: Memcached => MemcachedFlow;
    cassandra: Cassandra => CassandraFlow;
    l7: L7 => L7Flow;
}

/// Which flows a reader wants (`weir observe` flags, `/flows` query).
#[derive(Clone, Debug, Default)]
pub struct FlowFilter {
    pub verdict: Option<Verdict>,
    pub protocol: Option<String>,
    /// Every label must be on the source (`app=web`, `k8s:app=web`, `reserved:world`).
    pub from_labels: Vec<Label>,
    pub to_labels: Vec<Label>,
    pub http_path: Option<regex::Regex>,
    /// Matched against the DNS query name.
    pub dns_name: Option<regex::Regex>,
    /// Either side is in this namespace.
    pub namespace: Option<String>,
    /// Either side is this pod (`name`, or `namespace/name`).
    pub pod: Option<String>,
}

impl FlowFilter {
    pub fn matches(&self, flow: &FlowRecord) -> bool {
        let has_labels = |peer: &FlowPeer, wanted: &[Label]| {
            wanted.iter().all(|w| {
                peer.labels.iter().map(|l| Label::parse(l)).any(|l| {
                    l.key == w.key
                        && l.value == w.value
                        && (w.source == "any" || w.source == l.source || w.source == "k8s")
                })
            })
        };
        self.verdict.is_none_or(|v| v == flow.verdict)
            && self.protocol.as_ref().is_none_or(|p| *p == flow.protocol)
            && has_labels(&flow.source, &self.from_labels)
            && has_labels(&flow.destination, &self.to_labels)
            && self.http_path.as_ref().is_none_or(|re| flow.http().is_some_and(|h| re.is_match(&h.path)))
            && self.dns_name.as_ref().is_none_or(|re| flow.dns().is_some_and(|d| re.is_match(&d.query)))
            && self.namespace.as_ref().is_none_or(|ns| {
                [&flow.source, &flow.destination].iter().any(|p| p.namespace.as_deref() == Some(ns.as_str()))
            })
            && self.pod.as_ref().is_none_or(|pod| {
                [&flow.source, &flow.destination]
                    .iter()
                    .any(|p| p.pod.as_deref() == Some(pod.as_str()) || p.workload().as_deref() == Some(pod.as_str()))
            })
    }

    /// Parse the `/flows` query string; unknown keys are errors.
    pub fn from_query(query: &str) -> Result<(Self, QueryOptions), String> {
        let mut filter = FlowFilter::default();
        let mut options = QueryOptions { follow: false, last: None };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match key {
                "verdict" => filter.verdict = Some(Verdict::parse(&value).ok_or(format!("unknown verdict {value:?}"))?),
                "protocol" => filter.protocol = Some(value),
                "from_label" => filter.from_labels.push(Label::parse(&value)),
                "to_label" => filter.to_labels.push(Label::parse(&value)),
                "http_path" => {
                    filter.http_path = Some(regex::Regex::new(&value).map_err(|e| format!("http_path: {e}"))?)
                }
                "dns_name" => filter.dns_name = Some(regex::Regex::new(&value).map_err(|e| format!("dns_name: {e}"))?),
                "namespace" => filter.namespace = Some(value),
                "pod" => filter.pod = Some(value),
                "follow" => options.follow = value != "false" && value != "0",
                "last" => options.last = Some(value.parse().map_err(|_| format!("last: {value:?} is not a number"))?),
                other => return Err(format!("unknown query parameter {other:?}")),
            }
        }
        Ok((filter, options))
    }
}

pub struct QueryOptions {
    pub follow: bool,
    /// How many past flows to send first (default: all kept).
    pub last: Option<usize>,
}

pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 3 <= bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Fan-out of flow records with a bounded history.
pub struct FlowLog {
    live: broadcast::Sender<Arc<FlowRecord>>,
    history: Mutex<VecDeque<Arc<FlowRecord>>>,
    capacity: usize,
    next_id: AtomicU64,
    log: std::sync::atomic::AtomicBool,
    by_namespace: Option<Family<NamespaceFlowLabels, Counter>>,
    by_audit: Option<Family<PolicyLabels, Counter>>,
}

impl FlowLog {
    pub fn new(capacity: usize, log: bool) -> Self {
        let (live, _) = broadcast::channel(4096);
        FlowLog {
            live,
            history: Mutex::new(VecDeque::with_capacity(capacity.min(1 << 16))),
            capacity,
            next_id: AtomicU64::new(1),
            log: std::sync::atomic::AtomicBool::new(log),
            by_namespace: None,
            by_audit: None,
        }
    }

    pub fn set_logging(&self, log: bool) {
        self.log.store(log, Ordering::Relaxed);
    }

    /// Count flows by namespace in `family` (`weir_namespace_flows_total`).
    pub fn counting_namespaces(mut self, family: Family<NamespaceFlowLabels, Counter>) -> Self {
        self.by_namespace = Some(family);
        self
    }

    /// Count audited flows by audited policy in `family` (`weir_policy_audited_total`).
    pub fn counting_audits(mut self, family: Family<PolicyLabels, Counter>) -> Self {
        self.by_audit = Some(family);
        self
    }

    /// Stamp time and id, then publish.
    pub fn record(&self, mut flow: FlowRecord) {
        if let Some(family) = &self.by_audit
            && flow.verdict == Verdict::Audited
        {
            for policy in &flow.audited_by {
                family.get_or_create(&PolicyLabels { policy: policy.clone() }).inc();
            }
        }
        if let Some(family) = &self.by_namespace
            && let Some(namespace) = flow.destination.namespace.as_ref().or(flow.source.namespace.as_ref())
            && !namespace.is_empty()
        {
            let labels =
                NamespaceFlowLabels { namespace: NamespaceName(namespace.clone()), verdict: flow.verdict.as_str() };
            family.get_or_create(&labels).inc();
        }
        flow.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        flow.time = FlowTime(SystemTime::now());
        if self.log.load(Ordering::Relaxed) {
            tracing::info!(target: "weir::observe::flow", "{}", flow.to_text());
        }
        let flow = Arc::new(flow);
        if self.capacity > 0 {
            let mut history = self.history.lock().unwrap();
            if history.len() == self.capacity {
                history.pop_front();
            }
            history.push_back(flow.clone());
        }
        // no subscribers is fine
        let _ = self.live.send(flow);
    }

    /// The kept history and a receiver for what comes after it.
    pub fn subscribe(&self) -> (Vec<Arc<FlowRecord>>, broadcast::Receiver<Arc<FlowRecord>>) {
        let history = self.history.lock().unwrap();
        // subscribe while holding the lock: nothing falls between the two
        let receiver = self.live.subscribe();
        (history.iter().cloned().collect(), receiver)
    }
}

/// `2026-11-24T10:15:30.123Z`
/// When a flow was recorded; formatted (RFC 3339, UTC, milliseconds) only
/// when someone reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTime(pub SystemTime);

impl Default for FlowTime {
    fn default() -> Self {
        FlowTime(UNIX_EPOCH)
    }
}

impl fmt::Display for FlowTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&rfc3339(self.0))
    }
}

impl Serialize for FlowTime {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FlowTime {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_rfc3339(&text)
            .map(FlowTime)
            .ok_or_else(|| serde::de::Error::custom(format!("`{text}` is not a time like 2026-01-31T12:00:00.000Z")))
    }
}

/// The inverse of [`rfc3339`] (UTC with a `Z`, fractional seconds optional).
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let (clock, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut clock = clock.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    // RFC 3339 years have four digits: nothing below overflows (a flow
    // file is input, and `weir policy replay` reads any)
    if !(0..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let nanos: u32 = format!("{fraction:0<9}").get(..9)?.parse().ok()?;
    // days-from-civil (Howard Hinnant's algorithm)
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let secs = days * 86400 + hour * 3600 + minute * 60 + second;
    UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nanos))
}

pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn flow_times_read_back_what_they_write() {
        for millis in [0, 951_782_400_123, 1_795_000_000_000, 4_102_444_799_999] {
            let time = FlowTime(UNIX_EPOCH + Duration::from_millis(millis));
            let json = serde_json::to_string(&time).unwrap();
            assert_eq!(serde_json::from_str::<FlowTime>(&json).unwrap(), time, "{json}");
        }
        assert!(serde_json::from_str::<FlowTime>("\"2026-13-01T00:00:00Z\"").is_err());
        assert!(serde_json::from_str::<FlowTime>("\"yesterday\"").is_err());
        // input from a file: huge years are refused, not overflowed
        for text in ["500000000000-01-01T00:00:00Z", "9999999999999999999-01-01T00:00:00Z", "10000-01-01T00:00:00Z"] {
            assert!(serde_json::from_str::<FlowTime>(&format!("\"{text}\"")).is_err(), "{text}");
        }
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(951_782_400_123)), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_000_000)), "2026-11-18T11:06:40.000Z");
    }

    fn flow(verdict: Verdict, src: &[&str], path: &str) -> FlowRecord {
        let source = FlowPeer {
            identity: 300,
            labels: src.iter().map(|s| s.to_string()).collect(),
            address: "127.0.0.2:1".parse().unwrap(),
            namespace: Some("shop".into()),
            pod: Some("client-7f9".into()),
        };
        let destination = FlowPeer {
            identity: 2,
            labels: Arc::new(["reserved:world".to_string()]),
            address: "127.0.0.1:2".parse().unwrap(),
            namespace: None,
            pod: None,
        };
        FlowRecord {
            listener: "l".into(),
            port: 80,
            connection: 1,
            detail: Some(FlowDetail::Http(HttpFlow {
                method: "GET".into(),
                path: path.into(),
                host: "h".into(),
                version: "HTTP/1.1".into(),
                status: Some(200),
                ..Default::default()
            })),
            ..FlowRecord::new("http", verdict, source, destination)
        }
    }

    /// The protocol's part is one enum, but the JSON keeps one key per
    /// protocol (`"http": {...}`), and reads back the same.
    #[test]
    fn the_protocol_detail_is_shown_under_its_name() {
        let http = flow(Verdict::Forwarded, &[], "/x");
        let json: serde_json::Value = serde_json::to_value(&http).unwrap();
        assert_eq!(json["http"]["path"], "/x");
        assert_eq!(serde_json::from_value::<FlowRecord>(json).unwrap(), http);

        let bare = FlowRecord { detail: None, ..http.clone() };
        let json = serde_json::to_value(&bare).unwrap();
        assert!(json.get("http").is_none() && json.get("detail").is_none(), "{json}");
        assert_eq!(serde_json::from_value::<FlowRecord>(json).unwrap(), bare);

        let l7 = FlowRecord {
            detail: Some(FlowDetail::L7(L7Flow {
                l7proto: "r2d2".into(),
                fields: [("cmd".into(), "READ".into())].into(),
            })),
            ..http.clone()
        };
        let json = serde_json::to_value(&l7).unwrap();
        assert_eq!(json["l7"]["fields"]["cmd"], "READ");
        assert_eq!(serde_json::from_value::<FlowRecord>(json).unwrap(), l7);
        assert!(l7.to_text().contains(r#" cmd="READ""#), "{}", l7.to_text());
        assert!(http.to_text().contains(" HTTP/1.1 GET /x host=h => 200"), "{}", http.to_text());
    }

    #[test]
    fn filters_by_verdict_labels_and_path() {
        let f = flow(Verdict::Denied, &["k8s:app=web"], "/admin/x");
        let (filter, _) = FlowFilter::from_query("verdict=denied&from_label=app%3Dweb&http_path=%5E/admin").unwrap();
        assert!(filter.matches(&f));
        let (filter, _) = FlowFilter::from_query("verdict=forwarded").unwrap();
        assert!(!filter.matches(&f));
        let (filter, _) = FlowFilter::from_query("from_label=app=db").unwrap();
        assert!(!filter.matches(&f));
        let (filter, _) = FlowFilter::from_query("to_label=reserved:world&protocol=http").unwrap();
        assert!(filter.matches(&f));
        assert!(FlowFilter::from_query("colour=red").is_err());
    }

    #[test]
    fn filters_by_namespace_and_pod_and_names_them_in_text() {
        let f = flow(Verdict::Denied, &["k8s:app=web"], "/admin/x");
        let matches = |query: &str| FlowFilter::from_query(query).unwrap().0.matches(&f);
        assert!(matches("namespace=shop"));
        assert!(!matches("namespace=default"));
        assert!(matches("pod=client-7f9"));
        assert!(matches("pod=shop%2Fclient-7f9"));
        assert!(!matches("pod=other%2Fclient-7f9"));
        assert!(f.to_text().contains("127.0.0.2:1 shop/client-7f9[app=web]"), "{}", f.to_text());
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["source"]["namespace"], "shop");
        assert_eq!(json["source"]["pod"], "client-7f9");
        assert!(json["destination"].get("pod").is_none());
    }

    #[test]
    fn flows_are_counted_by_the_namespace_they_concern() {
        let metrics = crate::observe::metrics::Metrics::default();
        let log = FlowLog::new(0, false).counting_namespaces(metrics.namespace_flows.clone());
        // the destination is no workload here: the source's namespace counts
        log.record(flow(Verdict::Denied, &["k8s:app=web"], "/admin/x"));
        let mut to_pod = flow(Verdict::Forwarded, &[], "/");
        to_pod.destination.namespace = Some("db".into());
        log.record(to_pod);
        log.record(flow(Verdict::Denied, &[], "/"));
        let text = metrics.encode();
        assert!(text.contains("weir_namespace_flows_total{namespace=\"shop\",verdict=\"denied\"} 2"), "{text}");
        assert!(text.contains("weir_namespace_flows_total{namespace=\"db\",verdict=\"forwarded\"} 1"), "{text}");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%3Db+c"), "a=b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn history_is_bounded_and_subscribers_see_new_flows() {
        let log = FlowLog::new(2, false);
        for _ in 0..3 {
            log.record(flow(Verdict::Forwarded, &[], "/"));
        }
        let (history, mut rx) = log.subscribe();
        assert_eq!(history.iter().map(|f| f.id).collect::<Vec<_>>(), vec![2, 3]);
        log.record(flow(Verdict::Denied, &[], "/"));
        assert_eq!(rx.try_recv().unwrap().id, 4);
    }
}
