#!/usr/bin/env bash
# The Kubernetes control plane at cluster scale: one node's weir (eBPF
# datapath, real veths for its own pods) against a synthetic cluster in a
# real kube-apiserver (scripts/kube.sh): 5,000 pods over 200 namespaces on 50
# nodes, 500 CiliumNetworkPolicies. Reports the time to the first full model,
# RSS, API requests, and p50/p99 from an object change (policy edit, local and
# remote pod relabelled) to the model that enforces it (maps written).
#
#   bench/kubernetes.sh
#   PODS=10000 NAMESPACES=400 POLICIES=1000 SAMPLES=50 bench/kubernetes.sh
#
# The driver is integration/examples/kubernetes_bench.rs; the table is kept in
# bench/results/kubernetes.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --locked --release --bin weir -p weir 2>&1 | tail -1
cargo build --locked --release -p weir-integration --example kubernetes_bench 2>&1 | tail -1
mkdir -p bench/results
# WEIR_BIN=PATH measures another build of weir
WEIR_BIN=${WEIR_BIN:-$PWD/target/release/weir} target/release/examples/kubernetes_bench | tee bench/results/kubernetes.txt
