#!/bin/bash
# Standalone throughput and latency benchmark (docs/benchmarks.md).
# Build first: cargo build --release -p floe -p floe-bench
# Interleaved runs against two servers, so drift in machine load hits both
# alike: port 29092 stores on the local filesystem, 29093 on memory://.
R=${R:-target/release}
pkill -f "floe standalone"; while pgrep -f "floe standalone" >/dev/null; do sleep 0.2; done
rm -rf /tmp/bfs /tmp/bmem
$R/floe standalone --data-dir /tmp/bfs --listen 127.0.0.1:29092 --http-listen 127.0.0.1:29644 > /tmp/bfs.log 2>&1 &
$R/floe standalone --data-dir /tmp/bmem --storage memory:// --listen 127.0.0.1:29093 --http-listen 127.0.0.1:29645 > /tmp/bmem.log 2>&1 &
sleep 1
for port in 29092 29093; do $R/floe-bench --bootstrap 127.0.0.1:$port --topic warm produce --records 20000 >/dev/null 2>&1; done
for i in $(seq 1 ${RUNS:-5}); do
  for port in 29092 29093; do
    echo -n "$port "; $R/floe-bench --bootstrap 127.0.0.1:$port --topic bench$i produce --records ${N:-1000000} --record-size 1024 --acks all --batch-bytes 1048576 2>&1 | tail -1
  done
  for port in 29092 29093; do
    echo -n "$port "; $R/floe-bench --bootstrap 127.0.0.1:$port --topic bench$i consume --records ${N:-1000000} 2>&1 | tail -1
  done
done
for i in 1 2 3; do for port in 29092 29093; do
  echo -n "$port "; $R/floe-bench --bootstrap 127.0.0.1:$port --topic lat$i produce --records 20000 --record-size 1024 --rate 2000 --linger-ms 0 2>&1 | tail -1
done; done
for port in 29092 29093; do
  echo -n "$port "; $R/floe-bench --bootstrap 127.0.0.1:$port --topic e2e end-to-end --records 10000 --rate 2000 2>&1 | tail -1
done
pkill -f "floe standalone"; while pgrep -f "floe standalone" >/dev/null; do sleep 0.2; done
