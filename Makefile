# The single entry point. Every target installs what it needs first (.ci/install-deps).
# One shared target dir keeps librocksdb-sys compiled across runs and checkouts.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/cluster-target
BIN := $(CARGO_TARGET_DIR)/release/cluster

.PHONY: deps build demo test bench bench-scheduler bench-compare bench-lease-failover bench-agents bench-ipam bench-snapshot jepsen-deps jepsen-short jepsen-long fmt clippy

deps:
	bash .ci/install-deps --jepsen

build: deps
	cargo build --release --locked --bin cluster

## A local 3-master cluster you can watch: init, two joins, writes, a leader kill.
demo: build
	bash .ci/demo.sh "$(BIN)"

## Every test. The multi-process tests run one at a time because they time elections.
test: deps
	cargo fmt --all -- --check
	cargo clippy --release --locked --workspace --all-targets -- -D warnings
	cargo build --release --locked --workspace --all-targets
	cargo test --release --locked --workspace --exclude agent
	cargo test --release --locked -p agent -- --test-threads=1
	bash .ci/jepsen.sh short

## Fault-injection tools only (iptables, faketime, iproute2).
jepsen-deps:
	bash .ci/install-deps --jepsen

## The CI fault-injection matrix alone (a few minutes; needs root).
jepsen-short: jepsen-deps
	cargo build --release --locked -p agent -p jepsen-style-tests
	bash .ci/jepsen.sh short

## The long matrices on 5 masters, 120 s per nemesis (partition-majority, primaries,
## kill, pause), each with its canary: register, then watch, lock, lease and election,
## then tasks (also kill-agent). PART=register, coordination or tasks runs one;
## PART=all writes docs/jepsen.md's results.
PART ?= all
jepsen-long: jepsen-deps
	cargo build --release --locked -p agent -p jepsen-style-tests
	bash .ci/jepsen.sh long $(PART)

## cluster vs etcd (Debian's etcd-server) on this machine, then the HTTP face's cost to
## writes (plain vs scraped); writes docs/benchmarks.md.
bench:
	bash .ci/install-deps --bench
	cargo build --release --locked --bin cluster
	bash .ci/bench.sh "$(BIN)"
	bash .ci/bench-http.sh "$(BIN)"

## Registry scale: 1k-15k emulated agents against a 3-master cluster, leader killed
## mid-run; writes the "Registry scale" section of docs/benchmarks.md.
## A 30 s lease with the leader killed at 20 s: when it expires, cluster vs etcd.
bench-lease-failover:
	bash .ci/install-deps --bench
	cargo build --release --locked --bin cluster
	bash .ci/bench-lease-failover.sh "$(BIN)"

## Placement: scheduler-core alone, 100,000 tasks onto 10,000 agents (placements/s,
## peak memory), then end to end: a 3-master cluster, 10,000 emulated agents that
## acknowledge their tasks, 100,000 tasks (placements committed/s, time until all run,
## leader CPU; writes the "Placement end to end" section of docs/benchmarks.md).
bench-scheduler:
	cargo run --release --locked -p scheduler-core --example bench
	bash .ci/install-deps
	cargo build --release --locked --bin cluster
	bash .ci/bench-tasks.sh "$(BIN)"

bench-agents:
	bash .ci/install-deps
	cargo build --release --locked --bin cluster
	bash .ci/bench-agents.sh "$(BIN)"

## IPAM: single and batched allocations/s through a 3-master cluster, then a /8 filled
## and 1M allocations in a /64 with the leader's memory; writes the "IPAM" section.
bench-ipam:
	bash .ci/install-deps
	cargo build --release --locked --bin cluster
	bash .ci/bench-ipam.sh "$(BIN)"

## This build against git revision REV (default: the parent commit), side by side: the
## same loads on a 3-node cluster of each, alternating rounds, medians and ratios.
REV ?= HEAD~1
bench-compare:
	bash .ci/install-deps
	cargo build --release --locked --bin cluster
	bash .ci/bench-compare.sh "$$(bash .ci/build-rev.sh $(REV))" "$(BIN)" "$(REV)" "this build"

## Snapshot memory: a /8 of IP allocations, then a fourth master catches up by snapshot;
## peak memory of the leader and the new master above steady state. Writes the
## "Snapshot memory" section of docs/benchmarks.md (about 15 minutes).
bench-snapshot:
	bash .ci/install-deps
	cargo build --release --locked --bin cluster
	bash .ci/bench-snapshot.sh "$(BIN)"

fmt:
	cargo fmt --all

clippy:
	cargo clippy --release --locked --workspace --all-targets -- -D warnings
