# The one `referral-hub` binary (every component: `up`, `gateway`, `agency --id <id>`).
#   docker build -t referral-hub .
# Protobuf is compiled by protox (pure Rust): the builder needs nothing beyond cargo.

FROM rust:1.94-slim-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p referral-hub --locked \
    && cp target/release/referral-hub /usr/local/bin/referral-hub

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 referral \
    && useradd --system --uid 10001 --gid referral --home-dir /var/lib/referral-hub referral \
    && install -d -o referral -g referral -m 0700 /var/lib/referral-hub
COPY --from=builder /usr/local/bin/referral-hub /usr/local/bin/referral-hub
# The holiday calendar (the default `deadlines.holidays_file`, relative to /app) and the agency
# directories: the demo district and its container variant (services reached by DNS name).
WORKDIR /app
COPY deploy/holidays-kz.toml deploy/demo-district.toml deploy/container-district.toml deploy/
ENV REFERRAL_HUB__DATA_DIR=/var/lib/referral-hub
USER 10001:10001
ENTRYPOINT ["referral-hub"]
CMD ["--help"]
