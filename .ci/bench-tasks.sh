#!/usr/bin/env bash
# Placement end to end: a fresh 3-master cluster (--no-worker) on this machine, AGENTS
# emulated agents (default 10000) that acknowledge their tasks, then services of TASKS
# instances in all (default 100000), through `cluster bench tasks`. Prints the result and
# writes the "## Placement end to end" section of docs/benchmarks.md.
set -euo pipefail
BIN=${1:-cluster}
AGENTS=${AGENTS:-10000}
TASKS=${TASKS:-100000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d /tmp/cluster-bench-tasks.XXXXXX)
# Below 32768: ports in the ephemeral range can be taken by any outgoing connection.
CL=(127.0.0.1:21579 127.0.0.1:21580 127.0.0.1:21581)
source "$ROOT/.ci/masters.sh"
trap 'stop_masters; rm -rf "$DIR"' EXIT INT TERM

start_masters "$DIR"
echo "== $AGENTS emulated agents, $TASKS tasks" >&2
if ! out=$("$BIN" bench tasks --agents "$AGENTS" --tasks "$TASKS" --endpoints "$EPS" -o json 2> >(tee "$DIR/bench.err" >&2)); then
  echo "the run failed:" >&2; tail -n 5 "$DIR/bench.err" >&2; tail -n 20 "$DIR"/c*.log >&2
  exit 1
fi
echo "$out"
python3 - "$out" "$ROOT/docs/benchmarks.md" <<'PY'
import json, sys, os, datetime
r = json.loads(sys.argv[1])
date = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC")
section = f"""
## Placement end to end

Produced by `make bench-scheduler` (its second half, `.ci/bench-tasks.sh`); rerun it to
refresh this section.

- date: {date}; same machine; a fresh 3-master cluster (`--no-worker`)
- `cluster bench tasks`: {r['agents']:,} emulated agents in one process (the sessions of
  `bench agents`), each also following its own `WatchAssignments` stream (spread over the
  three masters) and acknowledging every new task as running with `ReportTasks`, retried
  until it commits, as the task runner does, without starting processes
- then {r['services']} services totalling {r['tasks']:,} instances (sizes 1,000, 500, 200, 100,
  50, 10 and 1 in turn; no constraint, `hostname:UNIQUE`, `hostname:MAX_PER:2`, a label
  `LIKE`, `hostname:GROUP_BY` in turn; binpack and spread in turn; each task takes an IP
  from one overlay network) are created by 16 concurrent clients
- placements committed: the services' staged + running counts, polled every 100 ms from
  the first placement seen; CPU: the leader process's user + system time from the first
  create until every task runs, in % of one core

| agents | tasks | services | created in | all placed (committed) | placements/s | all running (acknowledged) | leader CPU | leader RSS |
|---|---|---|---|---|---|---|---|---|
| {r['agents']:,} | {r['tasks']:,} | {r['services']} | {r['create_seconds']:.1f} s | {r['all_placed_seconds']:.1f} s | {r['placements_per_second']:,.0f} | {r['all_running_seconds']:.1f} s | {r['leader_cpu_percent']:.0f}% | {r['leader_rss_mib']:.0f} MiB |

Targets: ≥ 10,000 placements committed per second (Nomad's C1M run placed 3,750 per
second); the scheduler alone is measured under "Placement (scheduler-core)". Here the
three masters, which all apply every launch entry (an IP allocation and a task record per
placement), and the one process emulating 10,000 agents with 20,000 streams share two
cores, and the run varies by about half between runs (leader elections under that load
move the scheduler).
"""
path = sys.argv[2]
old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
i = old.find("\n## Placement end to end")
if i >= 0:
    j = old.find("\n## ", i + 1)
    old = old[:i] + (old[j:] if j >= 0 else "")
open(path, "w").write(old.rstrip("\n") + "\n" + section)
PY
