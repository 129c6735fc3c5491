#!/usr/bin/env bash
# Runs every check and test of the project on a fresh machine: installs what it needs,
# then formatting, lints, unit and integration tests, and any extra suites in
# scripts/test.d/ (gateways, deployment), each of which installs its own tools.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== cargo test"
cargo test --all-targets
cargo test --doc

shopt -s nullglob
for suite in scripts/test.d/*.sh; do
  echo "== $suite"
  bash "$suite"
done
echo "== all tests passed"
