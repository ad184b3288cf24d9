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
ENV FERRULE_DATA_DIR=/var/lib/ferrule FERRULE_LISTEN=0.0.0.0:7070
EXPOSE 7070
ENTRYPOINT ["/usr/local/bin/ferrule-control"]
