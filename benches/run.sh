#!/usr/bin/env bash
# Builds the whole workspace in release mode, then runs the benchmark harness with the given
# flags (e.g. `benches/run.sh --quick`). The harness finds the Ferrule binaries next to itself.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
exec target/release/ferrule-bench run "$@"
