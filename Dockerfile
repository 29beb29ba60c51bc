# syntax=docker/dockerfile:1
#
# chartcache container image.
#
#   docker build -t chartcache .
#   docker run --rm -p 8080:8080 chartcache                  # serves the bundled example repo
#   docker run --rm -p 8080:8080 -v chartcache:/var/cache/chartcache \
#     -e AWS_REGION=eu-west-1 -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY \
#     chartcache --upstream s3://my-charts-bucket/charts
#
# Stage 1 builds the release binary; stage 2 is debian-slim with only
# ca-certificates (for `--tls-roots native`) and the binary, running as uid 10001.
#
# io_uring: Docker's (and containerd's) default seccomp profile blocks
# io_uring_setup, so inside a default container chartcache falls back to epoll
# and logs that once at start. `--security-opt seccomp=unconfined`, or a custom
# profile that allows io_uring_setup / io_uring_enter / io_uring_register,
# enables io_uring (see deploy/README.md).
#
# No HEALTHCHECK: the runtime image has no curl/wget, and the admin listener
# defaults to 127.0.0.1:8081. Orchestrators probe /healthz and /readyz on the
# admin port instead (see the Helm chart deploy/helm/chartcache; there the admin listener
# binds 0.0.0.0:8081 with an admin token from a Secret).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# The whole context (see .dockerignore): Cargo.toml names bench, test and example
# targets and the workspace member loadtest/ (its Cargo.toml and sources), and cargo
# reads every declared target of every member when it loads the workspace.
COPY . .
# Cache mounts keep the crate registry and target/ across builds (BuildKit);
# the binary is copied out of the mounted target/ so the next stage can see it.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin chartcache \
 && install -D -m 0755 target/release/chartcache /out/chartcache \
 && strip --strip-debug /out/chartcache

FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Fixed uid/gid 10001 so hostPath / volume ownership can be prepared for it.
# The cache dir is created owned by that user: a named volume mounted there
# inherits the ownership, so the default cache dir is writable.
RUN groupadd --system --gid 10001 chartcache \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin chartcache \
 && install -d -o 10001 -g 10001 -m 0750 /var/cache/chartcache
COPY --from=builder /out/chartcache /usr/local/bin/chartcache
# The example repository served when no --upstream is given.
COPY examples/repo /usr/share/chartcache/examples/repo
WORKDIR /usr/share/chartcache
USER 10001:10001
VOLUME /var/cache/chartcache
# 8080: the chart repository. 8081: admin (/healthz, /readyz, /metrics, purge);
# it listens on 127.0.0.1 unless run with --admin 0.0.0.0:8081 --admin-token TOKEN.
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/chartcache"]
