#!/usr/bin/env bash
# Mailroom vs RabbitMQ comparison (issue 6): `make bench-compare`.
#
# Builds release `mailroom` and `mailroom-perf`, installs RabbitMQ (Debian package) when it
# is missing, starts a private RabbitMQ node (own ports, data, logs, config, no plugins) and
# a private Mailroom (own port, fresh data dir), runs the scenarios S1-S6, L1 and the
# flow-control scenarios F1-F3 (issue 11) against both brokers alternately REPEAT times,
# measures M1 (RSS per queued message) and Mailroom's recovery time, and regenerates the
# marked section of docs/performance.md. Every run watches the broker process
# (mailroom-perf --broker-pid: peak RSS every 100 ms, CPU per message).
#
# Environment knobs (defaults in brackets):
#   REPEAT [3]            rounds of the scenario list (REPEAT=1 for a quick run)
#   DURATION [15]         seconds of publishing per scenario (not S6, not F1-F3)
#   FLOW_DURATION [30]    seconds of publishing for F1-F3
#   FLOW_WATERMARK [256MiB]  memory high watermark both brokers run F2 with (restarted for
#                         it: Mailroom --memory-high-watermark when the build has it,
#                         RabbitMQ vm_memory_high_watermark.absolute); "" = default config
#   MAX_BROKER_RSS [4GiB] mailroom-perf --max-broker-rss: publishing stops when the broker's
#                         RSS reaches this (protects the shared machine); 0 = no cap
#   S6_COUNT [200000]     messages in S6
#   SCENARIOS ["S1 S2 S3 S4 S5 S6 L1 F1 F2 F3"]  (also L1M: L1 with --pacing ms, 1 ms bursts)
#   QUIET_MAX [30]        before each run, wait up to this many seconds for both brokers to be idle
#   PAUSE_OTHER [1]       stop the broker not under test (SIGSTOP) during each run; 0 keeps it running
#   M1_COUNT [1000000]    messages for M1 (M1_COUNT=10000000 for the long run); M1=0 skips it
#   RECOVERY [1]          measure Mailroom's restart after SIGTERM and kill -9 (after M1)
#   RABBIT_RECOVERY [1]   also measure RabbitMQ's restart after SIGTERM (after M1)
#   MAILROOM_PORT [5681] RABBIT_PORT [5682] RABBIT_DIST_PORT [25682] EPMD_PORT [4370]
#   RESULTS_DIR [target/bench-compare/<timestamp>]   raw JSON results (gitignored)
#   DOC [docs/performance.md]   UPDATE_DOC [1]   KEEP_TMP [0]
#   CARGO [cargo]  CARGO_TARGET_DIR [target]  (binaries: $CARGO_TARGET_DIR/release/...)
#   RABBITMQ_SERVER_SCRIPT  the Erlang-level start script
#                           [/usr/lib/rabbitmq/bin/rabbitmq-server]
set -euo pipefail

ENV_OVERRIDES=$(for v in REPEAT DURATION QUIET_MAX PAUSE_OTHER FLOW_DURATION FLOW_WATERMARK MAX_BROKER_RSS S6_COUNT SCENARIOS M1 M1_COUNT RECOVERY RABBIT_RECOVERY; do
    if [ -n "${!v:-}" ]; then
        case "${!v}" in *[!A-Za-z0-9_.,/-]*) printf "%s='%s' " "$v" "${!v}" ;; *) printf '%s=%s ' "$v" "${!v}" ;; esac
    fi
done)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

REPEAT=${REPEAT:-3}
DURATION=${DURATION:-15}
FLOW_DURATION=${FLOW_DURATION:-30}
FLOW_WATERMARK=${FLOW_WATERMARK-256MiB}
MAX_BROKER_RSS=${MAX_BROKER_RSS:-4GiB}
S6_COUNT=${S6_COUNT:-200000}
SCENARIOS=${SCENARIOS:-"S1 S2 S3 S4 S5 S6 L1 F1 F2 F3"}
QUIET_MAX=${QUIET_MAX:-30}
PAUSE_OTHER=${PAUSE_OTHER:-1}
M1=${M1:-1}
M1_COUNT=${M1_COUNT:-1000000}
RECOVERY=${RECOVERY:-1}
RABBIT_RECOVERY=${RABBIT_RECOVERY:-1}
MAILROOM_PORT=${MAILROOM_PORT:-5681}
RABBIT_PORT=${RABBIT_PORT:-5682}
RABBIT_DIST_PORT=${RABBIT_DIST_PORT:-25682}
EPMD_PORT=${EPMD_PORT:-4370}
RABBIT_NODENAME=${RABBIT_NODENAME:-mailroom-bench@localhost}
CARGO=${CARGO:-cargo}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/target/bench-compare/$(date +%Y%m%d-%H%M%S)}
DOC=${DOC:-$ROOT/docs/performance.md}
UPDATE_DOC=${UPDATE_DOC:-1}
KEEP_TMP=${KEEP_TMP:-0}
RABBITMQ_SERVER_SCRIPT=${RABBITMQ_SERVER_SCRIPT:-/usr/lib/rabbitmq/bin/rabbitmq-server}
PYTHON=${PYTHON:-python3}
PROBE="$PYTHON $ROOT/scripts/amqp-probe.py"
CLK_TCK=$(getconf CLK_TCK)

