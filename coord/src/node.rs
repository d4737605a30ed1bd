//! A running coord node: the Raft instance over the RocksDB store, and the one service
//! path into it: [`CoordNode::read`]/[`CoordNode::view`] (the read API over a
//! [`ReadView`]) and [`CoordNode::write`] (leader-stamped, bounded wait). A watcher on
//! the Raft role starts the leader's duties ([`crate::leader`]) when this node gains
//! leadership and stops them when it loses it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::errors::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, ReadPolicy, ServerState};
use rocksdb::DB;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::info;

use crate::cluster::ClusterMeta;
use crate::command::{Command, Output};
use crate::config::CoordConfig;
use crate::error::{CoordError, Result};
use crate::ipam::repair::LeakTracker;
use crate::leader::Leadership;
use crate::liveness::Liveness;
use crate::network::{channel, Network};
use crate::read::{Consistency, ReadView};
use crate::store::{open_db, LogStore, SmState, StateMachineStore};
use crate::types::{LogEntry, NodeId, NodeInfo, Raft, TypeConfig};

/// One master (Raft member) as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterInfo {
    pub id: NodeId,
    pub name: String,
    pub addr: String,
    /// A voter, rather than a learner.
    pub voter: bool,
}

/// The masters (Raft members) as this node sees them.
#[derive(Debug, Clone)]
pub struct MastersView {
    pub leader: Option<NodeId>,
    pub state: ServerState,
    /// By id.
    pub nodes: Vec<MasterInfo>,
}

impl MastersView {
    pub fn get(&self, id: NodeId) -> Option<&MasterInfo> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

/// What a committed write produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The store revision after the entry applied.
    pub revision: i64,
    pub output: Output,
}

/// Cluster identity the `init` node proposes once it leads, until it is committed.
#[derive(Debug, Clone)]
pub struct InitSecrets {
    pub cluster_id: String,
    pub manager_secret: String,
    pub worker_secret: String,
    /// The CA `init` made: DER certificate and PKCS#8 key.
    pub ca_cert: Vec<u8>,
    pub ca_key: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub node_id: NodeId,
    pub name: String,
    pub data_dir: PathBuf,
    /// host:port others reach this node at.
    pub advertise_addr: String,
    pub config: CoordConfig,
    pub init: Option<InitSecrets>,
    /// This node's certificate and the CAs it trusts: what it serves with and what it
    /// presents to other masters.
    pub tls: Arc<pki::Credentials>,
}

/// Channels to other masters by address, made at one generation of this node's
/// credentials.
#[derive(Default)]
struct Channels {
    generation: u64,
    by_addr: BTreeMap<String, Channel>,
}

pub struct CoordNode {
    pub id: NodeId,
    pub name: String,
    pub raft: Raft,
    /// The applied state; read through [`CoordNode::read`] and [`CoordNode::view`] only.
    state: Arc<RwLock<SmState>>,
    db: Arc<DB>,
    pub config: CoordConfig,
    pub advertise_addr: String,
    pub(crate) init: Option<InitSecrets>,
    pub tls: Arc<pki::Credentials>,
    client_tls: pki::ClientTls,
    snapshot_dir: PathBuf,
    channels: Mutex<Channels>,
    removed_tx: watch::Sender<bool>,
    /// The etcd header's 64-bit cluster id, once the identity is committed.
    cluster_id_u64: std::sync::OnceLock<u64>,
    /// Heartbeat table; meaningful on the leader only (reset when leadership starts and
    /// ends).
    pub liveness: Liveness,
    /// Retired masters and removed agents, outside the state lock (see `store::Gone`).
    gone: Arc<std::sync::RwLock<Arc<crate::store::state_machine::Gone>>>,
    /// The last applied registry event index (changes on every registry event).
    pub registry_events: Arc<watch::Sender<u64>>,
    /// Bumped when services or tasks change (see `StateMachineStore::services_events`).
    pub services_events: Arc<watch::Sender<u64>>,
    /// Recent revisions' events and the applied revision (etcd watchers).
    events: Arc<crate::store::events::Events>,
    /// When this node applied which entry (a new leader's lease countdown starts there).
    pub applied_clock: crate::lessor::AppliedClock,
    /// The lease countdown; meaningful on the leader only.
    pub lessor: crate::lessor::Lessor,
    /// Renewals waiting for their checkpoint (leader only).
    pub(crate) checkpoint_queue: crate::lessor::CheckpointQueue,
    /// On the leader: a quorum acknowledged it within two election timeouts (refreshed
    /// by the leader's liveness loop).
    pub(crate) quorum_contact: AtomicBool,
    /// Agents' IPAM reports and leaks seen; meaningful on the leader only.
    pub leaks: LeakTracker,
    /// Open watch and heartbeat streams per caller (see `grpc::quota`).
    pub(crate) streams: crate::grpc::quota::StreamQuota,
    /// On the leader: the CA name and expiry of the certificate each node's own
    /// heartbeat session presented.
    pub(crate) session_certs: std::sync::Mutex<BTreeMap<NodeId, (String, i64)>>,
}

