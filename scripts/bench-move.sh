#!/usr/bin/env bash
# Planned-move benchmark: a partition holding 10 MB and one holding 1 GB,
# each moved MOVES times (default 20) between two brokers on a real etcd,
# with release binaries. Prints a markdown table for docs/benchmarks.md.
#   MOVES=20 SMALL_MB=10 BIG_MB=1000 scripts/bench-move.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p floe
FLOE_BIN="$PWD/target/release/floe" cargo test --release -p floe-e2e --test move_bench -- \
  --ignored --nocapture --test-threads 1
