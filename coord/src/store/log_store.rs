//! The Raft log on RocksDB. Appends are acknowledged only after the WAL is fsynced.
//!
//! A dedicated sync thread does the fsync: every append waiting at the time shares one
//! `flush_wal(true)` (group commit), so many small appends cost one fdatasync.
//! The newest entries are also kept in memory ([`Recent`]): replication to each follower
//! reads them right after they are appended, and should not decode them from disk again.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use super::{io_err, CF_LOG, CF_RAFT_META};
use crate::codec::{decode, encode, key_u64, u64_key};
use crate::types::{Entry, LogId, TypeConfig, Vote};

pub(crate) const KEY_VOTE: &[u8] = b"vote";
pub(crate) const KEY_PURGED: &[u8] = b"last_purged";

/// How many of the newest entries are kept in memory, and how many bytes at most.
const RECENT_ENTRIES_MAX: usize = 8192;
const RECENT_BYTES_MAX: usize = 64 << 20;
/// Entries replicated in one AppendEntries stop at about this many bytes (at least one
/// entry), far below the 64 MiB gRPC message limit.
const APPEND_BATCH_BYTES_MAX: usize = 8 << 20;

/// The newest appended entries (with their encoded size), contiguous indexes, exactly as
/// on disk.
#[derive(Default)]
struct Recent {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Recent {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.index())
    }

    fn pop_front(&mut self) {
        if let Some((_, n)) = self.entries.pop_front() {
            self.bytes -= n;
        }
    }

    fn push(&mut self, e: Entry, size: usize) {
        let idx = e.index();
        if self.entries.back().is_some_and(|(b, _)| b.index() + 1 != idx) {
            self.entries.clear();
            self.bytes = 0;
        }
        self.entries.push_back((e, size));
        self.bytes += size;
        while self.entries.len() > RECENT_ENTRIES_MAX || (self.bytes > RECENT_BYTES_MAX && self.entries.len() > 1) {
            self.pop_front();
        }
    }

    /// Entries `start..end` if all of them are here, stopping after `budget` bytes (at
    /// least one entry).
    fn get(&self, start: u64, end: u64, budget: usize) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = self.entries.back()?.0.index();
        if start < first || end == 0 || end - 1 > last || start >= end {
            return None;
        }
        let from = (start - first) as usize;
        let mut out = Vec::new();
        let mut bytes = 0;
        for (e, n) in self.entries.range(from..from + (end - start) as usize) {
            if !out.is_empty() && bytes + n > budget {
                break;
            }
            bytes += n;
            out.push(e.clone());
        }
        Some(out)
    }

    fn truncate_after(&mut self, keep_through: Option<u64>) {
        while self.entries.back().is_some_and(|(b, _)| keep_through.is_none_or(|k| b.index() > k)) {
            if let Some((_, n)) = self.entries.pop_back() {
                self.bytes -= n;
            }
        }
    }

    fn purge_through(&mut self, idx: u64) {
        while self.first_index().is_some_and(|f| f <= idx) {
            self.pop_front();
        }
    }
}

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    syncer: mpsc::Sender<IOFlushed<TypeConfig>>,
    recent: Arc<Mutex<Recent>>,
    /// Set while this node follows: then `append` syncs inline, since the follower only
    /// acknowledges after the sync anyway and a hand-off to the sync thread costs a wakeup.
    /// A leader syncs on the sync thread, so that replication starts before its own fsync.
    sync_inline: Arc<std::sync::atomic::AtomicBool>,
}

/// One fsync of the log, timed for `cluster_disk_wal_fsync_duration_seconds`.
fn timed_fsync(db: &DB) -> io::Result<()> {
    let started = std::time::Instant::now();
    let r = db.flush_wal(true).map_err(io_err);
    crate::metrics::global().wal_fsync.observe(started.elapsed().as_secs_f64());
    r
}

