//! State a filter shares across weir's workers: the example rate limiter
//! (filters/examples/rate-limit, a token bucket per caller in the host's
//! shared state) lets exactly its burst through, whatever `workers` says,
//! with requests arriving at once on many connections; a configuration
//! change starts its state empty.

use std::path::PathBuf;
use std::process::Command;

use weir_integration::*;

fn policy(burst: u32) -> String {
    format!(
        r#"
apiVersion: policy.weir.dev/v1alpha1
kind: WeirNetworkPolicy
metadata: {{name: web}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: frontend}}}}, {{matchLabels: {{app: crawler}}}}]
      toPorts:
        - ports: [{{port: "80", protocol: TCP}}]
          rules:
            wasm: [{{name: rate-limit, config: {{perSecond: 0, burst: {burst}, by: app}}}}]
"#
    )
}

/// `n` requests from `source`, all at once, each on its own connection:
/// the status of each.
fn burst_of(source: &str, port: u16, n: usize) -> Vec<u16> {
    let children: Vec<_> = (0..n)
        .map(|i| {
            Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--interface", source])
                .arg(format!("http://127.0.0.1:{port}/public/hello.txt?n={i}"))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("curl")
        })
        .collect();
    children
        .into_iter()
        .map(|c| String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).parse().unwrap_or(0))
        .collect()
}

#[test]
fn a_rate_limit_holds_across_workers() {
    let nginx = Nginx::start();
    let port = free_port();
    let filter = PathBuf::from(weir::wasm::builtin::BUILT_FILTERS_DIR).join("rate_limit.wasm");
    let config = format!(
        "admin: ADMIN\nworkers: 2\n\
         endpoints:\n  - {{name: frontend, address: {FRONTEND}, labels: {{app: frontend}}}}\n  \
         - {{name: crawler, address: {CRAWLER}, labels: {{app: crawler}}}}\n\
         listeners:\n  - {{name: web, bind: 127.0.0.1:{port}, upstream: {}, \
         destination: {{labels: {{app: web}}, port: 80}}}}\n\
         filters:\n  - {{name: rate-limit, path: {}}}\n",
        nginx.addr,
        filter.display()
    );
    let weir = Weir::start(&config, &[("web.yaml", &policy(5))]);

    let count = |statuses: &[u16], status: u16| statuses.iter().filter(|s| **s == status).count();
    let frontend = burst_of(FRONTEND, port, 24);
    assert_eq!((count(&frontend, 200), count(&frontend, 429)), (5, 19), "{frontend:?}");
    // each caller has its own bucket
    let crawler = burst_of(CRAWLER, port, 8);
    assert_eq!((count(&crawler, 200), count(&crawler, 429)), (5, 3), "{crawler:?}");
    // both workers judged some: each made its instance (one more is the
    // configuration check's), and with state per instance each would have
    // let its own 5 through
    let metrics = weir.metrics();
    let instances: u64 = metrics
        .lines()
        .find(|l| l.starts_with("weir_filter_instantiations_total{filter=\"rate-limit\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(instances >= 3, "the requests reached both workers: {instances} instances\n{metrics}");
    assert!(metrics.contains("weir_filter_counter_total{filter=\"rate-limit\",name=\"limited\"} 22"), "{metrics}");

    // a new configuration starts empty
    let generation = weir.generation();
    weir.write_policy("web.yaml", &policy(3));
    weir.wait_generation_above(generation);
    let again = burst_of(FRONTEND, port, 6);
    assert_eq!(count(&again, 200), 3, "{again:?}");
    let denied = weir.wait_flow("verdict=denied", "a limited request", |_| true);
    let reason = denied.reason.unwrap_or_default();
    assert!(
        reason.contains("default/app=frontend to ") && reason.contains(": over 0 requests per second (burst 3)"),
        "{reason}"
    );
}
