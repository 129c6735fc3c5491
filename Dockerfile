# syntax=docker/dockerfile:1.7
#
# jwks-sidecar container image.
#
#   docker build -t jwks-sidecar:dev .
#   docker run --rm -p 8080:8080 -v "$PWD/config.toml:/etc/jwks-sidecar/config.toml:ro" jwks-sidecar:dev
#
# Stage 1 builds one static-pie binary (glibc, +crt-static: glibc >= 2.34 has the files and
# dns resolvers built in, so name resolution works without NSS modules in the image).
# Stage 2 is distroless "static": CA certificates, tzdata, /etc/passwd with nonroot (65532),
# no shell, no package manager. The image holds no live config: mount one at
# /etc/jwks-sidecar/config.toml (the Helm chart renders it into a ConfigMap).

ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /build
# Release build without debug info, stripped: the image stays small.
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=true \
    CARGO_TERM_COLOR=never \
    RUSTFLAGS="-C target-feature=+crt-static"
# Dependency caching: the cargo registry and the target directory live in BuildKit cache
# mounts, so a rebuild after a change to src/ recompiles only this crate; Cargo.lock pins
# every dependency (--locked).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    TARGET="$(rustc -vV | sed -n 's/^host: //p')" \
    && cargo build --release --locked --bin jwks-sidecar --target "${TARGET}" \
    && install -D -m 0755 "target/${TARGET}/release/jwks-sidecar" /out/jwks-sidecar \
    && /out/jwks-sidecar --version

FROM gcr.io/distroless/static-debian12:nonroot AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="jwks-sidecar" \
      org.opencontainers.image.description="A JWT-verifying reverse proxy sidecar with a live JWKS mirror" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/jwks-sidecar/jwks-sidecar" \
      org.opencontainers.image.base.name="gcr.io/distroless/static-debian12:nonroot"
COPY --from=builder --chown=0:0 --chmod=0755 /out/jwks-sidecar /usr/local/bin/jwks-sidecar
# Documentation only; never read unless passed with --config.
COPY --chown=0:0 --chmod=0644 config.example.toml /usr/share/doc/jwks-sidecar/config.example.toml
USER 65532:65532
# proxy, admin (metrics, health); the authz listeners are configured in the TOML.
EXPOSE 8080 9901
ENV JWKS_SIDECAR_CONFIG=/etc/jwks-sidecar/config.toml
# For runtimes without HTTP probes (docker, ECS, Nomad); Kubernetes uses the admin port's
# /healthz and /readyz instead. Probes the default admin address, inside the container.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/jwks-sidecar", "healthcheck", "--url", "http://127.0.0.1:9901/healthz"]
ENTRYPOINT ["/usr/local/bin/jwks-sidecar"]
