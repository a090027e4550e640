#!/usr/bin/env bash
# CPU a `floe standalone` process spends on fixed workloads, two builds side
# by side (docs/benchmarks.md, "One Kafka edge"): utime + stime of the
# server process (/proc/<pid>/stat, 10 ms ticks) around a latency run
# (20,000 records at 2,000/s), a throughput run (300,000 records of 1 KiB)
# and reading those records back, on memory:// so the disk does not count.
#   cargo build --release -p floe -p floe-bench
#   OLD=/path/to/old/floe NEW=target/release/floe RUNS=4 scripts/bench-cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NEW=${NEW:-target/release/floe}
OLD=${OLD:?set OLD to the floe binary to compare with}
BENCH=${BENCH:-target/release/floe-bench}
RUNS=${RUNS:-4}
rm -rf /tmp/bc-old /tmp/bc-new
"$OLD" standalone --data-dir /tmp/bc-old --storage memory:// --listen 127.0.0.1:29492 \
  --http-listen 127.0.0.1:30044 >/tmp/bc-old.log 2>&1 &
PO=$!
"$NEW" standalone --data-dir /tmp/bc-new --storage memory:// --listen 127.0.0.1:29493 \
  --http-listen 127.0.0.1:30045 >/tmp/bc-new.log 2>&1 &
PN=$!
trap 'kill $PO $PN 2>/dev/null || true' EXIT
sleep 2
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
for port in 29492 29493; do
  "$BENCH" --bootstrap "127.0.0.1:$port" --topic warm produce --records 20000 >/dev/null 2>&1
done
for i in $(seq 1 "$RUNS"); do
  for x in "old $PO 29492" "new $PN 29493"; do
    set -- $x
    a=$(cpu "$2")
    "$BENCH" --bootstrap "127.0.0.1:$3" --topic "lat$i" produce --records 20000 --record-size 1024 \
      --rate 2000 --linger-ms 0 >/dev/null 2>&1
    b=$(cpu "$2")
    "$BENCH" --bootstrap "127.0.0.1:$3" --topic "thr$i" produce --records 300000 --record-size 1024 \
      --acks all >/dev/null 2>&1
    c=$(cpu "$2")
    "$BENCH" --bootstrap "127.0.0.1:$3" --topic "thr$i" consume --records 300000 >/dev/null 2>&1
    d=$(cpu "$2")
    echo "$1 latency-run-cpu-ticks $((b - a)) produce-300k-cpu-ticks $((c - b)) consume-300k-cpu-ticks $((d - c))"
  done
done
