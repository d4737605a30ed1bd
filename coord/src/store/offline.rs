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
use super::{get_decoded, open_db, sm_cf, StateMachineStore, CF_LOG, CF_RAFT_META};
use crate::cluster::{CaRecord, ClusterMeta};
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
/// snapshot's cluster would have handed out, so no id means two nodes; an empty
/// `info.name` becomes `node-<id>`.
pub async fn restore(
    file: &Path,
    data_dir: &Path,
    info: NodeInfo,
    cluster: ClusterMeta,
    ca: CaRecord,
    progress: Progress<'_>,
) -> Result<Outcome> {
    if data_dir.join("db").exists() {
        return Err(OfflineError::Refused(format!(
            "{} already holds a node; restore into an empty data dir",
            data_dir.display()
        )));
    }
    progress("verifying the snapshot file", 0);
    let (meta, summary) = snapshot::verify_with(file, &|n| progress("verified records", n))?;
    progress("verified records", summary.records);
    std::fs::create_dir_all(data_dir)?;
    {
        // It will hold the CA key and the join secrets: owner only.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let db = open(data_dir)?;
    let snap_dir = data_dir.join("snapshot");
    std::fs::create_dir_all(&snap_dir)?;
    progress("staging records", 0);
    snapshot::stage(&db, &snap_dir, &meta, snapshot::open_data(file)?, &|n| progress("staged records", n))?;
    progress("installing records", 0);
    snapshot::apply_staged(&db, &snap_dir, &|n| progress("installed records", n))?;
    progress("installed records", summary.records);
    let old: ClusterMeta = match db.get_cf(sm_cf(&db), crate::cluster::KEY).map_err(super::io_err)? {
        Some(b) => ClusterMeta::decode(&b)?,
        None => ClusterMeta::default(),
    };
    // Ids stay unique across the old and the new cluster's records.
    let node_id = old.next_node_id.max(2);
    let cluster = ClusterMeta { next_node_id: node_id + 1, ..cluster };
    let name = if info.name.is_empty() { format!("node-{node_id}") } else { info.name };
    let me = Voter { node_id, info: NodeInfo { name, ..info } };
    force_single_voter(&db, &snap_dir, &me, meta.last_log_id, Some((&cluster, &ca)), 0, progress)
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
    let purged: Option<LogId> = get_decoded(&db, db.cf_handle(CF_RAFT_META).expect("cf"), KEY_PURGED)?;
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
/// snapshot file of the result. In that order of durability: the state first, then the
/// snapshot, and only then is the log purged behind it, so a crash at any point leaves
/// a data dir that a second run finishes (the snapshot joiners need always exists
/// before the log behind it is gone).
fn force_single_voter(
    db: &DB,
    snap_dir: &Path,
    me: &Voter,
    last: Option<LogId>,
    identity: Option<(&ClusterMeta, &CaRecord)>,
    applied_from_log: u64,
    progress: Progress<'_>,
) -> Result<Outcome> {
    let Some(last) = last else {
        return Err(OfflineError::Refused("the data dir has no applied state to start from".into()));
    };
    let meta_cf = db.cf_handle(CF_RAFT_META).expect("raft_meta column family");
    let old_vote: Option<Vote> = get_decoded(db, meta_cf, KEY_VOTE)?;
    let term = last.committed_leader_id().term().max(old_vote.map(|v| v.leader_id().term()).unwrap_or(0));
    let members: BTreeSet<NodeId> = [me.node_id].into();
    let nodes: BTreeMap<NodeId, NodeInfo> = [(me.node_id, me.info.clone())].into();
    let membership =
        Membership::new(vec![members], nodes).map_err(|e| OfflineError::Refused(format!("membership: {e}")))?;
    let stored = StoredMembership::new(Some(last), membership);
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    let mut state = WriteBatch::default();
    let sm = sm_cf(db);
    state.put_cf(sm, KEY_MEMBERSHIP, encode(&stored)?);
    state.put_cf(sm, super::state_machine::KEY_APPLIED, encode(&Some(last))?);
    if let Some((c, ca)) = identity {
        state.put_cf(sm, crate::cluster::KEY, c.encode());
        state.put_cf(sm, crate::cluster::CA_KEY, encode(ca)?);
    }
    db.write_opt(state, &wo).map_err(super::io_err)?;
    progress("building the snapshot", 0);
    // Joiners catch up from this file: the log behind it goes next.
    let view = db.snapshot();
    let (_, summary) = snapshot::build(db, &view, snap_dir)?;
    drop(view);
    let mut log = WriteBatch::default();
    let cf_log = db.cf_handle(CF_LOG).expect("log column family");
    log.delete_range_cf(cf_log, crate::codec::u64_key(0).as_slice(), [0xffu8; 9].as_slice());
    log.put_cf(meta_cf, KEY_PURGED, encode(&last)?);
    log.put_cf(meta_cf, KEY_VOTE, encode(&Vote::new(term, me.node_id))?);
    db.write_opt(log, &wo).map_err(super::io_err)?;
    let revision = match db.get_cf(sm, super::state_machine::KEY_REVISION).map_err(super::io_err)? {
        Some(b) => crate::codec::key_u64(&b) as i64,
        None => 0,
    };
    progress("snapshot records", summary.records);
    Ok(Outcome { node_id: me.node_id, last_log_id: Some(last), applied_from_log, revision, snapshot: summary })
}

/// What a stopped master's data dir last saw of its cluster.
#[derive(Debug, Clone)]
pub struct LastSeen {
    /// (id, info, is voter), the membership in its log included.
    pub members: Vec<(NodeId, NodeInfo, bool)>,
    /// The last index in its log, or applied if later: how much of the history it holds.
    pub last_log_index: Option<u64>,
}

/// The members the data dir last saw and how far its log goes; for checking, before a
/// recovery, whether a quorum of them can still be reached and whether one that answers
/// holds more. Finishes an interrupted snapshot install first (as opening the node
/// would), so the membership read is the installed one.
pub async fn last_seen(data_dir: &Path) -> Result<LastSeen> {
    if !data_dir.join("db").exists() {
        return Err(OfflineError::Refused(format!("{} holds no node", data_dir.display())));
    }
    let db = open(data_dir)?;
    let mut sm = StateMachineStore::new(db.clone(), data_dir.join("snapshot"))?;
    let (applied, stored) = sm.applied_state().await?;
    drop(sm);
    // Membership entries in the log not applied yet are newer than the stored one.
    let mut membership = stored.membership().clone();
    let mut last = applied.map(|l| l.index);
    let cf_log = db.cf_handle(CF_LOG).expect("log column family");
    for item in db.iterator_cf(cf_log, IteratorMode::Start) {
        let (_, v) = item.map_err(super::io_err)?;
        let e: Entry = decode(&v)?;
        last = last.max(Some(e.log_id.index));
        if let openraft::EntryPayload::Membership(m) = e.payload {
            membership = m;
        }
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let members = membership.nodes().map(|(id, n)| (*id, n.clone(), voters.contains(id))).collect();
    Ok(LastSeen { members, last_log_index: last })
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;

    use super::*;
    use crate::command::Command;
    use crate::kv::types::PutRequest;
    use crate::types::{LogEntry, TypeConfig};

    fn put(index: u64, key: &str) -> Entry {
        let mut e: Entry = openraft::testing::blank_ent::<TypeConfig>(1, 1, index);
        e.payload = EntryPayload::Normal(LogEntry {
            time_ms: 0,
            cmd: Command::Put(PutRequest { key: key.into(), value: b"v".to_vec(), ..Default::default() }),
        });
        e
    }

    fn cmd(index: u64, cmd: Command) -> Entry {
        let mut e: Entry = openraft::testing::blank_ent::<TypeConfig>(1, 1, index);
        e.payload = EntryPayload::Normal(LogEntry { time_ms: 0, cmd });
        e
    }

    fn info(addr: &str) -> NodeInfo {
        NodeInfo { addr: addr.into(), name: "survivor".into() }
    }

    fn quiet(_: &str, _: u64) {}

    fn keys(sm: &StateMachineStore) -> Vec<Vec<u8>> {
        sm.state().read().unwrap().kv.live.keys().cloned().collect()
    }

    fn voters(sm: &StateMachineStore) -> Vec<NodeId> {
        sm.state().read().unwrap().membership.membership().voter_ids().collect()
    }

    #[tokio::test]
    async fn recover_applies_the_logged_tail_and_leaves_this_node_the_only_voter() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_db(&dir.path().join("db")).unwrap();
            let mut sm = StateMachineStore::new(db.clone(), dir.path().join("snapshot")).unwrap();
            let mut log = vec![openraft::testing::membership_ent::<TypeConfig>(1, 1, 1, vec![[1, 2, 3].into()])];
            log.extend((2..=8).map(|i| put(i, &format!("k{i}"))));
            // Entries 1-5 applied; 6-8 only in the log (this node never learned they
            // committed, but the old quorum may have acknowledged them).
            let s = futures::stream::iter(log[..5].iter().cloned().map(|e| Ok((e, None))));
            sm.apply(s).await.unwrap();
            let cf_log = db.cf_handle(CF_LOG).unwrap();
            for e in &log {
                db.put_cf(cf_log, crate::codec::u64_key(e.log_id.index), encode(e).unwrap()).unwrap();
            }
            let meta = db.cf_handle(CF_RAFT_META).unwrap();
            db.put_cf(meta, KEY_VOTE, encode(&Vote::new(4, 2)).unwrap()).unwrap();
        }
        let out = recover(dir.path(), Voter { node_id: 1, info: info("127.0.0.1:1") }, &quiet).await.unwrap();
        assert_eq!(out.applied_from_log, 3);
        assert_eq!(out.last_log_id.map(|l| l.index), Some(8));

        let db = open_db(&dir.path().join("db")).unwrap();
        let meta = db.cf_handle(CF_RAFT_META).unwrap();
        let vote: Vote = get_decoded(&db, meta, KEY_VOTE).unwrap().expect("vote");
        assert_eq!((vote.leader_id().term(), vote.leader_id().node_id), (4, 1), "the old vote's term, for this node");
        let purged: LogId = get_decoded(&db, meta, KEY_PURGED).unwrap().expect("purged");
        assert_eq!(purged.index, 8);
        assert_eq!(db.iterator_cf(db.cf_handle(CF_LOG).unwrap(), IteratorMode::Start).count(), 0, "log emptied");
        let sm = StateMachineStore::new(db, dir.path().join("snapshot")).unwrap();
        let want: Vec<Vec<u8>> = (2..=8).map(|i| format!("k{i}").into_bytes()).collect();
        assert_eq!(keys(&sm), want, "every logged write is there");
        assert_eq!(voters(&sm), vec![1]);
        let (snap, _) = snapshot::open_current(&dir.path().join("snapshot")).unwrap().expect("snapshot");
        assert_eq!(snap.last_log_id.map(|l| l.index), Some(8));
        assert_eq!(snap.last_membership.membership().voter_ids().collect::<Vec<_>>(), vec![1]);
    }

    #[tokio::test]
    async fn recover_refuses_a_node_that_is_not_a_member() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_db(&dir.path().join("db")).unwrap();
            let mut sm = StateMachineStore::new(db, dir.path().join("snapshot")).unwrap();
            let e = openraft::testing::membership_ent::<TypeConfig>(1, 1, 1, vec![[1, 2, 3].into()]);
            sm.apply(futures::stream::iter([Ok((e, None))])).await.unwrap();
        }
        let err = recover(dir.path(), Voter { node_id: 9, info: info("127.0.0.1:9") }, &quiet).await.unwrap_err();
        assert!(err.to_string().contains("not a member"), "{err}");
    }

    #[tokio::test]
    async fn restore_builds_a_one_node_cluster_under_a_new_identity_and_refuses_a_corrupt_file() {
        let d1 = tempfile::tempdir().unwrap();
        let db1 = open_db(&d1.path().join("db")).unwrap();
        let mut sm1 = StateMachineStore::new(db1.clone(), d1.path().join("snapshot")).unwrap();
        let mut entries = vec![
            openraft::testing::membership_ent::<TypeConfig>(1, 1, 1, vec![[1].into()]),
            cmd(
                2,
                Command::InitCluster {
                    cluster_id: "old".into(),
                    manager_secret: "m".into(),
                    worker_secret: "w".into(),
                },
            ),
            cmd(3, Command::AllocNodeId { addr: "127.0.0.1:2".into() }),
            cmd(4, Command::AllocNodeId { addr: "127.0.0.1:3".into() }),
        ];
        entries.extend((5..=20).map(|i| put(i, &format!("k{i}"))));
        sm1.apply(futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))))).await.unwrap();
        let file = d1.path().join("backup.snap");
        let (_, saved, _) = snapshot::export(&db1, std::fs::File::create(&file).unwrap()).unwrap();

        let mut bad = std::fs::read(&file).unwrap();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x01;
        let bad_file = d1.path().join("bad.snap");
        std::fs::write(&bad_file, &bad).unwrap();
        let new_id = ClusterMeta {
            cluster_id: "new".into(),
            manager_secret: "m2".into(),
            worker_secret: "w2".into(),
            next_node_id: 0,
        };
        let d2 = tempfile::tempdir().unwrap();
        let target = d2.path().join("node");
        let ca = CaRecord { cert: b"c".to_vec(), key: b"k".to_vec(), trusted: vec![b"c".to_vec()], bridges: vec![] };
        assert!(restore(&bad_file, &target, info("127.0.0.1:5"), new_id.clone(), ca.clone(), &quiet).await.is_err());
        assert!(!target.exists(), "a refused file leaves nothing behind");

        let out = restore(&file, &target, info("127.0.0.1:5"), new_id, ca.clone(), &quiet).await.unwrap();
        assert_eq!(out.node_id, 4, "the next id the old cluster would have handed out");
        assert_eq!(out.revision, saved.revision);
        let sm2 = StateMachineStore::new(open_db(&target.join("db")).unwrap(), target.join("snapshot")).unwrap();
        assert_eq!(sm2.state().read().unwrap().kv, sm1.state().read().unwrap().kv);
        let cluster = sm2.state().read().unwrap().cluster.clone();
        assert_eq!(
            (cluster.cluster_id.as_str(), cluster.manager_secret.as_str(), cluster.next_node_id),
            ("new", "m2", 5)
        );
        assert_eq!(sm2.state().read().unwrap().ca, Some(ca), "the new cluster's CA replaces the old one");
        assert_eq!(voters(&sm2), vec![4]);
    }
}
