#!/usr/bin/env bash
# `make fuzz`: runs every cargo-fuzz target (fuzz/fuzz_targets) for FUZZ_SECONDS each (default 600), one at a
# time, with AddressSanitizer and debug assertions (overflow checks), and prints executions, coverage and
# the outcome per target. Installs cargo-fuzz into .tools/ when missing and (re)writes the seed corpora into
# fuzz/corpus first. FUZZ_TARGETS="a b" runs only those. Logs: fuzz/logs/<target>.log; a crash, timeout or
# OOM leaves its input in fuzz/artifacts/<target>/ and makes this script exit non-zero.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${FUZZ_SECONDS:-600}
ALL="frame_stream method field_table properties content_assembly sasl arguments headers_match x_death"
TARGETS=${FUZZ_TARGETS:-$ALL}
CARGO=${CARGO:-cargo}
export PATH="$ROOT/.tools/bin:$PATH"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz into .tools/"
    $CARGO install cargo-fuzz --root "$ROOT/.tools" --locked || exit 1
fi
rustup run nightly rustc --version >/dev/null 2>&1 || { echo "the nightly toolchain is needed (rustup toolchain install nightly)"; exit 1; }

$CARGO run -q --manifest-path fuzz/Cargo.toml --no-default-features --bin gen-corpus || exit 1
mkdir -p fuzz/logs
echo "building the fuzz targets (nightly, AddressSanitizer, debug assertions)"
cargo +nightly fuzz build --fuzz-dir fuzz --debug-assertions >fuzz/logs/build.log 2>&1 || { tail -30 fuzz/logs/build.log; exit 1; }

summary=()
failed=0
for t in $TARGETS; do
    log=fuzz/logs/$t.log
    max_len=4096
    [ "$t" = frame_stream ] && max_len=32768
    echo "== $t: ${SECS}s (log: $log)"
    start=$(date +%s)
    cargo +nightly fuzz run --fuzz-dir fuzz --debug-assertions "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=$max_len \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    execs=$(grep -o 'stat::number_of_executed_units:[[:space:]]*[0-9]*' "$log" | tail -1 | awk '{print $2}')
    rate=$(grep -o 'stat::average_exec_per_sec:[[:space:]]*[0-9]*' "$log" | tail -1 | awk '{print $2}')
    rss=$(grep -o 'stat::peak_rss_mb:[[:space:]]*[0-9]*' "$log" | tail -1 | awk '{print $2}')
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(echo "$last" | grep -o 'cov: [0-9]*' | awk '{print $2}')
    ft=$(echo "$last" | grep -o 'ft: [0-9]*' | awk '{print $2}')
    corp=$(echo "$last" | grep -o 'corp: [0-9]*' | awk '{print $2}')
    if [ $rc -eq 0 ]; then
        outcome="clean"
    else
        failed=1
        outcome="FAILED (exit $rc): $(grep -E 'ERROR: libFuzzer|deadly signal|panicked at|Test unit written to' "$log" | head -3 | tr '\n' ' ')"
    fi
    line=$(printf '%-17s %6ss  execs %-11s (%s/s)  cov %-6s ft %-6s corpus %-6s peak RSS %s MB  %s' \
        "$t" "$took" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "${rss:-?}" "$outcome")
    echo "$line"
    summary+=("$line")
done

echo
echo "== make fuzz summary (FUZZ_SECONDS=$SECS, $(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD))"
printf '%s\n' "${summary[@]}"
exit $failed
