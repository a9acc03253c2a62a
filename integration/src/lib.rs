//! Harness for end-to-end tests: the real `weir` binary in a temporary
//! config directory, real upstreams (nginx, weir's demo backend), and real
//! clients (curl, nghttp, Python gRPC, raw sockets).
//!
//! Local mode needs no privileges. Clients take identities by binding
//! loopback addresses (127.0.0.2 and up), which the endpoints in weir.yaml
//! name. Every process started here is killed when its handle drops, also
//! when a test fails.

pub mod kafka;
pub mod kube;
pub mod node;
pub mod resolver;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use weir::observe::flow::FlowRecord;

pub const FRONTEND: &str = "127.0.0.2";
pub const CRAWLER: &str = "127.0.0.3";

/// The weir binary of this build. `scripts/test.sh` builds it first; set
/// WEIR_BIN to test another.
pub fn weir_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("WEIR_BIN") {
        return PathBuf::from(bin);
    }
    // target/<profile>/deps/<test> -> target/<profile>/weir
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe.parent().and_then(Path::parent).expect("target dir").join("weir");
    assert!(bin.exists(), "{} is missing: build it first (cargo build -p weir, or scripts/test.sh)", bin.display());
    bin
}

/// A port free right now on 127.0.0.1, and never handed out before in this
/// test process. The second half matters: weir binds its listeners with
/// `SO_REUSEPORT`, so two weirs of parallel tests given the same port would
/// both bind it and share its connections (one test's request judged by the
/// other's policy), and the kernel does hand a port released by one
/// `bind(0)` to a later one.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

pub fn wait_port(addr: SocketAddr, what: &str) {
    wait_for(what, Duration::from_secs(30), || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok());
}

