//! `weir filter new | build | test`: from nothing to a tested filter, with
//! the same host that runs filters in the proxy.

mod cases;
mod javascript;
mod templates;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::observe::metrics::Metrics;
use crate::protocol::Protocol;
use crate::wasm::toolchain::{self, GuestToolchain, WASM_TARGET};
use crate::wasm::{FilterComponent, FilterRuntime, RuntimeOptions};

pub use cases::{TestOptions, run_tests};

/// The language a filter is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Rust,
    JavaScript,
}

impl std::str::FromStr for Lang {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rust" => Ok(Lang::Rust),
            "js" | "javascript" => Ok(Lang::JavaScript),
            other => Err(format!("{other:?}: filters are written in rust or js")),
        }
    }
}

/// Where the SDK is, for the projects `new` writes: this checkout's, unless
/// told otherwise (a path, or a git URL).
pub fn default_sdk(lang: Lang) -> PathBuf {
    match lang {
        Lang::Rust => Path::new(env!("CARGO_MANIFEST_DIR")).join("../filters/sdk"),
        Lang::JavaScript => javascript::default_sdk(),
    }
}

/// `weir filter new NAME --world WORLD [--lang js]`: a crate (or an npm
/// project) in `dir/NAME`.
pub fn new(name: &str, world: &str, dir: &Path, sdk: &str, lang: Lang) -> anyhow::Result<PathBuf> {
    let valid = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if !valid {
        bail!("{name:?}: a filter's name is lower-case letters, digits, - and _, starting with a letter");
    }
    // names cargo keeps for itself
    if ["test", "core", "std", "alloc", "proc-macro", "proc_macro", "build"].contains(&name) {
        bail!("{name:?} is a name cargo refuses for a crate: choose another");
    }
    let root = dir.join(name);
    if root.exists() {
        bail!("{} exists already: choose another name or directory", root.display());
    }
    let templates: &[Protocol] = match lang {
        Lang::Rust => &templates::WORLDS,
        Lang::JavaScript => &javascript::WORLDS,
    };
    let Some(world) = templates.iter().copied().find(|w| w.name() == world) else {
        let worlds: Vec<&str> = templates.iter().map(|w| w.name()).collect();
        bail!("no {lang:?} template for world {world:?}: weir writes {}", worlds.join(", "));
    };
    if lang == Lang::JavaScript {
        javascript::write_project(&root, name, world, sdk)?;
        return Ok(root);
    }
    let sdk_dependency = if sdk.starts_with("https://") || sdk.starts_with("git@") || sdk.starts_with("ssh://") {
        format!("{{ git = {sdk:?} }}")
    } else {
        let path = std::fs::canonicalize(sdk).with_context(|| format!("the SDK at {sdk}"))?;
        if !path.join("Cargo.toml").exists() || !path.join("wit").exists() {
            bail!("{}: not the weir-filter-sdk crate (no Cargo.toml and wit/ there)", path.display());
        }
        format!("{{ path = {:?} }}", path.display().to_string())
    };
    std::fs::create_dir_all(root.join("src"))?;
    // a stream filter compiles the policy's `l7` entries with the SDK's helper
    let sdk_dependency = if world == Protocol::Stream {
        sdk_dependency.replacen(" }", ", features = [\"l7-rules\"] }", 1)
    } else {
        sdk_dependency
    };
    std::fs::write(root.join("Cargo.toml"), templates::cargo_toml(name, &sdk_dependency))?;
    std::fs::write(root.join("src/lib.rs"), templates::lib_rs(name, world))?;
    std::fs::write(root.join("cases.yaml"), templates::cases_yaml(world))?;
    std::fs::write(root.join(".gitignore"), "/target\n")?;
    Ok(root)
}

/// What `build` made.
pub struct Built {
    pub component: PathBuf,
    pub world: Protocol,
    pub bytes: usize,
    pub seconds: f64,
    pub toolchain: String,
}

