//! The replicated state machine on RocksDB: applies committed entries (each area's
//! module decides, this one dispatches and persists), and builds and installs snapshots
//! through [`super::snapshot`].
//!
//! Keys of the `sm` column family:
//! - `m/…`: applied log id, membership, revisions, cluster identity, format version;
//! - `i/…`: IPAM (see [`crate::ipam::keys`]);
//! - `h/<escaped key><rev>`: a version of a key (a put or a tombstone) for reads at past
//!   revisions;
//! - `g/…`: the master registry (see [`crate::registry::keys`]);
//! - `l/<id>`: a lease (see [`crate::lease::keys`]);
//! - `s/…`: services, versions, tasks and deployments (see [`crate::services::keys`]);
//! - `j/…`: jobs and their runs (see [`crate::jobs::keys`]);
//! - `r/<rev><n>`: what was written at revision `rev`, in write order: an op byte, the
//!   revision of the version it replaced and the key, so compaction visits only the
//!   revisions it discards and knows the dead versions without reading them.
//!
//! Entries that arrive together are applied under the write lock of [`SmState`] and
//! written as one `WriteBatch` holding their data and `m/applied`, so a reader never
//! sees memory and disk disagree.

// State-machine code: deterministic on every member (see coord/clippy.toml).
#![deny(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use futures::{FutureExt, Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use rocksdb::{IteratorMode, ReadOptions, SnapshotWithThreadMode, WriteBatch, DB};
use serde::{Deserialize, Serialize};
use tracing::instrument;

use super::events::{Event, EventKind, Events, Revision};
use super::rocks_ipam::RocksIpam;
use super::{io_err, sm_cf, snapshot};
use crate::cluster::{self, CaRecord, ClusterMeta};
use crate::codec::{decode, encode, escape_key, key_u64, u64_key, unescape_key};
use crate::command::{ApplyError, Command, Output, Response};
use crate::ipam::{Ipam, IpamError};
use crate::jobs::{Jobs, JobsError};
use crate::kv::types::{KeyValue, RequestOp};
use crate::kv::{History, KeyRange, KvStore, Live};
use crate::lease::Leases;
use crate::registry::Registry;
use crate::services::{ServiceCommand, Services, ServicesError};
use crate::types::{LogEntry, LogId, NodeId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig};

pub(crate) const KEY_APPLIED: &[u8] = b"m/applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"m/membership";
pub(crate) const KEY_REVISION: &[u8] = b"m/revision";
pub(crate) const KEY_COMPACT: &[u8] = b"m/compact";
const PREFIX_HIST: u8 = b'h';
const PREFIX_REV: u8 = b'r';
pub(crate) const OP_PUT: u8 = 0;
pub(crate) const OP_DELETE: u8 = 1;

/// What readers see: the applied state, consistent between memory and disk.
#[derive(Debug, Default)]
pub struct SmState {
    pub kv: KvStore,
    pub registry: Registry,
    pub ipam: Ipam,
    pub leases: Leases,
    pub services: Services,
    pub jobs: Jobs,
    pub cluster: ClusterMeta,
    pub ca: Option<CaRecord>,
    /// `ca`'s record digest, kept beside it: heartbeat sessions compare it every second.
    pub ca_digest: String,
    /// Masters that left (see `Command::RetireMaster`).
    pub retired: std::collections::BTreeSet<NodeId>,
    /// The HTTP face's bearer tokens, by id (only their hashes).
    pub http_tokens: BTreeMap<String, cluster::HttpToken>,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// A stored version of a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum HistRecord {
    Put { create_revision: i64, version: i64, lease: i64, value: Vec<u8> },
    Delete,
}

pub(crate) fn hist_key(key: &[u8], rev: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 11);
    k.push(PREFIX_HIST);
    escape_key(&mut k, key);
    k.extend_from_slice(&u64_key(rev as u64));
    k
}

fn hist_prefix(key: &[u8]) -> Vec<u8> {
    let mut k = vec![PREFIX_HIST];
    escape_key(&mut k, key);
    k
}

pub(crate) fn rev_key(rev: i64, n: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(PREFIX_REV);
    k.extend_from_slice(&u64_key(rev as u64));
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// Splits an `h/` key into user key and revision.
fn parse_hist_key(k: &[u8]) -> Option<(Vec<u8>, i64)> {
    let (key, rest) = unescape_key(k.get(1..)?)?;
    (rest.len() == 8).then(|| (key, key_u64(rest) as i64))
}

/// [`History`] over the DB (reads) and the entry's batch (writes); it also lists each
/// write as a watch event.
struct DbHistory<'a> {
    db: &'a DB,
    batch: &'a mut WriteBatch,
    n: u32,
    events: &'a mut Vec<Revision>,
}

