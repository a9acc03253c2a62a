//! Filters in JavaScript: `weir filter new --lang js` writes an npm project
//! depending on the `weir-filter` package (filters/js-sdk), and `weir
//! filter build` runs its build, which bundles the filter and makes it a
//! component with ComponentizeJS (SpiderMonkey compiled to Wasm, so a JS
//! filter is some 12 MB where a Rust one is 100 KB, and its instance starts
//! with a few MiB of engine). The component imports no WASI: it runs in the
//! same host, with the same budgets, as a Rust filter.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::protocol::Protocol;

/// The worlds `weir filter new --lang js` writes a project for. Others
/// build the same way (`"weir": {"world": ...}` in package.json) from the
/// WIT's shapes, without a helper in the SDK.
pub const WORLDS: [Protocol; 2] = [Protocol::Http, Protocol::Dns];

/// This checkout's JS SDK.
pub fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../filters/js-sdk")
}

/// A project in `root`: package.json, filter.js, cases.yaml.
pub fn write_project(root: &Path, name: &str, world: Protocol, sdk: &str) -> anyhow::Result<()> {
    let dependency = match std::fs::canonicalize(sdk) {
        Ok(path) => {
            if !path.join("package.json").exists() || !path.join("wit").exists() {
                bail!("{}: not the weir-filter JS SDK (no package.json and wit/ there)", path.display());
            }
            format!("file:{}", path.display())
        }
        // not a directory: an npm version spec (a git URL, a tarball)
        Err(_) if sdk.contains(':') => sdk.to_string(),
        Err(e) => bail!("the SDK at {sdk}: {e}"),
    };
    let (source, cases) = match world {
        Protocol::Http => (HTTP_JS, super::templates::cases_yaml(Protocol::Http)),
        Protocol::Dns => (DNS_JS, super::templates::cases_yaml(Protocol::Dns)),
        other => bail!("no JavaScript template for the {} world: weir writes http and dns", other.world()),
    };
    std::fs::create_dir_all(root)?;
    std::fs::write(root.join("package.json"), package_json(name, world, &dependency))?;
    std::fs::write(root.join("filter.js"), source.replace("{{name}}", name))?;
    std::fs::write(root.join("cases.yaml"), cases)?;
    std::fs::write(root.join(".gitignore"), "/node_modules\n/target\n")?;
    Ok(())
}

fn package_json(name: &str, world: Protocol, sdk: &str) -> String {
    let world = world.world().trim_end_matches("-filter").to_string();
    let package = serde_json::json!({
        "name": name,
        "version": "0.1.0",
        "private": true,
        "type": "module",
        "main": "filter.js",
        "weir": {"world": world},
        "scripts": {"build": "weir-filter-build ."},
        "devDependencies": {"weir-filter": sdk},
    });
    serde_json::to_string_pretty(&package).expect("a JSON value") + "\n"
}

/// The project's name and world, from its package.json.
pub fn project(dir: &Path) -> anyhow::Result<(String, String)> {
    let path = dir.join("package.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let package: serde_json::Value = serde_json::from_str(&text).with_context(|| path.display().to_string())?;
    let name = package["name"].as_str().with_context(|| format!("{}: no \"name\"", path.display()))?;
    let world = package["weir"]["world"]
        .as_str()
        .with_context(|| format!("{}: no \"weir\": {{\"world\": ...}} (http, dns, ...)", path.display()))?;
    Ok((name.to_string(), world.to_string()))
}

/// `npm install` when the project has never been installed, then its
/// build script; the component it wrote.
pub fn build(dir: &Path) -> anyhow::Result<(String, String, PathBuf)> {
    let (name, world) = project(dir)?;
    let npm = std::env::var_os("NPM").map(PathBuf::from).unwrap_or_else(|| "npm".into());
    // (the SDK's own link, not the folder: an install cut short leaves the folder)
    if !dir.join("node_modules/weir-filter/package.json").exists() {
        run(Command::new(&npm).args(["install", "--no-audit", "--no-fund", "--prefer-offline"]).current_dir(dir))
            .context("installing the project's packages (npm install)")?;
    }
    run(Command::new(&npm).args(["run", "--silent", "build"]).current_dir(dir))
        .with_context(|| format!("building {name} (npm run build)"))?;
    Ok((name.clone(), world, dir.join("target/weir").join(format!("{name}.wasm"))))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?} (is Node.js installed?)"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

const HTTP_JS: &str = r#"// {{name}}: a Weir HTTP filter in JavaScript (the http-filter world).
//
// Refuses requests under the configured path prefixes, unless the caller
// has the configured label. Use it in a policy:
//
//   rules:
//     wasm:
//       - name: {{name}}
//         config: {denyPrefixes: [/admin], unlessLabel: "app=admin"}

import { httpFilter, allow, deny, labels } from 'weir-filter';

let denyPrefixes = [];
let unlessLabel;

const filter = httpFilter({
  name: '{{name}}',
  configure(config) {
    const known = ['denyPrefixes', 'unlessLabel'];
    const unknown = Object.keys(config).filter((k) => !known.includes(k));
    if (unknown.length > 0) throw new Error(`unknown field ${unknown[0]} (expected ${known.join(', ')})`);
    if (!Array.isArray(config.denyPrefixes)) throw new Error('denyPrefixes: a list of path prefixes');
    denyPrefixes = config.denyPrefixes;
    unlessLabel = config.unlessLabel;
  },
  onRequest(request, conn) {
    const prefix = denyPrefixes.find((p) => request.path.startsWith(p));
    if (prefix === undefined) return allow();
    if (unlessLabel !== undefined && labels(conn.source()).includes(unlessLabel)) return allow();
    return deny(`${prefix} is off limits`);
  },
});

export const configure = filter.configure;
export const httpHandler = filter.httpHandler;
"#;

const DNS_JS: &str = r#"// {{name}}: a Weir DNS filter in JavaScript (the dns-filter world).
//
// Refuses queries for names under the configured domains (an ad blocker),
// answering NXDOMAIN. Use it in a policy's `wasm` rules on port 53.

import { dnsFilter, allowQuery, refuse } from 'weir-filter';

let blocked = [];

const filter = dnsFilter({
  name: '{{name}}',
  configure(config) {
    if (!Array.isArray(config.blockedDomains)) throw new Error('blockedDomains: a list of domains');
    blocked = config.blockedDomains.map((d) => d.replace(/\.$/, '').toLowerCase());
  },
  onQuery(query) {
    for (const question of query.questions) {
      const name = question.name.replace(/\.$/, '').toLowerCase();
      const domain = blocked.find((d) => name === d || name.endsWith(`.${d}`));
      if (domain !== undefined) return refuse(`${question.name} is under ${domain}, blocked`, 'nxdomain');
    }
    return allowQuery();
  },
});

export const configure = filter.configure;
export const dnsHandler = filter.dnsHandler;
"#;
