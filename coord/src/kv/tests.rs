//! KV semantics against an in-memory history.

use std::collections::BTreeMap;

use super::*;

/// (key, revision) -> Some(kv) for a put, None for a delete.
#[derive(Default)]
struct MemHistory(BTreeMap<(Vec<u8>, i64), Option<KeyValue>>);

impl History for MemHistory {
    fn record_put(&mut self, kv: &KeyValue, _prev: Option<&Live>) {
        self.0.insert((kv.key.clone(), kv.mod_revision), Some(kv.clone()));
    }
    fn record_delete(&mut self, key: &[u8], revision: i64, _prev: &Live) {
        self.0.insert((key.to_vec(), revision), None);
    }
    fn scan_at(&mut self, range: &KeyRange, revision: i64) -> io::Result<Vec<KeyValue>> {
        let mut latest: BTreeMap<Vec<u8>, Option<KeyValue>> = BTreeMap::new();
        for ((k, r), v) in &self.0 {
            if range.contains(k) && *r <= revision {
                latest.insert(k.clone(), v.clone());
            }
        }
        Ok(latest.into_values().flatten().collect())
    }
}

fn put(s: &mut KvStore, h: &mut MemHistory, k: &str, v: &str) -> PutResponse {
    s.apply_put(&PutRequest { key: k.into(), value: v.into(), prev_kv: true, ..Default::default() }, h).unwrap()
}

fn get(s: &KvStore, h: &mut MemHistory, k: &str, end: &[u8], rev: i64) -> Result<RangeResponse, ApplyError> {
    s.range(&RangeRequest { key: k.into(), range_end: end.to_vec(), revision: rev, ..Default::default() }, h)
}

#[test]
fn revisions_versions_and_create_revision_follow_etcd() {
    let (mut s, mut h) = (KvStore::new(), MemHistory::default());
    assert_eq!(s.revision, 1);
    put(&mut s, &mut h, "a", "1");
    let r = put(&mut s, &mut h, "a", "2");
    assert_eq!(r.prev_kv.unwrap().value, b"1");
    let kv = &get(&s, &mut h, "a", b"", 0).unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    // Deleting nothing does not take a revision.
    s.apply_delete(&DeleteRangeRequest { key: b"zz".to_vec(), ..Default::default() }, &mut h).unwrap();
    assert_eq!(s.revision, 3);
    s.apply_delete(&DeleteRangeRequest { key: b"a".to_vec(), ..Default::default() }, &mut h).unwrap();
    assert_eq!(s.revision, 4);
    put(&mut s, &mut h, "a", "3");
    let kv = &get(&s, &mut h, "a", b"", 0).unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    // Past revisions read from history.
    assert_eq!(get(&s, &mut h, "a", b"", 2).unwrap().kvs[0].value, b"1");
    assert!(get(&s, &mut h, "a", b"", 4).unwrap().kvs.is_empty());
    assert_eq!(get(&s, &mut h, "a", b"", 99), Err(ApplyError::FutureRevision));
}

#[test]
fn prefix_ranges_limits_and_counts() {
    let (mut s, mut h) = (KvStore::new(), MemHistory::default());
    for k in ["p/1", "p/2", "p/3", "q"] {
        put(&mut s, &mut h, k, "v");
    }
    let end = prefix_range_end(b"p/");
    let r = s
        .range(&RangeRequest { key: b"p/".to_vec(), range_end: end.clone(), limit: 2, ..Default::default() }, &mut h)
        .unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (2, true, 3));
    let all = get(&s, &mut h, "\0", b"\0", 0).unwrap();
    assert_eq!(all.count, 4);
    assert_eq!(prefix_range_end(b"a\xff"), b"b");
    assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
}

