# syntax=docker/dockerfile:1
# Chronicle in a container: build with cargo-chef (the dependencies are one cached layer,
# rebuilt only when Cargo.toml / Cargo.lock change), run on distroless as a non-root user.
#
#   docker build -t chronicle .
#   docker run --rm chronicle migrate            # the release step, before a new version serves
#   docker run -p 8080:8080 -v chronicle:/var/lib/chronicle chronicle
#
# The runtime image has no shell and no curl: `chronicle health` is the HEALTHCHECK.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin chronicle
COPY . .
RUN cargo build --release --locked --bin chronicle \
    && install -D target/release/chronicle /out/chronicle \
    && mkdir -p /out/data

# glibc, libgcc and CA certificates, nothing else; user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /out/chronicle /usr/local/bin/chronicle
COPY --from=builder --chown=65532:65532 /out/data /var/lib/chronicle
WORKDIR /var/lib/chronicle
# Defaults for a container; every one can be overridden (ops/config/production.toml).
ENV CHRONICLE_BIND=0.0.0.0:8080 \
    CHRONICLE_DATA_DIR=/var/lib/chronicle \
    CHRONICLE_DATABASE_URL=sqlite:///var/lib/chronicle/chronicle.db \
    CHRONICLE_LOG__FORMAT=json
USER 65532:65532
EXPOSE 8080
VOLUME ["/var/lib/chronicle"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/chronicle", "health", "--timeout-secs", "4"]
ENTRYPOINT ["/usr/local/bin/chronicle"]
CMD ["serve"]
