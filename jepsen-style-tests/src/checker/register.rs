//! Linearizable registers, one per key: `read` → value or null, `write` v, `cas` [old, new].
//!
//! Which completions count: an ok read, write or cas; an info write or cas (it may have
//! taken effect). A failed write or cas had no effect and a read that did not answer
//! observed nothing, so those are left out.

use super::wgl::{self, Entry, Model, Outcome};
use super::{secs, CheckResult, Verdict};
use crate::history::{Call, OpType};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegOp {
    Read(Option<i64>),
    Write(i64),
    Cas(i64, i64),
}

/// The register's value; None until the first write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Register(pub Option<i64>);

impl Model for Register {
    type Op = RegOp;
    fn step(&self, op: &RegOp) -> Option<Register> {
        match *op {
            RegOp::Read(v) => (self.0 == v).then_some(*self),
            RegOp::Write(v) => Some(Register(Some(v))),
            RegOp::Cas(old, new) => (self.0 == Some(old)).then_some(Register(Some(new))),
        }
    }
}

fn describe(op: &RegOp) -> String {
    let v = |x: Option<i64>| x.map_or("nil".to_string(), |v| v.to_string());
    match op {
        RegOp::Read(x) => format!("read → {}", v(*x)),
        RegOp::Write(x) => format!("write {x}"),
        RegOp::Cas(a, b) => format!("cas {a} → {b}"),
    }
}

/// The model operation for a call, or None when the call constrains nothing.
pub fn to_op(c: &Call) -> Result<Option<RegOp>, String> {
    let int = |v: &Value| v.as_i64().ok_or_else(|| format!("expected an integer, got {v}"));
    match (c.f.as_str(), c.kind) {
        (_, OpType::Fail) => Ok(None),
        ("read", OpType::Ok) => Ok(Some(RegOp::Read(if c.output.is_null() { None } else { Some(int(&c.output)?) }))),
        ("read", _) => Ok(None),
        ("write", _) => Ok(Some(RegOp::Write(int(&c.input)?))),
        ("cas", _) => {
            let pair = c.input.as_array().filter(|a| a.len() == 2).ok_or("cas value must be [old, new]")?;
            Ok(Some(RegOp::Cas(int(&pair[0])?, int(&pair[1])?)))
        }
        (f, _) => Err(format!("unknown register operation {f:?}")),
    }
}

