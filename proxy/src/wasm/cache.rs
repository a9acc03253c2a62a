//! Compiled filters kept on disk, so a restart does not recompile them.
//!
//! Loading a precompiled artifact runs native code from that file, so the
//! cache is only used when its directory belongs to us and nobody else can
//! write to it.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use wasmtime::Engine;
use wasmtime::component::Component;

pub(super) struct PrecompileCache {
    dir: PathBuf,
    engine_hash: u64,
}

impl PrecompileCache {
    pub fn open(dir: PathBuf, engine: &Engine) -> Option<Self> {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::debug!(dir = %dir.display(), "filter cache disabled: {e}");
            return None;
        }
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        let meta = std::fs::metadata(&dir).ok()?;
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid || meta.mode() & 0o022 != 0 {
            tracing::warn!(dir = %dir.display(), "filter cache disabled: directory is not private to this user");
            return None;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        Some(PrecompileCache { dir, engine_hash: hasher.finish() })
    }

    pub fn load_or_compile(&self, engine: &Engine, bytes: &[u8], digest: &[u8; 32]) -> wasmtime::Result<Component> {
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let path = self.dir.join(format!("{hex}-{:016x}.cwasm", self.engine_hash));
        if path.exists() {
            // SAFETY: the file was written by `precompile_component` of an
            // engine with the same compatibility hash, into a directory only
            // this user can write (checked in `open`).
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok(component),
                Err(e) => tracing::debug!(path = %path.display(), "stale filter cache entry: {e:#}"),
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &compiled).and_then(|()| std::fs::rename(&tmp, &path)).is_ok() {
            // served from the file, as a warm start is: its code is mapped
            // (pages the kernel can drop and read again), not copied into
            // this process's memory
            // SAFETY: written just now from this engine's output, as above.
            if let Ok(component) = unsafe { Component::deserialize_file(engine, &path) } {
                return Ok(component);
            }
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
        // SAFETY: produced just now by this engine.
        unsafe { Component::deserialize(engine, &compiled) }
    }
}
