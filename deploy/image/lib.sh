# shellcheck shell=bash
# Shared by deploy/image/*.sh (sourced). Podman settings of this suite's own, the tools it
# needs, and the local stand-ins for the Dockerfile's base images.
#
# Podman runs with a containers.conf written here and passed with CONTAINERS_CONF (the
# machine's /etc/containers is never edited): runtime runc (crun fails on a hybrid cgroup
# layout) and rlimits nofile/nproc lowered to 1024 (raising them is not permitted in some
# sandboxes; lowering always is). Every setting is overridable from the environment.

JWKS_IMAGE_WORK="${JWKS_IMAGE_WORK:-/var/tmp/jwks-sidecar-image}"
JWKS_IMAGE="${JWKS_IMAGE:-localhost/jwks-sidecar:dev}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
mkdir -p "$JWKS_IMAGE_WORK"

log() { printf '%s [image] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
_have() { command -v "$1" >/dev/null 2>&1; }

# The Dockerfile's ARG defaults: the stand-ins are tagged with exactly the names its FROM
# lines resolve to.
dockerfile_arg() { sed -n "s/^ARG $1=//p" "$ROOT/Dockerfile" | head -1; }

podman_conf() {
  if [ -n "${CONTAINERS_CONF:-}" ] && [ ! -f "$CONTAINERS_CONF" ]; then
    log "CONTAINERS_CONF=$CONTAINERS_CONF does not exist; using this suite's own settings"
    unset CONTAINERS_CONF
  fi
  if [ -z "${CONTAINERS_CONF:-}" ]; then
    export CONTAINERS_CONF="$JWKS_IMAGE_WORK/containers.conf"
    cat >"$CONTAINERS_CONF" <<EOF
# Written by deploy/image/lib.sh; used through CONTAINERS_CONF only.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "${JWKS_PODMAN_RUNTIME:-runc}"
EOF
  fi
}

# install_tools: podman, buildah, runc, fuse-overlayfs, debootstrap (Debian packages), each
# only when missing.
install_tools() {
  local pkgs=()
  _have podman || pkgs+=(podman)
  _have buildah || pkgs+=(buildah)
  _have runc || pkgs+=(runc)
  _have fuse-overlayfs || pkgs+=(fuse-overlayfs)
  _have debootstrap || pkgs+=(debootstrap)
  _have curl || pkgs+=(curl)
  if [ "${#pkgs[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing ${pkgs[*]} and not root: install them (apt-get install -y ${pkgs[*]})"
    log "installing ${pkgs[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
  for t in podman buildah runc debootstrap curl; do
    _have "$t" || die "$t missing after installation"
  done
  podman_conf
}

image_exists() { podman image exists "$1"; }

# A minbase Debian rootfs, shared by both stand-ins (made once, kept in the work dir).
_debian_rootfs() {
  local release="$1" rootfs="$JWKS_IMAGE_WORK/rootfs-$1"
  if [ ! -e "$rootfs/.complete" ]; then
    rm -rf "$rootfs"
    log "debootstrap $release (minbase + gcc, libc6-dev, ca-certificates, tzdata, netbase) from $DEBIAN_MIRROR"
    nice -n 19 debootstrap --variant=minbase \
      --include=ca-certificates,gcc,libc6-dev,tzdata,netbase \
      "$release" "$rootfs" "$DEBIAN_MIRROR" >"$JWKS_IMAGE_WORK/debootstrap.log" 2>&1 ||
      { tail -20 "$JWKS_IMAGE_WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    chroot "$rootfs" apt-get clean
    touch "$rootfs/.complete"
  fi
  printf '%s\n' "$rootfs"
}

# Stand-in for docker.io/library/rust:<version>-slim-<release>: what the official image's
# Dockerfile does (debian:<release>-slim + ca-certificates gcc libc6-dev, rustup-init with the
# minimal profile into /usr/local/{rustup,cargo}, same ENV), from Debian packages and the
# Rust installer.
make_rust_base() {
  local version="$1" release="$2" name="docker.io/library/rust:$1-slim-$2"
  if image_exists "$name"; then log "base image present: $name"; return; fi
  local rootfs stage
  rootfs="$(_debian_rootfs "$release")"
  stage="$JWKS_IMAGE_WORK/rust-$version-$release"
  rm -rf "$stage"
  log "making $name (copy of the rootfs + rustup $version, minimal profile)"
  cp -a "$rootfs" "$stage"
  rm -f "$stage/.complete"
  cp /etc/resolv.conf "$stage/etc/resolv.conf"
  # The builder trusts what this machine trusts: behind a TLS-inspecting egress proxy (its CA
  # in the host's bundle) rustup and cargo inside the build would otherwise fail with
  # "UnknownIssuer". Only the builder stand-in gets it; the runtime stand-in keeps Debian's
  # bundle. JWKS_IMAGE_BUILDER_CA= (empty) keeps Debian's bundle here too.
  local ca="${JWKS_IMAGE_BUILDER_CA-/etc/ssl/certs/ca-certificates.crt}"
  if [ -n "$ca" ] && [ -s "$ca" ] && ! cmp -s "$ca" "$stage/etc/ssl/certs/ca-certificates.crt"; then
    log "builder stand-in: using this machine's CA bundle ($ca)"
    cp -L "$ca" "$stage/etc/ssl/certs/ca-certificates.crt"
  fi
  local url=https://static.rust-lang.org/rustup/dist/x86_64-unknown-linux-gnu/rustup-init sum
  if ! curl -fsSL --retry 3 -o "$stage/tmp/rustup-init" "$url" || ! sum="$(curl -fsSL --retry 3 "$url.sha256")"; then
    die "could not download rustup-init from static.rust-lang.org"
  fi
  [ "$(sha256sum <"$stage/tmp/rustup-init" | cut -d' ' -f1)" = "${sum%% *}" ] || die "rustup-init: sha256 mismatch"
  chmod 0755 "$stage/tmp/rustup-init"
  # rustup-init needs /proc (its own path); a private mount namespace keeps the mount local.
  # shellcheck disable=SC2016  # $1/$2 expand in the inner sh
  nice -n 19 unshare --mount --propagation private sh -c '
      mount -t proc proc "$1/proc" &&
      exec chroot "$1" /usr/bin/env -i HOME=/root PATH=/usr/local/cargo/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
        /tmp/rustup-init -y --no-modify-path --profile minimal --default-toolchain "$2"' \
    sh "$stage" "$version" \
    >"$JWKS_IMAGE_WORK/rustup.log" 2>&1 || { tail -20 "$JWKS_IMAGE_WORK/rustup.log" >&2; die "rustup-init failed"; }
  chmod -R a+w "$stage/usr/local/rustup" "$stage/usr/local/cargo"
  rm -f "$stage/tmp/rustup-init"
  : >"$stage/etc/resolv.conf"
  tar --numeric-owner -C "$stage" -cf - . | podman import --quiet \
    --change "ENV RUSTUP_HOME=/usr/local/rustup" \
    --change "ENV CARGO_HOME=/usr/local/cargo" \
    --change "ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV RUST_VERSION=$version" \
    --change 'CMD ["bash"]' \
    - "$name" >/dev/null
  rm -rf "$stage"
  log "made $name"
}

# Stand-in for gcr.io/distroless/static-debian12:nonroot: the files distroless "static"
# holds (passwd/group with root, nobody, nonroot 65532; CA bundle; tzdata; netbase's
# /etc/services and /etc/protocols; os-release; nsswitch.conf; /tmp 1777; /home/nonroot;
# copyright files), taken from the same Debian packages; USER 65532, WORKDIR /home/nonroot.
make_static_base() {
  local release="$1" name="gcr.io/distroless/static-debian12:nonroot"
  if image_exists "$name"; then log "base image present: $name"; return; fi
  local rootfs stage
  rootfs="$(_debian_rootfs "$release")"
  stage="$JWKS_IMAGE_WORK/static-$release"
  rm -rf "$stage"
  log "making $name"
  mkdir -p "$stage"/{etc/ssl/certs,usr/share/doc,usr/share/zoneinfo,tmp,root,home/nonroot,var/lib/dpkg/status.d,bin,sbin,usr/bin,usr/sbin,usr/local/bin}
  cat >"$stage/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$stage/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
EOF
  printf 'hosts: files dns\nnetworks: files\n' >"$stage/etc/nsswitch.conf"
  cp -L "$rootfs/etc/ssl/certs/ca-certificates.crt" "$stage/etc/ssl/certs/"
  cp -a "$rootfs/usr/lib/os-release" "$stage/etc/os-release"
  cp -a "$rootfs/etc/services" "$rootfs/etc/protocols" "$stage/etc/"
  cp -a "$rootfs/usr/share/zoneinfo/." "$stage/usr/share/zoneinfo/"
  for p in base-files netbase tzdata ca-certificates; do
    mkdir -p "$stage/usr/share/doc/$p"
    cp -L "$rootfs/usr/share/doc/$p/copyright" "$stage/usr/share/doc/$p/"
    chroot "$rootfs" dpkg-query -s "$p" >"$stage/var/lib/dpkg/status.d/$p"
  done
  chmod 1777 "$stage/tmp"
  chmod 0700 "$stage/root" "$stage/home/nonroot"
  chown 65532:65532 "$stage/home/nonroot"
  tar --numeric-owner -C "$stage" -cf - . | podman import --quiet \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
    --change "USER 65532" \
    --change "WORKDIR /home/nonroot" \
    - "$name" >/dev/null
  rm -rf "$stage"
  log "made $name"
}

make_base_images() {
  local rust_version release
  rust_version="$(dockerfile_arg RUST_VERSION)"
  release="$(dockerfile_arg DEBIAN_RELEASE)"
  if [ -z "$rust_version" ] || [ -z "$release" ]; then
    die "could not read RUST_VERSION/DEBIAN_RELEASE from the Dockerfile"
  fi
  make_rust_base "$rust_version" "$release"
  make_static_base "$release"
}
