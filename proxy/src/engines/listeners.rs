//! The set of running listeners, reconciled with each new model.
//!
//! Sockets use SO_REUSEPORT so a changed listener can bind its new socket
//! before the old one stops accepting: no window where connections are refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::context::next_connection_id;
use crate::engines::http::Target;
use crate::engines::state::ProxyState;
use crate::limits::{Admitted, ListenerLimits};
use crate::model::PolicyModel;
use crate::observe::flow::{FlowRecord, Verdict};
use crate::observe::metrics::RefusedLabels;
use crate::protocol::Protocol;

/// A listener's sockets, bound and not yet serving.
pub enum Bound {
    /// Every TCP protocol: its engine is picked per accepted connection.
    Tcp(Arc<TcpListener>),
    Dns(crate::engines::dns::DnsSockets),
}

/// Listeners bound by [`ListenerSet::prepare`], to hand to [`ListenerSet::commit`].
pub type Prepared = Vec<(String, SocketAddr, Protocol, Bound)>;

struct Running {
    bind: SocketAddr,
    protocol: Protocol,
    stop: watch::Sender<bool>,
}

#[derive(Default)]
pub struct ListenerSet {
    running: HashMap<String, Running>,
}

impl ListenerSet {
    /// Bind what the model needs that is not bound yet. Nothing changes if any
    /// bind fails, so the caller can reject the model.
    pub fn prepare(&self, model: &PolicyModel) -> Result<Prepared, Vec<String>> {
        let mut bound = Vec::new();
        let mut errors = Vec::new();
        for (i, (name, listener)) in model.listeners.iter().enumerate() {
            let (bind, protocol) = (listener.config.bind, listener.config.protocol);
            if self.running.get(name).is_some_and(|r| r.bind == bind && r.protocol == protocol) {
                continue;
            }
            let sockets = match protocol {
                Protocol::Dns => crate::engines::dns::bind(bind).map(Bound::Dns),
                _ => bind_stream(bind).map(Bound::Tcp),
            };
            match sockets {
                Ok(sockets) => bound.push((name.clone(), bind, protocol, sockets)),
                Err(e) => errors.push(format!("listeners[{i}] ({name}): cannot listen on {bind}: {e}")),
            }
        }
        if errors.is_empty() { Ok(bound) } else { Err(errors) }
    }

    /// Start the prepared listeners and stop the ones the model dropped or moved.
    pub fn commit(&mut self, state: &Arc<ProxyState>, model: &PolicyModel, bound: Prepared) {
        for (name, bind, protocol, sockets) in bound {
            let (stop, stopped) = watch::channel(false);
            let shared_name: Arc<str> = Arc::from(name.as_str());
            match sockets {
                Bound::Tcp(listener) => {
                    let state = state.clone();
                    tokio::spawn(accept_loop(shared_name.clone(), listener, stopped, move |stream, peer| {
                        let target = Target::Listener(shared_name.clone());
                        if let Some(admitted) = admit(&state, &target, protocol, &stream, peer) {
                            serve_tcp(protocol, state.clone(), target, stream, peer, admitted);
                        }
                    }));
                }
                Bound::Dns(sockets) => {
                    tokio::spawn(crate::engines::dns::serve_udp(
                        state.clone(),
                        shared_name.clone(),
                        sockets.udp,
                        stopped.clone(),
                    ));
                    tokio::spawn(crate::engines::dns::serve_tcp(state.clone(), shared_name, sockets.tcp, stopped));
                }
            }
            tracing::info!(listener = %name, %bind, ?protocol, "listening");
            if let Some(old) = self.running.insert(name, Running { bind, protocol, stop }) {
                let _ = old.stop.send(true);
            }
        }
        self.running.retain(|name, running| {
            let keep = model.listeners.contains_key(name);
            if !keep {
                tracing::info!(listener = %name, bind = %running.bind, "listener removed");
                let _ = running.stop.send(true);
            }
            keep
        });
    }

    pub fn stop_all(&mut self) {
        for (_, running) in self.running.drain() {
            let _ = running.stop.send(true);
        }
    }
}

/// A TCP listener with `SO_REUSEPORT` (see the module comment), or the one
/// a previous weir handed over for this address (`handover`).
pub fn bind_stream(addr: SocketAddr) -> std::io::Result<Arc<TcpListener>> {
    crate::handover::sockets::tcp_listener(addr, false, || bind_socket(addr, false))
}

/// The listener the eBPF datapath assigns redirected connections to.
/// `IP_TRANSPARENT`: it accepts connections addressed to other hosts, and the
/// accepted socket's local address is where the client was going.
pub fn bind_transparent(addr: SocketAddr) -> std::io::Result<Arc<TcpListener>> {
    crate::handover::sockets::tcp_listener(addr, true, || bind_socket(addr, true))
}

