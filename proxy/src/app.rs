//! `weir run`, `weir init` and `weir policy check`: the binary's edges.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;

use crate::admin::Scope;
use crate::config::{CONFIG_FILE, POLICY_DIR, WeirConfig};
use crate::control::kubernetes::NodeOptions;
use crate::control::{Controller, KubernetesSource, LocalSource, Sources};
use crate::engines::state::{ProxyState, ReloadStatus};
use crate::model::fqdn::FqdnCache;
use crate::model::{ModelInputs, PolicyModel};
use crate::observe::flow::FlowLog;
use crate::observe::metrics::{HandoverLabels, Metrics};
use crate::policy::{PolicyError, document};
use crate::protocol::Protocol;
use crate::wasm::{FilterRuntime, RuntimeOptions};
use weir_datapath_common::{PROTO_TCP, PROTO_UDP};

/// The quickstart, embedded so `weir run` works with no files at all.
const QUICKSTART: &[(&str, &str)] = &[
    (CONFIG_FILE, include_str!("../../examples/quickstart/weir.yaml")),
    ("policies/demo-api.yaml", include_str!("../../examples/quickstart/policies/demo-api.yaml")),
    ("policies/demo-admin.yaml", include_str!("../../examples/quickstart/policies/demo-admin.yaml")),
];
const QUICKSTART_TRY: &str = include_str!("../../examples/quickstart/TRY.txt");

