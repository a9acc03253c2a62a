//! What `weir filter new` writes: a crate per world, each with a decision
//! kept apart from the host (so `cargo test` checks it natively), the
//! export macro, and a `cases.yaml` for `weir filter test`.

use crate::protocol::Protocol;

/// `Cargo.toml` of a new filter crate. `sdk` is the dependency line's value.
pub fn cargo_toml(name: &str, sdk: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# cdylib: the Wasm module weir loads; rlib: `cargo test` natively
crate-type = ["cdylib", "rlib"]

[dependencies]
weir-filter-sdk = {sdk}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
# keep the component-type sections (the world); only debug info goes
strip = "debuginfo"

# a crate of its own, even inside another workspace's tree
[workspace]
"#
    )
}

/// `src/lib.rs` for `world`.
pub fn lib_rs(name: &str, world: Protocol) -> String {
    let text = match world {
        Protocol::Http => HTTP,
        Protocol::Dns => DNS,
        Protocol::Kafka => KAFKA,
        Protocol::Memcached => MEMCACHED,
        Protocol::Cassandra => CASSANDRA,
        Protocol::Stream => STREAM,
    };
    text.replace("{{name}}", name)
}

/// `cases.yaml` for `world`.
pub fn cases_yaml(world: Protocol) -> &'static str {
    match world {
        Protocol::Http => HTTP_CASES,
        Protocol::Dns => DNS_CASES,
        Protocol::Kafka => KAFKA_CASES,
        Protocol::Cassandra => CASSANDRA_CASES,
        Protocol::Stream => STREAM_CASES,
        Protocol::Memcached => MEMCACHED_CASES,
    }
}

/// The worlds `weir filter new` writes a crate for.
pub const WORLDS: [Protocol; 6] =
    [Protocol::Http, Protocol::Dns, Protocol::Kafka, Protocol::Memcached, Protocol::Cassandra, Protocol::Stream];

const HTTP: &str = r##"//! {{name}}: a Weir HTTP filter (the `http-filter` world of weir:filter).
//!
//! Refuses requests under the configured path prefixes, unless the caller's
//! identity has the configured label. Use it in a policy:
//!
//! ```yaml
//! rules:
//!   wasm:
//!     - name: {{name}}
//!       config: {denyPrefixes: [/admin], unlessLabel: "app=admin"}
//! ```

use serde::Deserialize;
use weir_filter_sdk::http::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    deny_prefixes: Vec<String>,
    #[serde(default)]
    unless_label: Option<String>,
}

pub struct Filter {
    config: Config,
}

impl Filter {
    /// Why `path` is refused to a caller with `labels`, if it is: the
    /// decision, apart from the host, so `cargo test` checks it natively.
    pub fn refuses(&self, path: &str, labels: &[String]) -> Option<String> {
        let prefix = self.config.deny_prefixes.iter().find(|p| path.starts_with(p.as_str()))?;
        let exempt = self.config.unless_label.as_ref().is_some_and(|wanted| {
            labels.iter().any(|l| l == wanted || l.split_once(':').is_some_and(|(_, rest)| rest == wanted))
        });
        (!exempt).then(|| format!("{prefix} is off limits"))
    }
}

impl HttpFilter for Filter {
    fn configure(config: &str) -> Result<Self, String> {
        let config = serde_json::from_str(config).map_err(|e| format!("{{name}} config: {e}"))?;
        Ok(Filter { config })
    }

    fn on_request(&self, conn: &Connection, request: &Request) -> RequestDecision {
        match self.refuses(request.path(), &conn.source().labels) {
            Some(why) => deny(why),
            None => allow(),
        }
    }
}

