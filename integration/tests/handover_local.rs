//! The hand-over's failure cases, in local mode (`proxy/src/handover/`): a
//! new weir that dies before it is ready leaves the running one in charge;
//! a weir of another configuration on the same state directory runs beside
//! it, untouched; a weir that lingers after
//! handing over (as the DaemonSet runs it) waits for its stop, and `weir
//! probe` tells the two apart. (The hitless replace itself, under load and
//! with the eBPF datapath: datapath_handover.rs.)

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use weir_integration::*;

const WORLD_MAY_GET: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: world-get, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
    - fromEntities: [world]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http: [{method: GET, path: "/.*"}]
"#;

fn config(listen: SocketAddr, backend: SocketAddr) -> String {
    format!(
        "admin: ADMIN\nlog_flows: false\ndemo_backend: {backend}\nlisteners:\n  \
         - {{name: api, bind: {listen}, upstream: {backend}, \
              destination: {{name: api, namespace: default, labels: {{app: api}}, port: 80}}}}\n"
    )
}

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// `weir run` on `weir`'s configuration and state with `args`, to completion.
fn run_beside(weir: &Weir, config_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(weir_bin())
        .args(["run", "--config"])
        .arg(config_dir)
        .args(args)
        .env("WEIR_STATE_DIR", weir.config_dir().join("state"))
        .env("WEIR_CACHE_DIR", cache_dir())
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_new_weir_that_fails_leaves_the_running_one_in_charge_and_another_configuration_never_meets_it() {
    let (listen, backend) = (addr(), addr());
    let mut weir = Weir::start(&config(listen, backend), &[("world.yaml", WORLD_MAY_GET)]);
    assert_eq!(http_get(listen, "/before").unwrap().0, 200);

    // it takes the sockets, then fails (no kubeconfig there) before it serves
    let failed = run_beside(&weir, weir.config_dir(), &["--kubernetes", "--kubeconfig", "/nonexistent/kubeconfig"]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{stderr}");
    assert!(stderr.contains("taking the node over"), "it got as far as the sockets: {stderr}");
    wait_for("the running weir to count the aborted hand-over", Duration::from_secs(10), || {
        weir.metrics().contains("weir_handovers_total{result=\"aborted\"} 1")
    });
    assert!(weir.log().contains("hand-over aborted"), "{}", weir.log());
    assert_eq!(http_get(listen, "/after-abort").unwrap().0, 200, "the old weir still serves its sockets");

    // a weir of another configuration sharing the state directory: the two
    // never meet (the hand-over socket is named after the configuration)
    let other = tempfile::tempdir().unwrap();
    let other_admin = addr();
    let other_config = config(addr(), addr()).replace("ADMIN", &other_admin.to_string());
    std::fs::write(other.path().join("weir.yaml"), other_config).unwrap();
    let mut beside = Process::spawn(
        "weir of another configuration",
        Command::new(weir_bin())
            .args(["run", "--config"])
            .arg(other.path())
            .env("WEIR_STATE_DIR", weir.config_dir().join("state"))
            .env("WEIR_CACHE_DIR", cache_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for("the other weir to serve", Duration::from_secs(30), || {
        http_get(other_admin, "/healthz").is_ok_and(|(status, body)| status == 200 && body.contains("start=cold"))
    });
    assert!(beside.terminate(Duration::from_secs(20)).is_some_and(|s| s.success()));
    assert_eq!(http_get(listen, "/after-another-configuration").unwrap().0, 200);

    // and a good successor still takes over afterwards
    let old = weir.pid();
    let replaced = weir.replace();
    assert!(replaced.exit.is_some_and(|s| s.success()), "{replaced:?}");
    let health = http_get(weir.admin, "/healthz").unwrap().1;
    assert!(health.contains(&format!("start=handover from_pid={old} ")), "{health}");
    assert_eq!(http_get(listen, "/after-replace").unwrap().0, 200);
    assert_eq!(http_get(backend, "/demo-backend-too").unwrap().0, 200, "the demo backend moved as well");
}

#[test]
fn a_lingering_weir_waits_for_its_stop_and_the_probes_tell_old_from_new() {
    let (listen, backend) = (addr(), addr());
    let states = tempfile::tempdir().unwrap();
    let (old_status, new_status) = (states.path().join("old"), states.path().join("new"));
    let old_arg = format!("--status-file={}", old_status.display());
    let mut weir = Weir::start_with(
        &config(listen, backend),
        &[("world.yaml", WORLD_MAY_GET)],
        &[&old_arg, "--linger-after-handover"],
    );
    let probe = |file: &std::path::Path, live: bool| {
        let mut command = Command::new(weir_bin());
        command.args(["probe", "--status-file"]).arg(file);
        if live {
            command.arg("--live");
        }
        command.output().unwrap()
    };
    assert!(probe(&old_status, false).status.success(), "serving: ready");
    assert!(!probe(&new_status, false).status.success(), "no weir there yet");

    // the new weir, as a DaemonSet's surge pod starts it: its own status file
    let mut new = Process::spawn(
        "new weir",
        Command::new(weir_bin())
            .args(["run", "--config"])
            .arg(weir.config_dir())
            .arg(format!("--status-file={}", new_status.display()))
            .env("WEIR_STATE_DIR", weir.config_dir().join("state"))
            .env("WEIR_CACHE_DIR", cache_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for("the new weir to serve", Duration::from_secs(30), || probe(&new_status, false).status.success());
    wait_for("the old weir to drain", Duration::from_secs(15), || {
        std::fs::read_to_string(&old_status).is_ok_and(|s| s.trim() == "handed-over")
    });
    let old_ready = probe(&old_status, false);
    assert!(!old_ready.status.success(), "a handed-over weir is not ready");
    assert!(String::from_utf8_lossy(&old_ready.stderr).contains("weir is handed-over"));
    assert!(probe(&old_status, true).status.success(), "but alive: the DaemonSet must not restart it");
    assert!(weir.is_running(), "it stays until stopped");
    assert_eq!(http_get(listen, "/served-by-the-new-one").unwrap().0, 200);
    let health = http_get(weir.admin, "/healthz").unwrap().1;
    assert!(health.contains(&format!(" pid={} ", new.pid())), "{health}");

    let stopped = weir.terminate();
    assert!(stopped.is_some_and(|s| s.success()), "{}", weir.log());
    assert_eq!(http_get(listen, "/after-the-old-one-stopped").unwrap().0, 200);
    assert!(new.terminate(Duration::from_secs(20)).is_some_and(|s| s.success()));
}
