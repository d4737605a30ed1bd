//! IPAM against a plain model over random create/allocate/batch/release/quarantine
//! expiry/snapshot-restore sequences: never a duplicate, idempotent allocate and release,
//! exhaustion exactly when the model is full, identical state after a restore.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use proptest::prelude::*;

use super::*;

/// The store as a map; every write is visible at once.
#[derive(Default, Clone)]
pub(crate) struct MemStore(pub BTreeMap<Vec<u8>, Vec<u8>>);

impl IpamStore for MemStore {
    fn get(&mut self, key: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.0.get(key).cloned())
    }
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.0.insert(key, value);
    }
    fn delete(&mut self, key: Vec<u8>) {
        self.0.remove(&key);
    }
    fn scan(&mut self, prefix: &[u8], limit: usize) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .0
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

const QUARANTINE_MS: u64 = 50;

fn spec() -> NetworkSpec {
    NetworkSpec {
        name: "a".into(),
        subnets: vec![parse_cidr("10.0.0.0/28").unwrap()],
        gateways: vec![None],
        // .5-.6 reserved: usable = 16 - network - gateway(.1) - broadcast - 2 = 11
        reserve: vec![(0, 5, 6)],
        quarantine_ms: QUARANTINE_MS,
    }
}

const USABLE: usize = 11;

fn addr(offset: u128) -> IpAddr {
    format_addr(offset + (10 << 24), false)
}

#[derive(Debug, Clone)]
enum Op {
    Allocate {
        owner: u8,
        requested: Option<u8>,
    },
    Batch(Vec<u8>),
    Release(u8),
    ReleaseAddress(u8),
    Tick(u64),
    SnapshotRestore,
    /// Create network `b<k>` on 10.0.<k>.0/28: k = 0 overlaps network `a`.
    Create(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..16u8, proptest::option::weighted(0.3, 0..16u8)).prop_map(|(owner, requested)| Op::Allocate { owner, requested }),
        2 => proptest::collection::vec(0..16u8, 1..6).prop_map(Op::Batch),
        3 => (0..16u8).prop_map(Op::Release),
        1 => (0..16u8).prop_map(Op::ReleaseAddress),
        2 => (1..80u64).prop_map(Op::Tick),
        1 => Just(Op::SnapshotRestore),
        1 => (0..4u8).prop_map(Op::Create),
    ]
}

fn owner(o: u8) -> String {
    format!("task-{o}")
}

fn load(store: &MemStore) -> Ipam {
    Ipam::load(store.0.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).unwrap()
}

