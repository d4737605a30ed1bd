#!/usr/bin/env bash
# Two builds of cluster side by side: a 3-node cluster of each (OLD and NEW binaries),
# the same `cluster bench` loads against both (the NEW binary's load generator, etcd v3
# API, 256-byte values, keys uniform over 10,000), in three rounds that alternate
# between them; the table shows each figure's median and NEW/OLD. For checking that a
# change did not make things slower. DURATION (seconds per load, default 10).
#   usage: bench-compare.sh OLD_BIN NEW_BIN [OLD_LABEL NEW_LABEL]
set -euo pipefail
OLD=$1 NEW=$2
LABELS=("${3:-old}" "${4:-new}")
DUR=${DURATION:-10}
DIR=$(mktemp -d /tmp/cluster-bench-compare.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT INT TERM
BINS=("$OLD" "$NEW")
# Below 32768: ports in the ephemeral range can be taken by any outgoing connection.
PORTS=("21479 21480 21481" "21579 21580 21581")
EPS=()
LEADER_PID=()
# How each cluster's clients connect: a build with TLS is reached with the admin
# credential in its init node's data dir; a build from before TLS with --plaintext.
CRED=()

start_cluster() { # index
  local i=$1 bin=${BINS[$1]} p a=() tok="" pids=()
  for p in ${PORTS[$i]}; do a+=("127.0.0.1:$p"); done
  "$bin" init --data-dir "$DIR/s$i-1" --listen "${a[0]}" >"$DIR/s$i-1.log" 2>&1 &
  PIDS+=($!); pids+=($!)
  local own=()
  CRED[$i]="--plaintext"
  for _ in $(seq 30); do
    if [ -d "$DIR/s$i-1/tls" ]; then own=(--data-dir "$DIR/s$i-1"); CRED[$i]="--data-dir $DIR/s$i-1"; break; fi
    sleep 0.1
  done
  for _ in $(seq 100); do tok=$("$bin" token manager -q --endpoints "${a[0]}" "${own[@]}" 2>/dev/null) && break; sleep 0.1; done
  for n in 1 2; do
    "$bin" join --data-dir "$DIR/s$i-$((n+1))" --listen "${a[$n]}" --token "$tok" "${a[0]}" \
      >"$DIR/s$i-$((n+1)).log" 2>&1 &
    PIDS+=($!); pids+=($!)
  done
  EPS[$i]=$(IFS=,; echo "${a[*]}")
  for _ in $(seq 150); do
    [ "$("$bin" members --endpoints "${EPS[$i]}" "${own[@]}" -o json 2>/dev/null | grep -c '"voter"')" = 3 ] && break; sleep 0.2
  done
  # init's node leads until a failure; its pid is the leader's.
  LEADER_PID[$i]=${pids[0]}
}

bench() { # index op clients [extra]
  local i=$1 op=$2 clients=$3; shift 3
  local out
  # shellcheck disable=SC2086
  out=$("$NEW" bench "$op" --endpoints "${EPS[$i]}" ${CRED[$i]} --clients "$clients" --duration "$DUR" -o json "$@")
  printf '%s\t%s\n' "${LABELS[$i]}" "$out" >>"$DIR/results"
  echo "  ${LABELS[$i]} $op clients=$clients: $(echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f ops/s, p50 %.2f ms, p99 %.2f ms" % (r["ops_per_sec"], r["p50_ms"], r["p99_ms"]))')"
}

echo "== starting a 3-node cluster of each: ${LABELS[0]} ($OLD) and ${LABELS[1]} ($NEW)"
start_cluster 0
start_cluster 1
echo "== warm-up: 5 s of 64-client puts on each (not recorded)"
# shellcheck disable=SC2086
for i in 0 1; do "$NEW" bench put --endpoints "${EPS[$i]}" ${CRED[$i]} --clients 64 --duration 5 >/dev/null; done
for round in 1 2 3; do
  echo "== round $round"
  for i in 0 1; do
    bench "$i" put 1
    bench "$i" put 64
    bench "$i" put 256
    bench "$i" get 64
    bench "$i" get 64 --serializable
  done
done
for i in 0 1; do
  echo "$(awk '/^VmRSS/ {printf "%d", $2/1024}' "/proc/${LEADER_PID[$i]}/status")" >"$DIR/rss-$i"
done

python3 - "$DIR/results" "${LABELS[0]}" "${LABELS[1]}" "$(cat "$DIR/rss-0")" "$(cat "$DIR/rss-1")" <<'PY'
import json, sys, statistics
path, old, new, rss_old, rss_new = sys.argv[1:6]
runs = {}
for line in open(path):
    label, js = line.rstrip("\n").split("\t", 1)
    r = json.loads(js)
    runs.setdefault((label, r["op"], r["clients"]), []).append(r)
med = lambda label, op, c, k: statistics.median(x[k] for x in runs[(label, op, c)])
rows = [f"| load | {old} | {new} | {new} / {old} |", "|---|---|---|---|"]
def row(name, op, c, k, fmt):
    a, b = med(old, op, c, k), med(new, op, c, k)
    rows.append(f"| {name} | {fmt(a)} | {fmt(b)} | {b / a:.2f} |")
ops = lambda v: f"{v:,.0f}/s"
ms = lambda v: f"{v:.2f} ms"
row("put, 1 client", "put", 1, "ops_per_sec", ops)
row("put, 1 client: p50", "put", 1, "p50_ms", ms)
row("put, 64 clients", "put", 64, "ops_per_sec", ops)
row("put, 256 clients", "put", 256, "ops_per_sec", ops)
row("put, 256 clients: p99", "put", 256, "p99_ms", ms)
row("get, 64 clients, linearizable", "get", 64, "ops_per_sec", ops)
row("get, 64 clients, serializable", "get-serializable", 64, "ops_per_sec", ops)
rows.append(f"| leader RSS after the loads | {rss_old} MiB | {rss_new} MiB | {int(rss_new) / int(rss_old):.2f} |")
print()
print("\n".join(rows))
print()
print("Each figure is the median of three rounds that alternate between the two builds.")
PY
