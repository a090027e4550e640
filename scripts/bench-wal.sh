#!/usr/bin/env bash
# Object-store cost (docs/benchmarks.md, "Shared WAL objects"; issue 24):
# one broker, one controller and a real etcd over three storage targets
# with S3-like latency (fault-injecting store: p50 20 ms, p99 100 ms per
# request), R=3 W=2. The same total produce rate (RATE records/s of 1 KiB,
# acks=all, keyed so that they spread over every partition) into topics
# of 1, 100 and 1,000 partitions, once with chunk_layout = "wal" and once
# with "partition". Per run: PUT requests per second and per GB ingested
# (floe_storage_requests_total{op="put"} on the broker, every replica's
# PUT counted), GETs, the producer's latency and the broker's RSS at the end.
#   cargo build --release -p floe -p floe-bench
#   RUNS=3 scripts/bench-wal.sh
# PUTs per GB once objects fill (issue 24's ~130 x R): a rate above
# wal_bytes per linger, e.g. 16 KiB records at 6,000/s (98 MB/s):
#   RUNS=3 RATE=6000 RECORD=16384 PARTITIONS="1 100" LAYOUTS=wal scripts/bench-wal.sh
# BROKER_TOML adds broker settings (e.g. BROKER_TOML='wal_max_age_ms = 30000\n'
# seals every partition's segment within a 60 s run: consolidation's
# steady-state cost, scaled down in time). CLIENT_INFLIGHT and
# BROKER_INFLIGHT change the requests in flight per connection.
# CLIENT=packed produces with floe-bench's packed-produce instead of
# librdkafka: one Produce request per 5-ms linger carrying every
# partition's records, as Kafka's Java producer packs a broker's
# partitions (librdkafka sends one partition per request,
# confluentinc/librdkafka#1700), so the latency at 1,000 partitions is the
# broker's and not the client's queue.
# PUT-class requests are counted apart: single PUTs (WAL objects, chunks)
# and every request of the segment seals' multipart uploads (start, each
# part, completion), all billed alike by an object store.
set -euo pipefail
cd "$(dirname "$0")/.."
FLOE=${FLOE:-target/release/floe}
BENCH=${BENCH:-target/release/floe-bench}
RUNS=${RUNS:-3}
RATE=${RATE:-20000}
RECORD=${RECORD:-1024}
SECS=${SECS:-20}
PARTITIONS=${PARTITIONS:-"1 100 1000"}
LAYOUTS=${LAYOUTS:-"wal partition"}
LINGER=${LINGER:-100}
S3="floe_latency_p50_ms=20&floe_latency_p99_ms=100"
ETCD=127.0.0.1:24890 BROKER=127.0.0.1:24902 BHTTP=127.0.0.1:24903
T=$(mktemp -d /tmp/floe-bench-wal.XXXX)
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop_all; [ -n "${KEEP:-}" ] || rm -rf "$T"' EXIT

# counter OP: the broker's requests of kind OP to all targets so far.
counter() {
  curl -s "http://$BHTTP/metrics" |
    awk -v op="$1" '$1 ~ /^floe_storage_requests_total\{/ && $1 ~ ("op=\"" op "\"") {s += $2} END {print s + 0}'
}

# sealed: segments the broker sealed so far (each is R segment PUTs).
sealed() {
  curl -s "http://$BHTTP/metrics" | awk '$1 == "floe_segments_sealed_total" {s += $2} END {print s + 0}'
}

# produce_buckets: the broker's Produce latency histogram, "le count" lines.
produce_buckets() {
  curl -s "http://$BHTTP/metrics" |
    awk '$1 ~ /^floe_kafka_request_duration_seconds_bucket\{/ && $1 ~ /api="Produce"/ {
      match($1, /le="[^"]*"/); print substr($1, RSTART + 4, RLENGTH - 5), $2 }'
}

# quantiles BEFORE AFTER: the broker-side Produce p50 and p99 of the
# requests between two bucket snapshots, as the bucket bounds they lie
# under (exact, if coarse: the buckets double).
quantiles() {
  join <(echo "$1" | sort -k1,1) <(echo "$2" | sort -k1,1) | sort -g -k1,1 |
    awk '{ le[NR] = $1; c[NR] = $3 - $2 } END {
      n = c[NR]; out = ""
      for (qi = 1; qi <= 2; qi++) {
        q = (qi == 1 ? 0.5 : 0.99) * n
        for (i = 1; i <= NR && c[i] < q; i++) {}
        out = out sprintf("%s <= %.1f", (qi == 1 ? "p50" : ", p99"), le[i] * 1000)
      }
      printf "broker Produce ms %s (%d requests)", out, n }'
}

