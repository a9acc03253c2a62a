//! `bpf(2)`'s map element commands on a raw descriptor, for what aya's
//! typed maps do not offer: an update through a shared descriptor (aya's
//! wants `&mut`; every connection of every worker adds its socket), keys of
//! any type (`weir datapath status` counts every map alike), and a
//! lookup-and-delete (the collector must know what it deleted).

use std::os::fd::RawFd;

pub const MAP_UPDATE_ELEM: libc::c_long = 2;
pub const MAP_GET_NEXT_KEY: libc::c_long = 4;
/// Hash maps since Linux 5.14.
pub const MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
/// An update's flag: only where the key is absent.
pub const NOEXIST: u64 = 1;

/// `bpf(cmd, attr)` with bpf_attr's part for element commands (`value` is
/// `MAP_GET_NEXT_KEY`'s next key). An error is the syscall's errno.
///
/// # Safety
///
/// `key` (null where the command allows none) and `value` point at buffers
/// of the map's key and value sizes that outlive the call; the kernel reads
/// or writes them as `cmd` says.
pub unsafe fn map_elem(
    cmd: libc::c_long,
    map: RawFd,
    key: *const u8,
    value: *mut u8,
    flags: u64,
) -> std::io::Result<()> {
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let attr = Attr { map_fd: map as u32, _pad: 0, key: key as u64, value: value as u64, flags };
    // SAFETY: the attribute is ours for the call; its buffers are the
    // caller's promise
    let rc =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, &attr as *const Attr, std::mem::size_of::<Attr>() as libc::c_uint) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}