fn bind_socket(addr: SocketAddr, transparent: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    if transparent {
        socket.set_ip_transparent(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A connection the datapath redirected to a transparent listener.
pub struct Redirected {
    pub stream: tokio::net::TcpStream,
    pub peer: SocketAddr,
    /// Where the client was going (the accepted socket's local address).
    pub original_destination: SocketAddr,
    /// The sender's identity, from the mark (`None`: not marked by the datapath).
    pub source_identity: Option<u32>,
}

/// Accept connections the datapath redirected, until told to stop, and hand
/// each to `handle`. Connections dialled to the listener's own address were
/// not redirected (there is nowhere to forward them) and are closed.
pub async fn transparent_accept_loop(
    listener: Arc<TcpListener>,
    mut stop: watch::Receiver<bool>,
    mut handle: impl FnMut(Redirected),
) {
    let own = listener.local_addr().ok();
    crate::handover::sockets::until_serving().await;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(original_destination) = stream.local_addr() else { continue };
                    if Some(original_destination) == own {
                        tracing::debug!(%peer, "direct connection to a transparent listener refused");
                        continue;
                    }
                    let source_identity = crate::net::sender_identity(socket2::SockRef::from(&stream).mark().unwrap_or(0));
                    handle(Redirected { stream, peer, original_destination, source_identity });
                }
                Err(e) => {
                    tracing::warn!("transparent accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// One engine's side of the datapath: the connections the programs assigned
/// to `protocol`'s transparent listener, to that engine.
pub async fn serve_transparent(
    state: Arc<ProxyState>,
    protocol: Protocol,
    listener: Arc<TcpListener>,
    splice: Option<Arc<crate::net::Splicer>>,
    stop: watch::Receiver<bool>,
) {
    transparent_accept_loop(listener, stop, |c| {
        let target =
            Target::Transparent { original_destination: c.original_destination, source_identity: c.source_identity };
        if let Some(admitted) = admit(&state, &target, protocol, &c.stream, c.peer) {
            // before the proxy's first write on it (docs/datapath.md, splicing)
            if let Some(splice) = &splice {
                splice.add(&c.stream, c.original_destination, c.peer);
            }
            serve_tcp(protocol, state.clone(), target, c.stream, c.peer, admitted);
        }
    })
    .await
}

/// Count an accepted connection against the connection limits
/// (`limits.rs`), or refuse it: reset at once, with a flow record and
/// `weir_connections_refused_total`. Refusing costs the descriptor only for
/// a moment, and the budget leaves room for it.
pub fn admit(
    state: &Arc<ProxyState>,
    target: &Target,
    protocol: Protocol,
    stream: &tokio::net::TcpStream,
    peer: SocketAddr,
) -> Option<Admitted> {
    let model = state.model.load();
    // the listener is gone: the engine would close it at once anyway
    let resolved = model.resolve(target, peer, protocol)?;
    let limits = ListenerLimits::of(&model.config.limits, &resolved.listener.config.limits);
    let name = target.name();
    match state.limits.admit(&model.config.limits, &limits, &name, &resolved.source, peer) {
        Ok(admitted) => Some(admitted),
        Err(refused) => {
            let labels = RefusedLabels { listener: name.to_string(), reason: refused.label() };
            state.metrics.connections_refused.get_or_create(&labels).inc();
            let context = resolved.context(next_connection_id(), peer, &name);
            state.flows.record(FlowRecord {
                reason: Some(refused.to_string()),
                ..FlowRecord::of(&context, protocol, Verdict::Error)
            });
            let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
            None
        }
    }
}

/// Hand an accepted connection to its protocol's engine; it stays counted
/// (`admitted`) until the engine is done with it.
fn serve_tcp(
    protocol: Protocol,
    state: Arc<ProxyState>,
    target: Target,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
) {
    // one task per engine's own future: a task is as large as its future's
    // largest state, and one future matching over every engine would give
    // each connection the largest engine's size
    fn spawn(admitted: Admitted, engine: impl Future<Output = ()> + Send + 'static) {
        tokio::spawn(async move {
            let _admitted = admitted;
            engine.await
        });
    }
    match protocol {
        Protocol::Http => spawn(admitted, crate::engines::http::server::serve(state, target, stream, peer)),
        Protocol::Kafka => spawn(admitted, crate::engines::kafka::serve(state, target, stream, peer)),
        Protocol::Memcached => spawn(admitted, crate::engines::memcached::serve(state, target, stream, peer)),
        Protocol::Cassandra => spawn(admitted, crate::engines::cassandra::serve(state, target, stream, peer)),
        Protocol::Stream => spawn(admitted, crate::engines::stream::serve(state, target, stream, peer)),
        // bound as Bound::Dns, never here
        Protocol::Dns => unreachable!("DNS listeners serve their own sockets"),
    }
}

/// Accept until told to stop; connections already accepted run to completion.
async fn accept_loop(
    name: Arc<str>,
    listener: Arc<TcpListener>,
    mut stop: watch::Receiver<bool>,
    mut handle: impl FnMut(tokio::net::TcpStream, SocketAddr),
) {
    crate::handover::sockets::until_serving().await;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => handle(stream, peer),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning
                    tracing::warn!(listener = &*name, "accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}
