#!/usr/bin/env bash
# Long-run check: LONGRUN_MESSAGES messages (default 10000) through tether against the fake
# Bot API and the demo agent, with random faults (getUpdates 502/409/dropped, sendMessage
# 502/429/dropped, agent crashes, clean restarts, SIGHUP reloads, malformed updates, hostile
# text); prints the counts and tether's memory/threads/open files every 1000 answers, and fails
# unless every message was answered exactly once, nothing grew after warm-up, and the log holds
# no panic. The soak: LONGRUN_MESSAGES=100000 bench/longrun.sh. See bench/longrun.rs for the
# other LONGRUN_* knobs.
# Usage: bench/longrun.sh            (release build)
#        PROFILE=debug bench/longrun.sh   (no release build; slower, fine for a check)
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${PROFILE:-release}"
if [ "$profile" = release ]; then
    cargo build --release --quiet
    cargo build --release --quiet --example longrun
    dir=target/release
else
    cargo build --quiet
    cargo build --quiet --example longrun
    dir=target/debug
fi
TETHER_BIN="$PWD/$dir/tether" "$dir/examples/longrun"
