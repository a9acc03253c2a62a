//! Every protocol weir parses, declared once: the name listeners, flows and
//! metrics use, how policy writes its rules, the WIT world its filters
//! implement and its built-in policy filter. Everything that used to spell a
//! protocol out (listener kind, rule kind, filter world, flow label) reads
//! this table; the engine that serves it is registered in `listeners.rs`.
//!
//! A leaf module: it imports nothing of weir's, so any layer may use it
//! (`wasm::builtin` takes the filters' names from here).

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 and HTTP/2 (gRPC) on TCP.
    #[default]
    Http,
    /// DNS on UDP and TCP, both bound on `bind`.
    Dns,
    /// Kafka on TCP: one upstream connection per client connection.
    Kafka,
    /// memcached (text, meta and binary) on TCP: one upstream connection per
    /// client connection.
    Memcached,
    /// Cassandra CQL (native protocol v3, v4, v5) on TCP: one upstream
    /// connection per client connection.
    Cassandra,
    /// Any TCP protocol: relayed byte for byte, through the stream filter a
    /// port rule names with `l7proto` (or untouched when no rule has one).
    Stream,
}

/// How policy writes a protocol's L7 rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleSyntax {
    /// A typed field of `rules` (`http`, `dns`, `kafka`).
    Field(&'static str),
    /// `l7proto: <name>` with generic `l7` key/value rules. For `Stream` the
    /// name is the stream filter's, so any name not claimed by another row.
    L7proto(&'static [&'static str]),
}

/// One row of the table.
#[derive(Debug)]
pub struct Spec {
    pub protocol: Protocol,
    /// `protocol:` in weir.yaml, `protocol` in flows and metrics labels.
    pub name: &'static str,
    /// The name messages give its rules ("this port carries memcache rules").
    pub rules_name: &'static str,
    pub rules: RuleSyntax,
    /// The `weir:filter` world its filters implement (`wit/`).
    pub world: &'static str,
    /// The built-in filter that enforces its rules; `None` for streams,
    /// whose filter `l7proto` names.
    pub policy_filter: Option<&'static str>,
}

const TABLE: [Spec; 6] = [
    Spec {
        protocol: Protocol::Http,
        name: "http",
        rules_name: "http",
        rules: RuleSyntax::Field("http"),
        world: "http-filter",
        policy_filter: Some("http-policy"),
    },
    Spec {
        protocol: Protocol::Dns,
        name: "dns",
        rules_name: "dns",
        rules: RuleSyntax::Field("dns"),
        world: "dns-filter",
        policy_filter: Some("dns-policy"),
    },
    Spec {
        protocol: Protocol::Kafka,
        name: "kafka",
        rules_name: "kafka",
        rules: RuleSyntax::Field("kafka"),
        world: "kafka-filter",
        policy_filter: Some("kafka-policy"),
    },
    Spec {
        protocol: Protocol::Memcached,
        name: "memcached",
        // Cilium's l7proto name; `memcached` is accepted too
        rules_name: "memcache",
        rules: RuleSyntax::L7proto(&["memcache", "memcached"]),
        world: "memcached-filter",
        policy_filter: Some("memcached-policy"),
    },
    Spec {
        protocol: Protocol::Cassandra,
        name: "cassandra",
        rules_name: "cassandra",
        rules: RuleSyntax::L7proto(&["cassandra"]),
        world: "cassandra-filter",
        policy_filter: Some("cassandra-policy"),
    },
    Spec {
        protocol: Protocol::Stream,
        name: "stream",
        rules_name: "stream",
        rules: RuleSyntax::L7proto(&[]),
        world: "stream-filter",
        policy_filter: None,
    },
];

impl Protocol {
    pub const ALL: [Protocol; 6] =
        [Protocol::Http, Protocol::Dns, Protocol::Kafka, Protocol::Memcached, Protocol::Cassandra, Protocol::Stream];

    pub const fn spec(self) -> &'static Spec {
        &TABLE[self as usize]
    }

    /// The name of its built-in policy filter, for constants.
    pub const fn policy_filter_name(self) -> &'static str {
        match self.spec().policy_filter {
            Some(name) => name,
            None => panic!("this protocol has no built-in policy filter"),
        }
    }

    /// Its name in weir.yaml, flows and metrics.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The name its rules go by in messages.
    pub fn rules_name(self) -> &'static str {
        self.spec().rules_name
    }

    /// The WIT world its filters implement.
    pub fn world(self) -> &'static str {
        self.spec().world
    }

    /// The protocol a `l7proto` value selects: one weir parses itself, or
    /// else a stream filter of that name.
    pub fn of_l7proto(name: &str) -> Protocol {
        Protocol::ALL
            .into_iter()
            .find(|p| matches!(p.spec().rules, RuleSyntax::L7proto(names) if names.contains(&name)))
            .unwrap_or(Protocol::Stream)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_its_own_protocol_and_serializes_as_its_name() {
        for protocol in Protocol::ALL {
            assert_eq!(protocol.spec().protocol, protocol);
            assert_eq!(serde_json::to_value(protocol).unwrap(), protocol.name());
            let back: Protocol = serde_json::from_value(protocol.name().into()).unwrap();
            assert_eq!(back, protocol);
        }
    }

    #[test]
    fn l7proto_names_select_weirs_own_engines_or_a_stream_filter() {
        assert_eq!(Protocol::of_l7proto("memcache"), Protocol::Memcached);
        assert_eq!(Protocol::of_l7proto("memcached"), Protocol::Memcached);
        assert_eq!(Protocol::of_l7proto("cassandra"), Protocol::Cassandra);
        assert_eq!(Protocol::of_l7proto("r2d2"), Protocol::Stream);
        // typed fields are not l7proto names
        assert_eq!(Protocol::of_l7proto("kafka"), Protocol::Stream);
    }
}
