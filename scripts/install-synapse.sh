#!/usr/bin/env bash
# Installs the pinned Synapse (PyPI `matrix-synapse`) into a virtualenv used by the tests, the demo and the benchmark.
# Idempotent: does nothing when the venv already holds the pinned version. Prints the venv path on stdout.
set -euo pipefail

SYNAPSE_VERSION="${SYNAPSE_VERSION:-1.163.2}"
CACHE_DIR="${MAUBOT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/maubot-dev}"
VENV="${SYNAPSE_VENV:-$CACHE_DIR/synapse-$SYNAPSE_VERSION}"

# The marker is written last, so an interrupted install is redone instead of half-used.
if [ -f "$VENV/.installed" ]; then
  echo "$VENV"
  exit 0
fi

python=""
for candidate in python3.12 python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    python="$candidate"
    break
  fi
done
if [ -z "$python" ]; then
  echo "install-synapse: no python3 with venv/ensurepip; installing Debian's python3-venv" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq python3 python3-venv >&2
  python=python3
fi

echo "install-synapse: installing matrix-synapse==$SYNAPSE_VERSION into $VENV ($($python --version))" >&2
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$python" -m venv "$VENV" >&2
"$VENV/bin/pip" install --quiet --disable-pip-version-check "matrix-synapse==$SYNAPSE_VERSION" >&2
"$VENV/bin/python" -c 'import synapse' >&2
touch "$VENV/.installed"
echo "$VENV"
