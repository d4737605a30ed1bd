#!/usr/bin/env bash
# Snapshot memory: a 3-master cluster fills an IPv4 /8 (and 1M IPv6 allocations) through
# `cluster bench ipam --fill`, with a snapshot every 2,000 entries so the log behind it is
# purged. Then a fourth master joins and must catch up by snapshot. Every 200 ms the
# script samples the resident memory of the leader and of the new master through the
# leader's next snapshot build, the transfer and the install, and prints each one's peak
# above its steady state. Writes the "## Snapshot memory" section of docs/benchmarks.md.
set -euo pipefail
trap 'echo "bench-snapshot: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
BIN=${1:-cluster}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d /tmp/cluster-bench-snap.XXXXXX)
CL=(127.0.0.1:21679 127.0.0.1:21680 127.0.0.1:21681)
NEW=127.0.0.1:21682
MASTER_ARGS="--snapshot-every-entries 2000"
source "$ROOT/.ci/masters.sh"
SAMPLER=""
cleanup() { [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null; stop_masters; rm -rf "$DIR"; }
trap cleanup EXIT INT TERM
rss_mb() { awk '/^VmRSS/ {printf "%d", $2/1024}' "/proc/$1/status" 2>/dev/null || echo 0; }
status() { "$BIN" status --endpoints "$1" -o json 2>/dev/null || echo '{}'; }
# A node that does not answer yet reads as 0 (set -e must not end the script on it).
field() { python3 -c "import json,sys; t=sys.stdin.read().strip() or '{}'; print(json.loads(t).get('$1') or 0)" || echo 0; }
# Node ids follow join order, which is not start order: match the leader by address.
leader_pid() {
  local a; a=$(status "${CL[0]}" | field leader_addr)
  for i in "${!CL[@]}"; do if [ "${CL[$i]}" = "$a" ]; then echo "${PIDS[$i]}"; fi; done
}
# Steady state: the median of 10 samples over 5 s.
steady() { local s=(); for _ in $(seq 10); do s+=("$(rss_mb "$1")"); sleep 0.5; done; printf '%s\n' "${s[@]}" | sort -n | sed -n 5p; }

start_masters "$DIR"
echo "filling: an IPv4 /8 and 1,000,000 IPv6 allocations (about 10 minutes)" >&2
t0=$(date +%s)
"$BIN" bench ipam --clients 8 --duration 1 --fill --endpoints "$EPS" -o json >"$DIR/fill.json"
echo "filled in $(( $(date +%s) - t0 )) s" >&2
LP=$(leader_pid)
for _ in $(seq 600); do [ "$(status "${CL[0]}" | field snapshot_index)" -gt 0 ] && break; sleep 1; done
sleep 20 # let the fill's last snapshot build and compactions finish
L_STEADY=$(steady "$LP")
SNAP_BYTES=$(du -b "$DIR/c1/snapshot/current" | cut -f1)
echo "leader pid $LP steady ${L_STEADY} MiB; snapshot file ${SNAP_BYTES} bytes" >&2

# Sample from here: a fresh build on the leader (2,000 small writes trigger it), then
# the new master's transfer and install.
: >"$DIR/leader.rss"; : >"$DIR/new.rss"
# One sample a line (rss_mb prints no newline).
( while :; do echo "$(rss_mb "$LP")" >>"$DIR/leader.rss"; [ -f "$DIR/new.pid" ] && echo "$(rss_mb "$(cat "$DIR/new.pid")")" >>"$DIR/new.rss"; sleep 0.2; done ) &
SAMPLER=$!
"$BIN" bench put --endpoints "$EPS" --clients 4 --duration 3 --keys 100 -o json >/dev/null
sleep 30
TOK=$("$BIN" token manager -q --endpoints "$EPS")
t1=$(date +%s)
"$BIN" join --no-worker $MASTER_ARGS --data-dir "$DIR/c4" --listen "$NEW" --token "$TOK" "${CL[0]}" >"$DIR/c4.log" 2>&1 &
NP=$!; PIDS+=("$NP"); echo "$NP" >"$DIR/new.pid"
# Caught up: a voter whose applied index reached the leader's at the time of the join.
target=$(status "${CL[0]}" | field applied_index)
# `status` prefers the leader's answer, so it cannot tell the new node's applied index:
# wait for the new node's own log line that the install finished.
for _ in $(seq 1800); do
  grep -q "snapshot installed" "$DIR/c4.log" && break; sleep 1
done
CATCHUP=$(( $(date +%s) - t1 ))
sleep 10
kill "$SAMPLER"; SAMPLER=""
N_STEADY=$(steady "$NP")
L_PEAK=$(sort -n "$DIR/leader.rss" | tail -1)
N_PEAK=$(sort -n "$DIR/new.rss" | tail -1)
grep -q "received snapshot" "$DIR/c4.log" || { echo "the new master did not catch up by snapshot" >&2; exit 1; }
grep -E "snapshot (installed|received)|received snapshot" "$DIR/c4.log" >&2 || true
INSTALLED=$(grep -o 'records=[0-9]*' "$DIR/c4.log" | tail -1 | cut -d= -f2 || true)
echo "leader: steady ${L_STEADY} MiB, peak ${L_PEAK} MiB; new master: steady ${N_STEADY} MiB, peak ${N_PEAK} MiB; caught up in ${CATCHUP} s" >&2

python3 - "$ROOT/docs/benchmarks.md" "$DIR/fill.json" "$L_STEADY" "$L_PEAK" "$N_STEADY" "$N_PEAK" "$SNAP_BYTES" "$CATCHUP" "${INSTALLED:-?}" <<'PY'
import json, sys, os, datetime
path, fill = sys.argv[1], json.load(open(sys.argv[2]))
ls, lp, ns, np_, snap, catchup, recs = sys.argv[3:10]
ls, lp, ns, np_, snap = int(ls), int(lp), int(ns), int(np_), int(snap)
date = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC")
allocs = fill["fill_v4_slash8"]["allocations"] + fill["fill_v6_slash64_1m"]["allocations"]
section = f"""
## Snapshot memory

Produced by `make bench-snapshot` (`.ci/bench-snapshot.sh`); rerun it to refresh this section.

- date: {date}; same machine; a 3-master cluster holds {allocs:,} IP allocations (an IPv4 /8
  filled to the last address and 1,000,000 in an IPv6 /64), snapshots every 2,000 entries;
  then a fourth master joins and catches up by snapshot ({recs} records installed, in
  {catchup} s from the join). Resident memory sampled every 200 ms through a snapshot build
  on the leader, the transfer and the install.

| process | steady state | peak during build, transfer and install | peak above steady |
|---|---|---|---|
| leader | {ls:,} MiB | {lp:,} MiB | {lp - ls:,} MiB |
| new master | {ns:,} MiB | {np_:,} MiB | {np_ - ns:,} MiB |

The snapshot file was {snap / 2**20:,.0f} MiB. It is built, sent, received and installed
through files (SST ingestion), so memory does not grow with it; the bound we hold to is
256 MiB above steady state.
"""
old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
i = old.find("\n## Snapshot memory")
if i >= 0:
    j = old.find("\n## ", i + 1)
    old = old[:i] + (old[j:] if j >= 0 else "")
open(path, "w").write(old.rstrip("\n") + "\n" + section)
print(section)
PY
