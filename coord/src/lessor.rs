//! The leader's lease countdown, and the clock every node keeps of when it applied what.
//!
//! Only the leader counts down, in memory ([`Lessor`]). KeepAlive resets a lease to its
//! full TTL there; when a lease runs out the leader commits `LeaseCommand::Expire`,
//! fenced by its term. Successors must not start over from the full TTL (etcd does, on
//! every election), so the leader commits checkpoints of the remaining TTL, and every
//! node remembers when it applied each entry ([`AppliedClock`]). A new leader gives each
//! lease `applied_at(checkpoint entry) + remaining + one election timeout`: the time the
//! checkpoint's entry was applied here is after the old leader stamped it, so this is
//! never earlier than the old leader's deadline, and later by the replication delay plus
//! the grace.
//!
//! A lease that nobody keeps alive needs no checkpoint at all: its grant entry says
//! "TTL left, as of now". A renewal promises the client a new deadline, and a successor
//! must honour it, so a renewal is answered only once the replicated picture covers
//! it: when the promise goes past what a successor would compute, the leader first
//! commits a checkpoint of 2 × TTL, batched with every other renewal waiting for one
//! (group commit). So that renewals rarely wait for that commit, a renewal that finds
//! less than 1.5 × TTL covered starts the next checkpoint in the background and is
//! answered at once: a lease kept alive every third of its TTL costs one checkpoint
//! every two renewals, and never expires early across a failover. The price: after a
//! failover, a lease whose holder stopped renewing may live up to 2 × TTL past its
//! last renewal (plus the grace) instead of TTL.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::command::{Command, Output};
use crate::error::{CoordError, Result};
use crate::lease::{Lease, LeaseCommand, LeaseOutput, MAX_TTL_SECS};
use crate::node::CoordNode;

/// Samples kept by [`AppliedClock`]: ten minutes at one per 5 ms.
const CLOCK_SAMPLES: usize = 120_000;
const CLOCK_RESOLUTION: Duration = Duration::from_millis(5);

/// When this node applied which log index, sampled. Not replicated: each node's own
/// observations, used only by its own leadership.
#[derive(Debug, Default)]
pub struct AppliedClock {
    samples: Mutex<Samples>,
}

/// (log index, when applied), oldest first, and when the newest one's window opened.
type Samples = (VecDeque<(u64, Instant)>, Option<Instant>);

impl AppliedClock {
    /// Notes that entries up to `index` are applied now.
    pub fn record(&self, index: u64, now: Instant) {
        let mut g = self.samples.lock().expect("applied clock");
        let (s, opened) = &mut *g;
        if s.back().is_some_and(|(i, _)| *i >= index) {
            return;
        }
        // The newest sample moves forward, index and time together, for one resolution
        // after its window opened: an index maps to a time no earlier than its apply,
        // and at most one resolution later.
        match (s.back_mut(), *opened) {
            (Some(last), Some(start)) if now.duration_since(start) < CLOCK_RESOLUTION => *last = (index, now),
            _ => {
                s.push_back((index, now));
                *opened = Some(now);
                if s.len() > CLOCK_SAMPLES {
                    s.pop_front();
                }
            }
        }
    }

    /// No earlier than when this node applied `index`: the first sample at or past it,
    /// or `now` if it is newer than every sample. An index older than every sample gets
    /// the oldest sample's time, later than the truth, which only lengthens a lease.
    pub fn applied_at(&self, index: u64, now: Instant) -> Instant {
        let g = self.samples.lock().expect("applied clock");
        let s = &g.0;
        let i = s.partition_point(|(i, _)| *i < index);
        s.get(i).map_or(now, |(_, t)| *t)
    }
}

#[derive(Debug, Clone)]
struct Timer {
    ttl: Duration,
    expiry: Instant,
    /// No later than the deadline a successor would compute from the replicated state
    /// (without its grace): the last checkpoint's, or the grant's.
    replicated_deadline: Instant,
    /// An expiry naming it is being committed.
    expiring: bool,
    /// A checkpoint ahead of the renewals is being committed in the background.
    refreshing: bool,
}

