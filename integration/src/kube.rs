//! A real Kubernetes control plane for the Kubernetes source's tests:
//! etcd and kube-apiserver started by `scripts/kube.sh` (which
//! `scripts/setup.sh` installs) on free loopback ports, stopped and removed
//! on drop, also when a test fails.
//!
//! Nothing here stands in for the API server: objects are written with
//! kubectl, pods are created as a user creates them (there is no kubelet,
//! so they never run; a test gives them the address of a pod of its node
//! harness through the status subresource, as a kubelet would report it).
//! weir and the operator authenticate as the service accounts of
//! `deploy/manifests/weir.yaml` (the Helm chart rendered), with exactly its
//! permissions.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kube.sh")
}

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

pub struct Kube {
    pub dir: PathBuf,
    pub server: String,
    kubectl: PathBuf,
    bridges: Vec<Bridge>,
    /// The network namespace the API server listens in (the caller's when
    /// it started): bridges connect out from there.
    netns: Arc<std::fs::File>,
}

/// The namespace of weir's own service accounts.
pub const WEIR_NAMESPACE: &str = "weir-system";

impl Kube {
    pub fn start() -> Kube {
        let dir = tempfile::tempdir().unwrap().keep();
        let out = Command::new("bash").arg(script()).arg("start").arg(&dir).stderr(Stdio::inherit()).output().unwrap();
        assert!(out.status.success(), "scripts/kube.sh start failed (run scripts/setup.sh first)");
        let server = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let bin = Command::new("bash").arg(script()).arg("bin").output().unwrap();
        let kubectl = PathBuf::from(String::from_utf8(bin.stdout).unwrap().trim()).join("kubectl");
        let netns = Arc::new(std::fs::File::open("/proc/thread-self/ns/net").unwrap());
        Kube { dir, server, kubectl, bridges: Vec::new(), netns }
    }