weir_filter_sdk::http_filter!(Filter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_refused_unless_the_label_is_there() {
        let filter = Filter::configure(r#"{"denyPrefixes": ["/admin"], "unlessLabel": "app=admin"}"#).unwrap();
        assert_eq!(filter.refuses("/admin/users", &[]), Some("/admin is off limits".into()));
        assert_eq!(filter.refuses("/admin/users", &["k8s:app=admin".into()]), None);
        assert_eq!(filter.refuses("/public", &[]), None);
        assert!(Filter::configure(r#"{"denyPrefix": []}"#).is_err(), "a misspelt field is refused");
    }
}
"##;

const HTTP_CASES: &str = r#"# `weir filter test . --cases cases.yaml`: each case is a request, who
# sends it, and what the filter must answer.
config: {denyPrefixes: [/admin], unlessLabel: "app=admin"}
cases:
  - name: a public path passes
    http: {method: GET, path: /public/hello}
    expect: allow
  - name: admin is off limits
    http: {method: GET, path: /admin/users, headers: {accept: text/html}}
    source: {labels: ["k8s:app=web"]}
    expect: {deny: "off limits"}
  - name: unless the caller is the admin app
    http: {method: POST, path: /admin/users}
    source: {labels: ["k8s:app=admin"]}
    expect: allow
"#;

const DNS: &str = r##"//! {{name}}: a Weir DNS filter (the `dns-filter` world of weir:filter).
//!
//! Refuses queries for names under the configured domains (an ad blocker),
//! answering NXDOMAIN. Use it in a policy's `wasm` rules on port 53.

use serde::Deserialize;
use weir_filter_sdk::dns::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    blocked_domains: Vec<String>,
}

pub struct Filter {
    blocked: Vec<String>,
}

impl Filter {
    /// The blocked domain `name` falls under, if any.
    pub fn blocked(&self, name: &str) -> Option<&str> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.blocked
            .iter()
            .find(|d| name == **d || name.ends_with(&format!(".{d}")))
            .map(String::as_str)
    }
}

impl DnsFilter for Filter {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("{{name}} config: {e}"))?;
        let blocked = config.blocked_domains.iter().map(|d| d.trim_end_matches('.').to_ascii_lowercase()).collect();
        Ok(Filter { blocked })
    }

    fn on_query(&self, _conn: &Connection, query: &Query) -> QueryDecision {
        for question in &query.questions {
            if let Some(domain) = self.blocked(&question.name) {
                return refuse_with(format!("{} is under {domain}, blocked", question.name), Refusal::Nxdomain);
            }
        }
        allow(None)
    }
}

weir_filter_sdk::dns_filter!(Filter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_under_a_blocked_domain_are_blocked() {
        let filter = Filter::configure(r#"{"blockedDomains": ["ads.example"]}"#).unwrap();
        assert_eq!(filter.blocked("x.ads.example."), Some("ads.example"));
        assert_eq!(filter.blocked("ADS.example"), Some("ads.example"));
        assert_eq!(filter.blocked("notads.example"), None);
    }
}
"##;

const DNS_CASES: &str = r#"config: {blockedDomains: [ads.example]}
cases:
  - name: an ordinary name passes
    dns: {name: www.example.com, type: A}
    expect: allow
  - name: an ad server is blocked
    dns: {name: tracker.ads.example, type: AAAA}
    expect: {deny: "blocked"}
"#;

const KAFKA: &str = r##"//! {{name}}: a Weir Kafka filter (the `kafka-filter` world of weir:filter).
//!
//! Lets only the configured client ids produce (API key 0); everything else
//! passes. Use it in a policy's `wasm` rules on the broker's port.

use serde::Deserialize;
use weir_filter_sdk::kafka::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    producers: Vec<String>,
}

pub struct Filter {
    producers: Vec<String>,
}

const PRODUCE: i16 = 0;

impl Filter {
    /// Whether a request of `api_key` from `client_id` may pass.
    pub fn allows(&self, api_key: i16, client_id: Option<&str>) -> bool {
        api_key != PRODUCE || client_id.is_some_and(|c| self.producers.iter().any(|p| p == c))
    }
}

impl KafkaFilter for Filter {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("{{name}} config: {e}"))?;
        Ok(Filter { producers: config.producers })
    }

    fn on_request(&self, _conn: &Connection, request: &Request) -> RequestDecision {
        if self.allows(request.api_key, request.client_id.as_deref()) {
            allow(None)
        } else {
            deny(format!("client {:?} may not produce", request.client_id.as_deref().unwrap_or("")))
        }
    }
}

weir_filter_sdk::kafka_filter!(Filter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_named_clients_produce() {
        let filter = Filter::configure(r#"{"producers": ["billing"]}"#).unwrap();
        assert!(filter.allows(PRODUCE, Some("billing")));
        assert!(!filter.allows(PRODUCE, Some("intruder")));
        assert!(filter.allows(1, Some("intruder")), "fetch is not produce");
    }
}
"##;

const KAFKA_CASES: &str = r#"config: {producers: [billing]}
cases:
  - name: billing produces
    kafka: {api_key: 0, client_id: billing, topics: [invoices]}
    expect: allow
  - name: anyone else does not
    kafka: {api_key: 0, client_id: intruder, topics: [invoices]}
    expect: {deny: "may not produce"}
  - name: fetching is fine
    kafka: {api_key: 1, client_id: intruder, topics: [invoices]}
    expect: allow
"#;

const MEMCACHED: &str = r##"//! {{name}}: a Weir memcached filter (the `memcached-filter` world of weir:filter).
//!
//! Refuses commands on keys outside the configured prefix.

use serde::Deserialize;
use weir_filter_sdk::memcached::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    key_prefix: String,
}

