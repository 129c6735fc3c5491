#!/usr/bin/env bash
# Container image, fast part: builds the project's Dockerfile with podman exactly as users
# build it (deploy/image/build.sh: local stand-ins for the base images, nothing pulled; the
# cargo registry and target dir stay in buildah's cache mounts between runs), then the image
# answers --version and, run with the config the Helm chart renders (read-only root,
# UID 65532), a real request with a valid token and one without (deploy/image/test.py quick).
# The full image suite (size and contents, no shell, startup time, idle RSS, healthcheck,
# SIGTERM drain, `podman kube play` of the chart's examples) is `bash deploy/image/test.sh`.
# Installs its own tools; under CI=true a missing tool fails the suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
bash deploy/image/test.sh quick
echo "image (fast part): $(( $(date +%s) - start ))s"
