//! Builds the filters in `../filters` to WebAssembly components so the proxy
//! can embed the built-in ones and tests can load the others by path.
//!
//! Toolchain choice: `WEIR_PREBUILT_FILTERS=DIR` (components already built,
//! for packagers and containers), else the guest toolchain of
//! `src/wasm/toolchain.rs` (the one `weir filter build` uses too).
//!
//! The core modules are wrapped as components here with `wit-component`, so no
//! `wasm-tools` binary is needed.
//!
//! It also builds the eBPF datapath programs in `../datapath-ebpf/programs`
//! (`WEIR_PREBUILT_DATAPATH=FILE` to use a built object instead): `core` is
//! built from source for `bpfel-unknown-none` by a toolchain that has the
//! Rust sources (the host's if `rustup component add rust-src`, else
//! Debian's rustc-web), and linked by `bpf-linker`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

// shared with `weir filter build` (which uses all of it)
#[path = "src/wasm/toolchain.rs"]
#[allow(dead_code)]
mod toolchain;

use toolchain::{GuestToolchain, WASM_TARGET};

/// Output file stems of the filter crates weir embeds or its tests load.
const FILTERS: &[&str] = &[
    "http_policy",
    "dns_policy",
    "kafka_policy",
    "memcached_policy",
    "cassandra_policy",
    "r2d2",
    "require_header",
    "rate_limit",
    "misbehave",
];
fn main() {
    build_datapath();
    build_filters();
}

const BPF_TARGET: &str = "bpfel-unknown-none";

fn build_datapath() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("weir-datapath.o");
    println!("cargo:rerun-if-env-changed=WEIR_PREBUILT_DATAPATH");
    println!("cargo:rustc-env=WEIR_DATAPATH_OBJECT={}", out.display());
    if let Some(prebuilt) = env::var_os("WEIR_PREBUILT_DATAPATH") {
        println!("cargo:rerun-if-changed={}", PathBuf::from(&prebuilt).display());
        std::fs::copy(&prebuilt, &out).unwrap_or_else(|e| panic!("WEIR_PREBUILT_DATAPATH: {e}"));
        return;
    }
    let programs = root.join("datapath-ebpf/programs");
    watch_tree(&programs);
    watch_tree(&root.join("datapath-ebpf/common"));
    let target_dir =
        env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target")).join("bpf-guests");

    let (cargo, rustc) = bpf_toolchain();
    let linker = find_bpf_linker();
    let mut cmd = Command::new(&cargo);
    scrub_cargo_env(&mut cmd);
    let path = env::join_paths(
        std::iter::once(linker.parent().unwrap().to_path_buf()).chain(env::split_paths(&env::var_os("PATH").unwrap())),
    )
    .unwrap();
    cmd.env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("PATH", path)
        .current_dir(&programs)
        .args(["build", "--release", "--locked", "-Z", "build-std=core", "--target", BPF_TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    let output = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", cargo.display()));
    if !output.status.success() {
        panic!("building the eBPF programs failed ({cmd:?}):\n{}", String::from_utf8_lossy(&output.stderr));
    }
    std::fs::copy(target_dir.join(BPF_TARGET).join("release/weir-datapath"), &out).unwrap();
}

/// A cargo and rustc that can build `core` from source.
fn bpf_toolchain() -> (PathBuf, PathBuf) {
    let cargo = PathBuf::from(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    let rustc = PathBuf::from(env::var("RUSTC").unwrap_or_else(|_| "rustc".into()));
    let has_src = |rustc: &Path| {
        Command::new(rustc)
            .args(["--print", "sysroot"])
            .output()
            .ok()
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("lib/rustlib/src/rust/library"))
            .is_some_and(|p| p.join("core").exists())
    };
    if has_src(&rustc) {
        return (cargo, rustc);
    }
    let (debian_cargo, debian_rustc) = (PathBuf::from("/usr/bin/cargo"), PathBuf::from("/usr/bin/rustc"));
    if debian_cargo.exists() && Path::new("/usr/lib/rustlib/src/rust/library/core").exists() {
        return (debian_cargo, debian_rustc);
    }
    panic!(
        "\n\nNo toolchain can build the eBPF programs: `rustup component add rust-src`, or install \
         Debian's rustc-web, cargo-web and rust-web-src (scripts/setup.sh does this), or point \
         WEIR_PREBUILT_DATAPATH at a built object.\n\n"
    );
}

fn find_bpf_linker() -> PathBuf {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    env::var_os("PATH")
        .into_iter()
        .flat_map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .chain(home.map(|h| h.join("bin")))
        .map(|dir| dir.join("bpf-linker"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("\n\nbpf-linker is not installed: scripts/setup.sh installs it (built against LLVM 22).\n\n")
        })
}

fn build_filters() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let filters_dir = root.join("filters");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap()).join("filters");
    std::fs::create_dir_all(&out_dir).unwrap();

    println!("cargo:rerun-if-env-changed=WEIR_PREBUILT_FILTERS");
    println!("cargo:rustc-env=WEIR_BUILT_FILTERS_DIR={}", out_dir.display());

    if let Some(prebuilt) = env::var_os("WEIR_PREBUILT_FILTERS") {
        let prebuilt = PathBuf::from(prebuilt);
        for name in FILTERS {
            let src = prebuilt.join(format!("{name}.wasm"));
            println!("cargo:rerun-if-changed={}", src.display());
            let bytes = std::fs::read(&src)
                .unwrap_or_else(|e| panic!("WEIR_PREBUILT_FILTERS: cannot read {}: {e}", src.display()));
            let component = if toolchain::is_component(&bytes) { bytes } else { componentize(&bytes, name) };
            std::fs::write(out_dir.join(format!("{name}.wasm")), component).unwrap();
        }
        write_digests(&out_dir);
        return;
    }

    watch_tree(&filters_dir);
    watch_tree(&root.join("wit"));

    let target_dir =
        env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target")).join("wasm-guests");
    build_guests(&filters_dir, &target_dir);

    let release = target_dir.join(WASM_TARGET).join("release");
    for name in FILTERS {
        if !release.join(format!("{name}.wasm")).exists() {
            panic!("filter {name} was not built into {}", release.display());
        }
    }
    // Every filter crate in the workspace becomes a component, also the ones
    // weir does not embed: a filter author adds a crate to filters/ and finds
    // the component in target/wasm-guests/components/, ready for `path:`.
    let components = target_dir.join("components");
    std::fs::create_dir_all(&components).unwrap();
    for entry in std::fs::read_dir(&release).unwrap().flatten() {
        let path = entry.path();
        let Some(name) =
            path.file_stem().and_then(|s| s.to_str()).filter(|_| path.extension().is_some_and(|e| e == "wasm"))
        else {
            continue;
        };
        let component = componentize(&std::fs::read(&path).unwrap(), name);
        std::fs::write(components.join(format!("{name}.wasm")), &component).unwrap();
        if FILTERS.contains(&name) {
            std::fs::write(out_dir.join(format!("{name}.wasm")), component).unwrap();
        }
    }
    write_digests(&out_dir);
}

