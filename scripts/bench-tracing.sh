#!/usr/bin/env bash
# What tracing costs (docs/benchmarks.md, "Tracing"): `floe standalone`
# (file storage in its data dir) with OpenTelemetry traces off, on at
# parent-based ratio 0.01 and at 1.0, exporting over OTLP/gRPC to a
# counting collector (`floe-bench otlp-sink`). One standalone per mode and
# run (the OTEL_* environment is read at start-up), modes interleaved run
# by run so all share the machine's state. Per run:
#  1. latency: RATE records/s of 1 KiB for SECS seconds with linger 0 (a
#     request or two per record: the per-request span cost at its worst),
#     p50/p99 of the send-to-ack time (first, so that no background work
#     of the throughput run, sealing gigabytes, falls into it);
#  2. throughput: N records of 1 KiB, acks=all, unthrottled;
# and the spans the collector received for the run.
#   cargo build --release -p floe -p floe-bench
#   RUNS=5 scripts/bench-tracing.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FLOE=${FLOE:-target/release/floe}
BENCH=${BENCH:-target/release/floe-bench}
RUNS=${RUNS:-5}
N=${N:-2000000}
RATE=${RATE:-5000}
SECS=${SECS:-10}
PORT=29511 HTTP_PORT=29512 OTLP_PORT=29513
DIR=/tmp/floe-bench-tracing

pid= sink=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  [ -n "$sink" ] && kill "$sink" 2>/dev/null || true
}
trap cleanup EXIT

rm -rf "$DIR"
mkdir -p "$DIR"
"$BENCH" otlp-sink --listen "127.0.0.1:$OTLP_PORT" --count-file "$DIR/spans" >"$DIR/sink.log" 2>&1 &
sink=$!

# start MODE: a fresh standalone with the mode's OTEL_* environment.
start() {
  local env=()
  case $1 in
    off) env=(OTEL_SDK_DISABLED=true) ;;
    ratio-*) env=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$OTLP_PORT"
      OTEL_TRACES_SAMPLER_ARG="${1#ratio-}") ;;
  esac
  rm -rf "$DIR/data"
  env "${env[@]}" "$FLOE" standalone --data-dir "$DIR/data" --listen "127.0.0.1:$PORT" \
    --http-listen "127.0.0.1:$HTTP_PORT" >"$DIR/floe-$1.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null || { cat "$DIR/floe-$1.log"; exit 1; }
}
stop() {
  kill "$pid" && wait "$pid" 2>/dev/null || true
  pid=
}
spans() { cat "$DIR/spans"; }

B="--bootstrap 127.0.0.1:$PORT"
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(nproc) cores; N=$N RATE=$RATE SECS=$SECS RUNS=$RUNS"
for run in $(seq 1 "$RUNS"); do
  for mode in off ratio-0.01 ratio-1.0; do
    start "$mode"
    before=$(spans)
    "$BENCH" $B --topic warm produce --records 20000 >/dev/null
    lat=$("$BENCH" $B --topic "lat" produce --records $((RATE * SECS)) --record-size 1024 \
      --rate "$RATE" --linger-ms 0 --warmup-ms 1000)
    tput=$("$BENCH" $B --topic "tput" produce --records "$N" --record-size 1024)
    stop
    sleep 1 # the last export of a stopped process
    echo "run $run $mode: $lat | $tput | spans $(($(spans) - before))"
  done
done
