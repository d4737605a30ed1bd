//! Lease: no lease ends before its promise, and abandoned leases do end.
//!
//! - **no early expiry**: a grant or KeepAlive invoked at t that answered TTL T (> 0)
//!   promises the lease lives until at least t + T (the master renewed it after t). An
//!   answer that shows the lease gone (a KeepAlive answering TTL 0, or a read of its
//!   key, invoked after the key was attached, finding nothing) that completed at c
//!   proves it ended before c. c < t + T for a promise invoked before c is an early
//!   expiry.
//! - **abandoned leases end**: a lease nobody renews after its last answered KeepAlive
//!   (completed at a; a KeepAlive that timed out counts as renewing when the client gave
//!   up) has its key gone by `max(a, heal) + TTL + bound`. The final read, invoked after
//!   that for every lease it judges, must not find the key, nor the key of any lease
//!   revoked before it.

use super::{secs, CheckResult, Verdict};
use crate::history::{Call, OpType};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Default)]
struct Lease {
    ttl_ns: u64,
    /// (invoked, promised until)
    promises: Vec<(u64, u64)>,
    /// Completion times of answers that showed the lease gone.
    gone: Vec<u64>,
    attached_ns: Option<u64>,
    last_renewed_ns: u64,
    abandoned: bool,
    revoked_ns: Option<u64>,
}

