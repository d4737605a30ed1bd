//! IPAM: `allocate` (key = owner) → address, `release` (key = owner), then a final
//! `read` (key = network) → {owner: address} taken from the leader after the heal.
//!
//! - duplicate: one address held by two owners at a time that is certain from the
//!   history (both allocations acknowledged before either owner's release began), or
//!   two owners holding it in the final read;
//! - lost: an acknowledged allocation whose owner never asked to release it, missing
//!   from the final read or present with another address.

use super::{secs, CheckResult, Verdict};
use crate::history::{Call, OpType};
use std::collections::{BTreeMap, BTreeSet};

pub fn check(calls: &[Call]) -> CheckResult {
    let mut r = CheckResult::new("ipam (no address held twice, no acknowledged allocation lost)");
    // owner -> earliest start of a release that may have taken effect.
    let mut release_from: BTreeMap<&str, u64> = BTreeMap::new();
    let mut allocs: Vec<(&str, &str, u64)> = Vec::new(); // owner, address, completed
    let mut read: Option<BTreeMap<String, String>> = None;
    let (mut n_ok, mut n_info, mut n_fail) = (0, 0, 0);
    for c in calls {
        let owner = c.key.as_deref().unwrap_or("");
        match (c.f.as_str(), c.kind) {
            ("allocate", OpType::Ok) => {
                n_ok += 1;
                match (c.output.as_str(), c.complete_ns) {
                    (Some(a), Some(t)) => allocs.push((owner, a, t)),
                    _ => {
                        r.verdict = Verdict::Unknown;
                        r.anomalies.push(format!("allocation for {owner} acknowledged without an address"));
                        return r;
                    }
                }
            }
            ("allocate", OpType::Info) => n_info += 1,
            ("allocate", _) => n_fail += 1,
            ("release", OpType::Ok | OpType::Info) => {
                let e = release_from.entry(owner).or_insert(u64::MAX);
                *e = (*e).min(c.invoke_ns);
            }
            ("read", OpType::Ok) => {
                let Some(m) = c.output.as_object() else {
                    r.verdict = Verdict::Unknown;
                    r.anomalies.push("final read is not an object".into());
                    return r;
                };
                read = Some(m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect());
            }
            _ => {}
        }
    }
    r.stat("allocations_ok", n_ok);
    r.stat("allocations_unknown", n_info);
    r.stat("allocations_failed", n_fail);
    r.stat("releases_started", release_from.len());
    // Two acknowledged allocations of one address, both held at one certain moment.
    let mut by_addr: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
    for (o, a, t) in &allocs {
        by_addr.entry(a).or_default().push((o, *t));
    }
    let mut dups = 0;
    for (addr, holders) in &by_addr {
        for (i, (o1, t1)) in holders.iter().enumerate() {
            for (o2, t2) in &holders[i + 1..] {
                if o1 == o2 {
                    continue;
                }
                let both_held = (*t1).max(*t2);
                let first_release = release_from
                    .get(o1)
                    .copied()
                    .unwrap_or(u64::MAX)
                    .min(release_from.get(o2).copied().unwrap_or(u64::MAX));
                if both_held < first_release {
                    dups += 1;
                    r.anomaly(format!(
                        "{addr} held by {o1} and {o2} at once: both acknowledged by {} and neither released before {}",
                        secs(both_held),
                        if first_release == u64::MAX { "the end".into() } else { secs(first_release) }
                    ));
                }
            }
        }
    }
    r.stat("duplicates_in_history", dups);
    let Some(read) = read else {
        r.verdict = r.verdict.and(Verdict::Unknown);
        r.anomalies.push("no final read succeeded: lost allocations cannot be checked".into());
        return r;
    };
    r.stat("final_read_size", read.len());
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    let mut dup_read = 0;
    for (o, a) in &read {
        if let Some(prev) = seen.insert(a, o) {
            dup_read += 1;
            r.anomaly(format!("final state: {a} held by both {prev} and {o}"));
        }
    }
    r.stat("duplicates_in_final_read", dup_read);
    let mut lost = 0;
    let kept: BTreeSet<&str> = release_from.keys().copied().collect();
    for (o, a, _) in &allocs {
        if kept.contains(o) {
            continue;
        }
        match read.get(*o) {
            Some(b) if b == a => {}
            Some(b) => {
                lost += 1;
                r.anomaly(format!("{o} was acknowledged {a} but holds {b} at the end"));
            }
            None => {
                lost += 1;
                r.anomaly(format!("{o}'s acknowledged allocation of {a} is lost"));
            }
        }
    }
    r.stat("lost", lost);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{pair, Op};
    use serde_json::{json, Value};

    fn op(p: u64, kind: OpType, f: &str, key: &str, v: Value, t: u64) -> Op {
        Op { kind, ..Op::invoke(p, f, Some(key.into()), v, t) }
    }

    fn alloc(ops: &mut Vec<Op>, p: u64, owner: &str, addr: &str, t: u64) {
        ops.push(op(p, OpType::Invoke, "allocate", owner, Value::Null, t));
        ops.push(op(p, OpType::Ok, "allocate", owner, json!(addr), t + 1));
    }

    fn final_read(ops: &mut Vec<Op>, m: Value) {
        ops.push(op(99, OpType::Invoke, "read", "net", Value::Null, 1000));
        ops.push(op(99, OpType::Ok, "read", "net", m, 1001));
    }

    #[test]
    fn distinct_addresses_kept_is_valid() {
        let mut ops = vec![];
        alloc(&mut ops, 0, "a", "10.0.0.2", 1);
        alloc(&mut ops, 1, "b", "10.0.0.3", 3);
        final_read(&mut ops, json!({"a": "10.0.0.2", "b": "10.0.0.3"}));
        assert_eq!(check(&pair(&ops).unwrap()).verdict, Verdict::Valid);
    }

    #[test]
    fn same_address_to_two_live_owners_is_caught() {
        let mut ops = vec![];
        alloc(&mut ops, 0, "a", "10.0.0.2", 1);
        alloc(&mut ops, 1, "b", "10.0.0.2", 3);
        final_read(&mut ops, json!({"a": "10.0.0.2"}));
        let r = check(&pair(&ops).unwrap());
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.stats["duplicates_in_history"], 1);
        assert_eq!(r.stats["lost"], 1);
    }

    #[test]
    fn reuse_after_a_completed_release_is_fine() {
        let mut ops = vec![];
        alloc(&mut ops, 0, "a", "10.0.0.2", 1);
        ops.push(op(0, OpType::Invoke, "release", "a", Value::Null, 5));
        ops.push(op(0, OpType::Ok, "release", "a", Value::Null, 6));
        alloc(&mut ops, 1, "b", "10.0.0.2", 7);
        final_read(&mut ops, json!({"b": "10.0.0.2"}));
        assert_eq!(check(&pair(&ops).unwrap()).verdict, Verdict::Valid);
    }

    #[test]
    fn lost_allocation_and_duplicate_in_state_are_caught() {
        let mut ops = vec![];
        alloc(&mut ops, 0, "a", "10.0.0.2", 1);
        final_read(&mut ops, json!({}));
        assert_eq!(check(&pair(&ops).unwrap()).verdict, Verdict::Invalid);
        let mut ops = vec![];
        final_read(&mut ops, json!({"x": "10.0.0.9", "y": "10.0.0.9"}));
        assert_eq!(check(&pair(&ops).unwrap()).verdict, Verdict::Invalid);
    }
}
