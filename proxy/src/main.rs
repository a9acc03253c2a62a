//! The `weir` command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Per-node L7 proxy: CiliumNetworkPolicy rules enforced by WebAssembly filters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy. Without --config: the built-in quickstart (a demo
    /// backend behind a listener, two client identities, an example policy).
    Run {
        /// Directory with weir.yaml and policies/*.yaml (hot-reloaded).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// `ebpf`: police the pods named by the endpoints' `interface` in the
        /// kernel and hand L7 traffic to the proxy transparently.
        #[arg(long, value_enum, default_value_t = DatapathMode::None)]
        datapath: DatapathMode,
        /// Also follow the policy objects of a Kubernetes API server
        /// (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy,
        /// NetworkPolicy, WeirNetworkPolicy, WeirClusterwideNetworkPolicy).
        #[arg(long)]
        kubernetes: bool,
        /// The API server and credentials (default: $KUBECONFIG, else the
        /// pod's service account).
        #[arg(long, requires = "kubernetes")]
        kubeconfig: Option<PathBuf>,
        /// This node's name: its pods are the ones weir polices and
        /// allocates identities for (default: the host name).
        #[arg(long, env = "NODE_NAME", requires = "kubernetes")]
        node_name: Option<String>,
        /// weir's own namespace: WasmFilter objects name ConfigMaps in it.
        #[arg(long, env = "POD_NAMESPACE", default_value = "weir-system")]
        namespace: String,
        /// Write this process's state here (`starting`, `serving`,
        /// `draining`, `handed-over`) for `weir probe`.
        #[arg(long)]
        status_file: Option<PathBuf>,
        /// After handing the node to a new weir and draining, stay until
        /// stopped instead of exiting (a DaemonSet's container that exits is
        /// restarted, and would take the node back).
        #[arg(long)]
        linger_after_handover: bool,
    },
    /// A pod probe: exit 0 when the `weir run --status-file` of this
    /// container says it serves the node (with --live: or drains).
    Probe {
        #[arg(long)]
        status_file: PathBuf,
        /// Liveness: a weir draining after a hand-over is alive.
        #[arg(long)]
        live: bool,
    },
    /// The cluster's one writer (run one Deployment of it): judges every
    /// policy object as the nodes do and writes the verdict on it
    /// (`status.conditions`, Events), and collects identities no pod uses.
    Operator {
        /// The API server and credentials (default: $KUBECONFIG, else the
        /// pod's service account).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// The nodes' configuration directory (weir.yaml), for the custom
        /// filters `wasm` rules may name; default: built-in filters only.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The namespace of the operator's Lease (leader election).
        #[arg(long, env = "POD_NAMESPACE", default_value = "weir-system")]
        namespace: String,
        /// This replica's name in the Lease (default: the host name).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// How long an identity no pod uses is kept before it is deleted.
        #[arg(long, value_parser = weir::units::duration::parse, default_value = "5m")]
        identity_grace: std::time::Duration,
    },
    /// The CustomResourceDefinitions weir reads (deploy/crds/), generated
    /// from the types it parses them with.
    Crds {
        /// Write one file per CRD here instead of printing them.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The eBPF datapath on this node.
    Datapath {
        #[command(subcommand)]
        command: DatapathCommand,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Write, build and test your own filters (docs/filters.md).
    Filter {
        #[command(subcommand)]
        command: FilterCommand,
    },
    /// Follow flow records from a running weir.
    Observe {
        /// Admin API of the weir to watch.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// forwarded, denied, dropped or error.
        #[arg(long)]
        verdict: Option<String>,
        /// http, dns, kafka, memcached, cassandra, or an l7proto name.
        #[arg(long)]
        protocol: Option<String>,
        /// Source label (`app=web`, `k8s:app=web`, `reserved:world`); repeat to require several.
        #[arg(long)]
        from_label: Vec<String>,
        #[arg(long)]
        to_label: Vec<String>,
        /// Regex over the HTTP path.
        #[arg(long)]
        http_path: Option<String>,
        /// Regex over the DNS query name (`--protocol dns` flows).
        #[arg(long)]
        dns_name: Option<String>,
        /// Flows from or to a workload in this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Flows from or to this pod (`name` or `namespace/name`).
        #[arg(long)]
        pod: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Start with the last N kept flows (default: all kept).
        #[arg(long)]
        last: Option<usize>,
        /// Print the kept flows and exit instead of following.
        #[arg(long)]
        no_follow: bool,
    },
    /// What endpoints learned through the DNS proxy (toFQDNs).
    Fqdn {
        #[command(subcommand)]
        command: FqdnCommand,
    },
    /// Write the quickstart configuration to a directory, to edit and run.
    Init { dir: PathBuf },
    /// Run only the demo backend (what the quickstart puts behind the proxy).
    DemoBackend {
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
    },
    /// Compile the component on stdin (or the built-in filter `--builtin`)
    /// into the filter cache `--cache`, as `weir run` does, and exit: `weir
    /// run` runs it for a filter its cache lacks, so the compiler's memory
    /// goes with this process.
    #[command(hide = true)]
    CompileFilter {
        #[arg(long)]
        cache: PathBuf,
        #[arg(long)]
        max_instances: Option<u32>,
        #[arg(long)]
        builtin: Option<String>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DatapathMode {
    /// Listeners only (local mode).
    None,
    Ebpf,
}

#[derive(Subcommand)]
enum DatapathCommand {
    /// List the links, maps, rules and routes weir installed.
    Status {
        /// The config directory whose weir.yaml sets `datapath` (default settings otherwise).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Remove what a crashed weir left behind (refuses while its owner runs).
    Cleanup {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum FqdnCommand {
    /// List every learned (endpoint, name, address) and when it expires.
    Cache {
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Subcommand)]
enum FilterCommand {
    /// Write a filter, ready to build and test: DIR/NAME with src/lib.rs,
    /// cases.yaml and a native unit test (Rust), or package.json, filter.js
    /// and cases.yaml (JavaScript).
    New {
        name: String,
        /// http, dns, kafka, memcached, cassandra or stream (JavaScript:
        /// http or dns).
        #[arg(long, default_value = "http")]
        world: String,
        /// rust or js.
        #[arg(long, default_value = "rust")]
        lang: weir::authoring::Lang,
        /// Where to put it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The SDK to depend on: a path (default: this weir's checkout's
        /// filters/sdk or filters/js-sdk) or a git URL.
        #[arg(long)]
        sdk: Option<String>,
    },
    /// Build a filter crate or JavaScript project into a component
    /// (DIR/target/weir/NAME.wasm) with this machine's toolchain; prints
    /// its world and size.
    Build {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Run a filter in weir's host against the cases of a file, then fuzz
    /// it; exit 1 if a case fails or the filter traps, loops or runs out of
    /// memory.
    Test {
        /// A built filter crate (after `weir filter build`) or a .wasm file.
        #[arg(default_value = ".")]
        filter: PathBuf,
        /// Cases: requests, who sends them, what they must get (default:
        /// the crate's cases.yaml, if any).
        #[arg(long)]
        cases: Option<PathBuf>,
        /// Fuzz this many seconds after the cases (0: no fuzzing).
        #[arg(long, default_value_t = 2.0)]
        fuzz: f64,
        /// A call's CPU budget, ms: by default what a policy's filter gets.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// An instance's memory budget, MiB.
        #[arg(long, default_value_t = 32)]
        memory_mib: usize,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate policy files with the checks a reload applies; exit 1 if any fails.
    Check {
        /// A config directory whose weir.yaml names the custom filters `wasm` rules use.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Judge recorded flows (NDJSON from /flows or `weir observe -o json`)
    /// under proposed policy files and print what would change: flows newly
    /// refused and newly allowed, grouped by the rule that makes the
    /// difference. Exit 0: nothing changes; 1: something does; 2: an error.
    /// Every rule is judged as enforced (audited ones too).
    Replay {
        /// The recorded flows.
        #[arg(long)]
        flows: PathBuf,
        /// A config directory whose weir.yaml names the custom filters `wasm` rules use.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn crds(out: Option<&std::path::Path>) -> anyhow::Result<()> {
    for (file, text) in weir::control::kubernetes::crds::all() {
        match out {
            Some(dir) => std::fs::write(dir.join(&file), text)?,
            None => print!("---\n{text}"),
        }
    }
    Ok(())
}

/// The state `weir run --status-file` wrote; an error names what was found.
fn probe(status_file: &std::path::Path, live: bool) -> anyhow::Result<()> {
    let status = std::fs::read_to_string(status_file)
        .map_err(|e| anyhow::anyhow!("{}: {e} (weir has not started)", status_file.display()))?;
    let status = status.trim();
    let ok = status == "serving" || (live && matches!(status, "starting" | "draining" | "handed-over"));
    if !ok {
        anyhow::bail!("weir is {status}");
    }
    println!("{status}");
    Ok(())
}

fn main() -> ExitCode {
    weir::reservations::configure_allocator();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run {
            config,
            datapath,
            kubernetes,
            kubeconfig,
            node_name,
            namespace,
            status_file,
            linger_after_handover,
        } => {
            let kubernetes = kubernetes.then(|| weir::app::KubernetesOptions {
                kubeconfig,
                node_name: node_name.unwrap_or_else(host_name),
                namespace,
                sync_timeout: std::time::Duration::from_secs(30),
            });
            let lifecycle = weir::app::Lifecycle { status_file, linger_after_handover };
            weir::app::run(config, datapath == DatapathMode::Ebpf, kubernetes, lifecycle)
        }
        Command::Probe { status_file, live } => probe(&status_file, live),
        Command::Operator { kubeconfig, config, namespace, identity, identity_grace } => {
            let options = weir::control::kubernetes::operator::OperatorOptions {
                config,
                namespace,
                identity: identity.unwrap_or_else(host_name),
                identity_grace,
            };
            weir::app::operator(kubeconfig, options)
        }
        Command::Crds { out } => crds(out.as_deref()),
        Command::Datapath { command } => datapath_command(command),
        Command::Filter { command } => filter_command(command),
        Command::Policy { command: PolicyCommand::Check { config, files } } => policy_check(config.as_deref(), &files),
        Command::Policy { command: PolicyCommand::Replay { flows, config, output, files } } => {
            policy_replay(config.as_deref(), &files, &flows, output)
        }
        Command::Fqdn { command: FqdnCommand::Cache { admin, output } } => runtime()
            .and_then(|rt| rt.block_on(weir::observe::client::fqdn_cache(admin, matches!(output, Output::Json)))),
        Command::Observe {
            admin,
            verdict,
            protocol,
            from_label,
            to_label,
            http_path,
            dns_name,
            namespace,
            pod,
            output,
            last,
            no_follow,
        } => {
            let mut query = vec![format!("follow={}", !no_follow)];
            let mut push = |key: &str, value: &str| query.push(format!("{key}={}", encode(value)));
            if let Some(v) = &verdict {
                push("verdict", v);
            }
            if let Some(p) = &protocol {
                push("protocol", p);
            }
            for l in &from_label {
                push("from_label", l);
            }
            for l in &to_label {
                push("to_label", l);
            }
            if let Some(p) = &http_path {
                push("http_path", p);
            }
            if let Some(n) = &dns_name {
                push("dns_name", n);
            }
            if let Some(n) = &namespace {
                push("namespace", n);
            }
            if let Some(p) = &pod {
                push("pod", p);
            }
            if let Some(n) = last {
                push("last", &n.to_string());
            }
            let options = weir::observe::client::ObserveOptions {
                admin,
                query: query.join("&"),
                json: matches!(output, Output::Json),
            };
            runtime().and_then(|rt| rt.block_on(weir::observe::client::run(options)))
        }
        Command::Init { dir } => weir::app::write_quickstart(&dir).map(|()| {
            println!("wrote the quickstart to {}; run it with: weir run --config {}", dir.display(), dir.display());
        }),
        Command::CompileFilter { cache, max_instances, builtin } => {
            weir::wasm::compile_into_cache(cache, max_instances, builtin.as_deref())
        }
        Command::DemoBackend { listen } => runtime().and_then(|rt| {
            rt.block_on(async {
                let (_running, never) = tokio::sync::watch::channel(false);
                let addr = weir::demo::serve(listen, never).await?;
                println!("demo backend on http://{addr}");
                tokio::signal::ctrl_c().await?;
                Ok(())
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn datapath_command(command: DatapathCommand) -> anyhow::Result<()> {
    let (DatapathCommand::Status { config } | DatapathCommand::Cleanup { config }) = &command;
    let settings = weir::app::datapath_settings(config.as_deref())?;
    match command {
        DatapathCommand::Status { .. } => {
            for line in weir::datapath::status(&settings) {
                println!("{line}");
            }
            Ok(())
        }
        DatapathCommand::Cleanup { .. } => {
            if let Some(state) = weir::datapath::routing::read_state(&settings.bpffs)
                && state.owner_alive()
                && state.owner != std::process::id()
            {
                anyhow::bail!("weir (pid {}) still owns the datapath: stop it instead", state.owner);
            }
            let errors = weir::datapath::cleanup_pins_and_node(&settings, None);
            for e in &errors {
                eprintln!("{e}");
            }
            if errors.is_empty() { Ok(()) } else { anyhow::bail!("{} item(s) could not be removed", errors.len()) }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn policy_check(config: Option<&Path>, files: &[PathBuf]) -> anyhow::Result<()> {
    let errors = weir::app::check_policies(config, files)?;
    if errors.is_empty() {
        println!("{} file(s) OK", files.len());
        return Ok(());
    }
    for e in &errors {
        eprintln!("{e}");
    }
    anyhow::bail!("{} problem(s) found", errors.len())
}

fn filter_command(command: FilterCommand) -> anyhow::Result<()> {
    use weir::authoring;
    match command {
        FilterCommand::New { name, world, lang, dir, sdk } => {
            let sdk = sdk.unwrap_or_else(|| authoring::default_sdk(lang).display().to_string());
            let root = authoring::new(&name, &world, &dir, &sdk, lang)?;
            println!("wrote {} ({world} world)", root.display());
            match lang {
                authoring::Lang::Rust => {
                    println!("next: cd {} && cargo test && weir filter build && weir filter test", root.display())
                }
                authoring::Lang::JavaScript => {
                    println!("next: cd {} && weir filter build && weir filter test", root.display())
                }
            }
            Ok(())
        }
        FilterCommand::Build { dir } => {
            let built = authoring::build(&dir)?;
            println!(
                "built {}: {} world, {} KiB, in {:.1} s ({})",
                built.component.display(),
                built.world.world(),
                built.bytes.div_ceil(1024),
                built.seconds,
                built.toolchain
            );
            Ok(())
        }
        FilterCommand::Test { filter, cases, fuzz, timeout_ms, memory_mib } => {
            let (name, bytes) = authoring::component_at(&filter)?;
            let cases = cases.or_else(|| {
                let default = filter.join("cases.yaml");
                (filter.is_dir() && default.exists()).then_some(default)
            });
            let timeout_ms = timeout_ms.unwrap_or(weir::wasm::FilterLimits::default().timeout.as_millis() as u64);
            let fuzz = std::time::Duration::try_from_secs_f64(fuzz)
                .map_err(|_| anyhow::anyhow!("--fuzz {fuzz}: give seconds, 0 or more"))?;
            if timeout_ms == 0 || memory_mib == 0 {
                anyhow::bail!("--timeout-ms and --memory-mib must be at least 1");
            }
            let options = authoring::TestOptions {
                cases,
                fuzz,
                limits: weir::wasm::FilterLimits {
                    timeout: std::time::Duration::from_millis(timeout_ms),
                    memory: memory_mib << 20,
                },
            };
            if !authoring::run_tests(&name, &bytes, &options)? {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn policy_replay(config: Option<&Path>, files: &[PathBuf], flows: &Path, output: Output) -> anyhow::Result<()> {
    let report = match weir::app::replay_flows(config, files, flows) {
        Ok(Ok(report)) => report,
        Ok(Err(errors)) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{} problem(s) in the proposed policies; nothing replayed", errors.len());
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    match output {
        Output::Text => print!("{}", report.to_text()),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    std::process::exit(if report.changes() { 1 } else { 0 })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Kubernetes names nodes after their host names unless told otherwise.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}
