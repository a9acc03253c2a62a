use core::cell::UnsafeCell;

/// Holds the configured filter of this instance.
///
/// A component instance is single-threaded and the host never re-enters it,
/// so a plain cell is enough; `Sync` is asserted only to allow a `static`.
pub struct Slot<T>(UnsafeCell<Option<T>>);

// SAFETY: wasm32 component instances run on one thread and calls into an
// instance never overlap (the host holds `&mut Store` for the whole call).
unsafe impl<T> Sync for Slot<T> {}

impl<T> Slot<T> {
    pub const fn new() -> Self {
        Slot(UnsafeCell::new(None))
    }

    pub fn set(&self, value: T) {
        // SAFETY: see the `Sync` impl; no reference from `get` outlives a call.
        unsafe { *self.0.get() = Some(value) }
    }

    /// The configured value; traps if the host called a hook before `configure`.
    pub fn get(&self) -> &T {
        // SAFETY: see the `Sync` impl.
        unsafe { (*self.0.get()).as_ref() }.expect("weir filter called before configure")
    }
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self::new()
    }
}
