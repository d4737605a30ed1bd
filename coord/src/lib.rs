//! coord: the consensus coordination service embedded in every master.
//!
//! - [`store`]: RocksDB log store and state machine (durability rules in its docs);
//! - [`kv`]: the etcd-style multi-version KV applied by the state machine;
//! - [`registry`]: the master registry (agents, resources, liveness state, events);
//! - [`ipam`]: overlay network address allocation (pools, cursors, quarantine);
//! - [`liveness`]: the leader's in-memory heartbeat tracker that commits transitions;
//! - [`command`]: the one `Command` enum that is the Raft log payload;
//! - [`network`]: Raft RPCs between masters over gRPC;
//! - [`grpc`]: the services a node serves (etcd v3, Raft, cluster admin);
//! - [`node`]: wiring: a running node, its write path and read barrier;
//! - [`token`]: join token format; [`config`]: tunables; [`error`]: errors.

pub mod command;
pub mod config;
pub mod error;
pub mod grpc;
pub mod ipam;
pub mod kv;
pub mod liveness;
pub mod network;
pub mod node;
pub mod registry;
pub mod store;
pub mod token;
pub mod types;

pub use config::CoordConfig;
pub use error::CoordError;
pub use node::{CoordNode, InitSecrets, NodeOptions};
