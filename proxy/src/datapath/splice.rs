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
//! the programs on their veths still see and judge it. The proxy's handle
//! on the map is [`crate::net::Splicer`], below the engines that use it.
//!
//! With `datapath.splice_pods`, `weir_sockops` also adds both sockets of a
//! pod-to-pod connection of this node that the programs allowed without the
//! proxy to `WEIR_SPLICE_PAIRS`, whose `weir_splice_pairs` program moves each
//! side's writes into the other's socket (docs/datapath.md, "Splicing
//! pod-to-pod connections"). Bytes spliced to a socket wait in its psock's
//! queue until read, and the kernel frees that queue when the socket leaves
//! the map: so that map's pin outlives a weir that stops while connections
//! are in it ([`pairs_still_spliced`]).

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

/// Whether `pin` is `WEIR_SPLICE_PAIRS` with sockets still in it: removing
/// the pin would free the map when weir exits, and the kernel would drop
/// what was spliced to them and not yet read. The pin stays (a later weir
/// reuses the map, `weir datapath cleanup` removes it once empty); the
/// connections keep their bytes and go on spliced until they close.
pub fn pairs_still_spliced(pin: &Path) -> bool {
    if pin.file_name().and_then(|n| n.to_str()) != Some(weir_datapath_common::maps::SPLICE_PAIRS) {
        return false;
    }
    let Ok(map) = aya::maps::MapData::from_pin(pin) else { return false };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(map.fd()));
    let mut first = [0u8; std::mem::size_of::<weir_datapath_common::SpliceKey>()];
    // SAFETY: no key (the first), a buffer of the map's key size
    let occupied = unsafe {
        crate::bpf_syscall::map_elem(crate::bpf_syscall::MAP_GET_NEXT_KEY, fd, std::ptr::null(), first.as_mut_ptr(), 0)
    }
    .is_ok();
    if occupied {
        tracing::warn!(
            pin = %pin.display(),
            "pod-to-pod connections are still spliced: their map stays pinned until they close"
        );
    }
    occupied
}
