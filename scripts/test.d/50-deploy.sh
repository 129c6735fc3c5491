#!/usr/bin/env bash
# Deployment suite: container image lint, Helm chart, kustomize manifests, Prometheus rules,
# Grafana dashboard, an end-to-end run of the built binary scraped by a real Prometheus, and
# the JWKS-mirror examples end to end (fake IdP -> mirror -> sidecar, from their rendered configs).
# Installs its own tools (deploy/tests/install-tools.sh; skipped when present). Needs
# target/debug/jwks-sidecar, which `cargo test --all-targets` builds before this runs
# (JWKS_SIDECAR_BIN overrides the path). Every step that fails is reported; the suite
# exits non-zero if any did.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
BIN="${JWKS_SIDECAR_BIN:-$ROOT/target/debug/jwks-sidecar}"
CHART="helm/jwks-sidecar"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

passed=0
failed=0
failures=()
section() { printf '\n=== %s\n' "$*"; }
# step NAME CMD...: runs CMD, records pass/fail, never stops the suite.
step() {
  local name="$1"; shift
  printf -- '--- %s\n' "$name"
  if "$@"; then
    passed=$((passed + 1)); printf -- '    ok: %s\n' "$name"
  else
    failed=$((failed + 1)); failures+=("$name"); printf -- '    FAILED: %s\n' "$name"
  fi
}
# expect_fail NAME CMD...: CMD must fail (negative tests).
expect_fail() {
  local name="$1"; shift
  printf -- '--- %s\n' "$name"
  if "$@" >"$OUT/neg.log" 2>&1; then
    failed=$((failed + 1)); failures+=("$name"); printf -- '    FAILED (was accepted): %s\n' "$name"
  else
    passed=$((passed + 1)); printf -- '    ok (refused: %s)\n' "$(grep -m1 -iE "error|fail|not allowed|refused" "$OUT/neg.log" | cut -c1-160)"
  fi
}

section "deploy: tools"
# shellcheck source=../../deploy/tests/install-tools.sh
if ! source deploy/tests/install-tools.sh; then
  echo "FAIL: could not install the deployment tools"
  exit 1
fi
set +e  # install-tools.sh sets -e; here every step records its own failure
if [ ! -x "$BIN" ]; then
  echo "FAIL: $BIN not found; run 'cargo build' (scripts/test.sh builds it with cargo test --all-targets)"
  exit 1
fi

section "deploy: container image (hadolint)"
step "hadolint Dockerfile" hadolint Dockerfile
step "image: non-root 65532, distroless runtime, no baked config" bash -c '
  grep -q "^USER 65532:65532" Dockerfile &&
  grep -q "^FROM gcr.io/distroless/static-debian12:nonroot AS runtime" Dockerfile &&
  grep -q "^ENTRYPOINT \[\"/usr/local/bin/jwks-sidecar\"\]" Dockerfile &&
  ! grep -qE "COPY .*config.example.toml /etc/" Dockerfile'
step "healthcheck subcommand answers for a live admin listener and fails for a dead one" \
  python3 deploy/tests/e2e.py healthcheck "$BIN"

section "deploy: Helm chart (helm lint, helm template, Kubernetes schemas)"
step "chart files/ are copies of deploy/ (alerts, dashboard)" bash -c '
  cmp deploy/prometheus/alerts.yaml '"$CHART"'/files/alerts.yaml &&
  cmp deploy/grafana/jwks-sidecar.json '"$CHART"'/files/jwks-sidecar.json'
