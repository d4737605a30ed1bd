#!/usr/bin/env bash
# A local 3-master cluster a newcomer can watch: init, two joins, a worker, writes through
# etcdctl and the cluster CLI, a leader killed with kill -9 and replaced (agents follow
# it without being marked unreachable), the node restarted; then the HTTP face (the
# dashboard, Marathon's API) and DNS that every master serves.
# Leaves the cluster running until Ctrl-C, then removes everything it made.
set -euo pipefail
BIN=${1:-cluster}
DIR=$(mktemp -d /tmp/cluster-demo.XXXXXX)
# All below 32768, outside the ephemeral port range.
PORTS=(2379 12379 22379)
# Each master's HTTP face (dashboard, Marathon and Chronos APIs, metrics) and DNS face.
HTTP=(8080 18080 28080)
DNS=(8600 18600 28600)
# The worker's --listen (2380) is only its advertised address for now.
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT INT TERM
for p in "${PORTS[@]}" "${HTTP[@]}" "${DNS[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p is in use; stop whatever listens there (another demo?) and retry" >&2; exit 1
  fi
done
EPS="127.0.0.1:${PORTS[0]},127.0.0.1:${PORTS[1]},127.0.0.1:${PORTS[2]}"
export CLUSTER_ENDPOINTS=$EPS
run() { echo; echo "\$ $*"; "$@"; }
wait_up() { for _ in $(seq 100); do "$BIN" status --endpoints "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "node $1 did not come up" >&2; return 1; }

echo "== 1. cluster init on node 1 (logs in $DIR/n1.log)"
"$BIN" init --data-dir "$DIR/n1" --listen "127.0.0.1:${PORTS[0]}" \
  --http-listen "127.0.0.1:${HTTP[0]}" --dns-listen "127.0.0.1:${DNS[0]}" >"$DIR/n1.out" 2>"$DIR/n1.log" &
PIDS[0]=$!
# Every connection is mutual TLS: CLI commands use the admin credential init writes
# into its data dir (tls/admin.crt, tls/admin.key, tls/ca.crt).
export CLUSTER_DATA_DIR="$DIR/n1"
wait_up "127.0.0.1:${PORTS[0]}"
sleep 0.5; cat "$DIR/n1.out"
TOKEN=$("$BIN" token manager -q --endpoints "127.0.0.1:${PORTS[0]}")

echo; echo "== 2. cluster join on nodes 2 and 3"
for i in 1 2; do
  echo "\$ cluster join --data-dir $DIR/n$((i+1)) --listen 127.0.0.1:${PORTS[$i]} --token ${TOKEN:0:24}… 127.0.0.1:${PORTS[0]}"
  "$BIN" join --data-dir "$DIR/n$((i+1))" --listen "127.0.0.1:${PORTS[$i]}" --token "$TOKEN" "127.0.0.1:${PORTS[0]}" \
    --http-listen "127.0.0.1:${HTTP[$i]}" --dns-listen "127.0.0.1:${DNS[$i]}" \
    >"$DIR/n$((i+1)).out" 2>"$DIR/n$((i+1)).log" &
  PIDS[$i]=$!
done
for _ in $(seq 100); do
  [ "$("$BIN" members -o json | grep -c '"voter"')" = 3 ] && break; sleep 0.2
done
run "$BIN" status

echo; echo "== 2b. a worker joins with the worker token; every node's agent registers"
WTOKEN=$("$BIN" token worker -q)
echo "\$ cluster join --data-dir $DIR/w1 --token ${WTOKEN:0:24}… --label zone=b --cpus 1.5 127.0.0.1:${PORTS[1]}"
"$BIN" join --data-dir "$DIR/w1" --listen 127.0.0.1:2380 --token "$WTOKEN" --label zone=b --cpus 1.5 \
  "127.0.0.1:${PORTS[1]}" >"$DIR/w1.out" 2>"$DIR/w1.log" &
PIDS[3]=$!
for _ in $(seq 100); do
  [ "$("$BIN" nodes -o json | grep -c '"state": "active"')" = 4 ] && break; sleep 0.1
done
run "$BIN" nodes

echo; echo "== 3. writes and reads (cluster CLI, and etcdctl if installed)"
run "$BIN" kv put greeting hello
run "$BIN" kv put config/replicas 3
run "$BIN" kv get config --prefix
if command -v etcdctl >/dev/null; then
  T="$DIR/n1/tls"
  HTTPS_EPS="https://${EPS//,/,https://}"
  ETCDCTL_API=3 run etcdctl --endpoints "$HTTPS_EPS" --cacert "$T/ca.crt" --cert "$T/admin.crt" --key "$T/admin.key" member list -w table
  ETCDCTL_API=3 run etcdctl --endpoints "$HTTPS_EPS" --cacert "$T/ca.crt" --cert "$T/admin.crt" --key "$T/admin.key" get greeting
fi

echo; echo "== 3b. an overlay network; addresses are allocated by the replicated state machine"
run "$BIN" network create blue --subnet 10.20.0.0/16 --subnet fd00:20::/64
run "$BIN" ip allocate blue --owner web-1
run "$BIN" ip allocate blue --owner web-2
run "$BIN" ip allocate blue --owner web-1
run "$BIN" network inspect blue

echo; echo "== 4. kill -9 the leader; the others elect a new one"
LEADER=$("$BIN" status -o json | sed -n 's/.*"leader_id": \([0-9]*\).*/\1/p' | head -1)
LADDR=$("$BIN" status -o json | sed -n 's/.*"leader_addr": "\([^"]*\)".*/\1/p' | head -1)
for i in 0 1 2; do [ "127.0.0.1:${PORTS[$i]}" = "$LADDR" ] && LI=$i; done
echo "leader is node $LEADER at $LADDR: kill -9 ${PIDS[$LI]}"
kill -9 "${PIDS[$LI]}"; wait "${PIDS[$LI]}" 2>/dev/null || true
T0=$(date +%s%N)
until "$BIN" kv put after-failover yes >/dev/null 2>&1; do sleep 0.05; done
echo "a write succeeded $(( ($(date +%s%N) - T0) / 1000000 )) ms after the kill"
run "$BIN" status
sleep 1
echo "the agents followed the new leader; none was marked unreachable:"
run "$BIN" nodes
run "$BIN" node events

echo; echo "== 5. restart the killed node from its data dir; it rejoins silently"
"$BIN" start --data-dir "$DIR/n$((LI+1))" >>"$DIR/n$((LI+1)).out" 2>>"$DIR/n$((LI+1)).log" &
PIDS[$LI]=$!
wait_up "$LADDR"; sleep 1
run "$BIN" status
run "$BIN" kv get after-failover
run "$BIN" nodes
echo "the same owner still gets the same address from the new leader:"
run "$BIN" ip allocate blue --owner web-2

echo; echo "== 6. every master's HTTP face and DNS"
HTOKEN=$("$BIN" token issue-http --role admin --name demo -q)
if command -v dig >/dev/null; then
  run dig +short @127.0.0.1 -p "${DNS[1]}" leader.cluster.local
  run dig +short @127.0.0.1 -p "${DNS[2]}" 2.agents.cluster.local
fi
python3 - "$DIR/n1/tls/ca.crt" "$HTOKEN" "${HTTP[1]}" <<'PY'
import json, ssl, sys, urllib.request
ca, token, port = sys.argv[1:4]
req = urllib.request.Request(f"https://127.0.0.1:{port}/v2/info", headers={"Authorization": f"Bearer {token}"})
info = json.load(urllib.request.urlopen(req, context=ssl.create_default_context(cafile=ca), timeout=5))
print(f"\n$ GET https://127.0.0.1:{port}/v2/info (Marathon's API, on a follower)")
print(json.dumps({k: info[k] for k in ("name", "version", "leader", "elected")}))
PY

echo
echo "The cluster keeps running. Try, in another shell:"
echo "    export CLUSTER_ENDPOINTS=$EPS CLUSTER_DATA_DIR=$DIR/n1"
echo "    $BIN status;  $BIN kv put k v"
echo "    ETCDCTL_API=3 etcdctl --endpoints https://127.0.0.1:${PORTS[0]} --cacert $DIR/n1/tls/ca.crt \\"
echo "        --cert $DIR/n1/tls/admin.crt --key $DIR/n1/tls/admin.key get k"
echo "Dashboard: https://127.0.0.1:${HTTP[0]}/ui/ (or ${HTTP[1]}, ${HTTP[2]}); the cluster's CA is $DIR/n1/tls/ca.crt,"
echo "    and the login token: $HTOKEN"
echo "DNS: dig @127.0.0.1 -p ${DNS[0]} masters.cluster.local"
echo "Logs: $DIR/n*.log. Press Ctrl-C to stop and clean up."
if [ -n "${CI:-}" ] || [ ! -t 0 ]; then exit 0; fi
wait