MAILROOM_BIN="$TARGET_DIR/release/mailroom"
PERF_BIN="$TARGET_DIR/release/mailroom-perf"

# Progress goes to fd 9 (the script's stderr), also from traps that fire while a command's
# stderr is redirected to a results file.
exec 9>&2
log() { printf '[bench-compare %(%H:%M:%S)T] %s\n' -1 "$*" >&9; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- state and cleanup
TMP=""
MAILROOM_PID=""
RABBIT_WRAPPER_PID=""
RABBIT_BEAM_PID=""
EPMD_PID=""
# Extra broker settings of the current run (F2's memory watermark); empty = defaults.
MAILROOM_EXTRA_ARGS=()
RABBIT_EXTRA_CONF=""
WATERMARK_USED="default"
PAUSED_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    [ -n "$PAUSED_PID" ] && kill -CONT "$PAUSED_PID" 2>/dev/null
    [ -n "$MAILROOM_PID" ] && mailroom_stop
    [ -n "$RABBIT_WRAPPER_PID$RABBIT_BEAM_PID" ] && rabbit_stop
    if [ -n "$EPMD_PID" ]; then
        kill "$EPMD_PID" 2>/dev/null
        wait "$EPMD_PID" 2>/dev/null
        EPMD_PID=""
    fi
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        if [ "$KEEP_TMP" = 1 ]; then
            log "kept temp dir $TMP"
        else
            rm -rf "$TMP"
        fi
    fi
    exit "$rc"
}
# Long commands run in the background and are waited for (fg_run), so that a Ctrl-C or
# TERM interrupts `wait` at once and the trap can stop the child, then cleanup runs.
CHILD_PID=""
on_signal() {
    log "$1: stopping"
    [ -n "$CHILD_PID" ] && kill -TERM "$CHILD_PID" 2>/dev/null
    exit "$2"
}
trap cleanup EXIT
trap 'on_signal interrupted 130' INT
trap 'on_signal terminated 143' TERM

