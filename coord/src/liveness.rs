//! The leader's heartbeat tracker. Heartbeats are not Raft writes: the leader keeps the
//! time it last heard each agent in memory and commits only state transitions (see
//! [`crate::registry`]), batched into one entry per tick.
//!
//! Rules that keep a failover harmless:
//! - a new leadership (a new term) starts with an empty table and counts every agent's
//!   silence from its own start of leadership, so no agent is marked unreachable
//!   because the leader changed;
//! - if the tracker itself was not scheduled for a long time (the leader process was
//!   paused or starved), it restarts the grace period instead of blaming the agents;
//! - transitions are compare-and-set on the committed state, so a decision made on a
//!   stale view, or proposed by a deposed leader, changes nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::registry::{NodeState, Transition};
use crate::types::NodeId;

#[derive(Debug, Clone, Copy)]
struct Seen {
    last: Instant,
    /// The open session's id, if the agent holds one with this leader.
    session: Option<u64>,
}

#[derive(Debug)]
struct Inner {
    /// Term of the leadership being tracked; 0 when this node does not lead.
    term: u64,
    leader_since: Instant,
    last_tick: Instant,
    seen: HashMap<NodeId, Seen>,
}

/// What the leader knows of an agent right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentView {
    pub last_heartbeat_age: Duration,
    pub connected: bool,
}

#[derive(Debug)]
pub struct Liveness {
    inner: Mutex<Inner>,
    next_session: AtomicU64,
}

/// A node as the liveness rule needs it: id, committed state, and when (leader clock,
/// ms since the epoch) it entered that state.
#[derive(Debug, Clone, Copy)]
pub struct NodeClock {
    pub id: NodeId,
    pub state: NodeState,
    pub since_ms: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub unreachable_after: Duration,
    pub down_after: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        let now = Instant::now();
        Liveness {
            inner: Mutex::new(Inner { term: 0, leader_since: now, last_tick: now, seen: HashMap::new() }),
            next_session: AtomicU64::new(1),
        }
    }
}