/// What a KeepAlive finds on the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed: the lease lives this long from now.
    Renewed(Duration),
    /// The new deadline would pass what a successor would honour: commit a checkpoint
    /// of [`Lessor::ahead`] first, then renew.
    NeedsCheckpoint(Duration),
    /// Not counted here (gone, or its expiry is being committed).
    Unknown,
}

/// The leader's in-memory countdown of every lease (empty on other nodes).
#[derive(Debug, Default)]
pub struct Lessor {
    timers: Mutex<BTreeMap<i64, Timer>>,
}

impl Lessor {
    /// Forgets everything (leadership gained or lost).
    pub fn reset(&self) {
        self.timers.lock().expect("lessor").clear();
    }

    /// Makes the timers match the replicated leases: new ones start from their
    /// checkpoint (`applied_at` gives when this node applied an index), plus `grace`;
    /// gone ones are dropped.
    pub fn sync<'a>(
        &self,
        leases: impl IntoIterator<Item = (i64, &'a Lease)>,
        applied_at: impl Fn(u64) -> Instant,
        grace: Duration,
    ) {
        let mut t = self.timers.lock().expect("lessor");
        let mut seen = BTreeSet::new();
        for (id, l) in leases {
            seen.insert(id);
            t.entry(id).or_insert_with(|| {
                let deadline = applied_at(l.checkpoint_index) + Duration::from_millis(l.remaining_ms.max(0) as u64);
                Timer {
                    ttl: Duration::from_secs(l.ttl_secs.max(0) as u64),
                    expiry: deadline + grace,
                    replicated_deadline: deadline,
                    expiring: false,
                    refreshing: false,
                }
            });
        }
        t.retain(|id, _| seen.contains(id));
    }

    /// A KeepAlive: the lease starts its full TTL again, if a successor would honour
    /// that; see [`Renewal`].
    pub fn keep_alive(&self, id: i64, now: Instant) -> Renewal {
        let mut t = self.timers.lock().expect("lessor");
        let Some(timer) = t.get_mut(&id).filter(|x| !x.expiring) else { return Renewal::Unknown };
        let promise = now + timer.ttl;
        if promise > timer.replicated_deadline {
            return Renewal::NeedsCheckpoint(timer.ttl);
        }
        timer.expiry = timer.expiry.max(promise);
        Renewal::Renewed(timer.ttl)
    }

    /// How far ahead a renewal's checkpoint reaches: 2 × TTL, so that the next two
    /// renewals (every third of the TTL) need none.
    pub fn ahead(ttl: Duration) -> Duration {
        2 * ttl
    }

    /// After a renewal answered at `now`: whether to commit a checkpoint now, in the
    /// background, so that the renewals to come find one in place instead of waiting
    /// for a log round trip each. It is due once the replicated deadline covers less
    /// than 1.5 × TTL from now, so a lease renewed every third of its TTL starts one
    /// every other renewal, and it has half a TTL to commit before a renewal would
    /// have to wait. Marks the lease refreshing (one at a time); returns its TTL.
    pub fn wants_refresh(&self, id: i64, now: Instant) -> Option<Duration> {
        let mut t = self.timers.lock().expect("lessor");
        let x = t.get_mut(&id)?;
        if x.expiring || x.refreshing || now + x.ttl + x.ttl / 2 <= x.replicated_deadline {
            return None;
        }
        x.refreshing = true;
        Some(x.ttl)
    }

    /// A background checkpoint failed to commit: a later renewal may start another.
    pub fn refresh_failed(&self, id: i64) {
        if let Some(x) = self.timers.lock().expect("lessor").get_mut(&id) {
            x.refreshing = false;
        }
    }

    /// A checkpoint proposed at `proposed` with `remaining` committed: a successor
    /// counts from its own apply of it, which is later.
    pub fn checkpointed(&self, id: i64, proposed: Instant, remaining: Duration) {
        if let Some(x) = self.timers.lock().expect("lessor").get_mut(&id) {
            x.replicated_deadline = x.replicated_deadline.max(proposed + remaining);
            x.refreshing = false;
        }
    }

    /// Time left on lease `id` (zero once due), if the leader counts it.
    pub fn remaining(&self, id: i64, now: Instant) -> Option<Duration> {
        self.timers.lock().expect("lessor").get(&id).map(|x| x.expiry.saturating_duration_since(now))
    }

