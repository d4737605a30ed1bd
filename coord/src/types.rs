//! The openraft type configuration: what a log entry carries and what applying it returns.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{Command, Response};

/// What the Raft log stores for a member: how to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// host:port where the node serves gRPC (Raft, cluster admin and etcd API).
    pub addr: String,
    /// Human-readable name, defaults to the node id.
    pub name: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// The Raft log payload: one command, stamped with the leader's clock.
///
/// Every time-dependent decision in apply (TTLs, lease expiry, liveness deadlines)
/// compares against `time_ms`, never against the local clock, so that all members
/// reach the same state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Leader wall clock in milliseconds since the Unix epoch when the entry was proposed.
    pub time_ms: u64,
    pub cmd: Command,
}

impl fmt::Display for LogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}ms", self.cmd.name(), self.time_ms)
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(_) => write!(f, "ok@rev{}", self.revision),
            Err(e) => write!(f, "err({e})@rev{}", self.revision),
        }
    }
}

openraft::declare_raft_types!(
    /// openraft types for cluster's coordination log.
    pub TypeConfig:
        D = LogEntry,
        R = Response,
        Node = NodeInfo,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig, crate::store::StateMachineStore>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot's bytes: an open file in the layout of `store::snapshot`, read in chunks
/// when sent or installed, never loaded whole.
#[derive(Debug)]
pub struct SnapshotData {
    pub file: std::fs::File,
    pub size_bytes: u64,
}
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
