#!/usr/bin/env bash
# Instructions per message (issue 13): callgrind over the in-process alloc_per_message bench, case 1 (S1's
# shape) by default, at two message counts; the difference of the totals over the difference of the counts
# is the marginal cost of one message. Independent of machine load (docs/performance.md, "Hot path").
# Usage: scripts/instr-per-message.sh [label] [case]
set -euo pipefail
cd "$(dirname "$0")/.."
label=${1:-now}
case_n=${2:-1}
out=${RESULTS_DIR:-target/callgrind}
mkdir -p "$out"
cargo bench -q -p mailroom-broker --bench alloc_per_message --no-run 2>/dev/null
B=$(ls -t target/release/deps/alloc_per_message-* | grep -v '\.d$' | head -1)
for n in 20000 60000; do
    ALLOC_BENCH_CASES=$case_n ALLOC_BENCH_N=$n \
        valgrind --tool=callgrind --callgrind-out-file="$out/cg-$label-$n.out" "$B" >/dev/null 2>&1
done
total() { grep -m1 -E "^(summary|totals):" "$1" | awk '{print $2}'; }
# A sled thread spin-waits in sled::lazy::Lazy::deref while valgrind runs one thread at a time: its
# count (hundreds of millions in some runs, next to nothing in others) is taken out of both totals, or
# the raw difference swings by thousands of instructions per message between runs of the same tree.
spin() {
    callgrind_annotate --auto=no --threshold=100 "$1" 2>/dev/null |
        awk '/sled::lazy::Lazy/ {gsub(",", "", $1); s += $1} END {print s + 0}'
}
a=$(( $(total "$out/cg-$label-20000.out") - $(spin "$out/cg-$label-20000.out") ))
b=$(( $(total "$out/cg-$label-60000.out") - $(spin "$out/cg-$label-60000.out") ))
echo "$label: $(( (b - a) / 40000 )) instructions per message (case $case_n); profile: callgrind_annotate $out/cg-$label-60000.out"