#[test]
fn txn_compares_choose_the_branch_and_refused_txns_change_nothing() {
    let (mut s, mut h) = (KvStore::new(), MemHistory::default());
    put(&mut s, &mut h, "k", "v1");
    let cas = |expect: &str, new: &str| TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Value(expect.into()),
            key: b"k".to_vec(),
            range_end: vec![],
        }],
        success: vec![RequestOp::Put(PutRequest { key: b"k".to_vec(), value: new.into(), ..Default::default() })],
        failure: vec![RequestOp::Range(RangeRequest { key: b"k".to_vec(), ..Default::default() })],
    };
    assert!(s.apply_txn(&cas("v1", "v2"), &mut h).unwrap().succeeded);
    let r = s.apply_txn(&cas("v1", "v3"), &mut h).unwrap();
    assert!(!r.succeeded);
    assert_eq!(s.revision, 3, "a txn that only read takes no revision");
    let dup = TxnRequest {
        success: vec![
            RequestOp::Put(PutRequest { key: b"x".to_vec(), ..Default::default() }),
            RequestOp::Put(PutRequest { key: b"x".to_vec(), ..Default::default() }),
        ],
        ..Default::default()
    };
    let before = s.clone();
    assert_eq!(s.apply_txn(&dup, &mut h), Err(ApplyError::DuplicateKey));
    assert_eq!(s, before);
    // Version compare on a missing key compares against 0.
    let create_if_absent = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Version(0),
            key: b"new".to_vec(),
            range_end: vec![],
        }],
        success: vec![RequestOp::Put(PutRequest { key: b"new".to_vec(), value: b"1".to_vec(), ..Default::default() })],
        failure: vec![],
    };
    assert!(s.apply_txn(&create_if_absent, &mut h).unwrap().succeeded);
    assert!(!s.apply_txn(&create_if_absent, &mut h).unwrap().succeeded);
}

#[test]
fn bad_input_is_refused_without_change() {
    let (mut s, mut h) = (KvStore::new(), MemHistory::default());
    let before = s.clone();
    let empty = PutRequest::default();
    assert_eq!(s.apply_put(&empty, &mut h), Err(ApplyError::EmptyKey));
    let big = PutRequest { key: b"k".to_vec(), value: vec![0; MAX_REQUEST_BYTES], ..Default::default() };
    assert_eq!(s.apply_put(&big, &mut h), Err(ApplyError::TooLarge));
    let leased = PutRequest { key: b"k".to_vec(), lease: 5, ..Default::default() };
    assert_eq!(s.apply_put(&leased, &mut h), Err(ApplyError::LeaseNotFound));
    assert_eq!(s, before);
}

#[test]
fn compacted_revisions_are_refused() {
    let (mut s, mut h) = (KvStore::new(), MemHistory::default());
    for i in 0..5 {
        put(&mut s, &mut h, "k", &i.to_string());
    }
    s.apply_compact(4).unwrap();
    assert_eq!(get(&s, &mut h, "k", b"", 3), Err(ApplyError::Compacted));
    assert!(get(&s, &mut h, "k", b"", 4).is_ok());
    assert_eq!(s.apply_compact(4), Err(ApplyError::Compacted));
    assert_eq!(s.apply_compact(100), Err(ApplyError::FutureRevision));
}

