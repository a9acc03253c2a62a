//! Compiled filters: what weir's cache lacks is compiled by a child `weir
//! compile-filter`, so the compiler's memory is never weir's.

use std::io::Write;
use std::process::{Command, Stdio};

use weir_integration::*;

fn compile_filter(cache: &std::path::Path, bytes: &[u8]) -> std::process::Output {
    let mut child = Command::new(weir_bin())
        .args(["compile-filter", "--cache"])
        .arg(cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    child.wait_with_output().unwrap()
}

fn cached(cache: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn compile_filter_writes_the_compiled_component_into_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let component = std::fs::read(misbehave_filter()).unwrap();
    let out = compile_filter(cache.path(), &component);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files = cached(cache.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with(".cwasm"), "{files:?}");

    let refused = compile_filter(cache.path(), b"not wasm");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a WebAssembly file"), "{refused:?}");
    assert_eq!(cached(cache.path()).len(), 1);
}

const MEMCACHED_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cache}
spec:
  endpointSelector: {matchLabels: {app: cache}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts:
        - ports: [{port: "11211", protocol: TCP}]
          rules: {l7proto: memcache, l7: [{command: get}]}
"#;

#[test]
fn weir_compiles_what_its_cache_lacks_in_a_child_and_serves() {
    let cache = tempfile::tempdir().unwrap();
    let backend = DemoBackend::start();
    let port = free_port();
    let config = format!(
        "admin: ADMIN\nfilter_cache: {}\n\
         endpoints:\n  - {{name: frontend, address: {FRONTEND}, labels: {{app: frontend}}}}\n\
         listeners:\n  - name: web\n    bind: 127.0.0.1:{port}\n    upstream: {}\n    \
         destination: {{labels: {{app: web}}, port: 80}}\n",
        cache.path().display(),
        backend.addr
    );
    let policy = r#"
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
"#;
    let weir = Weir::start(&config, &[("web.yaml", policy)]);
    // the one built-in filter the rules use (http-policy), not every one
    let compiled = cached(cache.path());
    assert!(compiled.len() == 1 && compiled[0].ends_with(".cwasm"), "{compiled:?}");
    let log = weir.log();
    assert_eq!(log.matches("compiled in a child process").count(), 1, "{log}");
    assert!(!log.contains("compiling here"), "{log}");
    let ok = curl_from(FRONTEND, &[&format!("http://127.0.0.1:{port}/public/x")]);
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(curl_from(FRONTEND, &[&format!("http://127.0.0.1:{port}/private")]).status, 403);

    // a policy that starts using another protocol's filter: compiled while
    // that model is built, and the rest keeps serving
    let generation = weir.generation();
    weir.write_policy("cache.yaml", MEMCACHED_POLICY);
    weir.wait_generation_above(generation);
    let compiled = cached(cache.path());
    assert_eq!(compiled.len(), 2, "{compiled:?}");
    assert_eq!(weir.log().matches("compiled in a child process").count(), 2, "{}", weir.log());
    assert_eq!(curl_from(FRONTEND, &[&format!("http://127.0.0.1:{port}/private")]).status, 403);

    // a second weir on the same cache compiles nothing
    drop(weir);
    let again = Weir::start(&config, &[("web.yaml", policy), ("cache.yaml", MEMCACHED_POLICY)]);
    assert!(!again.log().contains("compiled in a child process"), "{}", again.log());
    assert_eq!(cached(cache.path()), compiled);
}
