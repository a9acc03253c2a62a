#!/usr/bin/env bash
# DNS proxying cost, side by side in one run, on loopback:
#
#   direct    dnsperf -> unbound (serving the test zone from memory)
#   weir      dnsperf -> weir's DNS listener -> unbound, with a policy of
#             PATTERNS matchPattern rules (the last one allows the queried names)
#   dnsmasq   dnsperf -> dnsmasq forwarding to the same unbound, cache off
#             (weir does not cache answers either)
#
# dnsperf sends from 127.0.0.2 (weir's client endpoint) in two passes per
# target: flat out (4 clients, 100 queries outstanding: the most queries per
# second) and at a steady RATE (latency when not saturated). Every query's
# latency is read from dnsperf -v and turned into p50/p99. weir (one worker)
# and dnsmasq (single-threaded) run on CPU 1; unbound and dnsperf share CPU 0.
#
#   bench/dns.sh
#   DURATION=20 PATTERNS=500 bench/dns.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
PATTERNS=${PATTERNS:-300}
RATE=${RATE:-5000}
NAMES=1000

scripts/setup.sh
# WEIR_BIN=PATH measures another build (e.g. the previous commit's) instead
if [ -z "${WEIR_BIN:-}" ]; then cargo build --locked --release --bin weir 2>&1 | tail -1; fi
WEIR=${WEIR_BIN:-$PWD/target/release/weir}
work=$(mktemp -d)
mkdir -p "$work/policies" bench/results
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UNBOUND=$(port) WEIR_DNS=$(port) DNSMASQ=$(port) ADMIN=$(port)

# --- the resolver: NAMES A records in a static local zone ---------------------
{
  cat <<CONF
server:
  interface: 127.0.0.1@$UNBOUND
  port: $UNBOUND
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "$work"
  pidfile: ""
  use-syslog: no
  logfile: ""
  do-ip6: no
  num-threads: 1
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  local-zone: "bench.example." static
CONF
  for i in $(seq 0 $((NAMES - 1))); do
    echo "  local-data: \"q$i.bench.example. 3600 IN A 10.$((i / 256)).$((i % 256)).1\""
  done
} > "$work/unbound.conf"
taskset -c 0 unbound -d -c "$work/unbound.conf" & pids+=($!)
for i in $(seq 0 $((NAMES - 1))); do echo "q$i.bench.example A"; done > "$work/queries"

# --- weir: a DNS listener and a policy with PATTERNS patterns -----------------
cat > "$work/weir.yaml" <<CONF
admin: 127.0.0.1:$ADMIN
workers: 1
log_flows: false
flow_history: 0
dns: {cache_file: ""}
endpoints:
  - {name: client, address: 127.0.0.2, labels: {app: client}}
listeners:
  - {name: dns, protocol: dns, bind: 127.0.0.1:$WEIR_DNS, upstream: 127.0.0.1:$UNBOUND,
     destination: {labels: {k8s-app: kube-dns}, port: 53}}
CONF
{
  cat <<POLICY
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-dns}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]
      toPorts:
        - ports: [{port: "53", protocol: ANY}]
          rules:
            dns:
POLICY
  for i in $(seq 1 $((PATTERNS - 1))); do echo "              - matchPattern: \"*.team$i.svc.example\""; done
  echo "              - matchPattern: \"*.bench.example\""
} > "$work/policies/dns.yaml"
WEIR_LOG=warn taskset -c 1 "$WEIR" run --config "$work" & pids+=($!)
taskset -c 1 dnsmasq -k --no-resolv --no-hosts --cache-size=0 --user=root --bind-interfaces \
  --listen-address=127.0.0.1 --port="$DNSMASQ" --server="127.0.0.1#$UNBOUND" \
  --dns-forward-max=1000 --log-facility=/dev/null & pids+=($!)

ready() { dig -b 127.0.0.2 @127.0.0.1 -p "$1" +time=1 +tries=1 q1.bench.example A 2>/dev/null | grep -q "status: NOERROR"; }
for p in $UNBOUND $WEIR_DNS $DNSMASQ; do
  for _ in $(seq 1 100); do ready "$p" && break; sleep 0.1; done
  ready "$p" || { echo "nothing answers on port $p" >&2; exit 1; }
done
# a refused name really is refused (the policy is in force)
dig -b 127.0.0.2 @127.0.0.1 -p "$WEIR_DNS" q1.other.example A | grep -q "status: REFUSED"

run() { # name port [dnsperf options]
  local out="$work/$1.out" name=$1 port=$2
  shift 2
  taskset -c 0 dnsperf -a 127.0.0.2 -s 127.0.0.1 -p "$port" -d "$work/queries" -l "$DURATION" -v "$@" > "$out" 2>&1
  python3 - "$name" "$out" <<'PY'
import re, sys
name, path = sys.argv[1], sys.argv[2]
lat, qps, lost = [], 0.0, "?"
for line in open(path):
    if line.startswith("> "):
        parts = line.split()
        if len(parts) >= 5:
            lat.append(float(parts[-1]))
    m = re.search(r"Queries per second:\s+([\d.]+)", line)
    if m: qps = float(m.group(1))
    m = re.search(r"Queries lost:\s+(\d+)", line)
    if m: lost = m.group(1)
lat.sort()
pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
print(f"{name} {qps:.0f} {pct(0.5):.3f} {pct(0.99):.3f} {lost}")
PY
}

flat=() steady=()
for target in "direct $UNBOUND" "weir $WEIR_DNS" "dnsmasq $DNSMASQ"; do
  set -- $target
  flat+=("$(run "$1" "$2" -c 4 -q 100)")
  steady+=("$(run "$1" "$2" -c 1 -q 20 -Q "$RATE")")
done

python3 - "$PATTERNS" "$DURATION" "$RATE" "${flat[@]}" "${steady[@]}" <<'PY' | tee bench/results/dns.txt
import sys
patterns, duration, rate = sys.argv[1:4]
flat = [r.split() for r in sys.argv[4:7]]
steady = {r.split()[0]: r.split() for r in sys.argv[7:10]}
base = {r[0]: float(r[1]) for r in flat}
print(f"DNS over UDP on loopback, {duration}s per pass; weir's policy has {patterns} patterns")
print(f"| {'target':<8} | {'qps (flat out)':>14} | {'p50 ms':>7} | {'p99 ms':>7} | {'lost':>5} | {'vs direct':>9} | {'vs dnsmasq':>10} | {'p50 ms @' + rate + '/s':>14} | {'p99 ms @' + rate + '/s':>14} |")
print(f"|{'-'*10}|{'-'*16}|{'-'*9}|{'-'*9}|{'-'*7}|{'-'*11}|{'-'*12}|{'-'*16}|{'-'*16}|")
for name, qps, p50, p99, lost in flat:
    q = float(qps)
    s = steady[name]
    print(f"| {name:<8} | {q:>14.0f} | {p50:>7} | {p99:>7} | {lost:>5} | {q / base['direct']:>9.3f} | {q / base['dnsmasq']:>10.3f} | {s[2]:>14} | {s[3]:>14} |")
PY
