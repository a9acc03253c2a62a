# Shared by the side-by-side benchmark scripts (sourced, not run):
# set up the machine, build weir and the named load binaries in release,
# and give the script a work directory and processes cleaned up on exit.
#
#   source bench/lib.sh; bench_start LOAD_BIN...
#   WEIR, work (with policies/), pids+=($!), port, wait_ready ADMIN PORT
#   WEIR_BIN=PATH: run that weir binary instead of the one built here
#   bench_node P POD...: a node of network namespaces with pods (datapath benches)

bench_start() {
  scripts/setup.sh
  local bins=(--bin weir)
  for b in "$@"; do bins+=(--bin "$b"); done
  # with WEIR_BIN and no load binaries there is nothing to build
  if [ -z "${WEIR_BIN:-}" ] || [ $# -gt 0 ]; then cargo build --locked --release "${bins[@]}" 2>&1 | tail -1; fi
  # WEIR_BIN=PATH measures another build of weir (e.g. the previous commit's)
  WEIR=${WEIR_BIN:-$PWD/target/release/weir}
  work=$(mktemp -d)
  mkdir -p "$work/policies" bench/results
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# A free loopback port.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Wait (10 s at most) until weir's admin API is healthy and PORT accepts.
wait_ready() {
  for _ in $(seq 100); do
    curl -sf "127.0.0.1:$1/healthz" >/dev/null 2>&1 && nc -z 127.0.0.1 "$2" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "weir (admin $1) or port $2 never became ready" >&2
  exit 1
}

# A node of network namespaces, laid out as integration/src/node.rs lays it
# out: namespace $1-node (IP forwarding on) and one pod namespace $1-POD per
# further argument, addressed 10.200.$SUBNET.10 upward (SUBNET: 0 unless
# set), joined to the node by a veth named $1POD with routes both ways.
# DUAL_STACK=1: pods also get fd00:200:$SUBNET::N/128, routed through the
# host side's fe80::1, as node.rs's dual-stack node does.
bench_node() {
  local p=$1 i=10 pod subnet=${SUBNET:-0}
  shift
  ip netns add "$p-node"
  ip -n "$p-node" link set lo up
  ip netns exec "$p-node" sysctl -qw net.ipv4.ip_forward=1
  if [ -n "${DUAL_STACK:-}" ]; then
    ip netns exec "$p-node" sysctl -qw net.ipv6.conf.all.forwarding=1 net.ipv6.conf.default.accept_dad=0
    ip -n "$p-node" addr add "fd00:200:$subnet::1/128" dev lo
  fi
  for pod in "$@"; do
    ip netns add "$p-$pod"
    [ -n "${DUAL_STACK:-}" ] && ip netns exec "$p-$pod" sysctl -qw net.ipv6.conf.default.accept_dad=0
    ip -n "$p-node" link add "$p$pod" type veth peer name eth0 netns "$p-$pod"
    [ -z "${DUAL_STACK:-}" ] && ip netns exec "$p-$pod" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    ip -n "$p-node" link set "$p$pod" up
    ip -n "$p-node" addr add 169.254.1.1/32 dev "$p$pod"
    ip -n "$p-$pod" link set lo up
    ip -n "$p-$pod" link set eth0 up
    ip -n "$p-$pod" addr add "10.200.$subnet.$i/32" dev eth0
    ip -n "$p-$pod" route add 169.254.1.1 dev eth0 scope link
    ip -n "$p-$pod" route add default via 169.254.1.1 dev eth0
    ip -n "$p-node" route add "10.200.$subnet.$i/32" dev "$p$pod"
    if [ -n "${DUAL_STACK:-}" ]; then
      ip -n "$p-node" addr add fe80::1/64 dev "$p$pod" nodad
      ip -n "$p-$pod" addr add "fd00:200:$subnet::$(printf %x $i)/128" dev eth0 nodad
      ip -n "$p-$pod" -6 route add default via fe80::1 dev eth0
      ip -n "$p-node" -6 route add "fd00:200:$subnet::$(printf %x $i)/128" dev "$p$pod"
    fi
    i=$((i + 1))
  done
}

# HAProxy in TCP mode, one thread on CPU, from 127.0.0.1:PORT to UPSTREAM:
# a relay that reads nothing of the protocol (splicing where HAProxy judges
# it pays), the floor for any userspace proxy on this machine.
#   haproxy_tcp CPU PORT UPSTREAM
haproxy_tcp() {
  cat > "$work/haproxy-$2.cfg" <<CONF
global
  nbthread 1
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen relay
  bind 127.0.0.1:$2
  option splice-auto
  server upstream $3
CONF
  taskset -c "$1" haproxy -f "$work/haproxy-$2.cfg" -db >"$work/haproxy-$2.log" 2>&1 &
  pids+=($!)
}

# The part of an nginx.conf every nginx of the HTTP benches shares: its
# files in its own directory, no logs, unlimited keep-alive; the http {}
# block is left open. $1 the directory, $2 workers (1), $3 more top-level
# directives (`master_process off;` under valgrind).
nginx_preamble() {
  cat <<CONF
daemon off; ${3:-}worker_processes ${2:-1}; user root; error_log $1/error.log; pid $1/nginx.pid;
events { worker_connections 16384; }
http {
  access_log off; client_body_temp_path $1/b; proxy_temp_path $1/p;
  fastcgi_temp_path $1/f; uwsgi_temp_path $1/u; scgi_temp_path $1/s;
  keepalive_requests 1000000;
CONF
}

# The quickstart's demo-api rules (GET /public/.*, POST /api/orders with
# JSON, everything else 403) as nginx states them: the rest of the http {}
# block of a proxy on ports $1 (HTTP/1.1) and $2 (h2c) to the upstream on $3.
nginx_rules() {
  cat <<CONF
  upstream up { server 127.0.0.1:$3; keepalive 128; }
  server {
    listen 127.0.0.1:$1; listen 127.0.0.1:$2 http2;
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
}

# The same rules as HAProxy states them: a haproxy.cfg with $1 threads, on
# ports $2 (HTTP/1.1) and $3 (h2c), to the upstream on $4.
haproxy_rules() {
  cat <<CONF
global
  nbthread $1
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend web
  bind 127.0.0.1:$2
  bind 127.0.0.1:$3 proto h2
  acl public path_reg ^/public/.*\$
  acl get method GET
  acl orders path /api/orders
  acl post method POST
  acl json req.hdr(content-type) -m str application/json
  http-request deny deny_status 403 unless public get or orders post json
  default_backend up
backend up
  server up 127.0.0.1:$4
CONF
}

# weir's side of the HTTP benches: admin API on port $1, $2 workers, the
# quickstart's demo-api rules on a listener on $3 and a listener no policy
# selects on $4, both to the upstream on $5; $6 more limits (", name: n").
# The filter cache is in $work.
weir_rules_config() {
  cat <<CONF
admin: 127.0.0.1:$1
workers: $2
log_flows: false
filter_cache: $work/weir-cache
limits: {max_connections_per_identity: 20000${6:-}}
endpoints:
  - {name: load, address: 127.0.0.1, labels: {app: frontend}}
listeners:
  - name: demo-api
    bind: 127.0.0.1:$3
    upstream: 127.0.0.1:$5
    upstream_protocol: http1
    destination: {labels: {app: demo-api}, port: 80}
  - name: open
    bind: 127.0.0.1:$4
    upstream: 127.0.0.1:$5
    upstream_protocol: http1
    destination: {labels: {app: unpoliced}, port: 80}
CONF
}
