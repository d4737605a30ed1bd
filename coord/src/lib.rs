//! coord: the consensus coordination service embedded in every master.
//!
//! State-machine areas, pure (no RocksDB, no clock, no randomness):
//! - [`kv`]: the etcd-style multi-version KV;
//! - [`registry`]: the master registry (agents, resources, liveness state, events);
//! - [`ipam`]: overlay network address allocation (pools, cursors, quarantine);
//! - [`lease`]: etcd leases (TTLs, checkpoints; their keys are in [`kv`]);
//! - [`services`]: services, deployments and tasks; [`jobs`]: scheduled and dependent
//!   jobs, whose runs are tasks of the services area;
//! - [`cluster`]: the cluster's identity and node-id allocation;
//! - [`command`]: the one `Command` enum that is the Raft log payload;
//! - [`codec`]: value and key encodings, below everything else.
//!
//! Around them:
//! - [`store`]: RocksDB log store and state machine (durability rules in its docs);
//! - [`node`]: a running node and the one service path: the read API ([`read`]) and the
//!   write path;
//! - [`leader`]: the duties that run while this node leads; [`liveness`]: its heartbeat
//!   tracker; [`lessor`]: its lease countdown, and every node's clock of applied entries;
//! - [`watch`]: etcd watch streams, served from this node's applied state; [`recipes`]:
//!   etcd's lock and election, run by the master;
//! - [`network`]: Raft RPCs between masters over gRPC;
//! - [`grpc`]: the services a node serves (etcd v3, Raft, cluster admin, registry, IPAM);
//! - [`token`]: join token format; [`config`]: tunables; [`error`]: errors.

// The bans in clippy.toml are for state-machine code: those modules deny them in their
// headers. Elsewhere (the leader's memory, services, the network) clocks and hash maps
// are fine.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

pub mod certs;
pub mod cluster;
pub mod codec;
pub mod command;
pub mod config;
pub mod dns;
pub mod error;
pub mod grpc;
pub mod http;
pub mod http_token;
pub mod ipam;
pub mod jobs;
pub mod kv;
pub mod leader;
pub mod lease;
pub mod lessor;
pub mod liveness;
pub mod metrics;
pub mod network;
pub mod node;
pub mod read;
pub mod recipes;
pub mod registry;
pub mod scheduler;
pub mod services;
pub mod store;
pub mod token;
pub mod types;
pub mod watch;

pub use config::CoordConfig;
pub use error::CoordError;
pub use node::{CoordNode, InitSecrets, NodeOptions};
