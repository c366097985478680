# One image for every Switchyard service; compose.yml picks the binary per service.
# Build:  docker build -t switchyard .

FROM rust:1-bookworm AS build
# libpcsclite-dev: the modem simulator speaks PC/SC. librdkafka is built from the bundled
# sources (rdkafka's default) with TLS (the workspace's `ssl` feature): libssl-dev.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpcsclite-dev libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Every binary of the workspace goes into the image (a new processor too, with no edit
# here): the executables cargo leaves at the top of target/release.
RUN cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && find target/release -maxdepth 1 -type f -executable -exec cp {} /out/ \;

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libpcsclite1 libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 switchyard \
 && mkdir /sims && chown switchyard /sims
COPY --from=build /out/ /usr/local/bin/
# /sims: the simulated SIMs' counters (compose mounts a volume here, which takes this
# directory's owner).
USER switchyard
# Each service's command is set in compose.yml; alone, the image prints the CLI's help.
CMD ["switchyard", "--help"]
