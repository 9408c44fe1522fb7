# Multi-stage build: compile with the Rust image, run on a slim Debian as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p medsfu

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/medsfu --create-home medsfu
COPY --from=build /src/target/release/medsfu /usr/local/bin/medsfu
USER medsfu
WORKDIR /var/lib/medsfu
# State (token secret; later journals and recordings) lives here.
VOLUME ["/var/lib/medsfu"]
# HTTP (page, signalling, WHIP/WHEP, /healthz, /metrics) and the one WebRTC media port.
EXPOSE 8080/tcp 50000/udp
ENV MEDSFU_HTTP__LISTEN=0.0.0.0:8080 \
    MEDSFU_WEBRTC__LISTEN=0.0.0.0:50000 \
    MEDSFU_DATA__DIR=/var/lib/medsfu
# Browsers must reach the media port at a real address: set MEDSFU_WEBRTC__ANNOUNCE to
# <host address>:50000 when running the container.
ENTRYPOINT ["medsfu"]
CMD ["serve"]
