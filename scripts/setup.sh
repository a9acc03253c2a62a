#!/usr/bin/env bash
# Install what building, running and testing weir needs. Idempotent: what is
# already there is skipped, so it is cheap to run before every build.
#
#   - a Wasm guest toolchain: the rustup wasm32 target if installed, else
#     Debian's rustc-web/cargo-web/rust-web-src (Rust 1.96) plus lld for wasm-ld
#   - real peers for tests and benchmarks: curl, nginx, haproxy, nghttp2 (nghttp,
#     h2load), wrk, and Python's grpcio for gRPC
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if have sudo; then SUDO="sudo"; else log "not root and no sudo: install packages yourself"; fi
fi

packages=(curl nginx haproxy nghttp2-client wrk)
if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  log "rustup has wasm32-unknown-unknown: filters build with it"
else
  packages+=(rustc-web cargo-web rust-web-src lld-19)
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

if ! python3 -c 'import grpc' >/dev/null 2>&1; then
  log "installing Python grpcio (gRPC client and server for tests)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'grpcio>=1.60,<2'
fi
log "ready"
