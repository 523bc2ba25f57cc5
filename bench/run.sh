#!/usr/bin/env bash
# Build the release binary and measure it: size, idle memory, message round trip.
# Usage: bench/run.sh   (BENCH_MESSAGES=N to change the number of messages, default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
cargo build --release --quiet --example bench
TETHER_BIN="$PWD/target/release/tether" target/release/examples/bench