mod model {
    //! `KvStore` against a model: a plain map per revision.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, u8),
        Delete(u8),
        DeletePrefix,
        Cas { key: u8, expect: u8, new: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..5u8, 0..4u8).prop_map(|(k, v)| Op::Put(k, v)),
            2 => (0..5u8).prop_map(Op::Delete),
            1 => Just(Op::DeletePrefix),
            2 => (0..5u8, 0..4u8, 0..4u8).prop_map(|(key, expect, new)| Op::Cas { key, expect, new }),
        ]
    }

    fn key(k: u8) -> Vec<u8> {
        format!("m/{k}").into_bytes()
    }

    fn all(s: &KvStore, h: &mut MemHistory, rev: i64) -> Vec<(Vec<u8>, Vec<u8>)> {
        let req = RangeRequest {
            key: b"m/".to_vec(),
            range_end: prefix_range_end(b"m/"),
            revision: rev,
            ..Default::default()
        };
        s.range(&req, h).unwrap().kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
    }

    proptest! {
        #[test]
        fn kv_store_matches_a_map_per_revision(ops in proptest::collection::vec(op(), 1..60)) {
            let (mut s, mut h) = (KvStore::new(), MemHistory::default());
            // states[r]: the store at revision r; revision 1 is empty.
            let mut states: Vec<BTreeMap<Vec<u8>, Vec<u8>>> = vec![BTreeMap::new(), BTreeMap::new()];
            for op in ops {
                let mut next = states.last().unwrap().clone();
                let changed = match op {
                    Op::Put(k, v) => {
                        s.apply_put(&PutRequest { key: key(k), value: vec![v], ..Default::default() }, &mut h).unwrap();
                        next.insert(key(k), vec![v]);
                        true
                    }
                    Op::Delete(k) => {
                        let r = s.apply_delete(&DeleteRangeRequest { key: key(k), ..Default::default() }, &mut h).unwrap();
                        let existed = next.remove(&key(k)).is_some();
                        prop_assert_eq!(r.deleted, existed as i64);
                        existed
                    }
                    Op::DeletePrefix => {
                        let req = DeleteRangeRequest { key: b"m/".to_vec(), range_end: prefix_range_end(b"m/"), prev_kv: true };
                        let r = s.apply_delete(&req, &mut h).unwrap();
                        prop_assert_eq!(r.deleted as usize, next.len());
                        let any = !next.is_empty();
                        next.clear();
                        any
                    }
                    Op::Cas { key: k, expect, new } => {
                        let t = TxnRequest {
                            compare: vec![Compare {
                                result: CompareResult::Equal,
                                target: CompareTarget::Value(vec![expect]),
                                key: key(k),
                                range_end: vec![],
                            }],
                            success: vec![RequestOp::Put(PutRequest { key: key(k), value: vec![new], ..Default::default() })],
                            failure: vec![],
                        };
                        let r = s.apply_txn(&t, &mut h).unwrap();
                        let hit = next.get(&key(k)) == Some(&vec![expect]);
                        prop_assert_eq!(r.succeeded, hit);
                        if hit {
                            next.insert(key(k), vec![new]);
                        }
                        hit
                    }
                };
                if changed {
                    states.push(next);
                }
                prop_assert_eq!(s.revision, states.len() as i64 - 1, "one revision per changing request");
            }
            for (rev, want) in states.iter().enumerate().skip(1) {
                let want: Vec<(Vec<u8>, Vec<u8>)> = want.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                prop_assert_eq!(all(&s, &mut h, rev as i64), want, "read at revision {}", rev);
            }
        }
    }
}

fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp::Put(PutRequest { key: k.into(), value: v.into(), ..Default::default() })
}

fn value_is(k: &str, v: &str) -> Compare {
    Compare { result: CompareResult::Equal, target: CompareTarget::Value(v.into()), key: k.into(), range_end: vec![] }
}

#[test]
fn nested_txns_decide_their_branch_before_any_write_as_etcd() {
    let (mut s, mut h) = (KvStore::new(), MemHistory::default());
    put(&mut s, &mut h, "k", "1");
    // The outer txn changes k, then a nested txn compares k: etcd evaluates that compare
    // against the state before the txn, so it sees "1".
    let t = TxnRequest {
        compare: vec![],
        success: vec![
            put_op("k", "2"),
            RequestOp::Txn(TxnRequest {
                compare: vec![value_is("k", "1")],
                success: vec![put_op("x", "saw-1")],
                failure: vec![put_op("x", "saw-2")],
            }),
        ],
        failure: vec![],
    };
    let r = s.apply_txn(&t, &mut h).unwrap();
    assert!(matches!(&r.responses[1], ResponseOp::Txn(n) if n.succeeded));
    assert_eq!(get(&s, &mut h, "x", b"", 0).unwrap().kvs[0].value, b"saw-1");
    assert_eq!(get(&s, &mut h, "k", b"", 0).unwrap().kvs[0].value, b"2");
}