impl DbHistory<'_> {
    fn cf(&self) -> &rocksdb::ColumnFamily {
        sm_cf(self.db)
    }

    /// `r/<rev><n>` → op byte (`OP_PUT`/`OP_DELETE`) ++ previous revision of the key
    /// (8 bytes, 0 if none) ++ key.
    fn event(&mut self, revision: i64, event: Event) {
        match self.events.last_mut() {
            Some(r) if r.revision == revision => r.events.push(event),
            _ => self.events.push(Revision { revision, events: vec![event] }),
        }
    }

    fn index(&mut self, key: &[u8], rev: i64, op: u8, prev_rev: i64) {
        let rk = rev_key(rev, self.n);
        self.n += 1;
        let cf = sm_cf(self.db);
        let mut v = Vec::with_capacity(key.len() + 9);
        v.push(op);
        v.extend_from_slice(&u64_key(prev_rev as u64));
        v.extend_from_slice(key);
        self.batch.put_cf(cf, rk, v);
    }
}

impl History for DbHistory<'_> {
    fn record_put(&mut self, kv: &KeyValue, prev: Option<&Live>) {
        let prev_revision = prev.map_or(0, |p| p.mod_revision);
        let rec = HistRecord::Put {
            create_revision: kv.create_revision,
            version: kv.version,
            lease: kv.lease,
            value: kv.value.clone(),
        };
        let v = encode(&rec).expect("encode history record");
        let cf = sm_cf(self.db);
        self.batch.put_cf(cf, hist_key(&kv.key, kv.mod_revision), v);
        self.index(&kv.key, kv.mod_revision, OP_PUT, prev_revision);
        let prev = prev.map(|p| p.to_kv(&kv.key));
        self.event(kv.mod_revision, Event { kind: EventKind::Put, kv: kv.clone(), prev });
    }

    fn record_delete(&mut self, key: &[u8], revision: i64, prev: &Live) {
        let v = encode(&HistRecord::Delete).expect("encode history record");
        let cf = sm_cf(self.db);
        self.batch.put_cf(cf, hist_key(key, revision), v);
        self.index(key, revision, OP_DELETE, prev.mod_revision);
        let kv = KeyValue { key: key.to_vec(), mod_revision: revision, ..Default::default() };
        self.event(revision, Event { kind: EventKind::Delete, kv, prev: Some(prev.to_kv(key)) });
    }

    fn scan_at(&mut self, range: &KeyRange, revision: i64) -> io::Result<Vec<KeyValue>> {
        scan_history(self.db, self.cf(), None, range, revision)
    }
}

/// Reads every key in `range` as of `revision` from the `h/` records.
fn scan_history(
    db: &DB,
    cf: &rocksdb::ColumnFamily,
    snap: Option<&SnapshotWithThreadMode<'_, DB>>,
    range: &KeyRange,
    revision: i64,
) -> io::Result<Vec<KeyValue>> {
    let start = hist_prefix(&range.start);
    let end = match &range.end {
        Some(e) => hist_prefix(e),
        None => vec![PREFIX_HIST + 1],
    };
    let mut ro = ReadOptions::default();
    if let Some(s) = snap {
        ro.set_snapshot(s);
    }
    ro.set_iterate_upper_bound(end);
    let mut out: Vec<KeyValue> = Vec::new();
    // The newest version <= revision of the key being scanned.
    let mut cur: Option<(Vec<u8>, i64, HistRecord)> = None;
    let flush = |cur: Option<(Vec<u8>, i64, HistRecord)>, out: &mut Vec<KeyValue>| {
        if let Some((key, rev, HistRecord::Put { create_revision, version, lease, value })) = cur {
            out.push(KeyValue { key, create_revision, mod_revision: rev, version, value, lease });
        }
    };
    let it = db.iterator_cf_opt(cf, ro, IteratorMode::From(&start, rocksdb::Direction::Forward));
    for item in it {
        let (k, v) = item.map_err(io_err)?;
        let (key, rev) = parse_hist_key(&k).ok_or_else(|| io_err("corrupt history key"))?;
        if cur.as_ref().is_some_and(|(ck, _, _)| *ck != key) {
            flush(cur.take(), &mut out);
        }
        if rev <= revision {
            cur = Some((key, rev, decode(&v)?));
        }
    }
    flush(cur, &mut out);
    Ok(out)
}