pub fn write_quickstart(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join(POLICY_DIR)).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in QUICKSTART {
        let path = dir.join(name);
        if path.exists() {
            anyhow::bail!("{} exists; not overwriting it", path.display());
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Where `weir run` without --config keeps the quickstart: reused across
/// runs, so edits to its policies persist.
fn quickstart_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    // SAFETY: getuid has no preconditions.
    let dir = base.join(format!("weir-quickstart-{}", unsafe { libc::getuid() }));
    if !dir.join(CONFIG_FILE).exists() {
        write_quickstart(&dir)?;
    }
    Ok(dir)
}

/// The `datapath` settings of a config directory (defaults without one).
pub fn datapath_settings(config_dir: Option<&Path>) -> anyhow::Result<crate::config::DatapathConfig> {
    let Some(dir) = config_dir else { return Ok(Default::default()) };
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(WeirConfig::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?.datapath)
}

/// Where the Kubernetes source finds the API server (`weir run --kubernetes`).
pub struct KubernetesOptions {
    /// A kubeconfig; `None`: `$KUBECONFIG`, else the pod's service account.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (`--node-name`, `$NODE_NAME`, else the host name).
    pub node_name: String,
    /// weir's own namespace (`--namespace`, `$POD_NAMESPACE`): where the
    /// ConfigMaps WasmFilter objects name live.
    pub namespace: String,
    /// How long to wait for the first list of every kind.
    pub sync_timeout: Duration,
}

/// How a run begins and ends beside its configuration (`handover`).
#[derive(Clone, Debug, Default)]
pub struct Lifecycle {
    /// Where `weir probe` reads this process's state (`serving`, `draining`,
    /// `handed-over`); none by default.
    pub status_file: Option<PathBuf>,
    /// After handing the node to a successor and draining, stay until
    /// stopped instead of exiting: a DaemonSet's container that exits is
    /// restarted, and would take the node back.
    pub linger_after_handover: bool,
}

pub fn run(
    config: Option<PathBuf>,
    ebpf: bool,
    kubernetes: Option<KubernetesOptions>,
    lifecycle: Lifecycle,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let (dir, quickstart) = match config {
        Some(dir) => (dir, false),
        None => (quickstart_dir()?, true),
    };
    // before anything opens descriptors: the budget follows from the limit
    let descriptors = crate::limits::Descriptors::raise();
    crate::reservations::warn_if_strict_overcommit();
    // before anything binds: a running weir hands over the sockets it serves
    let handover_socket = crate::config::default_state_dir().map(|d| crate::handover::socket_path(&d, &dir));
    let predecessor = match &handover_socket {
        Some(path) => crate::handover::Predecessor::connect(path, &dir)?,
        None => None,
    };
    if predecessor.is_some() {
        crate::handover::sockets::hold_until_ready();
    }
    // the embedded default: the file source alone; with a cluster, its
    // policies beside the files (the node configuration stays weir.yaml)
    let changed = Arc::new(tokio::sync::Notify::new());
    let metrics = Arc::new(Metrics::default());
    let mut sources: Vec<Arc<dyn crate::control::Source>> = vec![Arc::new(LocalSource::new(&dir))];
    if let Some(options) = kubernetes {
        let client = crate::control::kubernetes::ApiClient::configure(options.kubeconfig.as_deref())?
            .with_agent(&options.node_name)
            .counted(metrics.kubernetes.requests.clone());
        tracing::info!(server = %client.server, node = %options.node_name, "following the Kubernetes API server");
        let node = NodeOptions { node: options.node_name, namespace: options.namespace, datapath: ebpf };
        let source = KubernetesSource::start(client, node, changed.clone(), metrics.kubernetes.clone())?;
        // never a first model from half the cluster's policies and pods
        source.wait_synced(options.sync_timeout)?;
        sources.push(source);
    }
    let sources = Sources::new(sources);
    let config = sources.read().map_err(|errors| invalid(&errors))?.inputs.config;
    // read at start only, as the rest of `datapath`
    crate::identity::set_nat64_prefixes(&config.datapath.nat64_prefixes);
    crate::net::set_marks(config.datapath.marks.marks());
    let workers = config.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    // One worker needs no work stealing: a current-thread scheduler spares
    // every wakeup its cross-thread bookkeeping.
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    let runtime = builder
        .thread_name("weir-worker")
        .on_thread_park(crate::reservations::collect_when_idle)
        .enable_all()
        .build()?;
    let start = Start { started, predecessor, handover_socket, lifecycle, quickstart };
    runtime.block_on(serve(sources, changed, metrics, &dir, config, ebpf, descriptors, start))
}

/// What `serve` needs to know about how this process began.
struct Start {
    started: std::time::Instant,
    predecessor: Option<crate::handover::Predecessor>,
    handover_socket: Option<PathBuf>,
    lifecycle: Lifecycle,
    quickstart: bool,
}

/// `weir operator`: until the process is stopped.
pub fn operator(
    kubeconfig: Option<PathBuf>,
    options: crate::control::kubernetes::operator::OperatorOptions,
) -> anyhow::Result<()> {
    let client = crate::control::kubernetes::ApiClient::configure(kubeconfig.as_deref())?;
    tracing::info!(server = %client.server, "weir operator: following the Kubernetes API server");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        tokio::select! {
            result = crate::control::kubernetes::operator::run(client, options) => result,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

fn invalid(errors: &[impl std::fmt::Display]) -> anyhow::Error {
    for e in errors {
        eprintln!("{e}");
    }
    anyhow::anyhow!("the configuration is invalid ({} problem(s)); nothing was started", errors.len())
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    sources: Sources,
    changed: Arc<tokio::sync::Notify>,
    metrics: Arc<Metrics>,
    config_dir: &std::path::Path,
    config: WeirConfig,
    ebpf: bool,
    descriptors: crate::limits::Descriptors,
    start: Start,
) -> anyhow::Result<()> {
    let Start { started, predecessor, handover_socket, lifecycle, quickstart } = start;
    let status = crate::handover::StatusFile::new(lifecycle.status_file.clone());
    status.write("starting");
    let options =
        RuntimeOptions { cache_dir: config.filter_cache_dir(), max_instances: config.limits.filter_instances };
    // filters missing from the cache are compiled by a child `weir`: the
    // compiler's memory (some 80 MiB that the allocator would keep) is not ours
    crate::wasm::compile_in_child_processes(config.limits.filter_instances);
    let runtime = Arc::new(FilterRuntime::new(metrics.clone(), options)?);

    // Learned addresses come back before anything serves: a restarted weir
    // must not refuse connections its pods were allowed a moment ago.
    let fqdn = Arc::new(FqdnCache::new(crate::control::fqdn_limits(&config), config.dns.cache_file()));
    match fqdn.restore() {
        Ok(0) => {}
        Ok(n) => tracing::info!(addresses = n, file = ?fqdn.file(), "FQDN cache restored"),
        Err(e) => tracing::warn!("FQDN cache not restored (starting empty): {e}"),
    }
    // what the running weir's DNS proxy learns while this one starts
    let how = match &predecessor {
        Some(p) => crate::handover::Start::TookOver { pid: p.pid, version: p.version.clone() },
        None => crate::handover::Start::Cold,
    };
    let handover = Arc::new(crate::handover::Handover::new(how));
    let fqdn_applied = tokio::sync::watch::Sender::new(0);
    let taking = match predecessor {
        Some(predecessor) => Some(predecessor.follow(fqdn.clone(), fqdn_applied.subscribe())?),
        None => None,
    };
    // subscribed before the first build: what is learned while it runs is
    // applied after it
    let mut fqdn_changes = fqdn.subscribe();
    let (built, fingerprint) = Controller::build(&sources, &runtime, &fqdn, 1, &Default::default())
        .await
        .map_err(|errors| invalid(&errors))?;
    let state = Arc::new(ProxyState {
        model_changed: tokio::sync::watch::Sender::new(0),
        model: ArcSwap::new(built.model.clone()),
        flows: FlowLog::new(config.flow_history, config.log_flows)
            .counting_namespaces(metrics.namespace_flows.clone())
            .counting_audits(metrics.policy_audited.clone()),
        metrics,
        runtime,
        upstreams: Default::default(),
        fqdn: fqdn.clone(),
        dns_upstreams: Default::default(),
        datapath_active: std::sync::atomic::AtomicBool::new(ebpf),
        fqdn_applied,
        reload: std::sync::Mutex::new(ReloadStatus::default()),
        active_connections: Default::default(),
        cql_prepared: Default::default(),
        limits: crate::limits::Limits::new(descriptors),
        handover: handover.clone(),
    });
    // the transparent listeners, the admin and metrics listeners and the
    // demo backend stop accepting together (a stop, or a successor serving
    // the same sockets)
    let (stop_accepting, accepting_stopped) = tokio::sync::watch::channel(false);
    if let Some(addr) = config.demo_backend {
        let addr = crate::demo::serve(addr, accepting_stopped.clone())
            .await
            .with_context(|| format!("demo backend on {addr}"))?;
        tracing::info!(%addr, "demo backend listening");
    }
    let mut controller = Controller::new(sources, state.clone());
    let mut kernel_events = None;
    if ebpf {
        let mut datapath = crate::datapath::Datapath::start(&config.datapath, taking.is_some())?;
        // a start that fails from here on takes down what it installed
        let plumbed = start_transparent_listeners(&mut datapath, &config.datapath, &state, &accepting_stopped);
        let kernel = match plumbed.and_then(|()| datapath.take_events()) {
            Ok(kernel) => kernel,
            Err(e) => {
                abandon_datapath(Some(datapath), taking.is_some());
                return Err(e);
            }
        };
        let events = crate::datapath::events::run(state.clone(), kernel, datapath.rules.clone());
        kernel_events = Some(tokio::spawn(events));
        controller.datapath = Some(datapath);
        tracing::info!(ports = ?config.datapath.proxy_ports().collect::<Vec<_>>(), "eBPF datapath loaded; redirected connections arrive at the transparent listeners");
    }
    if let Err(errors) = controller.install(built, fingerprint) {
        abandon_datapath(controller.datapath.take(), taking.is_some());
        return Err(invalid(&errors));
    }
    let listeners = [(config.admin, Scope::Admin, "admin API"), (config.metrics, Scope::Metrics, "metrics listener")];
    for (addr, scope, what) in listeners {
        let Some(addr) = addr else { continue };
        let served = crate::admin::serve(state.clone(), addr, scope, accepting_stopped.clone()).await;
        if let Err(e) = served {
            abandon_datapath(controller.datapath.take(), taking.is_some());
            return Err(anyhow::Error::from(e).context(format!("{what} on {addr}")));
        }
    }
    crate::handover::sockets::drop_unclaimed();
    crate::handover::sockets::serve();
    let mut predecessor_released = None;
    if let Some(taking) = &taking {
        taking.ready();
        predecessor_released = Some(taking.released.clone());
        state.metrics.handover.handovers.get_or_create(&HandoverLabels { result: "took_over" }).inc();
        tokio::spawn(follow_predecessor_drain(state.clone(), taking.finished.clone()));
    }
    let startup = started.elapsed();
    state.metrics.handover.start_seconds.set(startup.as_secs_f64());
    // this process is the one a successor asks from now on
    let mut successors = handover_socket.as_ref().and_then(|path| {
        let context = Arc::new(crate::handover::successor::HandoverContext {
            handover: handover.clone(),
            fqdn: fqdn.clone(),
            config: config_dir.to_path_buf(),
        });
        crate::handover::successor::listen(path, context)
            .inspect_err(|e| tracing::warn!(socket = %path.display(), "no hand-over socket (a restart will not be hitless): {e}"))
            .ok()
    });
    status.write("serving");
    tracing::info!(
        config = %config_dir.display(),
        version = crate::observe::metrics::VERSION,
        commit = crate::observe::metrics::COMMIT,
        how = %handover.describe_start(),
        took = ?startup,
        "weir is running; edit the policies there and they reload on save"
    );
    if quickstart {
        eprintln!("\n{QUICKSTART_TRY}");
    }

    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(keep_fqdn_cache(state.clone()));
    let mut interval = tokio::time::interval(config.reload_interval.max(Duration::from_millis(100)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut handed_over = false;
    loop {
        tokio::select! {
            // a new weir serves the node now, or gave up before it did
            Some(event) = next_handover_event(&mut successors) => match event {
                crate::handover::successor::Event::HandedOver { .. } => {
                    handed_over = true;
                    break;
                }
                crate::handover::successor::Event::Aborted { .. } => {
                    state.metrics.handover.handovers.get_or_create(&HandoverLabels { result: "aborted" }).inc();
                    if let Some(datapath) = &mut controller.datapath
                        && let Err(e) = datapath.reclaim()
                    {
                        tracing::error!("taking the datapath back: {e:#}");
                    }
                    controller.reload(true).await;
                }
            },
            _ = interval.tick() => controller.reload(false).await,
            // a source that knows when it changed (the API server's watch)
            _ = changed.notified() => controller.reload(false).await,
            // learned or expired addresses: the kernel's toFQDNs entries follow
            Ok(()) = fqdn_changes.changed(), if controller.datapath.is_some() => {
                let generation = *fqdn_changes.borrow_and_update();
                controller.apply_fqdn(generation);
            }
            // the weir this one replaced writes no map any more: whatever it
            // wrote last is rewritten from this process's model
            Some(()) = released(&mut predecessor_released) => {
                controller.apply_fqdn(state.fqdn.generation());
            }
            _ = hangup.recv() => controller.reload(true).await,
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    // stop accepting and reading: a successor (if any) serves these sockets now
    controller.listeners.stop_all();
    let _ = stop_accepting.send(true);
    if handed_over {
        status.write("draining");
        // the kernel's events and conntrack collection are the successor's
        if let Some(events) = kernel_events {
            events.abort();
        }
        // the maps and programs stay as the successor keeps them
        drop(controller.datapath.take());
        if let Some(successors) = &successors {
            successors.released();
        }
        tracing::info!("handed over: no new connections here; letting open ones finish");
    } else {
        tracing::info!("stopping: no new connections; letting open ones finish");
        if let Some(datapath) = controller.datapath.take() {
            for e in datapath.shutdown() {
                tracing::warn!("datapath cleanup: {e}");
            }
            tracing::info!("datapath removed");
        }
    }
    let _ = state.handover.draining.send(true);
    let (finished, cut) = drain(&state).await;
    if handed_over {
        if let Some(successors) = &successors {
            successors.finish(finished, cut).await;
        }
        if lifecycle.linger_after_handover {
            status.write("handed-over");
            tracing::info!("drained; staying until stopped (--linger-after-handover)");
            let _ = terminate.recv().await;
        }
        // the cache file is the successor's now
        return Ok(());
    }
    if let Some(successors) = &successors {
        successors.remove();
    }
    if let Err(e) = state.fqdn.save() {
        tracing::warn!(file = ?state.fqdn.file(), "FQDN cache not saved: {e}");
    }
    Ok(())
}

/// One transparent listener per TCP engine (the programs pick the engine by
/// the port a policy entry redirects to) and the DNS proxy's own pair, TCP
/// and UDP on one port; for IPv4, and for IPv6 where the node has it
/// (without, IPv6 L7 fails closed). Each registered with the datapath and
/// served until `stopped`.
fn start_transparent_listeners(
    datapath: &mut crate::datapath::Datapath,
    config: &crate::config::DatapathConfig,
    state: &Arc<ProxyState>,
    stopped: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    for ipv6 in [false, true] {
        for protocol in Protocol::ALL {
            let bind = match ipv6 {
                false => crate::datapath::proxy_bind(config, protocol),
                true => crate::datapath::proxy_bind6(config, protocol),
            };
            let sockets = crate::engines::listeners::bind_transparent(bind).and_then(|tcp| {
                let udp = match protocol {
                    Protocol::Dns => Some(crate::engines::dns::bind_transparent_udp(bind)?),
                    _ => None,
                };
                Ok((tcp, udp))
            });
            let (tcp, udp) = match sockets {
                Ok(sockets) => sockets,
                Err(e) if ipv6 => {
                    tracing::warn!(%bind, "no IPv6 transparent {} sockets: {e}", protocol.name());
                    continue;
                }
                Err(e) => {
                    return Err(
                        anyhow::Error::from(e).context(format!("transparent {} sockets on {bind}", protocol.name()))
                    );
                }
            };
            datapath.register_proxy_socket(bind, PROTO_TCP, &tcp)?;
            let stopped = stopped.clone();
            if let Some(udp) = udp {
                datapath.register_proxy_socket(bind, PROTO_UDP, &udp)?;
                tokio::spawn(crate::engines::dns::serve_transparent_tcp(state.clone(), tcp, stopped.clone()));
                tokio::spawn(crate::engines::dns::serve_transparent_udp(state.clone(), udp, stopped));
                continue;
            }
            // HTTP's writes to local pods may be spliced (the other
            // engines splice(2) or watch their sockets' fill levels)
            let splice = datapath.splicer().filter(|_| protocol == Protocol::Http);
            tokio::spawn(crate::engines::listeners::serve_transparent(state.clone(), protocol, tcp, splice, stopped));
        }
    }
    Ok(())
}

/// A start that fails once the datapath is installed takes it down again,
/// unless this weir was taking over from a running one: that one stays in
/// charge of what this one swapped in.
fn abandon_datapath(datapath: Option<crate::datapath::Datapath>, taking_over: bool) {
    if let Some(datapath) = datapath
        && !taking_over
    {
        for e in datapath.shutdown() {
            tracing::warn!("datapath cleanup after a failed start: {e}");
        }
    }
}

/// Wait for open connections and UDP queries to finish, up to the
/// deadline. Returns whether all did, and how many connections are cut.
async fn drain(state: &ProxyState) -> (bool, usize) {
    let started = tokio::time::Instant::now();
    let timeout = state.model.load().config.drain_timeout;
    let deadline = started + timeout;
    let open = || state.active_connections.load(Ordering::Relaxed) + state.handover.queries();
    while open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cut = state.active_connections.load(Ordering::Relaxed);
    if open() == 0 {
        tracing::info!(took = ?started.elapsed(), "drained");
        (true, 0)
    } else {
        // their peers see the connection close (a reset where data was unread)
        tracing::warn!(
            connections = cut,
            queries = state.handover.queries(),
            "drain deadline ({timeout:?}) passed; closing what is still open"
        );
        (false, cut)
    }
}

/// Resolves once when the replaced weir released the maps.
async fn released(receiver: &mut Option<tokio::sync::watch::Receiver<bool>>) -> Option<()> {
    let Some(rx) = receiver else { return std::future::pending().await };
    let result = rx.wait_for(|r| *r).await.is_ok();
    *receiver = None;
    result.then_some(())
}

async fn next_handover_event(
    successors: &mut Option<crate::handover::successor::Successors>,
) -> Option<crate::handover::successor::Event> {
    match successors {
        Some(successors) => successors.events.recv().await,
        None => std::future::pending().await,
    }
}

/// Report the replaced weir's drain (the metric and the log).
async fn follow_predecessor_drain(
    state: Arc<ProxyState>,
    mut finished: tokio::sync::watch::Receiver<Option<(bool, usize)>>,
) {
    state.metrics.handover.predecessor_draining.set(1);
    if let Ok(done) = finished.wait_for(|f| f.is_some()).await
        && let Some((_, cut)) = *done
    {
        state.metrics.handover.predecessor_cut_connections.inc_by(cut as u64);
    }
    state.metrics.handover.predecessor_draining.set(0);
}

/// Forget expired addresses (often, so a TTL is kept to within a tick) and
/// save the cache when it changed (less often: it is a file write).
async fn keep_fqdn_cache(state: Arc<ProxyState>) {
    const EXPIRE_EVERY: Duration = Duration::from_millis(250);
    const SAVE_EVERY: u32 = 4;
    let mut interval = tokio::time::interval(EXPIRE_EVERY);
    let mut ticks = 0u32;
    loop {
        interval.tick().await;
        if state.handover.handed_over() {
            return; // the cache file is the successor's
        }
        state.fqdn.expire();
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(SAVE_EVERY) {
            state.metrics.fqdn_addresses.set(state.fqdn.len() as i64);
            let fqdn = state.fqdn.clone();
            let saved = tokio::task::spawn_blocking(move || fqdn.save()).await;
            if let Ok(Err(e)) = saved {
                tracing::warn!(file = ?state.fqdn.file(), "FQDN cache not saved: {e}");
            }
        }
    }
}

/// `weir policy check`: the same parsing and validation a reload applies.
pub fn check_policies(config_dir: Option<&Path>, files: &[PathBuf]) -> anyhow::Result<Vec<PolicyError>> {
    Ok(offline_model(config_dir, files)?.err().unwrap_or_default())
}

/// Judge the flows of `flows` (NDJSON, as `/flows` and `weir observe -o
/// json` write them) again under the policies of `files`.
pub fn replay_flows(
    config_dir: Option<&Path>,
    files: &[PathBuf],
    flows: &Path,
) -> anyhow::Result<Result<crate::replay::Report, Vec<PolicyError>>> {
    let text = std::fs::read_to_string(flows).with_context(|| format!("reading {}", flows.display()))?;
    let mut records = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let record: crate::observe::flow::FlowRecord = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not a flow record", flows.display(), n + 1))?;
        records.push(record);
    }
    Ok(offline_model(config_dir, files)?.map(|model| crate::replay::replay(&model, records)))
}

/// The model `files` make with `config_dir`'s weir.yaml (its filters), and
/// no listeners: nothing is bound.
fn offline_model(
    config_dir: Option<&Path>,
    files: &[PathBuf],
) -> anyhow::Result<Result<PolicyModel, Vec<PolicyError>>> {
    let (config, config_dir, config_file) = match config_dir {
        Some(dir) => {
            let path = dir.join(CONFIG_FILE);
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let config = WeirConfig::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            (config, dir.to_path_buf(), path.display().to_string())
        }
        None => (WeirConfig::parse("{}").expect("defaults parse"), PathBuf::from("."), "(no weir.yaml)".into()),
    };
    crate::identity::set_nat64_prefixes(&config.datapath.nat64_prefixes);
    crate::net::set_marks(config.datapath.marks.marks());
    let loaded = document::load_files(
        files.iter().map(|file| (file.display().to_string(), std::fs::read_to_string(file).map_err(|e| e.to_string()))),
    );
    let (documents, errors) = (loaded.documents, loaded.errors);
    let metrics = Arc::new(Metrics::default());
    let runtime = Arc::new(FilterRuntime::new(
        metrics,
        RuntimeOptions { cache_dir: config.filter_cache_dir(), max_instances: None },
    )?);
    // only policies are judged: listeners are not bound, so drop them
    let mut config = config;
    config.listeners.clear();
    let inputs = ModelInputs { config, config_dir, config_file, documents };
    let fqdn = Arc::new(FqdnCache::new(Default::default(), None));
    Ok(match PolicyModel::build(inputs, &runtime, &fqdn, 0) {
        Ok(model) if errors.is_empty() => Ok(model),
        Ok(_) => Err(errors),
        Err(mut more) => {
            let mut all = errors;
            all.append(&mut more);
            Err(all)
        }
    })
}