/// Checks every key on its own; the whole history is linearizable iff every key is.
pub fn check(calls: &[Call], timeout: Duration) -> CheckResult {
    let mut r = CheckResult::new("linearizable-register (Wing-Gong/Lowe, per key)");
    let mut by_key: BTreeMap<String, Vec<Entry<RegOp>>> = BTreeMap::new();
    for (id, c) in calls.iter().enumerate() {
        let op = match to_op(c) {
            Ok(Some(op)) => op,
            Ok(None) => continue,
            Err(e) => {
                r.verdict = Verdict::Unknown;
                r.anomalies.push(format!("malformed operation #{id}: {e}"));
                return r;
            }
        };
        let key = c.key.clone().unwrap_or_default();
        by_key.entry(key).or_default().push(Entry { op, invoke_ns: c.invoke_ns, complete_ns: c.complete_ns, id });
    }
    let keys: Vec<(String, Vec<Entry<RegOp>>)> = by_key.into_iter().collect();
    let deadline = Instant::now() + timeout;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Outcome<Register>)>> = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(keys.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some((_, entries)) = keys.get(k) else { break };
                let out = wgl::check(Register(None), entries, deadline);
                results.lock().expect("results").push((k, out));
            });
        }
    });
    let mut results = results.into_inner().expect("results");
    results.sort_by_key(|(k, _)| *k);
    let (mut valid, mut invalid, mut unknown) = (0, 0, 0);
    for (k, out) in results {
        let (key, entries) = &keys[k];
        match out {
            Outcome::Linearizable => valid += 1,
            Outcome::Unknown { explored } => {
                unknown += 1;
                r.verdict = r.verdict.and(Verdict::Unknown);
                if r.anomalies.len() < 50 {
                    r.anomalies.push(format!(
                        "key {key}: search timed out after {explored} steps ({} operations): verdict unknown",
                        entries.len()
                    ));
                }
            }
            Outcome::NotLinearizable { blocked, state, linearized } => {
                invalid += 1;
                let e = &entries[blocked];
                let c = &calls[e.id];
                r.anomaly(format!(
                    "key {key}: not linearizable. After the longest linearizable prefix ({linearized} of {} operations) the register holds {}, and process {} {} (invoked {}, returned {}, via {}) cannot be placed",
                    entries.len(),
                    state.0.map_or("nil".into(), |v| v.to_string()),
                    c.process,
                    describe(&e.op),
                    secs(e.invoke_ns),
                    e.complete_ns.map_or("never".into(), secs),
                    c.node.as_deref().unwrap_or("?"),
                ));
            }
        }
    }
    r.stat("keys", keys.len());
    r.stat("keys_valid", valid);
    r.stat("keys_invalid", invalid);
    r.stat("keys_unknown", unknown);
    r.stat("max_ops_per_key", keys.iter().map(|(_, e)| e.len()).max().unwrap_or(0));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{pair, Op};
    use serde_json::json;

    /// A tiny history language: (process, kind, f, value, time).
    fn h(ops: &[(u64, &str, &str, Value, u64)]) -> Vec<Call> {
        let ops: Vec<Op> = ops
            .iter()
            .map(|(p, k, f, v, t)| Op {
                process: *p,
                kind: serde_json::from_value(json!(k)).unwrap(),
                f: f.to_string(),
                key: Some("x".into()),
                value: v.clone(),
                time: *t,
                node: None,
                error: None,
            })
            .collect();
        pair(&ops).unwrap()
    }

    fn verdict(calls: &[Call]) -> Verdict {
        check(calls, Duration::from_secs(10)).verdict
    }

    #[test]
    fn sequential_history_is_valid() {
        let c = h(&[
            (0, "invoke", "write", json!(1), 1),
            (0, "ok", "write", json!(1), 2),
            (0, "invoke", "read", Value::Null, 3),
            (0, "ok", "read", json!(1), 4),
            (0, "invoke", "cas", json!([1, 2]), 5),
            (0, "ok", "cas", json!([1, 2]), 6),
            (0, "invoke", "read", Value::Null, 7),
            (0, "ok", "read", json!(2), 8),
        ]);
        assert_eq!(verdict(&c), Verdict::Valid);
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_caught() {
        let c = h(&[
            (0, "invoke", "write", json!(1), 1),
            (0, "ok", "write", json!(1), 2),
            (1, "invoke", "write", json!(2), 3),
            (1, "ok", "write", json!(2), 4),
            (2, "invoke", "read", Value::Null, 5),
            (2, "ok", "read", json!(1), 6),
        ]);
        let r = check(&c, Duration::from_secs(10));
        assert_eq!(r.verdict, Verdict::Invalid);
        assert!(r.anomalies[0].contains("read → 1"), "{:?}", r.anomalies);
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        for seen in [1, 2] {
            let c = h(&[
                (0, "invoke", "write", json!(1), 1),
                (0, "ok", "write", json!(1), 2),
                (1, "invoke", "write", json!(2), 3),
                (2, "invoke", "read", Value::Null, 4),
                (2, "ok", "read", json!(seen), 5),
                (1, "ok", "write", json!(2), 6),
            ]);
            assert_eq!(verdict(&c), Verdict::Valid, "read {seen}");
        }
    }

    #[test]
    fn read_of_a_value_never_written_is_caught() {
        let c = h(&[(0, "invoke", "read", Value::Null, 1), (0, "ok", "read", json!(9), 2)]);
        assert_eq!(verdict(&c), Verdict::Invalid);
    }

    #[test]
    fn info_write_may_take_effect_later_or_never() {
        // The write of 2 timed out; a read long after may see 2 (it took effect) ...
        let took = h(&[
            (0, "invoke", "write", json!(1), 1),
            (0, "ok", "write", json!(1), 2),
            (1, "invoke", "write", json!(2), 3),
            (1, "info", "write", json!(2), 4),
            (2, "invoke", "read", Value::Null, 100),
            (2, "ok", "read", json!(2), 101),
            (2, "invoke", "read", Value::Null, 102),
            (2, "ok", "read", json!(2), 103),
        ]);
        assert_eq!(verdict(&took), Verdict::Valid);
        // ... or 1 (it never did) ...
        let never = h(&[
            (0, "invoke", "write", json!(1), 1),
            (0, "ok", "write", json!(1), 2),
            (1, "invoke", "write", json!(2), 3),
            (1, "info", "write", json!(2), 4),
            (2, "invoke", "read", Value::Null, 100),
            (2, "ok", "read", json!(1), 101),
        ]);
        assert_eq!(verdict(&never), Verdict::Valid);
        // ... but not 2 and then 1 again: once it took effect, 1 is gone.
        let flip = h(&[
            (0, "invoke", "write", json!(1), 1),
            (0, "ok", "write", json!(1), 2),
            (1, "invoke", "write", json!(2), 3),
            (1, "info", "write", json!(2), 4),
            (2, "invoke", "read", Value::Null, 100),
            (2, "ok", "read", json!(2), 101),
            (2, "invoke", "read", Value::Null, 102),
            (2, "ok", "read", json!(1), 103),
        ]);
        assert_eq!(verdict(&flip), Verdict::Invalid);
    }

    #[test]
    fn failed_write_must_not_be_visible_and_failed_cas_is_ignored() {
        // A failed write is left out, so reading its value is an anomaly.
        let c = h(&[
            (0, "invoke", "write", json!(1), 1),
            (0, "ok", "write", json!(1), 2),
            (1, "invoke", "write", json!(5), 3),
            (1, "fail", "write", json!(5), 4),
            (2, "invoke", "read", Value::Null, 5),
            (2, "ok", "read", json!(5), 6),
        ]);
        assert_eq!(verdict(&c), Verdict::Invalid);
        let c = h(&[
            (0, "invoke", "write", json!(1), 1),
            (0, "ok", "write", json!(1), 2),
            (1, "invoke", "cas", json!([7, 8]), 3),
            (1, "fail", "cas", json!([7, 8]), 4),
            (2, "invoke", "read", Value::Null, 5),
            (2, "ok", "read", json!(1), 6),
        ]);
        assert_eq!(verdict(&c), Verdict::Valid);
    }

    #[test]
    fn cas_from_a_value_that_was_overwritten_is_caught() {
        let c = h(&[
            (0, "invoke", "write", json!(1), 1),
            (0, "ok", "write", json!(1), 2),
            (0, "invoke", "write", json!(2), 3),
            (0, "ok", "write", json!(2), 4),
            (1, "invoke", "cas", json!([1, 3]), 5),
            (1, "ok", "cas", json!([1, 3]), 6),
        ]);
        assert_eq!(verdict(&c), Verdict::Invalid);
    }

    #[test]
    fn keys_are_independent() {
        // Each key alone is fine; an anomaly on one key is reported for that key only.
        let mut ops = vec![];
        for (i, key) in ["a", "b"].iter().enumerate() {
            let p = i as u64;
            for (k, f, v, t) in [
                ("invoke", "write", json!(1), 1 + 10 * p),
                ("ok", "write", json!(1), 2 + 10 * p),
                ("invoke", "read", Value::Null, 3 + 10 * p),
                ("ok", "read", if *key == "b" { json!(3) } else { json!(1) }, 4 + 10 * p),
            ] {
                ops.push(Op {
                    process: p,
                    kind: serde_json::from_value(json!(k)).unwrap(),
                    f: f.into(),
                    key: Some(key.to_string()),
                    value: v,
                    time: t,
                    node: None,
                    error: None,
                });
            }
        }
        let r = check(&pair(&ops).unwrap(), Duration::from_secs(10));
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.stats["keys_invalid"], 1);
        assert!(r.anomalies[0].starts_with("key b"), "{:?}", r.anomalies);
    }

    #[test]
    fn timeout_gives_unknown_never_valid() {
        // Many concurrent info writes and a read that sees none of them force a wide search;
        // with a zero timeout the verdict must be unknown.
        let mut ops = vec![];
        for p in 0..40u64 {
            ops.push((p, "invoke", "write", json!(p as i64 + 100), 1));
        }
        for p in 0..40u64 {
            ops.push((p, "info", "write", json!(p as i64 + 100), 2));
        }
        ops.push((99, "invoke", "read", Value::Null, 3));
        ops.push((99, "ok", "read", json!(-1), 4));
        let c = h(&ops);
        let r = check(&c, Duration::ZERO);
        assert_eq!(r.verdict, Verdict::Unknown);
    }

    #[test]
    fn a_process_may_not_issue_after_an_info() {
        let ops = vec![
            Op::invoke(0, "write", Some("x".into()), json!(1), 1),
            Op { kind: OpType::Info, ..Op::invoke(0, "write", Some("x".into()), json!(1), 2) },
            Op::invoke(0, "read", Some("x".into()), Value::Null, 3),
        ];
        assert!(pair(&ops).is_err());
    }
}
