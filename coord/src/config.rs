//! Tunables of a coord node, with units in every name and a `validate()`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordConfig {
    /// Leader heartbeat period. Default 50 ms.
    pub heartbeat_interval_ms: u64,
    /// A follower that hears no leader for a random time in [min, max] starts an
    /// election (after a pre-vote). Defaults 150 and 300 ms (openraft's own). Followers refuse
    /// votes until `max` has passed since the last heartbeat (the leader lease), so the
    /// first candidate is usually refused and a killed leader is replaced after about
    /// 2×min to 2×max: 0.3–0.6 s here. A single slow follower cannot force an
    /// election: the others refuse it while the leader's lease holds.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// How long a write or a linearizable read may wait for a leader and a quorum before
    /// it fails with `unavailable`. Default 5,000 ms.
    pub request_timeout_ms: u64,
    /// A snapshot is built after this many applied entries. Default 100,000 (etcd's
    /// `--snapshot-count`): a snapshot holds the retained KV history, so building one
    /// often costs more than it saves.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind the snapshot, so a briefly lagging follower can
    /// catch up without a snapshot. Default 1,000.
    pub log_entries_kept_after_snapshot: u64,
    /// A snapshot received from the leader larger than this is refused (the receiver
    /// writes it to disk as it arrives). Default 64 GiB.
    pub snapshot_max_bytes: u64,
    /// Receiving one snapshot may take this long. Default 3,600,000 ms (an hour: a full
    /// /8 of IP allocations is about a GB).
    pub snapshot_receive_timeout_ms: u64,
    /// The leader compacts KV history older than this many revisions. 0 disables it.
    /// Default 100,000.
    pub history_retention_revisions: i64,
    /// A learner whose matched index is within this many entries of the leader's last
    /// log index is promoted to voter. Default 100.
    pub promote_lag_entries: u64,
    /// Voters beyond this count stay learners. Default 5.
    pub max_voters: usize,
    /// How often agents heartbeat to the leader (the leader tells them). Default 1,000 ms.
    pub agent_heartbeat_interval_ms: u64,
    /// An agent the leader has not heard for this long is marked unreachable. The new
    /// leader of a term counts from its own start of leadership. Default 5,000 ms; at
    /// least 3 heartbeat intervals plus 2 election timeouts, the time an agent may need
    /// to notice a dead leader and find the new one.
    pub unreachable_after_ms: u64,
    /// An unreachable agent is marked down after this much longer. Default 10,000 ms.
    pub down_after_ms: u64,
    /// An address whose owner is gone (its agent removed, or no longer reported by its
    /// agent) is released this long after the leader first sees it so. Default 180,000 ms.
    pub ip_leak_grace_ms: u64,
    /// Lifetime of the node certificates the leader signs. Default 7,776,000 s (90 days,
    /// Swarm's). Renewal is not built yet (#11, next stages).
    pub cert_validity_secs: u64,
    /// A watcher created with `progress_notify` gets an empty response carrying the
    /// current revision this often while it is synced. Default 600,000 ms (etcd's 10 min).
    #[serde(default = "default_watch_progress_notify_interval_ms")]
    pub watch_progress_notify_interval_ms: u64,
    /// TEST ONLY, deliberately unsafe: a leader answers linearizable reads from its own
    /// state without confirming leadership through a quorum (no ReadIndex). A deposed
    /// leader that has not yet heard of its successor then serves stale reads. The
    /// jepsen-style tests turn it on with `--canary` to prove they catch the anomaly.
    #[serde(default)]
    pub canary_unsafe_local_reads: bool,
    /// TEST ONLY, deliberately unsafe: Lock and Campaign answer once every earlier
    /// contender is gone, without checking that their own key is still there (etcd
    /// #11456). A contender whose lease ran out while it waited is then told it holds
    /// the lock. The jepsen-style `lock` and `election` workloads' canary.
    #[serde(default)]
    pub canary_lock_skip_reread: bool,
    /// TEST ONLY, deliberately unsafe: the leader renews a lease in its own countdown
    /// without first committing a checkpoint that covers the renewal, so a successor
    /// counts from the last checkpoint and can expire a lease that was kept alive. The
    /// jepsen-style `lease` workload's canary.
    #[serde(default)]
    pub canary_lease_skip_checkpoint: bool,
}