pub struct StateMachineStore {
    db: Arc<DB>,
    state: Arc<RwLock<SmState>>,
    snapshot_dir: PathBuf,
    /// The last applied registry event index, for registry watchers.
    registry_tx: Arc<tokio::sync::watch::Sender<u64>>,
    /// The index of the last applied entry that changed services or tasks.
    services_tx: Arc<tokio::sync::watch::Sender<u64>>,
    /// Recent revisions' events and the applied revision, for etcd watchers.
    events: Arc<Events>,
    /// The nodes whose certificates are no longer honored, published after each apply.
    gone: Arc<RwLock<Arc<Gone>>>,
}

/// The masters that left and the agents removed: every request's credential is checked
/// against them, so they are kept outside the state lock, which apply holds for long.
#[derive(Debug, Default)]
pub struct Gone {
    pub retired: std::collections::BTreeSet<NodeId>,
    pub removed: std::collections::BTreeSet<NodeId>,
}

impl Gone {
    fn of(st: &SmState) -> Arc<Gone> {
        Arc::new(Gone { retired: st.retired.clone(), removed: st.registry.removed.clone() })
    }

    /// Both sets only grow, so equal sizes mean equal sets.
    fn matches(&self, st: &SmState) -> bool {
        self.retired.len() == st.retired.len() && self.removed.len() == st.registry.removed.len()
    }
}

/// A consistent view of the DB taken when a snapshot build starts.
struct DbView {
    // Declared first so it is dropped before the DB it borrows.
    snap: SnapshotWithThreadMode<'static, DB>,
    db: Arc<DB>,
}

impl DbView {
    fn new(db: Arc<DB>) -> DbView {
        let snap = db.snapshot();
        // SAFETY: `snap` borrows the DB behind `db`; the Arc keeps that DB alive and at the
        // same address for as long as this struct lives, and `snap` is dropped first.
        let snap =
            unsafe { std::mem::transmute::<SnapshotWithThreadMode<'_, DB>, SnapshotWithThreadMode<'static, DB>>(snap) };
        DbView { snap, db }
    }
}

pub struct SnapshotBuilder {
    view: Option<DbView>,
    dir: PathBuf,
}

impl StateMachineStore {
    /// Opens the state machine over `db`, loading the applied state into memory.
    pub fn new(db: Arc<DB>, snapshot_dir: PathBuf) -> io::Result<StateMachineStore> {
        std::fs::create_dir_all(&snapshot_dir)?;
        snapshot::clean_dir(&snapshot_dir)?;
        if snapshot::install_pending(&db)? {
            tracing::warn!("a snapshot install was interrupted; finishing it before anything reads the state");
            let meta = snapshot::apply_staged(&db, &snapshot_dir, &|_| {})?;
            tracing::info!(last = ?meta.last_log_id, "interrupted snapshot install finished");
        }
        let state = load_state(&db)?;
        let (registry_tx, _) = tokio::sync::watch::channel(state.registry.last_event_index());
        let events = Arc::new(Events::new(state.kv.revision));
        let gone = Arc::new(RwLock::new(Gone::of(&state)));
        // The services' index starts where the state is, not at 0: a discovery client
        // that resumes from an index after this master restarts must not wait for a
        // change it already missed.
        let services_index = state.last_applied.map_or(0, |l| l.index);
        Ok(StateMachineStore {
            gone,
            db,
            state: Arc::new(RwLock::new(state)),
            snapshot_dir,
            registry_tx: Arc::new(registry_tx),
            services_tx: Arc::new(tokio::sync::watch::channel(services_index).0),
            events,
        })
    }

    /// The events hub etcd watchers read from.
    pub fn events(&self) -> Arc<Events> {
        self.events.clone()
    }

    /// Changes whenever registry events are applied (or a snapshot is installed); the
    /// value is the last event index.
    pub fn registry_events(&self) -> Arc<tokio::sync::watch::Sender<u64>> {
        self.registry_tx.clone()
    }

    /// Changes whenever an entry that touches services or tasks is applied (or a
    /// snapshot is installed); the value is that entry's index.
    pub fn services_events(&self) -> Arc<tokio::sync::watch::Sender<u64>> {
        self.services_tx.clone()
    }

