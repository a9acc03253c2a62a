#!/usr/bin/env bash
# A real Kubernetes control plane on loopback, for the Kubernetes source's
# tests (issue 15): kube-apiserver and kubectl built from the Go modules of
# one Kubernetes release, and etcd as their store.
#
#   scripts/kube.sh install        build the binaries once per machine (about
#                                  16 minutes cold on 2 cores; later: nothing)
#   scripts/kube.sh start DIR      etcd + kube-apiserver with their state in DIR;
#                                  prints the API address; DIR/kubeconfig (trusting
#                                  the API server's own self-signed CA), DIR/token
#   scripts/kube.sh stop DIR       stop them and remove DIR
#   scripts/kube.sh stop-apiserver DIR / start-apiserver DIR
#                                  the API server alone, down and up again on
#                                  the same port and store (etcd keeps running)
#   scripts/kube.sh installed      exit status: are the binaries there
#
# k8s.io/kubernetes is served as a module but `go install .../kube-apiserver@v`
# refuses it: its go.mod replaces the k8s.io/* staging modules with ./staging
# paths. The way Kubernetes documents (kubernetes#79384) is a module of our
# own that requires k8s.io/kubernetes and pins each staging module to the
# release's v0.X.Y tag; the replace lines are generated from the release's
# own go.mod, so they follow a version bump.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-1.34.4}
ETCD_VERSION=${ETCD_VERSION:-3.6.16}
PREFIX=${WEIR_KUBE_PREFIX:-/usr/local/lib/weir-kube}
BIN=$PREFIX/v$KUBE_VERSION-etcd$ETCD_VERSION
log() { echo "kube: $*" >&2; }

