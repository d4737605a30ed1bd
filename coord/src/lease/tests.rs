//! Leases and their keys against a plain model, over random sequences of grant, put
//! (with or without a lease), delete, revoke, expiry (in the right term or a stale one)
//! and checkpoint. After every step: a lease's keys are exactly the live keys naming it,
//! a revoke or expiry deletes them in one revision, and the persisted records reload
//! into the same state.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::kv::types::{DeleteRangeRequest, KeyValue, PutRequest};
use crate::kv::Live;

/// Revisions written, as (revision, key, deleted?).
#[derive(Default)]
struct Log(Vec<(i64, Vec<u8>, bool)>);

impl History for Log {
    fn record_put(&mut self, kv: &KeyValue, _: Option<&Live>) {
        self.0.push((kv.mod_revision, kv.key.clone(), false));
    }
    fn record_delete(&mut self, key: &[u8], revision: i64, _: &Live) {
        self.0.push((revision, key.to_vec(), true));
    }
    fn scan_at(&mut self, _: &crate::kv::KeyRange, _: i64) -> std::io::Result<Vec<KeyValue>> {
        unreachable!("no reads of the past here")
    }
}

#[derive(Debug, Clone)]
enum Op {
    Grant { id: i64 },
    Put { key: u8, lease: i64 },
    Delete { key: u8 },
    Revoke { id: i64 },
    Expire { ids: Vec<i64>, stale: bool },
    Checkpoint { id: i64, left: i64, stale: bool },
    Reload,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..4i64).prop_map(|id| Op::Grant { id }),
        5 => (0..6u8, 0..4i64).prop_map(|(key, lease)| Op::Put { key, lease }),
        2 => (0..6u8).prop_map(|key| Op::Delete { key }),
        2 => (1..4i64).prop_map(|id| Op::Revoke { id }),
        2 => (proptest::collection::vec(1..4i64, 0..3), any::<bool>()).prop_map(|(ids, stale)| Op::Expire { ids, stale }),
        1 => (1..4i64, -5..30_000i64, any::<bool>()).prop_map(|(id, left, stale)| Op::Checkpoint { id, left, stale }),
        1 => Just(Op::Reload),
    ]
}

const TERM: u64 = 3;