/// A child process killed on drop, with everything it started: it runs in
/// its own process group (nginx's workers, a shell's children), and the
/// whole group is killed, so no worker outlives a master killed alone.
pub struct Process {
    child: Child,
    pub name: String,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command) -> Self {
        use std::os::unix::process::CommandExt as _;
        let child = command.process_group(0).spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process { child, name: name.into() }
    }

    /// Send `signal` to the process's whole group (its pid is the group id).
    fn signal_group(&self, signal: libc::c_int) {
        // SAFETY: signalling the process group our own child leads.
        unsafe { libc::kill(-(self.child.id() as i32), signal) };
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, and wait (at most `patience`) for a clean exit.
    pub fn terminate(&mut self, patience: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait(patience)
    }

    /// Wait (at most `patience`) for the process to exit.
    pub fn wait(&mut self, patience: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // the group first: once the leader is reaped, its workers would be
        // orphans nobody waits for
        self.signal_group(libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running weir with its own config directory and admin port.
pub struct Weir {
    pub dir: tempfile::TempDir,
    pub admin: SocketAddr,
    process: Process,
    log: PathBuf,
    /// How the process was started, for a successor started the same way.
    launch: Launch,
    /// Logs of the processes this one replaced, oldest first.
    earlier_logs: Vec<PathBuf>,
}

#[derive(Clone)]
struct Launch {
    args: Vec<String>,
    nofile: Option<u64>,
    wrapper: Vec<String>,
}

/// How a weir process left when another took its place.
#[derive(Debug)]
pub struct Replaced {
    /// The old process's exit status (`None`: killed).
    pub exit: Option<std::process::ExitStatus>,
    /// From the new process's start until its /healthz named it.
    pub serving_after: Duration,
}

impl Weir {
    /// Start weir with `weir.yaml` (where `ADMIN` is replaced by a free
    /// admin address) and policy files; waits until it is healthy.
    pub fn start(config: &str, policies: &[(&str, &str)]) -> Weir {
        Weir::start_with(config, policies, &[])
    }

    /// The same, with more arguments for `weir run`.
    pub fn start_with(config: &str, policies: &[(&str, &str)], args: &[&str]) -> Weir {
        Weir::start_inner(config, policies, args, None, &[]).unwrap_or_else(|log| panic!("{log}"))
    }

    /// Run under `wrapper` (a command that execs the rest: `setpriv ...
    /// --`); `Err`: the log of a weir that exited before it was healthy.
    pub fn try_start_wrapped(
        config: &str,
        policies: &[(&str, &str)],
        args: &[&str],
        wrapper: &[&str],
    ) -> Result<Weir, String> {
        Weir::start_inner(config, policies, args, None, wrapper)
    }

    /// The same, with `RLIMIT_NOFILE` (soft and hard) set to `nofile` for
    /// weir: descriptor exhaustion is cheap to reach.
    pub fn start_with_nofile(config: &str, policies: &[(&str, &str)], nofile: u64) -> Weir {
        Weir::start_inner(config, policies, &[], Some(nofile), &[]).unwrap_or_else(|log| panic!("{log}"))
    }

    fn start_inner(
        config: &str,
        policies: &[(&str, &str)],
        args: &[&str],
        nofile: Option<u64>,
        wrapper: &[&str],
    ) -> Result<Weir, String> {
        let dir = tempfile::tempdir().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = config.replace("ADMIN", &admin.to_string());
        std::fs::write(dir.path().join("weir.yaml"), format!("reload_interval: 200ms\n{config}")).unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        for (name, text) in policies {
            std::fs::write(dir.path().join("policies").join(name), text).unwrap();
        }
        let launch = Launch {
            args: args.iter().map(|a| a.to_string()).collect(),
            nofile,
            wrapper: wrapper.iter().map(|a| a.to_string()).collect(),
        };
        let log = dir.path().join("weir.log");
        let process = spawn_weir(dir.path(), &launch, &log);
        let mut weir = Weir { dir, admin, process, log, launch, earlier_logs: Vec::new() };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http_get(admin, "/healthz") {
                break;
            }
            if !weir.process.is_running() {
                return Err(format!("weir exited during start:\n{}", weir.log()));
            }
            assert!(Instant::now() < deadline, "weir did not become healthy:\n{}", weir.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(weir)
    }

    /// A rolling replace: start a second weir on the same configuration and
    /// state while this one runs (it takes the sockets over), wait until the
    /// new one answers /healthz and the old one has drained and exited.
    pub fn replace(&mut self) -> Replaced {
        let old_pid = self.pid();
        let (new, serving_after) = self.start_successor();
        let mut old = std::mem::replace(&mut self.process, new);
        let exit = old.wait(Duration::from_secs(20));
        assert!(exit.is_some(), "the replaced weir (pid {old_pid}) did not exit:\n{}", self.log());
        Replaced { exit, serving_after }
    }

    /// A crash: SIGKILL this weir, then start a new one on the same
    /// configuration and state.
    pub fn kill_and_restart(&mut self) -> Replaced {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGKILL) };
        let exit = self.process.wait(Duration::from_secs(5));
        let (new, serving_after) = self.start_successor();
        self.process = new;
        Replaced { exit, serving_after }
    }

    /// A rolling replace this weir's successor must refuse: it exits during
    /// its start (this one keeps serving). Its log.
    pub fn replace_refused(&mut self) -> String {
        let log = self.dir.path().join(format!("weir-refused-{}.log", self.earlier_logs.len() + 2));
        let mut process = spawn_weir(self.dir.path(), &self.launch, &log);
        let exit = process.wait(Duration::from_secs(60));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(exit.is_some_and(|s| !s.success()), "the successor did not fail: {exit:?}\n{text}");
        text
    }

    fn start_successor(&mut self) -> (Process, Duration) {
        let log = self.dir.path().join(format!("weir-{}.log", self.earlier_logs.len() + 2));
        self.earlier_logs.push(std::mem::replace(&mut self.log, log.clone()));
        let started = Instant::now();
        let mut process = spawn_weir(self.dir.path(), &self.launch, &log);
        let pid = process.pid();
        let deadline = started + Duration::from_secs(60);
        loop {
            if let Ok((200, body)) = http_get(self.admin, "/healthz")
                && body.contains(&format!(" pid={pid} "))
            {
                return (process, started.elapsed());
            }
            assert!(process.is_running(), "the new weir exited during its start:\n{}", self.log());
            assert!(Instant::now() < deadline, "the new weir did not become healthy:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn spawn_weir(dir: &Path, launch: &Launch, log: &Path) -> Process {
    let Launch { args, nofile, wrapper } = launch;
    let nofile = *nofile;
    {
        let mut command = match wrapper.split_first() {
            None => Command::new(weir_bin()),
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(weir_bin());
                command
            }
        };
        command
            .args(["run", "--config"])
            .arg(dir)
            .args(args)
            .env("WEIR_CACHE_DIR", cache_dir())
            .env("WEIR_STATE_DIR", dir.join("state"))
            .env("WEIR_LOG", "info,weir=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        if let Some(nofile) = nofile {
            use std::os::unix::process::CommandExt as _;
            let limit = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
            // SAFETY: setrlimit is async-signal-safe and reads a struct copied
            // into the closure; nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        Process::spawn("weir", &mut command)
    }
}

impl Weir {
    /// The log of this process, after those of the processes it replaced.
    pub fn log(&self) -> String {
        let mut out = String::new();
        for earlier in &self.earlier_logs {
            out.push_str(&format!("--- {}\n", earlier.display()));
            out.push_str(&std::fs::read_to_string(earlier).unwrap_or_default());
        }
        out + &std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Stop as an operator would (SIGTERM); `None` if it did not exit in time.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        self.process.terminate(Duration::from_secs(20))
    }

    pub fn config_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn write_policy(&self, name: &str, text: &str) {
        // write then rename, as editors and ConfigMap updates do
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("policies").join(name)).unwrap();
    }

    pub fn generation(&self) -> u64 {
        let (_, body) = http_get(self.admin, "/healthz").expect("healthz");
        body.trim().rsplit('=').next().and_then(|g| g.parse().ok()).expect("generation")
    }

    /// Wait until a reload past `generation` has been applied.
    pub fn wait_generation_above(&self, generation: u64) {
        wait_for("a policy reload", Duration::from_secs(30), || self.generation() > generation);
    }

    pub fn config(&self) -> serde_json::Value {
        let (_, body) = http_get(self.admin, "/config").expect("config");
        serde_json::from_str(&body).expect("config JSON")
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").expect("metrics").1
    }

    /// One sample of /metrics: the line whose series is exactly `series`
    /// (name and labels); 0 when there is none yet.
    pub fn metric(&self, series: &str) -> u64 {
        let text = self.metrics();
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    /// Packets the eBPF datapath dropped for `reason` (`weir_datapath_drops_total`).
    pub fn datapath_drops(&self, reason: &str) -> u64 {
        self.metric(&format!("weir_datapath_drops_total{{reason=\"{reason}\"}}"))
    }

    /// Kept flows matching a `/flows` query (without follow).
    pub fn flows(&self, query: &str) -> Vec<FlowRecord> {
        let (status, body) = http_get(self.admin, &format!("/flows?{query}")).expect("flows");
        assert_eq!(status, 200, "{body}");
        body.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
    }

    /// The newest kept flow matching a `/flows` query and `matches`, waiting
    /// for it (the proxy records a flow after answering).
    pub fn wait_flow(&self, query: &str, what: &str, matches: impl Fn(&FlowRecord) -> bool) -> FlowRecord {
        let mut found = None;
        wait_for(what, Duration::from_secs(10), || {
            found = self.flows(query).into_iter().rev().find(|f| matches(f));
            found.is_some()
        });
        found.unwrap()
    }

    /// The last flow for a path, waiting a little for it to be recorded.
    pub fn last_flow(&self, path: &str) -> FlowRecord {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let flows = self.flows("");
            if let Some(found) = flows.iter().rev().find(|f| f.http().is_some_and(|h| h.path == path)) {
                return found.clone();
            }
            if Instant::now() > deadline {
                panic!("no flow for {path}; flows: {flows:#?}\nweir log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Compiled filters shared by all test runs of this build.
pub fn cache_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().join("weir-test-cache")
}

/// GET over a fresh HTTP/1.1 connection; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    let body = if text.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(&body) } else { body };
    Ok((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// What curl saw.
#[derive(Debug)]
pub struct CurlResult {
    pub status: u16,
    pub version: String,
    pub body: String,
    /// curl's exit code: 0, or e.g. 52/56 when the server closed/reset.
    pub exit: i32,
    pub stderr: String,
}

/// `curl` with the given arguments; `-w` output is parsed from the end.
pub fn curl(args: &[&str]) -> CurlResult {
    let out: Output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n__weir__ %{http_code} %{http_version}"])
        .args(args)
        .output()
        .expect("curl is installed (scripts/setup.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, meta) = stdout.rsplit_once("\n__weir__ ").unwrap_or((&stdout, "0 0"));
    let mut meta = meta.split_whitespace();
    CurlResult {
        status: meta.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        version: meta.next().unwrap_or("").to_string(),
        body: body.to_string(),
        exit: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// curl from a client identity's address.
pub fn curl_from(source: &str, args: &[&str]) -> CurlResult {
    let mut all = vec!["--interface", source];
    all.extend_from_slice(args);
    curl(&all)
}

/// Send raw bytes from `source` and read the answer until the server closes
/// or goes quiet for `quiet`.
pub fn raw_exchange(source: &str, to: SocketAddr, request: &[u8], quiet: Duration) -> String {
    let mut stream = connect_from(source, to);
    match stream.write_all(request) {
        Ok(()) => {}
        // the server closed before taking all of it: what it answered first
        // is still to be read
        Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe) => {}
        Err(e) => panic!("send to {to}: {e}"),
    }
    read_until_quiet(&mut stream, quiet)
}

pub fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    // before connecting: a peer that resets at once (a policy drop) would
    // make setting it afterwards fail
    socket.set_nodelay(true).unwrap();
    match socket.connect_timeout(&to.into(), Duration::from_secs(5)) {
        Ok(()) => {}
        // The handshake completed and the proxy reset the connection (a
        // drop at accept) before this thread saw the connect finish: the
        // connection existed, and reads on it report the reset, as they
        // would had the reset come a moment later.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("connect from {source} to {to}: {e}"),
    }
    socket.into()
}

pub fn read_until_quiet(stream: &mut TcpStream, quiet: Duration) -> String {
    stream.set_read_timeout(Some(quiet)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// weir's demo backend as its own process (an HTTP/1.1 + h2c hyper server).
pub struct DemoBackend {
    pub addr: SocketAddr,
    _process: Process,
}

impl DemoBackend {
    pub fn start() -> Self {
        DemoBackend::start_on(format!("127.0.0.1:{}", free_port()).parse().unwrap())
    }

    /// On a loopback address of the test's choosing (127.0.0.0/8 is all local).
    pub fn start_on(addr: SocketAddr) -> Self {
        let process = Process::spawn(
            "demo-backend",
            Command::new(weir_bin())
                .args(["demo-backend", "--listen", &addr.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_port(addr, "the demo backend");
        DemoBackend { addr, _process: process }
    }
}

/// A real nginx serving static files, with an access log we can read.
pub struct Nginx {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    _process: Process,
}

impl Nginx {
    /// nginx on a free port. `/`: a static tree with `/public/hello.txt` and
    /// `/admin/secret.txt`; `/slow`: answers after a pause (proxy timeout tests).
    pub fn start() -> Self {
        Nginx::start_with("", "")
    }

    /// The same, serving TLS (and h2 by ALPN) with `pki`'s server
    /// certificate; with `verify_client`, only to clients with a
    /// certificate `pki`'s CA signed. `/whoami` names the SNI and the client
    /// certificate's subject.
    pub fn start_tls(pki: &TestPki, verify_client: bool) -> Self {
        let mut tls = format!(
            "    ssl_certificate {};\n    ssl_certificate_key {};\n    \
             location /whoami {{ return 200 \"sni=$ssl_server_name client=$ssl_client_s_dn\\n\"; }}\n",
            pki.server_cert.display(),
            pki.server_key.display()
        );
        if verify_client {
            tls += &format!("    ssl_client_certificate {};\n    ssl_verify_client on;\n", pki.ca.display());
        }
        Nginx::start_with(" ssl http2", &tls)
    }

    /// `listen_options` after the address; `directives` in the server block.
    fn start_with(listen_options: &str, directives: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("www");
        for (file, text) in [
            ("public/hello.txt", "hello from nginx\n"),
            ("admin/secret.txt", "top secret\n"),
            ("index.html", "index\n"),
            ("robots.txt", "User-agent: *\n"),
        ] {
            let path = root.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let port = free_port();
        let conf = format!(
            "daemon off;\nworker_processes 1;\nuser root;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             server {{\n    listen 127.0.0.1:{port}{listen_options};\n{directives}    root {root};\n    location /echo {{ return 200 \"$request_method $request_uri\\n\"; }}\n  }}\n}}\n",
            d = dir.path().display(),
            root = root.display(),
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let nginx = ["/usr/sbin/nginx", "nginx"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("nginx");
        let process = Process::spawn(
            "nginx",
            Command::new(nginx)
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(dir.path().join("nginx.conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_port(addr, "nginx");
        Nginx { addr, dir, _process: process }
    }

    /// Request lines nginx logged, e.g. `"GET /public/hello.txt HTTP/1.1" 200`.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

/// A test CA with a server certificate and a client certificate it signed,
/// as PEM files.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    /// A CA; a server certificate for `server_names`; a client certificate
    /// for `CN=weir`.
    pub fn new(server_names: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "weir test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let issue = |names: Vec<String>, cn: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(names).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
            (params.signed_by(&key, &ca, &ca_key).unwrap().pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = issue(server_names.iter().map(|n| n.to_string()).collect(), server_names[0]);
        let (client_cert, client_key) = issue(Vec::new(), "weir");
        TestPki {
            ca: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server-key.pem", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client-key.pem", client_key),
            dir,
        }
    }
}

/// A self-signed certificate for `localhost`, written as PEM files in `dir`.
pub fn write_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// Run one of the Python helpers in `integration/python`.
pub fn python(script: &str, args: &[&str]) -> Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("python").join(script);
    Command::new("python3").arg(path).args(args).output().expect("python3")
}

pub fn python_server(script: &str, args: &[&str], addr: SocketAddr) -> Process {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("python").join(script);
    let process = Process::spawn(
        script,
        Command::new("python3").arg(path).args(args).stdout(Stdio::null()).stderr(Stdio::inherit()),
    );
    wait_port(addr, script);
    process
}

/// The misbehaving test filter built with this weir.
pub fn misbehave_filter() -> PathBuf {
    PathBuf::from(weir::wasm::builtin::BUILT_FILTERS_DIR).join("misbehave.wasm")
}

/// A real memcached server (Debian's) on a free loopback port.
pub struct Memcached {
    pub addr: SocketAddr,
    _process: Process,
}

impl Memcached {
    pub fn start() -> Self {
        Memcached::start_on(format!("127.0.0.1:{}", free_port()).parse().unwrap())
    }

    /// On a given loopback address (one a DNS answer names, say).
    pub fn start_on(addr: SocketAddr) -> Self {
        let process = Process::spawn(
            "memcached",
            Command::new("memcached")
                .args(["-U", "0", "-m", "64", "-t", "1", "-u", "root", "-l"])
                .arg(addr.ip().to_string())
                .arg("-p")
                .arg(addr.port().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_port(addr, "memcached");
        Memcached { addr, _process: process }
    }
}

/// An upstream on a thread per connection that answers every request with
/// `answer` and counts the connections it accepted; with
/// `close_after_answer` it closes each connection after its first answer
/// without saying so (as an upstream whose keep-alive timeout passed does).
/// A stand-in: what it stands for is a server's connection handling, which
/// the tests count, not what it serves.
pub struct CountingUpstream {
    pub addr: SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingUpstream {
    pub fn start(answer: &'static [u8], close_after_answer: bool) -> CountingUpstream {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut pending = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        // requests without bodies: each ends at its blank line
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            if stream.write_all(answer).is_err() || close_after_answer {
                                return;
                            }
                        }
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    }
                });
            }
        });
        CountingUpstream { addr, accepted }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}
