#!/usr/bin/env bash
# Scale-out benchmark: 3 brokers with 60 partitions under ~1 MB/s of
# produce load through two proxies, 3 brokers added, `floectl rebalance
# --wait` (30 moves, 6 in flight). Run RUNS times (default 5) with no data
# written beforehand and with PREFILL_MB (default 1000) written first, on
# release binaries, to show the wall time does not depend on data size.
#   RUNS=5 PREFILL_MB=1000 scripts/bench-scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
PREFILL_MB=${PREFILL_MB:-1000}
cargo build --release -p floe --bins
for prefill in 0 "$PREFILL_MB"; do
  for i in $(seq "$RUNS"); do
    FLOE_BIN="$PWD/target/release/floe" FLOE_SCALE_PREFILL_MB=$prefill \
      cargo test -q -p floe-e2e --test scale -- --nocapture --exact \
      scale_out_rebalance_evens_partitions_and_load_under_traffic 2>&1 |
      grep -E "prefilled|scale-out rebalance|measured bytes" | sed "s/^/[prefill ${prefill} MB, run $i] /"
  done
done
