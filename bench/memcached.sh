#!/usr/bin/env bash
# memcached proxying cost, side by side in one run, on loopback:
#
#   direct   memcached_load -> memcached
#   haproxy  memcached_load -> HAProxy in TCP mode (bytes only, no policy:
#            what any userspace relay costs here) -> memcached
#   weir     memcached_load -> weir's memcached listener -> memcached, with
#            `l7proto: memcache` rules (every request parsed and judged by
#            the memcached-policy filter, a flow record each)
#
# memcached_load (integration/src/bin/memcached_load.rs) is memtier-style:
# N connections, half set / half get of VALUE-byte values, PIPELINE
# requests per round trip. Each CONNS_LIST entry is one round of the three:
# 50 is memtier's default clients per thread (throughput); 4 is latency
# bound (every request pays the relay's two extra loopback hops).
# memcached (1 thread) and the load run on CPU 0, the proxy (one worker) on
# CPU 1.
#
#   bench/memcached.sh
#   DURATION=20 CONNS_LIST="4 16 50" PIPELINE=1 bench/memcached.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNS_LIST=${CONNS_LIST:-4 50}
VALUE=${VALUE:-64}
PIPELINE=${PIPELINE:-1}

source bench/lib.sh
bench_start memcached_load
LOAD=$PWD/target/release/memcached_load
SERVER=$(port) LISTENER=$(port) ADMIN=$(port) HAPROXY=$(port)

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
haproxy_tcp 1 "$HAPROXY" "127.0.0.1:$SERVER"
wait_ready "$ADMIN" "$SERVER"
wait_ready "$ADMIN" "$HAPROXY"

run() { echo "$1 $2 $(taskset -c 0 "$LOAD" "127.0.0.1:$3" "$2" "$DURATION" "$VALUE" "$PIPELINE")"; }
results=()
for conns in $CONNS_LIST; do
  results+=("$(run direct "$conns" "$SERVER")" "$(run haproxy "$conns" "$HAPROXY")" "$(run weir "$conns" "$LISTENER")")
done
denied=$(curl -s "127.0.0.1:$ADMIN/metrics" | grep -c 'weir_memcached_requests_total{.*verdict="denied"' || true)

python3 - "$DURATION" "$VALUE" "$PIPELINE" "$denied" "${results[@]}" <<'PY' | tee bench/results/memcached.txt
import json, sys
duration, value, pipeline, denied, *lines = sys.argv[1:]
rounds = {}
for line in lines:
    name, conns, data = line.split(" ", 2)
    r = json.loads(data)
    rounds.setdefault(int(conns), {})[name] = (r["requests"] / r["seconds"], r)
print(f"memcached through weir vs HAProxy (TCP) vs direct: {duration}s per run, pipeline {pipeline}, "
      f"50% set / 50% get of {value} B values")
print(f"{'conns':>5}  {'target':<9}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'vs direct':>11}")
for conns, rows in sorted(rounds.items()):
    base = rows["direct"][0]
    for who in ("direct", "haproxy", "weir"):
        rps, r = rows[who]
        print(f"{conns:>5}  {who:<9}{rps:>10.0f}{r['p50_us'] / 1000:>9.3f}{r['p99_us'] / 1000:>9.3f}{rps / base:>10.3f}x")
    print(f"{'':>5}  weir / haproxy: {rows['weir'][0] / rows['haproxy'][0]:.3f}x")
if denied != "0":
    print(f"warning: {denied} denied request series: the policy refused load traffic")
PY
