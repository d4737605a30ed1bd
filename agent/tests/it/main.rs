//! Multi-process tests of the `cluster` binary: real processes, real sockets, kill -9.
//! Run them one at a time (`--test-threads=1`): they time leader elections.

mod harness;
mod t10_etcd_api;
mod t20_failover;
mod t30_bad_input;
mod t40_membership;
mod t50_registry;
mod t60_ipam;
mod t70_backup;
mod t80_security;
mod t90_watch;
mod t91_lease;
mod t92_lock;
mod t93_tasks;
mod t94_jobs;
mod t95_http;
mod t96_discovery;
mod t97_dashboard;