    /// The retired masters and removed agents, readable without the state lock.
    pub fn gone(&self) -> Arc<RwLock<Arc<Gone>>> {
        self.gone.clone()
    }

    fn publish_gone(&self, st: &SmState, force: bool) {
        // Every apply group asks; every request reads: look before taking the write lock.
        if force || !self.gone.read().expect("gone lock").matches(st) {
            *self.gone.write().expect("gone lock") = Gone::of(st);
        }
    }

    /// Shared handle for readers (gRPC handlers).
    pub fn state(&self) -> Arc<RwLock<SmState>> {
        self.state.clone()
    }

    /// Reads a range at a past revision from disk.
    pub fn db(&self) -> Arc<DB> {
        self.db.clone()
    }

    fn cf(&self) -> &rocksdb::ColumnFamily {
        sm_cf(&self.db)
    }

    /// Applies one entry to memory and adds its writes to `batch`; the caller writes the
    /// batch (with `m/applied`) after the last entry of the group.
    fn apply_one(
        &self,
        st: &mut SmState,
        log_id: &LogId,
        payload: &Payload,
        batch: &mut WriteBatch,
        events: &mut Vec<Revision>,
    ) -> io::Result<Response> {
        let cf = self.cf();
        let mut out = Output::Unit;
        let mut result: Result<(), ApplyError> = Ok(());
        match payload {
            EntryPayload::Blank => {}
            EntryPayload::Membership(m) => {
                st.membership = StoredMembership::new(Some(*log_id), m.clone());
                batch.put_cf(cf, KEY_MEMBERSHIP, encode(&st.membership)?);
            }
            EntryPayload::Normal(LogEntry { time_ms, cmd }) => {
                let mut hist = DbHistory { db: &self.db, batch, n: 0, events };
                let r: Result<Output, ApplyError> = match cmd {
                    Command::InitCluster { cluster_id, manager_secret, worker_secret } => {
                        st.cluster.init(cluster_id, manager_secret, worker_secret).map(|()| Output::Unit)
                    }
                    Command::AllocNodeId { .. } => Ok(Output::NodeId(st.cluster.alloc_node_id())),
                    Command::SetJoinSecret { role, secret } => {
                        st.cluster.set_join_secret(role, secret).map(|()| Output::Unit)
                    }
                    Command::HttpToken(c) => {
                        let r = cluster::apply_http_token(&mut st.http_tokens, *time_ms, c).map(|()| Output::Unit);
                        if r.is_ok() {
                            hist.batch.put_cf(cf, cluster::HTTP_TOKENS_KEY, encode(&st.http_tokens)?);
                        }
                        r
                    }
                    Command::RetireMaster { node_id } => {
                        st.retired.insert(*node_id);
                        hist.batch.put_cf(cf, cluster::RETIRED_KEY, encode(&st.retired)?);
                        Ok(Output::Unit)
                    }
                    Command::SetCa { prev_digest, record } => {
                        let r = CaRecord::set(&mut st.ca, prev_digest, record).map(|()| Output::Unit);
                        if r.is_ok() {
                            st.ca_digest = record.record_digest();
                            hist.batch.put_cf(cf, cluster::CA_KEY, encode(record)?);
                        }
                        r
                    }
                    Command::Registry(c) => {
                        let next_id = st.cluster.next_node_id;
                        let term = {
                            use openraft::vote::RaftLeaderId;
                            log_id.committed_leader_id().term()
                        };
                        let r = st
                            .registry
                            .apply(term, *time_ms, next_id, c)
                            .map(Output::Registry)
                            .map_err(ApplyError::from);
                        write_changes(batch, cf, st.registry.take_changes());
                        r
                    }
                    Command::Ipam(c) => {
                        let mut store = RocksIpam::for_apply(&self.db, hist.batch);
                        match st.ipam.apply(*time_ms, c, &mut store) {
                            Ok(o) => Ok(Output::Ipam(o)),
                            Err(IpamError::Storage(e)) => Err(ApplyError::Storage(e)),
                            Err(e) => Err(ApplyError::Ipam(e)),
                        }
                    }
                    Command::Lease(c) => {
                        let term = {
                            use openraft::vote::RaftLeaderId;
                            log_id.committed_leader_id().term()
                        };
                        let r = st.leases.apply(log_id.index, term, c, &mut st.kv, &mut hist).map(Output::Lease);
                        write_changes(hist.batch, cf, st.leases.take_changes());
                        r
                    }
                    Command::Services(c) => {
                        let mut store = RocksIpam::for_apply(&self.db, hist.batch);
                        let r = match st.services.apply(*time_ms, c, &mut st.ipam, &mut store) {
                            Ok(o) => Ok(Output::Services(o)),
                            Err(ServicesError::Storage(e)) => Err(ApplyError::Storage(e)),
                            Err(e) => Err(ApplyError::Services(e)),
                        };
                        let ended = st.services.take_job_ends();
                        if !ended.is_empty() {
                            for t in &ended {
                                st.jobs.task_ended(*time_ms, t, &mut st.services);
                            }
                            write_changes(hist.batch, cf, st.jobs.take_changes());
                        }
                        write_changes(hist.batch, cf, st.services.take_changes());
                        let stale = st.services.take_stale_kills();
                        if !stale.is_empty() {
                            for (agent, task, reason) in stale {
                                st.registry.record_stale_task_killed(*time_ms, agent, task, reason);
                            }
                            write_changes(hist.batch, cf, st.registry.take_changes());
                        }
                        r
                    }
                    Command::Jobs(c) => {
                        let r = match st.jobs.apply(*time_ms, c, &mut st.services) {
                            Ok(o) => Ok(Output::Jobs(o)),
                            Err(JobsError::Storage(e)) => Err(ApplyError::Storage(e)),
                            Err(e) => Err(ApplyError::Jobs(e)),
                        };
                        write_changes(hist.batch, cf, st.jobs.take_changes());
                        write_changes(hist.batch, cf, st.services.take_changes());
                        r
                    }
                    Command::Put(p) => st.kv.apply_put(p, &mut hist).map(Output::Put),
                    Command::DeleteRange(d) => st.kv.apply_delete(d, &mut hist).map(Output::DeleteRange),
                    Command::Txn(t) => st.kv.apply_txn(t, &mut hist).map(Output::Txn),
                    Command::Compact { revision } => match st.kv.apply_compact(*revision) {
                        Ok(prev) => {
                            self.compact(prev, *revision, hist.batch)?;
                            Ok(Output::Unit)
                        }
                        Err(e) => Err(e),
                    },
                };
                match r {
                    Ok(o) => out = o,
                    // A failed read of our own storage must stop the node: answering with an
                    // error here could differ from what the other members answer.
                    Err(ApplyError::Storage(e)) => return Err(io::Error::other(e)),
                    Err(e) => result = Err(e),
                }
                if matches!(
                    cmd,
                    Command::InitCluster { .. } | Command::AllocNodeId { .. } | Command::SetJoinSecret { .. }
                ) {
                    batch.put_cf(cf, cluster::KEY, st.cluster.encode());
                }
            }
        }
        st.last_applied = Some(*log_id);
        Ok(Response { revision: st.kv.revision, result: result.map(|_| out) })
    }

