#!/usr/bin/env bash
# Stream queues, Mailroom vs RabbitMQ (issue 15): `make bench-stream`.
#
# Uses scripts/bench-compare.sh's brokers (private RabbitMQ node, private Mailroom, release
# builds; see docs/performance.md). For each broker in turn, fresh and alone:
#   append: 1 producer, confirms (window WINDOW), 1 KiB messages, COUNT messages into a new
#           stream (x-queue-type: stream), then
#   replay: 1 consumer from x-stream-offset first (prefetch PREFETCH, multi-ack every ACK_EVERY)
#           reads all COUNT (mailroom-perf --consume-after-publish); the broker's RSS is sampled
#           every 100 ms throughout (--broker-pid).
# Environment: COUNT [1000000] WINDOW [100] PREFETCH [1000] ACK_EVERY [500] PRODUCERS [1]
#              REPEAT [1]; the ports and paths of bench-compare.sh.
set -euo pipefail
BENCH_SOURCE_ONLY=1
# shellcheck source=scripts/bench-compare.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-compare.sh"
log() { printf '[bench-stream %(%H:%M:%S)T] %s\n' -1 "$*" >&9; }

COUNT=${COUNT:-1000000}
WINDOW=${WINDOW:-100}
PREFETCH=${PREFETCH:-1000}
ACK_EVERY=${ACK_EVERY:-500}
PRODUCERS=${PRODUCERS:-1}
RESULTS_DIR=${STREAM_RESULTS_DIR:-$ROOT/target/bench-stream/$(date +%Y%m%d-%H%M%S)}

stream_run() {
    local b=$1 rep=$2 pid out
    pid=$(broker_pid "$b")
    out="$RESULTS_DIR/$b-$rep"
    log "$b: append $COUNT x 1 KiB with confirms, then replay from first (round $rep)"
    local cmd=("$PERF_BIN" --uri "$(uri "$b")" -x "$PRODUCERS" -y 1 --consume-after-publish
        --queue-type stream --stream-offset first -s 1024 -c "$WINDOW" -q "$PREFETCH"
        --multi-ack "$ACK_EVERY" --count $((COUNT / PRODUCERS)) -e '' --queues 1
        --queue-prefix "stream-bench-$rep-" --cleanup --broker-pid "$pid" --drain-timeout 30)
    echo "${cmd[*]}" >"$out.cmd"
    fg_run "${cmd[@]}" --json --quiet >"$out.json" 2>"$out.err" || log "$b run failed (see $out.err)"
}

summary() {
    $PYTHON - "$RESULTS_DIR" <<'PY'
import json, sys, glob, os, statistics
d = sys.argv[1]
print("| broker | round | append (confirmed msg/s) | replay from first (msg/s) | broker RSS start / peak / end | broker CPU per message |")
print("|---|---|---|---|---|---|")
appends = {}
for f in sorted(glob.glob(os.path.join(d, "*.json"))):
    name = os.path.basename(f)[:-5]
    b, rep = name.rsplit("-", 1)
    try:
        r = json.load(open(f))
    except Exception as e:
        print(f"| {b} | {rep} | FAILED ({e}) | | | |"); continue
    def g(*ks):
        v = r
        for k in ks:
            if not isinstance(v, dict) or k not in v: return None
            v = v[k]
        return v
    pub = g("publish_rate")
    drain = g("drain_rate")
    rss = (g("broker", "rss_start_kb"), g("broker", "rss_peak_kb"), g("broker", "rss_end_kb"))
    cpu = g("broker", "cpu_ns_per_published")
    mib = lambda k: "?" if k is None else f"{k/1024:.1f} MiB"
    ok = "" if r.get("ok") else " (run not OK: " + "; ".join(r.get("errors") or []) + ")"
    print(f"| {b} | {rep} | {pub and round(pub)} | {drain and round(drain)}{ok} | {' / '.join(mib(x) for x in rss)} | {cpu and round(cpu)} ns |")
    if r.get("ok") and pub:
        appends.setdefault(b, {})[rep] = pub
# Issue 15's figure: Mailroom's append rate over RabbitMQ's, round by round (each round runs both brokers).
m, q = appends.get("mailroom", {}), appends.get("rabbitmq", {})
ratios = [m[k] / q[k] for k in sorted(m, key=int) if k in q and q[k]]
if ratios:
    median = statistics.median(ratios)
    print()
    print("Append ratio (Mailroom / RabbitMQ), round by round: " + ", ".join(f"{x:.2f}x" for x in ratios)
          + f"; median {median:.2f}x (issue 15's target: >= 3x)")
PY
}

stream_main() {
    command -v "$PYTHON" >/dev/null || die "$PYTHON is needed"
    build
    ensure_rabbitmq
    mkdir -p "$RESULTS_DIR"
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-stream.XXXXXX")
    log "results in $RESULTS_DIR, RabbitMQ $(rabbit_version)"
    local rep
    for rep in $(seq "${REPEAT:-1}"); do
        mailroom_start fresh
        mailroom_wait_ready 60
        stream_run mailroom "$rep"
        mailroom_stop
        rm -rf "$TMP/mailroom-data"
        rabbit_start fresh
        stream_run rabbitmq "$rep"
        rabbit_stop
        rm -rf "$TMP/rabbit/mnesia"
    done
    summary | tee "$RESULTS_DIR/summary.md"
}

stream_main "$@"
