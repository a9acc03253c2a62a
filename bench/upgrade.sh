#!/usr/bin/env bash
# Upgrades under load: weir (eBPF datapath, one node of network namespaces)
# is replaced by a new process REPLACES times while a client pod keeps
# HTTP keep-alive traffic (wrk, through the transparent proxy to nginx in a
# server pod) and DNS queries at a steady rate (dnsperf, UDP, through the DNS
# proxy to unbound in a resolver pod) going. Load runs in back-to-back
# one-second slices; a slice that overlaps a replacement (from the new
# process's start until the old one has drained and exited) counts as
# "during". Reports errors and lost queries, p99 during vs outside, and each
# new process's time from start to serving. Table: bench/results/upgrade.txt.
#
#   bench/upgrade.sh
#   REPLACES=10 CONNS=20 QPS=2000 bench/upgrade.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

export REPLACES=${REPLACES:-5} CONNS=${CONNS:-10} QPS=${QPS:-1000}
P=wupg
CLIENT=10.200.0.10 SERVER=10.200.0.11 RESOLVER=10.200.0.12

scripts/setup.sh
if [ -z "${WEIR_BIN:-}" ]; then cargo build --locked --release --bin weir 2>&1 | tail -1; fi
export WEIR=${WEIR_BIN:-$PWD/target/release/weir}
export work=$(mktemp -d)
mkdir -p "$work/policies" "$work/state" bench/results
pids=()
cleanup() {
  pkill -TERM -f "$WEIR run --config $work" 2>/dev/null || true
  sleep 1
  pkill -KILL -f "$WEIR run --config $work" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$WEIR" datapath cleanup --config "$work" >/dev/null 2>&1 || true
  for n in node cli srv dns; do ip netns del $P-$n 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
for n in node cli srv dns; do ip netns del $P-$n 2>/dev/null || true; done

# --- the node: three pods ------------------------------------------------------
bench_node $P cli srv dns

# --- nginx in the server pod, unbound in the resolver pod ----------------------
mkdir -p "$work/nginx" "$work/unbound"
cat >"$work/nginx/nginx.conf" <<CONF
daemon off; worker_processes 1; user root; error_log $work/nginx/error.log; pid $work/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  client_body_temp_path $work/nginx/b; proxy_temp_path $work/nginx/p;
  fastcgi_temp_path $work/nginx/f; uwsgi_temp_path $work/nginx/u; scgi_temp_path $work/nginx/s;
  server { listen $SERVER:80; location / { return 200 "hello from the server pod\n"; } }
}
CONF
ip netns exec $P-srv nginx -c "$work/nginx/nginx.conf" &
pids+=($!)
cat >"$work/unbound/unbound.conf" <<CONF
server:
  interface: $RESOLVER
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "$work/unbound"
  pidfile: ""
  use-syslog: no
  logfile: "$work/unbound/unbound.log"
  do-ip6: no
  num-threads: 1
  access-control: 0.0.0.0/0 allow
  module-config: "iterator"
  local-zone: "example.com." static
  local-data: "www.example.com. 300 IN A 10.200.0.11"
CONF
ip netns exec $P-dns unbound -c "$work/unbound/unbound.conf" &
pids+=($!)
echo "www.example.com A" >"$work/queries"

# --- weir: L7 HTTP on the server, L7 DNS for the client ------------------------
cat >"$work/weir.yaml" <<YAML
admin: 127.0.0.1:19911
log_flows: false
datapath: {bpffs: /sys/fs/bpf/weir-upgrade-bench}
endpoints:
  - {name: client, address: $CLIENT, labels: {app: client}, interface: ${P}cli}
  - {name: server, address: $SERVER, labels: {app: server}, interface: ${P}srv}
  - {name: dns, address: $RESOLVER, labels: {app: kube-dns}, interface: ${P}dns}
YAML
cat >"$work/policies/policies.yaml" <<YAML
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http: [{method: GET, path: "/.*"}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEndpoints: [{matchLabels: {app: kube-dns}}]
      toPorts:
        - ports: [{port: "53", protocol: ANY}]
          rules:
            dns: [{matchPattern: "*.example.com"}]
    - toEndpoints: [{matchLabels: {app: server}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
YAML
export P CLIENT SERVER RESOLVER
python3 bench/upgrade_driver.py | tee bench/results/upgrade.txt