    /// Writes `batch` with the counters and `m/applied` of `st`, atomically.
    fn flush(&self, st: &SmState, batch: &mut WriteBatch) -> io::Result<()> {
        let cf = self.cf();
        batch.put_cf(cf, KEY_REVISION, u64_key(st.kv.revision as u64));
        batch.put_cf(cf, KEY_COMPACT, u64_key(st.kv.compact_revision as u64));
        batch.put_cf(cf, KEY_APPLIED, encode(&st.last_applied)?);
        self.db.write(std::mem::take(batch)).map_err(io_err)
    }

    /// Removes versions that no read at or after `to` can see: for each key written in
    /// (`from`, `to`], every version older than the newest at or below `to`, and that one
    /// too if it is a tombstone. The `r/` index lists the writes of the window with each
    /// write's previous revision, so the dead versions are known without reading any
    /// `h/` record, and are removed with point deletes (range tombstones would slow every
    /// later iterator). Work is proportional to the revisions discarded.
    fn compact(&self, from: i64, to: i64, batch: &mut WriteBatch) -> io::Result<()> {
        struct Touched {
            /// Revision of the version before the window's first write (0: none).
            before: i64,
            revs: Vec<i64>,
            last_deleted: bool,
        }
        let cf = self.cf();
        let mut touched: BTreeMap<Vec<u8>, Touched> = BTreeMap::new();
        let start = rev_key(from + 1, 0);
        let end = rev_key(to + 1, 0);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(end);
        for item in self.db.iterator_cf_opt(cf, ro, IteratorMode::From(&start, rocksdb::Direction::Forward)) {
            let (k, v) = item.map_err(io_err)?;
            let rev = key_u64(&k[1..9]) as i64;
            if v.len() < 9 {
                return Err(io_err("corrupt revision index entry"));
            }
            let (op, prev, key) = (v[0], key_u64(&v[1..9]) as i64, &v[9..]);
            // Revisions come in order: the first seen per key carries the version before
            // the window, the last one is the newest.
            let t =
                touched.entry(key.to_vec()).or_insert(Touched { before: prev, revs: Vec::new(), last_deleted: false });
            t.revs.push(rev);
            t.last_deleted = op == OP_DELETE;
            batch.delete_cf(cf, &k);
        }
        for (key, t) in touched {
            let newest = *t.revs.last().expect("at least one revision");
            let older = t.revs[..t.revs.len() - 1].iter().copied().chain((t.before > 0).then_some(t.before));
            for r in older.filter(|r| *r != newest) {
                batch.delete_cf(cf, hist_key(&key, r));
            }
            if t.last_deleted {
                batch.delete_cf(cf, hist_key(&key, newest));
            }
        }
        Ok(())
    }
}

