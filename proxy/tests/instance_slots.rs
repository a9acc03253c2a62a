//! Filter instances under a flood of stream connections, with real
//! components: per-connection (dedicated) instances get a bounded share of
//! the pool, per filter and per client, and what is left keeps serving
//! configuration checks and other filters; the shortage is counted and
//! passes when the connections go (docs/limits.md, `wasm/slots.rs`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use weir::observe::metrics::Metrics;
use weir::wasm::{FailureKind, FailurePolicy, FilterLimits, FilterRuntime, RuntimeOptions, builtin};

fn runtime(pool: u32) -> Arc<FilterRuntime> {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("filter-cache");
    let options = RuntimeOptions { cache_dir: Some(cache), max_instances: Some(pool) };
    Arc::new(FilterRuntime::new(Arc::new(Metrics::default()), options).unwrap())
}

fn r2d2_config(file: &str) -> String {
    serde_json::json!({"groups": [{"name": "test", "rules": [{"cmd": "READ", "file": file}]}]}).to_string()
}

#[test]
fn a_flood_of_stream_instances_leaves_room_for_checks_and_other_filters() {
    // 48 slots: 32 outside the validation reserve, 24 for connections, 16 per filter
    let runtime = runtime(48);
    let r2d2 = runtime.load("r2d2", builtin::find(builtin::R2D2).unwrap()).unwrap();
    let dns = runtime.load("dns-policy", builtin::find(builtin::DNS_POLICY).unwrap()).unwrap();
    let filter = runtime.configure(&r2d2, r2d2_config("/public/.*"), FilterLimits::default(), FailurePolicy::Closed);
    let filter = filter.unwrap();
    let client = |i: u8| IpAddr::from([127, 0, 0, i]);

    let refused = |client, per_client| filter.dedicated(client, per_client).err().expect("an instance past the limits");
    // one client: up to its own cap
    let mut held: Vec<_> = (0..5).map(|_| filter.dedicated(client(0), 5).unwrap()).collect();
    let per_client = refused(client(0), 5);
    assert_eq!(per_client.kind, FailureKind::Exhausted);
    assert!(per_client.message.contains("limits.filter_instances_per_client"), "{per_client}");
    // more clients: up to the filter's share of the pool
    for i in 1..5 {
        for _ in 0..5 {
            match filter.dedicated(client(i), 5) {
                Ok(instance) => held.push(instance),
                Err(failure) => {
                    assert_eq!(failure.kind, FailureKind::Exhausted, "{failure}");
                    assert!(failure.message.contains("share"), "{failure}");
                }
            }
        }
    }
    assert_eq!(held.len(), 16, "one filter's share of the pool");
    assert!(refused(client(9), 5).message.contains("share"));
    let exhausted = runtime.exhaustions();
    assert!(exhausted >= 6, "{exhausted}");

    // meanwhile: a new configuration is still checked (on a real instance),
    // and another filter still gets its instances
    runtime.configure(&r2d2, r2d2_config("/other/.*"), FilterLimits::default(), FailurePolicy::Closed).unwrap();
    let dns_config = serde_json::json!({"groups": [{"name": "test", "rules": [{"matchName": "a.example.com"}]}]});
    let dns = runtime.configure(&dns, dns_config.to_string(), FilterLimits::default(), FailurePolicy::Closed).unwrap();
    use weir::wasm::dns::{Query, Question, Transport};
    let question = Question { name: "a.example.com".into(), qtype: 1, qclass: 1 };
    let query = Query { id: 1, questions: vec![question], transport: Transport::Udp };
    dns.on_query(weir::wasm::test_connection(), &query).expect("the DNS filter still answers");

    // the flood ends: its slots come back
    drop(held);
    assert_eq!(runtime.instances_in_use().1, 0);
    let again: Vec<_> = (0..5).map(|_| filter.dedicated(client(1), 5).unwrap()).collect();
    assert_eq!(again.len(), 5);
}
