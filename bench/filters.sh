#!/usr/bin/env bash
# What a filter costs per request, by the language it is written in: one
# weir (one worker, pinned) with four HTTP listeners in front of one nginx,
# side by side in one run with wrk:
#   open        no policy: the proxy alone
#   builtin     the quickstart's rules through the built-in http-policy
#               component (Rust, compiled in)
#   rust        the `weir filter new` HTTP template (Rust), built here
#   js          the same template in JavaScript (`--lang js`), built here
# The Rust and JavaScript filters get the same configuration and do the same
# work (a prefix check on the path, the caller's labels only when it matches).
# Prints rps, p50, p99, the ratio to `open`, the filter's own time per call
# (weir_filter_duration_seconds: sum/count), and how often an instance was
# retired for memory.
#
#   bench/filters.sh            # 10 s per run
#   DURATION=30 bench/filters.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
LOAD_CPU=0
PROXY_CPU=1
PATH_OK=/public/index.html

scripts/setup.sh
cargo build --locked --release --bin weir 2>&1 | tail -1
WEIR=$PWD/target/release/weir

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

UP=18300 OPEN=18310 BUILTIN=18311 RUST=18312 JS=18313 ADMIN=18319
for p in $UP $OPEN $BUILTIN $RUST $JS $ADMIN; do
  if (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null; then echo "port $p is in use: stop what listens there" >&2; exit 1; fi
done
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# --- the two filters, written and built as a user would ----------------------
"$WEIR" filter new gate --dir "$work" >/dev/null
"$WEIR" filter new js-gate --lang js --dir "$work" >/dev/null
# the Rust build shares the authoring test's target directory (std and the SDK built once)
CARGO_TARGET_DIR=$PWD/target/filter-authoring "$WEIR" filter build "$work/gate"
"$WEIR" filter build "$work/js-gate"

# --- upstream ------------------------------------------------------------------
mkdir -p "$work/up"
cat > "$work/up/nginx.conf" <<CONF
daemon off; worker_processes 1; user root; error_log $work/up/error.log; pid $work/up/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off; client_body_temp_path $work/up/b; proxy_temp_path $work/up/p;
  fastcgi_temp_path $work/up/f; uwsgi_temp_path $work/up/u; scgi_temp_path $work/up/s;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "hello from upstream\n"; } }
}
CONF
taskset -c $LOAD_CPU nginx -p "$work/up" -c "$work/up/nginx.conf" & pids+=($!)

# --- weir ----------------------------------------------------------------------
mkdir -p "$work/weir/policies"
listener() { # name port app
  printf '  - {name: %s, bind: 127.0.0.1:%s, upstream: 127.0.0.1:%s, upstream_protocol: http1, destination: {labels: {app: %s}, port: 80}}\n' "$1" "$2" "$UP" "$3"
}
{
  cat <<CONF
admin: 127.0.0.1:$ADMIN
workers: 1
log_flows: false
filter_cache: $work/weir-cache
endpoints:
  - {name: load, address: 127.0.0.1, labels: {app: frontend}}
filters:
  - {name: gate, path: $work/gate/target/weir/gate.wasm}
  - {name: js-gate, path: $work/js-gate/target/weir/js-gate.wasm, timeout: 50ms}
listeners:
CONF
  listener open $OPEN unpoliced
  listener builtin $BUILTIN demo-api
  listener rust $RUST rust-gate
  listener js $JS js-gate
} > "$work/weir/weir.yaml"
cp examples/quickstart/policies/demo-api.yaml "$work/weir/policies/"
for pair in "gate rust-gate" "js-gate js-gate"; do
  read -r f app <<<"$pair"
  cat > "$work/weir/policies/$f.yaml" <<POLICY
apiVersion: policy.weir.dev/v1alpha1
kind: WeirNetworkPolicy
metadata: {name: $f}
spec:
  endpointSelector: {matchLabels: {app: $app}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            wasm: [{name: $f, config: {denyPrefixes: [/admin, /internal], unlessLabel: "app=admin"}}]
POLICY
done
WEIR_LOG=warn taskset -c $PROXY_CPU "$WEIR" run --config "$work/weir" & pids+=($!)
for p in $UP $OPEN $BUILTIN $RUST $JS; do wait_port "$p"; done

# sanity: every listener allows the path; the filtered ones refuse /admin
for p in $OPEN $BUILTIN $RUST $JS; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p$PATH_OK")
  [ "$code" = 200 ] || { echo "port $p answers $code for $PATH_OK" >&2; exit 1; }
done
for p in $BUILTIN $RUST $JS; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p/admin/x")
  [ "$code" = 403 ] || { echo "port $p answers $code for /admin/x" >&2; exit 1; }
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
print(f"{name}\t{rps:.0f}\t{p['50']:.3f}\t{p['99']:.3f}")
PY
}

echo "wrk -t1 -c$CONNS -d${DURATION}s, one weir worker on CPU $PROXY_CPU"
run_wrk open $OPEN
run_wrk builtin $BUILTIN
run_wrk rust $RUST
run_wrk js $JS
curl -s "http://127.0.0.1:$ADMIN/metrics" > "$work/metrics.txt"

mkdir -p bench/results
table=bench/results/filters-$(date -u +%Y%m%dT%H%M%SZ).txt
python3 - "$results" "$work/metrics.txt" "$work/gate/target/weir/gate.wasm" "$work/js-gate/target/weir/js-gate.wasm" <<'PY' | tee "$table"
import os, re, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
metrics = open(sys.argv[2]).read()
def metric(name, flt):
    m = re.search(r'^%s\{filter="%s"[^}]*\} ([\d.e+-]+)$' % (re.escape(name), re.escape(flt)), metrics, re.M)
    return float(m.group(1)) if m else 0.0
filters = {"builtin": "http-policy", "rust": "gate", "js": "js-gate"}
sizes = {"rust": os.path.getsize(sys.argv[3]), "js": os.path.getsize(sys.argv[4])}
open_rps = float(rows[0][1])
print(f"{'target':8} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'rps/open':>8} {'µs/call':>8} {'retired':>8} {'size KiB':>9}")
per_call = {}
for name, rps, p50, p99 in rows:
    f = filters.get(name)
    us = retired = ""
    if f:
        count = metric("weir_filter_duration_seconds_count", f)
        total = metric("weir_filter_duration_seconds_sum", f)
        per_call[name] = total / count * 1e6 if count else float("nan")
        us = f"{per_call[name]:.2f}"
        retired = f"{metric('weir_filter_recycled_total', f):.0f}"
    size = f"{sizes[name] // 1024}" if name in sizes else ""
    print(f"{name:8} {float(rps):8.0f} {float(p50):8.3f} {float(p99):8.3f} {float(rps) / open_rps:8.2f} {us:>8} {retired:>8} {size:>9}")
rps = {r[0]: float(r[1]) for r in rows}
print(f"\nJavaScript vs Rust, the same filter: {rps['js'] / rps['rust']:.2f}x rps, "
      f"{per_call['js'] / per_call['rust']:.1f}x the time per call")
PY
echo "kept in $table"
