//! The one RocksDB [`IpamStore`]. IPAM keeps who holds what on disk (`i/o/`, `i/a/`, …)
//! rather than in memory; apply, the leader's leak check and the listings all read it
//! through this type.

use std::collections::BTreeMap;
use std::io;

use rocksdb::{IteratorMode, ReadOptions, WriteBatch, DB};

use super::{io_err, sm_cf};
use crate::ipam::IpamStore;

/// Reads see the DB. In apply, the DB holds every entry before this one (the apply batch
/// was flushed first) and this entry's own writes go to the batch and to an overlay that
/// later reads of the same entry see. Outside apply the store is read-only.
pub(crate) struct RocksIpam<'a> {
    db: &'a DB,
    batch: Option<&'a mut WriteBatch>,
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> RocksIpam<'a> {
    pub(crate) fn for_apply(db: &'a DB, batch: &'a mut WriteBatch) -> RocksIpam<'a> {
        RocksIpam { db, batch: Some(batch), overlay: BTreeMap::new() }
    }

    pub(crate) fn read_only(db: &'a DB) -> RocksIpam<'a> {
        RocksIpam { db, batch: None, overlay: BTreeMap::new() }
    }

    fn batch(&mut self) -> &mut WriteBatch {
        // Writing through a read view is a programming error, not an operating one.
        self.batch.as_deref_mut().expect("IPAM store opened read-only is written to")
    }
}

impl IpamStore for RocksIpam<'_> {
    fn get(&mut self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        self.db.get_cf(sm_cf(self.db), key).map_err(io_err)
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        let cf = sm_cf(self.db);
        self.batch().put_cf(cf, &key, &value);
        self.overlay.insert(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        let cf = sm_cf(self.db);
        self.batch().delete_cf(cf, &key);
        self.overlay.insert(key, None);
    }

    fn scan(&mut self, prefix: &[u8], limit: usize) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut ro = ReadOptions::default();
        // IPAM prefixes end in '/': the next byte bounds them.
        let mut upper = prefix.to_vec();
        *upper.last_mut().expect("non-empty prefix") += 1;
        ro.set_iterate_upper_bound(upper);
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        // Overlay deletions may hide DB keys: read enough to still fill `limit`.
        let want = limit.saturating_add(self.overlay.len());
        for item in self
            .db
            .iterator_cf_opt(sm_cf(self.db), ro, IteratorMode::From(prefix, rocksdb::Direction::Forward))
            .take(want)
        {
            let (k, v) = item.map_err(io_err)?;
            out.insert(k.to_vec(), v.to_vec());
        }
        for (k, v) in self.overlay.range(prefix.to_vec()..).take_while(|(k, _)| k.starts_with(prefix)) {
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
        Ok(out.into_iter().take(limit).collect())
    }
}
