//! Prometheus metrics, served on the admin port at /metrics.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub protocol: &'static str,
    pub verdict: &'static str,
}

/// This build: `weir VERSION (COMMIT)`. The commit is given at build time
/// (`WEIR_COMMIT`, as scripts/image.sh does), else `dev`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = match option_env!("WEIR_COMMIT") {
    Some(commit) => commit,
    None => "dev",
};

/// A workload's namespace as a label value: shared with the flow's peer,
/// so counting a flow copies no text.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct NamespaceName(pub Arc<str>);

impl EncodeLabelValue for NamespaceName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

/// Flows by the namespace of the workload they concern: bounded by the
/// cluster's namespaces (pods and identities are not: they are in the flows).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceFlowLabels {
    pub namespace: NamespaceName,
    pub verdict: &'static str,
}

/// Audited flows by audited policy: bounded by the policies written.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterLabels {
    pub filter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterFailureLabels {
    pub filter: String,
    /// trap, timeout, memory, config
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterCounterLabels {
    pub filter: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub listener: String,
    /// process_limit, listener_limit, identity_limit
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// applied, rejected, unchanged
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    pub verdict: &'static str,
    /// NOERROR, NXDOMAIN, REFUSED, SERVFAIL, FORMERR, ... ("none" when nothing was sent)
    pub rcode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KafkaLabels {
    /// Produce, Fetch, Metadata, ...
    pub api: String,
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemcachedLabels {
    /// The command word or binary opcode name.
    pub command: String,
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CassandraLabels {
    /// The request's opcode (`query`, `execute`, `batch`, ...).
    pub opcode: String,
    pub verdict: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    /// HTTP's series of `requests` and `request_duration`, found once.
    http: HttpSeries,
    pub namespace_flows: Family<NamespaceFlowLabels, Counter>,
    pub policy_audited: Family<PolicyLabels, Counter>,
    pub request_duration: Family<ProtocolLabels, Histogram>,
    pub filter_duration: Family<FilterLabels, Histogram>,
    pub filter_failures: Family<FilterFailureLabels, Counter>,
    pub filter_instantiations: Family<FilterLabels, Counter>,
    pub filter_recycled: Family<FilterLabels, Counter>,
    pub filter_counters: Family<FilterCounterLabels, Counter>,
    pub connections: Family<ListenerLabels, Counter>,
    pub active_connections: Family<ListenerLabels, Gauge>,
    /// HTTP/1.1 keep-alive connections at rest between requests.
    pub resting_connections: Family<ListenerLabels, Gauge>,
    pub connections_dropped: Family<ListenerLabels, Counter>,
    pub connections_refused: Family<RefusedLabels, Counter>,
    pub connections_closed_idle: Family<ListenerLabels, Counter>,
    pub policy_reloads: Family<ReloadLabels, Counter>,
    pub policy_generation: Gauge,
    pub dns_queries: Family<DnsLabels, Counter>,
    pub dns_upstream_duration: Histogram,
    pub fqdn_addresses: Gauge,
    pub kafka_requests: Family<KafkaLabels, Counter>,
    /// Bytes of Kafka answers moved socket to socket with `splice(2)`.
    pub kafka_spliced_bytes: Counter,
    pub memcached_requests: Family<MemcachedLabels, Counter>,
    pub cassandra_requests: Family<CassandraLabels, Counter>,
    /// Kernel drop counters and conntrack fill (eBPF datapath).
    pub datapath: DatapathMetrics,
    pub policy_objects_set_aside: Gauge,
    /// The API server's watches and the identities this node allocated.
    pub kubernetes: KubernetesMetrics,
    /// Starts and hand-overs (`handover`).
    pub handover: HandoverMetrics,
}

/// One protocol's series of the request families, each looked up in its
/// family once and then kept: a family's lookup takes a lock and hashes
/// the labels, and HTTP counts every request. A clone of a series counts
/// into the family's own.
#[derive(Default)]
struct HttpSeries {
    /// By verdict, in the order of `VERDICTS`.
    requests: [OnceLock<Counter>; VERDICTS.len()],
    duration: OnceLock<Histogram>,
}

/// The verdicts a request is counted under (`observe::flow::Verdict`).
const VERDICTS: [&str; 5] = ["forwarded", "denied", "dropped", "error", "audited"];

impl Metrics {
    /// Count an HTTP request and how long it took.
    pub fn http_request(&self, verdict: &'static str, took: Duration) {
        let labels = || RequestLabels { protocol: "http", verdict };
        match VERDICTS.iter().position(|v| *v == verdict) {
            Some(i) => self.http.requests[i].get_or_init(|| self.requests.get_or_create(&labels()).clone()).inc(),
            None => self.requests.get_or_create(&labels()).inc(),
        };
        let duration = || self.request_duration.get_or_create(&ProtocolLabels { protocol: "http" }).clone();
        self.http.duration.get_or_init(duration).observe(took.as_secs_f64());
    }
}

fn request_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

fn filter_histogram() -> Histogram {
    // 250 ns .. ~130 ms
    Histogram::new(exponential_buckets(0.00000025, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("weir");
        let m = Metrics {
            requests: Family::default(),
            http: HttpSeries::default(),
            namespace_flows: Family::default(),
            policy_audited: Family::default(),
            request_duration: Family::new_with_constructor(request_histogram),
            filter_duration: Family::new_with_constructor(filter_histogram),
            filter_failures: Family::default(),
            filter_instantiations: Family::default(),
            filter_recycled: Family::default(),
            filter_counters: Family::default(),
            connections: Family::default(),
            active_connections: Family::default(),
            resting_connections: Family::default(),
            connections_dropped: Family::default(),
            connections_refused: Family::default(),
            connections_closed_idle: Family::default(),
            policy_reloads: Family::default(),
            policy_generation: Gauge::default(),
            dns_queries: Family::default(),
            dns_upstream_duration: request_histogram(),
            fqdn_addresses: Gauge::default(),
            kafka_requests: Family::default(),
            kafka_spliced_bytes: Counter::default(),
            memcached_requests: Family::default(),
            cassandra_requests: Family::default(),
            datapath: Default::default(),
            policy_objects_set_aside: Gauge::default(),
            kubernetes: Default::default(),
            handover: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "build",
            "This weir's version and commit",
            prometheus_client::metrics::info::Info::new(vec![("version", VERSION), ("commit", COMMIT)]),
        );
        registry.register("requests", "L7 requests by protocol and verdict", m.requests.clone());
        registry.register(
            "namespace_flows",
            "Flows by the namespace of the workload they concern (the destination's, else the source's) and verdict",
            m.namespace_flows.clone(),
        );
        registry.register(
            "policy_audited",
            "Flows an audited policy would have refused (enforcementMode: audit), by policy; each audited flow counts once for every audited policy selecting either side",
            m.policy_audited.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head, including upstream",
            m.request_duration.clone(),
        );
        registry.register("filter_duration_seconds", "Time spent in one filter call", m.filter_duration.clone());
        registry.register(
            "filter_failures",
            "Filter calls that trapped, ran out of time or memory",
            m.filter_failures.clone(),
        );
        registry.register(
            "filter_instantiations",
            "Filter instances created (first use on a worker, or replacing a failed one)",
            m.filter_instantiations.clone(),
        );
        registry.register(
            "filter_recycled",
            "Filter instances retired after a call because they used most of their memory budget",
            m.filter_recycled.clone(),
        );
        registry.register("filter_counter", "Counters kept by filters through the host API", m.filter_counters.clone());
        registry.register("connections", "Downstream connections accepted", m.connections.clone());
        registry.register("active_connections", "Downstream connections open now", m.active_connections.clone());
        registry.register(
            "resting_connections",
            "HTTP/1.1 keep-alive connections open now between requests, held as their socket alone",
            m.resting_connections.clone(),
        );
        registry.register(
            "connections_dropped",
            "Connections closed at accept because L3/L4 policy denies them",
            m.connections_dropped.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections reset at accept because a connection limit was reached",
            m.connections_refused.clone(),
        );
        registry.register(
            "connections_closed_idle",
            "Connections closed because the client sent nothing for the idle or head timeout",
            m.connections_closed_idle.clone(),
        );
        registry.register("policy_reloads", "Configuration and policy reloads by result", m.policy_reloads.clone());
        registry.register("policy_generation", "Generation of the policy model in force", m.policy_generation.clone());
        registry.register("dns_queries", "DNS queries by verdict and answer code", m.dns_queries.clone());
        registry.register(
            "dns_upstream_duration_seconds",
            "Time from forwarding a DNS query to the resolver's answer",
            m.dns_upstream_duration.clone(),
        );
        registry.register(
            "fqdn_addresses",
            "Addresses learned from DNS answers and held for toFQDNs",
            m.fqdn_addresses.clone(),
        );
        registry.register("kafka_requests", "Kafka requests by API and verdict", m.kafka_requests.clone());
        registry.register(
            "kafka_spliced_bytes",
            "Bytes of large Kafka answers moved from the broker's socket to the client's in the kernel (splice)",
            m.kafka_spliced_bytes.clone(),
        );
        registry.register(
            "memcached_requests",
            "memcached requests by command and verdict",
            m.memcached_requests.clone(),
        );
        registry.register(
            "cassandra_requests",
            "Cassandra requests by opcode and verdict",
            m.cassandra_requests.clone(),
        );
        registry.register(
            "policy_objects_set_aside",
            "Policy objects of the API server left out of the model in force, or held at their last good version",
            m.policy_objects_set_aside.clone(),
        );
        m.datapath.register(&mut registry);
        m.kubernetes.register(&mut registry);
        m.handover.register(&mut registry);
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

// ------------------------------------------------------------- the datapath

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

// ------------------------------------------------------------- hand-overs

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandoverLabels {
    /// `took_over` (this process took the node from a running weir),
    /// `aborted` (a new weir went away before it was ready).
    pub result: &'static str,
}

/// How this process came to serve, and the weir it replaced.
#[derive(Default)]
pub struct HandoverMetrics {
    pub handovers: Family<HandoverLabels, Counter>,
    /// From the process's start to serving (the model in force, every socket served).
    pub start_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// 1 while the weir this one replaced still drains its connections.
    pub predecessor_draining: Gauge,
    /// Connections the replaced weir still had open at its drain deadline.
    pub predecessor_cut_connections: Counter,
}

impl HandoverMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "handovers",
            "Hand-overs between weir processes on this node, by result",
            self.handovers.clone(),
        );
        registry.register(
            "start_seconds",
            "Seconds from this process's start until it served (model in force, sockets served)",
            self.start_seconds.clone(),
        );
        registry.register(
            "handover_predecessor_draining",
            "1 while the weir this one took over from drains its connections",
            self.predecessor_draining.clone(),
        );
        registry.register(
            "handover_predecessor_cut_connections",
            "Connections the replaced weir closed at its drain deadline",
            self.predecessor_cut_connections.clone(),
        );
    }
}

/// `weir_datapath_*` in /metrics.
#[derive(Default)]
pub struct DatapathMetrics {
    pub drops: Family<DropLabels, Counter>,
    pub conntrack_entries: Family<EndpointLabels, Gauge>,
    pub conntrack_refused: Family<EndpointLabels, Counter>,
    pub conntrack_expired: Counter,
    pub conntrack_capacity: Gauge,
    pub fragment_records: Family<EndpointLabels, Gauge>,
}

impl DatapathMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "datapath_drops",
            "Packets the eBPF programs dropped, by reason (kernel counters, read every second)",
            self.drops.clone(),
        );
        registry.register(
            "datapath_conntrack_entries",
            "Conntrack entries held for each endpoint's connections",
            self.conntrack_entries.clone(),
        );
        registry.register(
            "datapath_conntrack_refused",
            "New connections dropped for want of a conntrack entry (endpoint limit or full table)",
            self.conntrack_refused.clone(),
        );
        registry.register(
            "datapath_conntrack_expired",
            "Expired conntrack entries deleted by weir's collector",
            self.conntrack_expired.clone(),
        );
        registry.register(
            "datapath_conntrack_capacity",
            "Size of the conntrack table",
            self.conntrack_capacity.clone(),
        );
        registry.register(
            "datapath_fragment_records",
            "Fragmented datagrams of each endpoint whose first fragment passed and whose last has not",
            self.fragment_records.clone(),
        );
    }
}

// ------------------------------------------------------- the Kubernetes source

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// `pods`, `ciliumnetworkpolicies`, ...
    pub resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    pub verb: String,
    /// The answer's status code, or `error` when none came.
    pub code: String,
}

