#!/usr/bin/env bash
# Pod-to-pod cost of the eBPF datapath, side by side in one run, on a node
# made of network namespaces (client pod, server pod, veth pairs):
#
#   none        no weir, no programs
#   none+rules  no programs, only the two ip rules and the route weir installs
#               for proxied packets: what policy routing costs every packet
#               of the node once any rule exists (Cilium installs the same)
#   l3l4        weir's programs enforce an L3/L4 policy in the kernel; allowed
#               packets go from the client's veth straight into the server
#               pod (`datapath.host_routing: bpf`, the default)
#   l3l4-kr     the same with `host_routing: kernel`: the node routes them
#   l7-ebpf     an L7 rule: the programs hand connections to weir (sk_assign)
#   l7-tproxy   the same L7 rule, with the redirect done by iptables TPROXY
#               instead (the client's veth has no program; the server's has)
#   x-none      from a pod on a second node (joined by a veth wire), no weir
#   x-l7        the same with the L7 rule, which the server node's weir
#               enforces after weir_from_netdev hands it the connection
#   l7-splice   l7-ebpf with `datapath.splice: true`: the proxy's writes to
#               the client pod spliced into its socket (sockmap)
#   none6, l3l4-6, l7-ebpf6
#               none, l3l4 and l7-ebpf between the same pods over IPv6
#   l3l4-kr6    l3l4-kr over IPv6
#
# HTTP: wrk in the client pod against nginx in the server pod (rps, p50, p99).
# TCP stream: iperf3 for none, l3l4 and l3l4-kr. Prints ratios to `none`, and for the
# L7 redirect eBPF : TPROXY. The proxy runs one worker on CPU 1; load and
# server share CPU 0.
#
#   bench/datapath.sh
#   DURATION=20 CONNS=100 bench/datapath.sh
#   PERF=1 bench/datapath.sh    also samples both CPUs (perf, cpu-clock) during
#                               each HTTP run: bench/results/perf-<run>.txt
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
P=wbench
CLIENT=10.200.0.10 SERVER=10.200.0.11 REMOTE=10.200.1.10
CLIENT6=fd00:200::a SERVER6=fd00:200::b

scripts/setup.sh
# WEIR_BIN=PATH measures another build (e.g. the previous commit's) instead
if [ -z "${WEIR_BIN:-}" ]; then cargo build --locked --release --bin weir 2>&1 | tail -1; fi
WEIR=${WEIR_BIN:-$PWD/target/release/weir}
work=$(mktemp -d)
mkdir -p "$work/policies" bench/results

weir_pid=""
servers=()
stop_weir() {
  if [ -n "$weir_pid" ]; then kill -TERM "$weir_pid" 2>/dev/null || true; wait "$weir_pid" 2>/dev/null || true; weir_pid=""; fi
}
cleanup() {
  stop_weir
  for p in "${servers[@]}"; do kill "$p" 2>/dev/null || true; done
  ip netns exec $P-node iptables -t mangle -F 2>/dev/null || true
  "$WEIR" datapath cleanup --config "$work" >/dev/null 2>&1 || true
  for n in node cli srv; do ip netns del $P-$n 2>/dev/null || true; done
  for n in node cl2; do ip netns del ${P}2-$n 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
for n in node cli srv; do ip netns del $P-$n 2>/dev/null || true; done
for n in node cl2; do ip netns del ${P}2-$n 2>/dev/null || true; done

# --- the node, and a second node with one client pod, joined by a wire -------
DUAL_STACK=1 bench_node $P cli srv
SUBNET=1 bench_node ${P}2 cl2
ip -n $P-node link add ${P}wire type veth peer name ${P}2wire netns ${P}2-node
ip -n $P-node addr add 10.201.0.1/30 dev ${P}wire
ip -n ${P}2-node addr add 10.201.0.2/30 dev ${P}2wire
ip -n $P-node link set ${P}wire up
ip -n ${P}2-node link set ${P}2wire up
ip -n $P-node route add 10.200.1.0/24 via 10.201.0.2 dev ${P}wire
ip -n ${P}2-node route add 10.200.0.0/24 via 10.201.0.1 dev ${P}2wire

# --- the server pod: nginx (one worker) and iperf3 ---------------------------
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<CONF
daemon off; worker_processes 1; user root; error_log $work/nginx/error.log; pid $work/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  client_body_temp_path $work/nginx/b; proxy_temp_path $work/nginx/p;
  fastcgi_temp_path $work/nginx/f; uwsgi_temp_path $work/nginx/u; scgi_temp_path $work/nginx/s;
  server { listen $SERVER:80; listen [$SERVER6]:80; location / { return 200 "hello from the server pod\n"; } }
}
CONF
ip netns exec $P-srv taskset -c 0 nginx -c "$work/nginx/nginx.conf" &
servers+=($!)
ip netns exec $P-srv iperf3 -s -p 5201 >/dev/null 2>&1 &
servers+=($!)
sleep 1

