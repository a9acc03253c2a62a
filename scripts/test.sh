#!/usr/bin/env bash
# Set up the machine and run every test: unit tests, filter tests against the
# real Wasm components, and end-to-end tests with real clients and servers.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
# the end-to-end tests run the weir binary: build it first
cargo build --locked --workspace --bins
cargo test --locked --workspace
# the filter SDK's own tests run natively; the filters themselves are tested
# as components, through the host, above
cargo test --locked --manifest-path filters/Cargo.toml -p weir-filter-sdk -p weir-fqdn-match --features weir-filter-sdk/l7-rules \
  --target-dir target/filters-host
