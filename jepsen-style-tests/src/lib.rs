//! jepsen-style-tests: fault-injection runs against real multi-process clusters, with our
//! own linearizability checker.
//!
//! - [`net`]: network namespaces, veth, bridge, iptables partitions, cleanup.
//! - [`cluster`]: `cluster` processes in the namespaces and the process-level faults.
//! - [`schedule`]: the seeded fault plan (same seed, same plan).
//! - [`workload`]: clients for register, set, ipam, registry and the watch workload's
//!   writers; ok/fail/info rules.
//! - [`coordination`]: the watch, lock, lease and election workloads' own clients
//!   (watchers, lock holders, lease keepers, campaigners, observers) and the committed
//!   history their checkers compare with.
//! - [`history`]: the JSON-lines history (format in docs/jepsen.md).
//! - [`checker`]: Wing-Gong/Lowe linearizability per key, and the set, ipam, registry,
//!   watch, lock, lease and election checkers.
//! - [`run`] and [`report`]: one run end to end, summary.json and the latency plot.

pub mod checker;
pub mod cluster;
pub mod coordination;
pub mod history;
pub mod net;
pub mod report;
pub mod run;
pub mod schedule;
pub mod tasks;
pub mod workload;
