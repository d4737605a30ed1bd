//! Offline operations on a stopped node's data dir (the node must not be running: RocksDB
//! holds a lock on its directory):
//! - [`restore`]: a new one-node cluster from a snapshot file;
//! - [`recover`]: a surviving master of a cluster that lost quorum for good becomes the
//!   single voter of its cluster, keeping its data.
//!
//! Both end the same way: the state machine holds everything, the membership is this node
//! alone, the log is empty and purged through the last applied entry, and a snapshot file
//! of that state is in place, so that masters joining later catch up from it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::storage::RaftStateMachine;
use openraft::vote::RaftLeaderId;
use openraft::Membership;
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};

use super::log_store::{KEY_PURGED, KEY_VOTE};
use super::snapshot::{self, Summary};
use super::state_machine::KEY_MEMBERSHIP;
use super::{open_db, sm_cf, StateMachineStore, CF_LOG, CF_RAFT_META};
use crate::cluster::ClusterMeta;
use crate::codec::{decode, encode};
use crate::types::{Entry, LogId, NodeId, NodeInfo, StoredMembership, Vote};

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("{0}")]
    Refused(String),
    #[error("cannot open the data dir (is the node still running?): {0}")]
    Open(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

type Result<T> = std::result::Result<T, OfflineError>;

/// This node, as the new single voter.
#[derive(Debug, Clone)]
pub struct Voter {
    pub node_id: NodeId,
    pub info: NodeInfo,
}

/// What a restore or recovery produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The single voter's node id.
    pub node_id: NodeId,
    /// The last log id the state reflects; the new log continues after it.
    pub last_log_id: Option<LogId>,
    /// Log entries applied from the local log (recovery only).
    pub applied_from_log: u64,
    pub revision: i64,
    /// The snapshot file now in place.
    pub snapshot: Summary,
}

/// Progress callbacks: (what, count so far).
pub type Progress<'a> = &'a (dyn Fn(&str, u64) + Sync);

fn open(data_dir: &Path) -> Result<std::sync::Arc<DB>> {
    open_db(&data_dir.join("db")).map_err(|e| OfflineError::Open(e.to_string()))
}

/// Builds a one-node cluster in `data_dir` (which must not hold a node yet) from the
/// snapshot `file`, under a new identity `cluster` (id and join secrets): the state of the
/// snapshot's revision, with this node as the only member. The node gets the next id the
/// snapshot's cluster would have handed out, so no id means two nodes.
pub async fn restore(
    file: &Path,
    data_dir: &Path,
    info: NodeInfo,
    cluster: ClusterMeta,
    progress: Progress<'_>,
) -> Result<Outcome> {
    if data_dir.join("db").exists() {
        return Err(OfflineError::Refused(format!(
            "{} already holds a node; restore into an empty data dir",
            data_dir.display()
        )));
    }
    progress("verifying the snapshot file", 0);
    let (meta, summary) = snapshot::verify(file)?;
    progress("verified records", summary.records);
    std::fs::create_dir_all(data_dir)?;
    let db = open(data_dir)?;
    let snap_dir = data_dir.join("snapshot");
    std::fs::create_dir_all(&snap_dir)?;
    progress("installing records", 0);
    snapshot::stage(&db, &snap_dir, &meta, snapshot::open_data(file)?)?;
    snapshot::apply_staged(&db, &snap_dir)?;
    progress("installed records", summary.records);
    let old: ClusterMeta = match db.get_cf(sm_cf(&db), crate::cluster::KEY).map_err(super::io_err)? {
        Some(b) => ClusterMeta::decode(&b)?,
        None => ClusterMeta::default(),
    };
    // Ids stay unique across the old and the new cluster's records.
    let node_id = old.next_node_id.max(2);
    let cluster = ClusterMeta { next_node_id: node_id + 1, ..cluster };
    let me = Voter { node_id, info };
    force_single_voter(&db, &snap_dir, &me, meta.last_log_id, Some(&cluster), 0, progress)
}

/// Makes the master in `data_dir` the single voter of its cluster, keeping its data:
/// entries in its log that were not applied yet are applied first (a write acknowledged
/// by the old quorum may be in this log without this node having learned it was
/// committed), then the membership is forced to this node alone.
pub async fn recover(data_dir: &Path, me: Voter, progress: Progress<'_>) -> Result<Outcome> {
    if !data_dir.join("db").exists() {
        return Err(OfflineError::Refused(format!("{} holds no node", data_dir.display())));
    }
    let db = open(data_dir)?;
    let snap_dir = data_dir.join("snapshot");
    let mut sm = StateMachineStore::new(db.clone(), snap_dir.clone())?;
    let (applied, membership) = sm.applied_state().await?;
    if membership.membership().get_node(&me.node_id).is_none() {
        return Err(OfflineError::Refused(format!(
            "node {} is not a member of the cluster this data dir last saw (members: {:?})",
            me.node_id,
            membership.membership().nodes().map(|(id, _)| *id).collect::<Vec<_>>()
        )));
    }
    let purged: Option<LogId> =
        match db.get_cf(db.cf_handle(CF_RAFT_META).expect("cf"), KEY_PURGED).map_err(super::io_err)? {
            Some(b) => decode(&b)?,
            None => None,
        };
    let from =
        applied.as_ref().map(|l| l.index + 1).unwrap_or(0).max(purged.as_ref().map(|l| l.index + 1).unwrap_or(0));
    let mut last = applied;
    let mut n = 0u64;
    let mut batch: Vec<Entry> = Vec::new();
    let start = crate::codec::u64_key(from);
    let cf_log = db.cf_handle(CF_LOG).expect("log column family");
    for item in db.iterator_cf(cf_log, IteratorMode::From(&start, rocksdb::Direction::Forward)) {
        let (_, v) = item.map_err(super::io_err)?;
        let e: Entry = decode(&v)?;
        last = Some(e.log_id);
        batch.push(e);
        if batch.len() == 1024 {
            n += apply_entries(&mut sm, std::mem::take(&mut batch)).await?;
            progress("applied log entries", n);
        }
    }
    n += apply_entries(&mut sm, batch).await?;
    progress("applied log entries", n);
    drop(sm);
    force_single_voter(&db, &snap_dir, &me, last, None, n, progress)
}