fg_run() {
    "$@" &
    CHILD_PID=$!
    local rc=0
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=""
    return "$rc"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_gone PID SECS: wait until the process is gone (returns 1 on timeout)
wait_gone() {
    local pid=$1 deadline=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        # A zombie child of ours still answers kill -0: reap it if it is ours.
        if [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ]; then
            wait "$pid" 2>/dev/null || true
            return 0
        fi
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.02
    done
    wait "$pid" 2>/dev/null || true
    return 0
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# CPU seconds (user + system) used so far by PID, as a decimal
cpu_s() { awk -v t="$CLK_TCK" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat" 2>/dev/null || echo 0; }
now_ns() { date +%s%N; }

# ---------------------------------------------------------------- build
build() {
    log "building release mailroom and mailroom-perf (target dir $TARGET_DIR)"
    "$CARGO" build --release -p mailroom-broker --bin mailroom
    "$CARGO" build --release -p mailroom-perf --bin mailroom-perf
    [ -x "$MAILROOM_BIN" ] || die "missing $MAILROOM_BIN after build"
    [ -x "$PERF_BIN" ] || die "missing $PERF_BIN after build"
    # What was built: the commit, and whether the working tree differed from it.
    GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    git diff --quiet HEAD -- broker storage protocol router perf Cargo.lock 2>/dev/null \
        || GIT_REV="$GIT_REV (with uncommitted changes)"
}

# ---------------------------------------------------------------- RabbitMQ
ensure_rabbitmq() {
    if [ ! -x "$RABBITMQ_SERVER_SCRIPT" ]; then
        local found
        found=$(ls -d /usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server 2>/dev/null | sort -V | tail -n1 || true)
        [ -n "$found" ] && RABBITMQ_SERVER_SCRIPT=$found
    fi
    if [ -x "$RABBITMQ_SERVER_SCRIPT" ]; then
        return 0
    fi
    log "rabbitmq-server is not installed: installing the Debian package"
    command -v apt-get >/dev/null 2>&1 || die "rabbitmq-server missing and no apt-get to install it"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "need root or sudo to install rabbitmq-server"
        sudo="sudo"
    fi
    if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server; then
        log "install failed: running apt-get update and retrying"
        $sudo apt-get update
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server
    fi
    # The package's postinst may have started the system service (port 5672); we leave it
    # alone: our node uses its own ports, node name and directories.
    RABBITMQ_SERVER_SCRIPT=/usr/lib/rabbitmq/bin/rabbitmq-server
    if [ ! -x "$RABBITMQ_SERVER_SCRIPT" ]; then
        RABBITMQ_SERVER_SCRIPT=$(ls -d /usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server | sort -V | tail -n1)
    fi
    [ -x "$RABBITMQ_SERVER_SCRIPT" ] || die "rabbitmq-server installed but its start script was not found"
}

rabbit_version() {
    ls -d /usr/lib/rabbitmq/lib/rabbitmq_server-* 2>/dev/null | sed 's/.*rabbitmq_server-//' | sort -V | tail -n1
}

epmd_start() {
    [ -n "$EPMD_PID" ] && kill -0 "$EPMD_PID" 2>/dev/null && return 0
    local epmd
    epmd=$(command -v epmd || ls /usr/lib/erlang/erts-*/bin/epmd 2>/dev/null | tail -n1)
    [ -n "$epmd" ] || die "epmd (Erlang) not found"
    port_in_use "$EPMD_PORT" && die "EPMD_PORT $EPMD_PORT is in use (set EPMD_PORT)"
    "$epmd" -port "$EPMD_PORT" -address 127.0.0.1 >"$TMP/epmd.log" 2>&1 &
    EPMD_PID=$!
    local i
    for i in $(seq 100); do port_in_use "$EPMD_PORT" && return 0; sleep 0.05; done
    die "epmd did not start (see $TMP/epmd.log)"
}

# rabbit_start [fresh]: start our private node; with "fresh" wipe its data first.
# We run the Erlang-level script (not the Debian wrapper /usr/sbin/rabbitmq-server, which
# cds to /var/lib/rabbitmq and su's to the rabbitmq user when run as root): every file the
# node touches is under $TMP/rabbit, owned by whoever runs this script.
rabbit_start() {
    local d="$TMP/rabbit"
    if [ "${1:-}" = fresh ]; then rm -rf "$d"; fi
    mkdir -p "$d/mnesia" "$d/log" "$d/home"
    port_in_use "$RABBIT_PORT" && die "RABBIT_PORT $RABBIT_PORT is in use (set RABBIT_PORT)"
    port_in_use "$RABBIT_DIST_PORT" && die "RABBIT_DIST_PORT $RABBIT_DIST_PORT is in use (set RABBIT_DIST_PORT)"
    epmd_start
    cat >"$d/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$RABBIT_PORT
loopback_users.guest = true
$RABBIT_EXTRA_CONF
EOF
    echo '[].' >"$d/enabled_plugins"
    echo '[].' >"$d/advanced.config"
    : >"$d/rabbitmq-env.conf"
    rabbit_start_bg
    local i
    for i in $(seq 600); do
        if [ -z "$RABBIT_BEAM_PID" ]; then
            RABBIT_BEAM_PID=$(pgrep -P "$RABBIT_WRAPPER_PID" -x beam.smp || true)
        fi
        if [ -n "$RABBIT_BEAM_PID" ] && $PROBE --port "$RABBIT_PORT" --timeout 0.2 >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$RABBIT_WRAPPER_PID" 2>/dev/null || break
        sleep 0.2
    done
    tail -n 30 "$d/stdout.log" >&2 || true
    die "RabbitMQ did not come up on port $RABBIT_PORT (logs in $d/log)"
}

rabbit_stop() {
    local sig=${1:-TERM}
    if [ -n "$RABBIT_BEAM_PID" ]; then
        if [ "$sig" = KILL ]; then
            kill -KILL "$RABBIT_BEAM_PID" 2>/dev/null || true
        else
            # The wrapper traps TERM and stops the VM gracefully; TERM to beam.smp does too.
            kill -TERM "$RABBIT_WRAPPER_PID" 2>/dev/null || kill -TERM "$RABBIT_BEAM_PID" 2>/dev/null || true
        fi
        if ! wait_gone "$RABBIT_BEAM_PID" 120; then
            log "RabbitMQ did not stop in 120 s: kill -9"
            kill -KILL "$RABBIT_BEAM_PID" 2>/dev/null || true
            wait_gone "$RABBIT_BEAM_PID" 10 || true
        fi
    fi
    if [ -n "$RABBIT_WRAPPER_PID" ]; then
        kill -TERM "$RABBIT_WRAPPER_PID" 2>/dev/null || true
        wait_gone "$RABBIT_WRAPPER_PID" 10 || kill -KILL "$RABBIT_WRAPPER_PID" 2>/dev/null || true
    fi
    RABBIT_BEAM_PID=""
    RABBIT_WRAPPER_PID=""
}

# ---------------------------------------------------------------- Mailroom
# mailroom_start [fresh]: start on $TMP/mailroom-data (wiped first with "fresh").
# Sets MAILROOM_EXEC_NS to the wall-clock time just before the exec.
mailroom_start() {
    local d="$TMP/mailroom-data"
    if [ "${1:-}" = fresh ]; then rm -rf "$d"; fi
    mkdir -p "$d"
    port_in_use "$MAILROOM_PORT" && die "MAILROOM_PORT $MAILROOM_PORT is in use (set MAILROOM_PORT)"
    MAILROOM_EXEC_NS=$(now_ns)
    "$MAILROOM_BIN" --listen "127.0.0.1:$MAILROOM_PORT" --data-dir "$d" --log-level warn \
        ${MAILROOM_EXTRA_ARGS[@]+"${MAILROOM_EXTRA_ARGS[@]}"} \
        >>"$TMP/mailroom.log" 2>&1 </dev/null &
    MAILROOM_PID=$!
}

mailroom_wait_ready() {
    $PROBE --port "$MAILROOM_PORT" --timeout "${1:-60}" >/dev/null \
        || { tail -n 30 "$TMP/mailroom.log" >&2; die "Mailroom did not come up on port $MAILROOM_PORT"; }
}

# mailroom_stop [TERM|KILL]
mailroom_stop() {
    local sig=${1:-TERM}
    [ -n "$MAILROOM_PID" ] || return 0
    kill "-$sig" "$MAILROOM_PID" 2>/dev/null || true
    if ! wait_gone "$MAILROOM_PID" 120; then
        log "Mailroom did not stop in 120 s: kill -9"
        kill -KILL "$MAILROOM_PID" 2>/dev/null || true
        wait_gone "$MAILROOM_PID" 10 || true
    fi
    MAILROOM_PID=""
}

broker_pid() { if [ "$1" = mailroom ]; then echo "$MAILROOM_PID"; else echo "$RABBIT_BEAM_PID"; fi; }
broker_port() { if [ "$1" = mailroom ]; then echo "$MAILROOM_PORT"; else echo "$RABBIT_PORT"; fi; }

# Restart a broker that died during a run (fresh data), so one crash does not end the run.
ensure_up() {
    local b=$1 pid
    pid=$(broker_pid "$b")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
        && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
        return 0
    fi
    log "$b is not running: restarting it with fresh data"
    echo "$(date -Is) $b was found dead and restarted" >>"$RESULTS_DIR/incidents.log"
    if [ "$b" = mailroom ]; then
        MAILROOM_PID=""
        mailroom_start fresh
        mailroom_wait_ready 60
    else
        rabbit_stop KILL
        rabbit_start fresh
    fi
}

uri() { echo "amqp://guest:guest@127.0.0.1:$(broker_port "$1")/%2f"; }

# Whether this Mailroom build has --memory-high-watermark (issue 11).
mailroom_has_watermark() { "$MAILROOM_BIN" --help 2>/dev/null | grep -q -- '--memory-high-watermark'; }

# broker_restart BROKER [WATERMARK]: restart with fresh data, with a memory high watermark
# (F2) or with the default configuration (no argument). Sets WATERMARK_USED.
broker_restart() {
    local b=$1 wm=${2:-}
    WATERMARK_USED="default"
    if [ "$b" = mailroom ]; then
        mailroom_stop
        MAILROOM_EXTRA_ARGS=()
        if [ -n "$wm" ]; then
            if mailroom_has_watermark; then
                MAILROOM_EXTRA_ARGS=(--memory-high-watermark "$wm")
                WATERMARK_USED="$wm"
            else
                WATERMARK_USED="none: this build has no --memory-high-watermark"
            fi
        fi
        mailroom_start fresh
        mailroom_wait_ready 60
    else
        rabbit_stop
        RABBIT_EXTRA_CONF=""
        if [ -n "$wm" ]; then
            RABBIT_EXTRA_CONF="vm_memory_high_watermark.absolute = $wm"
            WATERMARK_USED="$wm"
        fi
        rabbit_start fresh
    fi
}

# ---------------------------------------------------------------- scenario runs
# Waits (at most QUIET_MAX seconds) until both brokers are idle: under 5 % of a core each over half a
# second. A broker still busy after its own run (RabbitMQ's runtime collecting the garbage of a long
# backlog, Mailroom deleting queues) would otherwise share the cores with the next run of the other.
# Sets QUIET_WAITED to the seconds waited.
quiesce() {
    local t0 b pid c0 c1 busy
    t0=$(now_ns)
    while :; do
        busy=0
        for b in mailroom rabbitmq; do
            pid=$(broker_pid "$b")
            [ -n "$pid" ] || continue
            c0=$(cpu_s "$pid")
            sleep 0.5
            c1=$(cpu_s "$pid")
            if awk -v a="$c0" -v b="$c1" 'BEGIN{exit !(b - a > 0.025)}'; then busy=1; fi
        done
        [ "$busy" = 0 ] && break
        [ $(( ($(now_ns) - t0) / 1000000000 )) -ge "$QUIET_MAX" ] && break
    done
    QUIET_WAITED=$(awk -v a="$t0" -v b="$(now_ns)" 'BEGIN{printf "%.1f", (b-a)/1e9}')
}

# run_scenario BROKER SCENARIO REP
run_scenario() {
    local b=$1 s=$2 rep=$3 pid args limit
    WATERMARK_USED="default"
    if [ "$s" = F2 ] && [ -n "$FLOW_WATERMARK" ]; then
        broker_restart "$b" "$FLOW_WATERMARK"
    fi
    ensure_up "$b"
    pid=$(broker_pid "$b")
    local base="$RESULTS_DIR/runs/$s-$b-$rep"
    case "$s" in
        S6)
            args=(--count "$S6_COUNT")
            limit=$((S6_COUNT / 500 + 600))
            ;;
        F*)
            args=(--duration "$FLOW_DURATION")
            limit=${FLOW_DURATION%.*}
            limit=$((limit * 6 + 300))
            ;;
        L1M)
            # L1 paced by tokio's 1 ms timer (bursts of ~10 messages a write), as the tool did before
            # --pacing existed; L1 itself spaces messages evenly.
            args=(--duration "$DURATION" --pacing ms)
            limit=$((DURATION * 4 + 300))
            ;;
        *)
            args=(--duration "$DURATION")
            limit=$((DURATION * 4 + 300))
            ;;
    esac
    local preset=$s
    [ "$s" = L1M ] && preset=L1
    # The tool watches the broker: peak RSS (every 100 ms) and CPU per message.
    local watch=(--broker-pid "$pid")
    if [ -n "$MAX_BROKER_RSS" ] && [ "$MAX_BROKER_RSS" != 0 ]; then
        watch+=(--max-broker-rss "$MAX_BROKER_RSS")
    fi
    local load cpu0 cpu1 t0 t1 rc=0 other paused=false
    quiesce
    if [ "$PAUSE_OTHER" = 1 ]; then
        # The broker not under test is stopped (SIGSTOP) for the run and resumed after it, so that its
        # idle wake-ups (an Erlang VM's timers and schedulers) do not share the cores with the run.
        other=$(broker_pid "$([ "$b" = mailroom ] && echo rabbitmq || echo mailroom)")
        if [ -n "$other" ] && kill -STOP "$other" 2>/dev/null; then PAUSED_PID=$other paused=true; fi
    fi
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    cpu0=$(cpu_s "$pid")
    t0=$(now_ns)
    fg_run timeout --signal=INT --kill-after=30 "$limit" \
        "$PERF_BIN" --uri "$(uri "$b")" --scenario "$preset" "${args[@]}" "${watch[@]}" --json --quiet \
        >"$base.json" 2>"$base.stderr" </dev/null || rc=$?
    t1=$(now_ns)
    cpu1=$(cpu_s "$pid")
    if [ -n "$PAUSED_PID" ]; then
        kill -CONT "$PAUSED_PID" 2>/dev/null
        PAUSED_PID=""
    fi
    printf '{"broker":"%s","scenario":"%s","rep":%s,"rc":%s,"loadavg_before":"%s","quiet_wait_s":%s,"other_paused":%s,"broker_cpu_s":%s,"wall_s":%s,"watermark":"%s","command":"mailroom-perf --scenario %s %s --json --quiet"}\n' \
        "$b" "$s" "$rep" "$rc" "$load" "$QUIET_WAITED" "$paused" \
        "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{printf "%.2f", b-a}')" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", (b-a)/1e9}')" \
        "$WATERMARK_USED" "$preset" "${args[*]} --broker-pid PID${MAX_BROKER_RSS:+ --max-broker-rss $MAX_BROKER_RSS}" \
        >"$base.meta.json"
    local summary
    summary=$($PYTHON - "$base.json" <<'EOF' 2>/dev/null || echo "no JSON report"
import json, sys
r = json.load(open(sys.argv[1]))
b = r.get("broker") or {}
print("pub %.0f/s, cons while publishing %.0f/s (overall %.0f/s), backlog at end of publishing %s, p50 %s us p99 %s us, peak RSS %.0f MiB, blocked %s s, lost %s dup %s ok %s" % (
    r.get("publish_rate", 0), r.get("consume_rate_publishing", 0), r.get("consume_rate", 0),
    r.get("backlog_publish_end"), r["latency_us"]["p50"], r["latency_us"]["p99"],
    (b.get("rss_peak_kb") or 0) / 1024, r.get("blocked_s"), r.get("lost"), r.get("duplicated"), r.get("ok")))
EOF
)
    log "$s $b #$rep: rc $rc, $summary (started after ${QUIET_WAITED} s waiting for idle brokers)"
    if [ "$s" = F2 ] && [ -n "$FLOW_WATERMARK" ]; then
        broker_restart "$b"
    fi
}

