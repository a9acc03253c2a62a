//! The node agent's capabilities: the eBPF datapath runs with exactly the
//! set the chart's DaemonSet grants (read from deploy/manifests/weir.yaml,
//! which deploy_chart.rs keeps equal to the chart), and each of them is
//! needed — without any one, weir refuses to start and says what failed.
//! weir runs as root under `setpriv`, its bounding set cut to the
//! capabilities given: what a container with `drop: [ALL]` and `add:` those
//! gets.

use std::path::Path;
use std::time::Duration;

use weir_integration::node::{Node, SERVER_HTTP_POLICY, peer_script};
use weir_integration::wait_for;

/// The capabilities the DaemonSet adds, as `setpriv` names them.
fn daemonset_capabilities() -> Vec<String> {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/manifests/weir.yaml"))
        .expect("deploy/manifests/weir.yaml");
    let daemonset =
        manifest.split("\n---\n").find(|doc| doc.contains("\nkind: DaemonSet\n")).expect("a DaemonSet in the manifest");
    let line = daemonset.lines().find_map(|l| l.trim().strip_prefix("add: [")).expect("capabilities added");
    line.trim_end_matches(']').split(',').map(|c| c.trim().to_ascii_lowercase()).collect()
}

fn setpriv(capabilities: &[String]) -> Vec<String> {
    let mut bounding = String::from("-all");
    for c in capabilities {
        bounding.push_str(&format!(",+{c}"));
    }
    ["setpriv", "--bounding-set", &bounding, "--inh-caps", "-all", "--"].map(String::from).to_vec()
}

#[test]
fn the_datapath_runs_with_the_daemonsets_capabilities_and_needs_each() {
    let capabilities = daemonset_capabilities();
    assert!(!capabilities.is_empty());
    let mut node = Node::new(&["cli", "srv", "oth"]);
    node.enter();
    let server = node.pod("srv").ip.to_string();
    node.serve("srv", "http server", "python3", &[&peer_script(), "http", &server, "80"]);
    let config = format!(
        "admin: ADMIN\nworkers: 1\n{}",
        node.endpoints_yaml(&[("cli", "client"), ("srv", "server"), ("oth", "other")])
    );

    // each one left out: weir does not start, and says why
    for missing in &capabilities {
        let fewer: Vec<String> = capabilities.iter().filter(|c| c != &missing).cloned().collect();
        let wrapper = setpriv(&fewer);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let log = node
            .try_start_weir_wrapped(&config, &[("server.yaml", SERVER_HTTP_POLICY)], &wrapper)
            .err()
            .unwrap_or_else(|| panic!("weir started without {missing}: it is not needed"));
        let said = log.to_ascii_lowercase();
        assert!(
            said.contains("operation not permitted") || said.contains("permission denied"),
            "without {missing}, weir should say what it was not permitted:\n{log}"
        );
        eprintln!("without {missing}: {}", log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(""));
    }

    // exactly the DaemonSet's: redirected to the proxy, judged at L7 with
    // the sender's identity, dropped in the kernel
    let wrapper = setpriv(&capabilities);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    node.try_start_weir_wrapped(&config, &[("server.yaml", SERVER_HTTP_POLICY)], &wrapper)
        .unwrap_or_else(|log| panic!("{log}"));
    let url = |path: &str| format!("http://{server}{path}");
    wait_for("the server through weir", Duration::from_secs(10), || node.curl("cli", &url("/public/ready")).0 == 200);
    assert_eq!(node.curl("cli", &url("/private")).0, 403, "judged at L7");
    assert_eq!(node.curl("oth", &url("/public/a")).0, 0, "dropped in the kernel");
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.weir().pid())).unwrap();
    let bounding = status.lines().find(|l| l.starts_with("CapBnd:")).unwrap().to_string();
    assert_ne!(bounding.trim_end(), "CapBnd:\t000001ffffffffff", "weir ran with every capability");
}
