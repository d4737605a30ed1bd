//! The one `Command` enum that is the Raft log payload, and what applying it returns.
//!
//! Each state-machine area owns its commands' semantics: KV commands are applied by
//! [`crate::kv`], registry commands by [`crate::registry`], service and task commands by
//! [`crate::services`], cluster commands by
//! [`crate::store::state_machine`].

// State-machine code: deterministic on every member (see coord/clippy.toml).
#![deny(clippy::disallowed_types, clippy::disallowed_methods)]

use serde::{Deserialize, Serialize};

use crate::cluster::{CaRecord, HttpTokenCommand};
use crate::ipam::{IpamCommand, IpamError, IpamOutput};
use crate::jobs::{JobCommand, JobsError, JobsOutput};
use crate::kv::types::{DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse};
use crate::lease::{LeaseCommand, LeaseOutput};
use crate::registry::{RegistryCommand, RegistryError, RegistryOutput};
use crate::services::{ServiceCommand, ServicesError, ServicesOutput};
use crate::types::NodeId;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// First entry after `initialize`: the cluster's identity and join secrets.
    InitCluster {
        cluster_id: String,
        manager_secret: String,
        worker_secret: String,
    },
    /// Hands out the next node id. Ids are never reused, even if the join fails later.
    AllocNodeId {
        addr: String,
    },
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    /// Discards history below `revision`, at most `max_revisions` revisions per entry.
    Compact {
        revision: i64,
    },
    /// Master registry: registrations, liveness transitions, drain, removal.
    Registry(RegistryCommand),
    /// Overlay network IPAM: networks, allocations, releases.
    Ipam(IpamCommand),
    /// Records the cluster CA, compare-and-set on the current record's digest
    /// (`CaRecord::record_digest`; empty: none).
    SetCa {
        prev_digest: String,
        record: CaRecord,
    },
    /// Replaces the join secret of `role` ("manager" or "worker"); the leader drew it.
    SetJoinSecret {
        role: String,
        secret: String,
    },
    /// Records that master `node_id` left the Raft group (proposed once the membership
    /// change committed): its certificate is refused from then on.
    RetireMaster {
        node_id: NodeId,
    },
    /// etcd leases: grant, revoke, and the leader's expiries and checkpoints.
    Lease(LeaseCommand),
    /// Services, deployments and tasks: users' changes, the leader's placements and
    /// kills, agents' status updates.
    Services(ServiceCommand),
    /// Jobs: users' changes and runs, the leader's ticks (which decide due instants) and
    /// placements.
    Jobs(JobCommand),
    /// Bearer tokens of the HTTP face: issued (only the hash) and revoked.
    HttpToken(HttpTokenCommand),
}

impl Command {
    /// Short name for logs and traces.
    pub fn name(&self) -> &'static str {
        match self {
            Command::InitCluster { .. } => "init_cluster",
            Command::AllocNodeId { .. } => "alloc_node_id",
            Command::Put(_) => "put",
            Command::DeleteRange(_) => "delete_range",
            Command::Txn(_) => "txn",
            Command::Compact { .. } => "compact",
            Command::Registry(r) => r.name(),
            Command::Ipam(c) => c.name(),
            Command::SetCa { .. } => "set_ca",
            Command::SetJoinSecret { .. } => "set_join_secret",
            Command::RetireMaster { .. } => "retire_master",
            Command::Lease(c) => c.name(),
            Command::Services(c) => c.name(),
            Command::Jobs(c) => c.name(),
            Command::HttpToken(HttpTokenCommand::Issue(_)) => "http_token_issue",
            Command::HttpToken(HttpTokenCommand::Revoke { .. }) => "http_token_revoke",
        }
    }
}

/// What applying a [`Command`] produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The store revision after the entry was applied.
    pub revision: i64,
    pub result: Result<Output, ApplyError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Output {
    Unit,
    NodeId(NodeId),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Registry(RegistryOutput),
    Ipam(IpamOutput),
    Lease(LeaseOutput),
    Services(ServicesOutput),
    Jobs(JobsOutput),
}

/// Deterministic refusals: every member reaches the same verdict for the same entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: request is too large")]
    TooLarge,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("cluster already initialized")]
    AlreadyInitialized,
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Ipam(IpamError),
    #[error("{0}")]
    Other(String),
    /// Reading the node's own storage failed. Not a verdict on the request: apply stops
    /// the node rather than answer differently from the other members.
    #[error("storage error: {0}")]
    Storage(String),
    /// `SetCa` named a CA that is no longer current (a rotation or init already applied).
    #[error("the cluster CA changed meanwhile")]
    CaChanged,
    #[error("unknown token role {0:?}: use manager or worker")]
    UnknownTokenRole(String),
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error(transparent)]
    Services(ServicesError),
    #[error(transparent)]
    Jobs(JobsError),
}
