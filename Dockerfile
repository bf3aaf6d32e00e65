# Build stage: the release binary, with dependencies cached in their own layer.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

# Runtime stage: Debian slim with CA certificates (TLS to Discord, GitHub, rediss://).
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/almagest --create-home almagest
COPY --from=build /src/target/release/almagest /usr/local/bin/almagest
COPY config/almagest.toml /etc/almagest/almagest.toml
# In a container the bus is the Redis sidecar. The API, when the config has an [api]
# section, listens on every interface by default; this variable does not enable it.
ENV ALMAGEST__BUS__BACKEND=redis \
    ALMAGEST__REDIS__URL=redis://127.0.0.1:6379 \
    ALMAGEST_API_DEFAULT_LISTEN=0.0.0.0:8411
EXPOSE 8411
USER almagest
WORKDIR /var/lib/almagest
ENTRYPOINT ["/usr/local/bin/almagest", "--config", "/etc/almagest/almagest.toml"]
CMD ["run"]
