//! Writing a filter as a user would, outside this repository: `weir filter
//! new` writes the crate, its own `cargo test` runs natively, `weir filter
//! build` makes the component with the machine's toolchain, `weir filter
//! test` runs its cases in weir's host (a wrong expectation fails with the
//! request, the expected and the actual answer) and fuzzes it, and weir
//! serves with it in front of nginx, judged by curl, and takes a rebuilt one
//! without dropping a connection (a broken file is refused, the old filter
//! stays). A broken filter (trap, endless loop, memory hog) is caught by
//! `weir filter test`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use weir_integration::*;

fn weir_filter(args: &[&str]) -> Output {
    let mut cmd = Command::new(weir_bin());
    cmd.arg("filter").args(args);
    // the filter crates' builds share one target directory across runs (the
    // first builds the SDK and, with Debian's toolchain, std itself)
    cmd.env("CARGO_TARGET_DIR", shared_target());
    cmd.output().expect("weir filter")
}

fn shared_target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/filter-authoring")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Weir in front of nginx with `filter` (the component at `component`,
/// `limits` added to its `filters:` entry) in a policy's `wasm` rule for the
/// web app: the frontend is refused /admin unless it is the admin app.
fn serve(filter: &str, component: &Path, limits: &str) -> (Nginx, u16, Weir) {
    let nginx = Nginx::start();
    let port = free_port();
    let config = format!(
        "admin: ADMIN\n\
         endpoints:\n  - {{name: frontend, address: {FRONTEND}, labels: {{app: frontend}}}}\n  \
         - {{name: admin, address: {CRAWLER}, labels: {{app: admin}}}}\n\
         listeners:\n  - {{name: web, bind: 127.0.0.1:{port}, upstream: {}, \
         destination: {{labels: {{app: web}}, port: 80}}}}\n\
         filters:\n  - {{name: {filter}, path: {}{limits}}}\n",
        nginx.addr,
        component.display()
    );
    let policy = format!(
        r#"
apiVersion: policy.weir.dev/v1alpha1
kind: WeirNetworkPolicy
metadata: {{name: web}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: frontend}}}}, {{matchLabels: {{app: admin}}}}]
      toPorts:
        - ports: [{{port: "80", protocol: TCP}}]
          rules:
            wasm: [{{name: {filter}, config: {{denyPrefixes: [/admin], unlessLabel: "app=admin"}}}}]
"#
    );
    let weir = Weir::start(&config, &[("web.yaml", &policy)]);
    (nginx, port, weir)
}

