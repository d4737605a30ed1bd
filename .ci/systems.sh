# Shared by the benchmark scripts: a local 3-node cluster and a 3-member etcd (Debian's
# etcd-server), both with TLS everywhere, on fixed loopback ports. Source it after
# setting BIN (the cluster binary) and DIR (a scratch directory): on exit, Ctrl-C or
# SIGTERM it kills every process it started (PIDS) and removes DIR.
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT INT TERM
# Below 32768: ports in the ephemeral range can be taken by any outgoing connection.
CL=(127.0.0.1:21379 127.0.0.1:21380 127.0.0.1:21381)
ET=(127.0.0.1:31379 127.0.0.1:31479 127.0.0.1:31579)
ETP=(127.0.0.1:31380 127.0.0.1:31480 127.0.0.1:31580)
CL_EPS=$(IFS=,; echo "${CL[*]}")
ET_EPS=$(IFS=,; echo "${ET[*]}")
ET_HTTPS=$(printf 'https://%s,' "${ET[@]}"); ET_HTTPS=${ET_HTTPS%,}
declare -A PID_OF

start_cluster() {
  "$BIN" init --data-dir "$DIR/c1" --listen "${CL[0]}" >"$DIR/c1.log" 2>&1 &
  PIDS+=($!); PID_OF[${CL[0]}]=$!
  export CLUSTER_DATA_DIR="$DIR/c1" # the admin credential: every client connection is mutual TLS
  local tok=""
  for _ in $(seq 100); do tok=$("$BIN" token manager -q --endpoints "${CL[0]}" 2>/dev/null) && break; sleep 0.1; done
  for i in 1 2; do
    "$BIN" join --data-dir "$DIR/c$((i+1))" --listen "${CL[$i]}" --token "$tok" "${CL[0]}" >"$DIR/c$((i+1)).log" 2>&1 &
    PIDS+=($!); PID_OF[${CL[$i]}]=$!
  done
  for _ in $(seq 150); do
    [ "$("$BIN" members --endpoints "$CL_EPS" -o json 2>/dev/null | grep -c '"voter"')" = 3 ] && return 0; sleep 0.2
  done
  echo "cluster did not form; node logs:" >&2; tail -n 20 "$DIR"/c*.log >&2; exit 1
}

# etcd with TLS everywhere, as the cluster has: a CA of its own (openssl), one
# certificate per member for clients and peers (ECDSA P-256, as the cluster's), client
# certificates required on both.
etcd_pki() {
  local d=$DIR/etcd-pki
  mkdir -p "$d"
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$d/ca.key" -subj "/CN=bench etcd CA" -days 2 -out "$d/ca.crt" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >"$d/ext"
  for n in member client; do
    openssl ecparam -name prime256v1 -genkey -noout -out "$d/$n.key.ec" 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in "$d/$n.key.ec" -out "$d/$n.key"
    openssl req -new -key "$d/$n.key" -subj "/CN=$n" -out "$d/$n.csr" 2>/dev/null
    openssl x509 -req -in "$d/$n.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
      -extfile "$d/ext" -out "$d/$n.crt" 2>/dev/null
  done
}

start_etcd() {
  etcd_pki
  local d=$DIR/etcd-pki init=""
  for i in 0 1 2; do init+="e$i=https://${ETP[$i]},"; done
  for i in 0 1 2; do
    etcd --name "e$i" --data-dir "$DIR/e$i" \
      --listen-client-urls "https://${ET[$i]}" --advertise-client-urls "https://${ET[$i]}" \
      --listen-peer-urls "https://${ETP[$i]}" --initial-advertise-peer-urls "https://${ETP[$i]}" \
      --initial-cluster "${init%,}" --initial-cluster-state new --initial-cluster-token bench \
      --cert-file "$d/member.crt" --key-file "$d/member.key" --client-cert-auth --trusted-ca-file "$d/ca.crt" \
      --peer-cert-file "$d/member.crt" --peer-key-file "$d/member.key" --peer-client-cert-auth \
      --peer-trusted-ca-file "$d/ca.crt" \
      >"$DIR/e$i.log" 2>&1 &
    PIDS+=($!); PID_OF[${ET[$i]}]=$!
  done
  for _ in $(seq 150); do
    ETCDCTL_API=3 etcdctl --endpoints "$ET_HTTPS" --cacert "$d/ca.crt" --cert "$d/client.crt" --key "$d/client.key" \
      endpoint health >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "etcd did not form; member logs:" >&2; tail -n 20 "$DIR"/e*.log >&2; exit 1
}

# The credential each system's load presents: the cluster's admin credential (found
# through CLUSTER_DATA_DIR), or etcd's client certificate.
pt() { if [ "$1" = "$ET_EPS" ]; then echo --cacert "$DIR/etcd-pki/ca.crt" --cert "$DIR/etcd-pki/client.crt" --key "$DIR/etcd-pki/client.key"; fi; }

leader_of() { # eps -> address of the leader, via Maintenance.Status as the bench sees it
  # shellcheck disable=SC2046
  "$BIN" bench get --endpoints "$1" $(pt "$1") --clients 1 --duration 0.2 -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["targets"][0])'
}

