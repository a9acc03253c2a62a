//! Compiled filters kept on disk, so a restart does not recompile them.
//!
//! Loading a precompiled artifact runs native code from that file, so the
//! cache is only used when its directory belongs to us and nobody else can
//! write to it.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

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
        if let Some(exe) = CHILD_COMPILER.get() {
            let started = std::time::Instant::now();
            match compile_in_child(exe, &self.dir, bytes) {
                // SAFETY: written by a `weir compile-filter` of this binary,
                // whose engine has the same compatibility hash (the file name
                // says so), into a directory only this user can write.
                Ok(()) => match unsafe { Component::deserialize_file(engine, &path) } {
                    Ok(component) => {
                        tracing::debug!(file = %path.display(), took = ?started.elapsed(), "compiled in a child process");
                        return Ok(component);
                    }
                    Err(e) => tracing::warn!(path = %path.display(), "compiled by a child, unreadable: {e:#}"),
                },
                Err(e) => tracing::warn!("compiling a filter in a child process failed, compiling here: {e}"),
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

/// The executable `load_or_compile` runs as `EXE compile-filter --cache DIR`
/// for a filter the cache lacks; unset (tests, tools): compiled in-process.
static CHILD_COMPILER: OnceLock<(PathBuf, Option<u32>)> = OnceLock::new();

/// Compile what the cache lacks in child processes of this executable from
/// now on (`weir run`). Cranelift's allocations during a compile are tens of
/// MiB that the allocator keeps after they are freed; in a child they end
/// with it, and the component is mapped from the cache file either way.
/// `max_instances`: the runtime's, so the child's engine is made alike.
pub fn compile_in_child_processes(max_instances: Option<u32>) {
    if let Ok(exe) = std::env::current_exe() {
        let _ = CHILD_COMPILER.set((exe, max_instances));
    }
}

fn compile_in_child((exe, max_instances): &(PathBuf, Option<u32>), cache: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut command = Command::new(exe);
    command.args(["compile-filter", "--cache"]).arg(cache);
    if let Some(n) = max_instances {
        command.arg("--max-instances").arg(n.to_string());
    }
    // a built-in filter is named, not written: the child reads its own
    // embedded copy, and this process's copy stays on disk
    let builtin = super::builtin::embedded(bytes);
    if let Some((name, _)) = builtin {
        command.args(["--builtin", name]);
    }
    let mut child = command
        .stdin(if builtin.is_some() { Stdio::null() } else { Stdio::piped() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", exe.display()))?;
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(bytes),
        None => Ok(()),
    };
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    written.map_err(|e| format!("writing the component to it: {e}"))?;
    if !out.status.success() {
        return Err(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// `weir compile-filter`: the component on stdin (or the built-in filter
/// `builtin`), compiled into `cache` by a runtime made as `weir run` makes
/// its own (so the engines agree).
pub fn compile_into_cache(cache: PathBuf, max_instances: Option<u32>, builtin: Option<&str>) -> anyhow::Result<()> {
    let mut read = Vec::new();
    let bytes = match builtin {
        Some(name) => super::builtin::find(name).ok_or_else(|| anyhow::anyhow!("no built-in filter {name:?}"))?,
        None => {
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut read)?;
            &read[..]
        }
    };
    let metrics = std::sync::Arc::new(crate::observe::metrics::Metrics::default());
    let options = super::RuntimeOptions { cache_dir: Some(cache.clone()), max_instances };
    let runtime = super::FilterRuntime::new(metrics, options)?;
    if runtime.cache.is_none() {
        anyhow::bail!("the filter cache {} is not usable", cache.display());
    }
    runtime.load("compile-filter", bytes)?;
    Ok(())
}
