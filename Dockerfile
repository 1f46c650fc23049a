# syntax=docker/dockerfile:1
#
# The lab's image: `server`, `lab` and `loadgen`, built in release mode, plus the two
# scripts docker-compose.yml runs (trace-variant, compare). Two stages:
#
#   build    rust:1-bookworm with what the tracer's build.rs needs (clang with the BPF
#            target, libelf and zlib headers, pkg-config, make). Dependencies are built
#            first from the manifests and stub sources (cargo-chef's idea, by hand), so
#            that editing the lab's own code does not rebuild them: that layer is reused
#            as long as Cargo.toml and Cargo.lock files do not change.
#   runtime  debian:bookworm-slim with the binaries and the shared libraries they load
#            (libelf, zlib).
#
# Build: docker compose build (or docker build -t syscall-lab .).

FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends clang llvm libelf-dev zlib1g-dev pkg-config make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# 1. Dependencies only: the manifests, with stub sources in place of the crates' own.
#    (A new workspace member needs a line here.)
COPY Cargo.toml Cargo.lock ./
COPY db/Cargo.toml db/
COPY servers/Cargo.toml servers/
COPY lab/Cargo.toml lab/
COPY loadgen/Cargo.toml loadgen/
COPY tracer/Cargo.toml tracer/
RUN set -eux; \
    for crate in db servers lab loadgen tracer; do \
        mkdir -p "$crate/src"; \
        echo 'fn main() {}' > "$crate/src/main.rs"; \
        : > "$crate/src/lib.rs"; \
    done; \
    # The tracer's real build.rs compiles src/bpf; the stub only makes cargo build its
    # build-dependencies (libbpf-cargo) now.
    echo 'fn main() {}' > tracer/build.rs; \
    cargo build --release --locked --workspace --bins; \
    # Forget the stub crates, keep the dependencies.
    rm -rf db servers lab loadgen tracer \
        target/release/.fingerprint/db-* target/release/.fingerprint/servers-* \
        target/release/.fingerprint/lab-* target/release/.fingerprint/loadgen-* \
        target/release/.fingerprint/tracer-* target/release/build/tracer-*

# 2. The lab itself.
COPY db db
COPY servers servers
COPY lab lab
COPY loadgen loadgen
COPY tracer tracer
RUN set -eux; \
    cargo build --release --locked --workspace --bins; \
    mkdir -p /out; \
    cp target/release/server target/release/lab target/release/loadgen /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends libelf1 zlib1g ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/server /out/lab /out/loadgen /usr/local/bin/
COPY dashboards/docker/trace-variant dashboards/docker/compare /usr/local/bin/
COPY dashboards/tfb.mix /usr/share/syscall-lab/tfb.mix
RUN mkdir -p /var/log/syscall-lab /results
WORKDIR /var/lib/syscall-lab
# Listening on all interfaces inside the container; docker-compose.yml publishes the ports
# on 127.0.0.1 only.
ENV LISTEN=0.0.0.0:8080
EXPOSE 8080 9100
CMD ["server", "--variant", "epoll"]
