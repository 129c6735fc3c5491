#!/usr/bin/env bash
# End-to-end test against a real OpenID Connect provider on loopback: the `oidc-provider`
# npm package issues JWT access tokens (client_credentials), jwks-sidecar finds its keys by
# OIDC discovery and verifies them in front of an echo app, then the provider rotates its
# signing key. Everything listens on 127.0.0.1; keys and secrets are made per run.
# Needs node >= 20 and npm; installs e2e/oidc's packages with `npm ci`. Under CI=true a
# missing tool is a failure, elsewhere the suite is skipped with a message.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
E2E=$ROOT/e2e/oidc
SIDECAR=${OIDC_E2E_SIDECAR:-$ROOT/target/debug/jwks-sidecar}

missing() {
  if [ "${CI:-}" = "true" ]; then
    echo "oidc-e2e: FAIL: $1 (required under CI=true)" >&2
    exit 1
  fi
  echo "oidc-e2e: SKIPPED: $1" >&2
  exit 0
}

echo "-- oidc-e2e: tools"
command -v node >/dev/null 2>&1 || missing "node is not installed (Node.js >= 20 needed)"
command -v npm >/dev/null 2>&1 || missing "npm is not installed"
command -v timeout >/dev/null 2>&1 || missing "timeout (coreutils) is not installed"
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  missing "node $(node --version) is too old (Node.js >= 20 needed)"
fi
echo "node $(node --version), npm $(npm --version 2>/dev/null)"

echo "-- oidc-e2e: sidecar binary"
if [ ! -x "$SIDECAR" ]; then
  echo "oidc-e2e: FAIL: $SIDECAR not found; build it first (cargo build; scripts/test.sh does)" >&2
  exit 1
fi
echo "$SIDECAR"

echo "-- oidc-e2e: npm ci (e2e/oidc)"
(cd "$E2E" && timeout 300 npm ci --no-audit --no-fund)

echo "-- oidc-e2e: run"
# The driver ends what it starts and removes its temp dir; if it is itself killed, this trap
# ends what it left (the pids it started, if they still run one of our programs).
WORK=$(mktemp -d -t oidc-e2e-run.XXXXXX)
PIDFILE=$WORK/pids
: > "$PIDFILE"
cleanup() {
  local pid
  while read -r pid; do
    if [ -n "$pid" ] && grep -qaE 'jwks-sidecar|provider\.mjs' "/proc/$pid/cmdline" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done < "$PIDFILE"
  rm -rf "$WORK"
}
trap cleanup EXIT
status=0
TMPDIR=$WORK OIDC_E2E_SIDECAR=$SIDECAR OIDC_E2E_PIDFILE=$PIDFILE timeout -k 10 180 node "$E2E/run.mjs" || status=$?
case $status in
  124) echo "oidc-e2e: FAIL: the driver did not finish within 180 s" >&2 ;;
  137) echo "oidc-e2e: FAIL: the driver was killed (timeout or SIGKILL)" >&2 ;;
esac
exit "$status"
