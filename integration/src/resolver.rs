//! A real resolver for DNS tests: unbound, serving test zones from
//! `local-data` on a loopback port, and `dig`/`kdig` as clients.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Process, free_port, wait_for};

pub struct Unbound {
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    _process: Process,
}

impl Unbound {
    /// `records` are zone-file lines (`api.example.com. 300 IN A 127.0.0.61`);
    /// every name under `zones` not listed is NXDOMAIN.
    pub fn start(zones: &[&str], records: &[&str]) -> Unbound {
        let dir = tempfile::tempdir().unwrap();
        let port = free_udp_and_tcp_port();
        let mut conf = format!(
            "server:\n  interface: 127.0.0.1@{port}\n  port: {port}\n  do-daemonize: no\n  username: \"\"\n  \
             chroot: \"\"\n  directory: \"{dir}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  \
             do-ip6: no\n  num-threads: 1\n  so-reuseport: no\n  access-control: 127.0.0.0/8 allow\n  \
             module-config: \"iterator\"\n  msg-cache-size: 4m\n  rrset-cache-size: 4m\n  \
             minimal-responses: yes\n",
            dir = dir.path().display()
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
            Command::new("unbound").arg("-d").arg("-c").arg(&path).stdout(Stdio::null()).stderr(Stdio::null()),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let probe = zones.first().copied().unwrap_or(".");
        wait_for("unbound", Duration::from_secs(20), || {
            dig(addr, &[probe, "SOA", "+time=1", "+tries=1"]).status.is_some()
        });
        Unbound { addr, _dir: dir, _process: process }
    }
}

/// A port free for both UDP and TCP on 127.0.0.1.
pub fn free_udp_and_tcp_port() -> u16 {
    loop {
        let port = free_port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
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
