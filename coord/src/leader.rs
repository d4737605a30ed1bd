//! The leader's duties, started when this node gains leadership (one set per term) and
//! stopped when it loses it:
//! - the liveness loop: refreshes `quorum_contact` and commits agents' state transitions;
//! - the lease loop: counts leases down and commits their expiries;
//! - the scheduler loop ([`crate::scheduler`]): places, replaces and kills tasks, and
//!   moves deployments along;
//! - housekeeping: finishing `init`, promoting caught-up learners, compacting KV history,
//!   releasing leaked IP addresses.
//!
//! Everything here is advisory memory plus proposals: what a duty decides takes effect
//! only through a committed command, so a deposed leader's late proposal changes
//! nothing (transitions are compare-and-set, leak releases check the owner).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::{ChangeMembers, ServerState};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::cluster::CaRecord;
use crate::command::Command;
use crate::error::{CoordError, Result};
use crate::ipam::repair::{Conflict, Leak, LeakTracker};
use crate::ipam::IpamCommand;
use crate::liveness::{NodeClock, Timeouts};
use crate::node::{now_ms, CoordNode};
use crate::registry::RegistryCommand;
use crate::types::{NodeId, TypeConfig};

/// The running duties of one leadership. Dropping it stops them and forgets what the
/// leader held in memory (heartbeat table, agents' IPAM reports).
pub(crate) struct Leadership {
    term: u64,
    node: Weak<CoordNode>,
    tasks: Vec<JoinHandle<()>>,
}

impl Leadership {
    pub(crate) fn start(node: &Arc<CoordNode>, term: u64) -> Leadership {
        info!(node = node.id, term, "leadership gained: starting the leader's duties");
        // Leftovers of an earlier leadership are no evidence about this one.
        node.liveness.step_down();
        node.leaks.reset();
        node.lessor.reset();
        node.quorum_contact.store(true, Ordering::Relaxed);
        let weak = Arc::downgrade(node);
        Leadership {
            term,
            tasks: vec![
                tokio::spawn(liveness_loop(weak.clone())),
                tokio::spawn(housekeeping_loop(weak.clone())),
                tokio::spawn(lease_loop(weak.clone(), term)),
                tokio::spawn(crate::scheduler::scheduler_loop(weak.clone())),
            ],
            node: weak,
        }
    }

    pub(crate) fn term(&self) -> u64 {
        self.term
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(node) = self.node.upgrade() {
            info!(node = node.id, term = self.term, "leadership ended: leader's duties stopped");
            node.liveness.step_down();
            node.leaks.reset();
            node.lessor.reset();
        }
    }
}

/// Leases one expiry entry names. The loop commits at most one such entry per tick and
/// one at a time, so expiries run at up to 10,000 leases a second (etcd: 1,000). Each
/// expired lease deletes its keys in the apply path that writers share: 100,000 leases
/// running out at once, sent 4 entries at a time, took writers from 2,160 puts/s to 410
/// for 3 s; paced, they keep most of their rate for about 10 s.
const EXPIRIES_PER_ENTRY: usize = 1_000;
const EXPIRY_ENTRIES_IN_FLIGHT: usize = 1;