#[test]
fn a_new_filter_is_built_tested_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let out = weir_filter(&["new", "gatekeeper", "--world", "http", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let crate_dir = dir.path().join("gatekeeper");
    for file in ["Cargo.toml", "src/lib.rs", "cases.yaml"] {
        assert!(crate_dir.join(file).exists(), "{file} written");
    }
    let again = weir_filter(&["new", "gatekeeper", "--dir", dir.path().to_str().unwrap()]);
    assert!(!again.status.success() && text(&again).contains("exists already"), "{}", text(&again));
    let unknown = weir_filter(&["new", "x", "--world", "smtp", "--dir", dir.path().to_str().unwrap()]);
    assert!(text(&unknown).contains("no Rust template for world \"smtp\""), "{}", text(&unknown));

    // the crate's own tests run natively: the export macro is for wasm32 only
    let native = Command::new("cargo")
        .args(["test", "--quiet"])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", shared_target().join("native"))
        .output()
        .unwrap();
    assert!(native.status.success(), "cargo test on the new crate: {}", text(&native));

    let built = weir_filter(&["build", crate_dir.to_str().unwrap()]);
    let said = text(&built);
    assert!(built.status.success(), "{said}");
    assert!(said.contains("http-filter world"), "{said}");
    let component = crate_dir.join("target/weir/gatekeeper.wasm");
    assert!(component.exists(), "{said}");

    // its cases pass in the host, and fuzzing finds nothing
    let tested = weir_filter(&["test", crate_dir.to_str().unwrap(), "--fuzz", "1"]);
    let said = text(&tested);
    assert!(tested.status.success(), "{said}");
    assert!(said.contains("ok    admin is off limits") && said.contains("3 passed, 0 failed"), "{said}");
    assert!(said.contains("generated requests") && said.contains("no failure"), "{said}");

    // a wrong expectation fails, saying what was asked, expected and got
    let cases = std::fs::read_to_string(crate_dir.join("cases.yaml")).unwrap();
    let wrong = dir.path().join("wrong.yaml");
    std::fs::write(&wrong, cases.replace("expect: {deny: \"off limits\"}", "expect: allow")).unwrap();
    let failed = weir_filter(&["test", crate_dir.to_str().unwrap(), "--cases", wrong.to_str().unwrap(), "--fuzz", "0"]);
    let said = text(&failed);
    assert_eq!(failed.status.code(), Some(1), "{said}");
    assert!(said.contains("FAIL  admin is off limits"), "{said}");
    assert!(said.contains("request:  GET /admin/users from [k8s:app=web]"), "{said}");
    assert!(said.contains("expected: allow") && said.contains("got:      deny (\"/admin is off limits\""), "{said}");

    // and weir serves with it, as a policy's `wasm` rule
    let (_nginx, port, weir) = serve("gatekeeper", &component, "");
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    assert_eq!(curl_from(FRONTEND, &[&url("/public/hello.txt")]).status, 200);
    assert_eq!(curl_from(FRONTEND, &[&url("/admin/secret.txt")]).status, 403);
    assert_eq!(curl_from(CRAWLER, &[&url("/admin/secret.txt")]).status, 200, "the admin app may");
    let flow = weir.wait_flow("verdict=denied", "the frontend's refusal", |f| {
        f.http().is_some_and(|h| h.path == "/admin/secret.txt")
    });
    let reason = flow.reason.unwrap_or_default();
    assert!(reason.starts_with("gatekeeper: /admin is off limits"), "{reason}");

    // hot load: the component file changes under a running weir. A broken
    // one is refused and the old filter keeps judging; a rebuilt one takes
    // over for the next request, on a connection that stays open
    let listener: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut open = connect_from(FRONTEND, listener);
    let ask = |stream: &mut std::net::TcpStream| {
        use std::io::Write;
        stream.write_all(b"GET /admin/x HTTP/1.1\r\nHost: web\r\n\r\n").unwrap();
        read_until_quiet(stream, std::time::Duration::from_millis(300))
    };
    assert!(ask(&mut open).starts_with("HTTP/1.1 403"));
    let first = weir.wait_flow("verdict=denied", "the open connection's refusal", |f| {
        f.http().is_some_and(|h| h.path == "/admin/x")
    });
    std::fs::write(&component, b"not a component").unwrap();
    wait_for("the broken file refused", std::time::Duration::from_secs(30), || {
        weir.config()["reload"]["rejected"].to_string().contains("gatekeeper")
    });
    assert!(ask(&mut open).starts_with("HTTP/1.1 403"), "the old filter still judges");
    // the rebuild writes the component over the broken file
    let source = std::fs::read_to_string(crate_dir.join("src/lib.rs")).unwrap();
    std::fs::write(crate_dir.join("src/lib.rs"), source.replace("is off limits", "is closed today")).unwrap();
    let generation = weir.generation();
    let rebuilt = weir_filter(&["build", crate_dir.to_str().unwrap()]);
    assert!(rebuilt.status.success(), "{}", text(&rebuilt));
    weir.wait_generation_above(generation);
    let answer = ask(&mut open);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let flow = weir.wait_flow("verdict=denied", "the new filter's refusal", |f| {
        f.reason.as_deref().is_some_and(|r| r.contains("is closed today"))
    });
    assert_eq!(flow.connection, first.connection, "on the connection that stayed open");
}

#[test]
fn a_broken_filter_is_caught_with_a_clear_message() {
    let misbehave = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm-guests/components/misbehave.wasm");
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        "cases:\n  \
         - {name: it traps, http: {path: /trap}, expect: allow}\n  \
         - {name: it loops, http: {path: /loop}, expect: allow}\n  \
         - {name: it hogs memory, http: {path: /oom}, expect: allow}\n  \
         - {name: it answers, http: {path: /fine}, expect: allow}\n",
    )
    .unwrap();
    let out = weir_filter(&[
        "test",
        misbehave.to_str().unwrap(),
        "--cases",
        cases.to_str().unwrap(),
        "--fuzz",
        "0",
        "--timeout-ms",
        "50",
        "--memory-mib",
        "16",
    ]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("FAIL  it traps") && said.contains("got:      the filter failed"), "{said}");
    assert!(said.contains("FAIL  it loops"), "{said}");
    assert!(said.contains("FAIL  it hogs memory"), "{said}");
    assert!(said.contains("ok    it answers"), "{said}");
    assert!(said.contains("1 passed, 3 failed"), "{said}");
}

