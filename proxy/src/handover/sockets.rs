//! The node's listening sockets as the hand-over moves them: every socket
//! weir binds is registered here (weakly: a listener a reload stops is
//! gone from the registry with it), and a starting weir that took its
//! predecessor's sockets finds them here before it binds anything itself.
//!
//! The sockets move as descriptors (`SCM_RIGHTS`), so the new process
//! holds the *same* sockets: their accept queues, the connections waiting
//! in them, and the datapath's `PROXY_SOCKS` entries, which name sockets,
//! not processes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use serde::{Deserialize, Serialize};

/// What a socket is, as both processes name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SocketKey {
    pub kind: Kind,
    /// `IP_TRANSPARENT`: the datapath's proxy sockets.
    pub transparent: bool,
    pub addr: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A listening TCP socket.
    Tcp,
    Udp,
}

impl std::fmt::Display for SocketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Tcp => "tcp",
            Kind::Udp => "udp",
        };
        let transparent = if self.transparent { " (transparent)" } else { "" };
        write!(f, "{kind} {}{transparent}", self.addr)
    }
}

type Shared = Weak<dyn AsFd + Send + Sync>;

#[derive(Default)]
struct Sockets {
    /// What this process serves now.
    live: Vec<(SocketKey, Shared)>,
    /// What a predecessor handed over and no bind has claimed yet.
    inherited: HashMap<SocketKey, OwnedFd>,
}

fn sockets() -> &'static Mutex<Sockets> {
    static SOCKETS: OnceLock<Mutex<Sockets>> = OnceLock::new();
    SOCKETS.get_or_init(Default::default)
}

/// Record a socket this process serves, for a successor to take.
pub fn register<S: AsFd + Send + Sync + 'static>(key: SocketKey, socket: &Arc<S>) {
    let weak: Weak<S> = Arc::downgrade(socket);
    let mut sockets = sockets().lock().unwrap();
    sockets.live.retain(|(_, s)| s.strong_count() > 0);
    sockets.live.push((key, weak));
}

/// Duplicates of the sockets this process still serves.
pub fn live() -> Vec<(SocketKey, OwnedFd)> {
    let sockets = sockets().lock().unwrap();
    let mut out = Vec::new();
    for (key, weak) in &sockets.live {
        if let Some(socket) = weak.upgrade()
            && let Ok(fd) = socket.as_fd().try_clone_to_owned()
            && !out.iter().any(|(k, _)| k == key)
        {
            out.push((*key, fd));
        }
    }
    out
}

/// Keep what a predecessor sent until a bind asks for it.
pub fn inherit(handed: Vec<(SocketKey, OwnedFd)>) {
    let mut sockets = sockets().lock().unwrap();
    for (key, fd) in handed {
        sockets.inherited.insert(key, fd);
    }
}

/// The predecessor's socket for `key`, if it sent one.
pub fn take_inherited(key: SocketKey) -> Option<OwnedFd> {
    let fd = sockets().lock().unwrap().inherited.remove(&key)?;
    tracing::debug!(socket = %key, "serving a socket the previous weir handed over");
    Some(fd)
}

/// Close what the predecessor sent and this configuration does not serve.
pub fn drop_unclaimed() {
    let unclaimed: Vec<SocketKey> = sockets().lock().unwrap().inherited.drain().map(|(k, _)| k).collect();
    for key in unclaimed {
        tracing::info!(socket = %key, "the previous weir served this; this configuration does not: closed");
    }
}

fn serving() -> &'static tokio::sync::watch::Sender<bool> {
    static SERVING: OnceLock<tokio::sync::watch::Sender<bool>> = OnceLock::new();
    SERVING.get_or_init(|| tokio::sync::watch::Sender::new(true))
}

/// A new weir taking over reads nothing from its sockets until it is ready:
/// the running weir serves them meanwhile, and if this one fails first,
/// nothing it accepted is lost with it.
pub fn hold_until_ready() {
    serving().send_replace(false);
}

/// Ready: every accept and receive loop starts.
pub fn serve() {
    serving().send_replace(true);
}

/// Wait until this process may read its sockets (at once, unless taking over).
pub async fn until_serving() {
    let _ = serving().subscribe().wait_for(|s| *s).await;
}

/// A TCP listener: the inherited one for `addr`, else `bind()`; registered either way.
pub fn tcp_listener(
    addr: SocketAddr,
    transparent: bool,
    bind: impl FnOnce() -> std::io::Result<std::net::TcpListener>,
) -> std::io::Result<Arc<tokio::net::TcpListener>> {
    let key = SocketKey { kind: Kind::Tcp, transparent, addr };
    let std_listener = match take_inherited(key) {
        Some(fd) => std::net::TcpListener::from(fd),
        None => bind()?,
    };
    std_listener.set_nonblocking(true)?;
    let listener = Arc::new(tokio::net::TcpListener::from_std(std_listener)?);
    register(key, &listener);
    Ok(listener)
}

/// The same for a UDP socket.
pub fn udp_socket(
    addr: SocketAddr,
    transparent: bool,
    bind: impl FnOnce() -> std::io::Result<std::net::UdpSocket>,
) -> std::io::Result<Arc<tokio::net::UdpSocket>> {
    let key = SocketKey { kind: Kind::Udp, transparent, addr };
    let std_socket = match take_inherited(key) {
        Some(fd) => std::net::UdpSocket::from(fd),
        None => bind()?,
    };
    std_socket.set_nonblocking(true)?;
    let socket = Arc::new(tokio::net::UdpSocket::from_std(std_socket)?);
    register(key, &socket);
    Ok(socket)
}

/// At most this many descriptors move in one message (the kernel's
/// `SCM_MAX_FD` is 253).
pub const MAX_FDS: usize = 200;

/// Send `bytes` with `fds` attached (`SCM_RIGHTS`), all of it.
pub fn send_with_fds(socket: RawFd, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    assert!(fds.len() <= MAX_FDS, "too many descriptors for one message");
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    // u64s: a cmsghdr must be aligned (a byte buffer only happens to be)
    let mut control = vec![0u64; space.div_ceil(8).max(1)];
    let mut sent = 0;
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        let mut iov = libc::iovec { iov_base: rest.as_ptr() as *mut libc::c_void, iov_len: rest.len() };
        // SAFETY: msghdr points at locals that outlive the call, with their
        // true lengths; the control message is written inside `control`
        // through the CMSG macros, which stay within the CMSG_SPACE computed.
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            if sent == 0 && !fds.is_empty() {
                msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
                msg.msg_controllen = space;
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as usize;
                std::ptr::copy_nonoverlapping(fds.as_ptr() as *const u8, libc::CMSG_DATA(cmsg), fd_bytes);
            }
            libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
    }
    Ok(())
}

/// Receive into `buf`; descriptors that came along are appended to `fds`
/// (owned from here on: closed if nobody takes them). `Ok(0)`: end of stream.
pub fn recv_with_fds(socket: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> std::io::Result<usize> {
    // SAFETY: a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: as in send_with_fds; received descriptors are read with the
    // CMSG macros within msg_controllen and each is owned exactly once.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space;
        let n = libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned((data as *const RawFd).add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(std::io::Error::other("descriptors were cut off (too many in one message)"));
        }
        Ok(n as usize)
    }
}

/// The raw descriptors of `fds`, for [`send_with_fds`].
pub fn raw(fds: &[(SocketKey, OwnedFd)]) -> Vec<RawFd> {
    fds.iter().map(|(_, fd)| fd.as_raw_fd()).collect()
}