/// `weir_kubernetes_*` in /metrics. Clones share their counters, so the
/// source can count before the proxy's registry exists.
#[derive(Clone, Default)]
pub struct KubernetesMetrics {
    pub watch_failures: Family<ResourceLabels, Counter>,
    pub relists: Family<ResourceLabels, Counter>,
    pub requests: Family<ApiRequestLabels, Counter>,
    pub identities_allocated: Counter,
}

impl KubernetesMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kubernetes_watch_failures",
            "Watches or lists of the API server that failed (the last state stays in force; weir retries)",
            self.watch_failures.clone(),
        );
        registry.register(
            "kubernetes_relists",
            "Kinds listed again because a watch could not be resumed",
            self.relists.clone(),
        );
        registry.register("kubernetes_requests", "Requests made to the API server", self.requests.clone());
        registry.register(
            "kubernetes_identities_allocated",
            "Identity objects this node created or found for its pods' label sets",
            self.identities_allocated.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_requests_counted_through_kept_series_show_in_the_families() {
        let metrics = super::Metrics::default();
        for _ in 0..3 {
            metrics.http_request("forwarded", std::time::Duration::from_millis(1));
        }
        metrics.http_request("denied", std::time::Duration::from_millis(2));
        let text = metrics.encode();
        assert!(text.contains(r#"weir_requests_total{protocol="http",verdict="forwarded"} 3"#), "{text}");
        assert!(text.contains(r#"weir_requests_total{protocol="http",verdict="denied"} 1"#), "{text}");
        assert!(!text.contains(r#"verdict="error""#), "no series before its first request: {text}");
        assert!(text.contains(r#"weir_request_duration_seconds_count{protocol="http"} 4"#), "{text}");
    }

    /// deploy/grafana's dashboard queries only metrics weir exports: a
    /// renamed metric fails here, not silently on someone's screen.
    #[test]
    fn the_grafana_dashboard_queries_metrics_weir_exports() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/weir-dashboard.json");
        let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let exported = super::Metrics::default().encode();
        let names = regex::Regex::new(r"weir_[a-z_]+").unwrap();
        let mut queried = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for name in names.find_iter(expr).map(|m| m.as_str()) {
                    // counters and histograms are queried by their samples' names
                    let family = ["_total", "_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|suffix| name.strip_suffix(suffix))
                        .unwrap_or(name);
                    let declared = format!("# TYPE {family} ");
                    assert!(
                        exported.contains(&declared),
                        "{:?} queries {name}, which weir does not export",
                        panel["title"]
                    );
                    queried += 1;
                }
            }
        }
        assert!(queried >= 10, "{queried}");
    }
}
