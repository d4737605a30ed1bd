//! A running coord node: the Raft instance over the RocksDB store, the write path
//! (leader-stamped, bounded wait), the read barrier (ReadIndex) and the leader's
//! background duties (promoting caught-up learners, finishing `init`, compacting history).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::errors::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, ReadPolicy, ServerState};
use rocksdb::DB;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::command::{Command, Response};
use crate::config::CoordConfig;
use crate::error::{CoordError, Result};
use crate::liveness::{Liveness, NodeClock, Timeouts};
use crate::network::{endpoint, Network};
use crate::registry::RegistryCommand;
use crate::store::state_machine::ClusterMeta;
use crate::store::{open_db, LogStore, SmState, StateMachineStore};
use crate::types::{LogEntry, NodeId, NodeInfo, Raft, TypeConfig};

/// The masters (Raft members) as this node sees them.
#[derive(Debug, Clone)]
pub struct MastersView {
    pub leader: Option<NodeId>,
    pub state: ServerState,
    /// (id, name, addr, is voter), by id.
    pub nodes: Vec<(NodeId, String, String, bool)>,
}

impl MastersView {
    pub fn get(&self, id: NodeId) -> Option<&(NodeId, String, String, bool)> {
        self.nodes.iter().find(|n| n.0 == id)
    }
}

/// Cluster identity the `init` node proposes once it leads, until it is committed.
#[derive(Debug, Clone)]
pub struct InitSecrets {
    pub cluster_id: String,
    pub manager_secret: String,
    pub worker_secret: String,
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
}

pub struct CoordNode {
    pub id: NodeId,
    pub name: String,
    pub raft: Raft,
    pub state: Arc<RwLock<SmState>>,
    pub db: Arc<DB>,
    pub config: CoordConfig,
    pub advertise_addr: String,
    init: Option<InitSecrets>,
    channels: Mutex<BTreeMap<String, Channel>>,
    removed_tx: watch::Sender<bool>,
    /// The etcd header's 64-bit cluster id, once the identity is committed.
    cluster_id_u64: std::sync::OnceLock<u64>,
    /// Heartbeat table; meaningful on the leader only.
    pub liveness: Liveness,
    /// The last applied registry event index (changes on every registry event).
    pub registry_events: Arc<watch::Sender<u64>>,
    /// On the leader: a quorum acknowledged it within two election timeouts (refreshed
    /// by the liveness loop).
    quorum_contact: std::sync::atomic::AtomicBool,
    /// Agents' IPAM reports and leaks seen; meaningful on the leader only.
    pub leaks: crate::ipam::repair::LeakTracker,
}