/// Milliseconds since the Unix epoch; only ever stamped into entries by a proposer.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl CoordNode {
    pub async fn open(opts: NodeOptions) -> Result<Arc<CoordNode>> {
        opts.config.validate().map_err(CoordError::InvalidArgument)?;
        let raft_config = Arc::new(opts.config.raft_config().map_err(CoordError::InvalidArgument)?);
        let db = open_db(&opts.data_dir.join("db")).map_err(|e| match e {
            crate::store::format::OpenError::Rocks(e) => CoordError::Internal(format!("open RocksDB: {e}")),
            e => CoordError::FailedPrecondition(format!("cannot open {}: {e}", opts.data_dir.display())),
        })?;
        let log = LogStore::new(db.clone());
        let sync_inline = log.sync_inline_switch();
        let sm = StateMachineStore::new(db.clone(), opts.data_dir.join("snapshot"))
            .map_err(|e| CoordError::Internal(format!("open state machine: {e}")))?;
        let state = sm.state();
        let gone = sm.gone();
        let registry_events = sm.registry_events();
        let services_events = sm.services_events();
        let events = sm.events();
        let client_tls = opts.tls.client().map_err(|e| CoordError::InvalidArgument(format!("TLS client: {e}")))?;
        let raft = Raft::new(opts.node_id, raft_config, Network::new(client_tls.clone()), log, sm)
            .await
            .map_err(|e| CoordError::Internal(format!("start raft: {e}")))?;
        let (removed_tx, _) = watch::channel(false);
        let node = Arc::new(CoordNode {
            id: opts.node_id,
            name: opts.name,
            raft,
            state,
            gone,
            db,
            config: opts.config,
            advertise_addr: opts.advertise_addr,
            init: opts.init,
            tls: opts.tls,
            client_tls,
            snapshot_dir: opts.data_dir.join("snapshot"),
            channels: Mutex::new(Channels::default()),
            removed_tx,
            cluster_id_u64: std::sync::OnceLock::new(),
            liveness: Liveness::default(),
            registry_events,
            services_events,
            events,
            applied_clock: Default::default(),
            lessor: Default::default(),
            checkpoint_queue: Default::default(),
            quorum_contact: AtomicBool::new(true),
            leaks: Default::default(),
            streams: Default::default(),
            session_certs: Default::default(),
        });
        node.spawn_role_watcher(sync_inline);
        node.spawn_applied_clock();
        Ok(node)
    }

    /// Follows this node's Raft role: followers fsync appends inline and leaders on the
    /// sync thread (see `LogStore`); the leader's duties run exactly while this node
    /// leads (one set per term); and a node that sees itself leave the membership marks
    /// itself removed. `server_metrics` changes only with state, leader, vote or
    /// membership, not on every commit.
    fn spawn_role_watcher(self: &Arc<Self>, sync_inline: Arc<AtomicBool>) {
        let weak = Arc::downgrade(self);
        let mut metrics = self.raft.server_metrics();
        tokio::spawn(async move {
            use openraft::async_runtime::watch::WatchReceiver;
            let mut seen_self = false;
            let mut leadership: Option<Leadership> = None;
            loop {
                let (state, member) = {
                    let m = metrics.borrow_watched();
                    (m.state, m.membership_config.membership().get_node(&m.id).is_some())
                };
                let Some(node) = weak.upgrade() else { return };
                sync_inline.store(state != ServerState::Leader, Ordering::Relaxed);
                if member {
                    seen_self = true;
                } else if seen_self && !*node.removed_tx.borrow() {
                    info!(node = node.id, "this node was removed from the cluster");
                    let _ = node.removed_tx.send(true);
                }
                let term = node.current_term();
                let leading = state == ServerState::Leader;
                if leadership.as_ref().is_some_and(|l| !leading || l.term() != term) {
                    // Dropping it stops its tasks and forgets the leader-only memory.
                    leadership = None;
                }
                if leading && leadership.is_none() {
                    leadership = Some(Leadership::start(&node, term));
                }
                drop(node);
                if state == ServerState::Shutdown || metrics.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Samples when entries are applied, for [`crate::lessor::AppliedClock`].
    fn spawn_applied_clock(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let mut metrics = self.raft.metrics();
        tokio::spawn(async move {
            use openraft::async_runtime::watch::WatchReceiver;
            loop {
                let applied = metrics.borrow_watched().last_applied.map(|l| l.index);
                let Some(node) = weak.upgrade() else { return };
                if let Some(i) = applied {
                    node.applied_clock.record(i, tokio::time::Instant::now());
                }
                drop(node);
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Makes this node the single voter of a new cluster. Refused on a node that has
    /// any Raft state, so a wiped or restarted node can never start a second cluster.
    pub async fn initialize(&self) -> Result<()> {
        let mut members = BTreeMap::new();
        members.insert(self.id, NodeInfo { addr: self.advertise_addr.clone(), name: self.name.clone() });
        self.raft.initialize(members).await.map_err(|e| CoordError::FailedPrecondition(format!("initialize: {e}")))
    }

    /// Records that this node was removed from the cluster (its process then exits).
    pub fn mark_removed(&self) {
        let _ = self.removed_tx.send(true);
    }

    /// Resolves with the error when Raft stops on its own: storage failed (disk full, an
    /// I/O error) or a bug panicked. The node must then exit: its state machine may be
    /// ahead of what reached the disk, so it must not answer reads. Pending forever
    /// while Raft runs, and after an orderly shutdown.
    pub async fn fatal_error(&self) -> String {
        use openraft::async_runtime::watch::WatchReceiver;
        let mut m = self.raft.metrics();
        loop {
            let fatal = match &m.borrow_watched().running_state {
                Err(openraft::errors::Fatal::Stopped) | Ok(()) => None,
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = fatal {
                return e;
            }
            if m.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Resolves when this node has been removed from the cluster.
    pub fn removed(&self) -> watch::Receiver<bool> {
        self.removed_tx.subscribe()
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    /// Writes a consistent snapshot of the applied state to `out` (blocking IO; call it
    /// from a blocking task). The caller decides how fresh it must be (a read barrier
    /// first, for a linearizable one).
    pub fn export_snapshot(&self, out: impl std::io::Write) -> std::io::Result<crate::store::snapshot::Summary> {
        let (_, summary, mut out) = crate::store::snapshot::export(&self.db, out)?;
        out.flush()?;
        Ok(summary)
    }

    /// A file to receive a snapshot into, capped at `snapshot_max_bytes`.
    pub fn snapshot_sink(&self) -> std::io::Result<crate::store::snapshot::SnapshotSink> {
        crate::store::snapshot::SnapshotSink::create(&self.snapshot_dir, self.config.snapshot_max_bytes)
    }

    /// How long receiving one snapshot may take.
    pub fn snapshot_receive_timeout(&self) -> Duration {
        Duration::from_millis(self.config.snapshot_receive_timeout_ms)
    }

    /// A copy of the current Raft metrics.
    pub fn metrics(&self) -> openraft::RaftMetrics<TypeConfig> {
        use openraft::async_runtime::watch::WatchReceiver;
        self.raft.metrics().borrow_watched().clone()
    }

    /// The current Raft term, without copying all metrics (it is on every etcd response).
    pub fn current_term(&self) -> u64 {
        use openraft::async_runtime::watch::WatchReceiver;
        self.raft.metrics().borrow_watched().current_term
    }

    /// The events of recent revisions and the applied revision, for watchers.
    pub fn events(&self) -> &crate::store::events::Events {
        &self.events
    }

    /// Whole revisions `from..=to` from disk (at least one, then up to `max_bytes`), for
    /// a watcher behind the events ring. Runs on the blocking pool.
    pub async fn read_revisions(
        &self,
        from: i64,
        to: i64,
        max_bytes: usize,
    ) -> std::result::Result<Vec<Arc<crate::store::events::Revision>>, crate::store::events::EventsError> {
        use crate::store::events::{read_revisions, EventsError};
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || read_revisions(&db, from, to, max_bytes))
            .await
            .map_err(|e| EventsError::Storage(e.to_string()))?
            .map(|revs| revs.into_iter().map(Arc::new).collect())
    }

    /// Whether node `id`'s certificate is no longer honored: a master that left (`manager`)
    /// or an agent removed. Takes no state lock: every request asks.
    pub fn is_gone(&self, id: NodeId, manager: bool) -> bool {
        let g = self.gone.read().expect("gone lock").clone();
        if manager {
            g.retired.contains(&id)
        } else {
            g.removed.contains(&id)
        }
    }

    /// Like [`view`](Self::view), for a long read (a scheduler pass): the worker it runs
    /// on is handed over, so the runtime's other tasks go on meanwhile.
    pub fn view_long<T>(&self, f: impl FnOnce(&ReadView<'_>) -> T) -> T {
        blocking(|| self.view(f))
    }

    /// Reads this node's applied state as is (serializable): `f` runs under the state
    /// lock, so keep it short and never await in it.
    pub fn view<T>(&self, f: impl FnOnce(&ReadView<'_>) -> T) -> T {
        let st = self.state.read().expect("sm lock");
        f(&ReadView::new(&st, &self.db))
    }

    /// Reads the applied state with the given consistency. A linearizable read first
    /// confirms leadership through a quorum and waits until the read index is applied;
    /// on a follower it fails `NotLeader` with the leader's address (the caller forwards).
    pub async fn read<T>(&self, consistency: Consistency, f: impl FnOnce(&ReadView<'_>) -> T) -> Result<T> {
        if consistency == Consistency::Linearizable {
            self.read_barrier().await?;
        }
        Ok(self.view(f))
    }

    /// The committed cluster identity and join secrets (empty id until `init` recorded it).
    pub fn cluster(&self) -> ClusterMeta {
        self.view(|v| v.cluster().clone())
    }

    /// The committed cluster id; empty until `init` recorded it.
    pub fn cluster_id(&self) -> String {
        self.view(|v| v.cluster().cluster_id.clone())
    }

    /// The cluster id as the 64-bit number etcd headers carry; 0 until it is committed.
    pub fn cluster_id_u64(&self) -> u64 {
        if let Some(v) = self.cluster_id_u64.get() {
            return *v;
        }
        let id = self.cluster_id();
        if id.is_empty() {
            return 0;
        }
        *self.cluster_id_u64.get_or_init(|| crate::token::cluster_id_u64(&id))
    }

    /// The leader this node knows of, with its address.
    pub fn leader(&self) -> (Option<NodeId>, Option<String>) {
        use openraft::async_runtime::watch::WatchReceiver;
        let m = self.raft.server_metrics();
        let m = m.borrow_watched();
        let id = m.current_leader;
        let addr = id.and_then(|id| m.membership_config.membership().get_node(&id).map(|n| n.addr.clone()));
        (id, addr)
    }

    /// A cached gRPC channel to `addr` (connects lazily, reconnects by itself).
    pub fn channel(&self, addr: &str) -> Result<Channel> {
        let mut ch = self.channels.lock().expect("channel cache lock");
        // Channels made before this node's certificate was renewed present the old one.
        let generation = self.client_tls.generation();
        if ch.generation != generation {
            ch.generation = generation;
            ch.by_addr.clear();
        }
        if let Some(c) = ch.by_addr.get(addr) {
            return Ok(c.clone());
        }
        let c =
            channel(addr, &self.client_tls).map_err(|e| CoordError::Internal(format!("bad address {addr}: {e}")))?;
        ch.by_addr.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// `NotLeader` with the leader's address, when a node other than this one leads.
    fn not_leader(&self, leader: Option<NodeId>) -> Option<CoordError> {
        match leader {
            Some(id) if id != self.id => {
                let (_, addr) = self.leader();
                Some(CoordError::NotLeader { leader_id: Some(id), leader_addr: addr })
            }
            _ => None,
        }
    }

    /// After a forward-to-leader answer: `NotLeader` when another node leads; otherwise
    /// (no leader yet, or this node becoming it) wait 50 ms for the election, failing with
    /// "no leader" once `deadline` is near.
    async fn retry_after_forward(&self, leader: Option<NodeId>, deadline: Instant) -> Result<()> {
        if let Some(err) = self.not_leader(leader) {
            return Err(err);
        }
        if Instant::now() + Duration::from_millis(50) >= deadline {
            return Err(CoordError::Unavailable("etcdserver: no leader".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    }

    /// Succeeds when this node leads. Otherwise `NotLeader` with the leader's address
    /// once another node is known to lead; while the cluster elects, waits (at most
    /// `request_timeout_ms`) for the result. For leader-only work that is not a write
    /// (membership changes, checks against the leader's memory).
    pub async fn ensure_leader(&self) -> Result<()> {
        let deadline = Instant::now() + self.request_timeout();
        loop {
            if self.is_leader() {
                return Ok(());
            }
            let (leader, _) = self.leader();
            self.retry_after_forward(leader, deadline).await?;
        }
    }

    /// Proposes `cmd` stamped with this node's clock and waits until it is applied.
    /// Waits at most `request_timeout_ms` for a leader and a quorum. A refusal by the
    /// state machine is `CoordError::Apply`; on a follower the answer is `NotLeader`
    /// with the leader's address, for the caller to forward.
    pub async fn write(&self, cmd: Command) -> Result<Written> {
        let deadline = Instant::now() + self.request_timeout();
        loop {
            let entry = LogEntry { time_ms: now_ms(), cmd: cmd.clone() };
            match tokio::time::timeout_at(deadline, self.raft.client_write(entry)).await {
                Err(_) => {
                    return Err(CoordError::Unavailable(format!(
                    "etcdserver: request timed out: not committed within {} ms (no quorum?); it may still be applied",
                    self.config.request_timeout_ms
                )))
                }
                Ok(Ok(resp)) => {
                    let r = resp.data;
                    return match r.result {
                        Ok(output) => Ok(Written { revision: r.revision, output }),
                        Err(e) => Err(CoordError::Apply(e)),
                    };
                }
                // The entry was appended here and then dropped by a leader change: it may
                // still commit through the new leader, so retrying could apply it twice.
                Ok(Err(e)) if matches!(e.api_error(), Some(ClientWriteError::LogEntryDiscarded(_))) => {
                    return Err(CoordError::Unavailable(format!(
                        "etcdserver: leader changed while the write was in flight; its outcome is unknown ({e})"
                    )));
                }
                Ok(Err(e)) => {
                    let Some(fwd) = e.forward_to_leader() else {
                        return Err(CoordError::Unavailable(format!("write failed, outcome unknown: {e}")));
                    };
                    self.retry_after_forward(fwd.leader_id, deadline).await?;
                }
            }
        }
    }

    /// Waits until a read of the local state is linearizable: this node is the leader,
    /// a quorum confirmed it (ReadIndex), and everything up to the read index is applied.
    pub(crate) async fn read_barrier(&self) -> Result<()> {
        if self.config.canary_unsafe_local_reads && self.is_leader() {
            // The deliberate bug the fault-injection suite must catch (see CoordConfig).
            return Ok(());
        }
        let deadline = Instant::now() + self.request_timeout();
        loop {
            match tokio::time::timeout_at(deadline, self.raft.ensure_linearizable(ReadPolicy::ReadIndex)).await {
                Err(_) => {
                    return Err(CoordError::Unavailable(
                        "etcdserver: request timed out: leadership not confirmed by a quorum".into(),
                    ))
                }
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => {
                    let Some(fwd) = e.forward_to_leader() else {
                        return Err(CoordError::Unavailable(format!("read barrier failed: {e}")));
                    };
                    self.retry_after_forward(fwd.leader_id, deadline).await?;
                }
            }
        }
    }

    /// Whether `id` is a voter or learner in this node's latest membership (committed or
    /// not).
    pub fn is_member(&self, id: NodeId) -> bool {
        use openraft::async_runtime::watch::WatchReceiver;
        self.raft.server_metrics().borrow_watched().membership_config.membership().get_node(&id).is_some()
    }

    pub fn is_leader(&self) -> bool {
        use openraft::async_runtime::watch::WatchReceiver;
        self.raft.server_metrics().borrow_watched().state == ServerState::Leader
    }

    /// Whether this master is in touch with a leader: it leads with quorum contact, or
    /// it follows a leader it knows of (a follower cut off from the quorum soon starts
    /// elections and forgets its leader).
    pub fn has_live_leader(&self) -> bool {
        if self.is_leader() {
            self.quorum_contact()
        } else {
            self.leader().0.is_some()
        }
    }

    /// On the leader: whether a quorum acknowledged it recently (see [`crate::leader`]).
    pub fn quorum_contact(&self) -> bool {
        self.quorum_contact.load(Ordering::Relaxed)
    }

    /// The masters, the leader's id and this node's Raft state,
    /// read without copying all metrics (agents' sessions ask for it often).
    pub fn masters(&self) -> MastersView {
        use openraft::async_runtime::watch::WatchReceiver;
        let m = self.raft.server_metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        MastersView {
            leader: m.current_leader,
            state: m.state,
            nodes: membership
                .nodes()
                .map(|(id, n)| MasterInfo {
                    id: *id,
                    name: n.name.clone(),
                    addr: n.addr.clone(),
                    voter: voters.contains(id),
                })
                .collect(),
        }
    }

    /// Runs a membership change, retrying while a previous one is still in progress
    /// (concurrent joins, a promotion), within `request_timeout_ms`.
    pub(crate) async fn change_membership<F, Fut>(&self, what: &str, f: F) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<
            Output = Result<
                openraft::raft::ClientWriteResponse<TypeConfig>,
                RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
            >,
        >,
    {
        let deadline = Instant::now() + self.request_timeout();
        loop {
            match tokio::time::timeout_at(deadline, f()).await {
                Err(_) => return Err(CoordError::Unavailable(format!("{what} was not committed in time"))),
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => {
                    let in_progress = matches!(
                        e.api_error(),
                        Some(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(_)))
                    );
                    if in_progress && Instant::now() + Duration::from_millis(100) < deadline {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    return Err(match e.forward_to_leader() {
                        Some(f) => self.not_leader(f.leader_id).unwrap_or(CoordError::Unavailable("no leader".into())),
                        None => CoordError::FailedPrecondition(format!("{what}: {e}")),
                    });
                }
            }
        }
    }

    /// Adds a node as a learner (non-blocking: replication to it starts in the background).
    pub async fn add_learner(&self, id: NodeId, info: NodeInfo) -> Result<()> {
        self.change_membership("adding the learner", || self.raft.add_learner(id, info.clone(), false)).await
    }

    /// Leaves the Raft group: removes `node_id` (voter or learner) from the membership.
    pub async fn remove_member(&self, node_id: NodeId) -> Result<()> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        if membership.get_node(&node_id).is_none() {
            return Err(CoordError::NotFound(format!("node {node_id} is not a member")));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let change = if voters.contains(&node_id) {
            if voters.len() == 1 {
                return Err(CoordError::FailedPrecondition(format!(
                    "node {node_id} is the last voter; removing it would destroy the cluster"
                )));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))
        };
        self.change_membership("removing the member", || self.raft.change_membership(change.clone(), false)).await
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// Runs `f`, which blocks (holds the state lock, writes RocksDB) for long enough that the
/// runtime should move its other tasks to another worker meanwhile. On a current-thread
/// runtime (tests) it just runs `f`.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
