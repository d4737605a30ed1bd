//! Set: `add` v during the run, then a final `read` → [v...] once the cluster is healed.
//!
//! - lost: an acknowledged add missing from the final read;
//! - unexpected: an element in the read that nobody tried to add;
//! - revived: an element whose add definitely failed, yet it is there.
//!
//! Adds with an unknown outcome may or may not be present. Without an ok final read the
//! verdict is unknown.

use super::{CheckResult, Verdict};
use crate::history::{Call, OpType};
use std::collections::{BTreeMap, BTreeSet};

pub fn check(calls: &[Call]) -> CheckResult {
    let mut r = CheckResult::new("set (final read holds every acknowledged add)");
    let mut ok: BTreeSet<i64> = BTreeSet::new();
    let mut info: BTreeSet<i64> = BTreeSet::new();
    let mut failed: BTreeSet<i64> = BTreeSet::new();
    let mut read: Option<BTreeSet<i64>> = None;
    for c in calls {
        match (c.f.as_str(), c.kind) {
            ("add", kind) => {
                let Some(v) = c.input.as_i64() else {
                    r.verdict = Verdict::Unknown;
                    r.anomalies.push(format!("add of a non-integer {}", c.input));
                    return r;
                };
                match kind {
                    OpType::Ok => ok.insert(v),
                    OpType::Fail => failed.insert(v),
                    _ => info.insert(v),
                };
            }
            ("read", OpType::Ok) => {
                let vals: Option<BTreeSet<i64>> =
                    c.output.as_array().map(|a| a.iter().filter_map(|v| v.as_i64()).collect());
                match vals {
                    Some(v) => read = Some(v),
                    None => {
                        r.verdict = Verdict::Unknown;
                        r.anomalies.push("final read is not a list".into());
                        return r;
                    }
                }
            }
            _ => {}
        }
    }
    r.stat("acknowledged_adds", ok.len());
    r.stat("unknown_adds", info.len());
    r.stat("failed_adds", failed.len());
    let Some(read) = read else {
        r.verdict = Verdict::Unknown;
        r.anomalies.push("no final read succeeded: nothing can be said".into());
        return r;
    };
    r.stat("final_read_size", read.len());
    let lost: Vec<i64> = ok.difference(&read).copied().collect();
    let attempted: BTreeSet<i64> = ok.iter().chain(&info).chain(&failed).copied().collect();
    let unexpected: Vec<i64> = read.difference(&attempted).copied().collect();
    let revived: Vec<i64> = read.intersection(&failed).copied().collect();
    let recovered = read.intersection(&info).count();
    r.stat("lost", lost.len());
    r.stat("unexpected", unexpected.len());
    r.stat("revived_failed", revived.len());
    r.stat("unknown_adds_present", recovered);
    let show = |v: &[i64]| v.iter().take(20).map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
    if !lost.is_empty() {
        r.anomaly(format!("{} acknowledged adds lost: {}", lost.len(), show(&lost)));
    }
    if !unexpected.is_empty() {
        r.anomaly(format!("{} elements never added appear: {}", unexpected.len(), show(&unexpected)));
    }
    if !revived.is_empty() {
        r.anomaly(format!("{} adds that failed appear anyway: {}", revived.len(), show(&revived)));
    }
    r
}

/// Per-element outcome counts by add result, for the summary.
pub fn outcome_table(calls: &[Call]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for c in calls.iter().filter(|c| c.f == "add") {
        *t.entry(format!("{:?}", c.kind).to_lowercase()).or_insert(0) += 1;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{pair, Op};
    use serde_json::{json, Value};

    fn run(adds: &[(i64, OpType)], read: Option<Value>) -> CheckResult {
        let mut ops = vec![];
        for (i, (v, k)) in adds.iter().enumerate() {
            ops.push(Op::invoke(i as u64, "add", Some("s".into()), json!(v), 2 * i as u64));
            ops.push(Op { kind: *k, ..Op::invoke(i as u64, "add", Some("s".into()), json!(v), 2 * i as u64 + 1) });
        }
        if let Some(read) = read {
            ops.push(Op::invoke(1000, "read", Some("s".into()), Value::Null, 10_000));
            ops.push(Op {
                kind: OpType::Ok,
                value: read,
                ..Op::invoke(1000, "read", Some("s".into()), Value::Null, 10_001)
            });
        }
        check(&pair(&ops).unwrap())
    }

    #[test]
    fn all_acknowledged_present_is_valid_and_unknown_may_be_either() {
        let r = run(&[(1, OpType::Ok), (2, OpType::Info), (3, OpType::Info), (4, OpType::Fail)], Some(json!([1, 2])));
        assert_eq!(r.verdict, Verdict::Valid, "{:?}", r.anomalies);
    }

    #[test]
    fn lost_unexpected_and_revived_are_each_caught() {
        assert_eq!(run(&[(1, OpType::Ok), (2, OpType::Ok)], Some(json!([1]))).verdict, Verdict::Invalid);
        assert_eq!(run(&[(1, OpType::Ok)], Some(json!([1, 7]))).verdict, Verdict::Invalid);
        assert_eq!(run(&[(1, OpType::Ok), (4, OpType::Fail)], Some(json!([1, 4]))).verdict, Verdict::Invalid);
    }

    #[test]
    fn no_final_read_is_unknown() {
        assert_eq!(run(&[(1, OpType::Ok)], None).verdict, Verdict::Unknown);
    }
}
