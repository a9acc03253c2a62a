#!/usr/bin/env bash
# HTTP/1.1 (wrk) and HTTP/2 (h2load) through weir, nginx and HAProxy, side by
# side in one run, each proxy on one worker pinned to its own CPU, with the
# same rules: the quickstart's demo-api policy (GET /public/.*, POST
# /api/orders with JSON), everything else 403.
#
#   bench/http.sh                 # 10 s per run
#   DURATION=30 CONNS=100 bench/http.sh
#
# Prints rps, p50 and p99 per target and the ratios to nginx and to direct,
# and keeps the table in bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
H2_CONNS=${H2_CONNS:-10}
H2_STREAMS=${H2_STREAMS:-10}
PATH_OK=/public/index.html
# the load generator and the upstream share CPU 0; the proxy under test has CPU 1
LOAD_CPU=0
PROXY_CPU=1

scripts/setup.sh
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
WEIR_ADMIN=18119

for p in $UP_H1 $UP_H2 $WEIR_POLICY $WEIR_OPEN $WEIR_ADMIN $NGINX_H1 $NGINX_H2 $HAPROXY_H1 $HAPROXY_H2; do
  if (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null; then echo "port $p is in use: stop what listens there" >&2; exit 1; fi
done

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# The part of an nginx.conf every instance here shares: one worker, its files
# in its own directory, no logs, unlimited keep-alive. $1: the directory.
nginx_preamble() {
  cat <<CONF
daemon off; worker_processes 1; user root; error_log $1/error.log; pid $1/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off; client_body_temp_path $1/b; proxy_temp_path $1/p;
  fastcgi_temp_path $1/f; uwsgi_temp_path $1/u; scgi_temp_path $1/s;
  keepalive_requests 1000000;
CONF
}

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
cat > "$work/weir/weir.yaml" <<CONF
admin: 127.0.0.1:$WEIR_ADMIN
workers: 1
log_flows: false
filter_cache: $work/weir-cache
endpoints:
  - {name: load, address: 127.0.0.1, labels: {app: frontend}}
listeners:
  - name: demo-api
    bind: 127.0.0.1:$WEIR_POLICY
    upstream: 127.0.0.1:$UP_H1
    upstream_protocol: http1
    destination: {labels: {app: demo-api}, port: 80}
  - name: open
    bind: 127.0.0.1:$WEIR_OPEN
    upstream: 127.0.0.1:$UP_H1
    upstream_protocol: http1
    destination: {labels: {app: unpoliced}, port: 80}
CONF
cp examples/quickstart/policies/demo-api.yaml "$work/weir/policies/"
WEIR_LOG=warn taskset -c $PROXY_CPU "$WEIR" run --config "$work/weir" & pids+=($!)

# --- nginx as a proxy with the same rules --------------------------------------
mkdir -p "$work/nginx"
{ nginx_preamble "$work/nginx"; cat <<CONF
  upstream up { server 127.0.0.1:$UP_H1; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_H1; listen 127.0.0.1:$NGINX_H2 http2;
    proxy_http_version 1.1; proxy_set_header Connection "";
    location ~ ^/public/ { limit_except GET { deny all; } proxy_pass http://up; }
    location = /api/orders {
      if (\$http_content_type != "application/json") { return 403 "Access denied\r\n"; }
      limit_except POST { deny all; }
      proxy_pass http://up;
    }
    location / { return 403 "Access denied\r\n"; }
  }
}
CONF
} > "$work/nginx/nginx.conf"
taskset -c $PROXY_CPU nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" & pids+=($!)

# --- HAProxy with the same rules -------------------------------------------------
cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend web
  bind 127.0.0.1:$HAPROXY_H1
  bind 127.0.0.1:$HAPROXY_H2 proto h2
  acl public path_reg ^/public/.*$
  acl get method GET
  acl orders path /api/orders
  acl post method POST
  acl json req.hdr(content-type) -m str application/json
  http-request deny deny_status 403 unless public get or orders post json
  default_backend up
backend up
  server up 127.0.0.1:$UP_H1
CONF
taskset -c $PROXY_CPU haproxy -f "$work/haproxy.cfg" -db & pids+=($!)

for p in $UP_H1 $UP_H2 $WEIR_POLICY $WEIR_OPEN $NGINX_H1 $NGINX_H2 $HAPROXY_H1 $HAPROXY_H2; do wait_port "$p"; done

# sanity: every target allows the path and denies another one
for p in $UP_H1 $WEIR_POLICY $WEIR_OPEN $NGINX_H1 $HAPROXY_H1; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p$PATH_OK")
  [ "$code" = 200 ] || { echo "port $p answers $code for $PATH_OK" >&2; exit 1; }
done
for p in $WEIR_POLICY $NGINX_H1 $HAPROXY_H1; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p/private")
  [ "$code" = 403 ] || { echo "port $p answers $code for /private" >&2; exit 1; }
done

results="$work/results.tsv"
: > "$results"

run_wrk() { # name port
  local out
  out=$(taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$2$PATH_OK")
  python3 - "$1" "$out" >> "$results" <<'PY'
import re, sys
name, out = sys.argv[1], sys.argv[2]
def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p = {k: ms(v, u) for k, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
if errors:
    sys.exit(f"{name}: {errors.group(1)} non-2xx responses")
print(f"http1\t{name}\t{rps:.0f}\t{p['50']:.3f}\t{p['99']:.3f}")
PY
}

run_h2load() { # name port
  local log="$work/h2load-$2.log"
  rm -f "$log"
  local out
  out=$(taskset -c $LOAD_CPU h2load -c"$H2_CONNS" -m"$H2_STREAMS" -D"$DURATION" --warm-up-time=1 --log-file="$log" "http://127.0.0.1:$2$PATH_OK")
  python3 - "$1" "$out" "$log" >> "$results" <<'PY'
import re, sys
name, out, log = sys.argv[1], sys.argv[2], sys.argv[3]
rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
if int(status.group(3)) or int(status.group(4)):
    sys.exit(f"{name}: non-2xx responses: {status.group(0)}")
lat = sorted(int(line.split("\t")[2]) for line in open(log) if line.strip())
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0
print(f"h2\t{name}\t{rps:.0f}\t{pct(0.50):.3f}\t{pct(0.99):.3f}")
PY
}

echo "HTTP/1.1: wrk -t1 -c$CONNS -d${DURATION}s; HTTP/2: h2load -c$H2_CONNS -m$H2_STREAMS -D$DURATION"
run_wrk direct $UP_H1
run_wrk "weir (policy)" $WEIR_POLICY
run_wrk "weir (no policy)" $WEIR_OPEN
run_wrk nginx $NGINX_H1
run_wrk haproxy $HAPROXY_H1
run_h2load direct $UP_H2
run_h2load "weir (policy)" $WEIR_POLICY
run_h2load "weir (no policy)" $WEIR_OPEN
run_h2load nginx $NGINX_H2
run_h2load haproxy $HAPROXY_H2

mkdir -p bench/results
table=bench/results/http-$(date -u +%Y%m%dT%H%M%SZ).txt
python3 - "$results" <<'PY' | tee "$table"
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print(f"{'protocol':8} {'target':17} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'rps/nginx':>9} {'rps/direct':>10} {'p99/nginx':>9}")
for proto in ("http1", "h2"):
    mine = {r[1]: r for r in rows if r[0] == proto}
    nginx, direct = mine["nginx"], mine["direct"]
    for name, r in mine.items():
        rps, p50, p99 = float(r[2]), float(r[3]), float(r[4])
        print(f"{proto:8} {name:17} {rps:8.0f} {p50:8.3f} {p99:8.3f} "
              f"{rps / float(nginx[2]):9.2f} {rps / float(direct[2]):10.2f} {p99 / float(nginx[4]):9.2f}")
best = max(float(r[2]) for r in rows if r[0] == "http1" and r[1] in ("nginx", "haproxy"))
weir = next(float(r[2]) for r in rows if r[0] == "http1" and r[1] == "weir (policy)")
print(f"\nHTTP/1.1 weir with policy vs the better of nginx and HAProxy: {weir / best:.2f}x rps")
PY
echo "kept in $table"
