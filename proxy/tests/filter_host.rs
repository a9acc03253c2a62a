//! The filter host under misbehaving guests: traps, endless loops, memory
//! hogs and bad configurations fail one call, never the host, and a failed
//! instance is replaced while a healthy one is reused.

use std::sync::Arc;
use std::time::Duration;

use weir::observe::metrics::Metrics;
use weir::wasm::http::RequestDecision;
use weir::wasm::{
    ConfigureError, ConfiguredFilter, FailureKind, FailurePolicy, FilterComponent, FilterFailure, FilterLimits,
    FilterRuntime, RuntimeOptions, builtin, test_connection,
};

fn setup() -> (Arc<Metrics>, Arc<FilterRuntime>, Arc<FilterComponent>) {
    let metrics = Arc::new(Metrics::default());
    let runtime = Arc::new(FilterRuntime::new(metrics.clone(), RuntimeOptions::default()).unwrap());
    let bytes = std::fs::read(format!("{}/misbehave.wasm", builtin::BUILT_FILTERS_DIR)).unwrap();
    let component = runtime.load("misbehave", &bytes).unwrap();
    (metrics, runtime, component)
}

fn limits() -> FilterLimits {
    FilterLimits { timeout: Duration::from_millis(20), memory: 8 << 20 }
}

fn call(filter: &ConfiguredFilter, path: &str) -> Result<RequestDecision, FilterFailure> {
    let request = weir::wasm::test_request("GET", path, "a", &[]);
    filter.on_request(test_connection(), &request)
}

/// The misbehave filter stamps how many requests this instance has seen.
fn seen(decision: RequestDecision) -> String {
    match decision {
        RequestDecision::Allow(a) => match &a.edits[..] {
            [weir::wasm::http::HeaderOp::Set(h)] if h.name == "x-misbehave-seen" => h.value.clone(),
            other => panic!("unexpected edits {other:?}"),
        },
        RequestDecision::Deny(d) => panic!("denied: {}", d.reason),
    }
}