type Payload = EntryPayload<LogEntry, NodeId, crate::types::NodeInfo>;

/// True for entries whose apply reads the DB (old versions, IPAM records: services
/// allocate and release their tasks' IPs through IPAM too).
fn reads_history(p: &Payload) -> bool {
    fn past_read(list: &[RequestOp]) -> bool {
        list.iter().any(|op| match op {
            RequestOp::Range(r) => r.revision != 0,
            RequestOp::Txn(t) => past_read(&t.success) || past_read(&t.failure),
            _ => false,
        })
    }
    match p {
        EntryPayload::Normal(LogEntry {
            cmd: Command::Compact { .. } | Command::Ipam(_) | Command::Services(_),
            ..
        }) => true,
        EntryPayload::Normal(LogEntry { cmd: Command::Txn(t), .. }) => past_read(&t.success) || past_read(&t.failure),
        _ => false,
    }
}

/// An area's changed records (`None`: deleted) into the apply batch.
fn write_changes(batch: &mut WriteBatch, cf: &rocksdb::ColumnFamily, changes: Vec<(Vec<u8>, Option<Vec<u8>>)>) {
    for (k, v) in changes {
        match v {
            Some(v) => batch.put_cf(cf, k, v),
            None => batch.delete_cf(cf, k),
        }
    }
}

/// Entries that hold the state lock long enough to be applied in a group of their own.
fn is_heavy(p: &Payload) -> bool {
    matches!(p, EntryPayload::Normal(LogEntry { cmd: Command::Services(ServiceCommand::Launch { .. }), .. }))
}

