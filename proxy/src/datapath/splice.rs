//! Splicing the proxy's writes into local pods' sockets (sockmap).
//!
//! `weir_sockops` (sock_ops, attached to the node's cgroup v2 root) adds a
//! pod's socket to `WEIR_SPLICE_PODS` when it is established and its
//! connection goes through the proxy. The proxy adds its own socket to
//! `WEIR_SPLICE_PROXY` (where the `weir_splice` sk_msg program is attached)
//! before it first writes on it: from then on every write is moved straight
//! into the pod socket's receive queue, past the TCP/IP stacks of both ends,
//! the veth and the TC programs. Where the pod's socket is not in
//! `WEIR_SPLICE_PODS` the write takes the normal path.
//!
//! Only the proxy's writes are spliced, and only on sockets whose pod end
//! was in the map before the proxy's first write, so no byte can overtake
//! one sent over TCP before it. What pods send comes over TCP as before, so
//! the programs on their veths still see and judge it.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use weir_datapath_common::SpliceKey;

/// Adds the proxy's sockets to `WEIR_SPLICE_PROXY`.
pub struct Splicer {
    map: OwnedFd,
}

impl Splicer {
    pub(super) fn new(map: OwnedFd) -> Splicer {
        Splicer { map }
    }

    /// Splice what the proxy writes on `socket` (local address `local`,
    /// connected to `peer`) into the pod socket at the other end, if that one
    /// is a local pod's known to `weir_sockops`. IPv4 only; a failure leaves
    /// the socket on the normal path.
    pub fn add(&self, socket: &impl AsRawFd, local: SocketAddr, peer: SocketAddr) {
        let (SocketAddr::V4(local), SocketAddr::V4(peer)) = (local, peer) else { return };
        let key = SpliceKey {
            local_ip: u32::from_ne_bytes(local.ip().octets()),
            remote_ip: u32::from_ne_bytes(peer.ip().octets()),
            local_port: local.port().to_be(),
            remote_port: peer.port().to_be(),
        };
        if let Err(e) = update(self.map.as_raw_fd(), &key, socket.as_raw_fd()) {
            tracing::debug!(%local, %peer, "not spliced: {e}");
        }
    }
}

/// BPF_MAP_UPDATE_ELEM through the raw syscall: aya's map wants `&mut`, and
/// every connection of every worker adds its socket.
fn update(map: RawFd, key: &SpliceKey, socket: RawFd) -> std::io::Result<()> {
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let value = socket as u32;
    let attr = Attr {
        map_fd: map as u32,
        _pad: 0,
        key: key as *const SpliceKey as u64,
        value: &value as *const u32 as u64,
        flags: 0, // BPF_ANY
    };
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    // SAFETY: the attribute points at a key and a value that outlive the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_ELEM, &attr as *const Attr, size_of::<Attr>() as libc::c_uint)
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// The node's cgroup v2 root as this process sees it: where `weir_sockops`
/// is attached unless `datapath.cgroup` names another.
pub fn cgroup_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let (_, path, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| Path::new(path).to_path_buf())
    })
}
