#!/usr/bin/env bash
# The throughput cost of message tracing (issue 15) on S2 (1 KiB, manual ack, prefetch 100): one release
# broker on a fresh data dir, S2 with every message carrying a message_id and correlation_id
# (mailroom-perf --message-ids), tracing off and on alternately ROUNDS times. Prints one line per run and the
# broker's trace counters after each traced run. Knobs: ROUNDS [3], DURATION [10], PORT [5691],
# HTTP_PORT [15691].
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
PORT=${PORT:-5691}
HTTP_PORT=${HTTP_PORT:-15691}
BIN=$ROOT/target/release
# (two commands: `--bin mailroom` would otherwise keep the perf tool from being built)
cargo build -q --release -p mailroom-broker --bin mailroom
cargo build -q --release -p mailroom-perf --bin mailroom-perf
DATA=$(mktemp -d)
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DATA"' EXIT
"$BIN/mailroom" --listen 127.0.0.1:$PORT --http-listen 127.0.0.1:$HTTP_PORT --prometheus-listen 127.0.0.1:0 \
    --data-dir "$DATA/data" --log-level warn &
PID=$!
for _ in $(seq 100); do curl -sf -u guest:guest http://127.0.0.1:$HTTP_PORT/api/overview >/dev/null && break; sleep 0.2; done
tracing() {
    curl -sf -u guest:guest -X PUT -H 'content-type: application/json' \
        -d "{\"tracing\": $1}" http://127.0.0.1:$HTTP_PORT/api/vhosts/%2F
}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
    for mode in false true; do
        tracing $mode
        line=$("$BIN/mailroom-perf" --uri amqp://guest:guest@127.0.0.1:$PORT/%2F --scenario S2 \
            --duration "$DURATION" --message-ids --broker-pid $PID --json --quiet)
        rate=$(echo "$line" | python3 -c 'import json,sys; j=json.load(sys.stdin); print("publish %.0f consume(publishing) %.0f consume(overall) %.0f" % (j["publish_rate"], j["consume_rate_publishing"], j["consume_rate"]))')
        # The trace counters are cumulative: this run's share of dropped events is from the difference.
        trace=$(curl -sf -u guest:guest http://127.0.0.1:$HTTP_PORT/api/overview | python3 -c '
import json, sys
t = json.load(sys.stdin)["mailroom"]["trace"]
prev = json.load(open(sys.argv[1])) if sys.argv[1] and __import__("os").path.exists(sys.argv[1]) else {}
json.dump(t, open(sys.argv[1], "w"))
d = {k: t[k] - prev.get(k, 0) for k in t}
offered = d["events_accepted"] + d["events_dropped"]
print("%s this run: offered %d dropped %d (%.1f %%)" % (t, offered, d["events_dropped"], 100.0 * d["events_dropped"] / offered if offered else 0))
' "$DATA/trace-counters.json")
        echo "round $r tracing=$mode $rate load=$(cut -d' ' -f1 /proc/loadavg) trace=$trace"
    done
done
