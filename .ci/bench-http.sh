#!/usr/bin/env bash
# What the HTTP face costs writes: two local 3-master clusters, one plain and one with
# --http-listen on every master while it is scraped the way operators watch it (a
# Prometheus scrape of /metrics on each master every second, the dashboard's overview
# twice a second, a /v2/events follower). The same put load (64 clients, 256-byte
# values) runs on each in three alternating rounds; the medians and their ratio go to
# the "HTTP face and metrics" section of docs/benchmarks.md. The counters behind
# /metrics are always on (they are in the gRPC and fsync paths of both clusters); the
# put rows of the main table, against etcd, carry their cost.
set -euo pipefail
BIN=${1:-cluster}
DUR=${DURATION:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d /tmp/cluster-bench-http.XXXXXX)
# PIDS and the cleanup on exit (its fixed-port systems are not used here).
source "$ROOT/.ci/systems.sh"
# Below 32768, away from bench.sh's ports.
A=(127.0.0.1:21479 127.0.0.1:21480 127.0.0.1:21481)
B=(127.0.0.1:21579 127.0.0.1:21580 127.0.0.1:21581)
BH=(127.0.0.1:21589 127.0.0.1:21590 127.0.0.1:21591)
A_EPS=$(IFS=,; echo "${A[*]}")
B_EPS=$(IFS=,; echo "${B[*]}")

start() { # name addrs... (-- http addrs...)
  local name=$1; shift
  local addrs=() http=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do addrs+=("$1"); shift; done
  [ $# -gt 0 ] && shift && http=("$@")
  local flag=()
  [ ${#http[@]} -gt 0 ] && flag=(--http-listen "${http[0]}")
  "$BIN" init --data-dir "$DIR/$name-1" --listen "${addrs[0]}" "${flag[@]}" >"$DIR/$name-1.log" 2>&1 &
  PIDS+=($!)
  local tok=""
  for _ in $(seq 100); do
    tok=$(CLUSTER_DATA_DIR="$DIR/$name-1" "$BIN" token manager -q --endpoints "${addrs[0]}" 2>/dev/null) && break
    sleep 0.1
  done
  for i in 1 2; do
    flag=()
    [ ${#http[@]} -gt 0 ] && flag=(--http-listen "${http[$i]}")
    "$BIN" join --data-dir "$DIR/$name-$((i+1))" --listen "${addrs[$i]}" --token "$tok" "${addrs[0]}" "${flag[@]}" \
      >"$DIR/$name-$((i+1)).log" 2>&1 &
    PIDS+=($!)
  done
  local eps; eps=$(IFS=,; echo "${addrs[*]}")
  for _ in $(seq 150); do
    [ "$(CLUSTER_DATA_DIR="$DIR/$name-1" "$BIN" members --endpoints "$eps" -o json 2>/dev/null | grep -c '"voter"')" = 3 ] && return 0
    sleep 0.2
  done
  echo "cluster $name did not form; logs:" >&2; tail -n 20 "$DIR/$name"-*.log >&2; exit 1
}

put() { # name eps
  CLUSTER_DATA_DIR="$DIR/$1-1" "$BIN" bench put --endpoints "$2" --clients 64 --duration "$DUR" -o json
}

echo "== two 3-master clusters: A plain, B with the HTTP face on every master"
start a "${A[@]}"
start b "${B[@]}" -- "${BH[@]}"
TOKEN=$(CLUSTER_DATA_DIR="$DIR/b-1" "$BIN" token issue-http --role reader --name bench -q --endpoints "$B_EPS")
# The watchers of B: Prometheus-like scrapes, the dashboard's overview, an event follower.
python3 - "$DIR/b-1/tls/ca.crt" "$TOKEN" "$DIR/scrapes" "${BH[@]}" <<'PY' &
import ssl, sys, threading, time, urllib.request
ca, token, out, hosts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
ctx = ssl.create_default_context(cafile=ca)
def get(url, timeout=10):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    t = time.time()
    with urllib.request.urlopen(req, context=ctx, timeout=timeout) as r:
        body = r.read()
    return time.time() - t, len(body)
def events():
    req = urllib.request.Request(f"https://{hosts[0]}/v2/events", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, context=ctx, timeout=3600) as r:
        for _ in r:
            pass
threading.Thread(target=events, daemon=True).start()
lat = []
n = 0
while True:
    start = time.time()
    for h in hosts:
        lat.append(get(f"https://{h}/metrics")[0])
    get(f"https://{hosts[1]}/v1/ui/overview")
    time.sleep(max(0, 0.5 - (time.time() - start)))
    get(f"https://{hosts[1]}/v1/ui/overview")
    n += 1
    with open(out, "w") as f:
        lat.sort()
        f.write(f"{len(lat)} {lat[len(lat) // 2] * 1000:.1f}\n")
    time.sleep(max(0, 1 - (time.time() - start)))
PY
PIDS+=($!)
echo "== warm-up: 5 s of puts on each (not recorded)"
CLUSTER_DATA_DIR="$DIR/a-1" "$BIN" bench put --endpoints "$A_EPS" --clients 64 --duration 5 >/dev/null
CLUSTER_DATA_DIR="$DIR/b-1" "$BIN" bench put --endpoints "$B_EPS" --clients 64 --duration 5 >/dev/null
: >"$DIR/results"
for round in 1 2 3; do
  for c in a b; do
    eps=$A_EPS; [ $c = b ] && eps=$B_EPS
    out=$(put $c "$eps")
    echo "$c $out" >>"$DIR/results"
    echo "  round $round, $c: $(echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f puts/s, p99 %.2f ms" % (r["ops_per_sec"], r["p99_ms"]))')"
  done
done
python3 - "$DIR/results" "$DIR/scrapes" "$ROOT/docs/benchmarks.md" "$DUR" <<'PY'
import json, statistics, sys
res = {}
for line in open(sys.argv[1]):
    c, js = line.split(" ", 1)
    res.setdefault(c, []).append(json.loads(js))
med = lambda c, k: statistics.median(r[k] for r in res[c])
scrapes, p50 = open(sys.argv[2]).read().split()
a, b = med("a", "ops_per_sec"), med("b", "ops_per_sec")
rows = [
    "| load | plain | HTTP face, scraped | with / plain |",
    "|---|---|---|---|",
    f"| put, 64 clients: throughput (median of 3) | {a:,.0f}/s | {b:,.0f}/s | {b / a:.2f}x |",
    f"| put, 64 clients: p99 (median of 3) | {med('a', 'p99_ms'):.2f} ms | {med('b', 'p99_ms'):.2f} ms | "
    f"{med('a', 'p99_ms') / med('b', 'p99_ms'):.2f}x |",
]
section = f"""## HTTP face and metrics

Produced by `.ci/bench-http.sh` (part of `make bench`). Two 3-master clusters on this
machine: one plain, one with `--http-listen` on every master, watched meanwhile as
operators watch it: `/metrics` scraped on each master every second (the scrape's
median time: {float(p50):.1f} ms, {scrapes} scrapes), the dashboard's overview read twice a
second, and a `/v2/events` follower. The same load, 64 clients putting 256-byte values
for {sys.argv[4]} s, alternates between them three times; the medians:

""" + "\n".join(rows) + "\n"
path = sys.argv[3]
old = open(path).read()
start = old.find("\n## HTTP face and metrics\n")
if start >= 0:
    end = old.find("\n## ", start + 1)
    old = old[:start] + ("" if end < 0 else old[end:])
open(path, "w").write(old.rstrip("\n") + "\n\n" + section)
print("\n".join(rows)); print(f"written to {path}")
PY
