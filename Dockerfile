# Multi-stage build: compile with the Rust image, run on a slim Debian as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p medsfu

FROM debian:bookworm-slim
# ffmpeg: the H.265-to-H.264 transcoder for subscribers without H.265.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /var/lib/medsfu --create-home medsfu
COPY --from=build /src/target/release/medsfu /usr/local/bin/medsfu
USER medsfu
WORKDIR /var/lib/medsfu
# State (token secret, PKI, telemetry journals) lives here.
VOLUME ["/var/lib/medsfu"]
# HTTP (page, signalling, WHIP/WHEP, /healthz, /readyz, /metrics), the one WebRTC media
# port and the vehicle QUIC endpoint.
EXPOSE 8080/tcp 50000/udp 4433/udp
ENV MEDSFU_HTTP__LISTEN=0.0.0.0:8080 \
    MEDSFU_WEBRTC__LISTEN=0.0.0.0:50000 \
    MEDSFU_VEHICLE__LISTEN=0.0.0.0:4433 \
    MEDSFU_DATA__DIR=/var/lib/medsfu
# Browsers must reach the media port at a real address: set MEDSFU_WEBRTC__ANNOUNCE to
# <host address>:50000 when running the container.
# SIGTERM drains (see docs/operations.md). No HEALTHCHECK: the image has no HTTP client;
# probe /healthz and /readyz from the orchestrator.
STOPSIGNAL SIGTERM
ENTRYPOINT ["medsfu"]
CMD ["serve"]
