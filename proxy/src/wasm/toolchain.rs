//! The toolchain that builds Rust filters for `wasm32-unknown-unknown`: the
//! one `proxy/build.rs` builds weir's own filters with (it includes this
//! file) and `weir filter build` builds a user's with. Plain `std` only, so
//! that a build script can use it too.
//!
//! In order of preference:
//! 1. the host toolchain, when its sysroot has the wasm32 standard library
//!    (`rustup target add wasm32-unknown-unknown`);
//! 2. Debian's `rustc-web`/`cargo-web`/`rust-web-src` (in /usr/bin), which
//!    build std from source with `-Z build-std` and link with LLVM's `wasm-ld`.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

pub enum GuestToolchain {
    /// The host toolchain already has the wasm32 standard library.
    Installed { cargo: PathBuf, rustc: PathBuf },
    /// Debian's rustc-web: std built from source, linked by an LLVM wasm-ld.
    BuildStd { cargo: PathBuf, rustc: PathBuf, linker: PathBuf },
}

impl GuestToolchain {
    /// The first toolchain of the two above that is on this machine.
    pub fn detect(cargo: PathBuf, rustc: PathBuf) -> Result<Self, String> {
        if has_wasm_std(&rustc) {
            return Ok(GuestToolchain::Installed { cargo, rustc });
        }
        let (debian_cargo, debian_rustc) = (PathBuf::from("/usr/bin/cargo"), PathBuf::from("/usr/bin/rustc"));
        let rust_src = Path::new("/usr/lib/rustlib/src/rust/library");
        if debian_cargo.exists()
            && debian_rustc.exists()
            && rust_src.exists()
            && let Some(linker) = find_wasm_ld()
        {
            return Ok(GuestToolchain::BuildStd { cargo: debian_cargo, rustc: debian_rustc, linker });
        }
        Err(format!(
            "no toolchain here can build Wasm filters: either `rustup target add {WASM_TARGET}`, or install \
             Debian's rustc-web, cargo-web, rust-web-src and lld-19 (weir's scripts/setup.sh does this)"
        ))
    }

    /// `cargo build --release --target wasm32-unknown-unknown` with what this
    /// toolchain needs; the caller adds the manifest, target dir and flags.
    pub fn build_command(&self) -> Command {
        let (cargo, rustc) = match self {
            GuestToolchain::Installed { cargo, rustc } | GuestToolchain::BuildStd { cargo, rustc, .. } => {
                (cargo, rustc)
            }
        };
        let mut cmd = Command::new(cargo);
        cmd.env("RUSTC", rustc).arg("build").arg("--release").args(["--target", WASM_TARGET]);
        if let GuestToolchain::BuildStd { linker, .. } = self {
            cmd.env("RUSTC_BOOTSTRAP", "1")
                .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", linker)
                .args(["-Z", "build-std=std,panic_abort"]);
        }
        cmd
    }

    /// What it is, for people.
    pub fn describe(&self) -> String {
        match self {
            GuestToolchain::Installed { rustc, .. } => format!("{} with the {WASM_TARGET} target", rustc.display()),
            GuestToolchain::BuildStd { rustc, linker, .. } => {
                format!("{} building std from source, linked by {}", rustc.display(), linker.display())
            }
        }
    }
}

fn has_wasm_std(rustc: &Path) -> bool {
    let Ok(out) = Command::new(rustc).args(["--print", "target-libdir", "--target", WASM_TARGET]).output() else {
        return false;
    };
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    out.status.success()
        && std::fs::read_dir(&dir)
            .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
            .unwrap_or(false)
}

fn find_wasm_ld() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"))
        .map(|e| e.path().join("bin/wasm-ld"))
        .filter(|p| p.exists())
        .collect();
    candidates.sort();
    candidates.pop().or_else(|| {
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("wasm-ld")).find(|p| p.exists()))
    })
}

/// A core module (layer 0) with its `component-type` sections, as
/// wit-bindgen leaves it, wrapped as a component.
pub fn componentize(core: &[u8]) -> Result<Vec<u8>, String> {
    wit_component::ComponentEncoder::default()
        .module(core)
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| format!("{e:#}"))
}

/// A component's header has layer 1 (bytes 6..8 of the preamble).
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[0..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

/// Version 1, layer 0: a core module.
pub fn is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[0..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}
