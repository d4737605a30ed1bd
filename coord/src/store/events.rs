//! What each revision wrote, as watch events: a ring of recent revisions in memory, fed
//! by apply, and a reader of older ones from the `r/` index and `h/` versions on disk.
//!
//! Watchers share the ring, so a write is decoded once whatever the number of watchers;
//! a watcher that falls behind the ring (or starts below it) catches up from disk in
//! bounded batches, and apply never waits for a watcher.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use rocksdb::{IteratorMode, ReadOptions, DB};

use super::state_machine::{hist_key, rev_key, HistRecord, KEY_COMPACT, OP_DELETE, OP_PUT};
use super::{io_err, sm_cf};
use crate::codec::{decode, key_u64};
use crate::kv::types::KeyValue;

/// Revisions the ring keeps at most.
pub const RING_MAX_REVISIONS: usize = 100_000;
/// Bytes of keys and values the ring keeps at most.
pub const RING_MAX_BYTES: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change of one key, as etcd reports it: a delete's `kv` carries only the key and
/// the revision of the delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    /// The version this change replaced (`None`: the key did not exist).
    pub prev: Option<KeyValue>,
}

impl Event {
    /// Bytes of keys and values it carries, as a response's size is counted.
    pub fn payload_bytes(&self) -> usize {
        self.kv.key.len() + self.kv.value.len() + self.prev.as_ref().map_or(0, |p| p.key.len() + p.value.len())
    }

    fn bytes(&self) -> usize {
        64 + self.payload_bytes()
    }
}

/// Every event of one revision, in write order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub revision: i64,
    pub events: Vec<Event>,
}

impl Revision {
    pub fn bytes(&self) -> usize {
        self.events.iter().map(Event::bytes).sum()
    }
}

/// Why events from a revision cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventsError {
    /// Compaction removed them; watching may resume only above this revision.
    #[error("mvcc: required revision has been compacted")]
    Compacted(i64),
    #[error("reading watch history: {0}")]
    Storage(String),
}

/// The recent revisions, contiguous: every revision from `first` to the last one held.
#[derive(Debug)]
struct Ring {
    first: i64,
    revs: VecDeque<Arc<Revision>>,
    bytes: usize,
}

/// The events hub of one node: the ring, and the applied revision that watchers wait on.
#[derive(Debug)]
pub struct Events {
    ring: Mutex<Ring>,
    applied: tokio::sync::watch::Sender<i64>,
}

impl Events {
    /// An empty ring after `revision` (the store's revision at open).
    pub fn new(revision: i64) -> Events {
        Events {
            ring: Mutex::new(Ring { first: revision + 1, revs: VecDeque::new(), bytes: 0 }),
            applied: tokio::sync::watch::channel(revision).0,
        }
    }

    /// Changes when revisions were applied; holds the store's revision, whose events
    /// are all readable (from the ring or from disk) by then.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<i64> {
        self.applied.subscribe()
    }

    pub fn revision(&self) -> i64 {
        *self.applied.borrow()
    }

    /// Called by apply after the batch that holds `revs` is written: adds them and
    /// announces `revision`.
    pub(crate) fn publish(&self, revs: Vec<Revision>, revision: i64) {
        if !revs.is_empty() {
            let mut r = self.ring.lock().expect("events ring");
            for rev in revs {
                debug_assert_eq!(rev.revision, r.first + r.revs.len() as i64, "ring revisions are contiguous");
                r.bytes += rev.bytes();
                r.revs.push_back(Arc::new(rev));
            }
            while r.revs.len() > RING_MAX_REVISIONS || (r.bytes > RING_MAX_BYTES && r.revs.len() > 1) {
                let old = r.revs.pop_front().expect("non-empty ring");
                r.bytes -= old.bytes();
                r.first += 1;
            }
        }
        self.applied.send_if_modified(|v| std::mem::replace(v, revision) != revision);
    }

    /// After a snapshot install the history jumped: the ring restarts after `revision`.
    pub(crate) fn reset(&self, revision: i64) {
        let mut r = self.ring.lock().expect("events ring");
        *r = Ring { first: revision + 1, revs: VecDeque::new(), bytes: 0 };
        drop(r);
        self.applied.send_replace(revision);
    }

    /// Revisions from `from` on, at most `max_revisions` of them, if the ring holds
    /// `from`; `None` means `from` must be read from disk.
    pub fn from_ring(&self, from: i64, max_revisions: usize) -> Option<Vec<Arc<Revision>>> {
        let r = self.ring.lock().expect("events ring");
        if from < r.first {
            return None;
        }
        let skip = (from - r.first) as usize;
        Some(r.revs.iter().skip(skip).take(max_revisions).cloned().collect())
    }
}

