# Images for the sidecar and the control plane, built from one Rust build stage.
#   docker build --target proxy   -t ferrule-proxy .
#   docker build --target control -t ferrule-control .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ferrule-proxy -p ferrule-control

FROM debian:bookworm-slim AS proxy
COPY --from=build /src/target/release/ferrule-proxy /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ferrule-proxy"]

FROM debian:bookworm-slim AS control
COPY --from=build /src/target/release/ferrule-control /src/target/release/ferrulectl /usr/local/bin/
USER 65532:65532
VOLUME /var/lib/ferrule
# Listening beyond loopback needs an admin token: the control plane refuses to start without
# one. Mount your own token file at /var/lib/ferrule/admin-token (or point
# FERRULE_ADMIN_TOKEN_FILE elsewhere); if none exists, one is generated there (mode 0600) on
# first start: `docker exec <container> cat /var/lib/ferrule/admin-token`. The API is TLS:
# clients verify it with /var/lib/ferrule/ca/trust-bundle.pem, and FERRULE_TLS_SANS adds the
# names they reach it by (e.g. ferrule-control.mesh.svc,10.0.0.5).
ENV FERRULE_DATA_DIR=/var/lib/ferrule FERRULE_LISTEN=0.0.0.0:7070 \
    FERRULE_ADMIN_TOKEN_FILE=/var/lib/ferrule/admin-token FERRULE_INIT_ADMIN_TOKEN=true
EXPOSE 7070
ENTRYPOINT ["/usr/local/bin/ferrule-control"]