step "helm lint --strict (sidecar)" helm lint --strict "$CHART" -f helm/examples/sidecar.yaml
step "helm lint --strict (standalone)" helm lint --strict "$CHART" -f helm/examples/standalone.yaml
step "helm lint --strict (sidecar + monitoring)" helm lint --strict "$CHART" -f helm/examples/sidecar.yaml -f helm/examples/monitoring.yaml
step "helm lint --strict (mirror)" helm lint --strict "$CHART" -f helm/examples/mirror.yaml
step "helm lint --strict (sidecar via mirror)" helm lint --strict "$CHART" -f helm/examples/sidecar.yaml -f helm/examples/sidecar-via-mirror.yaml
step "helm lint --strict (everything on)" helm lint --strict "$CHART" -f helm/examples/standalone.yaml -f helm/examples/monitoring.yaml -f deploy/tests/values-everything.yaml
step "helm template (sidecar)" bash -c "helm template api $CHART -n shop -f helm/examples/sidecar.yaml > $OUT/helm-sidecar.yaml"
step "helm template (standalone)" bash -c "helm template jwt-authz $CHART -n auth -f helm/examples/standalone.yaml > $OUT/helm-standalone.yaml"
step "helm template (sidecar + monitoring)" bash -c "helm template api $CHART -n shop -f helm/examples/sidecar.yaml -f helm/examples/monitoring.yaml > $OUT/helm-monitoring.yaml"
step "helm template (everything on)" bash -c "helm template jwt-authz $CHART -n auth -f helm/examples/standalone.yaml -f helm/examples/monitoring.yaml -f deploy/tests/values-everything.yaml > $OUT/helm-everything.yaml"
step "helm template (mirror)" bash -c "helm template jwks-mirror $CHART -n auth -f helm/examples/mirror.yaml > $OUT/helm-mirror.yaml"
step "helm template (sidecar via mirror)" bash -c "helm template api $CHART -n shop -f helm/examples/sidecar.yaml -f helm/examples/sidecar-via-mirror.yaml > $OUT/helm-sidecar-via-mirror.yaml"
step "rendered manifests: Kubernetes schemas + restricted posture (sidecar)" \
  python3 deploy/tests/check_manifests.py validate --helm --sidecar "$OUT/helm-sidecar.yaml" "$OUT/helm-monitoring.yaml"
step "rendered manifests: Kubernetes schemas + restricted posture (standalone)" \
  python3 deploy/tests/check_manifests.py validate --helm --standalone "$OUT/helm-standalone.yaml" "$OUT/helm-everything.yaml"
step "rendered config.toml starts the real binary" \
  python3 deploy/tests/check_manifests.py config "$BIN" "$OUT/helm-sidecar.yaml" "$OUT/helm-standalone.yaml" "$OUT/helm-monitoring.yaml" "$OUT/helm-everything.yaml"
step "rendered manifests: Kubernetes schemas + restricted posture (mirror)" \
  python3 deploy/tests/check_manifests.py validate --helm --standalone "$OUT/helm-mirror.yaml"
step "rendered manifests: Kubernetes schemas + restricted posture (sidecar via mirror)" \
  python3 deploy/tests/check_manifests.py validate --helm --sidecar "$OUT/helm-sidecar-via-mirror.yaml"
step "rendered config.toml starts the real binary (mirror, sidecar via mirror)" \
  python3 deploy/tests/check_manifests.py config "$BIN" "$OUT/helm-mirror.yaml" "$OUT/helm-sidecar-via-mirror.yaml"
