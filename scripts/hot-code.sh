#!/usr/bin/env bash
# Remake scripts/hot-code.txt and scripts/hot-code-tls.txt: the functions a running tether
# executes, which the static builds link side by side (scripts/small-std.sh; scripts/hot-code.py
# says why).
#
# Builds the static x86_64 musl binary as scripts/build-static does, with its symbols, and runs
# the benchmark against it under valgrind's callgrind: start, Telegram (paced, sequential and
# 50 users at once), 10,000 web chat messages from 30 browsers (enough to fill every browser's
# history, so what a long-running daemon does is in), a 2 MB answer, idle time. The functions
# that ran at least once make the first list; the TLS client's make the second (below). Run it
# after changes that move a lot of code (a new platform, a new dependency); a stale list only
# places fewer functions together. Timing varies what runs: two runs differ by a few functions.
# Needs valgrind, python3, the x86_64-unknown-linux-musl target and musl-gcc.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/small-std.sh
target=x86_64-unknown-linux-musl
cargo build --release --quiet --example bench
# With its symbols, linked as usual (the list does not depend on where functions are).
SMALL_STD_SYMBOLS=1 small_std_build "$target"
bin="$PWD/$small_std_dir/$target/release/tether"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# The demo agent runs from the same binary; only the daemon is profiled.
cat > "$out/tether" <<WRAP
#!/bin/sh
if [ "\$1" = demo-agent ]; then exec "$bin" "\$@"; fi
exec valgrind --tool=callgrind --demangle=no --callgrind-out-file="$out/callgrind.\$\$" "$bin" "\$@"
WRAP
chmod +x "$out/tether"
echo "  the benchmark under callgrind (a few minutes)"
TETHER_BIN="$out/tether" BENCH_PACED=2 BENCH_SEQUENTIAL=4 BENCH_IDLE_SECS=2 \
    target/release/examples/bench > "$out/bench.log" 2>&1 || { cat "$out/bench.log" >&2; exit 1; }
python3 scripts/hot-code.py list "$bin" "$out"/callgrind.* > "$out/daemon.txt"

# The benchmark's fakes speak plain HTTP, so the TLS client's functions come from the unit test
# that makes a real handshake against a loopback server (built the same way, with the test
# harness). Counting the 64 KiB windows the functions occupy in the linked x86_64 binary, they
# cut what a daemon that uses TLS maps from 30 windows to 21 (2026-12-04).
echo "  the TLS unit test under callgrind"
tests=$(env RUSTC_BOOTSTRAP=1 CARGO_PROFILE_RELEASE_STRIP=false \
    "CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS=$small_std_rustflags" \
    cargo test --release --lib --no-run --quiet --target "$target" --target-dir "$small_std_dir" \
    -Z build-std=std,panic_unwind,test -Z build-std-features=optimize_for_size --message-format=json \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print(m["executable"])')
valgrind --tool=callgrind --demangle=no --callgrind-out-file="$out/tls.callgrind" "$tests" \
    net::http::tests::https_does_a_real_handshake_checks_the_name_and_keeps_the_connection --exact \
    > "$out/tls.log" 2>&1 || { cat "$out/tls.log" >&2; exit 1; }
python3 scripts/hot-code.py list --tls "$tests" "$out/tls.callgrind" > "$out/tls.txt"
# Two lists, linked one after the other, so that a daemon without TLS maps none of the second.
cp "$out/daemon.txt" scripts/hot-code.txt
LC_ALL=C comm -13 "$out/daemon.txt" "$out/tls.txt" > scripts/hot-code-tls.txt
echo "  wrote scripts/hot-code.txt ($(wc -l < scripts/hot-code.txt) functions) and scripts/hot-code-tls.txt ($(wc -l < scripts/hot-code-tls.txt))"
