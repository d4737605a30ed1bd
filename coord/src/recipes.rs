//! etcd's lock and election recipes, run by the master (the v3lock and v3election
//! services), with etcd's key layout so that they interoperate with the same recipes
//! run by clients (etcdctl's `lock` and `elect` run them client-side).
//!
//! A contender's key is `<name>/<lease id in hex>`, put with its lease if absent. The
//! contender holding the key with the lowest create revision holds the lock (leads);
//! the others wait, each for the deletion of every key created before its own. Before
//! answering, the waiter reads its own key again through a linearizable read and
//! answers only if it is still there and still first: a lease that ran out while it
//! waited would otherwise hand out a lock nobody holds (etcd #11456, found by Jepsen).
//! The key's create revision is the fencing token: whatever the holder writes to
//! should check it (a Txn comparing `CreateRevision(key) == token`), since a lock can
//! be lost (its lease expires) while its holder still believes it holds it.

use std::sync::Arc;
use std::time::Duration;

use crate::command::{Command, Output};
use crate::error::{CoordError, Result};
use crate::kv::types::*;
use crate::kv::{prefix_range_end, KvStore};
use crate::node::CoordNode;
use crate::read::Consistency;

/// The key a contender holds: `<name>/<lease id in lowercase hex>`.
pub fn contender_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut k = name.to_vec();
    k.push(b'/');
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    k
}

fn prefix(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// A held key: the recipe's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub key: Vec<u8>,
    /// The key's create revision: the fencing token.
    pub create_revision: i64,
    /// The store revision when the recipe answered.
    pub revision: i64,
}

impl CoordNode {
    async fn txn(&self, t: TxnRequest) -> Result<(i64, TxnResponse)> {
        KvStore::validate_txn_proposal(&t).map_err(CoordError::Apply)?;
        match self.write(Command::Txn(t)).await? {
            crate::node::Written { revision, output: Output::Txn(r) } => Ok((revision, r)),
            w => Err(CoordError::Internal(format!("unexpected apply output {:?}", w.output))),
        }
    }

    /// Puts `key` with `value` under `lease` unless it exists. Returns the key's create
    /// revision, and its value if it existed.
    async fn put_if_absent(&self, key: &[u8], value: &[u8], lease: i64) -> Result<(i64, Option<Vec<u8>>)> {
        let absent = Compare {
            result: CompareResult::Equal,
            target: CompareTarget::CreateRevision(0),
            key: key.to_vec(),
            range_end: vec![],
        };
        let put = PutRequest { key: key.to_vec(), value: value.to_vec(), lease, ..Default::default() };
        let get = RangeRequest { key: key.to_vec(), ..Default::default() };
        let t = TxnRequest {
            compare: vec![absent],
            success: vec![RequestOp::Put(put)],
            failure: vec![RequestOp::Range(get)],
        };
        let (revision, r) = self.txn(t).await?;
        if r.succeeded {
            return Ok((revision, None));
        }
        match r.responses.into_iter().next() {
            Some(ResponseOp::Range(RangeResponse { kvs, .. })) if !kvs.is_empty() => {
                let kv = kvs.into_iter().next().expect("one key");
                Ok((kv.create_revision, Some(kv.value)))
            }
            _ => Err(CoordError::Internal("the contender key vanished inside its own txn".into())),
        }
    }

