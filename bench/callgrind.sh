#!/usr/bin/env bash
# Instructions tether executes per Telegram message (poll, journal, session, typing, reply,
# settle), counted by valgrind --tool=callgrind: unlike CPU time, the count repeats from run
# to run on a noisy machine. Runs the benchmark twice under callgrind, USERS Telegram users at
# once writing FEW and then MANY messages each (the demo agent, not profiled, answers at
# once), and divides the difference by the difference in messages, so startup, shutdown and
# each conversation's session/new cancel out. Prints the figure and the functions that took
# the most of the larger run.
# Needs valgrind (apt-get install valgrind). Usage: bench/callgrind.sh [FEW MANY [USERS]]
# (2 10 10; with many conversations, e.g. 2 6 60, what grows with their number shows).
set -euo pipefail
cd "$(dirname "$0")/.."
few="${1:-2}"
many="${2:-10}"
users="${3:-10}"
cargo build --profile profiling --quiet
cargo build --release --quiet --example bench
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# The demo agent runs from the same binary; only the daemon is profiled.
cat > "$out/tether" <<WRAP
#!/bin/sh
if [ "\$1" = demo-agent ]; then exec "$PWD/target/profiling/tether" "\$@"; fi
exec valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.\$\$" "$PWD/target/profiling/tether" "\$@"
WRAP
chmod +x "$out/tether"

total_instructions() { # messages per user, name → total instructions of the daemon for one bench run
    local name="$2"
    rm -f "$out"/callgrind.*
    # One run of the users: the division below counts their messages once.
    TETHER_BIN="$out/tether" TETHER_MALLOC=default BENCH_PACED=0 BENCH_SEQUENTIAL=0 BENCH_USERS="$users" \
        BENCH_ROUNDS="$1" BENCH_USER_RUNS=1 BENCH_WEB_MESSAGES=0 BENCH_HUGE=0 BENCH_IDLE_SECS=1 \
        target/release/examples/bench > "$out/bench.log" 2>&1 || { cat "$out/bench.log" >&2; exit 1; }
    set -- "$out"/callgrind.*
    [ -f "$1" ] || { echo "callgrind wrote no profile" >&2; exit 1; }
    cp "$1" "target/callgrind.$name.out"
    sed -n 's/^summary: //p; s/^totals: //p' "$1" | head -n 1
}
small=$(total_instructions "$few" few)
large=$(total_instructions "$many" many)
cp target/callgrind.many.out target/callgrind.out
messages=$(( (many - few) * users ))
echo "instructions of the daemon: $users users × $few messages: $small; × $many messages: $large"
echo "instructions per Telegram message: $(( (large - small) / messages ))"
echo
# What each extra message cost, by function: the inclusive counts of the two runs, subtracted
# (startup and the sessions' creation cancel out, as in the figure above).
inclusive() { callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null | sed -n '/file:function/,$p' \
    | sed -E 's#/rustc/[0-9a-f]+/##; s#\[[^]]*\]$##; s#^ *([0-9,]+) +\( *[0-9.]+%\) +#\1\t#' | awk -F '\t' -v OFS='\t' 'NR > 2 && NF == 2 { gsub(",", "", $1); print }'; }
echo "per extra message, by function (inclusive instructions, the $many-message run minus the $few-message one):"
awk -F '\t' -v messages="$messages" 'NR == FNR { few[$2] = $1; next } { d = ($1 - few[$2]) / messages; if (d >= 1000) printf "%9.0f  %s\n", d, $2 }' \
    <(inclusive target/callgrind.few.out) <(inclusive target/callgrind.many.out) | sort -rn | sed -n '1,60p' | cut -c1-160
echo
echo "where the $many-message run went, by function (self cost; the whole profile: target/callgrind.out):"
callgrind_annotate target/callgrind.out 2>/dev/null | sed -n '/file:function/,$p' | sed -n '2,31p' \
    | sed -E 's#/rustc/[0-9a-f]+/##; s#\[[^]]*\]$##' | cut -c1-150
