#!/usr/bin/env bash
# Builds the image (deploy/image/build.sh: the Dockerfile as users build it, cached after the
# first time) and checks it the way Kubernetes runs it (deploy/image/test.py full): size and
# contents, user, no shell, read-only root, startup time, idle RSS, requests, healthcheck,
# SIGTERM drain, then the Helm chart's rendered standalone and sidecar examples through
# `podman kube play --network host`. One command:
#
#   bash deploy/image/test.sh            # JWKS_IMAGE_SKIP_BUILD=1 tests the image as it is
#
# Installs what it needs (podman & co: deploy/image/lib.sh; helm, PyYAML, cryptography:
# deploy/tests/install-tools.sh). Under CI=true a tool still missing is a failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
export ROOT="$PWD"  # read by lib.sh
# shellcheck source=deploy/tests/install-tools.sh
source deploy/tests/install-tools.sh
# shellcheck source=deploy/image/lib.sh
source deploy/image/lib.sh
install_tools
for t in helm python3; do _have "$t" || die "$t missing"; done
if [ "${JWKS_IMAGE_SKIP_BUILD:-0}" != 1 ]; then
  bash deploy/image/build.sh
fi
podman image exists "$JWKS_IMAGE" || die "$JWKS_IMAGE not built (run deploy/image/build.sh)"
exec python3 deploy/image/test.py "${1:-full}"
