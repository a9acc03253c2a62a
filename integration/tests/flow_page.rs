//! The live flow page (/ui) in a real browser: Debian's Chromium driven by
//! playwright-core (integration/browser/flow_page.mjs) after real traffic
//! through weir to nginx. The page must show the rows, take a live one as it
//! happens, narrow them with its filters, draw who talks to whom with
//! allowed/refused counts, and list the policies in force with their mode.
//! Screenshots land in target/test-output/flow-page/.

use std::path::PathBuf;
use std::process::Command;

use weir_integration::*;

const POLICIES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http: [{method: GET, path: "/public/.*"}]
    - fromEndpoints: [{matchLabels: {app: crawler}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http: [{method: GET, path: /robots.txt}]
---
apiVersion: policy.weir.dev/v1alpha1
kind: WeirNetworkPolicy
metadata: {name: api-proposed}
spec:
  endpointSelector: {matchLabels: {app: api}}
  enforcementMode: audit
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts:
        - ports: [{port: "8080", protocol: TCP}]
          rules:
            http: [{method: GET, path: "/v1/.*"}]
"#;

/// A table row as the page showed it: its verdict and cell texts.
#[derive(Debug)]
struct Row {
    verdict: String,
    cells: Vec<String>,
}

fn rows(value: &serde_json::Value) -> Vec<Row> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    value
        .as_array()
        .unwrap_or_else(|| panic!("rows: {value}"))
        .iter()
        .map(|r| Row { verdict: text(&r["verdict"]), cells: r["cells"].as_array().unwrap().iter().map(text).collect() })
        .collect()
}

#[test]
fn the_flow_page_shows_filters_and_maps_real_traffic_in_chromium() {
    let nginx = Nginx::start();
    let (web, api) = (free_port(), free_port());
    let config = format!(
        "admin: ADMIN\n\
         endpoints:\n  - {{name: frontend, address: {FRONTEND}, labels: {{app: frontend}}}}\n  \
         - {{name: crawler, address: {CRAWLER}, labels: {{app: crawler}}}}\n\
         listeners:\n  \
         - {{name: web, bind: 127.0.0.1:{web}, upstream: {0}, destination: {{labels: {{app: web}}, port: 80}}}}\n  \
         - {{name: api, bind: 127.0.0.1:{api}, upstream: {0}, destination: {{labels: {{app: api}}, port: 8080}}}}\n",
        nginx.addr
    );
    let weir = Weir::start(&config, &[("policies.yaml", POLICIES)]);
    let get = |from: &str, port: u16, path: &str| curl_from(from, &[&format!("http://127.0.0.1:{port}{path}")]).status;
    assert_eq!(get(FRONTEND, web, "/public/hello.txt"), 200);
    assert_eq!(get(FRONTEND, web, "/admin/secret.txt"), 403);
    assert_eq!(get(CRAWLER, web, "/public/hello.txt"), 403);
    assert_eq!(get(FRONTEND, api, "/v1/items"), 404, "nginx has no /v1: forwarded all the same");
    assert_eq!(get(FRONTEND, api, "/internal/debug"), 404, "audited, not refused");
    assert_eq!(get(CRAWLER, api, "/v1/items"), 404, "audited, not dropped");
    wait_for("six flows", std::time::Duration::from_secs(10), || weir.flows("").len() >= 6);

    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-output/flow-page");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser/flow_page.mjs");
    let output = Command::new("node")
        .arg(&script)
        .arg(format!("http://{}", weir.admin))
        .arg(format!("http://127.0.0.1:{web}"))
        .arg(FRONTEND)
        .arg(&out)
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the browser run failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let dump = serde_json::to_string_pretty(&seen).unwrap();
    let (initial, live, denied, crawler, admin) = (
        rows(&seen["initial"]),
        rows(&seen["live"]),
        rows(&seen["denied"]),
        rows(&seen["crawler"]),
        rows(&seen["admin"]),
    );

    assert_eq!(seen["errors"], serde_json::json!([]), "the page threw: {dump}");
    assert_eq!(seen["status"], "live", "{dump}");
    assert!(seen["generation"].as_str().unwrap().starts_with("policy generation "), "{dump}");
    // the rows: every request, newest first, each verdict as weir recorded it
    let verdicts: Vec<&str> = initial.iter().map(|r| r.verdict.as_str()).collect();
    assert_eq!(verdicts, ["audited", "audited", "forwarded", "denied", "denied", "forwarded"], "{dump}");
    let audited = &initial[1];
    assert!(audited.cells[5].contains("/internal/debug"), "{dump}");
    assert!(audited.cells[6].starts_with("would be denied: http-policy"), "the reason is shown: {dump}");
    // a request made while the page was open arrived without a reload
    assert_eq!(live.len(), 1, "{dump}");
    assert_eq!(live[0].verdict, "forwarded");
    // the filters narrow them
    assert_eq!(denied.len(), 2, "{dump}");
    assert!(crawler.len() == 2 && crawler.iter().all(|r| r.cells[3].contains("crawler")), "{dump}");
    assert_eq!(admin.len(), 1, "{dump}");
    assert!(admin[0].cells[5].contains("/admin/secret.txt"), "{dump}");
    // who talks to whom: an edge per pair with its counts
    let edges = seen["edges"].as_array().unwrap();
    let edge = |from: &str, to: &str| -> (u64, u64, u64) {
        let e = edges
            .iter()
            .find(|e| {
                let key = e["edge"].as_str().unwrap();
                key.starts_with(from) && key.contains(&format!("\u{2192}{to}"))
            })
            .unwrap_or_else(|| panic!("no edge {from} -> {to}: {dump}"));
        let n = |k: &str| e[k].as_u64().unwrap();
        (n("allowed"), n("refused"), n("audited"))
    };
    assert_eq!(edge("frontend", "web"), (2, 1, 0), "{dump}");
    assert_eq!(edge("crawler", "web"), (0, 1, 0), "{dump}");
    assert_eq!(edge("frontend", "api"), (2, 0, 1), "{dump}");
    assert_eq!(edge("crawler", "api"), (1, 0, 1), "{dump}");
    assert_eq!(edges.len(), 4, "{dump}");
    // the policies in force, with their mode
    let mode =
        |name: &str| seen["policies"].as_array().unwrap().iter().find(|p| p["name"] == name).map(|p| p["mode"].clone());
    assert_eq!(mode("default/web"), Some("enforce".into()), "{dump}");
    assert_eq!(mode("default/api-proposed"), Some("audit".into()), "{dump}");

    for shot in ["flow-page.png", "flow-page-denied.png"] {
        let size = std::fs::metadata(out.join(shot)).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "{shot}: {size} bytes");
    }
}
