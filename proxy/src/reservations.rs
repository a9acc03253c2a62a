//! Weir's global allocator: mimalloc, except that reservations of
//! [`LARGE`] bytes or more are address space the kernel commits page by page
//! as they are written (`mmap` with `MAP_NORESERVE`).
//!
//! Why: decoders read element counts off the wire and reserve for them before
//! reading a single element. `kafka-protocol` 0.18 does this for every array
//! (`Vec::with_capacity(n)`, n up to 2^32): a 23-byte request declaring 721
//! million topics asks for 46 GB at once. An allocator that asks the kernel
//! for committed memory is refused a request larger than RAM and swap (the
//! default overcommit heuristic; glibc's was, in the fuzz targets), and a
//! refused allocation aborts the process, every other client's connection
//! with it. Served from address space, the same
//! reservation succeeds, the decoder runs out of bytes after a few elements
//! and returns an error, and the pages it touched (bounded by the frame's
//! size) are unmapped with it. This covers every dependency that reserves by
//! declaration, not only the ones the fuzzers found (docs/fuzzing.md).
//!
//! Limit: with `vm.overcommit_memory=2` (strict accounting) the kernel
//! ignores `MAP_NORESERVE`, so such a reservation fails and aborts as before;
//! weir warns at start on such a node (`warn_if_strict_overcommit`). The
//! kubelet's default is 1, where every reservation succeeds.

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc as Small;
use std::ptr;

/// Reservations at least this large are served as address space. Far above
/// anything weir allocates in normal work (its per-connection byte budget is
/// 16 MiB, docs/limits.md), so mimalloc keeps everything else: a proxy allocates and frees small
/// objects on every request, and glibc's allocator cost ~10% of a request's
/// CPU in profiles, mimalloc a fraction.
pub const LARGE: usize = 64 << 20;

/// `mmap` returns page-aligned memory; larger alignments stay with mimalloc.
const PAGE: usize = 4096;

pub struct LargeAsAddressSpace;

fn as_address_space(size: usize, align: usize) -> bool {
    size >= LARGE && align <= PAGE
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping of fresh address space; no
    // existing memory is touched
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED { ptr::null_mut() } else { p.cast() }
}

unsafe fn unmap(p: *mut u8, size: usize) {
    // SAFETY: `p` and `size` are a mapping `map` made (the caller's layout
    // is the one it was allocated with)
    unsafe { libc::munmap(p.cast(), size) };
}