install() {
  if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kubectl" ] && [ -x "$BIN/etcd" ]; then return; fi
  command -v go >/dev/null || { log "go is not installed"; exit 1; }
  src=$(mktemp -d)
  trap 'rm -rf "$src"' EXIT
  # Go's module and build caches live in $src and go with it: ~5 GB the
  # binaries never read again, on machines (CI) with little disk to spare.
  # -modcacherw: the module cache's files writable, so that rm can remove them
  export GOCACHE=$src/go-build GOMODCACHE=$src/go-mod GOFLAGS=-modcacherw
  mkdir -p "$src/kube" "$src/etcd" "$BIN.partial"
  local minor=${KUBE_VERSION#1.}
  minor=${minor%%.*}
  local staging=v0.${KUBE_VERSION#1.}

  log "building kube-apiserver and kubectl v$KUBE_VERSION from Go modules (about 15 minutes, once per machine)"
  (
    cd "$src/kube"
    cat > go.mod <<MOD
module weir.dev/kubebin

go 1.24.0

require k8s.io/kubernetes v$KUBE_VERSION
MOD
    cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
    go mod download k8s.io/kubernetes@v$KUBE_VERSION
    local gomod
    gomod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/v$KUBE_VERSION.mod"
    {
      echo "replace ("
      grep '=> ./staging' "$gomod" | awk -v v="$staging" '{print "\t"$1" => "$1" "v}'
      echo ")"
    } >> go.mod
    go mod tidy >/dev/null 2>&1 || go mod tidy
    local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v$KUBE_VERSION \
      -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
      -X k8s.io/component-base/version.gitTreeState=clean \
      -X k8s.io/client-go/pkg/version.gitVersion=v$KUBE_VERSION"
    go build -trimpath -ldflags "$ldflags" -o "$BIN.partial/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
    go build -trimpath -ldflags "$ldflags" -o "$BIN.partial/kubectl" k8s.io/kubernetes/cmd/kubectl
  )
  log "building etcd v$ETCD_VERSION (about a minute)"
  (
    cd "$src/etcd"
    printf 'module weir.dev/etcdbin\n\ngo 1.24.0\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' "$ETCD_VERSION" > go.mod
    printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
    go mod tidy >/dev/null 2>&1 || go mod tidy
    go build -trimpath -ldflags "-s -w" -o "$BIN.partial/etcd" go.etcd.io/etcd/server/v3
  )
  rm -rf "$BIN"
  mv "$BIN.partial" "$BIN"
  "$BIN/kube-apiserver" --version >&2
}

# Free loopback ports, chosen by the kernel.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() {
  local dir=$1
  install
  mkdir -p "$dir/certs"
  local client peer api
  client=$(port) peer=$(port) api=$(port)
  "$BIN/etcd" --data-dir "$dir/etcd" --name default \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "default=http://127.0.0.1:$peer" --unsafe-no-fsync --log-level warn \
    > "$dir/etcd.log" 2>&1 &
  echo $! > "$dir/etcd.pid"
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  local token
  token=$(openssl rand -hex 16)
  echo "$token,admin,admin,system:masters" > "$dir/tokens.csv"
  echo "$token" > "$dir/token"
  echo "$client" > "$dir/etcd.port"
  echo "$api" > "$dir/apiserver.port"
  start_apiserver "$dir"
  cat > "$dir/kubeconfig" <<CONF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:$api", certificate-authority: "$dir/certs/apiserver.crt"}}]
users: [{name: admin, user: {token: "$token"}}]
contexts: [{name: local, context: {cluster: local, user: admin}}]
current-context: local
CONF
  wait_ready "$dir"
  echo "https://127.0.0.1:$api"
}

# kube-apiserver alone, on the port and store `start` chose (a restart keeps
# both, and the serving certificate it wrote the first time)
start_apiserver() {
  local dir=$1 client api
  client=$(cat "$dir/etcd.port") api=$(cat "$dir/apiserver.port")
  "$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$client" --cert-dir="$dir/certs" \
    --secure-port="$api" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
    --service-cluster-ip-range=10.96.0.0/16 --authorization-mode=RBAC \
    --service-account-issuer="https://127.0.0.1:$api" --service-account-key-file="$dir/sa.pub" \
    --service-account-signing-key-file="$dir/sa.key" --token-auth-file="$dir/tokens.csv" \
    --endpoint-reconciler-type=none >> "$dir/apiserver.log" 2>&1 &
  echo $! > "$dir/apiserver.pid"
}

wait_ready() {
  local dir=$1
  for _ in $(seq 1 120); do
    if [ -f "$dir/kubeconfig" ] && "$BIN/kubectl" --kubeconfig "$dir/kubeconfig" get --raw /readyz >/dev/null 2>&1; then
      return
    fi
    sleep 0.5
  done
  log "kube-apiserver did not become ready; its log:"
  tail -20 "$dir/apiserver.log" >&2
  stop "$dir"
  exit 1
}

stop_process() {
  local pidfile=$1
  [ -f "$pidfile" ] || return 0
  kill "$(cat "$pidfile")" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$(cat "$pidfile")" 2>/dev/null || true
  rm -f "$pidfile"
}

stop() {
  local dir=$1
  stop_process "$dir/apiserver.pid"
  stop_process "$dir/etcd.pid"
  rm -rf "$dir"
}

case "${1:-}" in
  install) install ;;
  installed) [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kubectl" ] && [ -x "$BIN/etcd" ] ;;
  start) start "${2:?usage: kube.sh start DIR}" ;;
  stop) stop "${2:?usage: kube.sh stop DIR}" ;;
  # the API server alone, as a crash and a restart (etcd keeps the state)
  stop-apiserver) stop_process "${2:?usage: kube.sh stop-apiserver DIR}/apiserver.pid" ;;
  start-apiserver) start_apiserver "${2:?usage: kube.sh start-apiserver DIR}" && wait_ready "$2" ;;
  bin) echo "$BIN" ;;
  *) echo "usage: scripts/kube.sh install | installed | start DIR | stop DIR | stop-apiserver DIR | start-apiserver DIR | bin" >&2; exit 2 ;;
esac