/// Reads whole revisions `from..=to` from disk, stopping after `max_bytes` (at least one
/// revision is read). Refused with [`EventsError::Compacted`] when `from` is at or below
/// the compact revision: compaction removes the index of the revisions it covers.
pub fn read_revisions(db: &DB, from: i64, to: i64, max_bytes: usize) -> Result<Vec<Revision>, EventsError> {
    let storage = |e: io::Error| EventsError::Storage(e.to_string());
    let cf = sm_cf(db);
    // One consistent view: a compaction that commits meanwhile is seen either whole or
    // not at all.
    let snap = db.snapshot();
    let compact = snap.get_cf(cf, KEY_COMPACT).map_err(io_err).map_err(storage)?.map_or(0, |b| key_u64(&b) as i64);
    if from <= compact {
        return Err(EventsError::Compacted(compact));
    }
    let get = |key: &[u8], rev: i64| -> Result<Option<HistRecord>, EventsError> {
        match snap.get_cf(cf, hist_key(key, rev)).map_err(io_err).map_err(storage)? {
            Some(b) => Ok(Some(decode(&b).map_err(storage)?)),
            None => Ok(None),
        }
    };
    let version = |key: &[u8], rev: i64| -> Result<KeyValue, EventsError> {
        match get(key, rev)? {
            Some(HistRecord::Put { create_revision, version, lease, value }) => {
                Ok(KeyValue { key: key.to_vec(), create_revision, mod_revision: rev, version, value, lease })
            }
            // The index names a put here: its record is gone only if a compaction raced
            // past the snapshot's view, which the check above rules out.
            _ => Err(EventsError::Storage(format!("history lacks the version of {key:?} at revision {rev}"))),
        }
    };
    let mut ro = ReadOptions::default();
    ro.set_snapshot(&snap);
    ro.set_iterate_upper_bound(rev_key(to + 1, 0));
    let start = rev_key(from, 0);
    let mut out: Vec<Revision> = Vec::new();
    let mut bytes = 0usize;
    for item in db.iterator_cf_opt(cf, ro, IteratorMode::From(&start, rocksdb::Direction::Forward)) {
        let (k, v) = item.map_err(io_err).map_err(storage)?;
        if k.len() != 13 || v.len() < 9 {
            return Err(EventsError::Storage("corrupt revision index entry".into()));
        }
        let rev = key_u64(&k[1..9]) as i64;
        let (op, prev_rev, key) = (v[0], key_u64(&v[1..9]) as i64, &v[9..]);
        if out.last().is_none_or(|r| r.revision != rev) {
            if bytes >= max_bytes && !out.is_empty() {
                break;
            }
            out.push(Revision { revision: rev, events: Vec::new() });
        }
        let prev = if prev_rev > 0 { Some(version(key, prev_rev)?) } else { None };
        let event = match op {
            OP_PUT => Event { kind: EventKind::Put, kv: version(key, rev)?, prev },
            OP_DELETE => Event {
                kind: EventKind::Delete,
                kv: KeyValue { key: key.to_vec(), mod_revision: rev, ..Default::default() },
                prev,
            },
            _ => return Err(EventsError::Storage(format!("unknown op {op} in the revision index"))),
        };
        bytes += event.bytes();
        out.last_mut().expect("pushed above").events.push(event);
    }
    Ok(out)
}