/// `heal_ns`: when the last fault ended; `bound_ns`: the documented delay allowed
/// after TTL for an abandoned lease's key to go.
pub fn check(calls: &[Call], heal_ns: u64, bound_ns: u64) -> CheckResult {
    let mut r = CheckResult::new("lease (no lease ends early; abandoned leases end within TTL + bound)");
    let mut leases: BTreeMap<String, Lease> = BTreeMap::new();
    let mut final_read: Option<(u64, BTreeSet<String>)> = None;
    for c in calls.iter().filter(|c| c.kind == OpType::Info && c.f == "keepalive") {
        // A renewal with an unknown outcome may take effect until the master that holds
        // it runs again: count it as renewed when the client gave up (its master is
        // faulted until then at the latest, or until the heal).
        let l = leases.entry(c.key.clone().unwrap_or_default()).or_default();
        l.last_renewed_ns = l.last_renewed_ns.max(c.gave_up_ns.unwrap_or(c.invoke_ns));
    }
    for c in calls.iter().filter(|c| c.kind == OpType::Ok) {
        let id = c.key.clone().unwrap_or_default();
        let done = c.complete_ns.unwrap_or(c.invoke_ns);
        match c.f.as_str() {
            "grant" => {
                let ttl = c.output["ttl"].as_u64().unwrap_or_default() * 1_000_000_000;
                let id = c.output["id"].as_str().unwrap_or_default().to_string();
                let l = leases.entry(id).or_default();
                l.ttl_ns = ttl;
                l.promises.push((c.invoke_ns, c.invoke_ns + ttl));
                l.last_renewed_ns = done;
            }
            "keepalive" => {
                let ttl = c.output["ttl"].as_u64().unwrap_or_default() * 1_000_000_000;
                let l = leases.entry(id).or_default();
                if ttl > 0 {
                    l.promises.push((c.invoke_ns, c.invoke_ns + ttl));
                    l.last_renewed_ns = l.last_renewed_ns.max(done);
                } else {
                    l.gone.push(done);
                }
            }
            "attach" => leases.entry(id).or_default().attached_ns = Some(done),
            "read" => {
                let l = leases.entry(id).or_default();
                let after_attach = l.attached_ns.is_some_and(|a| c.invoke_ns > a);
                if after_attach && c.output["present"] == false {
                    l.gone.push(done);
                }
            }
            "abandon" => leases.entry(id).or_default().abandoned = true,
            "revoke" => leases.entry(id).or_default().revoked_ns = Some(done),
            "final-read" => {
                let present = c.output["present"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect());
                if let Some(p) = present {
                    final_read = Some((c.invoke_ns, p));
                }
            }
            _ => {}
        }
    }

    let (mut early, mut lost) = (0, 0);
    for (id, l) in &leases {
        let Some(&first_gone) = l.gone.iter().min() else { continue };
        lost += 1;
        if let Some(&(t, until)) = l.promises.iter().filter(|(t, _)| *t < first_gone).max_by_key(|(_, u)| *u) {
            if first_gone < until {
                early += 1;
                r.anomaly(format!(
                    "lease {id} was gone at {} though a renewal invoked at {} promised it until {}",
                    secs(first_gone),
                    secs(t),
                    secs(until)
                ));
            }
        }
    }
    r.stat("leases", leases.len());
    r.stat("leases_seen_ending", lost);
    r.stat("early_expiries", early);

    let abandoned: Vec<(&String, &Lease)> = leases.iter().filter(|(_, l)| l.abandoned).collect();
    r.stat("abandoned", abandoned.len());
    let Some((read_at, present)) = final_read else {
        if !abandoned.is_empty() {
            r.verdict = r.verdict.and(Verdict::Unknown);
            r.anomalies.push("no final read: whether abandoned leases ended is unknown".into());
        }
        return r;
    };
    let (mut judged, mut stuck) = (0, 0);
    for (id, l) in abandoned {
        let due = l.last_renewed_ns.max(heal_ns) + l.ttl_ns + bound_ns;
        if due > read_at {
            continue;
        }
        judged += 1;
        if present.contains(id) {
            stuck += 1;
            r.anomaly(format!(
                "abandoned lease {id} (last renewed at {}) still had its key at {}, due gone by {}",
                secs(l.last_renewed_ns),
                secs(read_at),
                secs(due)
            ));
        }
    }
    let mut revoked = 0;
    for (id, _) in leases.iter().filter(|(_, l)| l.revoked_ns.is_some_and(|t| t < read_at)) {
        revoked += 1;
        if present.contains(id) {
            r.anomaly(format!("revoked lease {id} still had its key at {}", secs(read_at)));
        }
    }
    r.stat("revoked_judged", revoked);
    r.stat("abandoned_judged", judged);
    r.stat("abandoned_still_present", stuck);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn op(f: &str, id: &str, output: Value, t: u64, done: u64) -> Call {
        Call {
            process: 0,
            f: f.into(),
            key: Some(id.into()),
            input: Value::Null,
            output,
            kind: OpType::Ok,
            invoke_ns: t,
            complete_ns: Some(done),
            gave_up_ns: Some(done),
            node: None,
            error: None,
        }
    }
    const S: u64 = 1_000_000_000;

    #[test]
    fn a_lease_gone_before_its_promise_is_an_early_expiry() {
        let base = vec![
            op("grant", "", json!({"id": "a", "ttl": 4}), 0, S / 10),
            op("attach", "a", json!(null), S / 10, S / 5),
            op("keepalive", "a", json!({"ttl": 4}), 3 * S, 3 * S + 1),
        ];
        let mut late = base.clone();
        late.push(op("keepalive", "a", json!({"ttl": 0}), 7 * S, 7 * S + 2));
        assert_eq!(check(&late, 0, S).verdict, Verdict::Valid);
        let mut early = base.clone();
        early.push(op("read", "a", json!({"present": false}), 5 * S, 6 * S));
        let r = check(&early, 0, S);
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.stats["early_expiries"], 1);
    }

    #[test]
    fn an_abandoned_lease_must_end_within_ttl_and_the_bound_after_the_heal() {
        let calls = vec![
            op("grant", "", json!({"id": "a", "ttl": 4}), 0, S / 10),
            op("abandon", "a", json!(null), S, S),
            op("final-read", "", json!({"present": ["a"]}), 20 * S, 20 * S),
        ];
        // Healed at 10 s: due at 10 + 4 + 2 = 16 s < 20 s, and still there.
        assert_eq!(check(&calls, 10 * S, 2 * S).verdict, Verdict::Invalid);
        // Healed at 15 s: due at 21 s, after the read: not judged.
        assert_eq!(check(&calls, 15 * S, 2 * S).verdict, Verdict::Valid);
    }
}