proptest! {
    #[test]
    fn ipam_matches_model_and_never_duplicates(ops in proptest::collection::vec(op(), 1..80)) {
        let mut store = MemStore::default();
        let mut ipam = Ipam::default();
        let mut now = 1_000u64;
        ipam.apply(now, &IpamCommand::CreateNetwork(spec()), &mut store).unwrap();
        let reserved: BTreeSet<IpAddr> = [0u128, 1, 5, 6, 15].into_iter().map(addr).collect();
        let mut held: BTreeMap<String, IpAddr> = BTreeMap::new();
        // Released addresses and when they leave quarantine.
        let mut quarantine: Vec<(IpAddr, u64)> = Vec::new();
        let mut others: BTreeSet<u8> = BTreeSet::new();
        for op in ops {
            let expire = |q: &mut Vec<(IpAddr, u64)>, now: u64| q.retain(|(_, t)| *t > now);
            match op {
                Op::Allocate { owner: o, requested } => {
                    let req = requested.map(|r| addr(r as u128));
                    let cmd = IpamCommand::Allocate { network: "a".into(), owner: owner(o), requested: req, node: None };
                    let r = ipam.apply(now, &cmd, &mut store);
                    expire(&mut quarantine, now);
                    let in_q = |a: &IpAddr| quarantine.iter().any(|(q, _)| q == a);
                    match (held.get(&owner(o)).copied(), req) {
                        (Some(h), None) => prop_assert_eq!(r, Ok(IpamOutput::Allocated { address: h, new: false })),
                        (Some(h), Some(q)) if q == h => prop_assert_eq!(r, Ok(IpamOutput::Allocated { address: h, new: false })),
                        (Some(_), Some(_)) => prop_assert!(matches!(r, Err(IpamError::OwnerHoldsOther { .. })), "{:?}", r),
                        (None, Some(q)) if reserved.contains(&q) => prop_assert!(matches!(r, Err(IpamError::Reserved(_))), "{:?}", r),
                        (None, Some(q)) if held.values().any(|h| *h == q) => prop_assert!(matches!(r, Err(IpamError::Taken { .. })), "{:?}", r),
                        (None, Some(q)) if in_q(&q) => prop_assert!(matches!(r, Err(IpamError::Quarantined(..))), "{:?}", r),
                        (None, Some(q)) => {
                            prop_assert_eq!(r, Ok(IpamOutput::Allocated { address: q, new: true }));
                            held.insert(owner(o), q);
                        }
                        (None, None) if held.len() + quarantine.len() == USABLE => {
                            prop_assert!(matches!(r, Err(IpamError::Exhausted { .. })), "{:?}", r)
                        }
                        (None, None) => {
                            let Ok(IpamOutput::Allocated { address, new: true }) = r else { panic!("{r:?}") };
                            prop_assert!(!reserved.contains(&address) && !in_q(&address));
                            prop_assert!(held.values().all(|h| *h != address), "duplicate {}", address);
                            held.insert(owner(o), address);
                        }
                    }
                }
                Op::Batch(list) => {
                    let owners: Vec<String> = list.iter().map(|o| owner(*o)).collect();
                    let distinct: BTreeSet<&String> = owners.iter().collect();
                    let cmd = IpamCommand::AllocateBatch { network: "a".into(), owners: owners.clone(), node: None };
                    let before = store.0.clone();
                    let r = ipam.apply(now, &cmd, &mut store);
                    expire(&mut quarantine, now);
                    let need = distinct.iter().filter(|o| !held.contains_key(**o)).count();
                    if distinct.len() != owners.len() {
                        prop_assert!(matches!(r, Err(IpamError::Invalid(_))));
                        prop_assert!(store.0 == before, "a refused batch changed the store");
                    } else if held.len() + quarantine.len() + need > USABLE {
                        prop_assert!(matches!(r, Err(IpamError::Exhausted { .. })), "{:?}", r);
                    } else {
                        let Ok(IpamOutput::Batch(got)) = r else { panic!("{r:?}") };
                        for (o, a) in owners.iter().zip(got) {
                            if let Some(h) = held.get(o) {
                                prop_assert_eq!(*h, a);
                            } else {
                                prop_assert!(held.values().all(|h| *h != a), "duplicate {}", a);
                                prop_assert!(!reserved.contains(&a));
                                held.insert(o.clone(), a);
                            }
                        }
                    }
                }
                Op::Release(o) => {
                    let cmd = IpamCommand::Release { network: "a".into(), owner: Some(owner(o)), address: None };
                    let r = ipam.apply(now, &cmd, &mut store);
                    expire(&mut quarantine, now);
                    let h = held.remove(&owner(o));
                    prop_assert_eq!(r, Ok(IpamOutput::Released(h)));
                    if let Some(h) = h {
                        quarantine.push((h, now + QUARANTINE_MS));
                    }
                }
                Op::ReleaseAddress(off) => {
                    let a = addr(off as u128);
                    let cmd = IpamCommand::Release { network: "a".into(), owner: None, address: Some(a) };
                    let r = ipam.apply(now, &cmd, &mut store);
                    expire(&mut quarantine, now);
                    let o = held.iter().find(|(_, h)| **h == a).map(|(o, _)| o.clone());
                    match o {
                        Some(o) => {
                            prop_assert_eq!(r, Ok(IpamOutput::Released(Some(a))));
                            held.remove(&o);
                            quarantine.push((a, now + QUARANTINE_MS));
                        }
                        None => prop_assert_eq!(r, Ok(IpamOutput::Released(None))),
                    }
                }
                Op::Tick(ms) => now += ms,
                Op::Create(k) => {
                    let spec = NetworkSpec {
                        name: format!("b{k}"),
                        subnets: vec![parse_cidr(&format!("10.0.{k}.0/28")).unwrap()],
                        gateways: vec![None],
                        reserve: vec![],
                        quarantine_ms: 0,
                    };
                    let before = store.0.clone();
                    let r = ipam.apply(now, &IpamCommand::CreateNetwork(spec), &mut store);
                    if k == 0 {
                        prop_assert!(matches!(r, Err(IpamError::Overlap(..))), "{:?}", r);
                    } else if others.contains(&k) {
                        prop_assert!(matches!(r, Err(IpamError::NetworkExists(_))), "{:?}", r);
                    } else {
                        prop_assert!(r.is_ok(), "{:?}", r);
                        others.insert(k);
                    }
                    if r.is_err() {
                        prop_assert!(store.0 == before, "a refused create changed the store");
                    }
                    prop_assert_eq!(ipam.networks.len(), 1 + others.len());
                }
                Op::SnapshotRestore => {
                    let restored = load(&store);
                    prop_assert_eq!(&restored, &ipam);
                    ipam = restored;
                }
            }
            // State equals the model: owner → address, both directions, no duplicate.
            let n = &ipam.networks["a"];
            prop_assert_eq!(n.pools[0].allocated as usize, held.len());
            let mut seen = BTreeSet::new();
            for (o, a) in &held {
                let (_, got) = ipam.holding("a", o, &mut store).unwrap().expect("holding");
                prop_assert_eq!(got, *a);
                prop_assert!(seen.insert(*a), "duplicate address {}", a);
            }
            let owners_on_disk = store.scan(&keys::owners_prefix("a"), usize::MAX).unwrap().len();
            prop_assert_eq!(owners_on_disk, held.len());
            prop_assert_eq!(&load(&store), &ipam);
        }
    }
}

