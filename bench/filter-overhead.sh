#!/usr/bin/env bash
# What the component boundary costs per call: the quickstart's HTTP rules in
# the built-in http-policy filter, called natively (the filter crate linked
# into a bench binary, as a proxy with compiled-in rules would run them) and
# through weir's Wasm host as weir's HTTP engine calls them. One process, one
# pinned CPU, same requests, same verdicts (checked). Prints both, and what
# the difference is of weir's CPU per request in the newest bench/http.sh
# result (run bench/http.sh first for that line).
#
# Measured per call rather than as requests per second through two builds of
# weir: the difference (well under a microsecond) is smaller than the
# run-to-run spread of rps on this VM.
#
#   bench/filter-overhead.sh
#   CALLS=5000000 bench/filter-overhead.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CALLS=${CALLS:-2000000}
scripts/setup.sh
cargo build --quiet --release --locked --manifest-path bench/filter-overhead/Cargo.toml \
  --target-dir target/bench-filter-overhead
bin=target/bench-filter-overhead/release/filter-overhead
runs=()
for _ in 1 2 3; do runs+=("$(taskset -c 1 "$bin" "$CALLS")"); done
http=$(ls -t bench/results/http-*.txt 2>/dev/null | head -1 || true)
python3 - "$http" "${runs[@]}" <<'PY' | tee bench/results/filter-overhead.txt
import json, re, statistics, sys
http, *runs = sys.argv[1:]
runs = [json.loads(r) for r in runs]
native = statistics.median(r["native_ns"] for r in runs)
component = statistics.median(r["component_ns"] for r in runs)
print(f"http-policy, quickstart rules, {runs[0]['calls']} calls x 3 runs (median):")
print(f"  native     {native:6.0f} ns per call")
print(f"  component  {component:6.0f} ns per call ({component / native:.1f}x native)")
print(f"  boundary   {component - native:6.0f} ns per call")
if http:
    for line in open(http):
        m = re.match(r"http1\s+weir \(policy\)\s+(\d+)\s+\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)", line)
        if m:
            per_request = float(m.group(2)) + float(m.group(3))
            share = (component - native) / 1000 / per_request
            print(f"  = {share * 100:.1f}% of weir's CPU per HTTP/1.1 request with policy "
                  f"({per_request:.1f} us user+kernel, {http})")
PY