    /// Leases whose time is up, at most `max`, marked as being committed.
    pub fn due(&self, now: Instant, max: usize) -> Vec<i64> {
        let mut t = self.timers.lock().expect("lessor");
        let mut out = Vec::new();
        for (id, x) in t.iter_mut() {
            if out.len() >= max {
                break;
            }
            if !x.expiring && x.expiry <= now {
                x.expiring = true;
                out.push(*id);
            }
        }
        out
    }

    /// Drops the timers of `ids`: their leases ended, or one was granted again under the
    /// same id and must not inherit the old countdown.
    pub fn forget(&self, ids: &[i64]) {
        let mut t = self.timers.lock().expect("lessor");
        for id in ids {
            t.remove(id);
        }
    }

    /// An expiry entry failed to commit: count those leases again.
    pub fn expiry_failed(&self, ids: &[i64]) {
        let mut t = self.timers.lock().expect("lessor");
        for id in ids {
            if let Some(x) = t.get_mut(id) {
                x.expiring = false;
            }
        }
    }

    /// The loop that counts was not scheduled for `stalled`: a paused leader must not
    /// blame the clients, so every deadline moves by that much.
    pub fn shift(&self, stalled: Duration) {
        let mut t = self.timers.lock().expect("lessor");
        for x in t.values_mut() {
            x.expiry += stalled;
        }
    }

    pub fn len(&self) -> usize {
        self.timers.lock().expect("lessor").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Renewals waiting for a checkpoint, and the lock held by whoever writes them.
#[derive(Debug, Default)]
pub struct CheckpointQueue {
    pending: std::sync::Mutex<Vec<Waiting>>,
    flush: tokio::sync::Mutex<()>,
}

/// A renewal waiting for its checkpoint: the lease, how far ahead of when it was asked
/// for, whom to tell.
type Waiting = (i64, Duration, Instant, tokio::sync::oneshot::Sender<Result<()>>);

/// What TimeToLive answers for a lease the leader counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTtl {
    /// Seconds left, rounded up.
    pub ttl_secs: i64,
    pub granted_secs: i64,
    pub keys: Vec<Vec<u8>>,
}

/// The lease calls of the service path. Grants and revokes are writes; renewals and
/// TimeToLive are leader work (the countdown lives there); a follower answers
/// `NotLeader` with the leader's address, for the caller to forward.
impl CoordNode {
    /// etcd's minimum TTL: 1.5 election timeouts, in whole seconds (rounded up), so a
    /// lease outlives the election its keepalives may have to wait for.
    pub fn min_lease_ttl_secs(&self) -> i64 {
        (3 * self.config.election_timeout_max_ms).div_ceil(2000).max(1) as i64
    }

    /// Grants a lease of `ttl_secs` (raised to the minimum) under `id` (0: the cluster
    /// picks one). Returns (id, TTL granted).
    pub async fn grant_lease(&self, id: i64, ttl_secs: i64) -> Result<(i64, i64)> {
        if id < 0 {
            return Err(CoordError::InvalidArgument(format!("lease id {id} is negative")));
        }
        if ttl_secs > MAX_TTL_SECS {
            return Err(CoordError::Apply(crate::command::ApplyError::LeaseTtlTooLarge));
        }
        let ttl_secs = ttl_secs.max(self.min_lease_ttl_secs());
        match self.write(Command::Lease(LeaseCommand::Grant { id, ttl_secs })).await?.output {
            // A timer left from an earlier lease with this id is dropped when that lease
            // is revoked or expires (`Lessor::forget`), so this one starts fresh at the
            // next sync. (No sync here: it walks every lease, once per grant.)
            Output::Lease(LeaseOutput::Granted { id, ttl_secs }) => Ok((id, ttl_secs)),
            o => Err(CoordError::Internal(format!("unexpected apply output {o:?}"))),
        }
    }

    /// Revokes lease `id`: its keys are deleted in one revision. Returns the revision.
    pub async fn revoke_lease(&self, id: i64) -> Result<i64> {
        let revision = self.write(Command::Lease(LeaseCommand::Revoke { id })).await?.revision;
        self.lessor.forget(&[id]);
        Ok(revision)
    }

