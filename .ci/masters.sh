# Sourced by the benchmark scripts: a local cluster of --no-worker masters.
# Needs BIN (the cluster binary) and CL (an array of listen addresses, the first one
# runs `init`); sets EPS and PIDS. start_masters DIR forms the cluster in DIR and waits
# until every master votes; stop_masters kills them all. MASTER_ARGS (optional) is added to
# every init and join. Exports CLUSTER_DATA_DIR (the first master's data dir), where
# client commands find the admin credential.
EPS=$(IFS=,; echo "${CL[*]}")
PIDS=()

start_masters() { # data-dir
  local d=$1 n=${#CL[@]}
  # shellcheck disable=SC2086
  "$BIN" init --no-worker ${MASTER_ARGS:-} --data-dir "$d/c1" --listen "${CL[0]}" >"$d/c1.log" 2>&1 &
  PIDS+=($!)
  # Client commands connect with the admin credential init writes there (mutual TLS).
  export CLUSTER_DATA_DIR="$d/c1"
  local tok=""
  for _ in $(seq 100); do tok=$("$BIN" token manager -q --endpoints "${CL[0]}" 2>/dev/null) && break; sleep 0.1; done
  for ((i = 1; i < n; i++)); do
    # shellcheck disable=SC2086
    "$BIN" join --no-worker ${MASTER_ARGS:-} --data-dir "$d/c$((i+1))" --listen "${CL[$i]}" --token "$tok" "${CL[0]}" \
      >"$d/c$((i+1)).log" 2>&1 &
    PIDS+=($!)
  done
  for _ in $(seq 150); do
    [ "$("$BIN" members --endpoints "$EPS" -o json 2>/dev/null | grep -c '"voter"')" = "$n" ] && return 0; sleep 0.2
  done
  echo "cluster did not form; node logs:" >&2; tail -n 20 "$d"/c*.log >&2; exit 1
}

stop_masters() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}
