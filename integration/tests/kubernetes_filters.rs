//! Custom filters as objects of a real kube-apiserver: a WasmFilter names a
//! component in a ConfigMap of weir-system or at a URL with its sha256; a
//! `wasm` rule of a CiliumNetworkPolicy names the filter. weir loads it and
//! enforces it; a new version replaces the running one while a kept-alive
//! connection goes on; a version that does not load leaves the last good
//! one in force; a filter that never loaded (a wrong digest) makes its rules
//! refuse their traffic; the operator writes each verdict on the WasmFilter.
//! weir and the operator run with deploy/manifests/weir.yaml's service accounts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};
use weir_integration::kube::{Kube, Operator};
use weir_integration::*;

fn config(upstream: SocketAddr, port: u16) -> String {
    format!(
        "admin: ADMIN\n\
         endpoints:\n  - {{name: frontend, address: {FRONTEND}, labels: {{app: frontend}}}}\n\
         listeners:\n  - name: web\n    bind: 127.0.0.1:{port}\n    upstream: {upstream}\n    \
         destination: {{labels: {{app: web}}, port: 80}}\n"
    )
}

/// A CNP whose port runs filter `filter` with `config`.
fn cnp(filter: &str, config: &str) -> String {
    format!(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: web, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: frontend}}}}]
      toPorts:
        - ports: [{{port: "80", protocol: TCP}}]
          rules:
            http: [{{path: "/.*"}}]
            wasm:
              - name: {filter}
                config: {config}
"#
    )
}

fn wasm_filter_from_config_map(name: &str, key: &str) -> String {
    format!(
        "apiVersion: policy.weir.dev/v1alpha1\nkind: WasmFilter\nmetadata: {{name: {name}}}\n\
         spec:\n  configMap: {{name: filters, key: {key}}}\n  timeout: 50ms\n"
    )
}

fn wasm_filter_from_url(name: &str, url: &str, sha256: &str) -> String {
    format!(
        "apiVersion: policy.weir.dev/v1alpha1\nkind: WasmFilter\nmetadata: {{name: {name}}}\n\
         spec:\n  url: {url}\n  sha256: {sha256}\n"
    )
}

/// require-header's configuration for these tests.
const API_KEY: &str = r#"{header: x-api-key, pattern: "k-[0-9]+"}"#;

/// A built test filter; `variant` > 0 appends a custom section, so the same
/// filter has another digest (a new version). misbehave (140 KB) fits a
/// ConfigMap (1 MiB at most); require-header (1.3 MB, with its regex
/// engine) does not, and is fetched from a URL.
fn component(file: &str, variant: u8) -> Vec<u8> {
    let mut bytes = std::fs::read(built_filter(file)).unwrap();
    if variant > 0 {
        let name = b"weir-test-version";
        bytes.extend_from_slice(&[0, (1 + name.len() + 1) as u8, name.len() as u8]);
        bytes.extend_from_slice(name);
        bytes.push(variant);
    }
    bytes
}