/// Rebuilds the in-memory state from the `sm` column family.
fn load_state(db: &DB) -> io::Result<SmState> {
    let cf = sm_cf(db);
    let get = |k: &[u8]| db.get_cf(cf, k).map_err(io_err);
    let mut st = SmState { kv: KvStore::new(), ..Default::default() };
    if let Some(b) = get(KEY_APPLIED)? {
        st.last_applied = decode(&b)?;
    }
    if let Some(b) = get(KEY_MEMBERSHIP)? {
        st.membership = decode(&b)?;
    }
    if let Some(b) = get(KEY_REVISION)? {
        st.kv.revision = key_u64(&b) as i64;
    }
    if let Some(b) = get(KEY_COMPACT)? {
        st.kv.compact_revision = key_u64(&b) as i64;
    }
    if let Some(b) = get(cluster::KEY)? {
        st.cluster = ClusterMeta::decode(&b)?;
    }
    if let Some(b) = get(cluster::RETIRED_KEY)? {
        st.retired = decode(&b)?;
    }
    if let Some(b) = get(cluster::HTTP_TOKENS_KEY)? {
        st.http_tokens = decode(&b)?;
    }
    if let Some(b) = get(cluster::CA_KEY)? {
        let ca: CaRecord = decode(&b)?;
        st.ca_digest = ca.record_digest();
        st.ca = Some(ca);
    }
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(vec![b'g', b'/' + 1]);
    let mut records = Vec::new();
    for item in
        db.iterator_cf_opt(cf, ro, IteratorMode::From(crate::registry::keys::PREFIX, rocksdb::Direction::Forward))
    {
        records.push(item.map_err(io_err)?);
    }
    st.registry = Registry::load(records.iter().map(|(k, v)| (&k[..], &v[..])))?;
    // IPAM: networks and runs of used offsets (owner records stay on disk).
    let mut records = Vec::new();
    for prefix in [&b"i/n/"[..], &b"i/s/"[..]] {
        let mut ro = ReadOptions::default();
        let mut upper = prefix.to_vec();
        *upper.last_mut().expect("prefix") += 1;
        ro.set_iterate_upper_bound(upper);
        for item in db.iterator_cf_opt(cf, ro, IteratorMode::From(prefix, rocksdb::Direction::Forward)) {
            records.push(item.map_err(io_err)?);
        }
    }
    st.ipam = Ipam::load(records.iter().map(|(k, v)| (&k[..], &v[..])))?;
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(vec![b's', b'/' + 1]);
    let mut records = Vec::new();
    for item in
        db.iterator_cf_opt(cf, ro, IteratorMode::From(crate::services::keys::PREFIX, rocksdb::Direction::Forward))
    {
        records.push(item.map_err(io_err)?);
    }
    st.services = Services::load(records.iter().map(|(k, v)| (&k[..], &v[..])))?;
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(vec![b'j', b'/' + 1]);
    let mut records = Vec::new();
    for item in db.iterator_cf_opt(cf, ro, IteratorMode::From(crate::jobs::keys::PREFIX, rocksdb::Direction::Forward)) {
        records.push(item.map_err(io_err)?);
    }
    st.jobs = Jobs::load(records.iter().map(|(k, v)| (&k[..], &v[..])))?;
    let all = KeyRange { start: Vec::new(), end: None };
    for kv in scan_history(db, cf, None, &all, i64::MAX)? {
        st.kv.live.insert(
            kv.key.clone(),
            crate::kv::Live {
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version,
                lease: kv.lease,
                value: kv.value,
            },
        );
    }
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(vec![b'l', b'/' + 1]);
    let mut records = Vec::new();
    for item in db.iterator_cf_opt(cf, ro, IteratorMode::From(crate::lease::keys::PREFIX, rocksdb::Direction::Forward))
    {
        records.push(item.map_err(io_err)?);
    }
    st.leases = Leases::load(records.iter().map(|(k, v)| (&k[..], &v[..])), &mut st.kv)?;
    Ok(st)
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    #[instrument(level = "info", skip(self))]
    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let view = self.view.take().ok_or_else(|| io::Error::other("snapshot builder used twice"))?;
        let dir = self.dir.clone();
        // Scanning and encoding take long: keep them off the async workers that serve
        // requests.
        tokio::task::spawn_blocking(move || build_snapshot_blocking(&view, &dir)).await.map_err(io_err)?
    }
}

fn build_snapshot_blocking(view: &DbView, dir: &std::path::Path) -> io::Result<Snapshot> {
    let (meta, summary) = snapshot::build(&view.db, &view.snap, dir)?;
    tracing::info!(bytes = summary.file_bytes, records = summary.records, last = ?meta.last_log_id, "snapshot built");
    // A newer snapshot may have replaced ours meanwhile: then serve that one, as openraft
    // would at its next request anyway.
    let (meta, data) = snapshot::open_current(dir)?.ok_or_else(|| io_err("snapshot file vanished after build"))?;
    Ok(Snapshot { meta, snapshot: data })
}

