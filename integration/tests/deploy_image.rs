//! The image (deploy/Containerfile, built by scripts/image.sh with buildah
//! into an OCI archive). There is no container runtime on this machine, so
//! the test reads the archive as a runtime would — index, manifest, config,
//! the layer — and runs the image's entrypoint in its own root filesystem
//! with chroot: the binary and `ip` start with only the libraries the image
//! carries, and nothing else (no shell) is in it.

use std::path::{Path, PathBuf};
use std::process::Command;

use weir_integration::weir_bin;

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(path: PathBuf) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn blob(dir: &Path, digest: &serde_json::Value) -> PathBuf {
    dir.join("blobs/sha256").join(digest.as_str().unwrap().trim_start_matches("sha256:"))
}

#[test]
fn the_image_holds_weir_and_what_it_needs_and_nothing_else() {
    let out = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/image.sh");
    let printed = run(Command::new("bash").arg(&script).arg(out.path()).env("WEIR_BIN", weir_bin()));
    let archive = PathBuf::from(printed.lines().last().unwrap().trim());
    let size = std::fs::metadata(&archive).unwrap().len();
    eprintln!("{}: {:.1} MB", archive.display(), size as f64 / 1e6);

    // the archive as a runtime reads it
    let oci = out.path().join("oci");
    std::fs::create_dir_all(&oci).unwrap();
    run(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&oci));
    let index = json(oci.join("index.json"));
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        format!("ghcr.io/weir-proxy/weir:{}", env!("CARGO_PKG_VERSION"))
    );
    let manifest = json(blob(&oci, &entry["digest"]));
    let config = json(blob(&oci, &manifest["config"]["digest"]));
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/usr/local/bin/weir"]));
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(config["config"]["Labels"]["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer: {manifest}");

    // its files
    let rootfs = out.path().join("rootfs-from-layer");
    std::fs::create_dir_all(&rootfs).unwrap();
    run(Command::new("tar").arg("-xzf").arg(blob(&oci, &layers[0]["digest"])).arg("-C").arg(&rootfs));
    let listing = run(Command::new("find").arg(".").arg("-type").arg("f").current_dir(&rootfs));
    let files: Vec<&str> = listing.lines().collect();
    for wanted in
        ["./usr/local/bin/weir", "./usr/sbin/ip", "./etc/passwd", "./etc/group", "./etc/ssl/certs/ca-certificates.crt"]
    {
        assert!(files.contains(&wanted), "{wanted} missing: {files:?}");
    }
    assert!(files.iter().any(|f| f.ends_with("/ld-linux-x86-64.so.2")), "no dynamic loader: {files:?}");
    assert!(
        files.iter().all(|f| f.starts_with("./usr/local/bin/")
            || f.starts_with("./usr/sbin/ip")
            || f.starts_with("./etc/")
            || f.contains("/lib")),
        "unexpected files: {files:?}"
    );
    assert!(!rootfs.join("bin/sh").exists() && !rootfs.join("usr/bin/sh").exists(), "a shell in the image");
    eprintln!("{} files: {files:?}", files.len());

    // the entrypoint and `ip` start with what the image carries
    let version = run(Command::new("chroot").arg(&rootfs).args(["/usr/local/bin/weir", "--version"]));
    assert_eq!(version.trim(), format!("weir {}", env!("CARGO_PKG_VERSION")));
    let ip = run(Command::new("chroot").arg(&rootfs).args(["/usr/sbin/ip", "-V"]));
    assert!(ip.contains("iproute2"), "{ip}");
    // and weir does real work there: its embedded http-policy filter judges
    // a policy's regular expressions
    let policy = |path: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p}}\nspec:\n  \
             endpointSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n    - toPorts:\n        \
             - ports: [{{port: \"80\", protocol: TCP}}]\n          rules: {{http: [{{method: GET, path: \"{path}\"}}]}}\n"
        )
    };
    std::fs::write(rootfs.join("tmp/good.yaml"), policy("/x")).unwrap();
    std::fs::write(rootfs.join("tmp/bad.yaml"), policy("/x(")).unwrap();
    let check = |file: &str| {
        Command::new("chroot")
            .arg(&rootfs)
            .args(["/usr/local/bin/weir", "policy", "check", file])
            .env("HOME", "/tmp")
            .output()
            .unwrap()
    };
    let good = check("/tmp/good.yaml");
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    assert!(String::from_utf8_lossy(&good.stdout).contains("1 file(s) OK"));
    let bad = check("/tmp/bad.yaml");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid regular expression"), "{bad:?}");
}