    /// A KeepAlive on the leader: the lease's full TTL in seconds, or 0 if it does not
    /// exist (etcd's answer).
    pub async fn renew_lease(self: &Arc<Self>, id: i64) -> Result<i64> {
        self.ensure_leader().await?;
        if !self.quorum_contact.load(std::sync::atomic::Ordering::Relaxed) {
            // A leader cut off from the quorum may already be replaced: renewing here
            // would tell the client its lease lives while the new leader counts it down.
            return Err(CoordError::Unavailable("this leader has lost contact with the quorum".into()));
        }
        let mut synced = false;
        let mut checkpointed = false;
        loop {
            // The countdown syncs with the state every 100 ms: a lease revoked meanwhile
            // must not be renewed, so the state is asked first.
            let exists = self.view(|v| v.leases().by_id.contains_key(&id));
            let r = if exists { self.lessor.keep_alive(id, Instant::now()) } else { Renewal::Unknown };
            match r {
                Renewal::Renewed(ttl) => {
                    if !self.config.canary_lease_skip_checkpoint {
                        self.refresh_in_background(id);
                    }
                    return Ok(ttl.as_secs() as i64);
                }
                Renewal::NeedsCheckpoint(ttl) if self.config.canary_lease_skip_checkpoint => {
                    self.lessor.checkpointed(id, Instant::now(), Lessor::ahead(ttl));
                    checkpointed = true;
                }
                Renewal::NeedsCheckpoint(ttl) if !checkpointed => {
                    self.checkpoint_ahead(id, ttl).await?;
                    checkpointed = true;
                }
                Renewal::NeedsCheckpoint(_) => {
                    return Err(CoordError::Unavailable(
                        "the lease's checkpoint did not cover the renewal; retry".into(),
                    ))
                }
                Renewal::Unknown if !synced => {
                    // Not counted here yet: a lease granted a moment ago, or this
                    // leadership is new and has not applied its predecessor's last
                    // entries. Apply everything committed, then look again.
                    self.read_barrier().await?;
                    self.sync_lessor(Duration::ZERO);
                    synced = true;
                }
                Renewal::Unknown => return Ok(0),
            }
        }
    }

    /// Starts the checkpoint [`Lessor::wants_refresh`] asks for, if it does: the
    /// renewal is answered without waiting for it.
    fn refresh_in_background(self: &Arc<Self>, id: i64) {
        let Some(ttl) = self.lessor.wants_refresh(id, Instant::now()) else { return };
        let node = self.clone();
        tokio::spawn(async move {
            if node.checkpoint_ahead(id, ttl).await.is_err() {
                node.lessor.refresh_failed(id);
            }
        });
    }

    /// Commits a checkpoint of [`Lessor::ahead`] for lease `id`, together with every
    /// other renewal waiting for one: whoever takes the flush lock writes everything
    /// queued so far in one entry, so the entries follow the write rate, not the number
    /// of renewals. The checkpoint reaches [`Lessor::ahead`] past when it was asked
    /// for, not past when its entry is proposed: a renewal answered before its
    /// background checkpoint is written (which waits for the entry ahead of it) must
    /// not stretch the bound on an abandoned lease by that wait.
    async fn checkpoint_ahead(&self, id: i64, ttl: Duration) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.checkpoint_queue.pending.lock().expect("checkpoint queue").push((
            id,
            Lessor::ahead(ttl),
            Instant::now(),
            tx,
        ));
        {
            let _flushing = self.checkpoint_queue.flush.lock().await;
            let batch = std::mem::take(&mut *self.checkpoint_queue.pending.lock().expect("checkpoint queue"));
            if !batch.is_empty() {
                let term = self.current_term();
                let proposed = Instant::now();
                let batch: Vec<_> = batch
                    .into_iter()
                    .map(|(id, ahead, asked, tx)| (id, ahead.saturating_sub(proposed.duration_since(asked)), tx))
                    .collect();
                let remaining_ms = batch.iter().map(|(id, left, _)| (*id, left.as_millis() as i64)).collect();
                let r = self.write(Command::Lease(LeaseCommand::Checkpoint { term, remaining_ms })).await;
                for (id, left, tx) in batch {
                    if r.is_ok() {
                        self.lessor.checkpointed(id, proposed, left);
                    }
                    let _ = tx.send(r.as_ref().map(|_| ()).map_err(|e| CoordError::Unavailable(e.to_string())));
                }
            }
        }
        rx.await.map_err(|_| CoordError::Unavailable("the lease checkpoint was abandoned; retry".into()))?
    }