# --- weir configurations -----------------------------------------------------
endpoints() { # $1: "with" or "without" the client's interface
  local iface=""
  [ "$1" = with ] && iface=", interface: ${P}cli"
  cat <<YAML
admin: 127.0.0.1:19901
workers: 1
log_flows: false
datapath: {bpffs: /sys/fs/bpf/weir-bench, devices: [${P}wire], splice: ${SPLICE:-false}, host_routing: ${HOST_ROUTING:-bpf}}
endpoints:
  - {name: client, addresses: [$CLIENT, "$CLIENT6"], labels: {app: client}$iface}
  - {name: remote-client, address: $REMOTE, labels: {app: client}}
  - {name: server, addresses: [$SERVER, "$SERVER6"], labels: {app: server}, interface: ${P}srv}
YAML
}
policy() { # $1: l4 or l7
  local rules=""
  [ "$1" = l7 ] && rules='
          rules:
            http: [{method: GET, path: "/.*"}]'
  cat <<YAML
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]$rules
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "5201", protocol: TCP}]
YAML
}
start_weir() { # $1: with|without client interface, $2: l4|l7
  endpoints "$1" >"$work/weir.yaml"
  policy "$2" >"$work/policies/server.yaml"
  # `ip netns exec` mounts a sysfs of its own, which hides the cgroup2 mount
  # weir_sockops attaches to (splicing): mount it again in there
  ip netns exec $P-node sh -c 'mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec taskset -c 1 "$0" run --config "$1" --datapath ebpf' \
    "$WEIR" "$work" >"$work/weir.log" 2>&1 &
  weir_pid=$!
  for _ in $(seq 100); do
    ip netns exec $P-node curl -sf http://127.0.0.1:19901/healthz >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  cat "$work/weir.log" >&2; exit 1
}

