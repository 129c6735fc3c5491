#!/usr/bin/env bash
# Bounded soak of a release build of jwks-sidecar (not part of CI). See soak/README.md.
#   soak/run.sh              10 minutes, key rotation every 60 s
#   soak/run.sh --minutes 30
#   soak/run.sh --quick      60 s, rotation every 20 s
# Extra flags go to soak/soak.py (--rps, --threads, --cycle ...). Writes soak/results/.
# SOAK_BIN=path/to/jwks-sidecar runs that binary instead of building the release one.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
seconds=600
cycle=60
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) seconds=$(( $2 * 60 )); shift 2 ;;
    --quick) seconds=60; cycle=20; extra+=(--kid-miss-interval 2); shift ;;
    *) extra+=("$1"); shift ;;
  esac
done

if [ -n "${SOAK_BIN:-}" ]; then
  # Another build of the binary (e.g. target/debug/jwks-sidecar for a quick check): no build.
  BIN=$(realpath "$SOAK_BIN")
  echo "-- soak: SOAK_BIN=$BIN (not building)"
else
  echo "-- soak: cargo build --release (waits for the build lock if another build runs)"
  cargo build --release --bin jwks-sidecar
  BIN=$ROOT/target/release/jwks-sidecar
fi
# Run a private copy, so a concurrent rebuild cannot replace the binary under the soak.
WORK=$(mktemp -d -t jwks-soak-bin.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cp "$BIN" "$WORK/jwks-sidecar"
echo "-- soak: $seconds s, rotation every $cycle s ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
exec_status=0
timeout -k 20 $((seconds + 240)) python3 soak/soak.py --binary "$WORK/jwks-sidecar" \
  --seconds "$seconds" --cycle "$cycle" --results soak/results "${extra[@]}" || exec_status=$?
exit $exec_status
