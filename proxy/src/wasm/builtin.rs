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

/// A built-in filter's bytes and their sha256, both from build.rs's output.
macro_rules! embedded {
    ($name:expr, $file:literal) => {
        (
            $name,
            include_bytes!(concat!(env!("WEIR_BUILT_FILTERS_DIR"), "/", $file, ".wasm")),
            *include_bytes!(concat!(env!("WEIR_BUILT_FILTERS_DIR"), "/", $file, ".sha256")),
        )
    };
}

/// `(name, component bytes, their sha256)`. The digest was computed when
/// weir was built, so a built-in filter is known without reading its bytes:
/// hashing would make every embedded filter resident in memory at each
/// start, though a warm start maps the compiled filter from the cache and
/// never reads them again. A static, not a const: each filter's bytes have
/// one address, by which `embedded` knows them (a const's data may be
/// copied where it is used).
pub static BUILTIN_FILTERS: &[(&str, &[u8], [u8; 32])] = &[
    embedded!(HTTP_POLICY, "http_policy"),
    embedded!(DNS_POLICY, "dns_policy"),
    embedded!(KAFKA_POLICY, "kafka_policy"),
    embedded!(MEMCACHED_POLICY, "memcached_policy"),
    embedded!(CASSANDRA_POLICY, "cassandra_policy"),
    embedded!(R2D2, "r2d2"),
    embedded!("require-header", "require_header"),
];

/// The built-in stream filter `l7proto: name` selects, if there is one.
pub fn stream_filter(name: &str) -> Option<&'static str> {
    STREAM_FILTERS.iter().copied().find(|n| *n == name)
}

pub fn find(name: &str) -> Option<&'static [u8]> {
    BUILTIN_FILTERS.iter().find(|(n, ..)| *n == name).map(|(_, bytes, _)| *bytes)
}

/// The built-in filter whose embedded slice `bytes` is (not a copy of
/// it): its name and digest.
pub fn embedded(bytes: &[u8]) -> Option<(&'static str, [u8; 32])> {
    BUILTIN_FILTERS
        .iter()
        .find(|(_, embedded, _)| std::ptr::eq(*embedded, bytes))
        .map(|(name, _, digest)| (*name, *digest))
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
        for (name, bytes, _) in BUILTIN_FILTERS {
            let hashed: [u8; 32] = Sha256::digest(bytes).into();
            assert_eq!(embedded(bytes), Some((*name, hashed)), "{name}");
        }
        // a copy is not the embedded slice: it is hashed as any filter is
        let copy: Vec<u8> = BUILTIN_FILTERS[2].1.into();
        assert_eq!(embedded(&copy), None);
    }
}
