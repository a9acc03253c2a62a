//! A Kubernetes node built from network namespaces, for the eBPF datapath.
//!
//! ```text
//!   <p>-node (the node: weir runs here)          <p>-<pod> (one per pod)
//!     <p><pod>  169.254.1.1/32  ── veth ──  eth0  10.200.S.N/32
//!     route 10.200.S.N/32 dev <p><pod>           default via 169.254.1.1
//! ```
//!
//! S is the node's pod subnet (0 unless [`Node::in_subnet`]). A dual-stack
//! node ([`Node::dual_stack`]) also gives each pod `fd00:200:S::N/128`, routed
//! the same way through the host side's `fe80::1`, and the node
//! `fd00:200:S::1` on its loopback. Two nodes can be
//! joined by a veth "wire" ([`Node::wire`]), each routing the other's pod
//! subnet over it: a two-node cluster with no other network.
//!
//! Addresses exist only inside these namespaces. The test thread itself
//! enters the node namespace ([`Node::enter`]), so weir — spawned from it —
//! runs there, and the test reaches weir's admin API on the node's loopback.
//! Dropping the node stops weir (SIGTERM, so it cleans up), runs
//! `weir datapath cleanup` as a safety net, and deletes every namespace,
//! also when the test failed.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::{Process, Weir, weir_bin};

pub struct Pod {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// On a dual-stack node ([`Node::dual_stack`]).
    pub ip6: Option<Ipv6Addr>,
    /// Host-side veth, in the node namespace.
    pub interface: String,
}

pub struct Node {
    pub prefix: String,
    pub netns: String,
    pub pods: Vec<Pod>,
    /// bpffs directory of this node's weir (tests run in parallel).
    pub bpffs: String,
    /// Stopped before the namespaces go.
    pub weir: Option<Weir>,
    pub servers: Vec<Process>,
    /// This node's end of a wire to another node ([`Node::wire`]).
    pub wire: Option<String>,
    /// Pods of other nodes, as this node's `weir.yaml` names them
    /// (endpoints without an interface): (name, address, IPv6 address, app label).
    pub remote_pods: Vec<(String, Ipv4Addr, Option<Ipv6Addr>, String)>,
    original_netns: Option<std::fs::File>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

impl Node {
    /// A node with these pods (names of at most 4 characters).
    pub fn new(pods: &[&str]) -> Node {
        Node::in_subnet(pods, 0)
    }

    /// A node whose pods are `10.200.<subnet>.N`.
    pub fn in_subnet(pods: &[&str], subnet: u8) -> Node {
        Node::build(pods, subnet, false)
    }

    /// A node whose pods have IPv6 addresses too: `fd00:200:0::N` beside
    /// `10.200.0.N`.
    pub fn dual_stack(pods: &[&str]) -> Node {
        Node::build(pods, 0, true)
    }

    /// A dual-stack node whose pods are `10.200.<subnet>.N` and
    /// `fd00:200:<subnet>::N`.
    pub fn dual_stack_in_subnet(pods: &[&str], subnet: u8) -> Node {
        Node::build(pods, subnet, true)
    }