/// The cassandra world too: cases of CQL statements against the built-in
/// cassandra-policy component, and fuzzing it finds nothing.
#[test]
fn cassandra_filters_are_tested_and_fuzzed() {
    let component =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm-guests/components/cassandra_policy.wasm");
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        r#"config: {groups: [{name: app, rules: [{query_action: select, query_table: "app\\..*"}]}]}
cases:
  - name: reading the app's tables
    cassandra: {statements: [{action: select, table: app.users, query: "SELECT * FROM app.users"}]}
    expect: allow
  - name: reading another keyspace
    cassandra: {statements: [{action: select, table: billing.invoices}]}
    expect: {deny: "billing.invoices"}
  - name: a batch with one write
    cassandra: {opcode: batch, statements: [{action: select, table: app.a}, {action: insert, table: app.a}]}
    expect: deny
"#,
    )
    .unwrap();
    let out = weir_filter(&["test", component.to_str().unwrap(), "--cases", cases.to_str().unwrap(), "--fuzz", "1"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("cassandra-filter world") && said.contains("3 passed, 0 failed"), "{said}");
    assert!(said.contains("generated requests") && said.contains("no failure"), "{said}");
}

/// A filter in JavaScript, as a user would write one: `weir filter new
/// --lang js` writes an npm project on the weir-filter SDK, `weir filter
/// build` makes a component of it (ComponentizeJS, no WASI), `weir filter
/// test` runs its cases (a thrown exception fails its case with the
/// filter's own message and stack), and weir serves with it.
#[test]
fn a_javascript_filter_is_built_tested_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let out = weir_filter(&["new", "js-gate", "--lang", "js", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let project = dir.path().join("js-gate");
    for file in ["package.json", "filter.js", "cases.yaml"] {
        assert!(project.join(file).exists(), "{file} written");
    }
    let unknown = weir_filter(&["new", "x", "--lang", "js", "--world", "kafka", "--dir", dir.path().to_str().unwrap()]);
    assert!(text(&unknown).contains("no JavaScript template for world \"kafka\""), "{}", text(&unknown));

    let built = weir_filter(&["build", project.to_str().unwrap()]);
    let said = text(&built);
    assert!(built.status.success(), "{said}");
    assert!(said.contains("http-filter world") && said.contains("ComponentizeJS"), "{said}");
    let component = project.join("target/weir/js-gate.wasm");

    let tested = weir_filter(&["test", project.to_str().unwrap(), "--fuzz", "1"]);
    let said = text(&tested);
    assert!(tested.status.success(), "{said}");
    assert!(said.contains("ok    admin is off limits") && said.contains("3 passed, 0 failed"), "{said}");
    assert!(said.contains("an instance holds") && said.contains("no failure"), "{said}");

    // an exception fails its case with the filter's message; the other
    // cases still run. A configuration the filter refuses is said so
    let source = std::fs::read_to_string(project.join("filter.js")).unwrap();
    let throwing = source.replace(
        "  onRequest(request, conn) {\n",
        "  onRequest(request, conn) {\n    if (request.path === '/boom') throw new Error(`nothing lives at ${request.path}`);\n",
    );
    assert_ne!(throwing, source, "the template's onRequest is where the test expects it");
    std::fs::write(project.join("filter.js"), throwing).unwrap();
    assert!(weir_filter(&["build", project.to_str().unwrap()]).status.success());
    let cases = dir.path().join("boom.yaml");
    std::fs::write(
        &cases,
        "config: {denyPrefixes: [/admin]}\ncases:\n  - {name: boom, http: {path: /boom}, expect: allow}\n  \
         - {name: fine, http: {path: /fine}, expect: allow}\n",
    )
    .unwrap();
    let failed = weir_filter(&["test", project.to_str().unwrap(), "--cases", cases.to_str().unwrap(), "--fuzz", "0"]);
    let said = text(&failed);
    assert_eq!(failed.status.code(), Some(1), "{said}");
    assert!(said.contains("FAIL  boom") && said.contains("got:      the filter failed (trap)"), "{said}");
    assert!(said.contains("log:      error: js-gate: nothing lives at /boom"), "{said}");
    assert!(said.contains("ok    fine") && said.contains("1 passed, 1 failed"), "{said}");
    std::fs::write(&cases, "config: {denyPrefixes: /admin}\n").unwrap();
    let refused = weir_filter(&["test", project.to_str().unwrap(), "--cases", cases.to_str().unwrap(), "--fuzz", "0"]);
    let said = text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("js-gate config: denyPrefixes: a list of path prefixes"), "{said}");

    // weir serves with it
    let (_nginx, port, weir) = serve("js-gate", &component, ", timeout: 50ms");
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    assert_eq!(curl_from(FRONTEND, &[&url("/public/hello.txt")]).status, 200);
    assert_eq!(curl_from(FRONTEND, &[&url("/admin/secret.txt")]).status, 403);
    assert_eq!(curl_from(CRAWLER, &[&url("/admin/secret.txt")]).status, 200, "the admin app may");
    let boom = curl_from(FRONTEND, &[&url("/boom")]);
    assert_eq!((boom.status, boom.body.as_str()), (500, "Policy filter failed\r\n"), "a throwing filter fails closed");
    let flow = weir.wait_flow("verdict=denied", "the frontend's refusal", |f| {
        f.http().is_some_and(|h| h.path == "/admin/secret.txt")
    });
    let reason = flow.reason.unwrap_or_default();
    assert!(reason.starts_with("js-gate: /admin is off limits"), "{reason}");
    assert_eq!(curl_from(FRONTEND, &[&url("/public/hello.txt")]).status, 200, "and serves on after it");
}