/// Milliseconds since the Unix epoch; only ever stamped into entries by a proposer.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl CoordNode {
    pub async fn open(opts: NodeOptions) -> Result<Arc<CoordNode>> {
        opts.config.validate().map_err(CoordError::InvalidArgument)?;
        let raft_config = Arc::new(opts.config.raft_config().map_err(CoordError::InvalidArgument)?);
        let db = open_db(&opts.data_dir.join("db")).map_err(|e| CoordError::Internal(format!("open RocksDB: {e}")))?;
        let log = LogStore::new(db.clone());
        let sync_inline = log.sync_inline_switch();
        let sm = StateMachineStore::new(db.clone(), opts.data_dir.join("snapshot"))
            .map_err(|e| CoordError::Internal(format!("open state machine: {e}")))?;
        let state = sm.state();
        let registry_events = sm.registry_events();
        let raft = Raft::new(opts.node_id, raft_config, Network::default(), log, sm)
            .await
            .map_err(|e| CoordError::Internal(format!("start raft: {e}")))?;
        let (removed_tx, _) = watch::channel(false);
        let node = Arc::new(CoordNode {
            id: opts.node_id,
            name: opts.name,
            raft,
            state,
            db,
            config: opts.config,
            advertise_addr: opts.advertise_addr,
            init: opts.init,
            channels: Mutex::new(BTreeMap::new()),
            removed_tx,
            cluster_id_u64: std::sync::OnceLock::new(),
            liveness: Liveness::default(),
            registry_events,
            quorum_contact: std::sync::atomic::AtomicBool::new(true),
            leaks: Default::default(),
        });
        // Followers fsync appends inline, leaders on the sync thread (see LogStore).
        // server_metrics changes only with state, vote or membership, not on every commit.
        let mut metrics = node.raft.server_metrics();
        tokio::spawn(async move {
            use openraft::async_runtime::watch::WatchReceiver;
            loop {
                let leader = metrics.borrow_watched().state == ServerState::Leader;
                sync_inline.store(!leader, std::sync::atomic::Ordering::Relaxed);
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
        node.spawn_background();
        node.spawn_liveness();
        Ok(node)
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

    /// Resolves when this node has been removed from the cluster.
    pub fn removed(&self) -> watch::Receiver<bool> {
        self.removed_tx.subscribe()
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
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

    /// The committed cluster identity and join secrets (empty id until `init` recorded it).
    pub fn cluster(&self) -> ClusterMeta {
        self.state.read().expect("sm lock").cluster.clone()
    }

    /// The committed cluster id; empty until `init` recorded it.
    pub fn cluster_id(&self) -> String {
        self.state.read().expect("sm lock").cluster.cluster_id.clone()
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
        if let Some(c) = ch.get(addr) {
            return Ok(c.clone());
        }
        let c = endpoint(addr).map_err(|e| CoordError::Internal(format!("bad address {addr}: {e}")))?.connect_lazy();
        ch.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Where a request that must run on the leader goes: `None` when this node leads,
    /// a channel to the leader when it may be forwarded there once; `NotLeader` (with
    /// the address) when it was already forwarded, `Unavailable` without a leader.
    pub fn forward_channel(&self, forwarded: bool) -> Result<Option<Channel>> {
        if self.is_leader() {
            return Ok(None);
        }
        match self.leader() {
            (Some(id), Some(addr)) if id != self.id && !forwarded => Ok(Some(self.channel(&addr)?)),
            (Some(id), addr) if id != self.id => Err(CoordError::NotLeader { leader_id: Some(id), leader_addr: addr }),
            _ => Err(CoordError::Unavailable("no leader: the cluster is electing or has lost quorum".into())),
        }
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

    /// Proposes `cmd` stamped with this node's clock and waits until it is applied.
    /// Waits at most `request_timeout_ms` for a leader and a quorum.
    pub async fn write(&self, cmd: Command) -> Result<Response> {
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
                Ok(Ok(resp)) => return Ok(resp.data),
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
    pub async fn read_barrier(&self) -> Result<()> {
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

    pub fn is_leader(&self) -> bool {
        use openraft::async_runtime::watch::WatchReceiver;
        self.raft.server_metrics().borrow_watched().state == ServerState::Leader
    }

    /// Masters as (id, name, addr, is voter), the leader's id and this node's Raft state,
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
                .map(|(id, n)| (*id, n.name.clone(), n.addr.clone(), voters.contains(id)))
                .collect(),
        }
    }

    fn spawn_background(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut seen_self = false;
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut last_compact_check = Instant::now();
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                let m = node.metrics();
                if m.state == ServerState::Shutdown {
                    return;
                }
                let membership = m.membership_config.membership();
                let member = membership.get_node(&node.id).is_some();
                if member {
                    seen_self = true;
                } else if seen_self && !*node.removed_tx.borrow() {
                    info!(node = node.id, "this node was removed from the cluster");
                    let _ = node.removed_tx.send(true);
                }
                if m.state != ServerState::Leader {
                    node.leaks.reset();
                    continue;
                }
                node.finish_init().await;
                node.promote_learners(&m).await;
                if last_compact_check.elapsed() >= Duration::from_secs(1) {
                    last_compact_check = Instant::now();
                    node.auto_compact().await;
                    node.repair_leaks().await;
                }
            }
        });
    }

    /// The leader's liveness loop: every 100 ms, decide transitions from the heartbeat
    /// table and commit them as one entry.
    fn spawn_liveness(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // One transitions entry in flight at a time. It is written from its own task:
            // a leader cut off from the quorum waits up to request_timeout_ms for it, and
            // this loop must keep ticking meanwhile, or `quorum_contact` goes stale and the
            // cut-off leader keeps acking agents that should move to the new leader (found
            // by the jepsen-style registry workload under `primaries`).
            let in_flight = Arc::new(std::sync::atomic::AtomicBool::new(false));
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                let (state, term) = {
                    use openraft::async_runtime::watch::WatchReceiver;
                    let m = node.raft.metrics();
                    let m = m.borrow_watched();
                    (m.state, m.current_term)
                };
                if state == ServerState::Shutdown {
                    return;
                }
                if state != ServerState::Leader {
                    node.liveness.step_down();
                    continue;
                }
                if let Some(cmd) = node.liveness_tick(term, &in_flight) {
                    in_flight.store(true, std::sync::atomic::Ordering::SeqCst);
                    let (node, in_flight) = (node.clone(), in_flight.clone());
                    tokio::spawn(async move {
                        if let Err(e) = node.write(cmd).await {
                            warn!("committing agent state transitions failed, will retry: {e}");
                        }
                        in_flight.store(false, std::sync::atomic::Ordering::SeqCst);
                    });
                }
            }
        });
    }

    /// On the leader: whether a quorum acknowledged it recently (see `liveness_tick`).
    pub fn quorum_contact(&self) -> bool {
        self.quorum_contact.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Refreshes `quorum_contact` and returns the transitions entry to commit, if any
    /// (none while the previous one is still in flight).
    fn liveness_tick(&self, term: u64, in_flight: &std::sync::atomic::AtomicBool) -> Option<Command> {
        let lease = Duration::from_millis(2 * self.config.election_timeout_max_ms);
        let contact = {
            use openraft::Instant as _;
            self.metrics().last_quorum_acked.map(|t| t.elapsed() < lease).unwrap_or(true)
        };
        self.quorum_contact.store(contact, std::sync::atomic::Ordering::Relaxed);
        if !contact || in_flight.load(std::sync::atomic::Ordering::SeqCst) {
            // Without a quorum nothing can be committed, and the agents' silence is not
            // theirs to answer for.
            return None;
        }
        let timeouts = Timeouts {
            unreachable_after: Duration::from_millis(self.config.unreachable_after_ms),
            down_after: Duration::from_millis(self.config.down_after_ms),
        };
        let nodes: Vec<NodeClock> = {
            let st = self.state.read().expect("sm lock");
            st.registry
                .nodes
                .values()
                .map(|n| NodeClock { id: n.node_id, state: n.state, since_ms: n.state_since_ms })
                .collect()
        };
        let transitions = self.liveness.decide(term, Instant::now(), now_ms(), timeouts, nodes);
        if transitions.is_empty() {
            return None;
        }
        // Decisions were made on this node's applied state; the entry applies each
        // transition only if its `from` state still holds.
        for t in &transitions {
            info!(node = t.node_id, from = %t.from, to = %t.to, reason = %t.reason, "agent state transition");
        }
        Some(Command::Registry(RegistryCommand::Transitions { term, transitions }))
    }

    /// Current IPAM leaks and conflicts, as the leader sees them.
    pub fn ipam_check(&self) -> Result<(Vec<crate::ipam::repair::Leak>, Vec<crate::ipam::repair::Conflict>)> {
        let st = self.state.read().expect("sm lock");
        self.leaks
            .check(&self.db, &st.ipam, &st.registry.removed, Instant::now())
            .map_err(|e| CoordError::Internal(format!("IPAM check: {e}")))
    }

    /// Releases leaked addresses whose grace period is over (leader only).
    async fn repair_leaks(&self) {
        let leaks = match self.ipam_check() {
            Ok((l, _)) => l,
            Err(e) => {
                warn!("leak check failed: {e}");
                return;
            }
        };
        let grace = Duration::from_millis(self.config.ip_leak_grace_ms);
        for (network, holdings) in crate::ipam::repair::LeakTracker::due(&leaks, grace, Instant::now()) {
            info!(%network, count = holdings.len(), "releasing leaked addresses");
            let cmd = Command::Ipam(crate::ipam::IpamCommand::ReleaseLeaked { network, holdings });
            if let Err(e) = self.write(cmd).await {
                warn!("releasing leaked addresses failed, will retry: {e}");
            }
        }
    }

    async fn finish_init(&self) {
        let Some(init) = &self.init else { return };
        if !self.cluster_id().is_empty() {
            return;
        }
        let cmd = Command::InitCluster {
            cluster_id: init.cluster_id.clone(),
            manager_secret: init.manager_secret.clone(),
            worker_secret: init.worker_secret.clone(),
        };
        if let Err(e) = self.write(cmd).await {
            warn!("recording cluster identity failed, will retry: {e}");
        }
    }

    async fn promote_learners(&self, m: &openraft::RaftMetrics<crate::types::TypeConfig>) {
        let membership = m.membership_config.membership();
        // Only from a settled (non-joint) configuration.
        if membership.get_joint_config().len() != 1 {
            return;
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.len() >= self.config.max_voters {
            return;
        }
        let last = m.last_log_index.unwrap_or(0);
        let Some(repl) = &m.replication else { return };
        for learner in membership.learner_ids() {
            let matched = repl.get(&learner).cloned().flatten().map(|l| l.index).unwrap_or(0);
            if matched + self.config.promote_lag_entries >= last && matched > 0 {
                info!(learner, matched, last, "promoting caught-up learner to voter");
                let change = ChangeMembers::AddVoterIds(BTreeSet::from([learner]));
                if let Err(e) = self.raft.change_membership(change, false).await {
                    warn!(learner, "promotion failed: {e}");
                }
                return;
            }
        }
    }

    async fn auto_compact(&self) {
        let retention = self.config.history_retention_revisions;
        if retention == 0 {
            return;
        }
        // Small steps keep each compaction entry's apply short (a few ms); several steps
        // per check keep up with a fast writer.
        for _ in 0..16 {
            let (rev, compacted) = {
                let st = self.state.read().expect("sm lock");
                (st.kv.revision, st.kv.compact_revision)
            };
            let target = rev - retention;
            if target <= compacted + retention / 10 {
                return;
            }
            let step = target.min(compacted + 2_000);
            if let Err(e) = self.write(Command::Compact { revision: step }).await {
                warn!("auto compaction to {step} failed: {e}");
                return;
            }
        }
    }

    /// Runs a membership change, retrying while a previous one is still in progress
    /// (concurrent joins, a promotion), within `request_timeout_ms`.
    async fn change_membership<F, Fut>(&self, what: &str, f: F) -> Result<()>
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