impl Liveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("liveness lock")
    }

    /// Records a new heartbeat session of `id`; returns its session id.
    pub fn open_session(&self, id: NodeId, now: Instant) -> u64 {
        let sid = self.next_session.fetch_add(1, Ordering::Relaxed);
        self.lock().seen.insert(id, Seen { last: now, session: Some(sid) });
        sid
    }

    pub fn beat(&self, id: NodeId, sid: u64, now: Instant) {
        let mut g = self.lock();
        let s = g.seen.entry(id).or_insert(Seen { last: now, session: Some(sid) });
        s.last = now;
        // Session ids grow: a late beat of an older, overlapping session must not take
        // the slot back from the newer one.
        s.session = s.session.max(Some(sid));
    }

    /// Ends session `sid` of `id`, unless a newer session replaced it.
    pub fn close_session(&self, id: NodeId, sid: u64) {
        if let Some(s) = self.lock().seen.get_mut(&id) {
            if s.session == Some(sid) {
                s.session = None;
            }
        }
    }

    pub fn view(&self, id: NodeId, now: Instant) -> Option<AgentView> {
        let g = self.lock();
        g.seen.get(&id).map(|s| AgentView {
            last_heartbeat_age: now.saturating_duration_since(s.last),
            connected: s.session.is_some(),
        })
    }

    /// Called when this node is not the leader: forget everything.
    pub fn step_down(&self) {
        let mut g = self.lock();
        g.term = 0;
        g.seen.clear();
    }

    /// One tick of the leader in `term`: the transitions to propose for `nodes`. Starts a
    /// new grace period on a new term or after a stall.
    ///
    /// A node's committed `state_since_ms` (leader clock) also bounds its silence: a node
    /// that registered or became active a moment ago has not been silent for long, even
    /// if this leader has not heard it yet; and a node turns down only `down_after` after
    /// it turned unreachable. `now_ms` is this leader's clock; a clock behind the
    /// stamping leader's only delays transitions.
    pub fn decide(
        &self,
        term: u64,
        now: Instant,
        now_ms: u64,
        t: Timeouts,
        nodes: impl IntoIterator<Item = NodeClock>,
    ) -> Vec<Transition> {
        let mut g = self.lock();
        if g.term != term {
            tracing::info!(term, "leadership started: every agent gets a full grace period from now");
            g.term = term;
            g.leader_since = now;
            // Sessions opened before the term is seen here belong to this leadership too
            // (the gRPC handler checks leadership before it opens one).
        }
        let stall = now.saturating_duration_since(g.last_tick);
        g.last_tick = now;
        if stall > (t.unreachable_after / 2).max(Duration::from_millis(500)) {
            tracing::warn!(
                stall_ms = stall.as_millis() as u64,
                "liveness tracker was not scheduled; restarting the grace period"
            );
            g.leader_since = now;
        }
        let mut out = Vec::new();
        for NodeClock { id, state, since_ms } in nodes {
            let seen = g.seen.get(&id).copied();
            let base = seen.map(|s| s.last.max(g.leader_since)).unwrap_or(g.leader_since);
            let in_state = Duration::from_millis(now_ms.saturating_sub(since_ms));
            let mut silent = now.saturating_duration_since(base);
            if matches!(state, NodeState::Registered | NodeState::Active) {
                silent = silent.min(in_state);
            }
            let live = seen.is_some_and(|s| s.session.is_some()) && silent < t.unreachable_after;
            let (to, reason) = match state {
                NodeState::Registered | NodeState::Unreachable | NodeState::Down if live => {
                    (NodeState::Active, "heartbeat session open".to_string())
                }
                NodeState::Registered | NodeState::Active if silent >= t.unreachable_after => {
                    (NodeState::Unreachable, format!("no heartbeat for {} ms", silent.as_millis()))
                }
                NodeState::Unreachable if silent >= t.unreachable_after + t.down_after && in_state >= t.down_after => {
                    (NodeState::Down, format!("no heartbeat for {} ms", silent.as_millis()))
                }
                _ => continue,
            };
            out.push(Transition { node_id: id, from: state, to, reason });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts { unreachable_after: Duration::from_secs(5), down_after: Duration::from_secs(10) };

    /// Decides for nodes that have been in their state for a long time.
    fn dec<const N: usize>(l: &Liveness, term: u64, now: Instant, nodes: [(NodeId, NodeState); N]) -> Vec<Transition> {
        let clocks = nodes.map(|(id, state)| NodeClock { id, state, since_ms: 0 });
        l.decide(term, now, 1_000_000_000_000, T, clocks)
    }

    fn states(ts: &[Transition]) -> Vec<(NodeId, NodeState)> {
        ts.iter().map(|t| (t.node_id, t.to)).collect()
    }

    #[test]
    fn a_new_leader_gives_every_agent_a_full_grace_period() {
        let l = Liveness::default();
        let start = Instant::now();
        let nodes = [(1, NodeState::Active), (2, NodeState::Active)];
        // Ticks every 100 ms; agent 1 heartbeats, agent 2 is silent.
        let sid = l.open_session(1, start);
        let mut now = start;
        while now < start + Duration::from_millis(4900) {
            l.beat(1, sid, now);
            assert!(dec(&l, 7, now, nodes).is_empty(), "nothing before the grace period ends");
            now += Duration::from_millis(100);
        }
        now += Duration::from_millis(200);
        l.beat(1, sid, now);
        assert_eq!(states(&dec(&l, 7, now, nodes)), vec![(2, NodeState::Unreachable)]);
        // Unreachable turns down only after the further grace.
        let later = now + Duration::from_secs(9);
        let mut t = now;
        while t < later {
            t += Duration::from_millis(100);
            assert!(dec(&l, 7, t, [(2, NodeState::Unreachable)]).is_empty());
        }
        let t = start + Duration::from_millis(15_100);
        assert_eq!(states(&dec(&l, 7, t, [(2, NodeState::Unreachable)])), vec![(2, NodeState::Down)]);
    }

    #[test]
    fn a_new_term_or_a_stall_restarts_the_grace_period() {
        let l = Liveness::default();
        let start = Instant::now();
        let mut now = start;
        for _ in 0..40 {
            now += Duration::from_millis(100);
            dec(&l, 3, now, [(1, NodeState::Active)]);
        }
        // New term at 4 s: another 5 s of grace from here, though silent since 0.
        let t4 = now;
        assert!(dec(&l, 4, t4, [(1, NodeState::Active)]).is_empty());
        let mut now = t4;
        for _ in 0..45 {
            now += Duration::from_millis(100);
            assert!(dec(&l, 4, now, [(1, NodeState::Active)]).is_empty());
        }
        // A 3 s gap between ticks (a paused leader) restarts it again.
        let stalled = now + Duration::from_secs(3);
        assert!(dec(&l, 4, stalled, [(1, NodeState::Active)]).is_empty());
        let mut t = stalled;
        while t < stalled + Duration::from_millis(4_900) {
            t += Duration::from_millis(100);
            assert!(dec(&l, 4, t, [(1, NodeState::Active)]).is_empty());
        }
        t += Duration::from_millis(200);
        assert_eq!(states(&dec(&l, 4, t, [(1, NodeState::Active)])), vec![(1, NodeState::Unreachable)]);
    }

    #[test]
    fn an_open_session_makes_a_node_active_and_a_closed_one_does_not() {
        let l = Liveness::default();
        let now = Instant::now();
        let sid = l.open_session(5, now);
        assert_eq!(states(&dec(&l, 1, now, [(5, NodeState::Down)])), vec![(5, NodeState::Active)]);
        l.close_session(5, sid);
        assert!(dec(&l, 1, now, [(5, NodeState::Down)]).is_empty());
        // A stale session id does not close the newer session.
        let sid2 = l.open_session(5, now);
        l.close_session(5, sid);
        assert!(l.view(5, now).unwrap().connected);
        l.close_session(5, sid2);
        assert!(!l.view(5, now).unwrap().connected);
    }

    #[test]
    fn a_node_is_not_silent_for_longer_than_it_has_been_registered_and_goes_down_only_after_the_further_grace() {
        let l = Liveness::default();
        let start = Instant::now();
        let ms0 = 1_000_000_000_000u64;
        // A leader that has been leading for 10 s.
        dec(&l, 2, start, [(1, NodeState::Active)]);
        let mut now = start;
        for _ in 0..100 {
            now += Duration::from_millis(100);
            dec(&l, 2, now, [(9, NodeState::Active)]);
        }
        let at = |now: Instant| ms0 + now.duration_since(start).as_millis() as u64;
        // Node 1 registered 1 s ago and has no session yet: not unreachable.
        let reg = NodeClock { id: 1, state: NodeState::Registered, since_ms: at(now) - 1_000 };
        assert!(l.decide(2, now, at(now), T, [reg]).is_empty());
        for _ in 0..39 {
            now += Duration::from_millis(100);
            assert!(l.decide(2, now, at(now), T, [reg]).is_empty());
        }
        now += Duration::from_millis(200);
        assert_eq!(states(&l.decide(2, now, at(now), T, [reg])), vec![(1, NodeState::Unreachable)]);
        // Unreachable for only 1 s, though silent for much longer: not down yet.
        let unr = NodeClock { id: 1, state: NodeState::Unreachable, since_ms: at(now) - 1_000 };
        assert!(l.decide(2, now, at(now), T, [unr]).is_empty());
        for _ in 0..89 {
            now += Duration::from_millis(100);
            assert!(l.decide(2, now, at(now), T, [unr]).is_empty());
        }
        now += Duration::from_millis(200);
        assert_eq!(states(&l.decide(2, now, at(now), T, [unr])), vec![(1, NodeState::Down)]);
    }
}