step "config change rolls the pods (checksum/config changes)" bash -c "
  a=\$(grep -m1 checksum/config $OUT/helm-sidecar.yaml) &&
  b=\$(helm template api $CHART -n shop -f helm/examples/sidecar.yaml --set proxy.upstreamTimeout=10s | grep -m1 checksum/config) &&
  [ -n \"\$a\" ] && [ \"\$a\" != \"\$b\" ]"
expect_fail "values.schema.json rejects a typo (proxy.upstreamTimout)" \
  helm template x "$CHART" -f helm/examples/sidecar.yaml --set proxy.upstreamTimout=5s
expect_fail "values.schema.json rejects an unknown provider key" \
  helm template x "$CHART" -f helm/examples/sidecar.yaml --set 'providers[0].name=a,providers[0].issuer=https://a/,providers[0].jwks_uri=https://a/j,providers[0].audiences[0]=x,providers[0].audiance=y'
expect_fail "chart refuses sidecar mode without app.container" \
  helm template x "$CHART" --set 'providers[0].name=a,providers[0].issuer=https://a/,providers[0].jwks_uri=https://a/j,providers[0].audiences[0]=x'
step "a typo in the free-form config map is caught by the binary" bash -c "
  helm template api $CHART -f helm/examples/sidecar.yaml --set config.proxy.listen_adress=x > $OUT/typo.yaml &&
  ! python3 deploy/tests/check_manifests.py config '$BIN' $OUT/typo.yaml >$OUT/typo.log 2>&1 &&
  grep -q listen_adress $OUT/typo.log"

section "deploy: kustomize overlays (kubectl kustomize, Kubernetes schemas)"
for overlay in sidecar ext-authz-istio envoy-gateway jwks-mirror; do
  step "kubectl kustomize deploy/overlays/$overlay" bash -c "kubectl kustomize deploy/overlays/$overlay > $OUT/kustomize-$overlay.yaml"
done
step "kustomize output: schemas + posture (sidecar)" \
  python3 deploy/tests/check_manifests.py validate --sidecar "$OUT/kustomize-sidecar.yaml"
step "kustomize output: schemas + posture (ext_authz: Istio CUSTOM, Envoy Gateway)" \
  python3 deploy/tests/check_manifests.py validate --standalone "$OUT/kustomize-ext-authz-istio.yaml" "$OUT/kustomize-envoy-gateway.yaml"
step "kustomize output: schemas + posture (jwks-mirror)" \
  python3 deploy/tests/check_manifests.py validate --standalone "$OUT/kustomize-jwks-mirror.yaml"
step "kustomize config.toml starts the real binary" \
  python3 deploy/tests/check_manifests.py config "$BIN" "$OUT"/kustomize-*.yaml

section "deploy: JWKS mirror end to end (fake IdP -> mirror -> sidecar, rendered configs, loopback)"
# Static (sidecar jwks_uri = the mirror Service's admin port and provider names, the mirror's
# NetworkPolicy admits the sidecar pods and nobody unlabelled, the sidecars' egress reaches the
# mirror), then the two real binaries: the sidecar gets ready with its keys from the mirror
# (/providers names the mirror URL) and lets a fake-IdP token through.
step "mirror e2e: Helm mirror + sidecar via mirror" \
  timeout 180 python3 deploy/tests/e2e.py mirror "$BIN" "$OUT/helm-mirror.yaml" "$OUT/helm-sidecar-via-mirror.yaml" --out "$OUT"
step "mirror e2e: kustomize jwks-mirror + sidecar via mirror (same Service name)" \
  timeout 180 python3 deploy/tests/e2e.py mirror "$BIN" "$OUT/kustomize-jwks-mirror.yaml" "$OUT/helm-sidecar-via-mirror.yaml" --out "$OUT"
step "mirror e2e refuses sidecars the mirror's NetworkPolicy does not admit (no client label)" bash -c "
  helm template api $CHART -n shop -f helm/examples/sidecar.yaml -f helm/examples/sidecar-via-mirror.yaml --set-string podLabels.jwks-sidecar/mirror-client=no > $OUT/sidecar-unlabelled.yaml &&
  ! python3 deploy/tests/e2e.py mirror '$BIN' $OUT/helm-mirror.yaml $OUT/sidecar-unlabelled.yaml >$OUT/unlabelled.log 2>&1 &&
  grep -q 'are not admitted to the admin port' $OUT/unlabelled.log"

section "deploy: Prometheus rules (promtool)"
step "promtool check rules deploy/prometheus/alerts.yaml" promtool check rules deploy/prometheus/alerts.yaml
step "promtool test rules deploy/prometheus/alerts_test.yaml" promtool test rules deploy/prometheus/alerts_test.yaml
step "every alert fires and stays quiet in the unit tests, and has a runbook" \
  python3 deploy/tests/e2e.py rules-coverage deploy/prometheus/alerts.yaml deploy/prometheus/alerts_test.yaml

section "deploy: end to end (sidecar + fake IdP + echo app + Prometheus on loopback)"
step "e2e: scenario, promtool check metrics, dashboard queries, pending alert, metric names" \
  timeout 300 python3 deploy/tests/e2e.py run "$BIN" --out "$OUT"

section "deploy: summary"
echo "deploy: $passed passed, $failed failed"
if [ "$failed" -gt 0 ]; then
  printf '  failed: %s\n' "${failures[@]}"
  exit 1
fi