// SAFETY: every pointer is freed by the allocator that made it: the choice
// depends only on the layout's size and alignment, which `dealloc` and
// `realloc` receive unchanged from the allocation (GlobalAlloc's contract).
unsafe impl GlobalAlloc for LargeAsAddressSpace {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if as_address_space(layout.size(), layout.align()) {
            unsafe { map(layout.size()) }
        } else {
            unsafe { Small.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if as_address_space(layout.size(), layout.align()) {
            // anonymous mappings read as zeros
            unsafe { map(layout.size()) }
        } else {
            unsafe { Small.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if as_address_space(layout.size(), layout.align()) {
            unsafe { unmap(p, layout.size()) }
        } else {
            unsafe { Small.dealloc(p, layout) }
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        match (as_address_space(layout.size(), align), as_address_space(new_size, align)) {
            (false, false) => unsafe { Small.realloc(p, layout, new_size) },
            (true, true) => {
                // SAFETY: `p` is a mapping of `layout.size()` bytes; the
                // moved mapping keeps MAP_NORESERVE
                let q = unsafe { libc::mremap(p.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE) };
                if q == libc::MAP_FAILED { ptr::null_mut() } else { q.cast() }
            }
            (from_large, _) => {
                // across the threshold: a new block from the other side,
                // the old one freed by the allocator that made it
                // SAFETY: GlobalAlloc's contract: `new_size` is non-zero and
                // fits `align`
                let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, align) };
                let q = unsafe { self.alloc(new_layout) };
                if !q.is_null() {
                    unsafe { ptr::copy_nonoverlapping(p, q, layout.size().min(new_size)) };
                    if from_large { unsafe { unmap(p, layout.size()) } } else { unsafe { Small.dealloc(p, layout) } }
                }
                q
            }
        }
    }
}

/// Say so at start when the node's overcommit policy makes a reservation by
/// declaration abort weir again (see the module's documentation).
pub fn warn_if_strict_overcommit() {
    if std::fs::read_to_string("/proc/sys/vm/overcommit_memory").is_ok_and(|mode| mode.trim() == "2") {
        tracing::warn!(
            "vm.overcommit_memory is 2 (strict): a peer that declares a huge array (a Kafka frame) \
             can make an allocation fail, which aborts weir; set it to 0 or 1 (the kubelet's default)"
        );
    }
}

/// Tune mimalloc for a long-running proxy; call first thing in `main`.
///
/// mimalloc 3 gives pages that became free back to the system only after a
/// purge delay (1 s by default), and only when the
/// thread that owns them next goes through its collection: a model rebuild's
/// garbage stayed resident on threads that went quiet, and at cluster scale
/// (bench/kubernetes.sh: 5,000 pods, 60 changes) RSS grew from 100 to
/// 166–195 MiB; with this it stays near 110 MiB. Here the delay is 10 ms (no eager purge: an immediate one
/// refaulted every rebuild's memory and made some rebuilds seconds slower),
/// and idle worker threads collect ([`collect_when_idle`]). `MIMALLOC_*`
/// variables in the environment still win.
///
/// Transparent huge pages are off for weir's heap: mimalloc 3 advises the
/// kernel to back its arenas with 2 MiB pages (`MADV_HUGEPAGE`), so the first
/// small allocations of each thread made a 2 MiB page resident. The quickstart
/// held 13 MiB of anonymous memory after start and about 20 MiB after its
/// first requests, 14 MiB of it in huge pages; without them 3 and 5 MiB
/// (docs/benchmarks.md "Memory at rest"). mimalloc is built without that
/// advice (its `no_thp` feature: it would be given before `main`, where no
/// option set here reaches it). On a node whose kernel uses huge pages for
/// any large enough region unasked (`transparent_hugepage/enabled` =
/// `always`), weir also opts out for itself (`PR_SET_THP_DISABLE`; children
/// inherit it) — only there: with it, this kernel (6.18) mapped the whole
/// code of each compiled filter at load, 2 MiB each where 0.3 MiB were
/// touched, used or not.
pub fn configure_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an option has no preconditions.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10) }
    }
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.contains("[always]") {
        // SAFETY: PR_SET_THP_DISABLE only sets a flag of this process (a
        // kernel without it refuses, and nothing changes).
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

/// For a runtime's `on_thread_park`: a worker with nothing to do gives back
/// what its heap freed more than the purge delay ago (at most every 100 ms).
pub fn collect_when_idle() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    if LAST.get().is_some_and(|last| now.duration_since(last) < Duration::from_millis(100)) {
        return;
    }
    LAST.set(Some(now));
    // SAFETY: mi_collect has no preconditions; it only walks this thread's heap.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (libmimalloc-sys
/// does not name it; the test below checks its default is v3's 1000 ms).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The same on every thread of rayon's pool, where wasmtime compiles
/// filters: after a cold start's compilation those threads sleep holding
/// the compiler's memory (a cold start ended at 216 MiB, a warm one at 45).
pub fn release_free_memory_of_compiler_threads() {
    rayon::broadcast(|_| release_free_memory());
}

/// Give what this thread's mimalloc heap holds free back to the system.
/// mimalloc keeps freed pages for reuse by the heap that owns them; a model
/// rebuild frees the previous model (tens of MiB at cluster scale) at once,
/// and without this the process keeps every model's high-water mark.
pub fn release_free_memory() {
    // SAFETY: mi_collect has no preconditions; it only walks this thread's heap.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_is_the_one_configured() {
        // SAFETY: reading an option has no preconditions.
        let default = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 1000, "option 15 is not mimalloc 3's purge delay (default 1000 ms)");
    }

    use super::LARGE;

    /// One terabyte asked for up front (more than any test machine's RAM and
    /// swap: the system allocator alone refuses it, which aborts), a few
    /// elements written, then dropped.
    #[test]
    fn a_reservation_larger_than_memory_succeeds_and_commits_what_is_written() {
        let mut v: Vec<u64> = Vec::with_capacity((1usize << 40) / 8);
        v.extend(0..1000);
        assert_eq!(v.iter().sum::<u64>(), 999 * 1000 / 2);
    }

    /// Growing and shrinking across the threshold keeps the contents, in
    /// both directions and within large blocks.
    #[test]
    fn blocks_keep_their_contents_across_the_threshold() {
        let mut v: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
        v.reserve_exact(LARGE); // small → large
        assert!(v.capacity() >= LARGE);
        v.reserve_exact(2 * LARGE); // large → larger (mremap)
        v.extend((0..=255u8).cycle().take(LARGE));
        v.truncate(1 << 20);
        v.shrink_to_fit(); // large → small
        assert!(v.capacity() < LARGE);
        assert!(v.iter().enumerate().all(|(i, &b)| b == i as u8));
        let zeroed = vec![0u8; LARGE + 1];
        assert!(zeroed.iter().all(|&b| b == 0));
    }
}
