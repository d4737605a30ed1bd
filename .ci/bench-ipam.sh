#!/usr/bin/env bash
# IPAM: allocations committed through a fresh local 3-master cluster (`cluster bench
# ipam`): single allocations (CLIENTS clients, default 64) and batched ones (1,000 owners
# per request, 8 in flight), then an IPv4 /8 filled to the last address and 1,000,000
# allocations in an IPv6 /64 with the leader's memory. Writes the "## IPAM" section of
# docs/benchmarks.md. DURATION (seconds per rate phase, default 10); FILL=0 skips the fill.
set -euo pipefail
BIN=${1:-cluster}
DUR=${DURATION:-10}
CLIENTS=${CLIENTS:-64}
FILL=${FILL:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d /tmp/cluster-bench-ipam.XXXXXX)
# Below 32768: ports in the ephemeral range can be taken by any outgoing connection.
CL=(127.0.0.1:21579 127.0.0.1:21580 127.0.0.1:21581)
source "$ROOT/.ci/masters.sh"
trap 'stop_masters; rm -rf "$DIR"' EXIT INT TERM
start_masters "$DIR"
args=(bench ipam --clients "$CLIENTS" --duration "$DUR" --endpoints "$EPS" -o json)
[ "$FILL" = 1 ] && args+=(--fill)
"$BIN" "${args[@]}" >"$DIR/result.json"
cat "$DIR/result.json"
du -sm "$DIR/c1/db" | awk '{print $1}' >"$DIR/disk_mb"

python3 - "$DIR/result.json" "$ROOT/docs/benchmarks.md" "$DUR" "$(cat "$DIR/disk_mb")" <<'PY'
import json, sys, os, datetime
r = json.load(open(sys.argv[1]))
s, b = r["single"], r["batched"]
rows = ["| load | allocations/s | p50 | p99 |", "|---|---|---|---|",
        f"| single, {r['clients']} clients, 1 owner per request | {s['per_second']:,.0f} | {s['p50_ms']:.2f} ms | {s['p99_ms']:.2f} ms |",
        f"| batched, {r['batched_clients']} clients, {r['batch_size']:,} owners per request | {b['per_second']:,.0f} | {b['p50_ms']:.1f} ms | {b['p99_ms']:.1f} ms |"]
text = "\n".join(rows)
fill = ""
if "fill_v4_slash8" in r:
    f8, f6 = r["fill_v4_slash8"], r["fill_v6_slash64_1m"]
    fill = f"""
| pool | allocations | rate | leader RSS after |
|---|---|---|---|
| IPv4 /8, every usable address | {f8['allocations']:,} | {f8['per_second']:,.0f}/s | {f8['leader_rss_mb_after']:,.0f} MiB (before: {f8['leader_rss_mb_before']:,.0f} MiB) |
| IPv6 /64, 1,000,000 allocations | {f6['allocations']:,} | {f6['per_second']:,.0f}/s | {f6['leader_rss_mb_after']:,.0f} MiB |

Batches answered `unavailable` (an election under load) and sent again: {f8['unavailable_retries']}
during the /8 fill. After the /8 was full, one more allocation failed "exhausted": {f8['exhausted_after']}. The
leader's data dir held {sys.argv[4]} MiB at the end. Resident memory is the whole leader
process (RocksDB memtables and block cache included); the IPAM state in memory is the
pools' runs of used addresses, one run for a sequentially filled pool, while owner
records stay on disk.
"""
print(text + fill)
date = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC")
section = f"""
## IPAM

Produced by `make bench-ipam` (`.ci/bench-ipam.sh`); rerun it to refresh this section.

- date: {date}; same machine; a fresh 3-master cluster; `cluster bench ipam` sends
  `Allocate` (one owner) or `AllocateBatch` (one log entry for many owners) to the leader,
  each client with one request in flight, {sys.argv[3]} s per rate phase; every allocation is
  committed (fsynced on a quorum) before it is acknowledged

{text}
{fill}"""
path = sys.argv[2]
old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
i = old.find("\n## IPAM")
if i >= 0:
    j = old.find("\n## ", i + 1)
    old = old[:i] + (old[j:] if j >= 0 else "")
open(path, "w").write(old.rstrip("\n") + "\n" + section)
PY
