//! Local mode end to end: the weir binary with curl, nghttp, a Python gRPC
//! client and raw sockets in front, nginx, weir's demo backend and a Python
//! gRPC server behind.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use weir::observe::flow::Verdict;
use weir_integration::*;

/// weir.yaml with the frontend (127.0.0.2) and crawler (127.0.0.3) clients
/// and one listener `web` whose destination is `app: web`, port 80.
fn config(upstream: SocketAddr, port: u16, extra_listener: &str, extra: &str) -> String {
    format!(
        "admin: ADMIN\n\
         endpoints:\n  - {{name: frontend, address: {FRONTEND}, labels: {{app: frontend}}}}\n  \
         - {{name: crawler, address: {CRAWLER}, labels: {{app: crawler}}}}\n\
         listeners:\n  - name: web\n    bind: 127.0.0.1:{port}\n    upstream: {upstream}\n    \
         destination: {{labels: {{app: web}}, port: 80}}\n{extra_listener}{extra}"
    )
}

const WEB_POLICY: &str = r#"
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
            http:
              - {method: "GET|HEAD", path: "/public/.*"}
              - {method: POST, path: "/api/orders", headers: ["Content-Type: application/json"]}
              - {method: "POST|PUT", path: "/echo-body"}
    - fromEndpoints: [{matchLabels: {app: crawler}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http: [{method: GET, path: /robots.txt}]
"#;

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

#[test]
fn http1_requests_are_allowed_or_denied_by_source_identity() {
    let nginx = Nginx::start();
    let port = free_port();
    let weir = Weir::start(&config(nginx.addr, port, "", ""), &[("web.yaml", WEB_POLICY)]);

    let ok = curl_from(FRONTEND, &[&url(port, "/public/hello.txt")]);
    assert_eq!((ok.status, ok.body.as_str()), (200, "hello from nginx\n"), "{ok:?}");

    let denied = curl_from(FRONTEND, &[&url(port, "/admin/secret.txt")]);
    assert_eq!(denied.status, 403);
    assert_eq!(denied.body, "Access denied\r\n", "Cilium's refusal, byte for byte");

    assert_eq!(curl_from(CRAWLER, &[&url(port, "/robots.txt")]).status, 200);
    assert_eq!(curl_from(CRAWLER, &[&url(port, "/public/hello.txt")]).status, 403);

    // 127.0.0.1 is not an endpoint: reserved:world, which no rule allows at
    // L3/L4, so the connection is reset before any HTTP is exchanged
    let world = curl(&[&url(port, "/public/hello.txt")]);
    assert_eq!(world.status, 0, "{world:?}");
    // curl reports the reset as 7, 52 or 56 depending on when it notices
    assert!([7, 52, 56].contains(&world.exit), "connection reset: {world:?}");

    assert!(!nginx.access_log().contains("/admin/secret.txt"), "a denied request never reaches the upstream");

    let flow = weir.last_flow("/admin/secret.txt");
    assert_eq!(flow.verdict, Verdict::Denied);
    assert!(flow.source.labels.contains(&"k8s:app=frontend".to_string()), "{flow:?}");
    assert!(flow.destination.labels.contains(&"k8s:app=web".to_string()));
    assert_eq!(flow.http().unwrap().status, Some(403));
    assert_eq!(
        flow.reason.as_deref(),
        Some("http-policy: no HTTP rule matched (rules of default/web spec.ingress[0].toPorts[0])")
    );
    let allowed = weir.flows("from_label=app=frontend&verdict=forwarded").pop().expect("the frontend's request");
    assert_eq!(allowed.http().unwrap().path, "/public/hello.txt");
    assert_eq!(allowed.policies, vec!["default/web spec.ingress[0].toPorts[0]".to_string()]);
    let dropped = weir.flows("verdict=dropped");
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert!(dropped[0].source.labels.contains(&"reserved:world".to_string()));
    assert!(dropped[0].reason.as_deref().unwrap().contains("no ingress rule allows"));
}

#[test]
fn a_denied_request_leaves_the_connection_usable_and_pipelining_in_order() {
    let nginx = Nginx::start();
    let port = free_port();
    let _weir = Weir::start(&config(nginx.addr, port, "", ""), &[("web.yaml", WEB_POLICY)]);
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // three requests in one write: denied, denied with a body, allowed
    let pipelined = b"GET /admin/secret.txt HTTP/1.1\r\nHost: web\r\n\r\n\
        POST /admin/x HTTP/1.1\r\nHost: web\r\nContent-Length: 11\r\n\r\nhello world\
        GET /public/hello.txt HTTP/1.1\r\nHost: web\r\n\r\n";
    let answer = raw_exchange(FRONTEND, to, pipelined, Duration::from_secs(2));
    let statuses: Vec<&str> = answer.match_indices("HTTP/1.1 ").map(|(i, _)| &answer[i + 9..i + 12]).collect();
    assert_eq!(statuses, vec!["403", "403", "200"], "{answer}");
    assert!(answer.ends_with("hello from nginx\n"), "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
}

#[test]
fn http2_prior_knowledge_with_many_streams_on_one_connection() {
    let backend = DemoBackend::start();
    let port = free_port();
    // here 127.0.0.1 is an endpoint, so nghttp (which cannot pick its source
    // address) gets the frontend's rights
    let cfg = config(backend.addr, port, "", "")
        .replace("endpoints:\n", "endpoints:\n  - {name: local, address: 127.0.0.1, labels: {app: frontend}}\n");
    let weir = Weir::start(&cfg, &[("web.yaml", WEB_POLICY)]);
    let out = Command::new("nghttp")
        .args(["-v", "-n"])
        .args([url(port, "/public/a"), url(port, "/private"), url(port, "/public/b"), url(port, "/robots.txt")])
        .output()
        .expect("nghttp is installed (scripts/setup.sh)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut statuses: Vec<(u32, u16)> = text
        .lines()
        .filter(|l| l.contains("recv (stream_id=") && l.contains(":status:"))
        .map(|l| {
            let id = l.split("stream_id=").nth(1).unwrap().split(')').next().unwrap().parse().unwrap();
            (id, l.rsplit(' ').next().unwrap().parse().unwrap())
        })
        .collect();
    statuses.sort();
    assert_eq!(statuses, vec![(13, 200), (15, 403), (17, 200), (19, 403)], "{text}");
    assert_eq!(text.matches("recv SETTINGS frame").count(), 2, "one connection: {text}");

    let h2 = curl_from(FRONTEND, &["--http2-prior-knowledge", &url(port, "/private")]);
    assert_eq!((h2.status, h2.version.as_str(), h2.body.as_str()), (403, "2", "Access denied\r\n"));
    let flow = weir.last_flow("/public/b");
    assert_eq!(flow.http().unwrap().version, "HTTP/2");
}

#[test]
fn tls_listener_negotiates_h2_and_http1_with_alpn() {
    let backend = DemoBackend::start();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_certificate(dir.path());
    let cfg = config(backend.addr, port, "", "").replace(
        "    destination: {labels: {app: web}, port: 80}\n",
        &format!(
            "    destination: {{labels: {{app: web}}, port: 80}}\n    tls: {{cert: {}, key: {}}}\n",
            cert.display(),
            key.display()
        ),
    );
    let _weir = Weir::start(&cfg, &[("web.yaml", WEB_POLICY)]);
    let resolve = format!("localhost:{port}:127.0.0.1");
    let https = |path: &str| format!("https://localhost:{port}{path}");
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let ok = curl_from(FRONTEND, &["-k", flag, "--resolve", &resolve, &https("/public/tls")]);
        assert_eq!((ok.status, ok.version.as_str()), (200, version), "{ok:?}");
        let body: serde_json::Value = serde_json::from_str(&ok.body).unwrap();
        assert_eq!(body["uri"].as_str().unwrap().rsplit('/').next(), Some("tls"));
        let denied = curl_from(FRONTEND, &["-k", flag, "--resolve", &resolve, &https("/private")]);
        assert_eq!((denied.status, denied.body.as_str()), (403, "Access denied\r\n"));
    }
    // the protocol ALPN agreed is the only one served: HTTP/1.1 bytes on an
    // h2 connection would skip the framing guard (a smuggled CL+TE request
    // must never be served), and the HTTP/2 preface on an HTTP/1.1
    // connection is refused, not served
    let smuggle = "POST /public/x HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\
                   Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    let addr = format!("127.0.0.1:{port}");
    for (alpn, bytes, answer) in [("h2", smuggle, "h2 only"), ("http/1.1", smuggle, "HTTP/1.1 400"), ("-", preface, "")]
    {
        let mut child = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/python/tls_raw.py"))
            .args([addr.as_str(), FRONTEND, alpn])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(bytes.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let received = got["received"].as_str().unwrap();
        assert_eq!(got["closed"], true, "{alpn}: {got}");
        match answer {
            // the server's SETTINGS, then the connection ends: no HTTP/1 answer
            "h2 only" => assert!(!received.contains("HTTP/1.1"), "{alpn}: {got}"),
            // no HTTP/2 SETTINGS frame (type 4) on an HTTP/1.1 connection
            "" => assert!(received.as_bytes().get(3) != Some(&4), "{alpn}: {got}"),
            status => assert!(received.starts_with(status), "{alpn}: {got}"),
        }
    }
}

#[test]
fn grpc_calls_pass_with_trailers_and_denied_methods_fail_cleanly() {
    let grpc_port = free_port();
    let grpc_addr: SocketAddr = format!("127.0.0.1:{grpc_port}").parse().unwrap();
    let _server = python_server("grpc_server.py", &[&grpc_addr.to_string()], grpc_addr);
    let port = free_port();
    let cfg = config(grpc_addr, port, "", "").replace(
        "endpoints:\n",
        "endpoints:\n  - {name: grpc-client, address: 127.0.0.1, labels: {app: grpc-client}}\n",
    );
    let policy = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: grpc}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: grpc-client}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http: [{method: POST, path: "/weir\\.test\\.Echo/(Say|Count)"}]
"#;
    let weir = Weir::start(&cfg, &[("grpc.yaml", policy)]);
    let target = format!("127.0.0.1:{port}");
    let call = |kind: &str, method: &str, payload: &str| -> serde_json::Value {
        let out = python("grpc_client.py", &[&target, kind, method, payload]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let say = call("unary", "Say", "hi");
    assert_eq!(say["code"], "OK", "{say}");
    assert_eq!(say["responses"][0], "echo:hi");
    assert_eq!(say["trailers"]["x-served-by"], "python", "trailers pass through: {say}");

    let count = call("stream", "Count", "3");
    assert_eq!(count["code"], "OK", "{count}");
    assert_eq!(count["responses"], serde_json::json!(["0", "1", "2"]));
    assert_eq!(count["trailers"]["x-count"], "3");

    let secret = call("unary", "Secret", "x");
    assert_eq!(secret["code"], "PERMISSION_DENIED", "403 maps to PERMISSION_DENIED: {secret}");
    let flow = weir.last_flow("/weir.test.Echo/Secret");
    assert_eq!(flow.verdict, Verdict::Denied);
    assert_eq!(flow.http().unwrap().version, "HTTP/2");
}

#[test]
fn header_match_actions_and_filter_edits_reach_the_upstream() {
    let backend = DemoBackend::start();
    let port = free_port();
    let policy = r#"
apiVersion: policy.weir.dev/v1alpha1
kind: WeirNetworkPolicy
metadata: {name: edits}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http:
              - path: "/.*"
                headerMatches:
                  - {name: x-env, value: prod, mismatch: REPLACE}
                  - {name: x-debug, value: allowed, mismatch: DELETE}
                  - {name: x-tenant, value: acme, mismatch: ADD}
                  - {name: x-trace, value: on, mismatch: LOG}
            wasm:
              - name: stamp
                config: {header: x-api-key, pattern: ".+", stampHeader: x-weir-caller}
"#;
    let extra = "filters:\n  - {name: stamp, builtin: require-header}\n";
    let weir = Weir::start(&config(backend.addr, port, "", extra), &[("edits.yaml", policy)]);
    let seen = curl_from(
        FRONTEND,
        &["-H", "x-env: dev", "-H", "x-debug: 1", "-H", "x-trace: off", "-H", "x-api-key: k", &url(port, "/anything")],
    );
    assert_eq!(seen.status, 200, "{seen:?}");
    let echo: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
    let headers = &echo["headers"];
    assert_eq!(headers["x-env"], serde_json::json!(["prod"]), "REPLACE: {headers}");
    assert!(headers.get("x-debug").is_none(), "DELETE: {headers}");
    assert_eq!(headers["x-tenant"], serde_json::json!(["acme"]), "ADD: {headers}");
    assert_eq!(headers["x-trace"], serde_json::json!(["off"]), "LOG changes nothing");
    let frontend_id = weir.config()["model"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "frontend")
        .map(|e| e["identity"]["id"].as_u64().unwrap())
        .unwrap();
    assert_eq!(headers["x-weir-caller"], serde_json::json!([frontend_id.to_string()]), "the custom filter's edit");

    // the custom filter denies with its own reply when the key is missing
    let refused = curl_from(FRONTEND, &["-i", &url(port, "/anything")]);
    assert_eq!(refused.status, 401);
    assert!(refused.body.to_ascii_lowercase().contains("www-authenticate: apikey"), "{}", refused.body);

    // upstream connections are pooled: consecutive requests share one
    let peer = |path: &str| -> String {
        let r = curl_from(FRONTEND, &["-H", "x-api-key: k", &url(port, path)]);
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["peer"].as_str().unwrap().to_string()
    };
    assert_eq!(peer("/one"), peer("/two"));
}

#[test]
fn policy_changes_hot_reload_and_invalid_ones_are_kept_out() {
    let nginx = Nginx::start();
    let port = free_port();
    let weir = Weir::start(&config(nginx.addr, port, "", ""), &[("web.yaml", WEB_POLICY)]);
    assert_eq!(curl_from(FRONTEND, &[&url(port, "/index.html")]).status, 403);

    let generation = weir.generation();
    weir.write_policy("web.yaml", &WEB_POLICY.replace("path: \"/public/.*\"", "path: \"/(public/.*|index.html)\""));
    weir.wait_generation_above(generation);
    assert_eq!(curl_from(FRONTEND, &[&url(port, "/index.html")]).status, 200);

    // a broken regex and an unknown field: both reported, neither applied
    let generation = weir.generation();
    weir.write_policy("web.yaml", &WEB_POLICY.replace("path: \"/public/.*\"", "path: \"/public/(\""));
    weir.write_policy("extra.yaml", &WEB_POLICY.replace("name: web", "name: extra").replace("toPorts:", "toPort:"));
    wait_for("the rejection", Duration::from_secs(15), || {
        !weir.config()["reload"]["rejected"].as_array().unwrap().is_empty()
    });
    let rejected = weir.config()["reload"]["rejected"].to_string();
    assert!(
        rejected.contains("web.yaml: policy default/web: spec.ingress[0].toPorts[0].rules.http[0].path"),
        "{rejected}"
    );
    assert!(rejected.contains("invalid regular expression"), "{rejected}");
    assert!(rejected.contains("extra.yaml") && rejected.contains("toPort"), "{rejected}");
    assert_eq!(weir.generation(), generation, "the last good model stays in force");
    assert_eq!(curl_from(FRONTEND, &[&url(port, "/index.html")]).status, 200);
    assert!(weir.metrics().contains(r#"weir_policy_reloads_total{result="rejected"}"#));

    // fixing the files applies again
    std::fs::remove_file(weir.config_dir().join("policies/extra.yaml")).unwrap();
    weir.write_policy("web.yaml", WEB_POLICY);
    weir.wait_generation_above(generation);
    assert_eq!(curl_from(FRONTEND, &[&url(port, "/index.html")]).status, 403);
    assert!(weir.config()["reload"]["rejected"].as_array().unwrap().is_empty());
    assert_eq!(weir.config()["reload"]["needs_restart"], serde_json::json!([]));

    // a setting read at start only: the reload applies the rest and names it
    let generation = weir.generation();
    let yaml = weir.config_dir().join("weir.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(&yaml, format!("workers: 3\n{text}")).unwrap();
    weir.wait_generation_above(generation);
    assert_eq!(weir.config()["reload"]["needs_restart"], serde_json::json!(["workers"]));
}

#[test]
fn failing_filters_fail_closed_or_open_and_weir_keeps_serving() {
    let backend = DemoBackend::start();
    let (port, open_port) = (free_port(), free_port());
    let filter = misbehave_filter();
    let extra_listener = format!(
        "  - name: web-open\n    bind: 127.0.0.1:{open_port}\n    upstream: {}\n    destination: {{labels: {{app: web-open}}, port: 80}}\n",
        backend.addr
    );
    let extra = format!(
        "filters:\n  - {{name: misbehave, path: {f}, timeout: 50ms, memory: 16MiB}}\n  \
         - {{name: misbehave-open, path: {f}, timeout: 50ms, memory: 16MiB, failure: open}}\n",
        f = filter.display()
    );
    let policy = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: chaos}
specs:
  - endpointSelector: {matchLabels: {app: web}}
    ingress:
      - fromEndpoints: [{matchLabels: {app: frontend}}]
        toPorts: [{ports: [{port: "80"}], rules: {wasm: [{name: misbehave}]}}]
  - endpointSelector: {matchLabels: {app: web-open}}
    ingress:
      - fromEndpoints: [{matchLabels: {app: frontend}}]
        toPorts: [{ports: [{port: "80"}], rules: {wasm: [{name: misbehave-open}]}}]
"#;
    let mut weir = Weir::start(&config(backend.addr, port, &extra_listener, &extra), &[("chaos.yaml", policy)]);
    let seen = |r: &CurlResult| -> String {
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_else(|_| panic!("{r:?}"));
        v["headers"]["x-misbehave-seen"][0].as_str().unwrap().to_string()
    };
    let ok = curl_from(FRONTEND, &[&url(port, "/ok")]);
    assert_eq!(ok.status, 200, "{ok:?}");
    // a filter with a response hook is called for every response (filters
    // without one, like http-policy, are asked once and then skipped)
    for _ in 0..3 {
        let r = curl_from(FRONTEND, &["-i", &url(port, "/ok")]);
        assert!(r.body.lines().any(|l| l.starts_with("x-misbehave-responses: ")), "no response stamp: {r:?}");
    }
    for (path, kind) in [("/trap", "trap"), ("/loop", "timeout"), ("/oom", "memory")] {
        let failed = curl_from(FRONTEND, &[&url(port, path)]);
        assert_eq!((failed.status, failed.body.as_str()), (500, "Policy filter failed\r\n"), "{path}");
        let flow = weir.last_flow(path);
        assert_eq!(flow.verdict, Verdict::Error);
        assert!(flow.reason.as_deref().unwrap().contains(&format!("({kind})")), "{path}: {flow:?}");
        if kind == "timeout" {
            // the loop was charged its whole CPU budget, and the reason says so
            let reason = flow.reason.as_deref().unwrap();
            let used: f64 = reason.split("used ").nth(1).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap();
            assert!(used >= 50.0 && reason.contains("of CPU, budget 50 ms"), "{reason}");
        }
        // the failed instance was replaced: this worker's next instance starts counting at 1
        let after = curl_from(FRONTEND, &[&url(port, "/ok")]);
        assert_eq!(after.status, 200, "weir keeps serving after {path}");
        assert!(weir.is_running());
    }
    assert!(!seen(&ok).is_empty());

    let open = curl_from(FRONTEND, &[&url(open_port, "/trap")]);
    assert_eq!(open.status, 200, "failure: open lets the request through: {open:?}");
    let metrics = weir.metrics();
    for kind in ["trap", "timeout", "memory"] {
        assert!(
            metrics.contains(&format!(r#"weir_filter_failures_total{{filter="misbehave",kind="{kind}"}} 1"#)),
            "{metrics}"
        );
    }
}

#[test]
fn a_client_hanging_up_mid_body_loses_nothing_else() {
    let backend = DemoBackend::start();
    let port = free_port();
    let mut weir = Weir::start(&config(backend.addr, port, "", ""), &[("web.yaml", WEB_POLICY)]);
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    {
        let mut stream = connect_from(FRONTEND, to);
        stream.write_all(b"POST /echo-body HTTP/1.1\r\nHost: web\r\nContent-Length: 1000000\r\n\r\n").unwrap();
        stream.write_all(&[b'x'; 4096]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    } // dropped: the client hangs up with 995 904 bytes still to send
    let flow = {
        let mut found = None;
        wait_for("the aborted request's flow", Duration::from_secs(10), || {
            found = weir.flows("").into_iter().find(|f| f.http().is_some_and(|h| h.path == "/echo-body"));
            found.is_some()
        });
        found.unwrap()
    };
    assert_eq!(flow.verdict, Verdict::Error, "{flow:?}");
    assert!(flow.reason.as_deref().unwrap().contains("client"), "{flow:?}");
    assert!(weir.is_running());
    assert_eq!(curl_from(FRONTEND, &[&url(port, "/public/after")]).status, 200);
}

#[test]
fn path_normalization_defeats_bypass_attempts() {
    let nginx = Nginx::start();
    let port = free_port();
    let _weir = Weir::start(&config(nginx.addr, port, "", ""), &[("web.yaml", WEB_POLICY)]);
    for attempt in [
        "/public/../admin/secret.txt",
        "/public/%2e%2e/admin/secret.txt",
        "/public/.%2E/admin/secret.txt",
        "/public//../../admin/secret.txt",
        "/public/./../admin/secret.txt",
    ] {
        let r = curl_from(FRONTEND, &["--path-as-is", &url(port, attempt)]);
        assert_eq!(r.status, 403, "{attempt}: {r:?}");
    }
    for bad in ["/public/%2e%2e%2fadmin/secret.txt", "/public/..%5Cadmin/secret.txt", "/public/a%zz", "/public/%00"] {
        let r = curl_from(FRONTEND, &["--path-as-is", &url(port, bad)]);
        assert_eq!(r.status, 400, "{bad}: {r:?}");
    }
    // what passes is forwarded normalized: the rule and nginx see one path
    assert_eq!(curl_from(FRONTEND, &["--path-as-is", &url(port, "/public//./hello.txt")]).status, 200);
    assert_eq!(curl_from(FRONTEND, &[&url(port, "/%70ublic/hello.txt")]).status, 200);
    let log = nginx.access_log();
    assert!(!log.contains("admin"), "{log}");
    assert_eq!(log.matches("\"GET /public/hello.txt HTTP/1.1\" 200").count(), 2, "{log}");
}

#[test]
fn ambiguous_framing_is_rejected_and_never_forwarded() {
    let nginx = Nginx::start();
    let port = free_port();
    let weir = Weir::start(&config(nginx.addr, port, "", ""), &[("web.yaml", WEB_POLICY)]);
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let attempts: [&[u8]; 6] = [
        b"POST /public/cl-te HTTP/1.1\r\nHost: w\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /public/cl-cl HTTP/1.1\r\nHost: w\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"POST /public/cl-list HTTP/1.1\r\nHost: w\r\nContent-Length: 1, 1\r\n\r\na",
        b"GET /public/ctl HTTP/1.1\r\nHost: w\r\nX-Bad: a\x01b\r\n\r\n",
        b"GET /public/fold HTTP/1.1\r\nHost: w\r\nX-Folded: a\r\n b\r\n\r\n",
        b"GET /public/two-hosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ];
    for attempt in attempts {
        let answer = raw_exchange(FRONTEND, to, attempt, Duration::from_secs(1));
        assert!(answer.starts_with("HTTP/1.1 400"), "{}\n=> {answer}", String::from_utf8_lossy(attempt));
    }
    let no_host = raw_exchange(FRONTEND, to, b"GET /public/no-host HTTP/1.1\r\n\r\n", Duration::from_secs(1));
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    let non_utf8 = raw_exchange(
        FRONTEND,
        to,
        b"GET /public/bin HTTP/1.1\r\nHost: w\r\nX-Bin: \xff\xfe\r\n\r\n",
        Duration::from_secs(1),
    );
    assert!(non_utf8.starts_with("HTTP/1.1 400"), "{non_utf8}");
    assert_eq!(nginx.access_log(), "", "nothing reached the upstream");
    let refused = weir.last_flow("/public/cl-te");
    assert_eq!(refused.verdict, Verdict::Error);
    assert!(refused.reason.unwrap().contains("Content-Length together with Transfer-Encoding"));
}

#[test]
fn bodies_stream_both_ways_over_http1_and_http2() {
    let backend = DemoBackend::start();
    let port = free_port();
    let _weir = Weir::start(&config(backend.addr, port, "", ""), &[("web.yaml", WEB_POLICY)]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    let payload: Vec<u8> = (0..8 << 20).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(&input, &payload).unwrap();
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let output = dir.path().join("out.bin");
        let r = curl_from(
            FRONTEND,
            &[
                version,
                "--data-binary",
                &format!("@{}", input.display()),
                "-o",
                output.to_str().unwrap(),
                &url(port, "/echo-body"),
            ],
        );
        assert_eq!(r.status, 200, "{version}: {r:?}");
        assert!(std::fs::read(&output).unwrap() == payload, "{version}: the body came back intact");
    }
}

#[test]
fn observe_follows_and_filters_flows() {
    let nginx = Nginx::start();
    let port = free_port();
    let weir = Weir::start(&config(nginx.addr, port, "", ""), &[("web.yaml", WEB_POLICY)]);
    let mut follower = Command::new(weir_bin())
        .args(["observe", "--admin", &weir.admin.to_string(), "--verdict", "denied", "-o", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(curl_from(FRONTEND, &[&url(port, "/public/hello.txt")]).status, 200);
    assert_eq!(curl_from(CRAWLER, &[&url(port, "/public/hello.txt")]).status, 403);
    let line = rx.recv_timeout(Duration::from_secs(10)).expect("a denied flow");
    let _ = follower.kill();
    let _ = follower.wait();
    let flow: FlowRecord = serde_json::from_str(&line).unwrap();
    assert_eq!(flow.verdict, Verdict::Denied);
    assert!(flow.source.labels.contains(&"k8s:app=crawler".to_string()));
    assert!(rx.try_recv().is_err(), "the allowed request was filtered out");

    let text = Command::new(weir_bin())
        .args(["observe", "--admin", &weir.admin.to_string(), "--no-follow", "--from-label", "app=frontend"])
        .args(["--http-path", "^/public/"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("forwarded") && text.contains("GET /public/hello.txt") && text.contains("=> 200"), "{text}");
}

#[test]
fn admin_api_serves_metrics_config_and_a_service_map() {
    let backend = DemoBackend::start();
    let port = free_port();
    let weir = Weir::start(&config(backend.addr, port, "", ""), &[("web.yaml", WEB_POLICY)]);
    for _ in 0..3 {
        curl_from(FRONTEND, &[&url(port, "/public/x")]);
    }
    curl_from(FRONTEND, &[&url(port, "/private")]);
    let metrics = weir.metrics();
    assert!(metrics.contains(r#"weir_requests_total{protocol="http",verdict="forwarded"} 3"#), "{metrics}");
    assert!(metrics.contains(r#"weir_requests_total{protocol="http",verdict="denied"} 1"#), "{metrics}");
    // four requests, and one response hook: http-policy has none, so the
    // first forwarded response teaches weir to skip it
    assert!(metrics.contains(r#"weir_filter_duration_seconds_count{filter="http-policy"} 5"#), "{metrics}");
    assert!(metrics.contains("weir_request_duration_seconds_bucket"), "{metrics}");
    let config = weir.config();
    assert_eq!(config["model"]["policies"], serde_json::json!(["default/web"]));
    assert_eq!(config["model"]["listeners"][0]["name"], "web");
    let (status, page) = http_get(weir.admin, "/").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("app=frontend") && page.contains("app=web"), "{page}");
    assert!(http_get(weir.admin, "/flows?verdict=maybe").unwrap().0 == 400);
}

#[test]
fn the_metrics_listener_serves_metrics_and_health_and_nothing_else() {
    let backend = DemoBackend::start();
    let port = free_port();
    let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let extra = format!("metrics: {metrics_addr}\n");
    let weir = Weir::start(&config(backend.addr, port, "", &extra), &[("web.yaml", WEB_POLICY)]);
    curl_from(FRONTEND, &[&url(port, "/public/x")]);
    let (status, metrics) = http_get(metrics_addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains(r#"weir_requests_total{protocol="http",verdict="forwarded"} 1"#), "{metrics}");
    let version = env!("CARGO_PKG_VERSION");
    assert!(metrics.contains(&format!("weir_build_info{{version=\"{version}\",commit=\"dev\"}} 1")), "{metrics}");
    let (status, health) = http_get(metrics_addr, "/healthz").unwrap();
    assert_eq!(status, 200);
    assert!(
        health.starts_with(&format!("ok version={version} commit=dev pid={} start=cold generation=", weir.pid())),
        "{health}"
    );
    // what shows policies and traffic stays on the admin API
    for path in ["/config", "/flows", "/fqdn", "/"] {
        assert_eq!(http_get(metrics_addr, path).unwrap().0, 404, "{path} on the metrics listener");
        assert_eq!(http_get(weir.admin, path).unwrap().0, 200, "{path} on the admin API");
    }
    assert!(
        weir.log().contains(&format!("version=\"{version}\"")) || weir.log().contains(&format!("version={version}"))
    );
}

#[test]
fn an_unreachable_upstream_answers_503_with_a_flow() {
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let port = free_port();
    let weir = Weir::start(&config(dead, port, "", ""), &[("web.yaml", WEB_POLICY)]);
    let r = curl_from(FRONTEND, &[&url(port, "/public/x")]);
    assert_eq!(r.status, 503);
    let flow = weir.last_flow("/public/x");
    assert_eq!(flow.verdict, Verdict::Error);
    assert!(flow.reason.unwrap().contains("upstream connect failed"));
}

#[test]
fn upstream_connections_are_reused_only_when_they_can_be() {
    // weir keeps its HTTP/1.1 connections to the upstream open between
    // requests, also requests of different client connections
    let keeping = CountingUpstream::start(HTTP11_OK, false);
    let port = free_port();
    let _weir = Weir::start(&config(keeping.addr, port, "", ""), &[("web.yaml", WEB_POLICY)]);
    requests_answered_ok(port, 10);
    assert_eq!(keeping.accepted(), 1, "ten requests one after another take one upstream connection");

    // a pooled connection the upstream closed is never used for a request
    // (which would fail it): each request finds the last one closed
    let closing = CountingUpstream::start(HTTP11_OK, true);
    let port = free_port();
    let _weir = Weir::start(&config(closing.addr, port, "", ""), &[("web.yaml", WEB_POLICY)]);
    requests_answered_ok(port, 10);
    assert_eq!(closing.accepted(), 10);

    // an HTTP/1.0 upstream is not asked again on a connection, though it
    // says keep-alive: hyper would send it later requests as HTTP/1.0
    let old =
        CountingUpstream::start(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nok\n", false);
    let port = free_port();
    let _weir = Weir::start(&config(old.addr, port, "", ""), &[("web.yaml", WEB_POLICY)]);
    requests_answered_ok(port, 3);
    assert_eq!(old.accepted(), 3);
}

#[test]
fn an_upload_the_upstream_answers_early_goes_on_while_the_client_reads_nothing() {
    use std::io::Read;
    // An upstream (a stand-in on threads) that answers as soon as it has the
    // head, with a body larger than the sockets between hold, and reads the
    // upload meanwhile; a client that sends all of its body before reading
    // a byte. The upload must go on though nobody reads the answer yet.
    const UPLOAD: usize = 32 << 20;
    const ANSWER: usize = 32 << 20;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    let (received_tx, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else { return };
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
            head.push(byte[0]);
        }
        let mut writer = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = writer.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {ANSWER}\r\n\r\n").as_bytes());
            let _ = writer.write_all(&vec![b'a'; ANSWER]);
        });
        let mut got = 0;
        let mut buf = vec![0u8; 1 << 16];
        while got < UPLOAD {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        let _ = received_tx.send(got);
        // the connection stays open until the answer is out
        std::thread::sleep(Duration::from_secs(30));
    });
    let port = free_port();
    let _weir = Weir::start(&config(upstream, port, "", ""), &[("web.yaml", WEB_POLICY)]);
    let mut client = connect_from(FRONTEND, format!("127.0.0.1:{port}").parse().unwrap());
    client.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!("POST /echo-body HTTP/1.1\r\nHost: web\r\nContent-Length: {UPLOAD}\r\n\r\n");
    client.write_all(head.as_bytes()).unwrap();
    client.write_all(&vec![b'u'; UPLOAD]).expect("the whole upload is taken though the answer is not read");
    assert_eq!(received.recv_timeout(Duration::from_secs(20)), Ok(UPLOAD), "the upstream got all of it");
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let body_read = |answer: &[u8]| answer.windows(4).position(|w| w == b"\r\n\r\n").map(|end| answer.len() - end - 4);
    while body_read(&answer).is_none_or(|n| n < ANSWER) {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("an answer head");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&answer[..end]));
    assert_eq!(answer.len() - end - 4, ANSWER, "all of the answer");
}

/// `count` requests one after another, each on a new client connection,
/// each answered `ok` by the upstream.
fn requests_answered_ok(port: u16, count: usize) {
    for i in 0..count {
        let r = curl_from(FRONTEND, &[&url(port, &format!("/public/{i}"))]);
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"), "request {i}: {r:?}");
    }
}

const HTTP11_OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";

#[test]
fn policy_check_validates_files_offline() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, WEB_POLICY).unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        WEB_POLICY.replace("path: /robots.txt", "path: \"/robots[\"").replace("name: web", "name: bad"),
    )
    .unwrap();
    let check =
        |args: &[&std::path::Path]| Command::new(weir_bin()).args(["policy", "check"]).args(args).output().unwrap();

    let ok = check(&[&good]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let failed = check(&[&good, &bad]);
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("bad.yaml: policy default/bad: spec.ingress[1].toPorts[0].rules.http[0].path"), "{stderr}");

    let wasm = dir.path().join("wasm.yaml");
    std::fs::write(&wasm, WEB_POLICY.replace("http: [{method: GET, path: /robots.txt}]", "wasm: [{name: api-key}]"))
        .unwrap();
    let unknown = check(&[&wasm]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no filter named \"api-key\""));
    std::fs::write(dir.path().join("weir.yaml"), "filters:\n  - {name: api-key, builtin: require-header}\n").unwrap();
    let with_config =
        Command::new(weir_bin()).args(["policy", "check", "--config"]).arg(dir.path()).arg(&wasm).output().unwrap();
    // the rule has no config, which require-header rejects: named precisely
    assert_eq!(with_config.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&with_config.stderr).contains("rules.wasm[0].config: rejected by the filter"));
}

/// What weir's metrics say for one series (0 when it is not there).
fn metric_value(weir: &Weir, series: &str) -> f64 {
    weir.metrics()
        .lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn keep_alive_connections_rest_between_requests_and_are_served_when_they_speak_again() {
    let nginx = Nginx::start();
    let (plain_port, tls_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_certificate(dir.path());
    let tls_listener = format!(
        "  - name: web-tls\n    bind: 127.0.0.1:{tls_port}\n    upstream: {}\n    \
         destination: {{labels: {{app: web}}, port: 80}}\n    tls: {{cert: {}, key: {}}}\n",
        nginx.addr,
        cert.display(),
        key.display()
    );
    let weir = Weir::start(&config(nginx.addr, plain_port, &tls_listener, ""), &[("web.yaml", WEB_POLICY)]);
    for (listener, port, mode) in [("web", plain_port, "plain"), ("web-tls", tls_port, "tls")] {
        let resting = format!("weir_resting_connections{{listener=\"{listener}\"}}");
        let go = dir.path().join(format!("go-{listener}"));
        let mut client = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/python/keepalive_client.py"))
            .args([&format!("127.0.0.1:{port}"), FRONTEND, "20", mode, "/public/hello.txt"])
            .arg(&go)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(client.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), "quiet", "{mode}");
        // answered and quiet: every connection rests as its socket alone
        wait_for("20 resting connections", Duration::from_secs(10), || metric_value(&weir, &resting) == 20.0);
        std::fs::write(&go, "").unwrap();
        line.clear();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(client.wait().unwrap().success());
        let got: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(got["first"], serde_json::json!(vec![200; 20]), "{mode}: {got}");
        // woken by their next requests (two pipelined each), on the same connections
        assert_eq!(got["second"], serde_json::json!(vec![[200, 200]; 20]), "{mode}: {got}");
        wait_for("the closed connections to leave the count", Duration::from_secs(10), || {
            metric_value(&weir, &resting) == 0.0
        });
        assert_eq!(
            metric_value(&weir, &format!("weir_connections_total{{listener=\"{listener}\"}}")),
            20.0,
            "{mode}: one connection per client"
        );
    }
}
