#!/usr/bin/env bash
# Kafka proxying cost, side by side in one run, on loopback:
#
#   direct   kafka_load -> the broker
#   weir     kafka_load -> weir's Kafka listener -> the broker, with a produce
#            and a consume rule (every request judged by the kafka-policy filter)
#   haproxy  kafka_load -> HAProxy in TCP mode (splice-auto) -> the broker: a
#            relay that reads no Kafka at all, the floor for any proxy here
#
# The broker is the real Apache Kafka (KRaft, one node, scripts/kafka.sh), or
# tansu (in memory) with BROKER_KIND=tansu.
#
# kafka_load (integration/src/bin/kafka_load.rs, on the kafka-protocol crate)
# keeps WINDOW requests in flight on one connection and times each:
#   produce  BATCH records of RECORD bytes per Produce (acks=1)
#   fetch    1 MiB Fetches re-reading a partition that holds 1000 records
# The broker runs on CPU 0, weir (one worker) and HAProxy (one thread) on CPU 1,
# the load on CPU 0.
#
#   bench/kafka.sh
#   DURATION=20 BATCH=500 bench/kafka.sh
#   BROKER_KIND=tansu bench/kafka.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
BATCH=${BATCH:-100}
RECORD=${RECORD:-1024}
WINDOW=${WINDOW:-8}
BROKER_KIND=${BROKER_KIND:-apache}

source bench/lib.sh
bench_start kafka_load
LOAD=$PWD/target/release/kafka_load
BROKER=$(port) LISTENER=$(port) ADMIN=$(port)

if [ "$BROKER_KIND" = tansu ]; then
  taskset -c 0 tansu broker --listener-url "tcp://127.0.0.1:$BROKER" \
    --advertised-listener-url "tcp://127.0.0.1:$LISTENER" --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
  pids+=($!)
else
  # clients' listener advertises weir; a second one (SETUP) for creating topics
  SETUP=$(port) CONTROLLER=$(port)
  WEIR_KAFKA_CONTROLLER_PORT=$CONTROLLER WEIR_KAFKA_PROPERTIES="
listeners=PLAINTEXT://127.0.0.1:$BROKER,SETUP://127.0.0.1:$SETUP,CONTROLLER://127.0.0.1:$CONTROLLER
advertised.listeners=PLAINTEXT://127.0.0.1:$LISTENER,SETUP://127.0.0.1:$SETUP
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SETUP:PLAINTEXT
inter.broker.listener.name=SETUP" taskset -c 0 scripts/kafka.sh start "$work/kafka" "$BROKER" >"$work/kafka.log" 2>&1 &
  pids+=($!)
fi

cat > "$work/weir.yaml" <<CONF
admin: 127.0.0.1:$ADMIN
workers: 1
endpoints:
  - {name: producer, address: 127.0.0.1, labels: {app: producer}}
listeners:
  - {name: kafka, protocol: kafka, bind: 127.0.0.1:$LISTENER, upstream: 127.0.0.1:$BROKER,
     destination: {labels: {app: kafka}, port: 9092}}
CONF
cat > "$work/policies/kafka.yaml" <<'POLICY'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: producer}}]
      toPorts:
        - ports: [{port: "9092", protocol: TCP}]
          rules:
            kafka:
              - {role: produce, topic: bench-direct}
              - {role: produce, topic: bench-weir}
              - {role: consume, topic: bench-fetch}
POLICY
HAPROXY=$(port)
haproxy_tcp 1 "$HAPROXY" "127.0.0.1:$BROKER"
WEIR_LOG=warn taskset -c 1 "$WEIR" run --config "$work" >"$work/weir.log" 2>&1 &
pids+=($!)
wait_ready "$ADMIN" "$BROKER"
for t in bench-direct bench-weir bench-fetch; do
  if [ "$BROKER_KIND" = tansu ]; then
    tansu topic create --broker "tcp://127.0.0.1:$BROKER" --partitions 1 "$t"
  else
    for _ in $(seq 50); do
      python3 integration/python/kafka_client.py "127.0.0.1:$SETUP" setup create-topic "$t" | grep -q '"ok": true' && break
      sleep 0.2
    done
  fi
done
# the fetch partition: 1000 records of RECORD bytes
taskset -c 0 "$LOAD" "127.0.0.1:$BROKER" bench-fetch produce 0.001 1000 "$RECORD" 1 >/dev/null

run() { # name target topic mode
  echo "$1 $(taskset -c 0 "$LOAD" "127.0.0.1:$2" "$3" "$4" "$DURATION" "$BATCH" "$RECORD" "$WINDOW")"
}
results=(
  "$(run produce-direct "$BROKER" bench-direct produce)"
  "$(run produce-weir "$LISTENER" bench-weir produce)"
  "$(run produce-haproxy "$HAPROXY" bench-weir produce)"
  "$(run fetch-direct "$BROKER" bench-fetch fetch)"
  "$(run fetch-weir "$LISTENER" bench-fetch fetch)"
  "$(run fetch-haproxy "$HAPROXY" bench-fetch fetch)"
)
denied=$(curl -s "127.0.0.1:$ADMIN/metrics" | grep -c 'weir_kafka_requests_total{.*verdict="denied"' || true)

python3 - "$BROKER_KIND" "$DURATION" "$BATCH" "$RECORD" "$WINDOW" "$denied" "${results[@]}" <<'PY' | tee "bench/results/kafka-$BROKER_KIND.txt"
import json, sys
kind_name, duration, batch, record, window, denied, *lines = sys.argv[1:]
rows = {}
for line in lines:
    name, data = line.split(" ", 1)
    rows[name] = json.loads(data)
print(f"Kafka through weir vs direct to the broker ({kind_name}): {duration}s per run, window {window}, "
      f"produce batches of {batch} x {record} B")
print(f"{'target':<16}{'req/s':>9}{'msg/s':>10}{'MB/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'vs direct':>11}"
      f"{'vs haproxy':>12}")
rate = lambda r: r["bytes"] / r["seconds"] / 1e6
for kind in ("produce", "fetch"):
    base, relay = rows[f"{kind}-direct"], rows[f"{kind}-haproxy"]
    for who in ("direct", "weir", "haproxy"):
        r = rows[f"{kind}-{who}"]
        secs = r["seconds"]
        mbps = rate(r)
        print(f"{kind + ' ' + who:<16}{r['requests'] / secs:>9.0f}{r['records'] / secs:>10.0f}{mbps:>9.1f}"
              f"{r['p50_us'] / 1000:>9.2f}{r['p99_us'] / 1000:>9.2f}{mbps / rate(base):>10.3f}x"
              f"{mbps / rate(relay):>11.3f}x")
if denied != "0":
    print(f"warning: {denied} denied request series: the policy refused load traffic")
PY
