#!/bin/bash
# Memory of floe standalone after writing and then reading 600 MB: two
# binaries side by side (OLD, NEW), as docs/benchmarks.md records.
# Build first: cargo build --release -p floe -p floe-bench
B=${R:-target/release}/floe-bench
rm -rf /tmp/rss-old /tmp/rss-new
${OLD:-target/release/floe.old} standalone --data-dir /tmp/rss-old --listen 127.0.0.1:29192 --http-listen 127.0.0.1:29744 > /tmp/rss-old.log 2>&1 & OLD_PID=$!
${NEW:-target/release/floe} standalone --data-dir /tmp/rss-new --listen 127.0.0.1:29193 --http-listen 127.0.0.1:29745 > /tmp/rss-new.log 2>&1 & NEW_PID=$!
sleep 2
for port in 29192 29193; do $B --bootstrap 127.0.0.1:$port --topic big produce --records 600000 --record-size 1024 --acks all --batch-bytes 1048576 2>&1 | tail -1; done
echo "after produce: old $(grep VmRSS /proc/$OLD_PID/status) new $(grep VmRSS /proc/$NEW_PID/status)"
for port in 29192 29193; do $B --bootstrap 127.0.0.1:$port --topic big consume --records 600000 2>&1 | tail -1; done
echo "after consume: old $(grep VmRSS /proc/$OLD_PID/status) new $(grep VmRSS /proc/$NEW_PID/status)"
echo "old cache: $(curl -s 127.0.0.1:29744/metrics | grep -E '^floe_(proxy_)?cache_bytes')"
echo "new cache: $(curl -s 127.0.0.1:29745/metrics | grep -E '^floe_(proxy_)?cache_bytes')"
kill $OLD_PID $NEW_PID; wait
