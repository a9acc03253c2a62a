#!/usr/bin/env bash
# Helm, built from its Go module once per machine, for the chart's tests and
# for rendering deploy/manifests/weir.yaml.
#
#   scripts/helm.sh install      build helm (about 3 minutes cold on 2 cores)
#   scripts/helm.sh installed    exit status: is it there
#   scripts/helm.sh path         print the binary's path
#   scripts/helm.sh render       write deploy/manifests/weir.yaml from the chart
#
# `go install helm.sh/helm/v4/cmd/helm@vX` works as it is (no replace lines).
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-4.3.2}
PREFIX=${WEIR_HELM_PREFIX:-/usr/local/lib/weir-helm}
BIN=$PREFIX/v$HELM_VERSION
log() { echo "helm: $*" >&2; }

install() {
  if [ -x "$BIN/helm" ]; then return; fi
  command -v go >/dev/null || { log "go is not installed"; exit 1; }
  log "building helm v$HELM_VERSION from Go modules (about 3 minutes, once per machine)"
  mkdir -p "$BIN.partial"
  # Go's caches in a directory of their own, removed after (as scripts/kube.sh)
  # (a global: the EXIT trap runs after this function has returned)
  go_scratch=$(mktemp -d)
  trap 'rm -rf "$go_scratch"' EXIT
  GOCACHE=$go_scratch/go-build GOMODCACHE=$go_scratch/go-mod GOFLAGS=-modcacherw GOBIN="$BIN.partial" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=v$HELM_VERSION" \
    "helm.sh/helm/v4/cmd/helm@v$HELM_VERSION"
  rm -rf "$BIN"
  mv "$BIN.partial" "$BIN"
  log "installed in $BIN"
}

case "${1:-}" in
  install) install ;;
  installed) [ -x "$BIN/helm" ] ;;
  path) echo "$BIN/helm" ;;
  render)
    cd "$(dirname "$0")/.."
    {
      echo "# weir for users without Helm: deploy/helm/weir rendered with its default values"
      echo "# and the Namespace (scripts/helm.sh render; a test checks it is current)."
      echo "#   kubectl apply --server-side -f deploy/manifests/weir.yaml"
      "$BIN/helm" template weir deploy/helm/weir --namespace weir-system --include-crds --set createNamespace=true
    } > deploy/manifests/weir.yaml
    ;;
  *) echo "usage: $0 install|installed|path|render" >&2; exit 2 ;;
esac