# ---------------------------------------------------------------- M1 and recovery
# m1_fill BROKER: fill a durable queue with M1_COUNT persistent 1 KiB messages (confirms),
# RSS before/after into $RESULTS_DIR/m1-BROKER.json
m1_fill() {
    # Two halves: the RSS growth over the second half, per message, is the cost per queued message beyond
    # the fixed part (buffers, the in-memory head of the queue) that the first messages bring.
    local b=$1 pid rss0 rssmid rss1 rss2 rc=0 rc2=0 t0 t1 half
    half=$((M1_COUNT / 2))
    pid=$(broker_pid "$b")
    sleep 3
    rss0=$(rss_kb "$pid")
    log "M1 $b: baseline RSS $rss0 kB; publishing $M1_COUNT x 1 KiB persistent messages in two halves"
    t0=$(now_ns)
    fg_run timeout --signal=INT --kill-after=30 $((half / 200 + 600)) \
        "$PERF_BIN" --uri "$(uri "$b")" -x 1 -y 0 --persistent --durable -s 1024 -c 100 \
        --count "$half" -e "" --queues 1 --queue-prefix mailroom-m1- --no-cleanup \
        --json --quiet >"$RESULTS_DIR/m1-$b-fill.json" 2>"$RESULTS_DIR/m1-$b-fill.stderr" </dev/null || rc=$?
    sleep 5
    rssmid=$(rss_kb "$pid")
    fg_run timeout --signal=INT --kill-after=30 $(((M1_COUNT - half) / 200 + 600)) \
        "$PERF_BIN" --uri "$(uri "$b")" -x 1 -y 0 --persistent --durable -s 1024 -c 100 \
        --count "$((M1_COUNT - half))" -e "" --queues 1 --queue-prefix mailroom-m1- --no-cleanup --no-purge \
        --json --quiet >"$RESULTS_DIR/m1-$b-fill2.json" 2>"$RESULTS_DIR/m1-$b-fill2.stderr" </dev/null || rc2=$?
    [ "$rc" = 0 ] && rc=$rc2
    t1=$(now_ns)
    rss1=$(rss_kb "$pid")
    sleep 10
    rss2=$(rss_kb "$pid")
    local count
    count=$($PROBE --port "$(broker_port "$b")" --queue mailroom-m1-0 --timeout 30 2>/dev/null \
        | $PYTHON -c 'import json,sys; print(json.load(sys.stdin).get("message_count", -1))' || echo -1)
    log "M1 $b: fill rc $rc, RSS after half $rssmid kB, right after $rss1 kB, 10 s later $rss2 kB, queue holds $count"
    printf '{"broker":"%s","count":%s,"half":%s,"fill_rc":%s,"fill_s":%s,"rss_before_kb":%s,"rss_mid_kb":%s,"rss_after_kb":%s,"rss_after_10s_kb":%s,"queued":%s}\n' \
        "$b" "$M1_COUNT" "$half" "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", (b-a)/1e9}')" \
        "$rss0" "$rssmid" "$rss1" "$rss2" "$count" >"$RESULTS_DIR/m1-$b.json"
}

