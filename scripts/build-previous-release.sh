#!/usr/bin/env bash
# Builds the previous release's `maubot` (the commit pinned below) for the rollback test
# (tests/integration/previous_release.rs): the binary a `nixos-rebuild --rollback` would bring back. Built from
# this repository's own history in a worktree under target/, with the same release profile, into a target
# directory of its own (so this build's `target/release/maubot` is never replaced). Cached: a second run with
# the binary in place does nothing. Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."

# The last commit that landed before rollback safety and E2EE recovery (stop 25). Move it forward when a release
# is cut; the test then checks rollbacks to that release.
PREVIOUS=09785df88b9b697ac9a3dec0cd249d949712c81a

out=target/previous-release
binary=$out/maubot-${PREVIOUS:0:12}
if [ -x "$binary" ]; then
  echo "$binary"
  exit 0
fi
if ! git cat-file -e "$PREVIOUS^{commit}" 2>/dev/null; then
  echo "build-previous-release.sh: commit $PREVIOUS is not in this clone (a shallow clone?); fetch the full history (git fetch --unshallow)" >&2
  exit 1
fi
mkdir -p "$out"
worktree=$out/src
rm -rf "$worktree"
git worktree prune
git worktree add --detach --force "$worktree" "$PREVIOUS" >&2
echo "==> building maubot at ${PREVIOUS:0:12} (the previous release) for the rollback test" >&2
(cd "$worktree" && CARGO_TARGET_DIR="$PWD/../target" cargo build --release --locked --bin maubot >&2)
cp "$out/target/release/maubot" "$binary.tmp"
mv "$binary.tmp" "$binary"
git worktree remove --force "$worktree"
echo "$binary"
