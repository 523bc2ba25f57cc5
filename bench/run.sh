#!/usr/bin/env bash
# Build the release binary and measure it (bench/bench.rs: size, exec → first poll, memory,
# CPU per message and per idle minute, latency, throughput; about a minute per binary).
# Also measures the static musl build (what we ship for boards) when the x86_64 musl target
# and musl-gcc are available (`rustup target add x86_64-unknown-linux-musl`,
# `apt-get install musl-tools`).
# Usage: bench/run.sh   (knobs such as BENCH_WEB_MESSAGES: see the header of bench/bench.rs)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
cargo build --release --quiet --example bench
# Memory "mapped from files" depends on how the binary came into the page cache: read from
# disk (as on a board after a reboot) it maps less than right after a `cp`, which leaves it in
# larger blocks (0.15 MiB more for the static x86_64 binary, 2026-12-04). As root, drop the
# cache first, so each figure is the one after a reboot (this drops every file's cached pages,
# hence root only).
cold_cache() {
    if [ "$(id -u)" -eq 0 ] && sync && echo 3 2>/dev/null > /proc/sys/vm/drop_caches; then
        echo "(page cache dropped: the binary is read from disk, as after a reboot)"
    fi
}
echo "== glibc, dynamically linked (cargo build --release)"
cold_cache
TETHER_BIN="$PWD/target/release/tether" target/release/examples/bench

musl=x86_64-unknown-linux-musl
if rustup target list --installed 2>/dev/null | grep -qx "$musl" && command -v musl-gcc >/dev/null; then
    # As scripts/build-static ships it: the standard library rebuilt for size when possible.
    . scripts/small-std.sh
    echo
    if small_std_build "$musl"; then
        echo "== musl, static, standard library rebuilt for size (as scripts/build-static builds it)"
        cold_cache
        TETHER_BIN="$PWD/$small_std_dir/$musl/release/tether" target/release/examples/bench
    else
        cargo build --release --quiet --target "$musl"
        echo "== musl, static (cargo build --release --target $musl)"
        cold_cache
        TETHER_BIN="$PWD/target/$musl/release/tether" target/release/examples/bench
    fi
else
    echo
    echo "(skipped the static musl build: needs rustup target $musl and musl-gcc)"
fi
