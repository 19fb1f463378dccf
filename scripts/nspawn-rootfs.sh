#!/usr/bin/env bash
# Builds (once) and prints the path of a minimal Debian rootfs with systemd as PID 1, for the real-systemd test
# (with python3 for the example `exec` bot and yt-dlp, and ffmpeg for the `media` bot).
# Cached under ~/.cache/maubot-dev; the test boots it with systemd-nspawn --volatile=overlay, so it stays pristine.
set -euo pipefail

CACHE_DIR="${MAUBOT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/maubot-dev}"
# Bump the suffix when the package list changes, so that cached copies are rebuilt.
ROOTFS="$CACHE_DIR/rootfs-bookworm-v5"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [ -f "$ROOTFS/.complete" ]; then
  echo "$ROOTFS"
  exit 0
fi
if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null; then
  echo "nspawn-rootfs: installing debootstrap and systemd-container" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq debootstrap systemd-container >&2
fi
echo "nspawn-rootfs: debootstrapping Debian bookworm into $ROOTFS (about 2 min)" >&2
rm -rf "$ROOTFS"
mkdir -p "$CACHE_DIR"
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,procps,ca-certificates,python3,ffmpeg bookworm "$ROOTFS" "$MIRROR" >&2
rm -f "$ROOTFS/etc/machine-id" && touch "$ROOTFS/etc/machine-id"
touch "$ROOTFS/.complete"
echo "$ROOTFS"