fn built_filter(file: &str) -> std::path::PathBuf {
    misbehave_filter().with_file_name(file)
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Put `entries` (key, file) into ConfigMap weir-system/filters.
fn config_map(kube: &Kube, dir: &std::path::Path, entries: &[(&str, &[u8])]) {
    let mut args = vec!["create".to_string(), "configmap".into(), "filters".into(), "-n".into(), "weir-system".into()];
    for (key, bytes) in entries {
        let path = dir.join(key);
        std::fs::write(&path, bytes).unwrap();
        args.push(format!("--from-file={key}={}", path.display()));
    }
    args.extend(["--dry-run=client".into(), "-o".into(), "yaml".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let yaml = kube.must(&args, "");
    // server-side: a client-side apply would keep a second copy in an annotation
    kube.must(&["apply", "--server-side", "--force-conflicts", "-f", "-"], &yaml);
}

fn status(port: u16, key: Option<&str>) -> u16 {
    status_of(port, "/public/hello.txt", key)
}

fn status_of(port: u16, path: &str, key: Option<&str>) -> u16 {
    let url = format!("http://127.0.0.1:{port}{path}");
    match key {
        Some(key) => curl_from(FRONTEND, &["-H", &format!("x-api-key: {key}"), &url]).status,
        None => curl_from(FRONTEND, &[&url]).status,
    }
}

/// The filter weir holds under `name` (`/config`'s `supplied_filters`).
fn supplied(weir: &Weir, name: &str) -> serde_json::Value {
    let config = weir.config();
    let filters = config["model"]["supplied_filters"].as_array().cloned().unwrap_or_default();
    filters.into_iter().find(|f| f["name"] == name).unwrap_or_default()
}

fn valid_condition(kube: &Kube, name: &str) -> Option<serde_json::Value> {
    let object = kube.get_json(&["wasmfilter", name]);
    object.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == "Valid").cloned()
}

/// One HTTP/1.1 request on a kept-alive connection: the status.
fn keep_alive_request(stream: &mut BufReader<TcpStream>, path: &str) -> u16 {
    let request = format!("GET {path} HTTP/1.1\r\nHost: web\r\n\r\n");
    stream.get_mut().write_all(request.as_bytes()).unwrap();
    let mut line = String::new();
    stream.read_line(&mut line).unwrap();
    let status: u16 = line.split(' ').nth(1).expect("a status line").parse().unwrap();
    let mut length = 0;
    loop {
        let mut header = String::new();
        stream.read_line(&mut header).unwrap();
        if header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    status
}

#[test]
fn filters_written_as_objects_are_loaded_replaced_and_judged() {
    let kube = Kube::start();
    kube.install_weir();
    let _operator = Operator::start(&kube, "operator-1", "1h");
    let dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start();
    let port = free_port();
    let kubeconfig = kube.kubeconfig_as("weir-node", None);
    let args = ["--kubernetes", "--kubeconfig", kubeconfig.to_str().unwrap(), "--node-name", "node-a"];
    let weir = Weir::start_with(&config(nginx.addr, port), &[], &args);

    // a new policy naming a filter no WasmFilter supplies (not created yet):
    // in force, and the traffic its rule judges is refused — set aside, it
    // would have left the pod it alone selects unpoliced
    wait_for("weir serving the pod unpoliced", Duration::from_secs(30), || status(port, None) == 200);
    kube.apply(&cnp("chaos", "\"\""));
    wait_for("the policy naming a missing filter in force", Duration::from_secs(30), || status(port, None) != 200);
    assert!(weir.config()["reload"]["set_aside"].as_array().is_some_and(Vec::is_empty), "{}", weir.config());
    let flows = weir.flows("");
    let refused =
        flows.iter().rev().find(|f| f.reason.as_deref().is_some_and(|r| r.contains("no WasmFilter of that name")));
    assert!(refused.is_some(), "a flow says why: {flows:#?}");

    // a filter from a ConfigMap, named by a policy's wasm rule: misbehave
    // traps on /trap (its failure policy is closed: 500) and allows the rest
    let chaos = |variant| component("misbehave.wasm", variant);
    config_map(&kube, dir.path(), &[("chaos.wasm", &chaos(0))]);
    kube.apply(&wasm_filter_from_config_map("chaos", "chaos.wasm"));
    kube.apply(&cnp("chaos", "\"\""));
    wait_for("the filter enforced", Duration::from_secs(30), || status_of(port, "/trap", None) == 500);
    assert_eq!(status(port, None), 200);
    assert_eq!(supplied(&weir, "chaos")["sha256"], sha256(&chaos(0)));
    wait_for("the operator's verdict on the filter", Duration::from_secs(30), || {
        valid_condition(&kube, "chaos").is_some_and(|c| c["status"] == "True")
    });

    // a new version replaces the running one; a connection kept alive
    // across the change goes on
    let mut kept = BufReader::new(connect_from(FRONTEND, format!("127.0.0.1:{port}").parse().unwrap()));
    assert_eq!(keep_alive_request(&mut kept, "/public/hello.txt"), 200);
    config_map(&kube, dir.path(), &[("chaos.wasm", &chaos(1))]);
    wait_for("the new version in force", Duration::from_secs(30), || {
        supplied(&weir, "chaos")["sha256"] == sha256(&chaos(1))
    });
    assert_eq!(keep_alive_request(&mut kept, "/public/hello.txt"), 200, "the kept-alive connection goes on");
    assert_eq!(keep_alive_request(&mut kept, "/trap"), 500, "and is judged by the new version");
    assert_eq!(status_of(port, "/trap", None), 500);

    // a version that is no component: the last good one stays in force, and
    // the operator says why on the object and in an Event
    config_map(&kube, dir.path(), &[("chaos.wasm", b"\0asm not really")]);
    wait_for("the bad version judged", Duration::from_secs(30), || {
        valid_condition(&kube, "chaos").is_some_and(|c| c["status"] == "False")
    });
    let condition = valid_condition(&kube, "chaos").unwrap();
    let message = condition["message"].as_str().unwrap();
    assert!(message.contains("its last good version stays in force"), "{condition}");
    let events = kube.get_json(&["events", "-n", "default", "--field-selector", "involvedObject.name=chaos"]);
    assert!(
        events["items"].as_array().unwrap().iter().any(|e| e["reason"] == "InvalidFilter"
            && e["involvedObject"]["kind"] == "WasmFilter"
            && e["type"] == "Warning"),
        "{events}"
    );
    assert_eq!(supplied(&weir, "chaos")["sha256"], sha256(&chaos(1)), "the last good version");
    assert_eq!(status_of(port, "/trap", None), 500);
    assert_eq!(status(port, None), 200);

    // a filter at a URL whose digest is not the component's never loads:
    // the rules naming it refuse their traffic (fail closed), the object
    // says why; with the right digest it loads
    let served = tempfile::tempdir().unwrap();
    let gate = component("require_header.wasm", 0);
    std::fs::write(served.path().join("gate.wasm"), &gate).unwrap();
    let http_port = free_port();
    let _server = Process::spawn(
        "python3 -m http.server",
        Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &http_port.to_string(), "--directory"])
            .arg(served.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_port(format!("127.0.0.1:{http_port}").parse().unwrap(), "python3 -m http.server");
    let url = format!("http://127.0.0.1:{http_port}/gate.wasm");
    kube.apply(&wasm_filter_from_url("gate", &url, &sha256(b"something else")));
    kube.apply(&cnp("gate", API_KEY));
    wait_for("the policy naming the unloaded filter in force", Duration::from_secs(30), || {
        supplied(&weir, "gate")["unavailable"].is_string()
            && weir.config()["reload"]["set_aside"].as_array().is_some_and(Vec::is_empty)
    });
    let why = supplied(&weir, "gate")["unavailable"].as_str().unwrap().to_string();
    assert!(why.contains("spec.sha256"), "{why}");
    wait_for("its rules refuse traffic", Duration::from_secs(30), || status(port, Some("k-6")) != 200);
    assert_ne!(status(port, Some("k-6")), 200, "fail closed: a key the filter would allow is refused too");
    wait_for("the operator's verdict on the unloaded filter", Duration::from_secs(30), || {
        valid_condition(&kube, "gate").is_some_and(|c| c["status"] == "False")
    });
    let condition = valid_condition(&kube, "gate").unwrap();
    assert!(condition["message"].as_str().unwrap().contains("refuse their traffic"), "{condition}");

    kube.apply(&wasm_filter_from_url("gate", &url, &sha256(&gate)));
    wait_for("the fetched filter enforced", Duration::from_secs(30), || status(port, Some("k-7")) == 200);
    assert_eq!(status(port, None), 401);
    assert_eq!(supplied(&weir, "gate")["sha256"], sha256(&gate));
    wait_for("the fetched filter judged valid", Duration::from_secs(30), || {
        valid_condition(&kube, "gate").is_some_and(|c| c["status"] == "True")
    });

    // a new version the policy's rule cannot use (a stream filter where
    // HTTP rules are): the policy stays in the model and the traffic its
    // rule judges is refused, never let through unjudged
    let stream = component("r2d2.wasm", 0);
    std::fs::write(served.path().join("stream.wasm"), &stream).unwrap();
    let stream_url = format!("http://127.0.0.1:{http_port}/stream.wasm");
    kube.apply(&wasm_filter_from_url("gate", &stream_url, &sha256(&stream)));
    wait_for("the stream filter supplied", Duration::from_secs(30), || {
        supplied(&weir, "gate")["sha256"] == sha256(&stream)
    });
    assert!(weir.config()["reload"]["set_aside"].as_array().is_some_and(Vec::is_empty), "the policy was taken out");
    assert_ne!(status(port, Some("k-8")), 200, "a rule its filter cannot judge refuses its traffic");
    let flows = weir.flows("");
    assert!(
        flows.iter().any(|f| f.reason.as_deref().is_some_and(|r| r.contains("filter \"gate\" implements"))),
        "no flow says why: {flows:?}"
    );

    // the API server refuses what the schema says no to
    let refused = kube.kubectl(
        &["apply", "-f", "-"],
        "apiVersion: policy.weir.dev/v1alpha1\nkind: WasmFilter\nmetadata: {name: no-digest}\n\
         spec: {url: 'http://127.0.0.1:1/x.wasm'}\n",
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("sha256 is required with url"));
}