/// Every 100 ms: syncs the countdown with the replicated leases and commits expiries of
/// the leases that ran out (fenced by `term`). Renewals commit their own checkpoints.
async fn lease_loop(weak: Weak<CoordNode>, term: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let grace = Duration::from_millis(0);
    let mut synced: Option<(u64, usize)> = None;
    let mut last_tick = Instant::now();
    let mut last_full_sync = Instant::now();
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut first = true;
    let mut contact_lost: Option<Instant> = None;
    loop {
        tick.tick().await;
        let Some(node) = weak.upgrade() else { return };
        let now = Instant::now();
        // A leader that was not scheduled (paused, starved) saw no keepalive meanwhile:
        // that silence is not the clients'.
        let gap = now.duration_since(last_tick);
        last_tick = now;
        if gap > Duration::from_millis(1_000) {
            warn!(stalled_ms = gap.as_millis() as u64, "lease loop was not scheduled; moving every lease deadline");
            node.lessor.shift(gap);
        }
        if !node.is_leader() {
            continue;
        }
        if first && node.read_barrier().await.is_err() {
            // Not confirmed yet, or predecessor's entries not applied: counting from a
            // partial picture could miss a checkpoint. Try again next tick.
            continue;
        }
        // Sync when leases came or went, and every second regardless.
        let seen = node.view(|v| (v.leases().generation, v.leases().by_id.len()));
        if first || synced != Some(seen) || now.duration_since(last_full_sync) > Duration::from_secs(1) {
            // Leases inherited from an earlier leadership get one election timeout of
            // grace; those granted under this one have their own apply time.
            let grace = if first { Duration::from_millis(node.config.election_timeout_max_ms) } else { grace };
            node.sync_lessor(grace);
            synced = Some(seen);
            last_full_sync = now;
            first = false;
        }
        if !node.quorum_contact.load(Ordering::Relaxed) {
            // Nothing could commit, and renewals are refused meanwhile: if contact comes
            // back under this leadership, that time is not held against the clients.
            contact_lost.get_or_insert(now);
            continue;
        }
        if let Some(since) = contact_lost.take() {
            node.lessor.shift(now.duration_since(since));
        }
        let ids = if in_flight.load(Ordering::SeqCst) < EXPIRY_ENTRIES_IN_FLIGHT {
            node.lessor.due(now, EXPIRIES_PER_ENTRY)
        } else {
            Vec::new()
        };
        if !ids.is_empty() {
            in_flight.fetch_add(1, Ordering::SeqCst);
            let (node, in_flight) = (node.clone(), in_flight.clone());
            tokio::spawn(async move {
                let cmd = Command::Lease(crate::lease::LeaseCommand::Expire { term, ids: ids.clone() });
                match node.write(cmd).await {
                    Ok(_) => {
                        // Gone now (or, if this term has passed, the next leader counts
                        // them): a lease granted again under one of these ids starts
                        // with a timer of its own.
                        node.lessor.forget(&ids);
                        info!(leases = ids.len(), "leases expired")
                    }
                    Err(e) => {
                        warn!("committing lease expiries failed, will retry: {e}");
                        node.lessor.expiry_failed(&ids);
                    }
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }
}

/// Every 100 ms: decide transitions from the heartbeat table and commit them as one entry.
async fn liveness_loop(weak: Weak<CoordNode>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One transitions entry in flight at a time. It is written from its own task: a
    // leader cut off from the quorum waits up to request_timeout_ms for it, and this loop
    // must keep ticking meanwhile, or `quorum_contact` goes stale and the cut-off leader
    // keeps acking agents that should move to the new leader (found by the jepsen-style
    // registry workload under `primaries`).
    let in_flight = Arc::new(AtomicBool::new(false));
    loop {
        tick.tick().await;
        let Some(node) = weak.upgrade() else { return };
        let (state, term) = {
            use openraft::async_runtime::watch::WatchReceiver;
            let m = node.raft.metrics();
            let m = m.borrow_watched();
            (m.state, m.current_term)
        };
        if state != ServerState::Leader {
            // The role watcher stops this loop; until it does, decide nothing.
            continue;
        }
        if let Some(cmd) = liveness_tick(&node, term, &in_flight) {
            in_flight.store(true, Ordering::SeqCst);
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                if let Err(e) = node.write(cmd).await {
                    warn!("committing agent state transitions failed, will retry: {e}");
                }
                in_flight.store(false, Ordering::SeqCst);
            });
        }
    }
}

/// Refreshes `quorum_contact` and returns the transitions entry to commit, if any
/// (none while the previous one is still in flight).
fn liveness_tick(node: &CoordNode, term: u64, in_flight: &AtomicBool) -> Option<Command> {
    let lease = Duration::from_millis(2 * node.config.election_timeout_max_ms);
    let contact = {
        use openraft::Instant as _;
        let m = node.metrics();
        // A lone voter is its own quorum: nothing acks it, so the last ack (from its
        // election after a restart) only grows old.
        let alone = m.membership_config.membership().voter_ids().eq([node.id]);
        alone || m.last_quorum_acked.map(|t| t.elapsed() < lease).unwrap_or(true)
    };
    node.quorum_contact.store(contact, Ordering::Relaxed);
    if !contact || in_flight.load(Ordering::SeqCst) {
        // Without a quorum nothing can be committed, and the agents' silence is not
        // theirs to answer for.
        return None;
    }
    let timeouts = Timeouts {
        unreachable_after: Duration::from_millis(node.config.unreachable_after_ms),
        down_after: Duration::from_millis(node.config.down_after_ms),
    };
    let nodes: Vec<NodeClock> = node.view(|v| {
        v.registry()
            .nodes
            .values()
            .map(|n| NodeClock { id: n.node_id, state: n.state, since_ms: n.state_since_ms })
            .collect()
    });
    let transitions = node.liveness.decide(term, Instant::now(), now_ms(), timeouts, nodes);
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

/// Every 250 ms: finish `init` and promote learners; every second: compact history and
/// release leaked addresses.
async fn housekeeping_loop(weak: Weak<CoordNode>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_slow = Instant::now();
    loop {
        tick.tick().await;
        let Some(node) = weak.upgrade() else { return };
        let m = node.metrics();
        if m.state != ServerState::Leader {
            continue;
        }
        finish_init(&node).await;
        promote_learners(&node, &m).await;
        if last_slow.elapsed() >= Duration::from_secs(1) {
            last_slow = Instant::now();
            auto_compact(&node).await;
            repair_leaks(&node).await;
            retire_departed(&node, &m).await;
        }
    }
}

/// The `init` node proposes the cluster's identity, then its CA, until both are
/// committed.
async fn finish_init(node: &CoordNode) {
    let Some(init) = &node.init else { return };
    let (identity, ca) = node.view(|v| (v.cluster().is_initialized(), v.ca().is_some()));
    if !identity {
        let cmd = Command::InitCluster {
            cluster_id: init.cluster_id.clone(),
            manager_secret: init.manager_secret.clone(),
            worker_secret: init.worker_secret.clone(),
        };
        if let Err(e) = node.write(cmd).await {
            warn!("recording cluster identity failed, will retry: {e}");
            return;
        }
    }
    if !ca {
        let record = CaRecord {
            cert: init.ca_cert.clone(),
            key: init.ca_key.clone(),
            trusted: vec![init.ca_cert.clone()],
            bridges: vec![],
        };
        if let Err(e) = node.write(Command::SetCa { prev_digest: String::new(), record }).await {
            warn!("recording the cluster CA failed, will retry: {e}");
        }
    }
}

/// A master that left is recorded as retired by the leader that removed it; a leader
/// that removed itself cannot record it (it no longer leads). Its successor does: a
/// master that registered (it does so only after it became a member) and is in
/// neither the membership nor the retired set has left.
async fn retire_departed(node: &CoordNode, m: &openraft::RaftMetrics<TypeConfig>) {
    let membership = m.membership_config.membership();
    if membership.get_joint_config().len() != 1 {
        return;
    }
    let departed: Vec<u64> = node.view(|v| {
        v.registry()
            .nodes
            .values()
            .filter(|n| n.role == crate::registry::Role::Manager)
            .map(|n| n.node_id)
            .filter(|id| membership.get_node(id).is_none() && !v.retired().contains(id))
            .collect()
    });
    for node_id in departed {
        info!(node = node_id, "recording that master {node_id} left the cluster");
        if let Err(e) = node.write(Command::RetireMaster { node_id }).await {
            warn!("recording a departed master failed, will retry: {e}");
            return;
        }
    }
}

async fn promote_learners(node: &CoordNode, m: &openraft::RaftMetrics<TypeConfig>) {
    let membership = m.membership_config.membership();
    // Only from a settled (non-joint) configuration.
    if membership.get_joint_config().len() != 1 {
        return;
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    if voters.len() >= node.config.max_voters {
        return;
    }
    let last = m.last_log_index.unwrap_or(0);
    let Some(repl) = &m.replication else { return };
    for learner in membership.learner_ids() {
        let matched = repl.get(&learner).cloned().flatten().map(|l| l.index).unwrap_or(0);
        if matched + node.config.promote_lag_entries >= last && matched > 0 {
            info!(learner, matched, last, "promoting caught-up learner to voter");
            let change = ChangeMembers::AddVoterIds(BTreeSet::from([learner]));
            if let Err(e) = node.raft.change_membership(change, false).await {
                warn!(learner, "promotion failed: {e}");
            }
            return;
        }
    }
}

async fn auto_compact(node: &CoordNode) {
    let retention = node.config.history_retention_revisions;
    if retention == 0 {
        return;
    }
    // Small steps keep each compaction entry's apply short (a few ms); several steps
    // per check keep up with a fast writer.
    for _ in 0..16 {
        let (rev, compacted) = node.view(|v| (v.revision(), v.compact_revision()));
        let target = rev - retention;
        if target <= compacted + retention / 10 {
            return;
        }
        let step = target.min(compacted + 2_000);
        if let Err(e) = node.write(Command::Compact { revision: step }).await {
            warn!("auto compaction to {step} failed: {e}");
            return;
        }
    }
}

/// Current IPAM leaks and conflicts, as this node's leak tracker sees them (the leader's
/// is the one that hears agents' reports).
pub fn ipam_check(node: &CoordNode) -> Result<(Vec<Leak>, Vec<Conflict>)> {
    node.view(|v| {
        let mut store = v.ipam_store();
        node.leaks.check(&mut store, v.ipam(), &v.registry().removed, Instant::now())
    })
    .map_err(|e| CoordError::Internal(format!("IPAM check: {e}")))
}

/// Releases leaked addresses whose grace period is over.
async fn repair_leaks(node: &CoordNode) {
    let leaks = match ipam_check(node) {
        Ok((l, _)) => l,
        Err(e) => {
            warn!("leak check failed: {e}");
            return;
        }
    };
    let grace = Duration::from_millis(node.config.ip_leak_grace_ms);
    for (network, holdings) in LeakTracker::due(&leaks, grace, Instant::now()) {
        info!(%network, count = holdings.len(), "releasing leaked addresses");
        let cmd = Command::Ipam(IpamCommand::ReleaseLeaked { network, holdings });
        if let Err(e) = node.write(cmd).await {
            warn!("releasing leaked addresses failed, will retry: {e}");
        }
    }
}
