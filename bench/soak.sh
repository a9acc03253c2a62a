#!/usr/bin/env bash
# Soak: DURATION seconds (default 600) of mixed load through one weir, on
# loopback: keep-alive HTTP/1.1 to nginx, memcached set/get, DNS to unbound,
# with hostile clients beside them (slow HTTP heads, idle memcached
# connections, denied requests on every protocol) and the policy file
# rewritten every second. bench/soak.py drives it and prints what ran, every
# failed request, and weir's RSS over time.
#
# Passes (exit 0) when no legitimate request failed, every denied one got
# the protocol's refusal, and RSS stayed flat (last sample within 25% +
# 16 MiB of the first, taken after 10 s of load).
#
#   bench/soak.sh
#   DURATION=60 SLOW=200 bench/soak.sh
#   WEIR_BIN=/path/to/weir bench/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-600}
SLOW=${SLOW:-50}

source bench/lib.sh
bench_start
HTTP_UP=$(port) MEMCACHED_UP=$(port) DNS_UP=$(port)
HTTP=$(port) MEMCACHED=$(port) DNS=$(port) ADMIN=$(port)

mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<CONF
daemon off; worker_processes 1; user root; error_log $work/nginx/error.log; pid $work/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off; client_body_temp_path $work/nginx/b; proxy_temp_path $work/nginx/p;
  fastcgi_temp_path $work/nginx/f; uwsgi_temp_path $work/nginx/u; scgi_temp_path $work/nginx/s;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$HTTP_UP; location / { return 200 "soak\n"; } }
}
CONF
# setsid: the whole group (master and worker) is stopped on exit
setsid nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" & pids+=($!)
memcached -l 127.0.0.1 -p "$MEMCACHED_UP" -U 0 -t 1 -m 64 -u root >"$work/memcached.log" 2>&1 & pids+=($!)
{
  cat <<CONF
server:
  interface: 127.0.0.1@$DNS_UP
  port: $DNS_UP
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
  local-zone: "soak.example." static
CONF
  for i in $(seq 0 49); do echo "  local-data: \"q$i.soak.example. 60 IN A 10.77.0.$((i + 1))\""; done
} > "$work/unbound.conf"
unbound -d -c "$work/unbound.conf" & pids+=($!)

cat > "$work/weir.yaml" <<CONF
admin: 127.0.0.1:$ADMIN
log_flows: false
dns: {cache_file: ""}
endpoints:
  - {name: client, address: 127.0.0.2, labels: {app: client}}
listeners:
  - {name: web, bind: 127.0.0.1:$HTTP, upstream: 127.0.0.1:$HTTP_UP, upstream_protocol: http1,
     destination: {labels: {app: web}, port: 80}}
  - {name: cache, protocol: memcached, bind: 127.0.0.1:$MEMCACHED, upstream: 127.0.0.1:$MEMCACHED_UP,
     destination: {labels: {app: cache}, port: 11211}}
  - {name: dns, protocol: dns, bind: 127.0.0.1:$DNS, upstream: 127.0.0.1:$DNS_UP,
     destination: {labels: {k8s-app: kube-dns}, port: 53}}
CONF
cat > "$work/policies/soak.yaml" <<'POLICY'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: soak-web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http: [{method: GET, path: "/public/.*"}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: soak-cache}
spec:
  endpointSelector: {matchLabels: {app: cache}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "11211", protocol: TCP}]
          rules:
            l7proto: memcache
            l7:
              - {command: get, keyPrefix: "soak/"}
              - {command: set, keyPrefix: "soak/"}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: soak-dns}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]
      toPorts:
        - ports: [{port: "53", protocol: ANY}]
          rules:
            dns: [{matchPattern: "*.soak.example"}]
    # this policy selects the client for egress: what else it may reach
    - toEndpoints: [{matchLabels: {app: web}}, {matchLabels: {app: cache}}]
POLICY
WEIR_LOG=warn "$WEIR" run --config "$work" >"$work/weir.log" 2>&1 & pids+=($!)
weir_pid=$!
wait_ready "$ADMIN" "$HTTP"

# every error flow of the run, to say why a request failed
curl -sN "127.0.0.1:$ADMIN/flows?verdict=error&follow=true" >"$work/errors.ndjson" 2>/dev/null & pids+=($!)

status=0
python3 bench/soak.py --duration "$DURATION" --weir-pid "$weir_pid" --http "$HTTP" \
  --memcached "$MEMCACHED" --dns "$DNS" --policy "$work/policies/soak.yaml" --slow "$SLOW" || status=$?
echo "soak: reload status: $(curl -s "127.0.0.1:$ADMIN/config" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("reload", d.get("last_reload", "?")))' 2>/dev/null || echo '?')"
echo "soak: error flows by protocol and reason (slow and idle clients closed on purpose among them):"
python3 - "$work/errors.ndjson" <<'PY'
import collections, json, re, sys
seen = collections.Counter()
for line in open(sys.argv[1], errors="replace"):
    try:
        f = json.loads(line)
    except ValueError:
        continue
    reason = re.sub(r"\d+", "N", f.get("reason") or "?")
    seen[(f.get("protocol", "?"), reason)] += 1
for (protocol, reason), n in seen.most_common(20):
    print(f"  {n:8} {protocol:10} {reason}")
PY
if [ "$status" -ne 0 ]; then tail -20 "$work/weir.log" >&2; fi
exit "$status"