start() { # LAYOUT
  local dir=$T/$1
  rm -rf "$dir"
  mkdir -p "$dir"
  etcd --data-dir "$dir/etcd" --listen-client-urls "http://$ETCD" --advertise-client-urls "http://$ETCD" \
    --listen-peer-urls http://127.0.0.1:24891 >"$dir/etcd.log" 2>&1 &
  pids+=($!)
  sleep 1.5
  "$FLOE" controller --etcd "http://$ETCD" --replicas 3 --write-quorum 2 \
    --storage "file://$dir/a?$S3" --storage "file://$dir/b?$S3" --storage "file://$dir/c?$S3" \
    --http-listen 127.0.0.1:24901 --admin-listen 127.0.0.1:24904 >"$dir/controller.log" 2>&1 &
  pids+=($!)
  printf '[broker]\nchunk_layout = "%s"\nwal_linger_ms = %s\nmax_inflight_per_connection = %s\n' "$1" "$LINGER" "${BROKER_INFLIGHT:-2048}" >"$dir/broker.toml"
  printf '%b' "${BROKER_TOML:-}" >>"$dir/broker.toml"
  "$FLOE" broker --etcd "http://$ETCD" --id 1 --listen "$BROKER" --http-listen "$BHTTP" \
    --config "$dir/broker.toml" >"$dir/broker.log" 2>&1 &
  pids+=($!)
  BROKER_PID=$!
  for _ in $(seq 1 100); do
    curl -sf "http://$BHTTP/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  "$BENCH" --bootstrap "$BROKER" --topic warm produce --records 20000 >/dev/null
}

echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(nproc) cores; client ${CLIENT:-librdkafka}; RATE=$RATE records/s of RECORD=$RECORD bytes for SECS=$SECS; R=3 W=2; store p50 20 ms p99 100 ms; wal_linger_ms=$LINGER; RUNS=$RUNS"
# A fresh cluster per layout, run and partition count: every run starts
# with the same empty pool and cache, and the disk holds one run's data.
for run in $(seq 1 "$RUNS"); do
  for layout in $LAYOUTS; do
    for p in $PARTITIONS; do
      start "$layout"
      topic="t$p-$run"
      "$BENCH" --bootstrap "$BROKER" --topic "$topic" produce --records 1 --create-partitions "$p" >/dev/null
      sleep 1
      puts=$(counter put) gets=$(counter get) seals=$(sealed) t0=$(date +%s.%N)
      mp=$(($(counter multipart) + $(counter part) + $(counter complete)))
      hist0=$(produce_buckets)
      # librdkafka sends one partition per produce request
      # (confluentinc/librdkafka#1700; Java's producer packs a broker's
      # partitions into one): with many partitions, requests in flight
      # bound how often each partition can send while requests wait for
      # their WAL object, so the client and the broker allow many.
      if [ "${CLIENT:-librdkafka}" = packed ]; then
        out=$("$BENCH" --bootstrap "$BROKER" --topic "$topic" packed-produce --records $((RATE * SECS)) \
          --record-size "$RECORD" --rate "$RATE" --partitions "$p" --warmup-ms 1000 \
          --max-in-flight "${CLIENT_INFLIGHT:-100}")
      else
        out=$("$BENCH" --bootstrap "$BROKER" --topic "$topic" -X max.in.flight.requests.per.connection=${CLIENT_INFLIGHT:-1000} \
          produce --records $((RATE * SECS)) \
          --record-size "$RECORD" --rate "$RATE" --keys 100000 --warmup-ms 1000)
      fi
      t1=$(date +%s.%N)
      dputs=$(($(counter put) - puts)) dgets=$(($(counter get) - gets)) dseals=$(($(sealed) - seals))
      dmp=$(($(counter multipart) + $(counter part) + $(counter complete) - mp))
      broker_latency=$(quantiles "$hist0" "$(produce_buckets)")
      rss_mb=$(awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$BROKER_PID/status")
      secs=$(echo "$t1 - $t0" | bc -l)
      gb=$(echo "$RATE * $SECS * $RECORD / 1000000000" | bc -l)
      all=$((dputs + dmp))
      printf '%s partitions=%s run=%s: PUTs %d (%.1f/s, %.0f per GB), segments sealed %d (%d upload requests), all PUT-class %d (%.1f/s, %.0f per GB), GETs %d | %s | %s, broker RSS %s MB\n' \
        "$layout" "$p" "$run" "$dputs" "$(echo "$dputs / $secs" | bc -l)" "$(echo "$dputs / $gb" | bc -l)" \
        "$dseals" "$dmp" "$all" "$(echo "$all / $secs" | bc -l)" "$(echo "$all / $gb" | bc -l)" "$dgets" "$out" "$broker_latency" "$rss_mb"
      stop_all
      rm -rf "${T:?}/$layout"
    done
  done
done
