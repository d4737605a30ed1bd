#!/usr/bin/env bash
# Builds the `cluster` binary of git revision REV in a clone of its own, and prints the
# binary's path. The clone gets its own target dir (two checkouts must never share one:
# cargo keys a workspace's own crates by their path relative to the workspace root, so
# their generated code would collide), seeded with hard links to the shared target dir so
# that the dependencies (RocksDB above all) are not compiled again.
#   usage: build-rev.sh REV
set -euo pipefail
REV=$1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${CARGO_TARGET_DIR:-$HOME/.cache/cluster-target}
SRC=/tmp/cluster-rev-src
TARGET=$SHARED-rev
if [ ! -d "$SRC/.git" ]; then git clone -q "$ROOT" "$SRC"; fi
git -C "$SRC" fetch -q "$ROOT" "+refs/heads/*:refs/remotes/local/*"
git -C "$SRC" checkout -q --detach "$REV"
if [ ! -d "$TARGET" ] && [ -d "$SHARED/release" ]; then
  mkdir -p "$TARGET"
  cp -al "$SHARED/release" "$TARGET/release"
fi
echo "building $(git -C "$SRC" log -1 --format='%h %s' | cut -c1-72) in $SRC" >&2
(cd "$SRC" && CARGO_TARGET_DIR=$TARGET cargo build --release --locked --bin cluster >&2)
echo "$TARGET/release/cluster"
