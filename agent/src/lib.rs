//! The agent library behind the `cluster` binary: running a node, the agent session,
//! and the benchmarks. Client calls live in the `client` crate; the binary
//! (`src/bin/cluster/`) only parses arguments, calls this library or `client`, and prints.
//!
//! - [`daemon`]: `init`, `join` and `start`: one foreground process per node;
//! - [`backup`]: `snapshot save|inspect|restore` and `recover`: backup, restore and
//!   quorum-loss recovery;
//! - [`session`]: the agent's registration and heartbeat session, following the leader;
//! - [`resources`]: what the machine offers, and label parsing;
//! - [`tasks`]: the task runner: processes in cgroups, sandboxes, health checks, reports;
//! - [`bench`]: `cluster bench …`: etcd v3 load, emulated agents, IPAM rates;
//! - [`output`]: the output format and table/JSON printing shared with the binary.

pub mod backup;
pub mod bench;
pub mod credentials;
pub mod daemon;
pub mod output;
pub mod renewal;
pub mod resources;
pub mod session;
pub mod tasks;
