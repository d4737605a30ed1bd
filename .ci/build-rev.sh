#!/usr/bin/env bash
# Builds the `cluster` binary of git revision REV in a clone of its own, and prints the
# binary's path. The clone gets its own target dir (two checkouts must never share one:
# cargo keys a workspace's own crates by their path relative to the workspace root, so
# their generated code would collide), seeded with hard links to the shared target dir so
# that the dependencies (RocksDB above all) are not compiled again; the workspace's own
# crates are removed from the seed, so nothing is written through a shared link.
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
  # The workspace's own crates get the same hashes in both checkouts, and a build writes
  # some outputs in place (proto's generated code): through a hard link that would
  # rewrite the shared target's files. Unlink them here so they are built anew.
  (cd "$SRC" && CARGO_TARGET_DIR=$TARGET cargo clean --release -q \
    -p proto -p coord -p client -p agent -p jepsen-style-tests -p scheduler-core 2>/dev/null || true)
fi
echo "building $(git -C "$SRC" log -1 --format='%h %s' | cut -c1-72) in $SRC" >&2
(cd "$SRC" && CARGO_TARGET_DIR=$TARGET cargo build --release --locked --bin cluster >&2)
echo "$TARGET/release/cluster"