proptest! {
    #[test]
    fn leases_and_their_keys_match_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let mut kv = KvStore::new();
        let mut leases = Leases::default();
        let mut persisted: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        // Model: lease -> ttl; key -> lease (0: none).
        let mut m_leases: BTreeMap<i64, i64> = BTreeMap::new();
        let mut m_keys: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
        for (i, op) in ops.into_iter().enumerate() {
            let index = 100 + i as u64;
            let mut log = Log::default();
            let before = kv.revision;
            // Leases holding keys before the step: an expiry deletes each one's keys in a
            // revision of its own.
            let holding: BTreeSet<i64> = m_keys.values().copied().filter(|l| *l != 0).collect();
            let mut expired_holding = None;
            match op {
                Op::Grant { id } => {
                    let r = leases.apply(index, TERM, &LeaseCommand::Grant { id, ttl_secs: 10 }, &mut kv, &mut log);
                    if id != 0 && m_leases.contains_key(&id) {
                        prop_assert_eq!(r, Err(ApplyError::LeaseExists));
                    } else {
                        let Ok(LeaseOutput::Granted { id: got, ttl_secs }) = r else { panic!("grant refused: {r:?}") };
                        prop_assert!(got > 0 && !m_leases.contains_key(&got));
                        prop_assert!(id == 0 || got == id);
                        prop_assert_eq!(ttl_secs, 10);
                        m_leases.insert(got, 10);
                    }
                }
                Op::Put { key, lease } => {
                    let req = PutRequest { key: vec![b'a' + key], value: vec![1], lease, ..Default::default() };
                    let r = kv.apply_put(&req, &mut log);
                    if lease != 0 && !m_leases.contains_key(&lease) {
                        prop_assert_eq!(r, Err(ApplyError::LeaseNotFound));
                    } else {
                        prop_assert!(r.is_ok());
                        m_keys.insert(req.key, lease);
                    }
                }
                Op::Delete { key } => {
                    let req = DeleteRangeRequest { key: vec![b'a' + key], ..Default::default() };
                    kv.apply_delete(&req, &mut log).unwrap();
                    m_keys.remove(&req.key);
                }
                Op::Revoke { id } => {
                    let r = leases.apply(index, TERM, &LeaseCommand::Revoke { id }, &mut kv, &mut log);
                    if m_leases.remove(&id).is_none() {
                        prop_assert_eq!(r, Err(ApplyError::LeaseNotFound));
                    } else {
                        let n = m_keys.iter().filter(|(_, l)| **l == id).count() as i64;
                        prop_assert_eq!(r, Ok(LeaseOutput::Revoked { deleted: n }));
                        m_keys.retain(|_, l| *l != id);
                    }
                }
                Op::Expire { ids, stale } => {
                    let term = if stale { TERM - 1 } else { TERM };
                    let r = leases.apply(index, TERM, &LeaseCommand::Expire { term, ids: ids.clone() }, &mut kv, &mut log);
                    let mut want = Vec::new();
                    if !stale {
                        for id in ids {
                            if m_leases.remove(&id).is_some() {
                                m_keys.retain(|_, l| *l != id);
                                want.push(id);
                            }
                        }
                    }
                    expired_holding = Some(want.iter().filter(|id| holding.contains(id)).count());
                    prop_assert_eq!(r, Ok(LeaseOutput::Expired { ids: want }));
                }
                Op::Checkpoint { id, left, stale } => {
                    let term = if stale { TERM + 1 } else { TERM };
                    let old = leases.by_id.get(&id).cloned();
                    let cmd = LeaseCommand::Checkpoint { term, remaining_ms: vec![(id, left)] };
                    prop_assert_eq!(leases.apply(index, TERM, &cmd, &mut kv, &mut log), Ok(LeaseOutput::Checkpointed));
                    match (old, leases.by_id.get(&id)) {
                        (Some(o), Some(n)) if !stale => {
                            prop_assert_eq!(n.remaining_ms, left.clamp(0, 20_000));
                            prop_assert_eq!(n.checkpoint_index, index);
                            prop_assert_eq!(n.ttl_secs, o.ttl_secs);
                        }
                        (o, n) => prop_assert_eq!(o.as_ref(), n),
                    }
                }
                Op::Reload => {
                    let mut fresh = KvStore::new();
                    fresh.live = kv.live.clone();
                    fresh.revision = kv.revision;
                    let loaded = Leases::load(persisted.iter().map(|(k, v)| (&k[..], &v[..])), &mut fresh).unwrap();
                    prop_assert_eq!(&loaded.by_id, &leases.by_id);
                    prop_assert_eq!(&fresh, &kv);
                }
            }
            for (k, v) in leases.take_changes() {
                match v {
                    Some(v) => { persisted.insert(k, v); }
                    None => { persisted.remove(&k); }
                }
            }
            // Every write of one step shares a revision (a revoke is one revision), except
            // an expiry: one revision per lease that held keys.
            let revs: BTreeSet<i64> = log.0.iter().map(|(r, ..)| *r).collect();
            prop_assert!(revs.len() <= expired_holding.unwrap_or(1), "too many revisions: {:?}", log.0);
            if let Some(n) = expired_holding {
                prop_assert_eq!(revs.len(), n);
            }
            prop_assert_eq!(kv.revision, before + revs.len() as i64);
            // The model and the store agree: leases, keys and who holds which key.
            prop_assert_eq!(leases.by_id.keys().copied().collect::<Vec<_>>(), m_leases.keys().copied().collect::<Vec<_>>());
            prop_assert_eq!(kv.lease_keys.keys().copied().collect::<Vec<_>>(), m_leases.keys().copied().collect::<Vec<_>>());
            let live: BTreeMap<Vec<u8>, i64> = kv.live.iter().map(|(k, l)| (k.clone(), l.lease)).collect();
            prop_assert_eq!(&live, &m_keys);
            for (id, keys) in &kv.lease_keys {
                let want: BTreeSet<Vec<u8>> = m_keys.iter().filter(|(_, l)| *l == id).map(|(k, _)| k.clone()).collect();
                prop_assert_eq!(keys, &want);
            }
        }
    }
}

#[test]
fn a_server_chosen_id_skips_ids_in_use() {
    let (mut kv, mut leases, mut log) = (KvStore::new(), Leases::default(), Log::default());
    let grant = |id| LeaseCommand::Grant { id, ttl_secs: 5 };
    assert_eq!(leases.apply(9, 1, &grant(10), &mut kv, &mut log), Ok(LeaseOutput::Granted { id: 10, ttl_secs: 5 }));
    assert_eq!(leases.apply(10, 1, &grant(0), &mut kv, &mut log), Ok(LeaseOutput::Granted { id: 11, ttl_secs: 5 }));
    let too_long = LeaseCommand::Grant { id: 0, ttl_secs: MAX_TTL_SECS + 1 };
    assert_eq!(leases.apply(11, 1, &too_long, &mut kv, &mut log), Err(ApplyError::LeaseTtlTooLarge));
}