# recovery BROKER HOW(TERM|KILL): stop the broker, restart it on the same data, and time
# exec -> AMQP handshake, passive declare (count), first delivery to a consumer.
recovery() {
    local b=$1 how=$2 t_exec stop0 stop1 out pid
    log "recovery $b after $how: stopping"
    stop0=$(now_ns)
    if [ "$b" = mailroom ]; then mailroom_stop "$how"; else rabbit_stop "$how"; fi
    stop1=$(now_ns)
    # Start the probe first (Python's start-up must not count), let it poll the closed
    # port every 2 ms, then exec the broker.
    local probe_out="$RESULTS_DIR/recovery-$b-$how.probe"
    $PROBE --port "$(broker_port "$b")" --queue mailroom-m1-0 --consume --timeout 900 \
        --interval-ms 2 >"$probe_out" 2>&1 &
    local probe_pid=$!
    sleep 0.5
    if [ "$b" = mailroom ]; then
        mailroom_start
        t_exec=$MAILROOM_EXEC_NS
    else
        t_exec=$(now_ns)
        rabbit_start_bg
    fi
    CHILD_PID=$probe_pid
    wait "$probe_pid" || true
    CHILD_PID=""
    out=$(tail -n 1 "$probe_out")
    pid=$(broker_pid "$b")
    [ "$b" = rabbitmq ] && rabbit_find_beam && pid=$RABBIT_BEAM_PID
    local rss
    rss=$(rss_kb "$pid")
    $PYTHON - "$b" "$how" "$t_exec" "$stop0" "$stop1" "$rss" "$out" >"$RESULTS_DIR/recovery-$b-$how.json" <<'EOF'
import json, sys
b, how, t_exec, stop0, stop1, rss, out = sys.argv[1:8]
t_exec, stop0, stop1 = int(t_exec), int(stop0), int(stop1)
try:
    p = json.loads(out)
except Exception:
    p = {"ok": False, "error": "probe printed no JSON"}
ms = lambda k: round((p[k] - t_exec) / 1e6, 1) if k in p else None
print(json.dumps({
    "broker": b, "stop": how, "ok": p.get("ok", False), "stop_ms": round((stop1 - stop0) / 1e6, 1),
    "connect_ms": ms("connected_ns"), "declare_ms": ms("declared_ns"),
    "first_delivery_ms": ms("first_delivery_ns"), "message_count": p.get("message_count"),
    "rss_after_recovery_kb": int(rss), "error": p.get("error")}))
EOF
    log "recovery $b after $how: $(cat "$RESULTS_DIR/recovery-$b-$how.json")"
}

