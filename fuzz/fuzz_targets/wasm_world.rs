//! The Wasm world boundary: the built-in policy filters, run in weir's real
//! filter host, on whatever the host can hand them.
//!
//! Input, read as structure: a world (HTTP, DNS, Kafka, memcached,
//! Cassandra) and a request of that world with arbitrary field values (an
//! HTTP head of arbitrary bytes, arbitrary keys, topics, statements...), or
//! now and then an arbitrary configuration. Every call must come back as a
//! decision: a built-in filter that traps, times out or runs out of memory
//! on some request is a bug (it fails closed, but it also throws away the
//! instance and denies a legitimate client). A bad configuration must be
//! refused with an error, never trap the host.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use weir::observe::metrics::Metrics;
use weir::wasm::{
    ConfiguredFilter, FailurePolicy, FilterComponent, FilterLimits, FilterRuntime, RuntimeOptions, builtin, cassandra,
    dns, http, kafka, memcached, test_connection,
};

/// `(built-in filter, a configuration with a rule of each kind it knows)`
const WORLDS: [(&str, &str); 5] = [
    (
        builtin::HTTP_POLICY,
        r#"{"groups":[{"name":"a","rules":[{"method":"GET","path":"/public/.*","host":"api\\..*",
            "headers":["X-Token: 1"],"headerMatches":[{"name":"x-b","value":"2","mismatch":"LOG"}]}]}]}"#,
    ),
    (builtin::DNS_POLICY, r#"{"groups":[{"name":"a","rules":[{"matchName":"a.example"},{"matchPattern":"*.corp"}]}]}"#),
    (
        builtin::KAFKA_POLICY,
        r#"{"groups":[{"name":"a","rules":[{"role":"produce","topic":"orders"},{"apiKey":"fetch","clientID":"c"}]}]}"#,
    ),
    (
        builtin::MEMCACHED_POLICY,
        r#"{"groups":[{"name":"a","rules":[{"command":"get","keyPrefix":"pub"},{"command":"set","keyRegex":"^a[0-9]+$"}]}]}"#,
    ),
    (
        builtin::CASSANDRA_POLICY,
        r#"{"groups":[{"name":"a","rules":[{"query_action":"select","query_table":"ks\\..*"}]}]}"#,
    ),
];

struct Host {
    runtime: Arc<FilterRuntime>,
    components: Vec<Arc<FilterComponent>>,
    filters: Vec<Arc<ConfiguredFilter>>,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let runtime = Arc::new(FilterRuntime::new(Arc::new(Metrics::default()), RuntimeOptions::default()).unwrap());
        let components: Vec<_> =
            WORLDS.iter().map(|(name, _)| runtime.load(name, builtin::find(name).unwrap()).unwrap()).collect();
        let filters = WORLDS
            .iter()
            .zip(&components)
            .map(|((name, config), c)| {
                runtime
                    .configure(c, config.to_string(), FilterLimits::default(), FailurePolicy::Closed)
                    .unwrap_or_else(|e| panic!("{name} refuses the fuzz target's configuration: {e}"))
            })
            .collect();
        Host { runtime, components, filters }
    })
}

fuzz_target!(
    // compiling the five components takes seconds: before libFuzzer's
    // per-input timeout starts
    init: {
        host();
    },
    |data: &[u8]| {
        let _ = one(&mut Unstructured::new(data));
    }
);

fn one(u: &mut Unstructured) -> Result<()> {
    let host = host();
    let world = u.choose_index(WORLDS.len())?;
    if u.ratio(1, 16)? {
        // a configuration: refused or accepted, never a trap of the host
        let config: String = u.arbitrary()?;
        let _ = host.runtime.configure(&host.components[world], config, FilterLimits::default(), FailurePolicy::Closed);
        return Ok(());
    }
    let filter = &host.filters[world];
    let name = WORLDS[world].0;
    let outcome = match world {
        0 => {
            let request = http::Request { id: u.arbitrary()?, head: u.arbitrary()? };
            filter.on_request(test_connection(), &request).map(drop)
        }
        1 => {
            let questions = (0..u.int_in_range(0..=3)?)
                .map(|_| Ok(dns::Question { name: u.arbitrary()?, qtype: u.arbitrary()?, qclass: u.arbitrary()? }))
                .collect::<Result<_>>()?;
            let transport = if u.arbitrary()? { dns::Transport::Udp } else { dns::Transport::Tcp };
            let query = dns::Query { id: u.arbitrary()?, questions, transport };
            filter.on_query(test_connection(), &query).map(drop)
        }
        2 => {
            let topics = match u.int_in_range(0..=3)? {
                0 => kafka::Topics::None,
                1 => kafka::Topics::Named(u.arbitrary()?),
                2 => kafka::Topics::All,
                _ => kafka::Topics::Unknown,
            };
            let request = kafka::Request {
                api_key: u.arbitrary()?,
                api_version: u.arbitrary()?,
                correlation_id: u.arbitrary()?,
                client_id: u.arbitrary()?,
                topics,
                transactional_id: u.arbitrary()?,
            };
            filter.on_kafka_request(test_connection(), &request).map(drop)
        }
        3 => {
            let protocol = if u.arbitrary()? { memcached::Protocol::Text } else { memcached::Protocol::Binary };
            let request =
                memcached::Request { protocol, command: u.arbitrary()?, opcode: u.arbitrary()?, keys: u.arbitrary()? };
            filter.on_memcached_request(test_connection(), &request).map(drop)
        }
        _ => {
            let statements = (0..u.int_in_range(0..=4)?)
                .map(|_| {
                    Ok(cassandra::Statement { action: u.arbitrary()?, table: u.arbitrary()?, query: u.arbitrary()? })
                })
                .collect::<Result<_>>()?;
            let request = cassandra::Request {
                version: u.arbitrary()?,
                opcode: u.arbitrary()?,
                stream_id: u.arbitrary()?,
                statements,
                keyspace: u.arbitrary()?,
            };
            filter.on_cassandra_request(test_connection(), &request).map(drop)
        }
    };
    if let Err(failure) = outcome {
        panic!("built-in filter {name} failed on a request the host can send: {failure}");
    }
    Ok(())
}