pub struct Filter {
    prefix: Vec<u8>,
}

impl Filter {
    /// The first key outside the prefix, if any.
    pub fn outside<'a>(&self, keys: &'a [Vec<u8>]) -> Option<&'a [u8]> {
        keys.iter().map(Vec::as_slice).find(|k| !k.starts_with(&self.prefix))
    }
}

impl MemcachedFilter for Filter {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("{{name}} config: {e}"))?;
        Ok(Filter { prefix: config.key_prefix.into_bytes() })
    }

    fn on_request(&self, _conn: &Connection, request: &Request) -> RequestDecision {
        match self.outside(&request.keys) {
            Some(key) => deny(format!("key {:?} is outside the prefix", String::from_utf8_lossy(key))),
            None => allow(None),
        }
    }
}

weir_filter_sdk::memcached_filter!(Filter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_outside_the_prefix_are_named() {
        let filter = Filter::configure(r#"{"keyPrefix": "app:"}"#).unwrap();
        assert_eq!(filter.outside(&[b"app:a".to_vec(), b"other".to_vec()]), Some(&b"other"[..]));
        assert_eq!(filter.outside(&[b"app:a".to_vec()]), None);
    }
}
"##;

const MEMCACHED_CASES: &str = r#"config: {keyPrefix: "app:"}
cases:
  - name: the app's keys
    memcached: {command: get, keys: ["app:session"]}
    expect: allow
  - name: someone else's
    memcached: {command: get, keys: ["app:a", "billing:b"]}
    expect: {deny: "outside the prefix"}
"#;

const CASSANDRA: &str = r##"//! {{name}}: a Weir Cassandra filter (the `cassandra-filter` world of weir:filter).
//!
//! Read-only access to the configured keyspaces: `select` on their tables
//! passes, any other statement on them is refused, and statements on other
//! keyspaces are refused. Use it in a policy's `wasm` rules on port 9042.

use serde::Deserialize;
use weir_filter_sdk::cassandra::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    read_only_keyspaces: Vec<String>,
}

pub struct Filter {
    keyspaces: Vec<String>,
}

impl Filter {
    /// Why a statement of `action` on `table` (`keyspace.table`) is refused,
    /// if it is. Statements without a table (roles, functions) are refused.
    pub fn refuses(&self, action: &str, table: Option<&str>) -> Option<String> {
        let Some(table) = table else {
            return Some(format!("{action} names no table"));
        };
        let keyspace = table.split('.').next().unwrap_or_default();
        if !self.keyspaces.iter().any(|k| k == keyspace) {
            return Some(format!("{table} is outside the allowed keyspaces"));
        }
        (action != "select").then(|| format!("{action} on {table}: read only"))
    }
}

impl CassandraFilter for Filter {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("{{name}} config: {e}"))?;
        Ok(Filter { keyspaces: config.read_only_keyspaces })
    }

    fn on_request(&self, _conn: &Connection, request: &Request) -> RequestDecision {
        // a batch is refused when any of its statements is
        for statement in &request.statements {
            if let Some(why) = self.refuses(&statement.action, statement.table.as_deref()) {
                return deny(why);
            }
        }
        allow(None)
    }
}