impl StateMachineStore {
    /// Applies entries that were ready together under one lock, written in one batch.
    fn apply_group(&self, group: Vec<EntryResponder<TypeConfig>>) -> io::Result<()> {
        let mut replies = Vec::with_capacity(group.len());
        let mut st = self.state.write().expect("sm lock");
        let mut batch = WriteBatch::default();
        // The group's events, published once its batch is written.
        let mut events = Vec::new();
        let mut services_changed = None;
        for (entry, responder) in group {
            // A job's launch creates a task too.
            if matches!(
                &entry.payload,
                EntryPayload::Normal(LogEntry { cmd: Command::Services(_) | Command::Jobs(_), .. })
            ) {
                services_changed = Some(entry.log_id.index);
            }
            let _g = tracing::debug_span!("apply", index = entry.log_id.index).entered();
            // Compaction and reads of past revisions look at the DB: it must hold
            // every earlier entry first.
            if reads_history(&entry.payload) && !batch.is_empty() {
                self.flush(&st, &mut batch)?;
            }
            let resp = self.apply_one(&mut st, &entry.log_id, &entry.payload, &mut batch, &mut events)?;
            replies.push((responder, resp));
        }
        // Answer before the batch is written: the entries are committed in the log, and
        // every reader waits on the state lock, held until the write is done.
        for (responder, resp) in replies {
            if let Some(r) = responder {
                r.send(resp);
            }
        }
        self.flush(&st, &mut batch)?;
        self.publish_gone(&st, false);
        let last_event = st.registry.last_event_index();
        let revision = st.kv.revision;
        drop(st);
        self.registry_tx.send_if_modified(|v| std::mem::replace(v, last_event) != last_event);
        if let Some(index) = services_changed {
            self.services_tx.send_replace(index);
        }
        self.events.publish(events, revision);
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let st = self.state.read().expect("sm lock");
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        // Entries that are ready together are applied under one lock and written in one
        // batch: one RocksDB write per group instead of per entry.
        while let Some(first) = entries.next().await {
            let mut group = vec![first?];
            // A launch entry (thousands of tasks and addresses) ends its group: the state
            // lock, which every reader waits on, is let go between two of them.
            let mut heavy = is_heavy(&group[0].0.payload);
            while group.len() < 4096 && !heavy {
                match entries.next().now_or_never() {
                    Some(Some(item)) => {
                        let item = item?;
                        heavy = is_heavy(&item.0.payload);
                        group.push(item);
                    }
                    _ => break,
                }
            }
            if heavy || group.len() > 64 {
                // Long enough under the lock to tell the runtime, which moves heartbeats and
                // RPCs to another worker meanwhile instead of stalling them.
                crate::node::blocking(|| self.apply_group(group))?;
            } else {
                self.apply_group(group)?;
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { view: Some(DbView::new(self.db.clone())), dir: self.snapshot_dir.clone() }
    }

    #[instrument(level = "info", skip(self, snapshot), fields(last = ?meta.last_log_id))]
    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let snapshot_index = meta.last_log_id.map_or(0, |l| l.index);
        let (db, state, dir, meta) = (self.db.clone(), self.state.clone(), self.snapshot_dir.clone(), meta.clone());
        tokio::task::spawn_blocking(move || install_snapshot_blocking(&db, &state, &dir, &meta, snapshot))
            .await
            .map_err(io_err)??;
        let (last_event, revision) = {
            let st = self.state.read().expect("sm lock");
            self.publish_gone(&st, true);
            (st.registry.last_event_index(), st.kv.revision)
        };
        self.registry_tx.send_replace(last_event);
        self.services_tx.send_replace(snapshot_index);
        self.events.reset(revision);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(snapshot::open_current(&self.snapshot_dir)?.map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}

/// Installs a snapshot: stages the verified file (nothing changes if it is corrupt or of
/// an unknown version), then replaces the `sm` column family from it and reloads memory;
/// readers wait on the state lock meanwhile. See `store::snapshot` for crash safety.
fn install_snapshot_blocking(
    db: &DB,
    state: &RwLock<SmState>,
    dir: &std::path::Path,
    meta: &SnapshotMeta,
    snapshot: SnapshotData,
) -> io::Result<()> {
    let summary = snapshot::stage(db, dir, meta, snapshot, &|_| {})?;
    let mut st = state.write().expect("sm lock");
    snapshot::apply_staged(db, dir, &|_| {})?;
    *st = load_state(db)?;
    drop(st);
    tracing::info!(records = summary.records, bytes = summary.file_bytes, "snapshot installed");
    Ok(())
}

/// Reads keys at a past revision for a gRPC Range (outside apply).
pub fn range_at_revision(db: &DB, range: &KeyRange, revision: i64) -> io::Result<Vec<KeyValue>> {
    let cf = sm_cf(db);
    scan_history(db, cf, None, range, revision)
}

/// Reading a past revision outside apply goes through this [`History`], which refuses writes.
pub struct ReadOnlyHistory<'a>(pub &'a DB);

impl History for ReadOnlyHistory<'_> {
    fn record_put(&mut self, _: &KeyValue, _: Option<&Live>) {
        unreachable!("read-only history used for a write")
    }
    fn record_delete(&mut self, _: &[u8], _: i64, _: &Live) {
        unreachable!("read-only history used for a write")
    }
    fn scan_at(&mut self, range: &KeyRange, revision: i64) -> io::Result<Vec<KeyValue>> {
        range_at_revision(self.0, range, revision)
    }
}
