//! The one read API of a node: [`ReadView`], a consistent view of the applied state
//! (memory and disk agree under the state lock), with typed queries over it. Services
//! read only through it, via [`crate::node::CoordNode::read`] (with the consistency they
//! need) or [`crate::node::CoordNode::view`] (this node's state as is).

use rocksdb::DB;

use crate::cluster::{CaRecord, ClusterMeta};
use crate::command::ApplyError;
use crate::error::{CoordError, Result};
use crate::ipam::{self, Holding, Ipam, IpamStore};
use crate::kv::types::{RangeRequest, RangeResponse};
use crate::kv::KvStore;
use crate::registry::Registry;
use crate::store::state_machine::ReadOnlyHistory;
use crate::store::{RocksIpam, SmState};

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Sees every write acknowledged before the read began (ReadIndex on the leader; a
    /// follower answers `NotLeader` so that the caller forwards).
    Linearizable,
    /// This node's applied state as is: may lag the leader, never goes backwards.
    Serializable,
}

/// The applied state, held consistent for the duration of a read.
pub struct ReadView<'a> {
    st: &'a SmState,
    db: &'a DB,
}

impl<'a> ReadView<'a> {
    pub(crate) fn new(st: &'a SmState, db: &'a DB) -> ReadView<'a> {
        ReadView { st, db }
    }

    /// The store revision (etcd's header revision).
    pub fn revision(&self) -> i64 {
        self.st.kv.revision
    }

    pub fn compact_revision(&self) -> i64 {
        self.st.kv.compact_revision
    }

    pub fn kv(&self) -> &KvStore {
        &self.st.kv
    }

    pub fn cluster(&self) -> &ClusterMeta {
        &self.st.cluster
    }

    /// The cluster CA, once `init` recorded it.
    pub fn ca(&self) -> Option<&CaRecord> {
        self.st.ca.as_ref()
    }

    /// Masters that left the cluster: their certificates are not honored.
    pub fn retired(&self) -> &std::collections::BTreeSet<crate::types::NodeId> {
        &self.st.retired
    }

    /// The CA record's digest (empty: none recorded).
    pub fn ca_digest(&self) -> &str {
        &self.st.ca_digest
    }

    pub fn registry(&self) -> &Registry {
        &self.st.registry
    }

    pub fn ipam(&self) -> &Ipam {
        &self.st.ipam
    }

    pub fn services(&self) -> &crate::services::Services {
        &self.st.services
    }

    pub fn jobs(&self) -> &crate::jobs::Jobs {
        &self.st.jobs
    }

    /// The HTTP face's bearer tokens (hashes only), by id.
    pub fn http_tokens(&self) -> &std::collections::BTreeMap<String, crate::cluster::HttpToken> {
        &self.st.http_tokens
    }

    /// The index of the last applied log entry (0 before any).
    pub fn last_applied_index(&self) -> u64 {
        self.st.last_applied.map_or(0, |l| l.index)
    }

    pub fn leases(&self) -> &crate::lease::Leases {
        &self.st.leases
    }

    /// An etcd Range, at the current revision (memory) or a past one (disk).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, ApplyError> {
        self.st.kv.range(req, &mut ReadOnlyHistory(self.db))
    }

    /// The IPAM owner records, read-only (the leak check reads through it).
    pub fn ipam_store(&self) -> impl IpamStore + 'a {
        RocksIpam::read_only(self.db)
    }

    /// Up to `limit` allocations of `network` as (owner, holding), in owner order.
    pub fn ipam_allocations(&self, network: &str, limit: usize) -> Result<Vec<(String, Holding)>> {
        let prefix = ipam::keys::owners_prefix(network);
        let rows = RocksIpam::read_only(self.db)
            .scan(&prefix, limit)
            .map_err(|e| CoordError::Internal(format!("reading IPAM allocations: {e}")))?;
        rows.into_iter()
            .map(|(k, v)| {
                let h: Holding = crate::codec::decode(&v)
                    .map_err(|e| CoordError::Internal(format!("corrupt IPAM owner record: {e}")))?;
                Ok((String::from_utf8_lossy(&k[prefix.len()..]).into_owned(), h))
            })
            .collect()
    }

    /// Bytes the node's RocksDB holds on disk and in memtables, all column families.
    pub fn storage_size_bytes(&self) -> u64 {
        crate::store::size_bytes(self.db)
    }
}