    /// The contender created last before `rev` under `prefix`, read from this node's
    /// state (`consistency` decides how fresh).
    async fn last_before(&self, prefix: &[u8], rev: i64, consistency: Consistency) -> Result<Option<KeyValue>> {
        let req = RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_range_end(prefix),
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Create,
            max_create_revision: rev - 1,
            limit: 1,
            ..Default::default()
        };
        let r = self.read(consistency, |v| v.range(&req)).await?.map_err(CoordError::Apply)?;
        Ok(r.kvs.into_iter().next())
    }

    /// Waits until every key under `prefix` created before `rev` is gone, then checks,
    /// with a linearizable read, that `key` still exists with that create revision and
    /// nothing older is left.
    async fn wait_turn(&self, prefix: &[u8], key: &[u8], rev: i64) -> Result<Held> {
        let mut applied = self.events().subscribe();
        if self.config.canary_lock_skip_reread {
            // The canary: etcd's recipe before #11456, which waits for the earlier
            // contenders only and never looks at its own key again.
            while self.last_before(prefix, rev, Consistency::Serializable).await?.is_some() {
                if applied.changed().await.is_err() {
                    return Err(CoordError::Unavailable("this master is stopping".into()));
                }
            }
            let revision = self.view(|v| v.revision());
            return Ok(Held { key: key.to_vec(), create_revision: rev, revision });
        }
        loop {
            // Cheap waits on this node's own applied state first. A key that is gone
            // (its lease ended) is settled by the linearizable check below.
            while self.last_before(prefix, rev, Consistency::Serializable).await?.is_some()
                && self.still_there(key, rev)
            {
                if applied.changed().await.is_err() {
                    return Err(CoordError::Unavailable("this master is stopping".into()));
                }
            }
            // Then the re-read that decides: linearizable, so a lagging node cannot
            // hand out a turn that is not there.
            let (mine, revision) = self
                .read(Consistency::Linearizable, |v| {
                    let r = v.range(&RangeRequest { key: key.to_vec(), ..Default::default() });
                    (r.map(|r| r.kvs.into_iter().next()), v.revision())
                })
                .await?;
            let mine = mine.map_err(CoordError::Apply)?;
            match mine {
                Some(kv) if kv.create_revision == rev => {
                    if self.last_before(prefix, rev, Consistency::Serializable).await?.is_none() {
                        return Ok(Held { key: key.to_vec(), create_revision: rev, revision });
                    }
                }
                _ => {
                    return Err(CoordError::FailedPrecondition(
                        "mutex: session is expired: the lease ended while waiting, so the lock was not taken".into(),
                    ))
                }
            }
        }
    }

    /// Whether `key` exists with create revision `rev` in this node's state.
    fn still_there(&self, key: &[u8], rev: i64) -> bool {
        self.view(|v| v.kv().live.get(key).is_some_and(|l| l.create_revision == rev))
    }

    /// v3lock Lock: waits until the caller holds lock `name` under `lease`.
    pub async fn lock(self: &Arc<Self>, name: &[u8], lease: i64) -> Result<Held> {
        need_lease(lease)?;
        let key = contender_key(name, lease);
        let (rev, existing) = self.put_if_absent(&key, b"", lease).await?;
        let mut guard = Cleanup::new(self, &key, rev, existing.is_none());
        let held = self.wait_turn(&prefix(name), &key, rev).await;
        if held.is_ok() {
            guard.key = None;
        }
        held
    }

    /// Deletes a held key (v3lock Unlock, v3election Resign after its check).
    pub async fn unlock(&self, key: &[u8]) -> Result<i64> {
        let d = DeleteRangeRequest { key: key.to_vec(), ..Default::default() };
        Ok(self.write(Command::DeleteRange(d)).await?.revision)
    }

    /// v3election Campaign: waits until the caller leads `name`, with `value`.
    pub async fn campaign(self: &Arc<Self>, name: &[u8], lease: i64, value: &[u8]) -> Result<Held> {
        need_lease(lease)?;
        let key = contender_key(name, lease);
        let (rev, existing) = self.put_if_absent(&key, value, lease).await?;
        let created = existing.is_none();
        if existing.is_some_and(|v| v != value) {
            self.proclaim(&key, rev, lease, value).await?;
        }
        let mut guard = Cleanup::new(self, &key, rev, created);
        let held = self.wait_turn(&prefix(name), &key, rev).await;
        if held.is_ok() {
            guard.key = None;
        }
        held
    }

    /// v3election Proclaim: a new value, only while `key` still has create revision
    /// `rev` (the caller still leads).
    pub async fn proclaim(&self, key: &[u8], rev: i64, lease: i64, value: &[u8]) -> Result<i64> {
        let (revision, r) = self
            .guarded(
                key,
                rev,
                RequestOp::Put(PutRequest { key: key.to_vec(), value: value.to_vec(), lease, ..Default::default() }),
            )
            .await?;
        if !r {
            return Err(CoordError::FailedPrecondition("election: not leader".into()));
        }
        Ok(revision)
    }

    /// v3election Resign: deletes `key` if it still has create revision `rev`; resigning
    /// an election already lost is not an error (as etcd).
    pub async fn resign(&self, key: &[u8], rev: i64) -> Result<i64> {
        let del = RequestOp::DeleteRange(DeleteRangeRequest { key: key.to_vec(), ..Default::default() });
        Ok(self.guarded(key, rev, del).await?.0)
    }

    async fn guarded(&self, key: &[u8], rev: i64, op: RequestOp) -> Result<(i64, bool)> {
        let cmp = Compare {
            result: CompareResult::Equal,
            target: CompareTarget::CreateRevision(rev),
            key: key.to_vec(),
            range_end: vec![],
        };
        let (revision, r) = self.txn(TxnRequest { compare: vec![cmp], success: vec![op], failure: vec![] }).await?;
        Ok((revision, r.succeeded))
    }

    /// v3election Leader: the contender created first under `name`, read from this
    /// node's state with `consistency`.
    pub async fn election_leader(&self, name: &[u8], consistency: Consistency) -> Result<(Option<KeyValue>, i64)> {
        let p = prefix(name);
        let req = RangeRequest {
            key: p.clone(),
            range_end: prefix_range_end(&p),
            sort_order: SortOrder::Ascend,
            sort_target: SortTarget::Create,
            limit: 1,
            ..Default::default()
        };
        let (r, rev) = self.read(consistency, |v| (v.range(&req), v.revision())).await?;
        Ok((r.map_err(CoordError::Apply)?.kvs.into_iter().next(), rev))
    }
}

/// A lock or a campaign needs a lease: its key must go away with its holder. (etcd's
/// server grants one itself for lease 0; a key shared by every lease-0 caller would
/// never expire.)
fn need_lease(lease: i64) -> Result<()> {
    if lease <= 0 {
        return Err(CoordError::InvalidArgument(format!(
            "lease {lease}: a lock or a campaign needs a lease (grant one, keep it alive, and pass its id)"
        )));
    }
    Ok(())
}

/// Deletes a contender's key when its wait ends without the lock (the client gave up or
/// the wait failed), so that it does not block those behind it until its lease ends.
/// Only a key this call created, and only while it has the create revision this call
/// saw: a retry or another caller with the same lease may be using it.
struct Cleanup {
    node: Arc<CoordNode>,
    key: Option<(Vec<u8>, i64)>,
}

impl Cleanup {
    fn new(node: &Arc<CoordNode>, key: &[u8], rev: i64, created: bool) -> Cleanup {
        Cleanup { node: node.clone(), key: created.then(|| (key.to_vec(), rev)) }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some((key, rev)) = self.key.take() else { return };
        let node = self.node.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), node.resign(&key, rev)).await;
        });
    }
}