/// The sha256 of every embedded filter, beside it (`{name}.sha256`): weir
/// knows a built-in filter by its digest without reading its bytes, so the
/// megabytes embedded in the binary stay on disk when the compiled filter
/// comes from the cache.
fn write_digests(out_dir: &Path) {
    use sha2::Digest;
    for name in FILTERS {
        let bytes = std::fs::read(out_dir.join(format!("{name}.wasm"))).unwrap();
        std::fs::write(out_dir.join(format!("{name}.sha256")), sha2::Sha256::digest(&bytes)).unwrap();
    }
}

fn componentize(core: &[u8], name: &str) -> Vec<u8> {
    toolchain::componentize(core).unwrap_or_else(|e| panic!("filter {name}: cannot make a component: {e}"))
}

fn watch_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            watch_tree(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

/// Build weir's filter workspace with the guest toolchain.
fn build_guests(filters_dir: &Path, target_dir: &Path) {
    let cargo = PathBuf::from(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    let rustc = PathBuf::from(env::var("RUSTC").unwrap_or_else(|_| "rustc".into()));
    let toolchain = GuestToolchain::detect(cargo, rustc).unwrap_or_else(|e| {
        panic!("\n\n{e}; or point WEIR_PREBUILT_FILTERS at a directory of built filter components.\n\n")
    });
    let mut cmd = toolchain.build_command();
    scrub_cargo_env(&mut cmd);
    cmd.arg("--locked").arg("--manifest-path").arg(filters_dir.join("Cargo.toml")).arg("--target-dir").arg(target_dir);
    let output = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !output.status.success() {
        panic!("building the Wasm filters failed ({:?}):\n{}", cmd, String::from_utf8_lossy(&output.stderr));
    }
}

/// The outer cargo's settings (target dir, flags, profile, features) are for
/// the host build; the guest build must not see them. What `cmd` sets itself
/// (the guest toolchain's RUSTC, RUSTC_BOOTSTRAP, linker) stays.
fn scrub_cargo_env(cmd: &mut Command) {
    const KEEP: &[&str] = &["CARGO_HOME", "CARGO_MAKEFLAGS", "CARGO_NET_OFFLINE", "CARGO_HTTP_PROXY"];
    let own: Vec<String> =
        cmd.get_envs().filter(|(_, v)| v.is_some()).map(|(k, _)| k.to_string_lossy().into_owned()).collect();
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if own.contains(&key) {
            continue;
        }
        let drop = (key.starts_with("CARGO_") && !KEEP.contains(&key.as_str()))
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTDOC")
            || key == "RUSTFLAGS"
            || key == "RUSTUP_TOOLCHAIN"
            || matches!(key.as_str(), "TARGET" | "HOST" | "OUT_DIR" | "OPT_LEVEL" | "PROFILE" | "DEBUG" | "NUM_JOBS");
        if drop {
            cmd.env_remove(&key);
        }
    }
}