/// The DNS template in JavaScript builds and passes its cases.
#[test]
fn a_javascript_dns_filter_passes_its_cases() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        weir_filter(&["new", "js-block", "--lang", "js", "--world", "dns", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let project = dir.path().join("js-block");
    let built = weir_filter(&["build", project.to_str().unwrap()]);
    assert!(built.status.success() && text(&built).contains("dns-filter world"), "{}", text(&built));
    let tested = weir_filter(&["test", project.to_str().unwrap(), "--fuzz", "1"]);
    let said = text(&tested);
    assert!(tested.status.success(), "{said}");
    assert!(said.contains("ok    an ad server is blocked") && said.contains("2 passed, 0 failed"), "{said}");
}

/// Every world has a template: its native tests pass, it builds, and its
/// cases pass in the host with fuzzing finding nothing (the stream
/// template's cases include a half line the parser waits on: `expect: more`).
#[test]
fn every_world_has_a_template_that_builds_and_passes_its_cases() {
    let dir = tempfile::tempdir().unwrap();
    for (world, cases) in [("dns", 2), ("kafka", 3), ("memcached", 2), ("cassandra", 4), ("stream", 4)] {
        let name = format!("a-{world}-filter");
        let out = weir_filter(&["new", &name, "--world", world, "--dir", dir.path().to_str().unwrap()]);
        assert!(out.status.success(), "{world}: {}", text(&out));
        let crate_dir = dir.path().join(&name);
        let native = Command::new("cargo")
            .args(["test", "--quiet"])
            .current_dir(&crate_dir)
            .env("CARGO_TARGET_DIR", shared_target().join("native"))
            .output()
            .unwrap();
        assert!(native.status.success(), "{world}: cargo test: {}", text(&native));
        let built = weir_filter(&["build", crate_dir.to_str().unwrap()]);
        assert!(built.status.success(), "{world}: {}", text(&built));
        assert!(text(&built).contains(&format!("{world}-filter world")), "{world}: {}", text(&built));
        let tested = weir_filter(&["test", crate_dir.to_str().unwrap(), "--fuzz", "1"]);
        let said = text(&tested);
        assert!(tested.status.success(), "{world}: {said}");
        assert!(said.contains(&format!("{cases} passed, 0 failed")) && said.contains("no failure"), "{world}: {said}");
    }
}
