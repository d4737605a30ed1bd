//! jepsen-style-tests: fault-injection runs against real multi-process clusters, with our
//! own linearizability checker.
//!
//! - [`net`]: network namespaces, veth, bridge, iptables partitions, cleanup.
//! - [`cluster`]: `cluster` processes in the namespaces and the process-level faults.
//! - [`schedule`]: the seeded fault plan (same seed, same plan).
//! - [`workload`]: clients for register, set, ipam and registry; ok/fail/info rules.
//! - [`history`]: the JSON-lines history (format in docs/jepsen.md).
//! - [`checker`]: Wing-Gong/Lowe linearizability per key, and the set, ipam and registry
//!   checkers.
//! - [`run`] and [`report`]: one run end to end, summary.json and the latency plot.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod net;
pub mod report;
pub mod run;
pub mod schedule;
pub mod workload;
