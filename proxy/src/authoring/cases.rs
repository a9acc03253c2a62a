//! `weir filter test`: a filter run in the real host against a file of
//! requests with the decisions they must get, then fuzzed with generated
//! requests for traps, timeouts and runaway memory.
//!
//! ```yaml
//! config: {denyPrefixes: [/admin]}      # what a policy's `wasm` rule would hand it
//! cases:
//!   - name: admin is off limits
//!     http: {method: GET, path: /admin, headers: {accept: text/html}}
//!     source: {labels: ["k8s:app=web"], identity: 300}   # default: reserved:world
//!     expect: {deny: "off limits"}     # or `allow`, `deny`, {deny: ..., status: 401}
//! ```
//! A case names one of `http`, `dns` (`name`, `type`), `kafka` (`api_key`,
//! `api_version`, `client_id`, `topics`, `transactional_id`), `memcached`
//! (`command`, `keys`, `binary`), `cassandra` (`opcode`, `version`,
//! `keyspace`, `statements: [{action, table, query}]`) or `stream` (`data`,
//! `side`, `end`: bytes a fresh connection sends), matching the filter's
//! world.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::context::{ConnectionContext, Direction};
use crate::identity::{Identity, Label, Labels, reserved};
use crate::protocol::Protocol;
use crate::wasm::{
    ConfiguredFilter, ConnectionView, FailureKind, FailurePolicy, FilterFailure, FilterLimits, cassandra, dns, http,
    kafka, memcached, stream,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    #[serde(default)]
    config: Option<serde_yaml::Value>,
    #[serde(default)]
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    source: Option<Peer>,
    #[serde(default)]
    destination: Option<Peer>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    http: Option<HttpCase>,
    #[serde(default)]
    dns: Option<DnsCase>,
    #[serde(default)]
    kafka: Option<KafkaCase>,
    #[serde(default)]
    memcached: Option<MemcachedCase>,
    #[serde(default)]
    cassandra: Option<CassandraCase>,
    #[serde(default)]
    stream: Option<StreamCase>,
    expect: Expect,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Peer {
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    identity: Option<u32>,
    #[serde(default)]
    address: Option<SocketAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpCase {
    #[serde(default = "get")]
    method: String,
    path: String,
    #[serde(default)]
    authority: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn get() -> String {
    "GET".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsCase {
    name: String,
    #[serde(default = "a", rename = "type")]
    qtype: String,
    #[serde(default)]
    tcp: bool,
}

fn a() -> String {
    "A".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KafkaCase {
    api_key: i16,
    #[serde(default)]
    api_version: i16,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    transactional_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CassandraCase {
    #[serde(default = "query")]
    opcode: String,
    #[serde(default = "v4")]
    version: u8,
    #[serde(default)]
    keyspace: Option<String>,
    statements: Vec<StatementCase>,
}

fn query() -> String {
    "query".into()
}

fn v4() -> u8 {
    4
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatementCase {
    action: String,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    query: String,
}

/// Bytes one side of a new connection sends a stream filter (a parser of
/// the `l7proto` it is named for); the case is allowed when every byte is
/// passed, denied when any is dropped or the filter breaks the connection.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamCase {
    /// As YAML text: `"READ /etc/motd\r\n"`.
    data: String,
    #[serde(default)]
    side: StreamSide,
    /// The sender closes after this data.
    #[serde(default)]
    end: bool,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum StreamSide {
    #[default]
    Request,
    Reply,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemcachedCase {
    command: String,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    binary: bool,
}

/// `allow`, `deny`, `more` (a stream filter waits for more bytes), or
/// `{deny: part of the reason, status: 401}`.
enum Expect {
    Allow,
    Deny,
    More,
    Detailed(Detailed),
}

struct Detailed {
    /// Refused, with a reason containing this.
    deny: Option<String>,
    /// An HTTP refusal's own reply status.
    status: Option<u16>,
}

impl<'de> Deserialize<'de> for Expect {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_yaml::Value::deserialize(deserializer)?;
        let wrong = || D::Error::custom("expect: give allow, deny, more, or {deny: part of the reason, status: 403}");
        if let Some(word) = value.as_str() {
            return match word.to_ascii_lowercase().as_str() {
                "allow" => Ok(Expect::Allow),
                "deny" => Ok(Expect::Deny),
                "more" => Ok(Expect::More),
                _ => Err(wrong()),
            };
        }
        let map = value.as_mapping().ok_or_else(wrong)?;
        let (mut deny, mut status) = (None, None);
        for (key, v) in map {
            match key.as_str() {
                Some("deny") => deny = Some(v.as_str().ok_or_else(wrong)?.to_string()),
                Some("status") => status = Some(v.as_u64().and_then(|s| u16::try_from(s).ok()).ok_or_else(wrong)?),
                _ => return Err(wrong()),
            }
        }
        if deny.is_none() && status.is_none() {
            return Err(wrong());
        }
        Ok(Expect::Detailed(Detailed { deny, status }))
    }
}

/// What the filter answered, in one form for every world.
#[derive(Debug)]
enum Outcome {
    Allow,
    Deny {
        reason: String,
        status: Option<u16>,
    },
    /// A stream filter that decided nothing yet: it wants more bytes.
    Undecided(u32),
    Failed(FilterFailure),
}

pub struct TestOptions {
    pub cases: Option<std::path::PathBuf>,
    /// Fuzz this long after the cases (zero: not at all).
    pub fuzz: Duration,
    pub limits: FilterLimits,
}

/// Run the cases and the fuzzing; `Ok(true)` when everything passed.
pub fn run_tests(name: &str, bytes: &[u8], options: &TestOptions) -> anyhow::Result<bool> {
    let runtime = super::runtime()?;
    let component = runtime.load(name, bytes)?;
    let world = component.world();
    let file: CasesFile = match &options.cases {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            serde_yaml::from_str(&text).with_context(|| format!("{}", path.display()))?
        }
        None => CasesFile { config: None, cases: Vec::new() },
    };
    let config = match &file.config {
        None => "{}".to_string(),
        Some(value) => serde_json::to_string(value).context("config")?,
    };
    let filter = runtime
        .configure(&component, config.clone(), options.limits, FailurePolicy::Closed)
        .map_err(|e| anyhow::anyhow!("{name} refused its configuration {config}: {e}"))?;
    println!("{name}: {} world, configured with {config}", world.world());
    let memory = filter.instance_memory().map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    println!(
        "an instance holds {:.1} MiB of its {} MiB memory budget after configure",
        memory as f64 / f64::from(1 << 20),
        options.limits.memory >> 20
    );
    let mut failed = 0;
    for (i, case) in file.cases.iter().enumerate() {
        let label = case.name.clone().unwrap_or_else(|| format!("case {}", i + 1));
        let (result, logs) = crate::wasm::capture_logs(|| run_case(&filter, world, case));
        let (what, outcome) = result.with_context(|| label.clone())?;
        let verdict = judge(&case.expect, &outcome);
        match verdict {
            Ok(()) => println!("ok    {label}"),
            Err(expected) => {
                failed += 1;
                let who = match &case.source {
                    Some(p) if !p.labels.is_empty() => p.labels.join(","),
                    Some(Peer { identity: Some(id), .. }) => format!("identity {id}"),
                    _ => "reserved:world".to_string(),
                };
                println!(
                    "FAIL  {label}\n        request:  {what} from [{who}]\n        expected: {expected}\n        got:      {}",
                    describe(&outcome)
                );
                for line in &logs {
                    println!("        log:      {}", line.replace('\n', "\n                  "));
                }
            }
        }
    }
    if !file.cases.is_empty() {
        println!("{} passed, {failed} failed", file.cases.len() - failed);
    }
    let fuzzed = if options.fuzz.is_zero() {
        true
    } else {
        let recycled = || {
            let labels = crate::observe::metrics::FilterLabels { filter: name.to_string() };
            runtime.metrics().filter_recycled.get_or_create(&labels).get()
        };
        let before = recycled();
        let (passed, asked) = fuzz(&filter, world, options.fuzz);
        let retired = recycled() - before;
        // not a failure: the host replaces such an instance between calls
        if let Some(every) = asked.checked_div(retired) {
            println!(
                "note  memory grows from call to call: an instance was retired at 3/4 of its budget {retired} \
                 times (once every {every} requests) and replaced by a fresh one"
            );
        }
        passed
    };
    Ok(failed == 0 && fuzzed)
}

fn judge(expect: &Expect, outcome: &Outcome) -> Result<(), String> {
    match (expect, outcome) {
        (Expect::Allow, Outcome::Allow) | (Expect::Deny, Outcome::Deny { .. }) => Ok(()),
        (Expect::More, Outcome::Undecided(_)) => Ok(()),
        (Expect::More, _) => Err("more (undecided: the filter waits for more bytes)".into()),
        (Expect::Allow, _) => Err("allow".into()),
        (Expect::Deny, _) => Err("deny".into()),
        (Expect::Detailed(d), Outcome::Deny { reason, status }) => {
            let reason_ok = d.deny.as_deref().is_none_or(|want| reason.contains(want));
            let status_ok = d.status.is_none_or(|want| *status == Some(want));
            if reason_ok && status_ok { Ok(()) } else { Err(describe_detailed(d)) }
        }
        (Expect::Detailed(d), _) => Err(describe_detailed(d)),
    }
}

fn describe_detailed(d: &Detailed) -> String {
    let mut text = "deny".to_string();
    if let Some(reason) = &d.deny {
        text.push_str(&format!(" with a reason containing {reason:?}"));
    }
    if let Some(status) = d.status {
        text.push_str(&format!(", status {status}"));
    }
    text
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Allow => "allow".into(),
        Outcome::Deny { reason, status: Some(s) } => format!("deny ({reason:?}, status {s})"),
        Outcome::Deny { reason, status: None } => format!("deny ({reason:?})"),
        Outcome::Undecided(more) => format!("undecided (the filter wants {more} more bytes)"),
        Outcome::Failed(failure) => {
            format!("the filter failed ({}): {}", failure.kind.as_str(), without_backtrace(&failure.message))
        }
    }
}

fn view(case: &Case) -> ConnectionView {
    let identity = |peer: Option<&Peer>| match peer {
        Some(p) if !p.labels.is_empty() || p.identity.is_some() => Arc::new(Identity::new(
            p.identity.unwrap_or(300),
            Labels::new(p.labels.iter().map(|l| Label::parse(l)).collect()),
        )),
        _ => Arc::new(Identity::reserved(reserved::WORLD)),
    };
    let address = |peer: Option<&Peer>, default: SocketAddr| peer.and_then(|p| p.address).unwrap_or(default);
    let port = case.port.unwrap_or(80);
    let context = Arc::new(ConnectionContext {
        id: 1,
        source: identity(case.source.as_ref()),
        destination: identity(case.destination.as_ref()),
        source_endpoint: None,
        destination_endpoint: None,
        source_addr: address(case.source.as_ref(), SocketAddr::from(([10, 0, 0, 1], 40000))),
        destination_addr: address(case.destination.as_ref(), SocketAddr::from(([10, 0, 0, 2], port))),
        port,
        listener: "weir-filter-test".into(),
    });
    ConnectionView { context, direction: Direction::Ingress }
}

/// The request a case describes, asked; and the request in words.
fn run_case(filter: &Arc<ConfiguredFilter>, world: Protocol, case: &Case) -> anyhow::Result<(String, Outcome)> {
    let given = [
        case.http.is_some(),
        case.dns.is_some(),
        case.kafka.is_some(),
        case.memcached.is_some(),
        case.cassandra.is_some(),
        case.stream.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        bail!("give exactly one of http, dns, kafka, memcached, cassandra, stream");
    }
    let view = view(case);
    if let Some(st) = &case.stream {
        ensure_world(world, Protocol::Stream)?;
        let side = match st.side {
            StreamSide::Request => stream::Side::Request,
            StreamSide::Reply => stream::Side::Reply,
        };
        let what = format!("{} {:?}", if matches!(st.side, StreamSide::Reply) { "reply" } else { "request" }, st.data);
        return Ok((what, ask_stream(filter, view, side, st.end, st.data.as_bytes())));
    }
    if let Some(h) = &case.http {
        ensure_world(world, Protocol::Http)?;
        let headers: Vec<(&str, &str)> = h.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let request = crate::wasm::test_request(&h.method, &h.path, &h.authority, &headers);
        return Ok((format!("{} {}", h.method, h.path), ask_http(filter, view, &request)));
    }
    if let Some(d) = &case.dns {
        ensure_world(world, Protocol::Dns)?;
        let qtype = hickory_proto::rr::RecordType::from_str(&d.qtype.to_ascii_uppercase())
            .map_err(|_| anyhow::anyhow!("unknown query type {:?}", d.qtype))?;
        let query = dns::Query {
            id: 1,
            questions: vec![dns::Question { name: d.name.clone(), qtype: u16::from(qtype), qclass: 1 }],
            transport: if d.tcp { dns::Transport::Tcp } else { dns::Transport::Udp },
        };
        return Ok((format!("{} {}", d.qtype, d.name), ask_dns(filter, view, &query)));
    }
    if let Some(k) = &case.kafka {
        ensure_world(world, Protocol::Kafka)?;
        let request = kafka::Request {
            api_key: k.api_key,
            api_version: k.api_version,
            correlation_id: 1,
            client_id: k.client_id.clone(),
            topics: match &k.topics {
                None => kafka::Topics::None,
                Some(t) if t.len() == 1 && t[0] == "*" => kafka::Topics::All,
                Some(t) => kafka::Topics::Named(t.clone()),
            },
            transactional_id: k.transactional_id.clone(),
        };
        let what = format!("api key {} topics {:?} client {:?}", k.api_key, k.topics, k.client_id);
        return Ok((what, ask_kafka(filter, view, &request)));
    }
    if let Some(c) = &case.cassandra {
        ensure_world(world, Protocol::Cassandra)?;
        let request = cassandra::Request {
            version: c.version,
            opcode: c.opcode.clone(),
            stream_id: 1,
            statements: c
                .statements
                .iter()
                .map(|s| cassandra::Statement {
                    action: s.action.clone(),
                    table: s.table.clone(),
                    query: s.query.clone(),
                })
                .collect(),
            keyspace: c.keyspace.clone(),
        };
        let what = c
            .statements
            .iter()
            .map(|s| format!("{} {}", s.action, s.table.as_deref().unwrap_or("")))
            .collect::<Vec<_>>();
        return Ok((format!("{} {}", c.opcode, what.join("; ")), ask_cassandra(filter, view, &request)));
    }
    let m = case.memcached.as_ref().expect("one is given");
    ensure_world(world, Protocol::Memcached)?;
    let request = memcached::Request {
        protocol: if m.binary { memcached::Protocol::Binary } else { memcached::Protocol::Text },
        command: m.command.clone(),
        opcode: None,
        keys: m.keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
    };
    Ok((format!("{} {}", m.command, m.keys.join(" ")), ask_memcached(filter, view, &request)))
}

fn ensure_world(world: Protocol, case: Protocol) -> anyhow::Result<()> {
    if world != case {
        bail!("a {} case, but the filter implements {}", case.name(), world.world());
    }
    Ok(())
}

fn ask_http(filter: &ConfiguredFilter, view: ConnectionView, request: &http::Request) -> Outcome {
    match filter.on_request(view, request) {
        Ok(http::RequestDecision::Allow(_)) => Outcome::Allow,
        Ok(http::RequestDecision::Deny(d)) => {
            Outcome::Deny { reason: d.reason, status: Some(d.reply.map_or(403, |r| r.status)) }
        }
        Err(failure) => Outcome::Failed(failure),
    }
}

/// One connection's first bytes, through an instance of its own (as the
/// proxy gives every stream connection).
fn ask_stream(
    filter: &Arc<ConfiguredFilter>,
    view: ConnectionView,
    side: stream::Side,
    end: bool,
    data: &[u8],
) -> Outcome {
    let mut instance = match filter.dedicated(view.context.source_addr.ip(), usize::MAX) {
        Ok(instance) => instance,
        Err(failure) => return Outcome::Failed(failure),
    };
    match instance.on_stream_data(view, side, end, data) {
        Ok(ops) => stream_outcome(&ops, data.len()),
        Err(failure) => Outcome::Failed(failure),
    }
}

/// Allowed when every one of the `len` bytes was passed; denied (with a
/// denied flow's reason, when the filter wrote one) when any were dropped or
/// the connection broken; undecided when bytes are left and it asked for
/// more (or said nothing of them).
fn stream_outcome(ops: &[stream::Op], len: usize) -> Outcome {
    let (mut passed, mut dropped, mut more) = (0u64, 0u64, None);
    let mut reason = None;
    for op in ops {
        match op {
            stream::Op::Pass(n) => passed += u64::from(*n),
            stream::Op::Drop(n) => dropped += u64::from(*n),
            stream::Op::More(n) => more = Some(*n),
            stream::Op::Error(why) => {
                return Outcome::Deny { reason: format!("connection broken: {why}"), status: None };
            }
            stream::Op::Flow(flow) if flow.verdict == stream::FlowVerdict::Denied && reason.is_none() => {
                let fields: Vec<String> = flow.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                reason = Some(flow.reason.clone().unwrap_or_else(|| fields.join(" ")));
            }
            _ => {}
        }
    }
    if dropped > 0 {
        return Outcome::Deny { reason: reason.unwrap_or_else(|| format!("{dropped} bytes dropped")), status: None };
    }
    if passed >= len as u64 { Outcome::Allow } else { Outcome::Undecided(more.unwrap_or(0).max(1)) }
}

fn ask_dns(filter: &ConfiguredFilter, view: ConnectionView, query: &dns::Query) -> Outcome {
    match filter.on_query(view, query) {
        Ok(dns::QueryDecision::Allow(_)) => Outcome::Allow,
        Ok(dns::QueryDecision::Deny(d)) => Outcome::Deny { reason: d.reason, status: None },
        Err(failure) => Outcome::Failed(failure),
    }
}

fn ask_kafka(filter: &ConfiguredFilter, view: ConnectionView, request: &kafka::Request) -> Outcome {
    match filter.on_kafka_request(view, request) {
        Ok(kafka::RequestDecision::Allow(_)) => Outcome::Allow,
        Ok(kafka::RequestDecision::Deny(d)) => Outcome::Deny { reason: d.reason, status: None },
        Err(failure) => Outcome::Failed(failure),
    }
}

fn ask_cassandra(filter: &ConfiguredFilter, view: ConnectionView, request: &cassandra::Request) -> Outcome {
    match filter.on_cassandra_request(view, request) {
        Ok(cassandra::RequestDecision::Allow(_)) => Outcome::Allow,
        Ok(cassandra::RequestDecision::Deny(d)) => Outcome::Deny { reason: d.reason, status: None },
        Err(failure) => Outcome::Failed(failure),
    }
}

fn ask_memcached(filter: &ConfiguredFilter, view: ConnectionView, request: &memcached::Request) -> Outcome {
    match filter.on_memcached_request(view, request) {
        Ok(memcached::RequestDecision::Allow(_)) => Outcome::Allow,
        Ok(memcached::RequestDecision::Deny(d)) => Outcome::Deny { reason: d.reason, status: None },
        Err(failure) => Outcome::Failed(failure),
    }
}

/// Generated requests for `time`: every trap, timeout and memory failure is
/// counted and the first of each kind shown. `true` when there was none.
/// Whether no call failed, and how many calls were made.
fn fuzz(filter: &Arc<ConfiguredFilter>, world: Protocol, time: Duration) -> (bool, u64) {
    let mut random = Random(0x9e37_79b9_7f4a_7c15 ^ time.as_nanos() as u64);
    let started = Instant::now();
    let (mut asked, mut allowed) = (0u64, 0u64);
    let mut failures: BTreeMap<&'static str, (u64, String, String)> = BTreeMap::new();
    let view = crate::wasm::test_connection;
    while started.elapsed() < time {
        let (what, outcome) = match world {
            Protocol::Http => {
                let method = random.pick(&["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "X-ODD"]);
                let path = random.path();
                let headers: Vec<(String, String)> =
                    (0..random.below(6)).map(|_| (random.token(12).to_ascii_lowercase(), random.text(40))).collect();
                let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let request = crate::wasm::test_request(method, &path, "fuzz.example", &pairs);
                (format!("{method} {path} {headers:?}"), ask_http(filter, view(), &request))
            }
            Protocol::Dns => {
                let name = random.name();
                let query = dns::Query {
                    id: random.next() as u16,
                    questions: vec![dns::Question { name: name.clone(), qtype: random.below(300) as u16, qclass: 1 }],
                    transport: dns::Transport::Udp,
                };
                (name, ask_dns(filter, view(), &query))
            }
            Protocol::Kafka => {
                let topics: Vec<String> = (0..random.below(4)).map(|_| random.token(20)).collect();
                let request = kafka::Request {
                    api_key: random.below(75) as i16,
                    api_version: random.below(16) as i16,
                    correlation_id: random.next() as i32,
                    client_id: (random.below(3) > 0).then(|| random.token(16)),
                    topics: kafka::Topics::Named(topics.clone()),
                    transactional_id: (random.below(4) == 0).then(|| random.token(8)),
                };
                (format!("api key {} topics {topics:?}", request.api_key), ask_kafka(filter, view(), &request))
            }
            Protocol::Memcached => {
                let command = random.pick(&["get", "gets", "set", "add", "delete", "incr", "mg", "ms", "stats"]);
                let keys: Vec<Vec<u8>> = (0..random.below(5)).map(|_| random.token(30).into_bytes()).collect();
                let request = memcached::Request {
                    protocol: memcached::Protocol::Text,
                    command: command.into(),
                    opcode: None,
                    keys: keys.clone(),
                };
                (format!("{command} {keys:?}"), ask_memcached(filter, view(), &request))
            }
            Protocol::Cassandra => {
                let actions = ["select", "insert", "update", "delete", "use", "create-table", "drop-table", "batch"];
                let statements: Vec<cassandra::Statement> = (0..1 + random.below(3))
                    .map(|_| {
                        let table = format!("{}.{}", random.token(10), random.token(10));
                        cassandra::Statement {
                            action: random.pick(&actions).into(),
                            query: format!("SELECT * FROM {table} WHERE k = '{}'", random.text(30)),
                            table: (random.below(4) > 0).then_some(table),
                        }
                    })
                    .collect();
                let request = cassandra::Request {
                    version: 4,
                    opcode: random.pick(&["query", "prepare", "execute", "batch"]).into(),
                    stream_id: random.next() as i16,
                    statements,
                    keyspace: (random.below(2) == 0).then(|| random.token(10)),
                };
                let what = format!(
                    "{} {:?}",
                    request.opcode,
                    request.statements.iter().map(|s| &s.action).collect::<Vec<_>>()
                );
                (what, ask_cassandra(filter, view(), &request))
            }
            Protocol::Stream => {
                // a connection of a few chunks, text lines and raw bytes, on
                // an instance of its own
                let mut outcome = Outcome::Allow;
                let mut what = String::new();
                match filter.dedicated(view().context.source_addr.ip(), usize::MAX) {
                    Err(failure) => outcome = Outcome::Failed(failure),
                    Ok(mut instance) => {
                        for _ in 0..1 + random.below(4) {
                            let data: Vec<u8> = if random.below(2) == 0 {
                                let word = random.pick(&["READ", "WRITE", "HALT", "RESET", "GET", "SET", "QUIT"]);
                                format!("{word} {}\r\n", random.token(30)).into_bytes()
                            } else {
                                (0..random.below(300)).map(|_| random.next() as u8).collect()
                            };
                            let side = if random.below(4) == 0 { stream::Side::Reply } else { stream::Side::Request };
                            what = format!("{side:?} {:?}", String::from_utf8_lossy(&data));
                            match instance.on_stream_data(view(), side, false, &data) {
                                Ok(ops) => outcome = stream_outcome(&ops, data.len()),
                                Err(failure) => {
                                    outcome = Outcome::Failed(failure);
                                    break;
                                }
                            }
                        }
                    }
                }
                (what, outcome)
            }
        };
        asked += 1;
        match outcome {
            Outcome::Allow => allowed += 1,
            Outcome::Deny { .. } | Outcome::Undecided(_) => {}
            Outcome::Failed(failure) => {
                let kind = match failure.kind {
                    FailureKind::Trap => "traps",
                    FailureKind::Timeout => "timeouts",
                    FailureKind::Memory => "out of memory",
                    _ => "other failures",
                };
                let entry =
                    failures.entry(kind).or_insert_with(|| (0, what, without_backtrace(&failure.message).to_string()));
                entry.0 += 1;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fuzz: {asked} generated requests in {secs:.1} s ({allowed} allowed, {} refused): {}",
        asked - allowed - failures.values().map(|f| f.0).sum::<u64>(),
        if failures.is_empty() { "no failure".to_string() } else { format!("{} kinds of failure", failures.len()) }
    );
    for (kind, (count, first, message)) in &failures {
        println!("FAIL  fuzz: {count} {kind}; the first on {first}: {message}");
    }
    (failures.is_empty(), asked)
}

/// A guest failure's message without wasmtime's frame list (weir's log on
/// stderr has it): its last line carries what happened.
fn without_backtrace(message: &str) -> &str {
    if !message.starts_with("error while executing at wasm backtrace") {
        return message;
    }
    let last = message.lines().last().unwrap_or(message);
    // "   11: 0x8d444c - <unknown>!weir:...#on-request: wasm trap: ..."
    last.find(": wasm trap: ").map(|at| &last[at + 2..]).unwrap_or(last.trim())
}

/// xorshift64*: requests differ run to run only by the seed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }

    fn token(&mut self, most: u64) -> String {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.";
        (0..1 + self.below(most)).map(|_| CHARS[self.below(CHARS.len() as u64) as usize] as char).collect()
    }

    /// Printable text, with the odd bytes a header value may carry.
    fn text(&mut self, most: u64) -> String {
        (0..self.below(most)).map(|_| (0x20 + self.below(0x5f) as u8) as char).collect()
    }

    fn path(&mut self) -> String {
        let mut path = String::new();
        for _ in 0..1 + self.below(6) {
            path.push('/');
            path.push_str(&self.token(16));
        }
        if self.below(3) == 0 {
            path.push('?');
            path.push_str(&self.token(20));
        }
        path
    }

    fn name(&mut self) -> String {
        let labels: Vec<String> = (0..1 + self.below(5)).map(|_| self.token(20).to_ascii_lowercase()).collect();
        labels.join(".")
    }
}
