#!/usr/bin/env bash
# M1 slope for Mailroom alone: broker RSS at baseline, with 1 M and with 10 M queued 1 KiB persistent messages
# (needs ~11 GB of free disk). The growth between 1 M and 10 M, divided by 9 M, is the per-message cost.
# Usage: scripts/m1-slope.sh [FIRST=1000000] [TOTAL=10000000]
set -euo pipefail
cd "$(dirname "$0")/.."
FIRST=${1:-1000000}
TOTAL=${2:-10000000}
PORT=${MAILROOM_PORT:-5691}
T=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p mailroom-broker -p mailroom-perf
DIR=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
"$T/release/mailroom" --listen "127.0.0.1:$PORT" --data-dir "$DIR/data" --log-level warn &
PID=$!
sleep 2
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
fill() {
    "$T/release/mailroom-perf" --uri "amqp://guest:guest@127.0.0.1:$PORT/%2f" -x 1 -y 0 --persistent --durable \
        -s 1024 -c 100 -e '' --queues 1 --queue-prefix m1- --no-cleanup --no-purge --json --quiet --count "$1" \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); print("  published %d at %.0f msg/s" % (d["published"], d["publish_rate"]))'
}
R0=$(rss); echo "baseline RSS ${R0} kB"
fill "$FIRST"; sleep 5; R1=$(rss); echo "RSS with $FIRST queued: ${R1} kB"
fill $((TOTAL - FIRST)); sleep 5; R2=$(rss); echo "RSS with $TOTAL queued: ${R2} kB"
python3 -c "print(f'growth per message between $FIRST and $TOTAL: {($R2-$R1)*1024/($TOTAL-$FIRST):.2f} bytes')"