# --- measurements ------------------------------------------------------------
declare -A RPS P50 P99 GBPS
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v); print v } else { sub(/s$/, "", v); print v * 1000 } }'; }
# TCP segments a namespace has sent (TcpOutSegs): about one per request over
# TCP, none for a pod-to-pod connection spliced past it
tcp_out_segs() { ip netns exec "$1" awk '/^Tcp:/ && $12 ~ /^[0-9]+$/ { print $12 }' /proc/net/snmp; }
http_run() { # $1: name, $2: the client's namespace (default: the client pod), $3: the server's address in a URL
  local from=${2:-$P-cli} server=${3:-$SERVER}
  check=$(ip netns exec "$from" curl -s -m 3 "http://$server/")
  [ "$check" = "hello from the server pod" ] || { echo "$1: the server is not reachable ($check)" >&2; exit 1; }
  local perf_pid=""
  if [ -n "${PERF:-}" ]; then
    perf record -a -g -F 499 -o "$work/perf-$1.data" -- sleep "$DURATION" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  local segs_before segs_per_request
  segs_before=$(tcp_out_segs "$from")
  out=$(ip netns exec "$from" taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://$server/")
  segs_per_request=$(awk -v s=$(($(tcp_out_segs "$from") - segs_before)) -v r="$(awk '/requests in/ {print $1}' <<<"$out")" \
    'BEGIN { printf "%.2f", s / r }')
  if [ -n "$perf_pid" ]; then
    wait "$perf_pid" || true
    # flat profile by symbol, kernel and user alike (eBPF programs show as
    # bpf_prog_*), then every symbol of the datapath's own cost: the
    # programs, their map lookups and the helpers they call
    {
      echo "== top symbols, both CPUs (pv_native_safe_halt: idle)"
      perf report -i "$work/perf-$1.data" --no-children -g none --sort dso,sym --stdio 2>/dev/null \
        | grep '%' | grep -v '^#' | head -30 || true
      echo "== the datapath's own symbols"
      perf report -i "$work/perf-$1.data" --no-children -g none --sort sym --stdio 2>/dev/null \
        | grep -E 'bpf_prog_|htab_|trie_|lpm|bpf_sk|skc_lookup|sk_assign|ktime_get_ns|bpf_map|percpu' || true
    } >"bench/results/perf-$1.txt"
    # every symbol, to compare runs (e.g. none against l3l4)
    perf report -i "$work/perf-$1.data" --no-children -g none --sort sym --stdio 2>/dev/null \
      | grep '%' | grep -v '^#' >"bench/results/perf-$1.all.txt" || true
    rm -f "$work/perf-$1.data"
  fi
  RPS[$1]=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  P50[$1]=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  P99[$1]=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  echo "$1: ${RPS[$1]} rps, $segs_per_request client segments/request" >&2
}
iperf_run() { # $1: name
  bps=$(ip netns exec $P-cli iperf3 -c $SERVER -p 5201 -t "$DURATION" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])')
  GBPS[$1]=$(awk -v b="$bps" 'BEGIN { printf "%.2f", b / 1e9 }')
  echo "$1: ${GBPS[$1]} Gbit/s" >&2
}

http_run none
http_run none6 $P-cli "[$SERVER6]"
iperf_run none
ip -n $P-node rule add pref 9000 fwmark 0x200/0xf00 iif lo lookup main
ip -n $P-node rule add pref 9001 fwmark 0x200/0xf00 lookup 2004
ip -n $P-node route add local 0.0.0.0/0 dev lo table 2004
http_run none+rules
ip -n $P-node rule del pref 9000
ip -n $P-node rule del pref 9001
ip -n $P-node route del local 0.0.0.0/0 dev lo table 2004
http_run x-none ${P}2-cl2

start_weir with l4
http_run l3l4
http_run l3l4-6 $P-cli "[$SERVER6]"
iperf_run l3l4
stop_weir

HOST_ROUTING=kernel start_weir with l4
http_run l3l4-kr
http_run l3l4-kr6 $P-cli "[$SERVER6]"
iperf_run l3l4-kr
stop_weir

# each L7 row on a weir of its own, as l7-tproxy and x-l7 are, so that
# every row it is compared with starts from the same state
start_weir with l7
http_run l7-ebpf
grep -q '"listener":"ebpf"' <(ip netns exec $P-node curl -s "http://127.0.0.1:19901/flows") \
  || { echo "l7-ebpf: requests did not go through the proxy" >&2; exit 1; }
stop_weir

start_weir with l7
http_run l7-ebpf6 $P-cli "[$SERVER6]"
grep -q "\"address\":\"\[$CLIENT6\]:" <(ip netns exec $P-node curl -s "http://127.0.0.1:19901/flows?protocol=http") \
  || { echo "l7-ebpf6: IPv6 requests did not go through the proxy" >&2; exit 1; }
stop_weir

SPLICE=true start_weir with l7
! grep -q "is off" "$work/weir.log" || { cat "$work/weir.log" >&2; echo "l7-splice: not spliced" >&2; exit 1; }
http_run l7-splice
stop_weir

start_weir without l7
ip netns exec $P-node iptables -t mangle -A PREROUTING -i ${P}cli -p tcp --dport 80 \
  -j TPROXY --on-ip 127.0.0.1 --on-port 15001 --tproxy-mark 0x200/0xf00
