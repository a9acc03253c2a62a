//! What the component boundary costs: the same `http-policy` rules (the
//! quickstart's demo-api policy) called natively — the filter crate linked
//! into this binary, as a proxy with compiled-in rules would run them — and
//! through weir's Wasm host exactly as weir's HTTP engine calls them
//! (`ConfiguredFilter::on_request`: instance, CPU budget, the request lowered
//! into guest memory, the decision lifted back). Same requests, same
//! verdicts (checked), one process, one thread.
//!
//!   filter-overhead [CALLS]

use std::time::Instant;

use weir_filter_sdk::http::HttpFilter;

const CONFIG: &str = r#"{"groups":[{"name":"demo-api","rules":[
  {"method":"GET","path":"/public/.*"},
  {"method":"POST","path":"/api/orders","headers":["Content-Type: application/json"]}]}]}"#;

/// (method, path, headers, allowed)
const REQUESTS: &[(&str, &str, &[(&str, &str)], bool)] = &[
    ("GET", "/public/index.html", &[("user-agent", "wrk"), ("accept", "*/*")], true),
    ("POST", "/api/orders", &[("content-type", "application/json"), ("content-length", "17")], true),
    ("GET", "/admin", &[("user-agent", "wrk")], false),
    ("DELETE", "/api/orders", &[("content-type", "application/json")], false),
];

fn main() {
    let calls: usize = std::env::args().nth(1).map(|n| n.parse().expect("CALLS")).unwrap_or(1_000_000);

    // natively: the SDK's request type, built as the host would lower it
    let native = http_policy::HttpPolicy::configure(CONFIG).expect("configure natively");
    // http-policy never reads the connection; natively it is a handle
    // nobody may touch (its methods are Wasm imports)
    let connection = std::mem::ManuallyDrop::new(unsafe { weir_filter_sdk::Connection::from_handle(1) });
    let native_requests: Vec<_> =
        REQUESTS.iter().map(|(m, p, h, _)| weir_filter_sdk::http::Request { id: 0, head: head(m, p, h) }).collect();

    // through the component, as weir's engine calls it
    let metrics = std::sync::Arc::new(weir::observe::metrics::Metrics::default());
    let runtime =
        std::sync::Arc::new(weir::wasm::FilterRuntime::new(metrics, weir::wasm::RuntimeOptions::default()).unwrap());
    let bytes = weir::wasm::builtin::find(weir::wasm::builtin::HTTP_POLICY).unwrap();
    let component = runtime.load(weir::wasm::builtin::HTTP_POLICY, bytes).unwrap();
    let filter = runtime
        .configure(
            &component,
            CONFIG.to_string(),
            weir::wasm::FilterLimits::default(),
            weir::wasm::FailurePolicy::Closed,
        )
        .unwrap();
    let wasm_requests: Vec<_> = REQUESTS.iter().map(|(m, p, h, _)| weir::wasm::test_request(m, p, "demo", h)).collect();

    // the same verdicts both ways
    for (i, (_, path, _, allowed)) in REQUESTS.iter().enumerate() {
        let n = matches!(
            native.on_request(&connection, &native_requests[i]),
            weir_filter_sdk::http::RequestDecision::Allow(_)
        );
        let w = matches!(
            filter.on_request(weir::wasm::test_connection(), &wasm_requests[i]).unwrap(),
            weir::wasm::http::RequestDecision::Allow(_)
        );
        assert_eq!((n, w), (*allowed, *allowed), "{path}: native allowed {n}, component allowed {w}");
    }

    let mut allowed = 0usize;
    let started = Instant::now();
    for i in 0..calls {
        let r = &native_requests[i % native_requests.len()];
        allowed +=
            matches!(native.on_request(&connection, r), weir_filter_sdk::http::RequestDecision::Allow(_)) as usize;
    }
    let native_ns = started.elapsed().as_nanos() as f64 / calls as f64;

    // per call, the view costs what the engine's does: one Arc clone
    let base = weir::wasm::test_connection();
    let started = Instant::now();
    for i in 0..calls {
        let r = &wasm_requests[i % wasm_requests.len()];
        let view = weir::wasm::ConnectionView { context: base.context.clone(), direction: base.direction };
        allowed += matches!(filter.on_request(view, r).unwrap(), weir::wasm::http::RequestDecision::Allow(_)) as usize;
    }
    let wasm_ns = started.elapsed().as_nanos() as f64 / calls as f64;
    assert_eq!(allowed, calls, "half the requests are allowed, both ways");

    println!(
        "{{\"calls\": {calls}, \"native_ns\": {native_ns:.0}, \"component_ns\": {wasm_ns:.0}, \"ratio\": {:.2}}}",
        wasm_ns / native_ns
    );
}

/// The `head` of the WIT's request: `METHOD path authority scheme`, then
/// `name: value` lines.
fn head(method: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut head = format!("{method} {path} demo http\n").into_bytes();
    for (name, value) in headers {
        head.extend_from_slice(format!("{name}: {value}\n").as_bytes());
    }
    head
}
