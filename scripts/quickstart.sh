#!/usr/bin/env bash
# Set up the machine, build weir, and run it on its built-in quickstart: a demo
# backend behind two listeners, two client identities on loopback addresses
# and an example policy. It prints what to try with curl.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --locked --release --bin weir
exec target/release/weir run "$@"
