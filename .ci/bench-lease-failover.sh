#!/usr/bin/env bash
# A lease's TTL across a leader kill, cluster vs etcd, measured the same way on both:
# grant a 30 s lease that nobody keeps alive, put a key on it, kill -9 the leader 20 s
# after the grant, and time (from the grant) until the key is gone on a survivor. etcd
# restarts every lease's countdown at an election (expect about 20 + 30 s); the
# cluster's new leader keeps what was left (expect about 30 s). Both through etcdctl.
set -euo pipefail
BIN=${1:-cluster}
TTL=${TTL:-30}
KILL_AT=${KILL_AT:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d /tmp/cluster-lease.XXXXXX)
source "$ROOT/.ci/systems.sh"

ctl() { # system endpoint(s) etcdctl-args…
  local sys=$1 eps=$2; shift 2
  local ca cert key
  if [ "$sys" = cluster ]; then
    ca=$DIR/c1/tls/ca.crt cert=$DIR/c1/tls/admin.crt key=$DIR/c1/tls/admin.key
  else
    ca=$DIR/etcd-pki/ca.crt cert=$DIR/etcd-pki/client.crt key=$DIR/etcd-pki/client.key
  fi
  ETCDCTL_API=3 etcdctl --endpoints "$(printf 'https://%s,' ${eps//,/ } | sed 's/,$//')" \
    --cacert "$ca" --cert "$cert" --key "$key" "$@"
}

measure() { # system eps
  local sys=$1 eps=$2 leader pid id t0 now survivor
  t0=$(date +%s.%N)
  id=$(ctl "$sys" "$eps" lease grant "$TTL" | awk '{print $2}')
  ctl "$sys" "$eps" put --lease="$id" lease-failover-key v >/dev/null
  leader=$(leader_of "$eps")
  pid=${PID_OF[$leader]}
  sleep "$(python3 -c "import time; print(max(0, $t0 + $KILL_AT - time.time()))")"
  kill -9 "$pid"
  wait "$pid" 2>/dev/null || true
  survivor=$(echo "$eps" | tr ',' '\n' | grep -v "^$leader$" | head -1)
  echo "  $sys: lease $id granted, leader $leader killed at ${KILL_AT} s; polling $survivor" >&2
  while :; do
    now=$(date +%s.%N)
    if [ -z "$(ctl "$sys" "$survivor" get lease-failover-key --consistency=s 2>/dev/null)" ]; then
      python3 -c "print(round($now - $t0, 2))"
      return
    fi
    if python3 -c "import sys; sys.exit(0 if $now - $t0 > 3 * $TTL else 1)"; then
      echo "  $sys: the key outlived $((3 * TTL)) s" >&2; echo nan; return
    fi
    sleep 0.05
  done
}

echo "== a ${TTL} s lease, no keepalive, the leader killed ${KILL_AT} s after the grant"
echo "== starting a 3-node cluster and a 3-member etcd ($(etcd --version | head -1))"
start_cluster
start_etcd
c=$(measure cluster "$CL_EPS")
e=$(measure etcd "$ET_EPS")
echo "cluster: the key was gone after $c s"
echo "etcd:    the key was gone after $e s"
python3 -c "print('etcd / cluster = %.2f; the TTL alone would give %d s' % ($e / $c, $TTL))" 2>/dev/null || true
