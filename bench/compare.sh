#!/usr/bin/env bash
# Two weir builds through the same benchmarks in one run, alternating
# (A B A B …), so the difference between them can be read against the spread
# between runs of the same build.
#
#   bench/compare.sh BEFORE_BIN AFTER_BIN [BENCH…]     (default: http dns memcached)
#   ROUNDS=3 DURATION=5 bench/compare.sh /tmp/old/weir target/release/weir http
#
# Build the other one from a worktree: git worktree add /tmp/before REV &&
# (cd /tmp/before && cargo build --release --bin weir). Each run's table is
# kept in bench/results/compare-*/ as RUN-BENCH-{before,after}.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

before=$(realpath "${1:?usage: bench/compare.sh BEFORE_BIN AFTER_BIN [BENCH…]}")
after=$(realpath "${2:?usage: bench/compare.sh BEFORE_BIN AFTER_BIN [BENCH…]}")
shift 2
benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(http dns memcached)
ROUNDS=${ROUNDS:-2}
out=bench/results/compare-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"

for bench in "${benches[@]}"; do
  for round in $(seq 1 "$ROUNDS"); do
    for side in before after; do
      bin=$before
      [ "$side" = after ] && bin=$after
      echo "== $bench, round $round, $side ($bin)"
      WEIR_BIN=$bin bash "bench/$bench.sh" > "$out/$round-$bench-$side.txt" 2>&1 ||
        { echo "bench/$bench.sh failed:"; tail -20 "$out/$round-$bench-$side.txt"; exit 1; }
      tail -n 25 "$out/$round-$bench-$side.txt"
    done
  done
done
echo "kept in $out"
