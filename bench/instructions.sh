#!/usr/bin/env bash
# User-space instructions per request, counted by valgrind's callgrind, for
# weir (the quickstart rules, and a listener no policy selects), nginx and
# HAProxy (the same rules as bench/http.sh), side by side in one run, over
# HTTP/1.1 and h2c. A count does not move with what else the machine runs,
# as requests per second on a shared VM do (docs/benchmarks.md): it shows a
# change to the hot path that a throughput run cannot tell from noise. It
# leaves out what the kernel does (system calls, TCP) and what the CPU makes
# of the instructions (cache misses): bench/http.sh measures those.
#
#   bench/instructions.sh            # 3,000 requests per target
#   N=10000 bench/instructions.sh
#   WEIR_BIN=/path/to/weir bench/instructions.sh   # another build
#
# Each proxy runs under callgrind with counting off; after 300 requests to
# warm it, counting is on for N requests (10 connections, one request at a
# time on each), then off. Envoy is left out: under valgrind it takes
# minutes to start, and bench/http.sh already shows it at 3-4x weir's CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-3000}
source bench/lib.sh
bench_start

UP_H1=18200 UP_H2=18201
WEIR_POLICY=18210 WEIR_OPEN=18211 WEIR_ADMIN=18219
NGINX_H1=18220 NGINX_H2=18221
HAPROXY_H1=18230 HAPROXY_H2=18231
for p in $UP_H1 $UP_H2 $WEIR_POLICY $WEIR_OPEN $WEIR_ADMIN $NGINX_H1 $NGINX_H2 $HAPROXY_H1 $HAPROXY_H2; do
  if (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null; then echo "port $p is in use: stop what listens there" >&2; exit 1; fi
done
wait_port() { for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.2; done; echo "port $1 never opened" >&2; exit 1; }
# counting starts off: start-up (weir compiling its filters) is not counted
callgrind() { exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/$1.%p.out" "${@:2}"; }

# the upstream, natively: only the proxies are counted
mkdir -p "$work/up"
{ nginx_preamble "$work/up"; cat <<CONF
  server { listen 127.0.0.1:$UP_H1; listen 127.0.0.1:$UP_H2 http2; location / { return 200 "hello from upstream\n"; } }
}
CONF
} > "$work/up/nginx.conf"
nginx -p "$work/up" -c "$work/up/nginx.conf" & pids+=($!)

# the filter instances' address space must fit valgrind's
weir_rules_config $WEIR_ADMIN 1 $WEIR_POLICY $WEIR_OPEN $UP_H1 ", filter_instances: 32" > "$work/weir.yaml"
cp examples/quickstart/policies/demo-api.yaml "$work/policies/"
WEIR_LOG=warn callgrind weir "$WEIR" run --config "$work" & pids+=($!)
weir_pid=$!

mkdir -p "$work/nginx"
{ nginx_preamble "$work/nginx" 1 "master_process off; "; nginx_rules $NGINX_H1 $NGINX_H2 $UP_H1; } > "$work/nginx/nginx.conf"
callgrind nginx nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" & pids+=($!)
nginx_pid=$!

haproxy_rules 1 $HAPROXY_H1 $HAPROXY_H2 $UP_H1 > "$work/haproxy.cfg"
callgrind haproxy haproxy -f "$work/haproxy.cfg" -db & pids+=($!)
haproxy_pid=$!

for p in $UP_H1 $WEIR_POLICY $WEIR_ADMIN $NGINX_H1 $HAPROXY_H1; do wait_port "$p"; done

# $1 name, $2 pid, $3 h1|h2, $4 port: prints the row
measure() {
  local name=$1 pid=$2 proto=$3 port=$4 flags=() out ok before after instructions
  [ "$proto" = h1 ] && flags=(--h1)
  h2load "${flags[@]}" -n 300 -c 10 -m 1 "http://127.0.0.1:$port/public/index.html" >/dev/null
  callgrind_control -i on "$pid" >/dev/null
  out=$(h2load "${flags[@]}" -n "$N" -c 10 -m 1 "http://127.0.0.1:$port/public/index.html")
  callgrind_control -i off "$pid" >/dev/null
  before=$(cat "$work/$name".*.out* 2>/dev/null | awk '/^totals:/ {s += $2} END {print s + 0}')
  callgrind_control -d "$pid" >/dev/null
  for _ in $(seq 50); do
    after=$(cat "$work/$name".*.out* 2>/dev/null | awk '/^totals:/ {s += $2} END {print s + 0}')
    [ "$after" -gt "$before" ] && break
    sleep 0.2
  done
  ok=$(echo "$out" | awk '/^status codes:/ {print $3}')
  instructions=$(( (after - before) / N ))
  printf "%s %s %s %s\n" "$name" "$proto" "$ok" "$instructions"
}

rows=()
for proto in h1 h2; do
  [ "$proto" = h1 ] && ports=($WEIR_POLICY $WEIR_OPEN $NGINX_H1 $HAPROXY_H1) || ports=($WEIR_POLICY $WEIR_OPEN $NGINX_H2 $HAPROXY_H2)
  rows+=("$(measure weir "$weir_pid" "$proto" "${ports[0]}" | sed 's/^weir/weir-policy/')")
  rows+=("$(measure weir "$weir_pid" "$proto" "${ports[1]}" | sed 's/^weir/weir-no-policy/')")
  rows+=("$(measure nginx "$nginx_pid" "$proto" "${ports[2]}")")
  rows+=("$(measure haproxy "$haproxy_pid" "$proto" "${ports[3]}")")
done

table=$(
  echo "| protocol | target | 2xx of $N | instructions/request | × HAProxy |"
  echo "|---|---|---:|---:|---:|"
  for proto in h1 h2; do
    base=$(printf "%s\n" "${rows[@]}" | awk -v p="$proto" '$1 == "haproxy" && $2 == p {print $4}')
    printf "%s\n" "${rows[@]}" | awk -v p="$proto" -v b="$base" '$2 == p {
      printf "| %s | %s | %s | %\047d | %.2f |\n", (p == "h1" ? "HTTP/1.1" : "h2c"), $1, $3, $4, $4 / b }'
  done
)
echo "$table"
echo "$table" > "bench/results/instructions-$(date -u +%Y%m%dT%H%M%SZ).txt"
