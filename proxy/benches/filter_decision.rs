//! The cost of one L7 decision: a request head through the built-in
//! http-policy filter in the real Wasm host (lowering, the guest's matching,
//! lifting the decision, the CPU deadline and metrics), as the HTTP engine
//! makes it. Target: at most 1 µs median.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use weir::observe::metrics::Metrics;
use weir::wasm::http::Request;
use weir::wasm::{
    ConnectionView, FailurePolicy, FilterLimits, FilterRuntime, RuntimeOptions, builtin, test_connection, test_request,
};

/// The quickstart's demo-api rules for the frontend, plus a typical browser head.
const QUICKSTART_RULES: &str = r#"{"groups":[{"rules":[
  {"method":"GET","path":"/public/.*"},
  {"method":"POST","path":"/api/orders","headers":["Content-Type: application/json"]}]}]}"#;

fn request(path: &str, headers: usize) -> Request {
    let pairs: Vec<(&str, &str)> = [
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"),
        ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "session=0123456789abcdef0123456789abcdef; theme=dark"),
    ]
    .into_iter()
    .cycle()
    .take(headers)
    .collect();
    test_request("GET", path, "demo-api.default.svc:80", &pairs)
}

fn decisions(c: &mut Criterion) {
    let runtime = Arc::new(FilterRuntime::new(Arc::new(Metrics::default()), RuntimeOptions::default()).unwrap());
    let component = runtime.load("http-policy", builtin::find("http-policy").unwrap()).unwrap();
    // one connection for every call, as on a keep-alive connection
    let connection = test_connection();
    let view = || ConnectionView { context: connection.context.clone(), direction: connection.direction };
    let configure = |config: &str| {
        runtime.configure(&component, config.to_string(), FilterLimits::default(), FailurePolicy::Closed).unwrap()
    };

    let quickstart = configure(QUICKSTART_RULES);
    let mut group = c.benchmark_group("http-policy");
    for (name, path, headers) in [
        ("allow, 5 headers", "/public/index.html", 5),
        ("deny, 5 headers", "/private", 5),
        ("allow, 21 headers", "/public/index.html", 21),
    ] {
        let req = request(path, headers);
        group.bench_function(name, |b| b.iter(|| quickstart.on_request(view(), &req).unwrap()));
    }
    let regex = configure(
        r#"{"groups":[{"rules":[{"method":"GET|HEAD","path":"/v[0-9]+/items/[0-9]+(\\?.*)?","host":".*\\.svc(:[0-9]+)?"}]}]}"#,
    );
    let req = request("/v2/items/42?expand=1", 5);
    group.bench_function("regex rule, 5 headers", |b| b.iter(|| regex.on_request(view(), &req).unwrap()));
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