# Start our node (directories and config already in $TMP/rabbit) and return right after
# the exec; rabbit_start waits for the AMQP handshake, the recovery probe polls itself.
rabbit_start_bg() {
    local d="$TMP/rabbit"
    (
        cd "$d"
        exec env HOME="$d/home" \
            RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf" \
            RABBITMQ_NODENAME="$RABBIT_NODENAME" \
            RABBITMQ_USE_LONGNAME=false \
            RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
            RABBITMQ_NODE_PORT="$RABBIT_PORT" \
            RABBITMQ_DIST_PORT="$RABBIT_DIST_PORT" \
            RABBITMQ_MNESIA_BASE="$d/mnesia" \
            RABBITMQ_LOG_BASE="$d/log" \
            RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
            RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
            RABBITMQ_PID_FILE="$d/rabbit.pid" \
            ERL_EPMD_PORT="$EPMD_PORT" \
            "$RABBITMQ_SERVER_SCRIPT" >>"$d/stdout.log" 2>&1 </dev/null
    ) &
    RABBIT_WRAPPER_PID=$!
    RABBIT_BEAM_PID=""
}

rabbit_find_beam() {
    local i
    for i in $(seq 50); do
        RABBIT_BEAM_PID=$(pgrep -P "$RABBIT_WRAPPER_PID" -x beam.smp || true)
        [ -n "$RABBIT_BEAM_PID" ] && return 0
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------- main
main() {
    command -v "$PYTHON" >/dev/null || die "$PYTHON is needed (report and probe)"
    build
    ensure_rabbitmq
    mkdir -p "$RESULTS_DIR/runs"
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-compare.XXXXXX")
    log "results in $RESULTS_DIR, temp dir $TMP"
    local started_at
    started_at=$(date -Is)

    mailroom_start fresh
    mailroom_wait_ready 60
    rabbit_start fresh
    log "brokers up: mailroom pid $MAILROOM_PID port $MAILROOM_PORT; RabbitMQ $(rabbit_version) beam.smp pid $RABBIT_BEAM_PID port $RABBIT_PORT"

    local rep s b
    for rep in $(seq "$REPEAT"); do
        for s in $SCENARIOS; do
            for b in mailroom rabbitmq; do
                run_scenario "$b" "$s" "$rep"
            done
        done
    done

    if [ "$M1" = 1 ]; then
        # Fresh brokers for M1, one at a time, so the baseline is an idle, empty broker and
        # the other broker does not compete for memory or CPU during the fill.
        rabbit_stop
        mailroom_stop
        mailroom_start fresh
        mailroom_wait_ready 60
        m1_fill mailroom
        if [ "$RECOVERY" = 1 ]; then
            recovery mailroom TERM
            recovery mailroom KILL
        fi
        mailroom_stop
        rm -rf "$TMP/mailroom-data"
        rabbit_start fresh
        m1_fill rabbitmq
        if [ "$RABBIT_RECOVERY" = 1 ]; then
            recovery rabbitmq TERM
        fi
        rabbit_stop
        rm -rf "$TMP/rabbit/mnesia"
    fi

    local erl_release
    erl_release=$(erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().' 2>/dev/null || echo unknown)
    STARTED_AT=$started_at REPEAT=$REPEAT DURATION=$DURATION S6_COUNT=$S6_COUNT M1=$M1 \
        FLOW_DURATION=$FLOW_DURATION FLOW_WATERMARK=$FLOW_WATERMARK MAX_BROKER_RSS=$MAX_BROKER_RSS \
        M1_COUNT=$M1_COUNT SCENARIOS=$SCENARIOS RABBIT_VERSION=$(rabbit_version) \
        ERL_RELEASE=$erl_release GIT_REV=$GIT_REV ENV_OVERRIDES="${ENV_OVERRIDES% }" \
        BENCH_COMMAND="${BENCH_COMMAND:-make bench-compare}" \
        $PYTHON - >"$RESULTS_DIR/env.json" <<'EOF'
import json, os, datetime, platform
e = os.environ
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
mem_kb = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal:")), 0)
print(json.dumps({
    "nproc": len(os.sched_getaffinity(0)), "cpu_model": model, "mem_total_kb": mem_kb, "kernel": platform.release(),
    "loadavg_end": open("/proc/loadavg").read().split()[:3],
    "started_at": e["STARTED_AT"], "finished_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "repeat": int(e["REPEAT"]), "duration": float(e["DURATION"]), "s6_count": int(e["S6_COUNT"]),
    "flow_duration": float(e["FLOW_DURATION"]), "flow_watermark": e["FLOW_WATERMARK"],
    "max_broker_rss": e["MAX_BROKER_RSS"],
    "m1": e["M1"] == "1", "m1_count": int(e["M1_COUNT"]), "scenarios": e["SCENARIOS"].split(),
    "rabbitmq_version": e["RABBIT_VERSION"], "erlang_otp": e["ERL_RELEASE"], "git": e["GIT_REV"],
    "command": e["BENCH_COMMAND"], "env_overrides": e["ENV_OVERRIDES"]}, indent=1))
EOF
    log "raw results in $RESULTS_DIR"
    if [ "$UPDATE_DOC" = 1 ]; then
        $PYTHON "$ROOT/scripts/bench-report.py" "$RESULTS_DIR" "$DOC"
        log "updated $DOC"
    fi
}

# scripts/bench-stream.sh sources this file for its functions (BENCH_SOURCE_ONLY=1).
if [ "${BENCH_SOURCE_ONLY:-0}" != 1 ]; then
    main "$@"
fi
