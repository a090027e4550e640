#!/bin/bash
# Storage-pool benchmark (docs/benchmarks.md): produce throughput and
# latency with R=1 and with R=3,W=2 over local targets, then with injected
# S3-like latency (p50 20 ms, p99 80 ms per request) and what linger and
# in-flight chunk settings do to it. One broker, one controller, a real
# etcd; three runs of each.
#   cargo build --release -p floe -p floe-bench && scripts/bench-pool.sh
set -u
R=${R:-target/release}
N=${N:-300000}
RUNS=${RUNS:-3}
T=$(mktemp -d)
cleanup() { pkill -f "floe (broker|controller) --etcd http://127.0.0.1:24790" ; pkill -f "etcd --data-dir $T" ; sleep 1; }
trap 'cleanup; rm -rf "$T"' EXIT

run() { # name, broker toml lines, R, W, storage URLs...
  local name=$1 toml=$2 rep=$3 wq=$4; shift 4
  local dir; dir=$(mktemp -d -p "$T")
  etcd --data-dir "$dir/etcd" --listen-client-urls http://127.0.0.1:24790 \
    --advertise-client-urls http://127.0.0.1:24790 --listen-peer-urls http://127.0.0.1:24800 >"$dir/etcd.log" 2>&1 &
  sleep 1.5
  local args=(); for u in "$@"; do args+=(--storage "$u"); done
  $R/floe controller --etcd http://127.0.0.1:24790 "${args[@]}" --replicas "$rep" --write-quorum "$wq" \
    --http-listen 127.0.0.1:24801 >"$dir/controller.log" 2>&1 &
  printf '[broker]\n%b\n' "$toml" >"$dir/broker.toml"
  $R/floe broker --etcd http://127.0.0.1:24790 --id 1 --listen 127.0.0.1:24802 \
    --http-listen 127.0.0.1:24803 --config "$dir/broker.toml" >"$dir/broker.log" 2>&1 &
  sleep 2
  $R/floe-bench --bootstrap 127.0.0.1:24802 --topic warm produce --records 20000 >/dev/null 2>&1
  for i in $(seq 1 "$RUNS"); do
    echo -n "$name | throughput | "
    $R/floe-bench --bootstrap 127.0.0.1:24802 --topic tp$i produce --records "$N" --record-size 1024 \
      --acks all --batch-bytes 1048576 2>&1 | tail -1
  done
  local before; before=$(puts)
  for i in $(seq 1 "$RUNS"); do
    echo -n "$name | latency | "
    $R/floe-bench --bootstrap 127.0.0.1:24802 --topic lat$i produce --records 10000 --record-size 1024 \
      --rate 1000 --linger-ms 0 2>&1 | tail -1
  done
  echo "$name | chunk writes per record in the latency runs (each goes to R targets) | $(echo "scale=2; ($(puts) - $before) / ($RUNS * 10000)" | bc)"
  cleanup
  rm -rf "$T/a" "$T/b" "$T/c"
}

puts() { # chunk writes so far (each to every replica of its set)
  curl -s 127.0.0.1:24803/metrics | awk '/^floe_storage_op_duration_seconds_count\{op="put"\}/ {print $2}'
}

S3="floe_latency_p50_ms=20&floe_latency_p99_ms=80"
run "R=1 local" "" 1 1 "file://$T/a"
run "R=3,W=2 local" "" 3 2 "file://$T/a" "file://$T/b" "file://$T/c"
run "R=1 S3-like" "" 1 1 "file://$T/a?$S3"
run "R=3,W=2 S3-like" "" 3 2 "file://$T/a?$S3" "file://$T/b?$S3" "file://$T/c?$S3"
run "R=3,W=2 S3-like, 16 chunks in flight" "max_inflight_flushes = 16" 3 2 \
  "file://$T/a?$S3" "file://$T/b?$S3" "file://$T/c?$S3"
run "R=3,W=2 S3-like, linger 20 ms, no idle flush" "flush_when_idle = false\nchunk_linger_ms = 20" 3 2 \
  "file://$T/a?$S3" "file://$T/b?$S3" "file://$T/c?$S3"
