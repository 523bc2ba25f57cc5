#!/usr/bin/env bash
# Remake the lists of the functions a running tether executes, which the builds link side by
# side (scripts/hot-code.py says why):
# - static: scripts/hot-code.txt and scripts/hot-code-tls.txt, names for the static builds'
#   second link (scripts/small-std.sh);
# - glibc: scripts/hot-code-glibc.txt and scripts/hot-code-glibc-tls.txt, section patterns
#   for the linker script build.rs makes for `cargo build --release`.
#
# Each builds its binary with its symbols and runs the benchmark against it under valgrind's
# callgrind: start, Telegram (paced, sequential and 50 users at once), 10,000 web chat
# messages from 30 browsers (enough to fill every browser's history, so what a long-running
# daemon does is in), a 2 MB answer, idle time. The functions that ran at least once make the
# first list; the TLS client's make the second (below). Run it after changes that move a lot
# of code (a new platform, a new dependency), that add code every message runs (a new queue or
# wait: one such change left out of the lists cost the glibc build 0.2 MiB idle, twice), or a
# new rustc; a stale list only places fewer functions together. Timing varies what runs: two
# runs differ by a few functions. bench/run.sh shows when a list is stale: its line "of the
# files, the binary itself" grows (glibc x86_64 idle: 1,708-1,756 kB with current lists on
# 2026-12-06, 2,104-2,168 with lists that missed the code of one change).
# Needs valgrind, python3; for static, the x86_64-unknown-linux-musl target and musl-gcc.
# Usage: scripts/hot-code.sh [static|glibc]   (both)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/small-std.sh
part="${1:-both}"
cargo build --release --quiet --example bench
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# profile_bench BINARY NAME [VAR=VALUE...]: the benchmark under callgrind, profiles in
# $out/NAME.*. The demo agent runs from the same binary; only the daemon is profiled.
profile_bench() {
    local bin=$1 name=$2
    shift 2
    cat > "$out/$name-tether" <<WRAP
#!/bin/sh
if [ "\$1" = demo-agent ]; then exec "$bin" "\$@"; fi
exec valgrind --tool=callgrind --demangle=no --callgrind-out-file="$out/$name.\$\$" "$bin" "\$@"
WRAP
    chmod +x "$out/$name-tether"
    echo "  the benchmark under callgrind ($name; a few minutes)"
    env "$@" TETHER_BIN="$out/$name-tether" BENCH_PACED=2 BENCH_SEQUENTIAL=4 BENCH_IDLE_SECS=2 \
        target/release/examples/bench > "$out/$name.log" 2>&1 || { cat "$out/$name.log" >&2; exit 1; }
}

# The benchmark's fakes speak plain HTTP, so the TLS client's functions come from the unit test
# that makes a real handshake against a loopback server (built the same way as the binary, with
# the test harness). Counting the 64 KiB windows the functions occupy in the linked static
# x86_64 binary, they cut what a daemon that uses TLS maps from 30 windows to 21 (2026-12-04).
# profile_tls NAME CARGO_ARG...: that test under callgrind, the profile in $out/NAME.callgrind;
# prints the test binary's path.
profile_tls() {
    local name=$1 tests
    shift
    echo "  the TLS unit test under callgrind ($name)" >&2
    tests=$("$@" --release --lib --no-run --quiet --message-format=json | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print(m["executable"])')
    valgrind --tool=callgrind --demangle=no --callgrind-out-file="$out/$name.callgrind" "$tests" \
        net::http::tests::https_does_a_real_handshake_checks_the_name_and_keeps_the_connection --exact \
        > "$out/$name-test.log" 2>&1 || { cat "$out/$name-test.log" >&2; exit 1; }
    echo "$tests"
}

if [ "$part" = both ] || [ "$part" = static ]; then
    target=x86_64-unknown-linux-musl
    # With its symbols, linked as usual (the list does not depend on where functions are).
    SMALL_STD_SYMBOLS=1 small_std_build "$target"
    bin="$PWD/$small_std_dir/$target/release/tether"
    profile_bench "$bin" static
    python3 scripts/hot-code.py list "$bin" "$out"/static.* > "$out/static.txt"
    # The test harness needs unwinding (under `-Z panic-abort-tests` it would run the test in a
    # child process, which callgrind does not follow), so this one build unwinds; the names
    # are compared without their hashes, which is what the panic strategy changes.
    tests=$(profile_tls static-tls env RUSTC_BOOTSTRAP=1 CARGO_PROFILE_RELEASE_STRIP=false \
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS=${small_std_rustflags/ -C panic=abort/}" \
        cargo test --target "$target" --target-dir "$small_std_dir" \
        -Z build-std=std,panic_unwind,test -Z build-std-features=optimize_for_size)
    python3 scripts/hot-code.py list --tls "$tests" "$out/static-tls.callgrind" > "$out/static-tls.txt"
    # Two lists, linked one after the other, so that a daemon without TLS maps none of the second.
    cp "$out/static.txt" scripts/hot-code.txt
    LC_ALL=C comm -13 "$out/static.txt" "$out/static-tls.txt" > scripts/hot-code-tls.txt
    echo "  wrote scripts/hot-code.txt ($(wc -l < scripts/hot-code.txt) functions) and scripts/hot-code-tls.txt ($(wc -l < scripts/hot-code-tls.txt))"
fi

if [ "$part" = both ] || [ "$part" = glibc ]; then
    # Symbols kept by a flag (RUSTFLAGS), not by the profile: a profile with `strip = false`
    # changes cargo's crate hashes, so names, so which functions LLVM merges and inlines, and
    # the list would miss functions of the stripped build. Not placed (TETHER_PLACE_CODE=0), so
    # that the build does not depend on the old lists.
    glibc=(env "RUSTFLAGS=-C strip=none" TETHER_PLACE_CODE=0)
    "${glibc[@]}" cargo build --release --quiet --target-dir target/hot-code-glibc
    bin="$PWD/target/hot-code-glibc/release/tether"
    # As the restarted process runs (src/malloc_tuning.rs): valgrind would lose the restart,
    # and under valgrind glibc's allocator is not used anyway.
    profile_bench "$bin" glibc TETHER_MALLOC=tuned
    python3 scripts/hot-code.py patterns "$bin" "$out"/glibc.* > "$out/glibc.txt"
    tests=$(profile_tls glibc-tls "${glibc[@]}" cargo test --target-dir target/hot-code-glibc)
    python3 scripts/hot-code.py patterns --tls "$tests" "$out/glibc-tls.callgrind" > "$out/glibc-tls.txt"
    cp "$out/glibc.txt" scripts/hot-code-glibc.txt
    LC_ALL=C comm -13 "$out/glibc.txt" "$out/glibc-tls.txt" > scripts/hot-code-glibc-tls.txt
    echo "  wrote scripts/hot-code-glibc.txt ($(wc -l < scripts/hot-code-glibc.txt) patterns) and scripts/hot-code-glibc-tls.txt ($(wc -l < scripts/hot-code-glibc-tls.txt))"
fi
