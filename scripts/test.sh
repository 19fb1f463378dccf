#!/usr/bin/env bash
# Runs every test:
#   1. cargo test --release: unit tests, and integration tests against a real Synapse (installed if missing),
#      one of them with the previous release's binary (scripts/build-previous-release.sh, cached in target/);
#   2. tests/nix/static-test.py: every .nix parses, flake.lock is sound, the sops test secrets decrypt;
#   3. tests/nix/script-lint.py: what the VM tests embed passes the checks nixpkgs runs when it builds them;
#   4. tests/nix/eval-test.py: the NixOS module evaluated on nixpkgs' lib (skipped, and said so, without a lib tree);
#   5. tests/systemd/nspawn-test.py: the unit the module renders, under a real systemd in systemd-nspawn.
# A step that exits 77 was skipped: it is listed as such, and does not count as passed.
# Synapse, yt-dlp (PyPI) and ffmpeg (Debian) are installed first when missing (scripts/install-*.sh).
# One build profile (release) serves the tests, the demo, the benchmark and the nspawn test.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo is not installed; install the Rust toolchain (>= 1.95) first" >&2
  exit 1
fi
missing=()
command -v nix-instantiate >/dev/null || missing+=(nix-bin)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
bash scripts/install-synapse.sh >/dev/null || exit 1
bash scripts/install-media-tools.sh >/dev/null || exit 1

failures=()
skipped=()
step() {
  local name=$1
  shift
  echo
  echo "==> $name"
  local status=0
  "$@" || status=$?
  if [ "$status" -eq 77 ]; then
    skipped+=("$name")
  elif [ "$status" -ne 0 ]; then
    failures+=("$name")
  fi
}

step "the previous release's maubot, for the rollback test (built once, then cached)" bash scripts/build-previous-release.sh
step "cargo test --release (unit + integration against a real Synapse)" cargo test --release --locked
step "Nix: parse, flake.lock, sops test secrets" python3 tests/nix/static-test.py
step "Nix: VM test scripts as nixpkgs' writers and test driver check them" python3 tests/nix/script-lint.py
step "Nix: module evaluation on nixpkgs lib" python3 tests/nix/eval-test.py
step "systemd: the rendered unit under a real systemd (nspawn)" python3 tests/systemd/nspawn-test.py

echo
if [ ${#skipped[@]} -gt 0 ]; then
  printf 'SKIPPED: %s\n' "${skipped[@]}"
fi
if [ ${#failures[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failures[@]}"
  exit 1
fi
if [ ${#skipped[@]} -gt 0 ]; then echo "every test suite that ran passed (${#skipped[@]} skipped)"; else echo "all test suites passed"; fi
