#!/usr/bin/env bash
# Proxy-tier latency benchmark with release binaries on a real etcd (3
# brokers, 1 proxy, local file storage): end-to-end latency to a tailing
# consumer through the proxy and straight to the broker, and the produce
# latency bump of MOVES moves. Prints markdown tables for docs/benchmarks.md.
#   RECORDS=2000 MOVES=20 scripts/bench-proxy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p floe
FLOE_BIN="$PWD/target/release/floe" cargo test --release -p floe-e2e --test proxy_bench -- \
  --ignored --nocapture --test-threads 1