impl Default for CoordConfig {
    fn default() -> Self {
        CoordConfig {
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            request_timeout_ms: 5_000,
            snapshot_every_entries: 100_000,
            log_entries_kept_after_snapshot: 1_000,
            snapshot_max_bytes: 64 << 30,
            snapshot_receive_timeout_ms: 3_600_000,
            history_retention_revisions: 100_000,
            promote_lag_entries: 100,
            max_voters: 5,
            agent_heartbeat_interval_ms: 1_000,
            unreachable_after_ms: 5_000,
            down_after_ms: 10_000,
            ip_leak_grace_ms: 180_000,
            cert_validity_secs: 90 * 86_400,
            watch_progress_notify_interval_ms: default_watch_progress_notify_interval_ms(),
            canary_unsafe_local_reads: false,
            canary_lock_skip_reread: false,
            canary_lease_skip_checkpoint: false,
        }
    }
}

fn default_watch_progress_notify_interval_ms() -> u64 {
    600_000
}

impl CoordConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval_ms == 0 {
            return Err("heartbeat_interval_ms must be > 0".into());
        }
        if self.election_timeout_min_ms < 2 * self.heartbeat_interval_ms {
            return Err("election_timeout_min_ms must be at least twice heartbeat_interval_ms".into());
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err("election_timeout_max_ms must be greater than election_timeout_min_ms".into());
        }
        if self.request_timeout_ms < self.election_timeout_max_ms {
            return Err("request_timeout_ms must be at least election_timeout_max_ms".into());
        }
        if self.snapshot_every_entries == 0 {
            return Err("snapshot_every_entries must be > 0".into());
        }
        if self.snapshot_max_bytes < 1 << 20 {
            return Err("snapshot_max_bytes must be at least 1 MiB".into());
        }
        if self.snapshot_receive_timeout_ms < 1_000 {
            return Err("snapshot_receive_timeout_ms must be at least 1,000".into());
        }
        if self.history_retention_revisions < 0 {
            return Err("history_retention_revisions must be >= 0".into());
        }
        if self.agent_heartbeat_interval_ms < 10 {
            return Err("agent_heartbeat_interval_ms must be at least 10".into());
        }
        // An agent notices a dead leader after 3 missed acknowledgements and the masters
        // elect within about 2 election timeouts: it must be able to reattach within the
        // new leader's grace period.
        let floor = 3 * self.agent_heartbeat_interval_ms + 2 * self.election_timeout_max_ms;
        if self.unreachable_after_ms < floor {
            return Err(format!(
                "unreachable_after_ms must be at least 3 x agent_heartbeat_interval_ms + 2 x election_timeout_max_ms ({floor} ms)"
            ));
        }
        if self.down_after_ms == 0 {
            return Err("down_after_ms must be > 0".into());
        }
        if self.cert_validity_secs < 30 {
            return Err("cert_validity_secs must be at least 30".into());
        }
        if self.watch_progress_notify_interval_ms < 100 {
            return Err("watch_progress_notify_interval_ms must be at least 100".into());
        }
        if !(1..=7).contains(&self.max_voters) {
            return Err("max_voters must be between 1 and 7".into());
        }
        Ok(())
    }

    pub(crate) fn raft_config(&self) -> Result<openraft::Config, String> {
        let c = openraft::Config {
            cluster_name: "cluster".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: 10_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.log_entries_kept_after_snapshot,
            enable_pre_vote: Some(true),
            // Followers get new entries while the leader's own fsync is still running.
            broadcast_submitted_on_append: Some(true),
            ..Default::default()
        };
        c.validate().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_bad_ones_are_refused() {
        CoordConfig::default().validate().unwrap();
        CoordConfig::default().raft_config().unwrap();
        let bad = CoordConfig { election_timeout_max_ms: 100, ..Default::default() };
        assert!(bad.validate().is_err());
        let bad = CoordConfig { heartbeat_interval_ms: 0, ..Default::default() };
        assert!(bad.validate().is_err());
        let bad = CoordConfig { unreachable_after_ms: 3_500, ..Default::default() };
        assert!(bad.validate().is_err());
    }
}