http_run l7-tproxy
grep -q '"listener":"ebpf"' <(ip netns exec $P-node curl -s "http://127.0.0.1:19901/flows") \
  || { echo "l7-tproxy: requests did not go through the proxy" >&2; exit 1; }
ip netns exec $P-node iptables -t mangle -F
stop_weir

start_weir with l7
http_run x-l7 ${P}2-cl2
grep -q "\"address\":\"$REMOTE:" <(ip netns exec $P-node curl -s "http://127.0.0.1:19901/flows?protocol=http") \
  || { echo "x-l7: requests from the other node did not go through the proxy" >&2; exit 1; }
stop_weir

# --- table -------------------------------------------------------------------
result=bench/results/datapath-$(date +%Y%m%d-%H%M%S).txt
{
  echo "pod -> pod, wrk -c$CONNS ${DURATION}s, nginx in the server pod, weir one worker"
  printf '%-10s %10s %8s %8s %10s %9s\n' target rps p50_ms p99_ms vs_none gbit/s
  for t in none none+rules l3l4 l3l4-kr l7-ebpf l7-splice l7-tproxy x-none x-l7 none6 l3l4-6 l3l4-kr6 l7-ebpf6; do
    base=none; [[ $t == x-* ]] && base=x-none; [[ $t == *6 ]] && base=none6
    ratio=$(awk -v a="${RPS[$t]}" -v b="${RPS[$base]}" 'BEGIN { printf "%.3f", a / b }')
    printf '%-10s %10s %8s %8s %10s %9s\n' "$t" "${RPS[$t]}" "${P50[$t]}" "${P99[$t]}" "$ratio" "${GBPS[$t]:--}"
  done
  awk -v a="${GBPS[l3l4]}" -v b="${GBPS[none]}" 'BEGIN { printf "L3/L4 stream throughput vs none: %.3f (target >= 0.95)\n", a / b }'
  awk -v a="${RPS[l3l4]}" -v b="${RPS[none]}" 'BEGIN { printf "L3/L4 HTTP rps vs none: %.3f (target >= 0.95)\n", a / b }'
  awk -v a="${GBPS[l3l4-kr]}" -v b="${GBPS[none]}" 'BEGIN { printf "L3/L4, host_routing: kernel, stream vs none: %.3f\n", a / b }'
  awk -v a="${RPS[l3l4-kr]}" -v b="${RPS[none]}" 'BEGIN { printf "L3/L4, host_routing: kernel, HTTP rps vs none: %.3f\n", a / b }'
  awk -v a="${RPS[l7-ebpf]}" -v b="${RPS[l7-tproxy]}" 'BEGIN { printf "L7 redirect, eBPF sk_assign vs iptables TPROXY: %.3f (target >= 1)\n", a / b }'
  awk -v a="${RPS[l7-ebpf]}" -v b="${RPS[none]}" 'BEGIN { printf "L7 via weir vs no policy: %.3f (target >= 0.45; Cilium publishes 0.14)\n", a / b }'
  awk -v a="${RPS[x-l7]}" -v b="${RPS[x-none]}" 'BEGIN { printf "cross-node L7 via weir vs cross-node no policy: %.3f\n", a / b }'
  awk -v a="${RPS[l7-splice]}" -v b="${RPS[l7-ebpf]}" 'BEGIN { printf "L7 with the proxy writes spliced (sockmap) vs without: %.3f\n", a / b }'
  awk -v a="${RPS[l3l4-6]}" -v b="${RPS[none6]}" 'BEGIN { printf "IPv6 L3/L4 HTTP rps vs IPv6 none: %.3f\n", a / b }'
  awk -v a="${RPS[l3l4-kr6]}" -v b="${RPS[none6]}" 'BEGIN { printf "IPv6 L3/L4, host_routing: kernel, vs IPv6 none: %.3f\n", a / b }'
  awk -v a="${RPS[l7-ebpf6]}" -v b="${RPS[none6]}" 'BEGIN { printf "IPv6 L7 via weir vs IPv6 none: %.3f\n", a / b }'
  echo "(vs_none of the x- rows is against x-none, of the -6 rows against none6)"
} | tee "$result"
