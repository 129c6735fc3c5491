#!/usr/bin/env bash
# Fleet suite (issue 20): one fake IdP, one jwks-sidecar mirror and 8 sidecar processes that
# mirror from it, on loopback. bench/fleet.py checks: the IdP sees the mirror's fetches
# alone; a rotated-in key is accepted by every sidecar's first request (the kid miss travels
# up to the mirror); a mirror outage is ridden out on stale keys until max_stale, then 503;
# the fleet recovers when the mirror is back. About a minute. The benchmark runs the same
# script with 50 sidecars (bash bench/run.sh --only fleet).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${JWKS_SIDECAR_BIN:-$PWD/target/debug/jwks-sidecar}"
[ -x "$BIN" ] || { echo "fleet: $BIN missing (cargo test --all-targets builds it)" >&2; exit 1; }
exec timeout 300 python3 bench/fleet.py --bin "$BIN" --sidecars 8 --period 6
