#!/usr/bin/env bash
# Installs what the `media` plugin runs, for the tests and the demo: yt-dlp (PyPI, pinned) into a virtualenv, and
# ffmpeg/ffprobe (Debian) for thumbnails and probing. Idempotent. Prints the yt-dlp executable's path on stdout.
set -euo pipefail

YT_DLP_VERSION="${YT_DLP_VERSION:-2026.11.23}"
CACHE_DIR="${MAUBOT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/maubot-dev}"
VENV="$CACHE_DIR/yt-dlp-$YT_DLP_VERSION"

if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
  echo "install-media-tools: installing Debian's ffmpeg" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq ffmpeg >/dev/null
fi

# The marker is written last, so an interrupted install is redone instead of half-used.
if [ ! -f "$VENV/.installed" ]; then
  python=""
  for candidate in python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import venv, ensurepip' >/dev/null 2>&1; then
      python="$candidate"
      break
    fi
  done
  if [ -z "$python" ]; then
    echo "install-media-tools: no python3 with venv/ensurepip; installing Debian's python3-venv" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq python3 python3-venv >&2
    python=python3
  fi
  echo "install-media-tools: installing yt-dlp==$YT_DLP_VERSION into $VENV" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$python" -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "yt-dlp==$YT_DLP_VERSION" >&2
  "$VENV/bin/yt-dlp" --version >&2
  touch "$VENV/.installed"
fi
echo "$VENV/bin/yt-dlp"
