//! The etcd-style multi-version key-value store inside the state machine.
//!
//! The newest version of every live key is held in memory ([`KvStore`]), so current
//! reads never touch disk. Every write is also recorded through a [`History`], which
//! the RocksDB store persists; reads at an older revision and compaction go through it.
//! Revisions follow etcd: the store starts at revision 1, every write request (a put,
//! a delete that removed something, a txn that wrote) takes the next revision, and all
//! writes of one txn share it.

// State-machine code: deterministic on every member (see coord/clippy.toml).
#![deny(clippy::disallowed_types, clippy::disallowed_methods)]

pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::command::ApplyError;
use types::*;

/// etcd's default `--max-request-bytes`: 1.5 MiB.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

/// The newest version of a live key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Live {
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Vec<u8>,
}

impl Live {
    pub fn to_kv(&self, key: &[u8]) -> KeyValue {
        let mut kv = self.to_kv_without_value(key);
        kv.value = self.value.clone();
        kv
    }

    fn to_kv_without_value(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: Vec::new(),
            lease: self.lease,
        }
    }
}

/// Durable record of old versions, implemented by the RocksDB store (and by a
/// `BTreeMap` in tests).
pub trait History {
    /// Record that `kv` was written at `kv.mod_revision`, replacing `prev` (`None`: the
    /// key did not exist).
    fn record_put(&mut self, kv: &KeyValue, prev: Option<&Live>);
    /// Record that `key`, whose newest version was `prev`, was deleted at `revision`.
    fn record_delete(&mut self, key: &[u8], revision: i64, prev: &Live);
    /// Every key in `range` that was live at `revision`, ascending by key.
    fn scan_at(&mut self, range: &KeyRange, revision: i64) -> io::Result<Vec<KeyValue>>;
}

/// A key range in etcd's encoding, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    /// Exclusive end; `None` means unbounded.
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// etcd: empty `range_end` is the single key; `"\0"` is every key >= `key`.
    pub fn new(key: &[u8], range_end: &[u8]) -> KeyRange {
        if range_end.is_empty() {
            let mut end = key.to_vec();
            end.push(0);
            KeyRange { start: key.to_vec(), end: Some(end) }
        } else if range_end == [0] {
            KeyRange { start: key.to_vec(), end: None }
        } else {
            KeyRange { start: key.to_vec(), end: Some(range_end.to_vec()) }
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        k >= self.start.as_slice() && self.end.as_deref().is_none_or(|e| k < e)
    }

    fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        let end = match &self.end {
            Some(e) => Bound::Excluded(e.as_slice()),
            None => Bound::Unbounded,
        };
        (Bound::Included(self.start.as_slice()), end)
    }

    fn is_empty(&self) -> bool {
        self.end.as_deref().is_some_and(|e| e <= self.start.as_slice())
    }
}

pub use proto::consts::prefix_range_end;

