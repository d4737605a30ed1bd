#!/usr/bin/env bash
# Registry scale: N emulated agents (`cluster bench agents`) against a fresh 3-master
# cluster (--no-worker) on this machine, for each N in AGENTS (default "1000 5000 10000
# 15000"). Each run: every agent registered and active, then a WINDOW-second measured
# window (default 30) with kill -9 of the leader KILL_AT seconds in (default 20).
# Prints one JSON line per run and a table, and writes the "## Registry scale" section
# of docs/benchmarks.md.
set -euo pipefail
BIN=${1:-cluster}
AGENTS=${AGENTS:-"1000 5000 10000 15000"}
WINDOW=${WINDOW:-30}
KILL_AT=${KILL_AT:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d /tmp/cluster-bench-agents.XXXXXX)
# Below 32768: ports in the ephemeral range can be taken by any outgoing connection.
CL=(127.0.0.1:21479 127.0.0.1:21480 127.0.0.1:21481)
source "$ROOT/.ci/masters.sh"
trap 'stop_masters; rm -rf "$DIR"' EXIT INT TERM

: >"$DIR/results"
for n in $AGENTS; do
  mkdir -p "$DIR/run-$n"
  start_masters "$DIR/run-$n"
  echo "== $n emulated agents" >&2
  if out=$("$BIN" bench agents --agents "$n" --duration "$WINDOW" --kill-leader-at "$KILL_AT" \
      --endpoints "$EPS" -o json 2>"$DIR/run-$n/bench.err"); then
    echo "$out"
    echo "$out" >>"$DIR/results"
  else
    echo "run with $n agents failed:" >&2; tail -n 5 "$DIR/run-$n/bench.err" >&2
    grep -h "leadership\|election" "$DIR/run-$n"/c*.log 2>/dev/null | tail -n 5 >&2 || true
    echo "{\"agents\": $n, \"failed\": true}" >>"$DIR/results"
  fi
  stop_masters
done

python3 - "$DIR/results" "$ROOT/docs/benchmarks.md" "$WINDOW" "$KILL_AT" <<'PY'
import json, sys, os, datetime
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = ["| agents | leader CPU (steady) | election | reattach p50 | reattach p99 | max | not reattached | false transitions |",
        "|---|---|---|---|---|---|---|---|"]
ok = []
for r in runs:
    if r.get("failed") or r.get("reattach_ms_p50") is None:
        rows.append(f"| {r['agents']:,} | failed (see the run's stderr) | | | | | | |")
        continue
    cpu = r.get("leader_cpu_percent_steady")
    el = r.get("election_ms")
    el = f"{el:.0f} ms" if el is not None else "?"
    rows.append(f"| {r['agents']:,} | {cpu:.0f}% | {el} | {r['reattach_ms_p50']:.0f} ms | {r['reattach_ms_p99']:.0f} ms | "
                f"{r['reattach_ms_max']:.0f} ms | {r['not_reattached']} | {r['false_transitions']} |")
    if r["false_transitions"] == 0 and r["not_reattached"] == 0:
        ok.append(r["agents"])
best = max(ok) if ok else 0
table = "\n".join(rows)
print(table)
print(f"largest N with zero false transitions: {best:,}")
date = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC")
section = f"""
## Registry scale

Produced by `make bench-agents` (`.ci/bench-agents.sh`); rerun it to refresh this section.

- date: {date}; same machine; a fresh 3-master cluster (`--no-worker`) per run
- `cluster bench agents`: N emulated agents in one process, each running the real agent
  session code over the real gRPC protocol (registration, then a heartbeat stream to the
  leader at 1/s), 100 agents per HTTP/2 connection
- each run waits until every agent is active, then measures {sys.argv[3]} s; the leader is
  killed with SIGKILL {sys.argv[4]} s in. CPU is the leader process's user+system time over the
  steady part, in % of one core. Election is the time from the kill until a surviving
  master reports itself leader (polled every 10 ms). Reattach is the time from the kill
  to each agent's new session with the new leader. A false transition is any unreachable or down transition
  committed for an emulated agent (they all stay alive)

{table}

Largest N sustained with zero false transitions and every agent reattached: **{best:,}**.
"""
path = sys.argv[2]
old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
i = old.find("\n## Registry scale")
if i >= 0:
    j = old.find("\n## ", i + 1)
    old = old[:i] + (old[j:] if j >= 0 else "")
open(path, "w").write(old.rstrip("\n") + "\n" + section)
PY