    fn build(pods: &[&str], subnet: u8, dual_stack: bool) -> Node {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("w{}{n}", std::process::id() % 10000);
        let netns = format!("{prefix}-node");
        let mut node = Node {
            bpffs: format!("/sys/fs/bpf/weir-test-{prefix}"),
            prefix: prefix.clone(),
            netns: netns.clone(),
            pods: Vec::new(),
            weir: None,
            servers: Vec::new(),
            wire: None,
            remote_pods: Vec::new(),
            original_netns: None,
        };
        // from here on, Drop cleans up whatever was made
        run(&["ip", "netns", "add", &netns]);
        run(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        run(&["ip", "netns", "exec", &netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        if dual_stack {
            // no duplicate address detection: addresses are usable at once
            for setting in ["net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.default.accept_dad=0"] {
                run(&["ip", "netns", "exec", &netns, "sysctl", "-qw", setting]);
            }
            // the node's own global address (the source of what it sends to
            // pods itself, such as the DNS proxy's queries): veths have only
            // their link-local fe80::1
            run(&["ip", "-n", &netns, "addr", "add", &format!("fd00:200:{subnet:x}::1/128"), "dev", "lo"]);
        }
        for (i, name) in pods.iter().enumerate() {
            let pod_ns = format!("{prefix}-{name}");
            let interface = format!("{prefix}{name}");
            assert!(interface.len() <= 15, "interface name {interface} too long");
            let ip = Ipv4Addr::new(10, 200, subnet, 10 + i as u8);
            let ip6 = dual_stack.then(|| Ipv6Addr::new(0xfd00, 0x200, u16::from(subnet), 0, 0, 0, 0, 10 + i as u16));
            run(&["ip", "netns", "add", &pod_ns]);
            node.pods.push(Pod {
                name: name.to_string(),
                netns: pod_ns.clone(),
                ip,
                ip6,
                interface: interface.clone(),
            });
            if dual_stack {
                run(&["ip", "netns", "exec", &pod_ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"]);
            }
            run(&[
                "ip", "-n", &netns, "link", "add", &interface, "type", "veth", "peer", "name", "eth0", "netns", &pod_ns,
            ]);
            if !dual_stack {
                run(&["ip", "netns", "exec", &pod_ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            }
            run(&["ip", "-n", &netns, "link", "set", &interface, "up"]);
            run(&["ip", "-n", &netns, "addr", "add", "169.254.1.1/32", "dev", &interface]);
            run(&["ip", "-n", &pod_ns, "link", "set", "lo", "up"]);
            run(&["ip", "-n", &pod_ns, "link", "set", "eth0", "up"]);
            run(&["ip", "-n", &pod_ns, "addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
            run(&["ip", "-n", &pod_ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"]);
            run(&["ip", "-n", &pod_ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"]);
            run(&["ip", "-n", &netns, "route", "add", &format!("{ip}/32"), "dev", &interface]);
            if let Some(ip6) = ip6 {
                run(&["ip", "-n", &netns, "addr", "add", "fe80::1/64", "dev", &interface, "nodad"]);
                run(&["ip", "-n", &pod_ns, "addr", "add", &format!("{ip6}/128"), "dev", "eth0", "nodad"]);
                run(&["ip", "-n", &pod_ns, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"]);
                run(&["ip", "-n", &netns, "-6", "route", "add", &format!("{ip6}/128"), "dev", &interface]);
            }
        }
        node
    }

    /// Join two nodes of different subnets with a veth pair, `10.201.0.1/30`
    /// on `a`'s side and `.2` on `b`'s, each routing the other's pod subnet
    /// over it; each node's `weir.yaml` then names the other's pods
    /// (without interfaces, with their `app` labels from `labels`). Dual-stack
    /// nodes are wired over IPv6 too (`fd00:201::1/126` and `::2`).
    pub fn wire(a: &mut Node, b: &mut Node, labels: &[(&str, &str)]) {
        let (wire_a, wire_b) = (format!("{}wire", a.prefix), format!("{}wire", b.prefix));
        run(&[
            "ip", "-n", &a.netns, "link", "add", &wire_a, "type", "veth", "peer", "name", &wire_b, "netns", &b.netns,
        ]);
        for (node, wire, address, peer) in
            [(&*a, &wire_a, "10.201.0.1/30", "10.201.0.2"), (&*b, &wire_b, "10.201.0.2/30", "10.201.0.1")]
        {
            run(&["ip", "-n", &node.netns, "addr", "add", address, "dev", wire]);
            run(&["ip", "-n", &node.netns, "link", "set", wire, "up"]);
            let other = if std::ptr::eq(node, &*a) { &*b } else { &*a };
            let subnet = other.pods[0].ip.octets()[2];
            run(&["ip", "-n", &node.netns, "route", "add", &format!("10.200.{subnet}.0/24"), "via", peer, "dev", wire]);
            if other.pods[0].ip6.is_some() {
                let (address, peer) = if std::ptr::eq(node, &*a) {
                    ("fd00:201::1/126", "fd00:201::2")
                } else {
                    ("fd00:201::2/126", "fd00:201::1")
                };
                run(&["ip", "-n", &node.netns, "addr", "add", address, "dev", wire, "nodad"]);
                let pods = format!("fd00:200:{subnet:x}::/64");
                run(&["ip", "-n", &node.netns, "-6", "route", "add", &pods, "via", peer, "dev", wire]);
            }
        }
        let app =
            |pod: &Pod| labels.iter().find(|(p, _)| *p == pod.name).map_or(pod.name.clone(), |(_, l)| l.to_string());
        a.remote_pods = b.pods.iter().map(|p| (p.name.clone(), p.ip, p.ip6, app(p))).collect();
        b.remote_pods = a.pods.iter().map(|p| (p.name.clone(), p.ip, p.ip6, app(p))).collect();
        a.wire = Some(wire_a);
        b.wire = Some(wire_b);
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Move the calling thread into the node's network namespace: sockets it
    /// opens and processes it starts live there.
    pub fn enter(&mut self) {
        let here = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        let there = std::fs::File::open(format!("/run/netns/{}", self.netns)).unwrap();
        // SAFETY: setns on this thread with a namespace fd we hold open.
        let rc = unsafe { libc::setns(there.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        self.original_netns = Some(here);
    }

    /// Back to the namespace [`Node::enter`] left (to enter another node).
    pub fn leave(&mut self) {
        if let Some(original) = self.original_netns.take() {
            // SAFETY: back to the namespace this thread started in.
            unsafe { libc::setns(original.as_raw_fd(), libc::CLONE_NEWNET) };
        }
    }

    /// `weir.yaml` lines for the pods: endpoints with interfaces and labels,
    /// and the datapath settings of this node.
    pub fn endpoints_yaml(&self, labels: &[(&str, &str)]) -> String {
        let devices = self.wire.as_deref().map(|w| format!("  devices: [{w}]\n")).unwrap_or_default();
        let mut out = format!("datapath:\n  bpffs: {}\n{devices}endpoints:\n", self.bpffs);
        for pod in &self.pods {
            let app = labels.iter().find(|(p, _)| *p == pod.name).map_or(pod.name.as_str(), |(_, l)| l);
            let addresses = match pod.ip6 {
                Some(ip6) => format!("addresses: [{}, \"{ip6}\"]", pod.ip),
                None => format!("address: {}", pod.ip),
            };
            out.push_str(&format!(
                "  - {{name: {}, {addresses}, interface: {}, labels: {{app: {app}}}}}\n",
                pod.name, pod.interface
            ));
        }
        for (name, ip, ip6, app) in &self.remote_pods {
            let addresses = match ip6 {
                Some(ip6) => format!("addresses: [{ip}, \"{ip6}\"]"),
                None => format!("address: {ip}"),
            };
            out.push_str(&format!("  - {{name: {name}-remote, {addresses}, labels: {{app: {app}}}}}\n"));
        }
        out
    }

    /// Start weir with the eBPF datapath (this thread must have entered the node).
    pub fn start_weir(&mut self, config: &str, policies: &[(&str, &str)]) {
        assert!(self.original_netns.is_some(), "enter() the node first");
        self.weir = Some(Weir::start_with(config, policies, &["--datapath", "ebpf"]));
    }

    /// The same under `wrapper` (`setpriv ... --`); `Err`: the log of a weir
    /// that exited during its start.
    pub fn try_start_weir_wrapped(
        &mut self,
        config: &str,
        policies: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Result<(), String> {
        assert!(self.original_netns.is_some(), "enter() the node first");
        self.weir = Some(Weir::try_start_wrapped(config, policies, &["--datapath", "ebpf"], wrapper)?);
        Ok(())
    }

    /// The same, with more `weir run` arguments (`--kubernetes ...`).
    pub fn start_weir_with(&mut self, config: &str, args: &[&str]) {
        assert!(self.original_netns.is_some(), "enter() the node first");
        let mut all = vec!["--datapath", "ebpf"];
        all.extend_from_slice(args);
        self.weir = Some(Weir::start_with(config, &[], &all));
    }

    pub fn weir(&self) -> &Weir {
        self.weir.as_ref().expect("weir started")
    }

    /// A command run inside a pod.
    pub fn in_pod(&self, pod: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.pod(pod).netns, program]);
        cmd
    }

    /// Run `program` in `pod` with `input` on its stdin, for at most 60 s.
    pub fn run_in(&self, pod: &str, program: &str, args: &[&str], input: &str) -> Output {
        let mut child = self
            .in_pod(pod, program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait_with_output().unwrap()
    }

    /// One long-lived connection from `pod` to `host:port`
    /// (`datapath_peer.py lines`), a line at a time.
    pub fn line_client(&self, pod: &str, host: &str, port: u16) -> LineClient {
        let mut child = self
            .in_pod(pod, "python3")
            .args([&peer_script(), "lines", host, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        LineClient { child, input: Some(input), output }
    }

    /// Start a long-running server inside a pod; stopped with the node.
    pub fn serve(&mut self, pod: &str, name: &str, program: &str, args: &[&str]) {
        let mut cmd = self.in_pod(pod, program);
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
        self.servers.push(Process::spawn(name, &mut cmd));
    }

    /// unbound serving `records` (zone-file lines) for `zones` on port 53 of
    /// `pod`'s address; stopped when dropped.
    pub fn unbound(&self, pod: &str, zones: &[&str], records: &[String]) -> crate::resolver::Unbound {
        self.unbound_at(pod, std::net::IpAddr::V4(self.pod(pod).ip), zones, records)
    }

    /// The same on one of the pod's addresses (its IPv6 one, say).
    pub fn unbound_at(
        &self,
        pod: &str,
        address: std::net::IpAddr,
        zones: &[&str],
        records: &[String],
    ) -> crate::resolver::Unbound {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.pod(pod).netns, "unbound"]);
        let addr = std::net::SocketAddr::new(address, 53);
        crate::resolver::Unbound::start_at(
            addr,
            command,
            zones,
            &records.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    }

    /// curl from a pod: (HTTP status, body); status 0 when no response came.
    pub fn curl(&self, pod: &str, url: &str) -> (u16, String) {
        let out = self
            .in_pod(pod, "curl")
            .args(["-s", "-m", "3", "-o", "-", "-w", "\n%{http_code}", url])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// What weir's own status command reports for this node.
    pub fn datapath_status(&self) -> String {
        let out = Command::new(weir_bin())
            .args(["datapath", "status", "--config"])
            .arg(self.weir_config_dir())
            .output()
            .expect("weir datapath status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn weir_config_dir(&self) -> std::path::PathBuf {
        self.weir.as_ref().map(|w| w.config_dir().to_path_buf()).unwrap_or_default()
    }

    /// Everything of this node's datapath that is still in the kernel:
    /// pins, TCX programs on its interfaces, rules and routes, in one text.
    pub fn leftovers(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.bpffs) {
            for e in entries.flatten() {
                out.push_str(&format!("pin {}\n", e.path().display()));
            }
        }
        let net = Command::new("ip")
            .args(["netns", "exec", &self.netns, "bpftool", "net", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for line in net.lines().filter(|l| l.contains(&self.prefix)) {
            out.push_str(&format!("program {line}\n"));
        }
        for family in ["-4", "-6"] {
            let rules =
                String::from_utf8_lossy(&run(&["ip", family, "-n", &self.netns, "rule", "show"]).stdout).into_owned();
            for line in rules.lines().filter(|l| l.contains("fwmark")) {
                out.push_str(&format!("rule {line}\n"));
            }
            let table = String::from_utf8_lossy(
                &run(&["ip", family, "-n", &self.netns, "route", "show", "table", "all"]).stdout,
            )
            .into_owned();
            for line in table.lines().filter(|l| l.contains("table 2004")) {
                out.push_str(&format!("route {line}\n"));
            }
        }
        out
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.terminate(Duration::from_secs(2));
        }
        self.servers.clear();
        if let Some(mut weir) = self.weir.take() {
            let dir = weir.config_dir().to_path_buf();
            if weir.terminate().is_none() {
                eprintln!("weir did not stop in time:\n{}", weir.log());
            }
            // in the node's network namespace, where the rules and routes it
            // removes are; by nsenter, not `ip netns exec`, whose own sysfs
            // mount hides the bpffs under /sys/fs/bpf (the pins of a weir
            // that did not stop cleanly stayed behind)
            let _ = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.netns))
                .arg(weir_bin())
                .args(["datapath", "cleanup", "--config"])
                .arg(&dir)
                .output();
            drop(weir);
        }
        self.leave();
        for pod in &self.pods {
            let _ = Command::new("ip").args(["netns", "del", &pod.netns]).output();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
        let _ = std::fs::remove_dir(&self.bpffs);
    }
}

/// A connection kept open by `datapath_peer.py lines` in a pod; killed when
/// dropped.
pub struct LineClient {
    child: std::process::Child,
    input: Option<std::process::ChildStdin>,
    output: BufReader<std::process::ChildStdout>,
}

impl LineClient {
    /// Send a line; the reply line, or `error ...` when the connection failed
    /// or the reply did not come within the client's 5 s.
    pub fn exchange(&mut self, text: &str) -> String {
        let input = self.input.as_mut().expect("open");
        writeln!(input, "{text}").unwrap();
        input.flush().unwrap();
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        line.trim().to_string()
    }
}

impl Drop for LineClient {
    fn drop(&mut self) {
        drop(self.input.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `integration/python/datapath_peer.py`: the HTTP, TCP and UDP peers the
/// pods run.
pub fn peer_script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/datapath_peer.py").display().to_string()
}

/// The node tests' HTTP policy: `app: client` may GET `/public*` on
/// `app: server`:80; `app: other` is denied outright.
pub const SERVER_HTTP_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-http}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http: [{method: GET, path: "/public.*"}]
  ingressDeny:
    - fromEndpoints: [{matchLabels: {app: other}}]
"#;

/// `app: server` takes UDP 9001 from `app: client` and may send nothing at
/// all: what it sends passes only as an ICMP error about a live connection.
pub const SERVER_SILENT: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-silent}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "9001", protocol: UDP}]}]
  egress:
    - toEndpoints: [{matchLabels: {app: nobody}}]
"#;

/// `app: server` takes UDP 9001 from `app: client`, nothing else.
pub const SERVER_UDP_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-udp}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "9001", protocol: UDP}]}]
"#;
