#!/usr/bin/env bash
# memcached proxying cost, side by side in one run, on loopback:
#
#   direct   memcached_load -> memcached
#   weir     memcached_load -> weir's memcached listener -> memcached, with
#            `l7proto: memcache` rules (every request judged by the
#            memcached-policy filter)
#
# memcached_load (integration/src/bin/memcached_load.rs) is memtier-style:
# CONNS connections, half set / half get of VALUE-byte values, PIPELINE
# requests per round trip. memcached (1 thread) and the load run on CPU 0,
# weir (one worker) on CPU 1.
#
#   bench/memcached.sh
#   DURATION=20 CONNS=8 PIPELINE=1 bench/memcached.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNS=${CONNS:-4}
VALUE=${VALUE:-64}
PIPELINE=${PIPELINE:-1}

source bench/lib.sh
bench_start memcached_load
LOAD=$PWD/target/release/memcached_load
SERVER=$(port) LISTENER=$(port) ADMIN=$(port)

taskset -c 0 memcached -l 127.0.0.1 -p "$SERVER" -U 0 -t 1 -m 256 -u root >"$work/memcached.log" 2>&1 &
pids+=($!)
cat > "$work/weir.yaml" <<CONF
admin: 127.0.0.1:$ADMIN
workers: 1
log_flows: false
endpoints:
  - {name: client, address: 127.0.0.1, labels: {app: cache-client}}
listeners:
  - {name: cache, protocol: memcached, bind: 127.0.0.1:$LISTENER, upstream: 127.0.0.1:$SERVER,
     destination: {labels: {app: memcached}, port: 11211}}
CONF
cat > "$work/policies/cache.yaml" <<'POLICY'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench}
spec:
  endpointSelector: {matchLabels: {app: memcached}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: cache-client}}]
      toPorts:
        - ports: [{port: "11211", protocol: TCP}]
          rules:
            l7proto: memcache
            l7:
              - {command: get, keyPrefix: "bench/"}
              - {command: set, keyPrefix: "bench/"}
              - {command: delete, keyRegex: "^tmp"}
POLICY
WEIR_LOG=warn taskset -c 1 "$WEIR" run --config "$work" >"$work/weir.log" 2>&1 &
pids+=($!)
wait_ready "$ADMIN" "$SERVER"

run() { echo "$1 $(taskset -c 0 "$LOAD" "127.0.0.1:$2" "$CONNS" "$DURATION" "$VALUE" "$PIPELINE")"; }
results=("$(run direct "$SERVER")" "$(run weir "$LISTENER")")
denied=$(curl -s "127.0.0.1:$ADMIN/metrics" | grep -c 'weir_memcached_requests_total{.*verdict="denied"' || true)

python3 - "$DURATION" "$CONNS" "$VALUE" "$PIPELINE" "$denied" "${results[@]}" <<'PY' | tee bench/results/memcached.txt
import json, sys
duration, conns, value, pipeline, denied, *lines = sys.argv[1:]
rows = {}
for line in lines:
    name, data = line.split(" ", 1)
    rows[name] = json.loads(data)
print(f"memcached through weir vs direct: {duration}s per run, {conns} connections, "
      f"pipeline {pipeline}, 50% set / 50% get of {value} B values")
print(f"{'target':<10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'vs direct':>11}")
base = rows["direct"]["requests"] / rows["direct"]["seconds"]
for who in ("direct", "weir"):
    r = rows[who]
    rps = r["requests"] / r["seconds"]
    print(f"{who:<10}{rps:>10.0f}{r['p50_us'] / 1000:>9.3f}{r['p99_us'] / 1000:>9.3f}{rps / base:>10.3f}x")
if denied != "0":
    print(f"warning: {denied} denied request series: the policy refused load traffic")
PY
