#!/usr/bin/env bash
# Fuzz smoke run: builds the cargo-fuzz targets in fuzz/ once and runs each one for a bounded
# time (FUZZ_SECONDS, default 30) on a temporary copy of its committed seeds
# (fuzz/seeds/<target>/), so the committed seeds are replayed as regression inputs too.
# Fuzzing needs the nightly toolchain: without it the suite is skipped (exit 0, CI included).
# cargo-fuzz is installed from crates.io when missing. Crash inputs are copied to
# fuzz/artifacts/<target>/ (git-ignored). Longer runs: see fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SECONDS_PER_TARGET=${FUZZ_SECONDS:-30}
TARGETS=${FUZZ_TARGETS:-"token_parse_and_select jwks_parse claims_render config_parse path_normalize token_extract"}

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: SKIPPED: no nightly toolchain (fuzzing needs nightly: rustup toolchain install nightly)"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "-- fuzz: installing cargo-fuzz"
  if ! cargo +nightly install cargo-fuzz --locked; then
    if [ "${CI:-}" = "true" ]; then
      echo "fuzz: FAIL: cargo-fuzz could not be installed" >&2
      exit 1
    fi
    echo "fuzz: SKIPPED: cargo-fuzz could not be installed"
    exit 0
  fi
fi
echo "cargo-fuzz $(cargo +nightly fuzz --version 2>/dev/null | awk '{print $NF}'), $(rustc +nightly --version)"

echo "-- fuzz: build (all targets, once)"
(cd fuzz && cargo +nightly fuzz build)

WORK=$(mktemp -d -t jwks-fuzz.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0
failed_names=""
for t in $TARGETS; do
  corpus=$WORK/corpus/$t
  art=$WORK/artifacts/$t
  mkdir -p "$corpus" "$art"
  if [ -d "fuzz/seeds/$t" ]; then
    cp -R "fuzz/seeds/$t/." "$corpus/"
  fi
  echo "-- fuzz: $t for ${SECONDS_PER_TARGET}s ($(ls "$corpus" | wc -l) seeds)"
  log=$WORK/$t.log
  status=0
  (cd fuzz && timeout -k 10 $((SECONDS_PER_TARGET + 120)) \
    cargo +nightly fuzz run "$t" "$corpus" -- \
      -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$art/" -print_final_stats=1) >"$log" 2>&1 || status=$?
  execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || true)
  crashes=$(find "$art" -type f | head -n 5)
  if [ "$status" -eq 0 ] && [ -z "$crashes" ]; then
    passed=$((passed + 1))
    echo "fuzz: $t ok (${execs:-?} executions)"
  else
    failed=$((failed + 1))
    failed_names="$failed_names $t"
    echo "fuzz: $t FAILED (exit $status)" >&2
    grep -E -A25 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer' "$log" | head -n 60 >&2 || tail -n 40 "$log" >&2
    if [ -n "$crashes" ]; then
      mkdir -p "fuzz/artifacts/$t"
      for c in $crashes; do
        cp "$c" "fuzz/artifacts/$t/"
        echo "crash input: fuzz/artifacts/$t/$(basename "$c") ($(wc -c <"$c") bytes): $(head -c 256 "$c" | od -An -tx1 | tr -d ' \n')" >&2
        echo "  reproduce: (cd fuzz && cargo +nightly fuzz run $t artifacts/$t/$(basename "$c"))" >&2
      done
    fi
  fi
done
echo "fuzz: $passed passed, $failed failed${failed_names:+ (failed:$failed_names)}"
[ "$failed" -eq 0 ]
