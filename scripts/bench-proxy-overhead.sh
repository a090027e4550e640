#!/usr/bin/env bash
# `floe standalone` through its proxy and straight to its broker, for two
# builds side by side (docs/benchmarks.md, "One Kafka edge"): throughput of
# produce (1 KiB records, acks=all) and of consume, and produce latency at
# 2,000 records/s, the builds interleaved run by run so that drift in the
# machine's load hits both alike. The broker of a standalone listens on a
# loopback port of its own (found with ss: the one of its ports that
# answers Kafka and is not the client listener).
#   cargo build --release -p floe -p floe-bench
#   OLD=/path/to/old/floe NEW=target/release/floe RUNS=5 scripts/bench-proxy-overhead.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NEW=${NEW:-target/release/floe}
OLD=${OLD:?set OLD to the floe binary to compare with}
BENCH=${BENCH:-target/release/floe-bench}
RUNS=${RUNS:-5}
N=${N:-500000}
STORAGE=${STORAGE:-memory://}   # "default": file storage in the data dir

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# start NAME BIN PORT HTTP: a standalone on PORT; prints its broker's port.
start() {
  local name=$1 bin=$2 port=$3 http=$4
  rm -rf "/tmp/bo-$name"
  local storage=(--storage "$STORAGE")
  [ "$STORAGE" = default ] && storage=()
  "$bin" standalone --data-dir "/tmp/bo-$name" "${storage[@]}" \
    --listen "127.0.0.1:$port" --http-listen "127.0.0.1:$http" >"/tmp/bo-$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 1 100); do
    curl -sf "127.0.0.1:$http/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  for p in $(ss -ltnpH | grep "pid=$pid," | awk '{print $4}' | sed 's/.*://' | sort -u); do
    [ "$p" = "$port" ] || [ "$p" = "$http" ] && continue
    if kcat -L -b "127.0.0.1:$p" -m 2 >/dev/null 2>&1; then
      echo "$p"
      return
    fi
  done
  echo "no broker port found for $name" >&2
  exit 1
}

old_broker=$(start old "$OLD" 29192 29744)
new_broker=$(start new "$NEW" 29193 29745)
echo "old: proxy 29192, broker $old_broker; new: proxy 29193, broker $new_broker"
for target in 29192 "$old_broker" 29193 "$new_broker"; do
  "$BENCH" --bootstrap "127.0.0.1:$target" --topic warm produce --records 20000 >/dev/null 2>&1
done

row() { # name target topic
  echo -n "$1 "
  "$BENCH" --bootstrap "127.0.0.1:$2" --topic "$3" produce --records "$N" --record-size 1024 \
    --acks all --batch-bytes 1048576 2>&1 | tail -1
}
for i in $(seq 1 "$RUNS"); do
  row old-proxy 29192 "p$i"
  row old-broker "$old_broker" "b$i"
  row new-proxy 29193 "p$i"
  row new-broker "$new_broker" "b$i"
  for t in "old-proxy 29192" "new-proxy 29193"; do
    set -- $t
    echo -n "$1 "
    "$BENCH" --bootstrap "127.0.0.1:$2" --topic "p$i" consume --records "$N" 2>&1 | tail -1
  done
done
for i in 1 2 3; do
  for t in "old-proxy 29192" "new-proxy 29193"; do
    set -- $t
    echo -n "$1 "
    "$BENCH" --bootstrap "127.0.0.1:$2" --topic "lat$i" produce --records 20000 --record-size 1024 \
      --rate 2000 --linger-ms 0 2>&1 | tail -1
  done
done