#[test]
fn a_healthy_instance_is_reused_and_a_trapped_one_replaced() {
    let (metrics, runtime, component) = setup();
    let filter = runtime.configure(&component, String::new(), limits(), FailurePolicy::Closed).unwrap();
    assert_eq!(seen(call(&filter, "/ok").unwrap()), "1");
    assert_eq!(seen(call(&filter, "/ok").unwrap()), "2", "the same instance serves the next call");

    let failure = call(&filter, "/trap").unwrap_err();
    assert_eq!(failure.kind, FailureKind::Trap);
    assert!(failure.message.contains("unreachable") || failure.message.contains("trap"), "{}", failure.message);

    assert_eq!(seen(call(&filter, "/ok").unwrap()), "1", "a fresh instance after the trap");
    let text = metrics.encode();
    assert!(text.contains(r#"weir_filter_failures_total{filter="misbehave",kind="trap"} 1"#), "{text}");
    // one for validation in configure, one first use, one replacement
    assert!(text.contains(r#"weir_filter_instantiations_total{filter="misbehave"} 3"#), "{text}");
    assert!(text.contains(r#"weir_filter_counter_total{filter="misbehave",name="requests"} 3"#), "{text}");
}

#[test]
fn an_endless_loop_hits_the_cpu_deadline() {
    let (_, runtime, component) = setup();
    let filter = runtime.configure(&component, String::new(), limits(), FailurePolicy::Closed).unwrap();
    let failure = call(&filter, "/loop").unwrap_err();
    assert_eq!(failure.kind, FailureKind::Timeout, "{}", failure.message);
    assert_eq!(seen(call(&filter, "/ok").unwrap()), "1");
}

/// The epoch ticker sleeps on an idle node (wasm/epoch.rs); the first call
/// after a quiet spell wakes it, and a loop in that call is still stopped.
#[test]
fn an_endless_loop_after_an_idle_spell_hits_the_cpu_deadline() {
    let (_, runtime, component) = setup();
    let filter = runtime.configure(&component, String::new(), limits(), FailurePolicy::Closed).unwrap();
    // longer than the ticker's quiet spell (200 ticks of 1 ms)
    std::thread::sleep(Duration::from_millis(500));
    // on a thread: a ticker that stayed asleep would never stop the loop
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(call(&filter, "/loop").map(|_| ())));
    let failure = result
        .recv_timeout(Duration::from_secs(20))
        .expect("the loop ran on: the first call after an idle spell did not wake the epoch ticker")
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::Timeout, "{}", failure.message);
}

#[test]
fn a_memory_hog_hits_the_memory_limit() {
    let (_, runtime, component) = setup();
    // a deadline the hog cannot reach first, however busy the machine: only
    // the memory limit may end it
    let limits = FilterLimits { timeout: Duration::from_secs(10), ..limits() };
    let filter = runtime.configure(&component, String::new(), limits, FailurePolicy::Closed).unwrap();
    let failure = call(&filter, "/oom").unwrap_err();
    assert_eq!(failure.kind, FailureKind::Memory, "{}", failure.message);
    assert_eq!(seen(call(&filter, "/ok").unwrap()), "1");
}

/// An instance whose memory only grows (a leak, or a JavaScript engine that
/// never collects between calls) is retired after the call that takes it
/// past 3/4 of its budget: every call is answered, none fails.
#[test]
fn an_instance_that_only_grows_is_retired_before_it_fails() {
    let (metrics, runtime, component) = setup();
    let filter = runtime.configure(&component, String::new(), limits(), FailurePolicy::Closed).unwrap();
    let seen_by_each: Vec<String> = (0..20).map(|_| seen(call(&filter, "/leak").unwrap())).collect();
    // 8 MiB, 1 MiB more per call: a fresh instance every few calls
    assert!(seen_by_each.iter().filter(|s| *s == "1").count() >= 3, "{seen_by_each:?}");
    let text = metrics.encode();
    assert!(!text.contains("weir_filter_failures_total{"), "{text}");
    assert!(text.contains(r#"weir_filter_recycled_total{filter="misbehave"}"#), "{text}");
}

#[test]
fn bad_configurations_are_rejected_before_traffic() {
    let (_, runtime, component) = setup();
    let refused =
        runtime.configure(&component, r#"{"rejectConfig":"no thanks"}"#.into(), limits(), FailurePolicy::Closed);
    let refused = refused.unwrap_err();
    assert!(matches!(refused, ConfigureError::Refused(_)), "the filter judged it: {refused:?}");
    assert_eq!(refused.to_string(), "no thanks");
    let trapped = runtime.configure(&component, r#"{"trapInConfigure":true}"#.into(), limits(), FailurePolicy::Closed);
    let trapped = trapped.unwrap_err();
    assert!(matches!(trapped, ConfigureError::Failed(_)), "a trap is no judgement: {trapped:?}");
    assert!(trapped.to_string().contains("configure failed (trap)"));
    let malformed = runtime.configure(&component, "{".into(), limits(), FailurePolicy::Closed);
    assert!(malformed.unwrap_err().to_string().contains("misbehave config"));
}

#[test]
fn identical_configurations_share_one_filter() {
    let (_, runtime, component) = setup();
    let a = runtime.configure(&component, String::new(), limits(), FailurePolicy::Closed).unwrap();
    let b = runtime.configure(&component, String::new(), limits(), FailurePolicy::Closed).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    let open = runtime.configure(&component, String::new(), limits(), FailurePolicy::Open).unwrap();
    assert!(!Arc::ptr_eq(&a, &open), "a different failure policy is a different filter");
}

#[test]
fn a_core_module_built_with_the_sdk_is_wrapped_at_load() {
    let (_, runtime, _) = setup();
    // what `cargo build --target wasm32-unknown-unknown` leaves, before
    // weir's build wraps it: it carries its world, so it loads as it is
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm-guests/wasm32-unknown-unknown/release/require_header.wasm");
    let bytes = std::fs::read(&built).unwrap_or_else(|e| panic!("{}: {e}", built.display()));
    assert!(!weir::wasm::toolchain::is_component(&bytes), "a core module");
    let component = runtime.load("require-header", &bytes).expect("wrapped and loaded");
    assert_eq!(component.world(), weir::protocol::Protocol::Http);
}

#[test]
fn components_that_are_not_filters_are_refused() {
    let (_, runtime, _) = setup();
    let not_wasm = runtime.load("junk", b"definitely not wasm");
    assert!(not_wasm.unwrap_err().to_string().contains("not a valid WebAssembly component"));
    // a valid component of another world: a core module is not a component at all
    let core_module = b"\0asm\x01\0\0\0";
    assert!(runtime.load("core", core_module).is_err());
}

#[test]
fn the_example_filter_answers_with_its_own_reply() {
    let metrics = Arc::new(Metrics::default());
    let runtime = Arc::new(FilterRuntime::new(metrics.clone(), RuntimeOptions::default()).unwrap());
    let component = runtime.load("require-header", builtin::find("require-header").unwrap()).unwrap();
    let config = r#"{"header":"x-api-key","pattern":"[0-9a-f]{4}","realm":"r"}"#.to_string();
    let filter = runtime.configure(&component, config, FilterLimits::default(), FailurePolicy::Closed).unwrap();
    match call(&filter, "/").unwrap() {
        RequestDecision::Deny(d) => {
            let reply = d.reply.expect("a custom reply");
            assert_eq!(reply.status, 401);
            assert!(reply.headers.iter().any(|h| h.name == "www-authenticate" && h.value.contains("realm=\"r\"")));
            assert_eq!(String::from_utf8(reply.body).unwrap(), "missing x-api-key header\n");
        }
        RequestDecision::Allow(_) => panic!("allowed without a key"),
    }
    assert!(metrics.encode().contains(r#"weir_filter_counter_total{filter="require-header",name="rejected"} 1"#));
    let bad = runtime.configure(
        &component,
        r#"{"header":"x","pattern":"("}"#.into(),
        FilterLimits::default(),
        FailurePolicy::Closed,
    );
    assert!(bad.unwrap_err().to_string().contains("`pattern`"));
}

#[test]
fn a_core_module_or_other_bytes_are_refused_with_what_to_do() {
    let (_, runtime, _) = setup();
    // the smallest core module: magic and version 1 (layer 0), no world in it
    let Err(core) = runtime.load("core", b"\0asm\x01\0\0\0") else { panic!("a core module is no filter") };
    let core = core.to_string();
    assert!(core.contains("implements no world"), "{core}");
    assert!(core.contains("a core module") && core.contains("weir filter new"), "{core}");
    let Err(text) = runtime.load("text", b"(module)") else { panic!("text is no filter") };
    let text = text.to_string();
    assert!(text.contains("not a WebAssembly file"), "{text}");
}
