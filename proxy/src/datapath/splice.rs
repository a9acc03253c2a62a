//! Splicing the proxy's writes into local pods' sockets (sockmap).
//!
//! `weir_sockops` (sock_ops, attached to the node's cgroup v2 root) adds a
//! pod's client socket to `WEIR_SPLICE_BOUND` when it is established, its
//! connection goes through the proxy, and its SYN bound it to the pod
//! (`WEIR_SPLICE_BINDINGS`, written by `weir_from_pod`). The proxy adds its own socket to
//! `WEIR_SPLICE_PROXY` (where the `weir_splice` sk_msg program is attached)
//! before it first writes on it: from then on every write is moved straight
//! into the pod socket's receive queue, past the TCP/IP stacks of both ends,
//! the veth and the TC programs. Where the pod's socket is not in
//! `WEIR_SPLICE_BOUND` the write takes the normal path.
//!
//! Only the proxy's writes are spliced, and only on sockets whose pod end
//! was in the map before the proxy's first write, so no byte can overtake
//! one sent over TCP before it. What pods send comes over TCP as before, so
//! the programs on their veths still see and judge it. The proxy's handle
//! on the map is [`crate::net::Splicer`], below the engines that use it.

use std::path::{Path, PathBuf};

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
