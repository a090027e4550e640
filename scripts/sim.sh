#!/usr/bin/env bash
# Floe's deterministic simulation (sim/, docs/simulation.md): the real
# controller and brokers as turmoil hosts. Built with --cfg tokio_unstable
# (so turmoil seeds tokio's own choices too) into target/sim.
#
#   scripts/sim.sh --seed 17            one seed: its faults, violations
#   scripts/sim.sh --seed 17 -v         ... with the brokers' warnings
#   scripts/sim.sh --seeds 1-10000      many seeds: a summary, failing seeds
#   scripts/sim.sh --seed 3 --broken ack-before-durable
#   scripts/sim.sh ci                   CI: FLOE_SIM_SEEDS (default 1-200)
#                                       must hold, seed 7 must replay, and a
#                                       broken broker must be caught
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg tokio_unstable"
TARGET="$PWD/target/sim"
if [ "${1:-}" = ci ]; then
  cargo test --manifest-path sim/Cargo.toml --locked --release --target-dir "$TARGET" -- --test-threads 2
  exit
fi
cargo build --manifest-path sim/Cargo.toml --locked --release --target-dir "$TARGET" --bin floe-sim
exec "$TARGET/release/floe-sim" "$@"