#[test]
fn duplicate_keys_across_nesting_levels_are_refused_but_exclusive_branches_may_share() {
    let (mut s, mut h) = (KvStore::new(), MemHistory::default());
    let nested = |success: Vec<RequestOp>, failure: Vec<RequestOp>| {
        RequestOp::Txn(TxnRequest { compare: vec![], success, failure })
    };
    let outer_and_nested =
        TxnRequest { success: vec![put_op("k", "a"), nested(vec![put_op("k", "b")], vec![])], ..Default::default() };
    assert_eq!(s.apply_txn(&outer_and_nested, &mut h), Err(ApplyError::DuplicateKey));
    let delete_and_nested_put = TxnRequest {
        success: vec![
            RequestOp::DeleteRange(DeleteRangeRequest { key: b"k".to_vec(), ..Default::default() }),
            nested(vec![put_op("k", "b")], vec![]),
        ],
        ..Default::default()
    };
    assert_eq!(s.apply_txn(&delete_and_nested_put, &mut h), Err(ApplyError::DuplicateKey));
    assert_eq!(s.revision, 1, "refused txns change nothing");
    let exclusive = TxnRequest {
        success: vec![nested(vec![put_op("k", "then")], vec![put_op("k", "else")])],
        ..Default::default()
    };
    assert!(s.apply_txn(&exclusive, &mut h).unwrap().succeeded);
    assert_eq!(get(&s, &mut h, "k", b"", 0).unwrap().kvs[0].value, b"then");
}

mod fast_range {
    use super::*;
    use proptest::prelude::*;

    /// The general path: copy the whole range, then filter, sort and limit.
    fn general(s: &KvStore, req: &RangeRequest) -> RangeResponse {
        let range = KeyRange::new(&req.key, &req.range_end);
        let mut kvs: Vec<KeyValue> = s.live.range::<[u8], _>(range.bounds()).map(|(k, l)| l.to_kv(k)).collect();
        KvStore::finish_range(req, &mut kvs)
    }

    fn order() -> impl Strategy<Value = (SortOrder, SortTarget)> {
        prop_oneof![
            Just((SortOrder::None, SortTarget::Key)),
            Just((SortOrder::Ascend, SortTarget::Key)),
            Just((SortOrder::Descend, SortTarget::Key)),
        ]
    }

    proptest! {
        /// The copy-free Range answers exactly what copying the range would.
        #[test]
        fn range_without_copying_answers_as_the_general_path(
            keys in proptest::collection::btree_set("[a-d]{1,3}", 0..40),
            start in "[a-d]{1,2}",
            end in prop_oneof![Just(String::new()), Just("\0".to_string()), "[a-e]{1,2}"],
            limit in 0i64..8,
            keys_only in any::<bool>(),
            count_only in any::<bool>(),
            (sort_order, sort_target) in order(),
        ) {
            let (mut s, mut h) = (KvStore::new(), MemHistory::default());
            for k in &keys {
                put(&mut s, &mut h, k, &format!("v-{k}"));
            }
            let req = RangeRequest {
                key: start.into(),
                range_end: end.into(),
                limit,
                keys_only,
                count_only,
                sort_order,
                sort_target,
                ..Default::default()
            };
            let range = KeyRange::new(&req.key, &req.range_end);
            prop_assume!(!range.is_empty());
            let fast = s.range_in_key_order(&req, &range).expect("key order takes the fast path");
            prop_assert_eq!(fast, general(&s, &req));
        }
    }
}

#[test]
fn a_proposal_may_not_delete_what_an_earlier_nested_txn_puts() {
    let put = |k: &[u8]| RequestOp::Put(PutRequest { key: k.to_vec(), value: b"v".to_vec(), ..Default::default() });
    let del = |k: &[u8]| RequestOp::DeleteRange(DeleteRangeRequest { key: k.to_vec(), ..Default::default() });
    let nested = |ops: Vec<RequestOp>| RequestOp::Txn(TxnRequest { success: ops, ..Default::default() });
    let txn = |ops: Vec<RequestOp>| TxnRequest { success: ops, ..Default::default() };
    let bad = txn(vec![nested(vec![put(b"k")]), nested(vec![del(b"k")])]);
    assert_eq!(KvStore::validate_txn(&bad), Ok(()), "apply's verdict on entries in logs is unchanged");
    assert_eq!(KvStore::validate_txn_proposal(&bad), Err(ApplyError::DuplicateKey));
    let deeper = txn(vec![nested(vec![put(b"k")]), nested(vec![nested(vec![del(b"j"), del(b"k")])])]);
    assert_eq!(KvStore::validate_txn_proposal(&deeper), Err(ApplyError::DuplicateKey));
    let fine = txn(vec![nested(vec![put(b"k")]), nested(vec![del(b"j")])]);
    assert_eq!(KvStore::validate_txn_proposal(&fine), Ok(()));
}