weir_filter_sdk::cassandra_filter!(Filter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_of_the_keyspaces_pass_and_nothing_else() {
        let filter = Filter::configure(r#"{"readOnlyKeyspaces": ["app"]}"#).unwrap();
        assert_eq!(filter.refuses("select", Some("app.users")), None);
        assert!(filter.refuses("insert", Some("app.users")).unwrap().contains("read only"));
        assert!(filter.refuses("select", Some("billing.invoices")).unwrap().contains("outside"));
        assert!(filter.refuses("create-role", None).is_some());
    }
}
"##;

const CASSANDRA_CASES: &str = r#"config: {readOnlyKeyspaces: [app]}
cases:
  - name: reading the app's tables
    cassandra: {statements: [{action: select, table: app.users, query: "SELECT * FROM app.users"}]}
    expect: allow
  - name: writing them is refused
    cassandra: {statements: [{action: insert, table: app.users}]}
    expect: {deny: "read only"}
  - name: a batch with one write in it
    cassandra: {opcode: batch, statements: [{action: select, table: app.a}, {action: update, table: app.a}]}
    expect: deny
  - name: other keyspaces are off limits
    cassandra: {statements: [{action: select, table: billing.invoices}]}
    expect: {deny: "outside"}
"#;

const STREAM: &str = r##"//! {{name}}: a Weir stream filter (the `stream-filter` world of weir:filter):
//! a parser for a protocol weir does not know, named by `l7proto: {{name}}`
//! in a policy.
//!
//! The protocol here: requests are lines `COMMAND argument\r\n`; replies
//! pass untouched. The policy's `l7` entries allow commands (`cmd`); a
//! refused request is dropped and answered `ERROR\r\n`, and a line longer
//! than 1 KiB breaks the connection.
//!
//! ```yaml
//! toPorts:
//!   - ports: [{port: "4000", protocol: TCP}]
//!     rules:
//!       l7proto: {{name}}
//!       l7: [{cmd: GET}, {cmd: LIST}]
//! ```

use std::collections::BTreeMap;

use weir_filter_sdk::ConfigError;
use weir_filter_sdk::l7_rules::{Group, compile_groups};
use weir_filter_sdk::stream::*;

const MAX_LINE: usize = 1024;

pub struct Filter {
    groups: Vec<Group<String>>,
}

/// One `l7` entry: `{cmd: NAME}`.
fn compile(fields: &BTreeMap<String, String>) -> Result<String, ConfigError> {
    let mut cmd = None;
    for (name, value) in fields {
        match name.as_str() {
            "cmd" => cmd = Some(value.clone()),
            other => return Err(ConfigError::at(other, "unknown field; {{name}} rules have cmd")),
        }
    }
    cmd.ok_or_else(|| ConfigError::at("cmd", "missing"))
}

impl Filter {
    /// Whether a rule allows `cmd`: a group with no rules allows all.
    pub fn allows(&self, cmd: &str) -> bool {
        self.groups.iter().any(|g| g.rules.is_empty() || g.rules.iter().any(|r| r == cmd))
    }
}

impl StreamFilter for Filter {
    fn configure(config: &str) -> Result<Self, String> {
        Ok(Filter { groups: compile_groups(config, "{{name}}", compile)? })
    }

    fn on_data(&self, _conn: &Connection, side: Side, _end_stream: bool, data: &[u8]) -> Vec<Op> {
        if side == Side::Reply {
            return vec![Op::Pass(data.len() as u32)];
        }
        let mut ops = Vec::new();
        let mut rest = data;
        while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
            let len = end + 2;
            let line = String::from_utf8_lossy(&rest[..end]);
            let cmd = line.split(' ').next().unwrap_or_default();
            if self.allows(cmd) {
                ops.push(flow(FlowVerdict::Forwarded, &[("cmd", cmd)], None));
                ops.push(Op::Pass(len as u32));
            } else {
                ops.push(flow(FlowVerdict::Denied, &[("cmd", cmd)], Some(format!("{cmd} is not allowed"))));
                ops.push(Op::Drop(len as u32));
                ops.push(Op::Reply(b"ERROR\r\n".to_vec()));
            }
            rest = &rest[len..];
        }
        if rest.len() > MAX_LINE {
            ops.push(Op::Error(format!("a line longer than {MAX_LINE} bytes")));
        } else if !rest.is_empty() {
            // the rest of the line is still on its way
            ops.push(Op::More(1));
        }
        ops
    }
}

weir_filter_sdk::stream_filter!(Filter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_rules_commands_pass() {
        let filter = Filter::configure(r#"{"groups": [{"rules": [{"cmd": "GET"}]}]}"#).unwrap();
        assert!(filter.allows("GET"));
        assert!(!filter.allows("DELETE"));
        assert!(Filter::configure(r#"{"groups": [{"rules": [{"verb": "GET"}]}]}"#).is_err(), "a misspelt field");
    }
}
"##;

const STREAM_CASES: &str = r#"# config: the policy's l7 entries, as weir hands them to the parser
config: {groups: [{rules: [{cmd: GET}, {cmd: LIST}]}]}
cases:
  - name: an allowed command passes
    stream: {data: "GET motd\r\n"}
    expect: allow
  - name: another is dropped and answered ERROR
    stream: {data: "DELETE motd\r\n"}
    expect: {deny: "DELETE is not allowed"}
  - name: half a line waits for the rest
    stream: {data: "GET mo"}
    expect: more
  - name: replies pass untouched
    stream: {data: "hello\r\n", side: reply}
    expect: allow
"#;
