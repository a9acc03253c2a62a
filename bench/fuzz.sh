#!/usr/bin/env bash
# Fuzz every parser that reads peer bytes (docs/fuzzing.md): build the
# cargo-fuzz targets in fuzz/ once, then run each for DURATION seconds.
#
#   bench/fuzz.sh                          # every target, 300 s each
#   DURATION=20 bench/fuzz.sh              # what CI runs (.ci/run)
#   DURATION=600 bench/fuzz.sh cql_frames http_framing
#   JOBS=2 bench/fuzz.sh kafka_request     # libFuzzer workers per target
#   OPEN="kafka_request" bench/fuzz.sh     # all but the targets named
#
# Each run starts from the seed corpus in fuzz/corpus/<target>/ (read only)
# and keeps what it learns in target/fuzz-corpus/<target>/ (reused by the
# next run, never committed). A crash ends that target's run with its input
# in fuzz/artifacts/<target>/ (`cargo fuzz run <target> <file>` replays it);
# the other targets still run. Exit status: 0 when no target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-300}
JOBS=${JOBS:-1}
# libFuzzer's defaults are 2 GiB RSS and 20 minutes per input; weir must
# answer a hostile client well within either, so both are tighter
RSS_LIMIT_MB=${RSS_LIMIT_MB:-2048}
TIMEOUT=${TIMEOUT:-10}

# cargo-fuzz passes nightly-only flags (sanitizer coverage); the stable
# toolchain accepts them with RUSTC_BOOTSTRAP, as proxy/build.rs does for
# the eBPF programs
export RUSTC_BOOTSTRAP=1
# -s none: no AddressSanitizer (weir's parsers are safe Rust; ASan would
# instrument wasmtime for nothing and double the build). -O: release with
# debug assertions and overflow checks still on (-a). 16 codegen units:
# cargo-fuzz's default of 1 makes the wasmtime and cranelift build far slower.
FUZZ_FLAGS=(-s none -O -a --codegen-units 16)
# No debug info (cargo-fuzz asks for line tables; a later -C wins): twelve
# targets each link weir and wasmtime, and line tables were half of their
# 4 GB. A crash still names its functions; for lines, replay the input in a
# build without this flag.
export RUSTFLAGS="${RUSTFLAGS:-} -Cdebuginfo=0"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is not installed (scripts/setup.sh installs it)" >&2
  exit 1
fi

mapfile -t all < <(cd fuzz && cargo fuzz list)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  # OPEN="a b": targets whose open findings (docs/fuzzing.md) are known to
  # crash them within seconds; every other target runs
  for t in "${all[@]}"; do
    case " ${OPEN:-} " in *" $t "*) echo "fuzz: $t not run: it has an open finding (docs/fuzzing.md)" ;; *) targets+=("$t") ;; esac
  done
fi

started=$(date +%s)
(cd fuzz && cargo fuzz build "${FUZZ_FLAGS[@]}")
built=$(date +%s)
echo "fuzz: built ${#all[@]} targets in $((built - started))s"

extra=()
# libFuzzer's fork mode only when asked: one worker runs in-process
[ "$JOBS" -gt 1 ] && extra=(-jobs="$JOBS" -workers="$JOBS")

failed=()
for t in "${targets[@]}"; do
  work=target/fuzz-corpus/$t
  mkdir -p "$work" "fuzz/corpus/$t"
  echo "fuzz: $t for ${DURATION}s"
  t0=$(date +%s)
  # paths are relative to fuzz/, where cargo-fuzz runs
  if (cd fuzz && cargo fuzz run "${FUZZ_FLAGS[@]}" "$t" "../$work" "corpus/$t" -- \
    -max_total_time="$DURATION" -rss_limit_mb="$RSS_LIMIT_MB" -timeout="$TIMEOUT" \
    -print_final_stats=1 "${extra[@]}" 2>"../$work.log"); then
    grep -E '^stat::number_of_executed_units|^stat::new_units_added' "$work.log" | tr '\n' ' ' || true
    echo "($(( $(date +%s) - t0 ))s)"
  else
    # the other targets still run: one finding must not hide another
    grep -E -m1 -A2 'panicked at|ERROR: libFuzzer' "$work.log" >&2 || tail -n 20 "$work.log" >&2
    echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/ (log: $work.log)" >&2
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} of ${#targets[@]} targets failed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, no crash, $(( $(date +%s) - started ))s in all"