#[test]
fn bad_cidrs_and_overlaps_are_refused_and_change_nothing() {
    for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0.1/24", "10.0.0.0/7", "fd00::/63", "10.0.0.0/31", "x/24"] {
        assert!(matches!(parse_cidr(bad), Err(IpamError::Invalid(_))), "{bad}");
    }
    let mut store = MemStore::default();
    let mut ipam = Ipam::default();
    ipam.apply(1, &IpamCommand::CreateNetwork(spec()), &mut store).unwrap();
    let before = (ipam.clone(), store.0.clone());
    let mut s2 = spec();
    s2.name = "b".into();
    s2.subnets = vec![parse_cidr("10.0.0.0/24").unwrap()];
    assert!(matches!(ipam.apply(2, &IpamCommand::CreateNetwork(s2), &mut store), Err(IpamError::Overlap(..))));
    assert!(matches!(ipam.apply(2, &IpamCommand::CreateNetwork(spec()), &mut store), Err(IpamError::NetworkExists(_))));
    let cmd = IpamCommand::Allocate { network: "zz".into(), owner: "o".into(), requested: None, node: None };
    assert!(matches!(ipam.apply(2, &cmd, &mut store), Err(IpamError::UnknownNetwork(_))));
    let cmd = IpamCommand::Allocate {
        network: "a".into(),
        owner: "o".into(),
        requested: Some("10.0.1.1".parse().unwrap()),
        node: None,
    };
    assert!(matches!(ipam.apply(2, &cmd, &mut store), Err(IpamError::OutsideSubnet(..))));
    assert_eq!((ipam.clone(), store.0.clone()), before);
    // Exhaustion names the pool size.
    let owners: Vec<String> = (0..USABLE).map(|i| format!("o{i}")).collect();
    ipam.apply(3, &IpamCommand::AllocateBatch { network: "a".into(), owners, node: None }, &mut store).unwrap();
    let e = ipam.apply(
        3,
        &IpamCommand::Allocate { network: "a".into(), owner: "x".into(), requested: None, node: None },
        &mut store,
    );
    let msg = e.unwrap_err().to_string();
    assert!(msg.contains("11 usable addresses"), "{msg}");
    // Releasing someone else's address is refused.
    let held = ipam.holding("a", "o0", &mut store).unwrap().unwrap().1;
    let cmd = IpamCommand::Release { network: "a".into(), owner: Some("o1".into()), address: Some(held) };
    assert!(matches!(ipam.apply(3, &cmd, &mut store), Err(IpamError::Taken { .. })));
    // Removing a network in use needs force.
    let cmd = IpamCommand::RemoveNetwork { name: "a".into(), force: false };
    assert!(matches!(ipam.apply(3, &cmd, &mut store), Err(IpamError::InUse(..))));
    let cmd = IpamCommand::RemoveNetwork { name: "a".into(), force: true };
    ipam.apply(3, &cmd, &mut store).unwrap();
    assert!(store.0.is_empty(), "records left behind: {:?}", store.0.keys().collect::<Vec<_>>());
}

