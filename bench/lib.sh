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