    /// The administrator's kubeconfig (system:masters): for the test's own
    /// kubectl, never for weir.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn port(&self) -> u16 {
        self.server.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// A command run in the API server's network namespace, wherever the
    /// calling thread is (a test may have entered a node's).
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        use std::os::unix::process::CommandExt as _;
        let mut command = Command::new(program);
        let fd = self.netns.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the fd stays open until exec.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
            });
        }
        command
    }

    /// kubectl with this cluster's kubeconfig and `stdin` as its input.
    pub fn kubectl(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .command(&self.kubectl)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// kubectl that must succeed; its standard output.
    pub fn must(&self, args: &[&str], stdin: &str) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn apply(&self, yaml: &str) {
        self.must(&["apply", "-f", "-"], yaml);
    }

    /// The project's CRDs (`deploy/crds/`) whose file names contain `only`, established.
    pub fn install_crds(&self, only: &str) {
        for entry in std::fs::read_dir(deploy("crds")).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_string_lossy().contains(only) {
                self.must(&["apply", "-f", path.to_str().unwrap()], "");
            }
        }
        self.must(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"], "");
    }

    /// `deploy/manifests/weir.yaml` whole: what an install puts there (the
    /// CRDs, RBAC, the DaemonSet and operator Deployment, which nothing runs
    /// here: there is no kubelet).
    pub fn install_weir(&self) {
        self.must(&["apply", "--server-side", "-f", deploy("manifests/weir.yaml").to_str().unwrap()], "");
        self.must(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"], "");
    }

    /// The same without its CRDs (a test installs them one by one).
    pub fn install_weir_without_crds(&self) {
        let manifest = std::fs::read_to_string(deploy("manifests/weir.yaml")).unwrap();
        let kept: Vec<&str> =
            manifest.split("\n---\n").filter(|doc| !doc.contains("\nkind: CustomResourceDefinition\n")).collect();
        self.must(&["apply", "--server-side", "-f", "-"], &kept.join("\n---\n"));
    }

    /// A kubeconfig that authenticates as `service_account` of weir-system
    /// (a token from the TokenRequest API, as a pod's projected token is),
    /// reaching the API server on `port` (a bridge's, or its own).
    pub fn kubeconfig_as(&self, service_account: &str, port: Option<u16>) -> PathBuf {
        let token = self.must(&["create", "token", service_account, "-n", WEIR_NAMESPACE, "--duration=2h"], "");
        let path = self.dir.join(format!("kubeconfig-{service_account}-{}", port.unwrap_or(0)));
        let config = format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: c, cluster: {{server: \"https://127.0.0.1:{}\", certificate-authority: \"{}\"}}}}]\n\
             users: [{{name: u, user: {{token: \"{}\"}}}}]\n\
             contexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\n",
            port.unwrap_or(self.port()),
            self.dir.join("certs/apiserver.crt").display(),
            token.trim()
        );
        std::fs::write(&path, config).unwrap();
        path
    }

    /// A namespace with labels, and its `default` service account (no
    /// controller manager runs to make it).
    pub fn namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: \"{v}\"")).collect();
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{}}}}}\n---\n\
             apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: default, namespace: {name}}}\n",
            labels.join(", ")
        ));
    }

    /// A pod bound to `node`, as the scheduler would bind it.
    pub fn pod(&self, namespace: &str, name: &str, node: &str, labels: &[(&str, &str)]) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: \"{v}\"")).collect();
        self.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{{}}}}}\n\
             spec: {{nodeName: {node}, automountServiceAccountToken: false, \
             containers: [{{name: main, image: registry.k8s.io/pause:3.10}}]}}\n",
            labels.join(", ")
        ));
    }

    /// Report a pod running with `ip`, as its kubelet would.
    pub fn pod_ip(&self, namespace: &str, name: &str, ip: &str) {
        self.pod_ips(namespace, name, &[ip]);
    }

    /// The same with several addresses (dual-stack: IPv4 first, as kubelets
    /// report them); `podIP` is the first.
    pub fn pod_ips(&self, namespace: &str, name: &str, ips: &[&str]) {
        let list: Vec<String> = ips.iter().map(|ip| format!(r#"{{"ip":"{ip}"}}"#)).collect();
        let patch = format!(r#"{{"status":{{"phase":"Running","podIP":"{}","podIPs":[{}]}}}}"#, ips[0], list.join(","));
        self.must(&["patch", "pod", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", &patch], "");
    }

    /// Delete a pod at once (no kubelet would confirm a graceful one).
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        self.must(&["delete", "pod", name, "-n", namespace, "--grace-period=0", "--force"], "");
    }

    /// `kubectl get` as JSON.
    pub fn get_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.must(&all, "")).unwrap()
    }

    /// The API server goes away (etcd keeps the state) ...
    pub fn stop_apiserver(&self) {
        let status = self.command("bash").arg(script()).arg("stop-apiserver").arg(&self.dir).status().unwrap();
        assert!(status.success());
    }

    /// ... and comes back on the same port, with the same state.
    pub fn start_apiserver(&self) {
        let status = self.command("bash").arg(script()).arg("start-apiserver").arg(&self.dir).status().unwrap();
        assert!(status.success(), "kube-apiserver did not come back");
    }

    /// The API server reachable on the loopback of network namespace
    /// `netns` (a node of the harness); the port there.
    pub fn bridge_into(&mut self, netns: &str) -> u16 {
        let bridge = Bridge::start(netns, self.netns.clone(), self.port());
        let port = bridge.port;
        self.bridges.push(bridge);
        port
    }
}

impl Drop for Kube {
    fn drop(&mut self) {
        for bridge in &self.bridges {
            bridge.stop.store(true, Ordering::Relaxed);
        }
        let _ = self.command("bash").arg(script()).arg("stop").arg(&self.dir).status();
    }
}

/// Connections accepted on a namespace's loopback, relayed to the API
/// server on the host's: a listening socket stays in the namespace it was
/// made in, so the thread makes it there and comes back to connect out.
struct Bridge {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Bridge {
    fn start(netns: &str, here: Arc<std::fs::File>, api_port: u16) -> Bridge {
        let there = std::fs::File::open(format!("/run/netns/{netns}")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let enter = |ns: &std::fs::File| {
                // SAFETY: setns on this thread with a namespace fd we hold open.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            };
            enter(&there);
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            enter(&here);
            listener.set_nonblocking(true).unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inside, _)) => {
                        inside.set_nonblocking(false).unwrap();
                        let Ok(outside) = TcpStream::connect(("127.0.0.1", api_port)) else { continue };
                        relay(inside, outside);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Bridge { port: rx.recv().unwrap(), stop }
    }
}

fn relay(a: TcpStream, b: TcpStream) {
    let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    };
    copy(a, b2);
    copy(b, a2);
}

/// `weir operator` as the weir-operator service account; stopped on drop.
pub struct Operator {
    _process: crate::Process,
    log: PathBuf,
}

impl Operator {
    /// `grace`: how long an unused identity is kept (`5s`, `1h`).
    pub fn start(kube: &Kube, name: &str, grace: &str) -> Operator {
        let kubeconfig = kube.kubeconfig_as("weir-operator", None);
        let log = kube.dir.join(format!("operator-{name}.log"));
        let mut command = Command::new(crate::weir_bin());
        command
            .arg("operator")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--namespace", WEIR_NAMESPACE, "--identity", name, "--identity-grace", grace])
            .env("WEIR_CACHE_DIR", crate::cache_dir())
            .env("WEIR_LOG", "info,weir=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        Operator { _process: crate::Process::spawn("weir operator", &mut command), log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