async fn apply_entries(sm: &mut StateMachineStore, entries: Vec<Entry>) -> Result<u64> {
    let n = entries.len() as u64;
    if n > 0 {
        let s = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
        sm.apply(s).await?;
    }
    Ok(n)
}

/// Membership {me} at `last`, the log emptied and purged through `last`, a vote for me
/// in `last`'s term (or the vote's, if later), an optional new identity, and a fresh
/// snapshot file of the result.
fn force_single_voter(
    db: &DB,
    snap_dir: &Path,
    me: &Voter,
    last: Option<LogId>,
    cluster: Option<&ClusterMeta>,
    applied_from_log: u64,
    progress: Progress<'_>,
) -> Result<Outcome> {
    let Some(last) = last else {
        return Err(OfflineError::Refused("the data dir has no applied state to start from".into()));
    };
    let meta_cf = db.cf_handle(CF_RAFT_META).expect("raft_meta column family");
    let old_vote: Option<Vote> = match db.get_cf(meta_cf, KEY_VOTE).map_err(super::io_err)? {
        Some(b) => decode(&b)?,
        None => None,
    };
    let term = last.committed_leader_id().term().max(old_vote.map(|v| v.leader_id().term()).unwrap_or(0));
    let members: BTreeSet<NodeId> = [me.node_id].into();
    let nodes: BTreeMap<NodeId, NodeInfo> = [(me.node_id, me.info.clone())].into();
    let membership =
        Membership::new(vec![members], nodes).map_err(|e| OfflineError::Refused(format!("membership: {e}")))?;
    let stored = StoredMembership::new(Some(last), membership);
    let mut batch = WriteBatch::default();
    let sm = sm_cf(db);
    batch.put_cf(sm, KEY_MEMBERSHIP, encode(&stored)?);
    batch.put_cf(sm, super::state_machine::KEY_APPLIED, encode(&Some(last))?);
    if let Some(c) = cluster {
        batch.put_cf(sm, crate::cluster::KEY, c.encode());
    }
    let cf_log = db.cf_handle(CF_LOG).expect("log column family");
    batch.delete_range_cf(cf_log, crate::codec::u64_key(0).as_slice(), [0xffu8; 9].as_slice());
    batch.put_cf(meta_cf, KEY_PURGED, encode(&last)?);
    batch.put_cf(meta_cf, KEY_VOTE, encode(&Vote::new(term, me.node_id))?);
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(batch, &wo).map_err(super::io_err)?;
    progress("building the snapshot", 0);
    // Joiners catch up from this file: the log behind it is gone.
    let view = db.snapshot();
    let (_, summary) = snapshot::build(db, &view, snap_dir)?;
    drop(view);
    let revision = match db.get_cf(sm, b"m/revision").map_err(super::io_err)? {
        Some(b) => crate::codec::key_u64(&b) as i64,
        None => 0,
    };
    progress("snapshot records", summary.records);
    Ok(Outcome { node_id: me.node_id, last_log_id: Some(last), applied_from_log, revision, snapshot: summary })
}

/// The members the data dir last saw, as (id, info, is voter); for checking, before a
/// recovery, whether a quorum of them can still be reached.
pub fn members(data_dir: &Path) -> Result<Vec<(NodeId, NodeInfo, bool)>> {
    let db = open(data_dir)?;
    let stored: StoredMembership = match db.get_cf(sm_cf(&db), KEY_MEMBERSHIP).map_err(super::io_err)? {
        Some(b) => decode(&b)?,
        None => StoredMembership::default(),
    };
    // Membership entries in the log not applied yet are newer than the stored one.
    let mut membership = stored.membership().clone();
    let cf_log = db.cf_handle(CF_LOG).expect("log column family");
    for item in db.iterator_cf(cf_log, IteratorMode::Start) {
        let (_, v) = item.map_err(super::io_err)?;
        if let openraft::EntryPayload::Membership(m) = decode::<Entry>(&v)?.payload {
            membership = m;
        }
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    Ok(membership.nodes().map(|(id, n)| (*id, n.clone(), voters.contains(id))).collect())
}
