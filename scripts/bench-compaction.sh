#!/usr/bin/env bash
# What compaction costs (docs/benchmarks.md, "Compaction"): one
# `floe standalone` (file storage, fsync off), librdkafka producing 1 KiB
# records over KEYS keys at RATE records/s to a one-partition topic with
# 1 MiB segments, interleaved run by run in one session:
#   delete    cleanup.policy=delete: nothing compacts;
#   compact   cleanup.policy=compact, min.cleanable.dirty.ratio=0.1: the
#             owner compacts sealed segments while the producer runs.
# Reports produce latency (p50/p99, the first 2 s of the producer left
# out: its start-up stall is not the broker's) per mode and, for compact, the
# compactor's input bytes and pass time from /metrics (MB/s of input per
# second of pass; a pass runs on one core, reads each input byte twice and
# is paced at PACE bytes/s of reads: the broker's default 64 MiB/s, 0 for
# none).
#   cargo build --release -p floe -p floe-bench
#   RUNS=3 scripts/bench-compaction.sh
#   RUNS=3 PACE=0 scripts/bench-compaction.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FLOE=${FLOE:-target/release/floe}
BENCH=${BENCH:-target/release/floe-bench}
RUNS=${RUNS:-3}
N=${N:-200000}
RATE=${RATE:-10000}
KEYS=${KEYS:-5000}
PACE=${PACE:-67108864}
PORT=29421 HTTP_PORT=29422
DIR=/tmp/floe-bench-compaction

pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

rm -rf "$DIR"
mkdir -p "$DIR"
printf '[broker]\nretention_check_interval_ms = 500\ncompaction_max_bytes_per_sec = %s\n' "$PACE" >"$DIR/floe.toml"
"$FLOE" standalone --config "$DIR/floe.toml" --data-dir "$DIR/data" --listen "127.0.0.1:$PORT" \
  --http-listen "127.0.0.1:$HTTP_PORT" >"$DIR/floe.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null || { cat "$DIR/floe.log"; exit 1; }
metric() { curl -s "127.0.0.1:$HTTP_PORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
for run in $(seq 1 "$RUNS"); do
  for mode in delete compact; do
    topic="cmp-$mode-$run"
    target/py-venv/bin/python - "127.0.0.1:$PORT" "$topic" "$mode" <<'PY'
import sys
from kafka.admin import KafkaAdminClient, NewTopic
a = KafkaAdminClient(bootstrap_servers=sys.argv[1])
configs = {"cleanup.policy": sys.argv[3], "segment.bytes": "1048576"}
if sys.argv[3] == "compact":
    configs["min.cleanable.dirty.ratio"] = "0.1"
a.create_topics([NewTopic(sys.argv[2], 1, 1, topic_configs=configs)])
PY
    # Its partition started before the clock runs (the first records would
    # otherwise wait for it and make the p99).
    "$BENCH" --bootstrap "127.0.0.1:$PORT" --topic "$topic" produce --records 10 --keys 10 >/dev/null
    b0=$(metric floe_compaction_input_bytes_total); s0=$(metric floe_compaction_seconds_total)
    out=$("$BENCH" --bootstrap "127.0.0.1:$PORT" --topic "$topic" -X enable.idempotence=true \
      produce --records "$N" --record-size 1024 --rate "$RATE" --keys "$KEYS" --warmup-ms 2000)
    sleep 3
    b1=$(metric floe_compaction_input_bytes_total); s1=$(metric floe_compaction_seconds_total)
    dropped=$(metric floe_compaction_dropped_records_total)
    echo "run $run $mode: $out; compaction input $(awk -v a="${b0:-0}" -v b="${b1:-0}" 'BEGIN{printf "%.1f", (b-a)/1e6}') MB in $(awk -v a="${s0:-0}" -v b="${s1:-0}" 'BEGIN{printf "%.2f", b-a}') s of passes (records dropped so far: ${dropped:-0})"
  done
done
