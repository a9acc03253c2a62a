#!/usr/bin/env bash
# Build the weir image (deploy/Containerfile) as an OCI archive with buildah,
# rootless of any daemon: its own storage under the output directory.
#
#   scripts/image.sh [OUT_DIR]     default target/image; prints the archive's path
#   WEIR_BIN=path scripts/image.sh use that binary instead of a release build
#
# The root filesystem is the stripped weir binary, `ip` (iproute2: the
# datapath installs its routing rule and route with it), the shared objects
# both link against (as ldd lists them), the CA bundle (https WasmFilters),
# /etc/passwd and /etc/group with root
# and nonroot (65532), and empty /tmp, /etc/weir, /var/lib/weir.
set -euo pipefail
cd "$(dirname "$0")/.."

out=$(realpath -m "${1:-target/image}")
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo dev)
if [ -z "${WEIR_BIN:-}" ]; then
  WEIR_COMMIT=$commit cargo build --locked --release --bin weir 2>&1 | tail -1
  WEIR_BIN=target/release/weir
fi
version=$("$WEIR_BIN" --version | awk '{print $2}')
command -v buildah >/dev/null || { echo "image: buildah is not installed (scripts/setup.sh installs it)" >&2; exit 1; }

rm -rf "$out/rootfs" "$out/storage" "$out/run"
rootfs=$out/rootfs
mkdir -p "$rootfs/usr/local/bin" "$rootfs/usr/sbin" "$rootfs/etc/weir" "$rootfs/var/lib/weir" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
strip --strip-debug -o "$rootfs/usr/local/bin/weir" "$WEIR_BIN"
ip=$(command -v ip)
cp "$(readlink -f "$ip")" "$rootfs/usr/sbin/ip"
# every shared object either links against, at the path the loader looks in
for bin in "$rootfs/usr/local/bin/weir" "$rootfs/usr/sbin/ip"; do
  ldd "$bin" | awk '/=>/ {print $3} !/=>/ && $1 ~ /^\// {print $1}' | while read -r lib; do
    [ -n "$lib" ] || continue
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
done
# the system's certificate authorities: WasmFilters fetched over https trust them
mkdir -p "$rootfs/etc/ssl/certs"
cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$rootfs/etc/group"

storage=(--root "$out/storage" --runroot "$out/run" --storage-driver vfs)
tag=ghcr.io/weir-proxy/weir:$version
archive=$out/weir-$version.oci.tar
buildah "${storage[@]}" build --quiet --isolation chroot -f "$PWD/deploy/Containerfile" -t "$tag" \
  --label org.opencontainers.image.version="$version" \
  --label org.opencontainers.image.revision="$commit" \
  --label org.opencontainers.image.source=https://github.com/weir-proxy/weir \
  "$out" >/dev/null
rm -f "$archive"
buildah "${storage[@]}" push --quiet "$tag" "oci-archive:$archive:$tag"
buildah "${storage[@]}" rmi --all >/dev/null 2>&1 || true
rm -rf "$out/storage" "$out/run"
echo "$archive"
