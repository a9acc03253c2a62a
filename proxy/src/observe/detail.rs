//! The protocol's part of a flow record: what the request was, in that
//! protocol's words. One variant per protocol; each renders itself, in JSON
//! under its own key (`"http": {...}`) and in the one-line text form.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// What a flow record says about the request itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowDetail {
    Http(HttpFlow),
    Dns(DnsFlow),
    Kafka(KafkaFlow),
    Memcached(MemcachedFlow),
    Cassandra(CassandraFlow),
    /// A protocol a stream filter parsed (`l7proto`).
    L7(L7Flow),
}

impl FlowDetail {
    /// The words `weir observe` prints after the peers.
    pub fn write_text(&self, line: &mut String) {
        match self {
            FlowDetail::Http(d) => d.write_text(line),
            FlowDetail::Dns(d) => d.write_text(line),
            FlowDetail::Kafka(d) => d.write_text(line),
            FlowDetail::Memcached(d) => d.write_text(line),
            FlowDetail::Cassandra(d) => d.write_text(line),
            FlowDetail::L7(d) => d.write_text(line),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpFlow {
    pub method: String,
    pub path: String,
    pub host: String,
    pub version: String,
    /// Status sent downstream; absent when none was (the client left first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// An upgraded connection (WebSocket) that ended: what it relayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelFlow>,
}

/// The bytes relayed after a 101, unjudged: the upgrade request was.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelFlow {
    /// The protocol switched to (`websocket`).
    pub protocol: String,
    pub from_client: u64,
    pub from_upstream: u64,
    /// How long it was open, ms.
    pub duration_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsFlow {
    /// The first question's name (lower case, no trailing dot).
    pub query: String,
    /// Its type: A, AAAA, TXT, ...
    pub qtype: String,
    /// Questions beyond the first (rare).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_questions: Vec<String>,
    /// udp or tcp
    pub transport: String,
    /// The answer's code (NOERROR, NXDOMAIN, REFUSED, SERVFAIL, FORMERR...); absent when none was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rcode: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<DnsAnswer>,
    /// The answer had the TC bit: the client should retry over TCP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsAnswer {
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub data: String,
    pub ttl: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaFlow {
    /// The API's name: Produce, Fetch, Metadata, ...
    pub api_key: String,
    pub api_version: i16,
    pub correlation_id: i32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    /// The topics the request names; `["*"]` for every topic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// The error code weir answered a refusal with (the broker's answers are
    /// relayed unread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i16>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemcachedFlow {
    /// `text` (meta commands included) or `binary`.
    pub protocol: String,
    /// The command word, or the binary opcode's name.
    pub command: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// What the server answered: the first word of a text reply (`STORED`,
    /// `END`, `HD`, ...) or a binary status (`0x0001`); weir's own refusal
    /// shows as `CLIENT_ERROR` / `0x0020`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

/// One statement of a Cassandra request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CqlStatementFlow {
    /// Cilium's `query_action` (`select`, `insert`, `create-table`, ...).
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CassandraFlow {
    pub version: u8,
    /// The request's opcode: `query`, `prepare`, `execute`, `batch`, `startup`, ...
    pub opcode: String,
    pub stream: i16,
    /// What the request runs (a batch: every entry).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statements: Vec<CqlStatementFlow>,
    /// What the server answered: a RESULT kind (`rows`, `void`,
    /// `set-keyspace`, `prepared`, `schema-change`), `ready`, `supported`,
    /// ..., or `error 0x2200`. Weir's own refusal shows as `error 0x2100`
    /// (Unauthorized), `error 0x2500` (Unprepared), `error 0x000a` (protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

/// A request of a protocol parsed by a stream filter (`l7proto`): the
/// fields the filter chose to show.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7Flow {
    pub l7proto: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, String>,
}

impl HttpFlow {
    fn write_text(&self, line: &mut String) {
        let _ = write!(line, " {} {} {} host={}", self.version, self.method, self.path, self.host);
        if let Some(status) = self.status {
            let _ = write!(line, " => {status}");
        }
        if let Some(t) = &self.tunnel {
            let _ = write!(
                line,
                " {} closed after {} ms: {} bytes from the client, {} from the upstream",
                t.protocol, t.duration_ms, t.from_client, t.from_upstream
            );
        }
    }
}

impl DnsFlow {
    fn write_text(&self, line: &mut String) {
        let _ = write!(line, " {} {} {}", self.transport, self.qtype, self.query);
        for more in &self.more_questions {
            let _ = write!(line, " +{more}");
        }
        if let Some(rcode) = &self.rcode {
            let _ = write!(line, " => {rcode}");
        }
        if self.truncated {
            line.push_str(" (truncated)");
        }
        for a in &self.answers {
            let _ = write!(line, " {} {} ttl={}", a.rtype, a.data, a.ttl);
        }
    }
}

impl KafkaFlow {
    fn write_text(&self, line: &mut String) {
        let _ = write!(
            line,
            " {} v{} corr={} client={:?}",
            self.api_key, self.api_version, self.correlation_id, self.client_id
        );
        if !self.topics.is_empty() {
            let _ = write!(line, " topics={}", self.topics.join(","));
        }
        if let Some(code) = self.error_code {
            let _ = write!(line, " => error {code}");
        }
    }
}

impl MemcachedFlow {
    fn write_text(&self, line: &mut String) {
        let _ = write!(line, " {} {}", self.protocol, self.command);
        if !self.keys.is_empty() {
            let _ = write!(line, " keys={}", self.keys.join(","));
        }
        if let Some(r) = &self.response {
            let _ = write!(line, " => {r}");
        }
    }
}

impl CassandraFlow {
    fn write_text(&self, line: &mut String) {
        let _ = write!(line, " v{} {} stream={}", self.version, self.opcode, self.stream);
        for s in &self.statements {
            let _ = write!(line, " {}", s.action);
            if let Some(t) = &s.table {
                let _ = write!(line, ":{t}");
            }
        }
        if let Some(r) = &self.response {
            let _ = write!(line, " => {r}");
        }
    }
}

impl L7Flow {
    fn write_text(&self, line: &mut String) {
        for (k, v) in &self.fields {
            let _ = write!(line, " {k}={v:?}");
        }
    }
}
