#!/usr/bin/env bash
# Fault-injection matrices (needs root: network namespaces and iptables).
#   .ci/jepsen.sh short   the CI matrix: a few minutes, every workload, canary must fail
#   .ci/jepsen.sh long [register|coordination|tasks|all]
#                         the 120 s 5-node matrices: register (issue #5, about 25 min),
#                         watch, lock, lease, election (issue #12, about 50 min) and tasks
#                         (issue #13, about 15 min), each nemesis alone, then with the
#                         canary; writes the table into docs/jepsen.md (default: all)
# Reports go to store/ci-<stamp>/ (one folder per run).
set -uo pipefail
cd "$(dirname "$0")/.."
T="${CARGO_TARGET_DIR:-$HOME/.cache/cluster-target}/release"
J="$T/jepsen-style-tests"
mode="${1:-short}"
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then
    J="sudo -n $J"
  else
    # Namespaces and iptables need root; say so loudly rather than fail the build.
    echo "jepsen: SKIPPED: fault injection needs root (network namespaces, iptables) and sudo -n is not available"
    exit 0
  fi
fi
stamp=$(date +%Y%m%dT%H%M%S)
store="store/$mode-$stamp"
mkdir -p "$store"
fail=0
dirs=()
# run NAME EXPECTED_EXIT ARGS...
run() {
  local name=$1 want=$2; shift 2
  $J run --bin "$T/cluster" --out "$store/$name" "$@" >"$store/$name.out" 2>&1
  local rc=$?
  dirs+=("$store/$name")
  local line; line=$(grep -E '^[a-z]+ × ' "$store/$name.out" | head -1)
  if [ "$rc" -eq "$want" ]; then
    echo "jepsen: ok   $name (exit $rc): $line"
  else
    echo "jepsen: FAIL $name: exit $rc, wanted $want: $line"; tail -20 "$store/$name.out"; fail=1
  fi
}
$J cleanup >/dev/null
case "$mode" in
  short)
    run register-partitions 0 --workload register --nemesis partition-majority,primaries --nodes 5 --time 30 --seed 1
    run register-kill-pause 0 --workload register --nemesis kill,pause --nodes 5 --time 30 --seed 2
    run set-kill 0 --workload set --nemesis kill,partition-one --nodes 3 --time 20 --seed 3
    run ipam-pause 0 --workload ipam --nemesis pause,partition-majority --nodes 3 --time 20 --seed 4
    run registry-leader 0 --workload registry --nemesis primaries,kill,pause --nodes 3 --time 30 --seed 5
    # The canary (leader-local reads without ReadIndex) must be caught: exit 1.
    run canary-primaries 1 --workload register --nemesis primaries --nodes 5 --time 30 --seed 6 --canary
    # The coordination workloads, each with its canary (which must be caught).
    run watch-kill-partition 0 --workload watch --nemesis kill,partition-majority --nodes 3 --time 25 --seed 8
    run lock-pause-primaries 0 --workload lock --nemesis pause,primaries --nodes 3 --time 25 --seed 9
    run lease-kill-primaries 0 --workload lease --nemesis kill,primaries --nodes 3 --time 25 --seed 10
    run election-kill-partition 0 --workload election --nemesis kill,partition-majority --nodes 3 --time 25 --seed 11
    run canary-watch-kill 1 --workload watch --nemesis kill --nodes 3 --time 20 --seed 12 --canary
    run canary-lock 1 --workload lock --nemesis kill --nodes 3 --time 20 --seed 13 --canary
    run canary-lease-kill 1 --workload lease --nemesis kill --nodes 3 --time 25 --seed 14 --canary
    run canary-election 1 --workload election --nemesis kill --nodes 3 --time 20 --seed 15 --canary
    # Services scaled through master and agent faults; the canary leaves replaced tasks running.
    run tasks-faults 0 --workload tasks --nemesis kill-agent,primaries,kill --nodes 3 --time 50 --seed 18
    run canary-tasks 1 --workload tasks --nemesis kill-agent --nodes 3 --time 30 --seed 16 --canary
    ;;
  long)
    part="${2:-all}"
    case "$part" in all|register|coordination|tasks) ;; *) echo "usage: $0 long [register|coordination|tasks|all]"; exit 2 ;; esac
    if [ "$part" = all ] || [ "$part" = register ]; then
      for n in partition-majority primaries kill pause; do
        run "register-$n" 0 --workload register --nemesis "$n" --nodes 5 --time 120 --seed 7
      done
      for n in partition-majority primaries kill pause; do
        # Only partitions and pauses can expose stale leader reads; a killed leader serves none.
        if [ "$n" = kill ]; then
          $J run --bin "$T/cluster" --out "$store/canary-$n" --workload register --nemesis "$n" --nodes 5 --time 120 --seed 7 --canary >"$store/canary-$n.out" 2>&1
          echo "jepsen: --   canary-$n (exit $?, no expectation): $(grep -E '^[a-z]+ × ' "$store/canary-$n.out")"
          dirs+=("$store/canary-$n")
        else
          run "canary-$n" 1 --workload register --nemesis "$n" --nodes 5 --time 120 --seed 7 --canary
        fi
      done
    fi
    if [ "$part" = all ] || [ "$part" = coordination ]; then
      for w in watch lock lease election; do
        for n in partition-majority primaries kill pause; do
          run "$w-$n" 0 --workload "$w" --nemesis "$n" --nodes 5 --time 120 --seed 7
        done
        # Each canary under kill: a killed master makes watchers resume and leaders
        # change (the lease canary needs a new leader; lock and election need none).
        run "canary-$w-kill" 1 --workload "$w" --nemesis kill --nodes 5 --time 120 --seed 7 --canary
      done
    fi
    if [ "$part" = all ] || [ "$part" = tasks ]; then
      for n in partition-majority primaries kill kill-agent pause; do
        run "tasks-$n" 0 --workload tasks --nemesis "$n" --nodes 5 --time 120 --seed 7
      done
      run canary-tasks-kill-agent 1 --workload tasks --nemesis kill-agent --nodes 5 --time 120 --seed 7 --canary
    fi
    ;;
  *) echo "usage: $0 short|long"; exit 2 ;;
esac
echo
$J table "${dirs[@]}" | tee "$store/table.md"
if [ "$mode" = long ] && [ "${2:-all}" = all ]; then
  # Replace the results section of docs/jepsen.md with this run's table.
  awk -v table="$store/table.md" -v when="$(date -u +%Y-%m-%d)" '
    /^## Results/ { print; print ""; print "`make jepsen-long` on " when " (seed 7, 5 masters, 120 s of faults then 10 s of liveness):"; print ""; while ((getline l < table) > 0) print l; skip=1; next }
    skip && /^## / { skip=0; print "" }
    !skip { print }' docs/jepsen.md >docs/jepsen.md.new && mv docs/jepsen.md.new docs/jepsen.md
fi
exit $fail
