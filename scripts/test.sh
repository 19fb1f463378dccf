#!/usr/bin/env bash
# Runs every test: unit tests and the integration tests against a real Synapse (installed here if missing).
# One build profile (release) serves the tests, the demo and the benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo is not installed; install the Rust toolchain (>= 1.95) first" >&2
  exit 1
fi
# Installs Synapse into a cached venv; the harness would do it too, but failing here is clearer.
bash scripts/install-synapse.sh >/dev/null

echo "==> cargo test --release (unit + integration against a real Synapse)"
cargo test --release --locked
