//! etcd leases inside the state machine: which leases exist, their granted TTL, and the
//! remaining TTL as of the last checkpoint. Which keys a lease holds is kept by
//! [`KvStore`] (`lease_keys`), beside the keys themselves.
//!
//! Nothing here counts time. The leader does ([`crate::lessor`]) and commits what it
//! decides: an expiry, and checkpoints of the remaining TTL. Both carry the term they
//! were decided in and apply only in an entry of that term, so a deposed leader's late
//! decision changes nothing (etcd #12528, #15247: a leader stuck in fdatasync revoked
//! every lease). Each lease records the log index of its grant or last checkpoint: a new
//! leader counts the remaining TTL from when its own node applied that entry.

// State-machine code: deterministic on every member (see coord/clippy.toml).
#![deny(clippy::disallowed_types, clippy::disallowed_methods)]

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::ApplyError;
use crate::kv::{History, KvStore};

/// etcd's `MaxLeaseTTL`: 9,000,000,000 s.
pub const MAX_TTL_SECS: i64 = 9_000_000_000;
/// Leases one expiry or checkpoint entry may name.
pub const MAX_IDS_PER_ENTRY: usize = 10_000;

/// A lease as the state machine holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The TTL granted, in seconds (after the server raised it to its minimum).
    pub ttl_secs: i64,
    /// Milliseconds left as of the entry at `checkpoint_index` (the grant: the whole TTL).
    pub remaining_ms: i64,
    /// The log index of the grant or of the last checkpoint.
    pub checkpoint_index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseCommand {
    /// `id` 0: the state machine picks one (the entry's log index, or the next free id).
    Grant { id: i64, ttl_secs: i64 },
    /// Deletes the lease's keys in one revision.
    Revoke { id: i64 },
    /// The leader of `term` saw these leases run out; each is revoked as by `Revoke`.
    Expire { term: u64, ids: Vec<i64> },
    /// The leader of `term` records (lease, milliseconds left) so that its successor
    /// starts from there, not from the full TTL.
    Checkpoint { term: u64, remaining_ms: Vec<(i64, i64)> },
}

impl LeaseCommand {
    pub fn name(&self) -> &'static str {
        match self {
            LeaseCommand::Grant { .. } => "lease_grant",
            LeaseCommand::Revoke { .. } => "lease_revoke",
            LeaseCommand::Expire { .. } => "lease_expire",
            LeaseCommand::Checkpoint { .. } => "lease_checkpoint",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseOutput {
    Granted {
        id: i64,
        ttl_secs: i64,
    },
    /// How many keys the revoke deleted.
    Revoked {
        deleted: i64,
    },
    /// The leases that expired (those already gone are skipped).
    Expired {
        ids: Vec<i64>,
    },
    Checkpointed,
}

/// Every lease; persisted record by record under `l/<id>` (see [`keys`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leases {
    pub by_id: BTreeMap<i64, Lease>,
    /// Leases changed since the last [`Leases::take_changes`].
    dirty: BTreeSet<i64>,
    /// Moves whenever a lease is granted or removed (not persisted): the leader syncs
    /// its countdown when it does.
    pub generation: u64,
}

pub mod keys {
    pub const PREFIX: &[u8] = b"l/";

    pub fn lease(id: i64) -> Vec<u8> {
        let mut k = PREFIX.to_vec();
        k.extend_from_slice(&(id as u64).to_be_bytes());
        k
    }
}

impl Leases {
    /// Applies `cmd`, decided by the leader of `term`, in the entry at log `index`. A
    /// refused command changes nothing.
    pub fn apply(
        &mut self,
        index: u64,
        term: u64,
        cmd: &LeaseCommand,
        kv: &mut KvStore,
        history: &mut dyn History,
    ) -> Result<LeaseOutput, ApplyError> {
        match cmd {
            LeaseCommand::Grant { id, ttl_secs } => {
                if *id < 0 {
                    return Err(ApplyError::Other(format!("lease id {id} is negative")));
                }
                if *ttl_secs > MAX_TTL_SECS {
                    return Err(ApplyError::LeaseTtlTooLarge);
                }
                if *ttl_secs <= 0 {
                    return Err(ApplyError::Other(format!("lease TTL {ttl_secs} s must be positive")));
                }
                let id = if *id == 0 {
                    let mut id = index as i64;
                    while id == 0 || self.by_id.contains_key(&id) {
                        id += 1;
                    }
                    id
                } else if self.by_id.contains_key(id) {
                    return Err(ApplyError::LeaseExists);
                } else {
                    *id
                };
                let lease = Lease { ttl_secs: *ttl_secs, remaining_ms: ttl_secs * 1000, checkpoint_index: index };
                self.by_id.insert(id, lease);
                kv.grant_lease(id);
                self.dirty.insert(id);
                self.generation += 1;
                Ok(LeaseOutput::Granted { id, ttl_secs: *ttl_secs })
            }
            LeaseCommand::Revoke { id } => {
                if !self.by_id.contains_key(id) {
                    return Err(ApplyError::LeaseNotFound);
                }
                Ok(LeaseOutput::Revoked { deleted: self.revoke(*id, kv, history) })
            }
            LeaseCommand::Expire { term: decided, ids } => {
                if *decided != term {
                    return Ok(LeaseOutput::Expired { ids: Vec::new() });
                }
                let mut expired = Vec::new();
                for id in ids {
                    if self.by_id.contains_key(id) {
                        self.revoke(*id, kv, history);
                        expired.push(*id);
                    }
                }
                Ok(LeaseOutput::Expired { ids: expired })
            }
            LeaseCommand::Checkpoint { term: decided, remaining_ms } => {
                if *decided == term {
                    for (id, left) in remaining_ms {
                        if let Some(l) = self.by_id.get_mut(id) {
                            // A renewal's checkpoint reaches 2 x TTL ahead (see `lessor`).
                            l.remaining_ms = (*left).clamp(0, l.ttl_secs.saturating_mul(2000));
                            l.checkpoint_index = index;
                            self.dirty.insert(*id);
                        }
                    }
                }
                Ok(LeaseOutput::Checkpointed)
            }
        }
    }

    fn revoke(&mut self, id: i64, kv: &mut KvStore, history: &mut dyn History) -> i64 {
        self.by_id.remove(&id);
        self.dirty.insert(id);
        self.generation += 1;
        kv.revoke_lease(id, history)
    }

    /// The records touched since the last call: `(key, Some(value))` to write, `(key,
    /// None)` to delete.
    pub fn take_changes(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|id| {
                let v = self.by_id.get(&id).map(|l| crate::codec::encode(l).expect("lease records encode"));
                (keys::lease(id), v)
            })
            .collect()
    }

    /// Loads the `l/` records, and tells `kv` which leases exist (it already holds the
    /// keys, each naming its lease).
    pub fn load<'a>(
        records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        kv: &mut KvStore,
    ) -> std::io::Result<Leases> {
        let mut out = Leases::default();
        for (k, v) in records {
            let b: [u8; 8] = k
                .get(keys::PREFIX.len()..)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "corrupt lease key"))?;
            out.by_id.insert(u64::from_be_bytes(b) as i64, crate::codec::decode(v)?);
        }
        kv.load_leases(out.by_id.keys().copied());
        Ok(out)
    }
}
