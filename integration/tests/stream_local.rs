//! The stream engine: a protocol weir does not parse, policed by a Wasm
//! stream filter named by `l7proto`. The example filter is Cilium's r2d2
//! test protocol; the server is a stand-in written here (r2d2 has no real
//! implementation), which answers `OK <line>` to every line it receives and
//! remembers what it saw.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_integration::*;

const CLIENT: &str = "127.0.0.1";

fn policy(l7proto: &str) -> String {
    format!(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: r2d2-access}}
spec:
  endpointSelector: {{matchLabels: {{app: r2d2}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: droid-client}}}}]
      toPorts:
        - ports: [{{port: "4000", protocol: TCP}}]
          rules:
            l7proto: {l7proto}
            l7:
              - {{cmd: READ, file: "/public/.*"}}
              - {{cmd: HALT}}
"#
    )
}

/// The stand-in r2d2 server: every line it got, in order.
fn r2d2_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let log = log.clone();
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let line = line.trim_end_matches('\r').to_string();
                    log.lock().unwrap().push(line.clone());
                    if writer.write_all(format!("OK {line}\r\n").as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn start(l7proto: &str, filters: &str) -> (Weir, SocketAddr, Arc<Mutex<Vec<String>>>) {
    let (upstream, seen) = r2d2_server();
    let listener: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "admin: ADMIN\n{filters}\
         endpoints:\n  - {{name: droid, address: {CLIENT}, labels: {{app: droid-client}}}}\n\
         listeners:\n  \
         - {{name: r2d2, protocol: stream, bind: {listener}, upstream: {upstream}, \
              destination: {{labels: {{app: r2d2}}, port: 4000}}}}\n"
    );
    (Weir::start(&config, &[("r2d2.yaml", &policy(l7proto))]), listener, seen)
}

fn wait_flow(weir: &Weir, query: &str, what: &str, matches: impl Fn(&FlowRecord) -> bool) -> FlowRecord {
    let mut found = None;
    wait_for(what, Duration::from_secs(10), || {
        found = weir.flows(query).into_iter().rev().find(|f| matches(f));
        found.is_some()
    });
    found.unwrap()
}

#[test]
fn the_r2d2_filter_passes_allowed_lines_and_answers_the_others_itself() {
    let (weir, listener, seen) = start("r2d2", "");
    // split across writes: the filter waits for whole lines
    let mut stream = connect_from(CLIENT, listener);
    stream.write_all(b"READ /public/a\r\nWRITE /public/a\r\nRE").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    stream.write_all(b"AD /etc/passwd\r\nHALT\r\n").unwrap();
    let answer = read_until_quiet(&mut stream, Duration::from_millis(500));
    let mut lines: Vec<&str> = answer.lines().collect();
    lines.sort();
    assert_eq!(lines, vec!["ERROR", "ERROR", "OK HALT", "OK READ /public/a"], "{answer:?}");
    assert_eq!(*seen.lock().unwrap(), vec!["READ /public/a", "HALT"], "the server never saw a refused line");

    let denied = wait_flow(&weir, "protocol=r2d2&verdict=denied", "the passwd refusal", |f| {
        f.l7().is_some_and(|l| l.fields.get("file").map(String::as_str) == Some("/etc/passwd"))
    });
    let l7 = denied.l7().unwrap();
    assert_eq!((l7.l7proto.as_str(), l7.fields["cmd"].as_str()), ("r2d2", "READ"));
    assert!(denied.reason.as_deref().unwrap().contains("not allowed"), "{denied:?}");
    wait_flow(&weir, "protocol=r2d2&verdict=forwarded", "a forwarded HALT", |f| {
        f.l7().is_some_and(|l| l.fields["cmd"] == "HALT")
    });
}

#[test]
fn a_broken_line_closes_the_connection_and_a_custom_name_selects_the_same_parser() {
    // the same component under another name, from weir.yaml `filters`
    let (weir, listener, seen) = start("droid-protocol", "filters:\n  - {name: droid-protocol, builtin: r2d2}\n");
    let answer = raw_exchange(CLIENT, listener, b"READ /public/ok\r\nBOGUS stuff\r\nHALT\r\n", Duration::from_secs(1));
    assert_eq!(answer, "OK READ /public/ok\r\n", "nothing after the broken line");
    let flow = wait_flow(&weir, "protocol=droid-protocol&verdict=error", "the broken line", |f| {
        f.reason.as_deref().is_some_and(|r| r.contains("not an r2d2 request"))
    });
    assert!(flow.reason.as_deref().unwrap().contains("connection closed"), "{flow:?}");
    assert_eq!(*seen.lock().unwrap(), vec!["READ /public/ok"]);
    // an oversized undecided line is refused the same way
    let long = vec![b'R'; 2048];
    assert_eq!(raw_exchange(CLIENT, listener, &long, Duration::from_secs(1)), "");
    wait_flow(&weir, "verdict=error", "the long line", |f| {
        f.reason.as_deref().is_some_and(|r| r.contains("longer than"))
    });
    assert_eq!(raw_exchange(CLIENT, listener, b"HALT\r\n", Duration::from_millis(500)), "OK HALT\r\n", "still serving");
}
