//! Filters compiled into the weir binary, so a node needs no files to enforce
//! Cilium-style rules.

use crate::protocol::Protocol;

/// Name of the built-in filter for `rules.http` (the protocol table's).
pub const HTTP_POLICY: &str = Protocol::Http.policy_filter_name();
/// Name of the built-in filter for `rules.dns`.
pub const DNS_POLICY: &str = Protocol::Dns.policy_filter_name();
/// Name of the built-in filter for `rules.kafka`.
pub const KAFKA_POLICY: &str = Protocol::Kafka.policy_filter_name();
/// Name of the built-in filter for `l7proto: memcache`.
pub const MEMCACHED_POLICY: &str = Protocol::Memcached.policy_filter_name();
/// Name of the built-in filter for `l7proto: cassandra`.
pub const CASSANDRA_POLICY: &str = Protocol::Cassandra.policy_filter_name();
/// The example stream filter for Cilium's r2d2 test protocol (`l7proto: r2d2`).
pub const R2D2: &str = "r2d2";
/// Built-in stream filters: `l7proto` names that need no weir.yaml entry.
pub const STREAM_FILTERS: &[&str] = &[R2D2];

/// `(name, component bytes)`. A static, not a const: each filter's bytes
/// have one address, by which `embedded_digest` knows them (a const's data
/// may be copied where it is used).
pub static BUILTIN_FILTERS: &[(&str, &[u8])] = &[
    (HTTP_POLICY, include_bytes!(concat!(env!("WEIR_BUILT_FILTERS_DIR"), "/http_policy.wasm"))),
    (DNS_POLICY, include_bytes!(concat!(env!("WEIR_BUILT_FILTERS_DIR"), "/dns_policy.wasm"))),
    (KAFKA_POLICY, include_bytes!(concat!(env!("WEIR_BUILT_FILTERS_DIR"), "/kafka_policy.wasm"))),
    (MEMCACHED_POLICY, include_bytes!(concat!(env!("WEIR_BUILT_FILTERS_DIR"), "/memcached_policy.wasm"))),
    (CASSANDRA_POLICY, include_bytes!(concat!(env!("WEIR_BUILT_FILTERS_DIR"), "/cassandra_policy.wasm"))),
    (R2D2, include_bytes!(concat!(env!("WEIR_BUILT_FILTERS_DIR"), "/r2d2.wasm"))),
    ("require-header", include_bytes!(concat!(env!("WEIR_BUILT_FILTERS_DIR"), "/require_header.wasm"))),
];

pub fn find(name: &str) -> Option<&'static [u8]> {
    BUILTIN_FILTERS.iter().find(|(n, _)| *n == name).map(|(_, bytes)| *bytes)
}

/// The sha256 of each built-in filter, computed when weir was built, in
/// the order of [`BUILTIN_FILTERS`].
static BUILTIN_DIGESTS: &[[u8; 32]] = &[
    *include_bytes!(concat!(env!("WEIR_BUILT_FILTERS_DIR"), "/http_policy.sha256")),
    *include_bytes!(concat!(env!("WEIR_BUILT_FILTERS_DIR"), "/dns_policy.sha256")),
    *include_bytes!(concat!(env!("WEIR_BUILT_FILTERS_DIR"), "/kafka_policy.sha256")),
    *include_bytes!(concat!(env!("WEIR_BUILT_FILTERS_DIR"), "/memcached_policy.sha256")),
    *include_bytes!(concat!(env!("WEIR_BUILT_FILTERS_DIR"), "/cassandra_policy.sha256")),
    *include_bytes!(concat!(env!("WEIR_BUILT_FILTERS_DIR"), "/r2d2.sha256")),
    *include_bytes!(concat!(env!("WEIR_BUILT_FILTERS_DIR"), "/require_header.sha256")),
];

/// The digest of `bytes` when they are a built-in filter's own (the very
/// slice embedded in the binary), without reading them: hashing would make
/// every embedded filter resident in memory at each start (6 MiB), though a
/// warm start then maps the compiled filter from the cache and never reads
/// them again.
pub fn embedded_digest(bytes: &[u8]) -> Option<[u8; 32]> {
    embedded_index(bytes).map(|index| BUILTIN_DIGESTS[index])
}

/// The built-in filter's name when `bytes` are its embedded slice itself.
pub fn embedded_name(bytes: &[u8]) -> Option<&'static str> {
    embedded_index(bytes).map(|index| BUILTIN_FILTERS[index].0)
}

fn embedded_index(bytes: &[u8]) -> Option<usize> {
    BUILTIN_FILTERS.iter().position(|(_, embedded)| std::ptr::eq(*embedded, bytes))
}

/// Where this build put every filter component, the test-only ones too
/// (`misbehave.wasm`); tests load them from here.
pub const BUILT_FILTERS_DIR: &str = env!("WEIR_BUILT_FILTERS_DIR");

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn each_embedded_filter_is_known_by_its_own_digest() {
        assert_eq!(BUILTIN_FILTERS.len(), BUILTIN_DIGESTS.len());
        for (name, bytes) in BUILTIN_FILTERS {
            let hashed: [u8; 32] = Sha256::digest(bytes).into();
            assert_eq!(embedded_digest(bytes), Some(hashed), "{name}");
        }
        // a copy is not the embedded slice: it is hashed as any filter is
        let copy: Vec<u8> = BUILTIN_FILTERS[2].1.into();
        assert_eq!(embedded_digest(&copy), None);
        assert_eq!(embedded_name(&copy), None);
        assert_eq!(embedded_name(BUILTIN_FILTERS[2].1), Some(BUILTIN_FILTERS[2].0));
    }
}