impl LogStore {
    pub fn new(db: Arc<DB>) -> LogStore {
        let (tx, rx) = mpsc::channel::<IOFlushed<TypeConfig>>();
        // A weak handle: the DB must close where its last owner drops it, not on this
        // detached thread after the owners are gone (closing RocksDB there can race the
        // process exit and abort with "pthread lock: Invalid argument").
        let sync_db = Arc::downgrade(&db);
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let res = match sync_db.upgrade() {
                        Some(db) => timed_fsync(&db),
                        None => Err(io::Error::other("the database was closed")),
                    };
                    for cb in waiting {
                        cb.io_completed(res.as_ref().map(|_| ()).map_err(|e| io::Error::other(e.to_string())));
                    }
                }
            })
            .expect("spawn raft-log-sync thread");
        let store = LogStore { db, syncer: tx, recent: Arc::default(), sync_inline: Arc::default() };
        store.finish_purge();
        store
    }

    /// Shared switch between inline and sync-thread fsync; see the `sync_inline` field.
    pub fn sync_inline_switch(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.sync_inline.clone()
    }

    /// A purge writes its (synced) mark before deleting the entries, and the delete is
    /// not synced: after a crash, entries at or below the mark may still be on disk.
    /// Deleting them again here keeps the log contiguous above the mark.
    fn finish_purge(&self) {
        if let Ok(Some(purged)) = self.get_meta::<LogId>(KEY_PURGED) {
            if let Err(e) = self.delete_through(purged.index) {
                tracing::warn!("finishing an interrupted purge failed: {e}");
            }
        }
    }

    /// Deletes every entry at or below `index` (not synced).
    fn delete_through(&self, index: u64) -> io::Result<()> {
        self.db.delete_range_cf(self.cf_log(), u64_key(0), u64_key(index + 1)).map_err(io_err)
    }

    /// Entries `start..end` (`None`: to the end), from memory when all are there, else
    /// from disk; stops after `budget` bytes (at least one entry).
    fn entries(&self, start: u64, end: Option<u64>, budget: usize) -> io::Result<Vec<Entry>> {
        if let Some(end) = end {
            if let Some(hit) = self.recent.lock().expect("recent lock").get(start, end, budget) {
                return Ok(hit);
            }
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        let it = self.db.iterator_cf(self.cf_log(), IteratorMode::From(&u64_key(start), Direction::Forward));
        for item in it {
            let (k, v) = item.map_err(io_err)?;
            let idx = key_u64(&k);
            if end.is_some_and(|e| idx >= e) {
                break;
            }
            if !out.is_empty() && bytes + v.len() > budget {
                break;
            }
            bytes += v.len();
            let entry: Entry = decode(&v)?;
            // Check what came back from disk is the entry that was asked for.
            assert_eq!(entry.index(), idx, "log entry stored under a wrong index");
            out.push(entry);
        }
        Ok(out)
    }

    fn cf_log(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(CF_LOG).expect("log column family")
    }

    fn cf_meta(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(CF_RAFT_META).expect("raft_meta column family")
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        super::get_decoded(&self.db, self.cf_meta(), key)
    }

    fn put_meta_synced<T: serde::Serialize>(&self, key: &[u8], v: &T) -> io::Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.put_cf_opt(self.cf_meta(), key, encode(v)?, &wo).map_err(io_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => *x + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => x.checked_add(1),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        self.entries(start, end, usize::MAX)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        self.entries(start, Some(end), APPEND_BATCH_BYTES_MAX)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let on_disk = match self.db.iterator_cf(self.cf_log(), IteratorMode::End).next() {
            Some(item) => {
                let (_, v) = item.map_err(io_err)?;
                let e: Entry = decode(&v)?;
                Some(e.log_id())
            }
            None => None,
        };
        // Never report a last entry below the purge mark.
        let last = match (on_disk, &last_purged) {
            (Some(d), Some(p)) if d.index <= p.index => Some(*p),
            (None, p) => *p,
            (d, _) => d,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_meta_synced(KEY_VOTE, vote)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut sizes = Vec::with_capacity(entries.len());
        for e in &entries {
            let b = encode(e)?;
            sizes.push(b.len());
            batch.put_cf(self.cf_log(), u64_key(e.index()), b);
        }
        // Written (readable) before returning, durable only when the callback fires.
        self.db.write(batch).map_err(io_err)?;
        let mut recent = self.recent.lock().expect("recent lock");
        for (e, n) in entries.into_iter().zip(sizes) {
            recent.push(e, n);
        }
        drop(recent);
        if self.sync_inline.load(std::sync::atomic::Ordering::Relaxed) {
            callback.io_completed(timed_fsync(&self.db));
            return Ok(());
        }
        self.syncer.send(callback).map_err(|_| io::Error::other("log sync thread stopped"))
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        let from = last.as_ref().map(|l| l.index + 1).unwrap_or(0);
        self.db.delete_range_cf(self.cf_log(), u64_key(from), u64_key(u64::MAX)).map_err(io_err)?;
        self.recent.lock().expect("recent lock").truncate_after(last.map(|l| l.index));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // The purge mark goes first: entries at or below it are ignored from then on,
        // so a crash between the two writes is harmless.
        self.put_meta_synced(KEY_PURGED, &log_id)?;
        self.delete_through(log_id.index)?;
        self.recent.lock().expect("recent lock").purge_through(log_id.index);
        Ok(())
    }
}
