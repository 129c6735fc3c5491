#!/usr/bin/env bash
# Builds the project's Dockerfile, unchanged, with podman (buildah) into localhost/jwks-sidecar:dev
# without pulling anything:
#   1. installs podman, buildah, runc, fuse-overlayfs, debootstrap when missing (apt);
#   2. when absent, makes local stand-ins for the Dockerfile's base images, tagged with the
#      names its FROM lines resolve to (deploy/image/lib.sh):
#        docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE}   debootstrap + rustup-init
#        gcr.io/distroless/static-debian12:nonroot                      files from Debian packages
#   3. podman build --pull=never --format docker (docker format keeps HEALTHCHECK and SHELL,
#      as Docker does) of ./Dockerfile, the file users build.
#
#   bash deploy/image/build.sh [extra podman build args...]
#
# Environment: JWKS_IMAGE (tag, default localhost/jwks-sidecar:dev), JWKS_IMAGE_WORK (scratch,
# default /var/tmp/jwks-sidecar-image), CARGO_BUILD_JOBS (when set, the build container is
# confined to that many CPUs with --cpuset-cpus: cargo inside sizes its job count from the
# CPUs it may use, and nothing is added to the Dockerfile), JWKS_IMAGE_NICE (default 19),
# DEBIAN_MIRROR. The cargo registry and target dir live in the Dockerfile's cache mounts
# (kept by buildah between builds), so a rebuild after a src/ change recompiles one crate.
set -euo pipefail
cd "$(dirname "$0")/../.."
export ROOT="$PWD"  # read by lib.sh
# shellcheck source=deploy/image/lib.sh
source deploy/image/lib.sh

install_tools
make_base_images

args=(--pull=never --format docker -f Dockerfile -t "$JWKS_IMAGE")
if [ -n "${CARGO_BUILD_JOBS:-}" ]; then
  ncpu="$(nproc --all)"
  jobs=$(( CARGO_BUILD_JOBS < ncpu ? CARGO_BUILD_JOBS : ncpu ))
  # the last CPUs: CPU 0 usually carries more of the machine's interrupts and other work
  args+=(--cpuset-cpus "$(( ncpu - jobs ))-$(( ncpu - 1 ))")
fi
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [ "$revision" != unknown ] && [ -n "$(git status --porcelain 2>/dev/null)" ]; then revision="$revision-dirty"; fi
created="$(git log -1 --format=%cI 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)"
args+=(--build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "CREATED=$created")

log "podman build ${args[*]} $* ."
start=$(date +%s)
nice -n "${JWKS_IMAGE_NICE:-19}" podman build "${args[@]}" "$@" .
log "built $JWKS_IMAGE in $(( $(date +%s) - start ))s: $(podman image inspect --format '{{.Size}}' "$JWKS_IMAGE") bytes uncompressed"
podman run --rm --no-healthcheck "$JWKS_IMAGE" --version
