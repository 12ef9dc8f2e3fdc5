#!/usr/bin/env bash
# Mailroom before/after: runs S1-S5 (mailroom-perf presets) against two mailroom binaries, alternating
# A, B, A, B ... per scenario so that drifting machine load hits both, each run on a freshly started broker
# with a fresh data dir. Prints one line per run and median tables at the end: consume msg/s, and the
# broker's CPU time (user + system, from /proc/PID/stat) per message handled (published + consumed), which
# is steadier than rates on a machine shared with other work.
#
#   scripts/bench-ab.sh BIN_A BIN_B [PERF_BIN]
#   REPEAT [3]  DURATION [15]  SCENARIOS ["S1 S2 S3 S4 S5"]  PORT [5691]  OUT [target/bench-ab/<timestamp>]
#   ARGS_A, ARGS_B ['']  extra broker arguments for each side, e.g. the same binary twice with
#                        ARGS_B="--config bound.toml" (a file with `queue_flow_max_messages = 5000`)
#   ENV_A, ENV_B ['']    environment for each side's broker (VAR=value ...), for switches in throwaway builds
#   PERF_A, PERF_B [PERF_BIN] the load tool each side runs with: the same broker binary twice with two
#                        builds of mailroom-perf measures a change to the tool
set -euo pipefail
A=$1
B=$2
PERF=${3:-target/release/mailroom-perf}
PERF_A=${PERF_A:-$PERF}
PERF_B=${PERF_B:-$PERF}
REPEAT=${REPEAT:-3}
DURATION=${DURATION:-15}
SCENARIOS=${SCENARIOS:-"S1 S2 S3 S4 S5"}
PORT=${PORT:-5691}
OUT=${OUT:-target/bench-ab/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
PID=""
DATA=""
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    [ -n "$DATA" ] && rm -rf "$DATA"
    return 0
}
trap cleanup EXIT

start() {
    DATA=$(mktemp -d)
    # shellcheck disable=SC2086 # $2 and $3 are word lists on purpose
    env $3 "$1" --listen "127.0.0.1:$PORT" --data-dir "$DATA" --log-level warn $2 >"$OUT/broker.log" 2>&1 </dev/null &
    PID=$!
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "broker $1 did not come up" >&2
    exit 1
}

# CPU seconds (user + system) used so far by PID.
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat" 2>/dev/null || echo 0; }

stop() {
    kill "$PID"
    wait "$PID" 2>/dev/null || true
    PID=""
    rm -rf "$DATA"
    DATA=""
}

for rep in $(seq 1 "$REPEAT"); do
    for s in $SCENARIOS; do
        for side in A B; do
            bin=$A args=${ARGS_A:-} envs=${ENV_A:-} perf=$PERF_A
            [ "$side" = B ] && bin=$B args=${ARGS_B:-} envs=${ENV_B:-} perf=$PERF_B
            start "$bin" "$args" "$envs"
            load=$(cut -d' ' -f1 /proc/loadavg)
            json="$OUT/$s-$side-$rep.json"
            "$perf" --uri "amqp://guest:guest@127.0.0.1:$PORT/%2f" --scenario "$s" --duration "$DURATION" \
                --json --quiet >"$json" 2>"$OUT/$s-$side-$rep.err" || true
            cpu_s "$PID" >"$OUT/$s-$side-$rep.cpu"
            stop
            python3 - "$json" "$s" "$side" "$rep" "$load" <<'PY'
import json, sys
path, s, side, rep, load = sys.argv[1:]
try:
    r = json.load(open(path))
    cpu = float(open(path[:-5] + ".cpu").read())
    n = r["published"] + r["consumed"]
    p99 = (r.get("latency_publishing_us") or r.get("latency_us") or {}).get("p99")
    print(f"{s} {side} #{rep}: publish {r['publish_rate']:.0f} consume {r['consume_rate']:.0f} msg/s "
          f"(while publishing {r.get('consume_rate_publishing') or 0:.0f}, p99 {p99 or 0:.0f} us), "
          f"broker CPU {cpu:.2f} s = {cpu * 1e9 / max(n, 1):.0f} ns/msg handled, "
          f"tool {r.get('cpu_ns_per_msg') or 0:.0f} ns/msg handled, "
          f"lost {r['lost']} dup {r['duplicated']} ok {r['ok']} (load {load})", flush=True)
except Exception as e:
    print(f"{s} {side} #{rep}: FAILED ({e})", flush=True)
PY
        done
    done
done

python3 - "$OUT" "$SCENARIOS" "$REPEAT" <<'PY'
import json, statistics, sys
out, scenarios, repeat = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])

def runs(s, side):
    for rep in range(1, repeat + 1):
        try:
            r = json.load(open(f"{out}/{s}-{side}-{rep}.json"))
            cpu = float(open(f"{out}/{s}-{side}-{rep}.cpu").read())
        except Exception:
            continue
        yield (r["consume_rate"], cpu * 1e9 / max(r["published"] + r["consumed"], 1),
               r.get("cpu_ns_per_msg") or 0)

def table(title, unit, pick, fmt):
    print(f"\n| scenario | A {title} (median, min-max) | B {title} (median, min-max) | B / A |")
    print("| --- | --- | --- | --- |")
    for s in scenarios:
        med, cells = {}, []
        for side in "AB":
            v = [pick(x) for x in runs(s, side)]
            if v:
                med[side] = statistics.median(v)
                cells.append(f"{fmt(med[side])} ({fmt(min(v))} - {fmt(max(v))}){unit}")
            else:
                cells.append("FAILED")
        ratio = f"{med['B'] / med['A']:.2f}" if len(med) == 2 and med["A"] else "-"
        print(f"| {s} | {cells[0]} | {cells[1]} | {ratio} |")

table("consume msg/s", "", lambda x: x[0], lambda v: f"{v / 1000:.0f} k")
table("broker CPU per message handled", " ns", lambda x: x[1], lambda v: f"{v:.0f}")
table("load tool CPU per message handled", " ns", lambda x: x[2], lambda v: f"{v:.0f}")
PY