    /// TimeToLive on the leader: `None` if the lease does not exist.
    pub async fn lease_time_to_live(&self, id: i64, with_keys: bool) -> Result<Option<LeaseTtl>> {
        self.ensure_leader().await?;
        self.read_barrier().await?;
        let Some((granted_secs, keys)) = self.view(|v| {
            v.leases().by_id.get(&id).map(|l| {
                let keys = match with_keys {
                    true => v.kv().lease_keys.get(&id).map(|k| k.iter().cloned().collect()).unwrap_or_default(),
                    false => Vec::new(),
                };
                (l.ttl_secs, keys)
            })
        }) else {
            return Ok(None);
        };
        let now = Instant::now();
        let left = match self.lessor.remaining(id, now) {
            Some(d) => d,
            None => {
                self.sync_lessor(Duration::ZERO);
                self.lessor.remaining(id, now).unwrap_or(Duration::from_secs(granted_secs as u64))
            }
        };
        let ttl_secs = left.as_millis().div_ceil(1000) as i64;
        Ok(Some(LeaseTtl { ttl_secs, granted_secs, keys }))
    }

    /// Starts counting every replicated lease the countdown lacks.
    pub(crate) fn sync_lessor(&self, grace: Duration) {
        let now = Instant::now();
        self.view(|v| {
            self.lessor.sync(
                v.leases().by_id.iter().map(|(id, l)| (*id, l)),
                |index| self.applied_clock.applied_at(index, now),
                grace,
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ttl_secs: i64, remaining_ms: i64, checkpoint_index: u64) -> Lease {
        Lease { ttl_secs, remaining_ms, checkpoint_index }
    }

    #[test]
    fn the_applied_clock_never_answers_before_the_apply() {
        let c = AppliedClock::default();
        let t0 = Instant::now();
        c.record(10, t0);
        c.record(20, t0 + Duration::from_secs(1));
        c.record(30, t0 + Duration::from_secs(2));
        assert_eq!(c.applied_at(15, t0), t0 + Duration::from_secs(1), "the first sample at or past it");
        assert_eq!(c.applied_at(20, t0), t0 + Duration::from_secs(1));
        assert_eq!(c.applied_at(5, t0), t0, "older than every sample: the oldest");
        let now = t0 + Duration::from_secs(9);
        assert_eq!(c.applied_at(31, now), now, "not sampled yet: now");
    }

    #[test]
    fn a_successor_counts_from_the_checkpoint_not_the_full_ttl() {
        let l = Lessor::default();
        let t0 = Instant::now();
        let grace = Duration::from_millis(300);
        // Granted 30 s at index 5, applied at t0; the leader dies at t0 + 20 s.
        let leases = [(1, lease(30, 30_000, 5))];
        l.sync(leases.iter().map(|(i, x)| (*i, x)), |_| t0, grace);
        let now = t0 + Duration::from_secs(20);
        assert_eq!(l.remaining(1, now), Some(Duration::from_secs(10) + grace));
        assert!(l.due(now + Duration::from_secs(10), 10).is_empty());
        assert_eq!(l.due(now + Duration::from_secs(10) + grace, 10), vec![1]);
        assert_eq!(l.keep_alive(1, now), Renewal::Unknown, "its expiry is being committed");
        l.expiry_failed(&[1]);
        // A renewal to 50 s would pass the 30 s a successor would honour.
        assert_eq!(l.keep_alive(1, now), Renewal::NeedsCheckpoint(Duration::from_secs(30)));
    }

    #[test]
    fn a_lease_granted_again_under_its_id_gets_a_fresh_countdown() {
        let l = Lessor::default();
        let t0 = Instant::now();
        let old = [(7, lease(5, 5_000, 3))];
        l.sync(old.iter().map(|(i, x)| (*i, x)), |_| t0, Duration::ZERO);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(l.due(t1, 10), vec![7], "the old lease runs out and its expiry is committed");
        // Granted again under id 7 at index 9, before the countdown synced: without
        // forgetting, the old timer (marked expiring) would stay, and the new lease would
        // never be counted or renewed.
        let again = [(7, lease(5, 5_000, 9))];
        l.sync(again.iter().map(|(i, x)| (*i, x)), |_| t1, Duration::ZERO);
        assert_eq!(l.keep_alive(7, t1), Renewal::Unknown, "the stale timer answers for the new lease");
        l.forget(&[7]);
        l.sync(again.iter().map(|(i, x)| (*i, x)), |_| t1, Duration::ZERO);
        assert_eq!(l.remaining(7, t1), Some(Duration::from_secs(5)));
        assert!(l.due(t1 + Duration::from_secs(4), 10).is_empty());
    }

    #[test]
    fn a_refresh_is_asked_for_before_a_renewal_would_wait_and_once_at_a_time() {
        let l = Lessor::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let leases = [(1, lease(10, 10_000, 5))];
        l.sync(leases.iter().map(|(i, x)| (*i, x)), |_| t0, Duration::ZERO);
        l.checkpointed(1, t0, Lessor::ahead(s(10)));
        // Covered until 20 s: nothing to do while 1.5 x TTL from now is within it.
        assert_eq!(l.wants_refresh(1, t0 + s(5)), None);
        assert_eq!(l.wants_refresh(1, t0 + s(6)), Some(s(10)), "at 6 s, 21 s would pass 20 s");
        assert_eq!(l.wants_refresh(1, t0 + s(7)), None, "one refresh at a time");
        assert_eq!(l.keep_alive(1, t0 + s(7)), Renewal::Renewed(s(10)), "renewals go on meanwhile");
        l.refresh_failed(1);
        assert_eq!(l.wants_refresh(1, t0 + s(8)), Some(s(10)), "a failed refresh can be retried");
        l.checkpointed(1, t0 + s(8), Lessor::ahead(s(10)));
        assert_eq!(l.wants_refresh(1, t0 + s(9)), None, "covered until 28 s");
        assert_eq!(l.keep_alive(1, t0 + s(18)), Renewal::Renewed(s(10)), "no renewal waited");
        assert_eq!(l.due(t0 + s(28), 10), vec![1]);
        assert_eq!(l.wants_refresh(1, t0 + s(28)), None, "not while its expiry is committed");
    }

    #[test]
    fn a_renewal_is_answered_only_within_what_a_successor_would_honour() {
        let l = Lessor::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let leases = [(1, lease(10, 10_000, 5)), (2, lease(10, 10_000, 5))];
        l.sync(leases.iter().map(|(i, x)| (*i, x)), |_| t0, Duration::ZERO);
        // At 2 s a renewal would promise 12 s: beyond the grant's 10 s.
        assert_eq!(l.keep_alive(1, t0 + s(2)), Renewal::NeedsCheckpoint(s(10)));
        assert_eq!(l.remaining(1, t0 + s(2)), Some(s(8)), "nothing promised yet");
        // A checkpoint of 2 x TTL proposed at 2 s covers renewals until 12 s.
        l.checkpointed(1, t0 + s(2), Lessor::ahead(s(10)));
        assert_eq!(l.keep_alive(1, t0 + s(2)), Renewal::Renewed(s(10)));
        assert_eq!(l.keep_alive(1, t0 + s(12)), Renewal::Renewed(s(10)));
        assert_eq!(l.remaining(1, t0 + s(12)), Some(s(10)));
        assert_eq!(l.keep_alive(1, t0 + s(13)), Renewal::NeedsCheckpoint(s(10)));
        // Lease 2 was never renewed: its grant says all a successor needs.
        l.shift(s(1));
        assert_eq!(l.remaining(2, t0), Some(s(11)));
        // Gone from the state: dropped.
        l.sync(leases[..1].iter().map(|(i, x)| (*i, x)), |_| t0, Duration::ZERO);
        assert_eq!(l.len(), 1);
    }
}
