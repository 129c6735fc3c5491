#!/usr/bin/env bash
# End-to-end test against a real OpenID Connect provider on loopback: the `oidc-provider`
# npm package (e2e/oidc/provider.mjs) issues JWT access tokens (client_credentials),
# jwks-sidecar finds its keys by OIDC discovery and verifies them in front of an echo app,
# then the provider rotates its signing key; sender-constrained tokens too: a DPoP-bound one
# (a proof at the token endpoint) and a certificate-bound one (RFC 8705). The driver is the Rust test
# tests/oidc_provider/, `#[ignore]`d in a plain `cargo test` (it needs node and the npm
# packages): this script installs them and runs it. Everything listens on 127.0.0.1; keys
# and secrets are made per run.
# Then the MCP suite (e2e/oidc/mcp.mjs): the official MCP SDK client authorizes itself
# (protected-resource metadata, dynamic registration, code + PKCE, resource indicator) with
# oidc-provider and calls a tool on an MCP server behind the same sidecar binary.
# Needs node >= 20 and npm; installs e2e/oidc's packages with `npm ci`. Under CI=true a
# missing tool is a failure, elsewhere the suite is skipped with a message.
set -euo pipefail
cd "$(dirname "$0")/../.."
E2E=$PWD/e2e/oidc

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

echo "-- oidc-e2e: npm ci (e2e/oidc)"
(cd "$E2E" && timeout 300 npm ci --no-audit --no-fund)

echo "-- oidc-e2e: build (tests/oidc_provider/ and the sidecar binary)"
cargo test --test oidc_provider --no-run
BIN=${CARGO_TARGET_DIR:-target}/debug/jwks-sidecar

# run_suite NAME LIMIT LOG CMD...: runs CMD bounded by LIMIT seconds (`timeout` signals its
# whole process group: cargo, the test, the provider and sidecar processes it started), then
# sets $status (its exit status) and $summary (its last "NAME: N passed, M failed" line, or a
# FAIL line when it never got there).
run_suite() {
  local name=$1 limit=$2 log=$3
  shift 3
  status=0
  TMPDIR=$WORK timeout -k 10 "$limit" "$@" 2>&1 | tee "$log" || status=$?
  case $status in
    124) echo "$name: FAIL: did not finish within $limit s" >&2 ;;
    137) echo "$name: FAIL: killed (timeout or SIGKILL)" >&2 ;;
  esac
  summary=$(grep -E "^$name: [0-9]+ passed, [0-9]+ failed\$" "$log" | tail -n 1 || true)
  if [ -z "$summary" ]; then
    echo "$name: FAIL: the run did not reach its summary line" >&2
    [ "$status" -ne 0 ] || status=1
    summary="$name: FAIL (no summary line, exit status $status)"
  fi
}

WORK=$(mktemp -d -t oidc-e2e-run.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

echo "-- oidc-e2e: run"
# The test ends what it starts (its children are killed when it ends, even by a panic) and
# removes its temp dir.
run_suite oidc-e2e 180 "$WORK/log" cargo test --test oidc_provider -- --ignored --nocapture
rust_status=$status rust_summary=$summary

echo "-- oidc-e2e: MCP client (e2e/oidc/mcp.mjs)"
# Runs whatever the Rust test's outcome. mcp.mjs kills the sidecar it starts on any exit (it
# bounds itself to 90 s).
run_suite mcp-e2e 120 "$WORK/mcp.log" node e2e/oidc/mcp.mjs --sidecar "$BIN"

# Both results, the Rust test's first; the suite fails if either failed.
echo "-- oidc-e2e: results"
echo "$rust_summary (exit status $rust_status)"
echo "$summary (exit status $status)"
if [ "$rust_status" -ne 0 ] || [ "$status" -ne 0 ]; then
  exit 1
fi
exit 0