#[test]
fn a_full_ipv4_slash_8_is_one_run_and_a_slash_64_is_sparse() {
    let mut store = MemStore::default();
    let mut ipam = Ipam::default();
    let spec = NetworkSpec {
        name: "v6".into(),
        subnets: vec![parse_cidr("fd00::/64").unwrap()],
        gateways: vec![None],
        reserve: vec![],
        quarantine_ms: 0,
    };
    ipam.apply(1, &IpamCommand::CreateNetwork(spec), &mut store).unwrap();
    for chunk in 0..10 {
        let owners: Vec<String> = (0..1000).map(|i| format!("t{chunk}-{i}")).collect();
        ipam.apply(2, &IpamCommand::AllocateBatch { network: "v6".into(), owners, node: None }, &mut store).unwrap();
    }
    let p = &ipam.networks["v6"].pools[0];
    assert_eq!(p.allocated, 10_000);
    assert_eq!(p.used.0.len(), 1, "sequential allocations stay one run");
}

#[test]
fn the_top_ipv6_slash_64_overlaps_itself() {
    // base + size is 2^128 there: the check must not wrap around.
    let mut store = MemStore::default();
    let mut ipam = Ipam::default();
    let mut a = spec();
    a.subnets = vec![parse_cidr("ffff:ffff:ffff:ffff::/64").unwrap()];
    a.reserve = vec![];
    ipam.apply(1, &IpamCommand::CreateNetwork(a.clone()), &mut store).unwrap();
    a.name = "b".into();
    assert!(matches!(ipam.apply(2, &IpamCommand::CreateNetwork(a), &mut store), Err(IpamError::Overlap(..))));
}

#[test]
fn leak_repair_leaves_an_owner_that_moved_to_another_node() {
    let mut store = MemStore::default();
    let mut ipam = Ipam::default();
    ipam.apply(1, &IpamCommand::CreateNetwork(spec()), &mut store).unwrap();
    let alloc =
        |node| IpamCommand::Allocate { network: "a".into(), owner: "o".into(), requested: None, node: Some(node) };
    let IpamOutput::Allocated { address: addr, new: true } = ipam.apply(2, &alloc(7), &mut store).unwrap() else {
        panic!()
    };
    // The owner asks again from node 8: same address, now bound to 8.
    let IpamOutput::Allocated { address: again, new: false } = ipam.apply(3, &alloc(8), &mut store).unwrap() else {
        panic!()
    };
    assert_eq!(addr, again);
    assert!(store.get(&keys::held(7, "a", "o")).unwrap().is_none());
    assert!(store.get(&keys::held(8, "a", "o")).unwrap().is_some());
    // A leak seen for node 7 (removed) is stale: nothing is released.
    let stale = IpamCommand::ReleaseLeaked { network: "a".into(), holdings: vec![("o".into(), addr, 7)] };
    assert!(matches!(ipam.apply(4, &stale, &mut store).unwrap(), IpamOutput::ReleasedLeaked(0)));
    assert!(ipam.holding("a", "o", &mut store).unwrap().is_some());
    // Memory and store still agree.
    assert_eq!(load(&store), ipam);
    // The leak for node 8 does release it.
    let due = IpamCommand::ReleaseLeaked { network: "a".into(), holdings: vec![("o".into(), addr, 8)] };
    assert!(matches!(ipam.apply(5, &due, &mut store).unwrap(), IpamOutput::ReleasedLeaked(1)));
}
