//! A real resolver for DNS tests: unbound, serving test zones from
//! `local-data` on a loopback port, and `dig`/`kdig` as clients.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Process, wait_for};

pub struct Unbound {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    _process: Process,
}

impl Unbound {
    /// `records` are zone-file lines (`api.example.com. 300 IN A 127.0.0.61`);
    /// every name under `zones` not listed is NXDOMAIN.
    pub fn start(zones: &[&str], records: &[&str]) -> Unbound {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_and_tcp_port()).parse().unwrap();
        Unbound::start_at(addr, Command::new("unbound"), zones, records)
    }

    /// The same on `addr`, started by `command` (for example `ip netns exec
    /// POD unbound`, to run it inside a pod); the probe query runs in the
    /// caller's network namespace, which must reach `addr`.
    pub fn start_at(addr: SocketAddr, mut command: Command, zones: &[&str], records: &[&str]) -> Unbound {
        let dir = tempfile::tempdir().unwrap();
        let (ip, port) = (addr.ip(), addr.port());
        let mut conf = format!(
            "server:\n  interface: {ip}@{port}\n  port: {port}\n  do-daemonize: no\n  username: \"\"\n  \
             chroot: \"\"\n  directory: \"{dir}\"\n  pidfile: \"\"\n  use-syslog: no\n  \
             logfile: \"{dir}/unbound.log\"\n  log-queries: yes\n  \
             do-ip6: {ip6}\n  num-threads: 1\n  so-reuseport: no\n  access-control: 0.0.0.0/0 allow\n  \
             access-control: ::/0 allow\n  \
             module-config: \"iterator\"\n  msg-cache-size: 4m\n  rrset-cache-size: 4m\n  \
             minimal-responses: yes\n",
            dir = dir.path().display(),
            ip6 = if ip.is_ipv6() { "yes" } else { "no" },
        );
        for zone in zones {
            conf.push_str(&format!("  local-zone: \"{zone}\" static\n"));
        }
        for record in records {
            conf.push_str(&format!("  local-data: \"{record}\"\n"));
        }
        let path = dir.path().join("unbound.conf");
        std::fs::write(&path, conf).unwrap();
        let check = Command::new("unbound-checkconf").arg(&path).output().expect("unbound-checkconf");
        assert!(check.status.success(), "unbound config: {}", String::from_utf8_lossy(&check.stdout));
        let process = Process::spawn(
            "unbound",
            command.arg("-d").arg("-c").arg(&path).stdout(Stdio::null()).stderr(Stdio::null()),
        );
        let probe = zones.first().copied().unwrap_or(".");
        wait_for("unbound", Duration::from_secs(20), || {
            dig(addr, &[probe, "SOA", "+time=1", "+tries=1"]).status.is_some()
        });
        Unbound { addr, dir, _process: process }
    }

    /// The queries unbound has read, as its `log-queries` lines name them
    /// (`NAME. TYPE CLASS`, lower case as sent).
    pub fn queries_read(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.path().join("unbound.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| l.split(" info: ").nth(1))
            .filter_map(|rest| {
                // "127.0.0.1 www.example.com. A IN"
                let mut words = rest.split_whitespace().skip(1);
                Some(format!("{} {} {}", words.next()?, words.next()?, words.next()?))
            })
            .collect()
    }
}

/// A port free for both UDP and TCP on 127.0.0.1, below the ephemeral
/// range: no client socket, resolver lane or parallel test's `free_port()`
/// can take it by chance between this call and the bind.
pub fn free_udp_and_tcp_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20000 + (std::process::id() % 400) as u16 * 25;
    loop {
        let port = start + NEXT.fetch_add(1, Ordering::Relaxed) % 2700;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        if tcp.is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// What dig printed, read back.
#[derive(Debug)]
pub struct DigAnswer {
    /// NOERROR, REFUSED, ... (`None`: no answer at all)
    pub status: Option<String>,
    /// The answer section, `name ttl class type data` per line.
    pub answers: Vec<String>,
    pub flags: String,
    pub output: String,
}

impl DigAnswer {
    /// The data of every answer record (addresses for A/AAAA).
    pub fn data(&self) -> Vec<String> {
        self.answers.iter().filter_map(|l| l.split_whitespace().nth(4).map(str::to_string)).collect()
    }
}

/// `dig @server -p port ARGS` (`-b ADDR` in `args` picks the client identity).
pub fn dig(server: SocketAddr, args: &[&str]) -> DigAnswer {
    run_dig("dig", server, args)
}

/// The same with Knot's kdig.
pub fn kdig(server: SocketAddr, args: &[&str]) -> DigAnswer {
    run_dig("kdig", server, args)
}

fn run_dig(program: &str, server: SocketAddr, args: &[&str]) -> DigAnswer {
    let output = Command::new(program)
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|rest| rest.split([',', ';']).next().unwrap_or("").trim().to_string());
    let flags = text
        .lines()
        .find_map(|l| l.split(";; flags: ").nth(1).or_else(|| l.split(";; Flags: ").nth(1)))
        .unwrap_or("")
        .to_string();
    let mut answers = Vec::new();
    let mut in_answer = false;
    for line in text.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            in_answer = true;
            continue;
        }
        if in_answer {
            if line.trim().is_empty() || line.starts_with(";;") {
                in_answer = false;
                continue;
            }
            answers.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    DigAnswer { status, answers, flags, output: text }
}

/// `/etc/netns/POD/resolv.conf`: `ip netns exec` mounts it over
/// /etc/resolv.conf, so programs in the pod use their own resolver (glibc)
/// against the resolver pod. Removed on drop.
pub struct PodResolvConf(std::path::PathBuf);

impl PodResolvConf {
    pub fn new(netns: &str, nameserver: &str) -> Self {
        let dir = Path::new("/etc/netns").join(netns);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("resolv.conf"), format!("nameserver {nameserver}\noptions timeout:2 attempts:1\n"))
            .unwrap();
        PodResolvConf(dir)
    }
}

impl Drop for PodResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // and /etc/netns itself, unless someone else keeps files there
        let _ = self.0.parent().map(std::fs::remove_dir);
    }
}