/// The live keys and revision counters. Deterministic: only `BTreeMap`s.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KvStore {
    pub live: BTreeMap<Vec<u8>, Live>,
    pub revision: i64,
    pub compact_revision: i64,
    /// Every lease that exists, with the live keys attached to it (those whose `lease`
    /// names it). Derived: rebuilt from the keys and the lease records at load.
    pub lease_keys: BTreeMap<i64, BTreeSet<Vec<u8>>>,
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore { live: BTreeMap::new(), revision: 1, compact_revision: 0, lease_keys: BTreeMap::new() }
    }

    /// A new lease exists, with no keys yet.
    pub fn grant_lease(&mut self, id: i64) {
        self.lease_keys.entry(id).or_default();
    }

    /// Deletes every key attached to lease `id`, all in one revision (none if it holds
    /// no key), and forgets the lease. Returns how many keys were deleted.
    pub fn revoke_lease(&mut self, id: i64, history: &mut dyn History) -> i64 {
        let keys = self.lease_keys.remove(&id).unwrap_or_default();
        if keys.is_empty() {
            return 0;
        }
        let rev = self.revision + 1;
        for k in &keys {
            let old = self.live.remove(k).expect("a lease's keys are live");
            history.record_delete(k, rev, &old);
        }
        self.revision = rev;
        keys.len() as i64
    }

    /// At load: the leases that exist, attached to the live keys that name them.
    pub fn load_leases(&mut self, ids: impl IntoIterator<Item = i64>) {
        self.lease_keys = ids.into_iter().map(|id| (id, BTreeSet::new())).collect();
        for (k, l) in &self.live {
            if let Some(keys) = self.lease_keys.get_mut(&l.lease) {
                keys.insert(k.clone());
            }
        }
    }

    fn attach(&mut self, key: &[u8], from: i64, to: i64) {
        if from == to {
            return;
        }
        if let Some(keys) = self.lease_keys.get_mut(&from) {
            keys.remove(key);
        }
        if let Some(keys) = self.lease_keys.get_mut(&to) {
            keys.insert(key.to_vec());
        }
    }

    /// Validates a request before it is proposed or applied; bad input changes nothing.
    pub fn validate_put(req: &PutRequest) -> Result<(), ApplyError> {
        if req.key.is_empty() {
            return Err(ApplyError::EmptyKey);
        }
        if req.key.len() + req.value.len() > MAX_REQUEST_BYTES {
            return Err(ApplyError::TooLarge);
        }
        Ok(())
    }

    pub fn validate_range_key(key: &[u8]) -> Result<(), ApplyError> {
        if key.is_empty() {
            return Err(ApplyError::EmptyKey);
        }
        Ok(())
    }

    /// A Range's or DeleteRange's keys, checked by the service before it reads or
    /// proposes (not in apply: entries already in logs keep the verdict they had).
    pub fn validate_range(key: &[u8], range_end: &[u8]) -> Result<(), ApplyError> {
        Self::validate_range_key(key)?;
        if key.len() + range_end.len() > MAX_REQUEST_BYTES {
            return Err(ApplyError::TooLarge);
        }
        Ok(())
    }

    /// What the service checks before proposing a txn: [`Self::validate_txn`], and that
    /// no nested txn deletes a key an earlier one in the same branch puts. etcd admits
    /// that shape; both writes would share a revision, and the delete's tombstone would
    /// overwrite the put's stored version, which watchers replaying history read. Kept
    /// out of apply so that entries already in logs keep the verdict they had.
    pub fn validate_txn_proposal(req: &TxnRequest) -> Result<(), ApplyError> {
        Self::validate_txn(req)?;
        fn branch(ops: &[RequestOp]) -> Result<(), ApplyError> {
            let mut puts: Vec<&[u8]> = Vec::new();
            for op in ops {
                match op {
                    RequestOp::Put(p) => puts.push(&p.key),
                    RequestOp::Txn(t) => {
                        branch(&t.success)?;
                        branch(&t.failure)?;
                        for d in nested_deletes(t) {
                            if puts.iter().any(|k| d.contains(k)) {
                                return Err(ApplyError::DuplicateKey);
                            }
                        }
                        puts.extend(nested_puts(t));
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        fn nested_deletes(t: &TxnRequest) -> Vec<KeyRange> {
            let mut out = Vec::new();
            for op in t.success.iter().chain(&t.failure) {
                match op {
                    RequestOp::DeleteRange(d) => out.push(KeyRange::new(&d.key, &d.range_end)),
                    RequestOp::Txn(n) => out.extend(nested_deletes(n)),
                    _ => {}
                }
            }
            out
        }
        fn nested_puts(t: &TxnRequest) -> Vec<&[u8]> {
            let mut out: Vec<&[u8]> = Vec::new();
            for op in t.success.iter().chain(&t.failure) {
                match op {
                    RequestOp::Put(p) => out.push(&p.key),
                    RequestOp::Txn(n) => out.extend(nested_puts(n)),
                    _ => {}
                }
            }
            out
        }
        branch(&req.success)?;
        branch(&req.failure)
    }

    pub fn validate_txn(req: &TxnRequest) -> Result<(), ApplyError> {
        if Self::txn_bytes(req) > MAX_REQUEST_BYTES {
            return Err(ApplyError::TooLarge);
        }
        Self::validate_txn_ops(req)
    }

    /// Bytes of keys and values a txn carries, nested txns included (etcd limits the whole
    /// request, not each put).
    fn txn_bytes(req: &TxnRequest) -> usize {
        let ops = |ops: &[RequestOp]| -> usize {
            ops.iter()
                .map(|op| match op {
                    RequestOp::Range(r) => r.key.len() + r.range_end.len(),
                    RequestOp::Put(p) => p.key.len() + p.value.len(),
                    RequestOp::DeleteRange(d) => d.key.len() + d.range_end.len(),
                    RequestOp::Txn(t) => Self::txn_bytes(t),
                })
                .sum()
        };
        let compares: usize = req
            .compare
            .iter()
            .map(|c| {
                c.key.len() + c.range_end.len() + if let CompareTarget::Value(v) = &c.target { v.len() } else { 0 }
            })
            .sum();
        compares + ops(&req.success) + ops(&req.failure)
    }

    fn validate_txn_ops(req: &TxnRequest) -> Result<(), ApplyError> {
        Self::validate_txn_static(req)?;
        Self::check_intervals(&req.success)?;
        Self::check_intervals(&req.failure)?;
        Ok(())
    }

    /// Op counts and keys, every level.
    fn validate_txn_static(req: &TxnRequest) -> Result<(), ApplyError> {
        if req.success.len() > MAX_TXN_OPS || req.failure.len() > MAX_TXN_OPS {
            return Err(ApplyError::TooManyOps);
        }
        for c in &req.compare {
            Self::validate_range_key(&c.key)?;
        }
        for op in req.success.iter().chain(&req.failure) {
            match op {
                RequestOp::Range(r) => Self::validate_range_key(&r.key)?,
                RequestOp::Put(p) => Self::validate_put(p)?,
                RequestOp::DeleteRange(d) => Self::validate_range_key(&d.key)?,
                RequestOp::Txn(t) => Self::validate_txn_static(t)?,
            }
        }
        Ok(())
    }

    /// etcd's duplicate-key rule for one branch, nested txns included: a key may be put
    /// once and not also deleted. The success and failure of a nested txn exclude each
    /// other, so they may put the same key. Returns the branch's puts and deletes.
    fn check_intervals(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<KeyRange>), ApplyError> {
        let mut dels: Vec<KeyRange> = ops
            .iter()
            .filter_map(|op| match op {
                RequestOp::DeleteRange(d) => Some(KeyRange::new(&d.key, &d.range_end)),
                _ => None,
            })
            .collect();
        let deleted = |dels: &[KeyRange], k: &[u8]| dels.iter().any(|r| r.contains(k));
        let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
        for op in ops {
            let RequestOp::Txn(t) = op else { continue };
            let (then_puts, then_dels) = Self::check_intervals(&t.success)?;
            let (else_puts, else_dels) = Self::check_intervals(&t.failure)?;
            for k in &then_puts {
                if puts.contains(k) || deleted(&dels, k) {
                    return Err(ApplyError::DuplicateKey);
                }
            }
            for k in &else_puts {
                if (puts.contains(k) && !then_puts.contains(k)) || deleted(&dels, k) {
                    return Err(ApplyError::DuplicateKey);
                }
            }
            puts.extend(then_puts);
            puts.extend(else_puts);
            dels.extend(then_dels);
            dels.extend(else_dels);
        }
        for op in ops {
            let RequestOp::Put(p) = op else { continue };
            if puts.contains(&p.key) || deleted(&dels, &p.key) {
                return Err(ApplyError::DuplicateKey);
            }
            puts.insert(p.key.clone());
        }
        Ok((puts, dels))
    }

    /// Read-only Range against this store (current or, through `history`, past revision).
    pub fn range(&self, req: &RangeRequest, history: &mut dyn History) -> Result<RangeResponse, ApplyError> {
        let range = KeyRange::new(&req.key, &req.range_end);
        let current = req.revision <= 0 || req.revision == self.revision;
        if current && !range.is_empty() {
            if let Some(r) = self.range_in_key_order(req, &range) {
                return Ok(r);
            }
        }
        let mut kvs = if current {
            // BTreeMap::range panics on an inverted range; etcd answers it with nothing.
            if range.is_empty() {
                Vec::new()
            } else {
                self.live.range::<[u8], _>(range.bounds()).map(|(k, l)| l.to_kv(k)).collect::<Vec<_>>()
            }
        } else if req.revision > self.revision {
            return Err(ApplyError::FutureRevision);
        } else if req.revision < self.compact_revision {
            return Err(ApplyError::Compacted);
        } else {
            history.scan_at(&range, req.revision).map_err(|e| ApplyError::Storage(e.to_string()))?
        };
        Ok(Self::finish_range(req, &mut kvs))
    }

    /// The common Range (current revision, no revision filters, in key order either way)
    /// without copying the range: it counts the keys in place and copies only the
    /// `limit` it returns, and no values for `keys_only`. `None`: the request needs the
    /// general path.
    fn range_in_key_order(&self, req: &RangeRequest, range: &KeyRange) -> Option<RangeResponse> {
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let descend = match (req.sort_order, req.sort_target) {
            (SortOrder::None, SortTarget::Key) | (SortOrder::Ascend, SortTarget::Key) => false,
            (SortOrder::Descend, SortTarget::Key) => true,
            _ => return None,
        };
        if filtered {
            return None;
        }
        let it = self.live.range::<[u8], _>(range.bounds());
        let count = it.clone().count();
        if req.count_only {
            return Some(RangeResponse { kvs: Vec::new(), more: false, count: count as i64 });
        }
        let take = if req.limit > 0 { (req.limit as usize).min(count) } else { count };
        let copy = |(k, l): (&Vec<u8>, &Live)| match req.keys_only {
            true => l.to_kv_without_value(k),
            false => l.to_kv(k),
        };
        let kvs: Vec<KeyValue> = match descend {
            true => it.rev().take(take).map(copy).collect(),
            false => it.take(take).map(copy).collect(),
        };
        Some(RangeResponse { kvs, more: take < count, count: count as i64 })
    }

    fn finish_range(req: &RangeRequest, kvs: &mut Vec<KeyValue>) -> RangeResponse {
        // etcd counts the keys in the range before the revision filters prune them.
        let count = kvs.len() as i64;
        kvs.retain(|kv| {
            (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        });
        if req.count_only {
            return RangeResponse { kvs: Vec::new(), more: false, count };
        }
        let order = match (req.sort_order, req.sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (o, _) => o,
        };
        if order != SortOrder::None {
            // A stable sort keeps key order among equal targets, as etcd does.
            match req.sort_target {
                SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
                SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
                SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
                SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
                SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
            }
            if order == SortOrder::Descend {
                kvs.reverse();
            }
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() > req.limit as usize {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            for kv in kvs.iter_mut() {
                kv.value.clear();
            }
        }
        RangeResponse { kvs: std::mem::take(kvs), more, count }
    }

    pub fn apply_put(&mut self, req: &PutRequest, history: &mut dyn History) -> Result<PutResponse, ApplyError> {
        Self::validate_put(req)?;
        self.check_put_refs(req)?;
        let rev = self.revision + 1;
        let resp = self.put_at(req, rev, history);
        self.revision = rev;
        Ok(resp)
    }

    pub fn apply_delete(
        &mut self,
        req: &DeleteRangeRequest,
        history: &mut dyn History,
    ) -> Result<DeleteRangeResponse, ApplyError> {
        Self::validate_range_key(&req.key)?;
        let rev = self.revision + 1;
        let resp = self.delete_at(req, rev, history);
        if resp.deleted > 0 {
            self.revision = rev;
        }
        Ok(resp)
    }

    pub fn apply_txn(&mut self, req: &TxnRequest, history: &mut dyn History) -> Result<TxnResponse, ApplyError> {
        Self::validate_txn(req)?;
        let rev = self.revision + 1;
        // As etcd: every branch, nested ones included, is decided against the state before
        // the txn's writes, and only the ops on that path are checked and run. All checks
        // come before any write, so a refused txn changes nothing.
        let mut path = Vec::new();
        self.txn_path(req, &mut path);
        let succeeded = path[0];
        let ops = if succeeded { &req.success } else { &req.failure };
        self.check_ops(ops, &mut path[1..].iter().copied())?;
        let mut wrote = false;
        let responses = self.exec_ops(ops, rev, &mut wrote, history, &mut path[1..].iter().copied())?;
        if wrote {
            self.revision = rev;
        }
        Ok(TxnResponse { succeeded, responses })
    }

    /// The branch decisions of `t` and its nested txns on the taken path, in pre-order.
    fn txn_path(&self, t: &TxnRequest, path: &mut Vec<bool>) {
        let ok = t.compare.iter().all(|c| self.compare(c));
        path.push(ok);
        for op in if ok { &t.success } else { &t.failure } {
            if let RequestOp::Txn(nested) = op {
                self.txn_path(nested, path);
            }
        }
    }

    fn check_ops(&self, ops: &[RequestOp], path: &mut impl Iterator<Item = bool>) -> Result<(), ApplyError> {
        for op in ops {
            match op {
                RequestOp::Range(r) => {
                    if r.revision > self.revision {
                        return Err(ApplyError::FutureRevision);
                    }
                    if r.revision > 0 && r.revision < self.compact_revision {
                        return Err(ApplyError::Compacted);
                    }
                }
                RequestOp::Put(p) => self.check_put_refs(p)?,
                RequestOp::DeleteRange(_) => {}
                RequestOp::Txn(t) => {
                    let ok = path.next().expect("txn path covers every nested txn");
                    self.check_ops(if ok { &t.success } else { &t.failure }, path)?;
                }
            }
        }
        Ok(())
    }

    fn exec_ops(
        &mut self,
        ops: &[RequestOp],
        rev: i64,
        wrote: &mut bool,
        history: &mut dyn History,
        path: &mut impl Iterator<Item = bool>,
    ) -> Result<Vec<ResponseOp>, ApplyError> {
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            out.push(match op {
                RequestOp::Range(r) => {
                    // Reads inside a txn see the txn's own earlier writes.
                    let mut r = r.clone();
                    if *wrote && r.revision == 0 {
                        r.revision = rev;
                    }
                    let saved = self.revision;
                    if *wrote {
                        self.revision = rev;
                    }
                    let res = self.range(&r, history);
                    self.revision = saved;
                    ResponseOp::Range(res?)
                }
                RequestOp::Put(p) => {
                    *wrote = true;
                    ResponseOp::Put(self.put_at(p, rev, history))
                }
                RequestOp::DeleteRange(d) => {
                    let resp = self.delete_at(d, rev, history);
                    *wrote |= resp.deleted > 0;
                    ResponseOp::DeleteRange(resp)
                }
                RequestOp::Txn(t) => {
                    let ok = path.next().expect("txn path covers every nested txn");
                    let inner = if ok { &t.success } else { &t.failure };
                    let responses = self.exec_ops(inner, rev, wrote, history, path)?;
                    ResponseOp::Txn(TxnResponse { succeeded: ok, responses })
                }
            });
        }
        Ok(out)
    }

    fn check_put_refs(&self, req: &PutRequest) -> Result<(), ApplyError> {
        if req.lease != 0 && !req.ignore_lease && !self.lease_keys.contains_key(&req.lease) {
            return Err(ApplyError::LeaseNotFound);
        }
        if (req.ignore_value || req.ignore_lease) && !self.live.contains_key(&req.key) {
            return Err(ApplyError::Other("etcdserver: key not found".into()));
        }
        Ok(())
    }

    fn put_at(&mut self, req: &PutRequest, rev: i64, history: &mut dyn History) -> PutResponse {
        let prev = self.live.get(&req.key).cloned();
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (rev, 1),
        };
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let live = Live { create_revision, mod_revision: rev, version, lease, value };
        history.record_put(&live.to_kv(&req.key), prev.as_ref());
        self.attach(&req.key, prev.as_ref().map_or(0, |p| p.lease), lease);
        self.live.insert(req.key.clone(), live);
        PutResponse { prev_kv: if req.prev_kv { prev.map(|p| p.to_kv(&req.key)) } else { None } }
    }

    fn delete_at(&mut self, req: &DeleteRangeRequest, rev: i64, history: &mut dyn History) -> DeleteRangeResponse {
        let range = KeyRange::new(&req.key, &req.range_end);
        if range.is_empty() {
            return DeleteRangeResponse::default();
        }
        let keys: Vec<Vec<u8>> = self.live.range::<[u8], _>(range.bounds()).map(|(k, _)| k.clone()).collect();
        let mut prev_kvs = Vec::new();
        for k in &keys {
            let old = self.live.remove(k).expect("key listed from the live map");
            history.record_delete(k, rev, &old);
            self.attach(k, old.lease, 0);
            if req.prev_kv {
                prev_kvs.push(old.to_kv(k));
            }
        }
        DeleteRangeResponse { deleted: keys.len() as i64, prev_kvs }
    }

    /// etcd's compare: every key in the range must satisfy it; a missing key compares as
    /// all-zero, except that a value compare on a missing key is false.
    pub fn compare(&self, c: &Compare) -> bool {
        let range = KeyRange::new(&c.key, &c.range_end);
        let matched: Vec<&Live> = if range.is_empty() {
            Vec::new()
        } else {
            self.live.range::<[u8], _>(range.bounds()).map(|(_, l)| l).collect()
        };
        if matched.is_empty() {
            if matches!(c.target, CompareTarget::Value(_)) {
                return false;
            }
            let zero = Live { create_revision: 0, mod_revision: 0, version: 0, lease: 0, value: vec![] };
            return Self::compare_one(c, &zero);
        }
        matched.into_iter().all(|l| Self::compare_one(c, l))
    }

    fn compare_one(c: &Compare, l: &Live) -> bool {
        use std::cmp::Ordering;
        let ord: Ordering = match &c.target {
            CompareTarget::Version(v) => l.version.cmp(v),
            CompareTarget::CreateRevision(v) => l.create_revision.cmp(v),
            CompareTarget::ModRevision(v) => l.mod_revision.cmp(v),
            CompareTarget::Value(v) => l.value.as_slice().cmp(v.as_slice()),
            CompareTarget::Lease(v) => l.lease.cmp(v),
        };
        match c.result {
            CompareResult::Equal => ord == Ordering::Equal,
            CompareResult::NotEqual => ord != Ordering::Equal,
            CompareResult::Greater => ord == Ordering::Greater,
            CompareResult::Less => ord == Ordering::Less,
        }
    }

    /// Marks history below `revision` as discarded. The caller removes the old versions.
    pub fn apply_compact(&mut self, revision: i64) -> Result<i64, ApplyError> {
        if revision <= self.compact_revision {
            return Err(ApplyError::Compacted);
        }
        if revision > self.revision {
            return Err(ApplyError::FutureRevision);
        }
        let prev = self.compact_revision;
        self.compact_revision = revision;
        Ok(prev)
    }
}

#[cfg(test)]
mod tests;
