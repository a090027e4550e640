#!/usr/bin/env bash
# What security costs (docs/benchmarks.md, "Security"): one `floe standalone
# --try-security` serving the same data on three listeners — PLAINTEXT,
# SSL and SASL_SSL (SCRAM-SHA-512) — so every mode runs against the same
# process in the same session, interleaved run by run.
#  1. produce (1 KiB records, acks=all) and consume throughput per mode;
#  2. connection set-up: CONNS clients one after another (connect, log in,
#     fetch metadata, close), for plaintext, SSL and SASL_SSL with PLAIN,
#     SCRAM-SHA-256 and SCRAM-SHA-512: the client's time to the first
#     answer, and the standalone's CPU time per connection (from
#     /proc/<pid>/stat, so the server's share of the cost is seen apart
#     from the client's PBKDF2).
#   cargo build --release -p floe -p floe-bench
#   RUNS=5 scripts/bench-security.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FLOE=${FLOE:-target/release/floe}
BENCH=${BENCH:-target/release/floe-bench}
RUNS=${RUNS:-5}
N=${N:-500000}
CONNS=${CONNS:-300}
STORAGE=${STORAGE:-memory://}   # "default": file storage in the data dir
SASL_PORT=29311 PLAIN_PORT=29312 SSL_PORT=29313 HTTP_PORT=29314
DIR=/tmp/floe-bench-security

pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

rm -rf "$DIR"
mkdir -p "$DIR"
cat >"$DIR/floe.toml" <<EOF
[[proxy.listeners]]
name = "LOCAL"
listen = "127.0.0.1:$PLAIN_PORT"

[[proxy.listeners]]
name = "TLS"
listen = "127.0.0.1:$SSL_PORT"
protocol = "SSL"
tls = { cert = "$DIR/data/try-security/server.pem", key = "$DIR/data/try-security/server.key" }
EOF
storage=(--storage "$STORAGE")
[ "$STORAGE" = default ] && storage=()
"$FLOE" standalone --try-security --config "$DIR/floe.toml" --data-dir "$DIR/data" "${storage[@]}" \
  --listen "127.0.0.1:$SASL_PORT" --http-listen "127.0.0.1:$HTTP_PORT" >"$DIR/floe.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null || { cat "$DIR/floe.log"; exit 1; }
CA=$DIR/data/try-security/ca.pem
PASSWORD=$(cat "$DIR/data/try-security/admin.password")

# flags MODE: floe-bench's address and -X properties for a mode.
flags() {
  case $1 in
    plaintext) echo "--bootstrap 127.0.0.1:$PLAIN_PORT" ;;
    ssl) echo "--bootstrap 127.0.0.1:$SSL_PORT -X security.protocol=ssl -X ssl.ca.location=$CA" ;;
    sasl-*)
      local mech=${1#sasl-}
      echo "--bootstrap 127.0.0.1:$SASL_PORT -X security.protocol=sasl_ssl -X ssl.ca.location=$CA" \
        "-X sasl.mechanisms=$mech -X sasl.username=admin -X sasl.password=$PASSWORD" ;;
  esac
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
TICK=$(getconf CLK_TCK)

echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(nproc) cores; storage $STORAGE; N=$N RUNS=$RUNS CONNS=$CONNS"
for m in plaintext ssl sasl-SCRAM-SHA-512; do
  # shellcheck disable=SC2046
  "$BENCH" $(flags "$m") --topic warm produce --records 20000 >/dev/null 2>&1
done

echo "## throughput (with the CPU seconds the standalone and the client spent)"
# measure MODE ARGS...: floe-bench's last line, then both processes' CPU.
measure() {
  local m=$1
  shift
  local before after line
  before=$(cpu_ticks)
  # shellcheck disable=SC2046
  line=$(/usr/bin/time -f "client CPU %U+%S s" "$BENCH" $(flags "$m") "$@" 2>&1 | sed 's/; latency.*//' | tail -2 | tr '\n' ' ')
  after=$(cpu_ticks)
  awk -v m="$m" -v l="$line" -v t=$((after - before)) -v hz="$TICK" \
    'BEGIN { printf "%s %s; server CPU %.2f s\n", m, l, t / hz }'
}
for i in $(seq 1 "$RUNS"); do
  for m in plaintext ssl sasl-SCRAM-SHA-512; do
    measure "$m" --topic "$m-$i" produce --records "$N" --record-size 1024 --acks all --batch-bytes 1048576
  done
  for m in plaintext ssl sasl-SCRAM-SHA-512; do
    measure "$m" --topic "$m-$i" consume --records "$N"
  done
done

echo "## connection set-up"
for i in $(seq 1 "$RUNS"); do
  for m in plaintext ssl sasl-PLAIN sasl-SCRAM-SHA-256 sasl-SCRAM-SHA-512; do
    before=$(cpu_ticks)
    # shellcheck disable=SC2046
    line=$("$BENCH" $(flags "$m") --topic warm connect --connections "$CONNS" 2>&1 | tail -1)
    after=$(cpu_ticks)
    awk -v m="$m" -v l="$line" -v t=$((after - before)) -v hz="$TICK" -v n="$CONNS" \
      'BEGIN { printf "%s %s; server CPU %.3f ms per connection\n", m, l, t * 1000 / hz / n }'
  done
done
