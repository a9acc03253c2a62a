#!/usr/bin/env bash
# Cassandra proxying cost, side by side in one run, on loopback, against a
# real Apache Cassandra 5.0 node (scripts/cassandra.sh):
#
#   direct   the cassandra-driver -> the node
#   weir     the cassandra-driver -> weir's Cassandra listener -> the node, with
#            select/insert rules on the table (every statement judged by the
#            cassandra-policy filter)
#
# integration/python/cassandra_load.py runs a 50/50 mix of prepared INSERTs
# and SELECTs by key (protocol v5) with 4 and with 50 requests in flight. The
# node and the load run on CPU 0, weir (one worker) on CPU 1.
#
# The Python driver tops out near 3,500 operations a second on its core, so
# the same mix also runs from integration/src/bin/cassandra_load.rs (protocol
# v4, one connection, 4, 50 and 200 requests in flight on their own streams),
# a generator fast enough to load the node and weir.
#
# Also direct with lz4 compression (weir declines compression: what would
# supporting it buy?), with the driver's `lz4` module, installed here if
# missing (a bench-only need).
#
#   bench/cassandra.sh
#   DURATION=20 bench/cassandra.sh
#   VALUE_BYTES=4096 bench/cassandra.sh   # larger values (default 100)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}

source bench/lib.sh
bench_start cassandra_load
NODE=$(port) STORAGE=$(port) LISTENER=$(port) ADMIN=$(port)

WEIR_CASSANDRA_STORAGE_PORT=$STORAGE taskset -c 0 scripts/cassandra.sh start "$work/cassandra" "$NODE" >"$work/cassandra.log" 2>&1 &
pids+=($!)

cat > "$work/weir.yaml" <<CONF
admin: 127.0.0.1:$ADMIN
workers: 1
log_flows: false
endpoints:
  - {name: load, address: 127.0.0.1, labels: {app: cql-client}}
listeners:
  - {name: cql, protocol: cassandra, bind: 127.0.0.1:$LISTENER, upstream: 127.0.0.1:$NODE,
     destination: {labels: {app: cassandra}, port: 9042}}
CONF
cat > "$work/policies/cql.yaml" <<'POLICY'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench}
spec:
  endpointSelector: {matchLabels: {app: cassandra}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: cql-client}}]
      toPorts:
        - ports: [{port: "9042", protocol: TCP}]
          rules:
            l7proto: cassandra
            l7:
              - {query_action: select, query_table: "^system"}
              - {query_action: select, query_table: "^bench\\.kv$"}
              - {query_action: insert, query_table: "^bench\\.kv$"}
POLICY
WEIR_LOG=warn taskset -c 1 "$WEIR" run --config "$work" >"$work/weir.log" 2>&1 &
pids+=($!)
for _ in $(seq 600); do
  python3 integration/python/cassandra_load.py setup "127.0.0.1:$NODE" >/dev/null 2>&1 && break
  sleep 0.2
done
wait_ready "$ADMIN" "$LISTENER"

python3 -c 'import lz4' 2>/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'lz4>=4,<5'
run() { # name port concurrency [lz4]
  echo "$1 $(taskset -c 0 python3 integration/python/cassandra_load.py run "127.0.0.1:$2" "$DURATION" "$3" ${4:-})"
}
run_rust() { # name port in-flight
  echo "$1 $(taskset -c 0 target/release/cassandra_load "127.0.0.1:$2" "$DURATION" "$3" "${VALUE_BYTES:-100}")"
}
results=(
  "$(run_rust rust-direct-4 "$NODE" 4)"
  "$(run_rust rust-weir-4 "$LISTENER" 4)"
  "$(run_rust rust-direct-50 "$NODE" 50)"
  "$(run_rust rust-weir-50 "$LISTENER" 50)"
  "$(run_rust rust-direct-200 "$NODE" 200)"
  "$(run_rust rust-weir-200 "$LISTENER" 200)"
  "$(run direct-4 "$NODE" 4)"
  "$(run weir-4 "$LISTENER" 4)"
  "$(run direct+lz4-4 "$NODE" 4 lz4)"
  "$(run direct-50 "$NODE" 50)"
  "$(run weir-50 "$LISTENER" 50)"
  "$(run direct+lz4-50 "$NODE" 50 lz4)"
)
denied=$(curl -s "127.0.0.1:$ADMIN/metrics" | grep -c 'verdict="denied"' || true)

python3 - "$DURATION" "$denied" "${results[@]}" <<'PY' | tee bench/results/cassandra.txt
import json, sys
duration, denied, *lines = sys.argv[1:]
rows = {}
for line in lines:
    name, data = line.split(" ", 1)
    rows[name] = json.loads(data)
import os
print(f"Cassandra 5.0 through weir vs direct: {duration}s per run, 50/50 prepared INSERT/SELECT, protocol v5, "
      f"{os.environ.get('VALUE_BYTES', '100')}-byte values")
print(f"{'target':<12}{'in flight':>10}{'ops/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'vs direct':>11}")
for n in ("4", "50"):
    base = rows[f"direct-{n}"]
    for who in ("direct", "weir", "direct+lz4"):
        r = rows[f"{who}-{n}"]
        ops = r["ops"] / r["seconds"]
        ratio = ops / (base["ops"] / base["seconds"])
        print(f"{who:<12}{n:>10}{ops:>9.0f}{r['p50_us'] / 1000:>9.2f}{r['p99_us'] / 1000:>9.2f}{r['errors']:>8}{ratio:>10.3f}x")
print()
print("The same mix from cassandra_load (Rust, protocol v4, one connection):")
print(f"{'target':<12}{'in flight':>10}{'ops/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'vs direct':>11}")
for n in ("4", "50", "200"):
    base = rows[f"rust-direct-{n}"]
    for who in ("direct", "weir"):
        r = rows[f"rust-{who}-{n}"]
        ops = r["ops"] / r["seconds"]
        ratio = ops / (base["ops"] / base["seconds"])
        print(f"{who:<12}{n:>10}{ops:>9.0f}{r['p50_us'] / 1000:>9.2f}{r['p99_us'] / 1000:>9.2f}{r['errors']:>8}{ratio:>10.3f}x")
print("target: weir >= 0.85x direct throughput")
if denied != "0":
    print(f"warning: {denied} denied series: the policy refused load traffic")
PY
