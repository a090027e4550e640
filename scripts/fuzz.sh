#!/usr/bin/env bash
# Floe's fuzz targets (fuzz/, docs/fuzzing.md) on the stable toolchain:
# libFuzzer through the libfuzzer-sys crate, with the coverage
# instrumentation cargo-fuzz would ask rustc for (no sanitizer: those need
# nightly). Every target runs with a bounded allocator (one allocation over
# 160 MiB is a crash) and overflow checks on.
#
#   scripts/fuzz.sh build            build every target into target/fuzz
#   scripts/fuzz.sh seed             (re)write the seed inputs into fuzz/corpus
#   scripts/fuzz.sh replay [T...]    run each corpus input once (regressions)
#   scripts/fuzz.sh run [T...]       fuzz each target for FLOE_FUZZ_SECS (60)
#   scripts/fuzz.sh merge [T...]     shrink each corpus to the inputs that
#                                    add coverage (before committing it)
#   scripts/fuzz.sh ci               build, replay, then run for FLOE_FUZZ_SECS
#                                    (CI sets 15) every target
#
# A crash leaves its input in target/fuzz/artifacts/<target>/ and the
# command to reproduce it on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(kafka_request record_batches legacy_message_set chunk segment wal tail_update admin_request sasl)
HOST=$(rustc -vV | sed -n 's/^host: //p')
OUT="$PWD/target/fuzz"
BIN="$OUT/$HOST/release"
SECS="${FLOE_FUZZ_SECS:-60}"

build() {
  # Only the targets' own code is instrumented (--target keeps RUSTFLAGS
  # off build scripts and proc macros), as cargo-fuzz does.
  RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks" \
    cargo build --manifest-path fuzz/Cargo.toml --release --locked \
      --target "$HOST" --target-dir "$OUT" --bins
}

targets() {
  if [ "$#" -gt 0 ]; then echo "$@"; else echo "${TARGETS[@]}"; fi
}

replay() {
  mkdir -p "$OUT"
  for t in $(targets "$@"); do
    echo "== replay $t ($(ls "fuzz/corpus/$t" | wc -l) inputs)"
    if ! "$BIN/$t" -runs=0 -rss_limit_mb=4096 -timeout=30 "fuzz/corpus/$t" > "$OUT/$t.replay.log" 2>&1; then
      tail -n 60 "$OUT/$t.replay.log" >&2
      echo "an input of the corpus of $t fails; reproduce with: $BIN/$t <input>" >&2
      exit 1
    fi
  done
}

run() {
  for t in $(targets "$@"); do
    mkdir -p "$OUT/artifacts/$t" "$OUT/corpus/$t"
    echo "== fuzz $t for ${SECS}s"
    # New inputs go to a scratch corpus beside the committed one.
    if ! "$BIN/$t" -max_total_time="$SECS" -max_len=65536 -rss_limit_mb=4096 -timeout=30 \
        -print_final_stats=1 -artifact_prefix="$OUT/artifacts/$t/" \
        "$OUT/corpus/$t" "fuzz/corpus/$t" > "$OUT/$t.log" 2>&1; then
      tail -n 60 "$OUT/$t.log" >&2
      echo "fuzz target $t found a failure; reproduce with:" >&2
      ls "$OUT/artifacts/$t/" | sed "s|^|  $BIN/$t $OUT/artifacts/$t/|" >&2
      exit 1
    fi
    grep -E "stat::number_of_executed_units|stat::new_units_added" "$OUT/$t.log" | tr '\n' ' '
    echo
  done
}

merge() {
  for t in $(targets "$@"); do
    local fresh="$OUT/merged/$t"
    rm -rf "$fresh" && mkdir -p "$fresh"
    "$BIN/$t" -merge=1 -rss_limit_mb=4096 "$fresh" "fuzz/corpus/$t" "$OUT/corpus/$t" >/dev/null 2>&1
    # Seeds and regression inputs stay by name; the rest is the merge.
    find "fuzz/corpus/$t" -type f ! -name 'seed-*' ! -name 'crash-*' -delete
    cp "$fresh"/* "fuzz/corpus/$t/" 2>/dev/null || true
    echo "$t: $(ls fuzz/corpus/$t | wc -l) inputs"
  done
}

cmd="${1:-ci}"
shift || true
case "$cmd" in
  build) build ;;
  seed) build && "$BIN/seed_corpus" ;;
  replay) replay "$@" ;;
  run) run "$@" ;;
  merge) merge "$@" ;;
  ci)
    build
    replay
    SECS="${FLOE_FUZZ_SECS:-15}"
    run
    ;;
  *) echo "usage: $0 build|seed|replay|run|merge|ci [target...]" >&2; exit 2 ;;
esac
