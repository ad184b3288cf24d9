#!/usr/bin/env bash
# Builds the whole workspace in release mode, then runs the benchmark harness with the given
# flags (e.g. `benches/run.sh --quick`; see benches/README.md). The harness finds the Ferrule
# binaries next to itself, and installs haproxy and nginx with apt-get when they are missing
# and it runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
exec target/release/ferrule-bench run "$@"
