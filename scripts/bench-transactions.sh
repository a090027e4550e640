#!/usr/bin/env bash
# What transactions cost (docs/benchmarks.md, "Transactions"): one
# `floe standalone` on file storage (fsync off, as the other standalone
# figures), librdkafka producing 1 KiB records with acks=all to a
# new auto-created topic per run, interleaved run by run in one session:
#   idempotent   enable.idempotence=true, no transactions;
#   txn-100      transactions of 100 records (commit_transaction after each);
#   txn-1000     transactions of 1000 records;
#   txn-100-l0   transactions of 100 records with linger.ms=0 (a transaction
#                is bounded by its records' round trip: no linger in it).
# Reports throughput and, for transactions, the commit latency
# (commit_transaction: the last records' flush, EndTxn, markers durable).
#   cargo build --release -p floe -p floe-bench
#   RUNS=5 scripts/bench-transactions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FLOE=${FLOE:-target/release/floe}
BENCH=${BENCH:-target/release/floe-bench}
RUNS=${RUNS:-5}
N=${N:-200000}
PORT=29411 HTTP_PORT=29412
DIR=/tmp/floe-bench-transactions

pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

rm -rf "$DIR"
mkdir -p "$DIR"
"$FLOE" standalone --data-dir "$DIR/data" --listen "127.0.0.1:$PORT" \
  --http-listen "127.0.0.1:$HTTP_PORT" >"$DIR/floe.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null || { cat "$DIR/floe.log"; exit 1; }
B="--bootstrap 127.0.0.1:$PORT"

for run in $(seq 1 "$RUNS"); do
  for mode in idempotent txn-100 txn-1000 txn-100-l0; do
    topic="tx-$mode-$run"
    case $mode in
      idempotent) extra=() ;;
      txn-100) extra=(--transaction-records 100) ;;
      txn-1000) extra=(--transaction-records 1000) ;;
      txn-100-l0) extra=(--transaction-records 100 --linger-ms 0) ;;
    esac
    echo "run $run $mode: $("$BENCH" $B --topic "$topic" -X enable.idempotence=true \
      produce --records "$N" --record-size 1024 "${extra[@]}" | tr '\n' ' ')"
  done
done