/// `weir filter build [DIR]`: the crate built for wasm32 with the machine's
/// toolchain, wrapped as a component at `DIR/target/weir/NAME.wasm`, and
/// checked to implement a world weir knows.
pub fn build(dir: &Path) -> anyhow::Result<Built> {
    let started = Instant::now();
    let manifest = dir.join("Cargo.toml");
    if !manifest.exists() {
        if dir.join("package.json").exists() {
            return build_javascript(dir, started);
        }
        bail!("{}: no filter here (no Cargo.toml, no package.json)", dir.display());
    }
    let cargo = std::env::var_os("CARGO").map(PathBuf::from).unwrap_or_else(|| "cargo".into());
    let (name, lib) = crate_names(&cargo, &manifest)?;
    let rustc = std::env::var_os("RUSTC").map(PathBuf::from).unwrap_or_else(|| "rustc".into());
    let toolchain = GuestToolchain::detect(cargo.clone(), rustc).map_err(anyhow::Error::msg)?;
    // the crate's own target directory, unless the environment names one
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| dir.join("target"));
    let mut cmd = toolchain.build_command();
    // in the crate's directory (its rust-toolchain.toml, .cargo/config), and
    // without the host's flags
    cmd.current_dir(dir).env_remove("RUSTFLAGS").env_remove("CARGO_ENCODED_RUSTFLAGS");
    cmd.arg("--manifest-path").arg(&manifest).arg("--target-dir").arg(&target_dir);
    // the crate's own build output (warnings included) is the author's to see
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("cargo failed building {name} for {WASM_TARGET} ({})", toolchain.describe());
    }
    let Some(lib) = lib else {
        bail!("{name}: no cdylib library target: add `[lib] crate-type = [\"cdylib\", \"rlib\"]` to its Cargo.toml");
    };
    let module = target_dir.join(WASM_TARGET).join("release").join(format!("{lib}.wasm"));
    let core = std::fs::read(&module).with_context(|| format!("{}: not built", module.display()))?;
    let component = toolchain::componentize(&core).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a filter: {e} (does it call one of weir_filter_sdk's export macros?)",
            module.display()
        )
    })?;
    let loaded = load(&name, &component)?;
    let out = dir.join("target/weir").join(format!("{name}.wasm"));
    std::fs::create_dir_all(out.parent().unwrap())?;
    std::fs::write(&out, &component)?;
    Ok(Built {
        component: out,
        world: loaded.world(),
        bytes: component.len(),
        seconds: started.elapsed().as_secs_f64(),
        toolchain: toolchain.describe(),
    })
}

/// A JavaScript project's build, checked as a Rust one's is.
fn build_javascript(dir: &Path, started: Instant) -> anyhow::Result<Built> {
    let (name, world, out) = javascript::build(dir)?;
    let component = std::fs::read(&out).with_context(|| format!("{}: not built", out.display()))?;
    let loaded = load(&name, &component)?;
    if loaded.world().name() != world {
        bail!("{}: package.json says the {world} world, the component is {}", dir.display(), loaded.world().world());
    }
    Ok(Built {
        component: out,
        world: loaded.world(),
        bytes: component.len(),
        seconds: started.elapsed().as_secs_f64(),
        toolchain: "ComponentizeJS".into(),
    })
}

/// The component a filter path names: a built crate's (`DIR` after
/// `weir filter build`), or a `.wasm` file (a component, or a core module
/// with its world).
pub fn component_at(path: &Path) -> anyhow::Result<(String, Vec<u8>)> {
    if path.is_dir() {
        let manifest = path.join("Cargo.toml");
        let name = if manifest.exists() {
            let cargo = std::env::var_os("CARGO").map(PathBuf::from).unwrap_or_else(|| "cargo".into());
            crate_names(&cargo, &manifest)?.0
        } else if path.join("package.json").exists() {
            javascript::project(path)?.0
        } else {
            bail!("{}: neither a .wasm file nor a filter crate or JavaScript project", path.display());
        };
        // where `build` puts it, for either language
        let built = path.join("target/weir").join(format!("{name}.wasm"));
        let bytes = std::fs::read(&built).with_context(|| {
            format!("{}: not built yet (run `weir filter build {}`)", built.display(), path.display())
        })?;
        return Ok((name, bytes));
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.file_stem().map(|s| s.to_string_lossy().replace('_', "-")).unwrap_or_else(|| "filter".into());
    Ok((name, bytes))
}

/// A runtime of its own and the component loaded in it.
pub fn load(name: &str, bytes: &[u8]) -> anyhow::Result<Arc<FilterComponent>> {
    let runtime = runtime()?;
    Ok(runtime.load(name, bytes)?)
}

fn runtime() -> anyhow::Result<Arc<FilterRuntime>> {
    // compiled filters kept between `build` and `test` (keyed by the
    // component's digest and the engine, as the proxy's own cache)
    let cache_dir = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .map(|cache| cache.join("weir/filter-authoring"));
    let options = RuntimeOptions { cache_dir, max_instances: None };
    Ok(Arc::new(FilterRuntime::new(Arc::new(Metrics::default()), options)?))
}

/// The package's name and its cdylib target's (what the `.wasm` is
/// called), as cargo reads the manifest.
fn crate_names(cargo: &Path, manifest: &Path) -> anyhow::Result<(String, Option<String>)> {
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1", "--manifest-path"])
        .arg(manifest)
        .output()
        .with_context(|| format!("running {} metadata", cargo.display()))?;
    if !out.status.success() {
        bail!("{}: {}", manifest.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).context("cargo metadata's answer")?;
    let package = metadata["packages"]
        .as_array()
        .and_then(|p| p.first())
        .with_context(|| format!("{}: no package", manifest.display()))?;
    let name = package["name"].as_str().unwrap_or_default().to_string();
    let lib = package["targets"].as_array().into_iter().flatten().find_map(|t| {
        let cdylib = t["crate_types"].as_array()?.iter().any(|c| c == "cdylib");
        cdylib.then(|| t["name"].as_str().map(|n| n.replace('-', "_"))).flatten()
    });
    Ok((name, lib))
}
