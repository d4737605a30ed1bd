//! Lock: a lock is only ever granted to a live key that is first in line, and the writes
//! fenced by lock tokens never interleave between holders.
//!
//! - **grant**: every acquire that answered ok at revision R names a key that, in the
//!   committed history, exists at R and has the lowest create revision of the lock's
//!   keys. A lease that ran out while its owner waited deletes the key; a lock granted
//!   after that (etcd #11456) fails this.
//! - **fence**: the register's committed writes, taken in revision order, come in runs
//!   by holder: once another holder wrote, an earlier one never writes again. Each was
//!   made while its writer's key existed. Every acknowledged write is there.
//! - information only: pairs of holders whose lock windows (acquire answered to release
//!   asked, on the test host's clock) overlapped, as Jepsen reported for etcd. A lock
//!   can be lost while its holder still believes it holds it; the fence is what keeps
//!   that safe.

use super::kv_events::{Ev, Timeline};
use super::{CheckResult, Verdict};
use crate::history::{Call, OpType};
use std::collections::{BTreeMap, BTreeSet};

pub fn check(calls: &[Call], reference: Option<&[Ev]>, lock_prefix: &str, register: &str) -> CheckResult {
    let mut r = CheckResult::new("lock (granted only when first in line; fenced writes never interleave)");
    let Some(reference) = reference else {
        r.verdict = Verdict::Unknown;
        r.anomalies.push("the committed history could not be read: nothing can be said".into());
        return r;
    };
    let t = Timeline::new(reference, lock_prefix);
    let by_rev: BTreeMap<i64, &Ev> = reference.iter().map(|e| (e.rev, e)).collect();

    // Grants.
    let mut grants = 0;
    let mut windows: Vec<(u64, u64, String)> = Vec::new();
    for c in calls.iter().filter(|c| c.f == "acquire" && c.kind == OpType::Ok) {
        grants += 1;
        let key = c.output["key"].as_str().unwrap_or_default().to_string();
        let rev = c.output["rev"].as_i64().unwrap_or_default();
        if let Some(why) = t.why_not_first(&key, None, rev) {
            r.anomaly(format!("process {} was granted {key} at revision {rev}, but {why}", c.process));
        }
        // The holder's window: to its release (of this key), or to the end of the run.
        let end = calls
            .iter()
            .filter(|d| d.f == "release" && d.key.as_deref() == Some(key.as_str()) && d.invoke_ns >= c.invoke_ns)
            .map(|d| d.invoke_ns)
            .min()
            .unwrap_or(u64::MAX);
        windows.push((c.complete_ns.unwrap_or(c.invoke_ns), end, key));
    }
    r.stat("locks_granted", grants);

    // The register's writes, holder by holder.
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut writes = 0;
    for e in reference.iter().filter(|e| e.key == register && e.put) {
        writes += 1;
        let holder = e.value.rsplit_once('#').map_or(e.value.as_str(), |(h, _)| h).to_string();
        if current.as_deref() != Some(holder.as_str()) {
            if done.contains(&holder) {
                r.anomaly(format!(
                    "fenced write {} at revision {} by {holder}, after another holder wrote",
                    e.value, e.rev
                ));
            }
            if let Some(prev) = current.replace(holder.clone()) {
                done.insert(prev);
            }
        }
        if !t.at(e.rev).contains_key(&holder) {
            r.anomaly(format!(
                "fenced write {} at revision {} while its lock key {holder} did not exist",
                e.value, e.rev
            ));
        }
    }
    r.stat("fenced_writes_committed", writes);
    let mut acked = 0;
    for c in calls.iter().filter(|c| c.f == "write" && c.kind == OpType::Ok) {
        acked += 1;
        let rev = c.output["rev"].as_i64().unwrap_or_default();
        let value = c.input.as_str().unwrap_or_default();
        if !by_rev.get(&rev).is_some_and(|e| e.key == register && e.value == value) {
            r.anomaly(format!("acknowledged fenced write {value} at revision {rev} is not in the committed history"));
        }
    }
    r.stat("fenced_writes_acknowledged", acked);
    r.stat("fenced_writes_refused", calls.iter().filter(|c| c.f == "write" && c.kind == OpType::Fail).count());

    // Information: overlapping windows.
    windows.sort();
    let mut overlaps = 0;
    for (i, a) in windows.iter().enumerate() {
        overlaps += windows[i + 1..].iter().take_while(|b| b.0 < a.1).count();
    }
    r.stat("overlapping_lock_windows_info", overlaps);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(rev: i64, put: bool, key: &str, value: &str, create: i64) -> Ev {
        Ev { rev, put, key: key.into(), value: value.into(), create_rev: create, prev: None }
    }

    fn call(process: u64, f: &str, input: serde_json::Value, output: serde_json::Value, t: u64) -> Call {
        Call {
            process,
            f: f.into(),
            key: None,
            input,
            output,
            kind: OpType::Ok,
            invoke_ns: t,
            complete_ns: Some(t + 1),
            gave_up_ns: Some(t + 1),
            node: None,
            error: None,
        }
    }

    #[test]
    fn a_grant_after_the_key_expired_is_caught() {
        // a holds; b waits and its lease ends (deleted at 5); a releases at 6; b is told
        // it holds the lock at 6 anyway.
        let reference = vec![
            ev(2, true, "l/a", "", 2),
            ev(3, true, "l/b", "", 3),
            ev(4, true, "reg", "l/a#0", 4),
            ev(5, false, "l/b", "", 0),
            ev(6, false, "l/a", "", 0),
        ];
        let ok = vec![
            call(1, "acquire", json!(null), json!({"key": "l/a", "rev": 2}), 0),
            call(1, "write", json!("l/a#0"), json!({"rev": 4}), 2),
        ];
        let r = check(&ok, Some(&reference), "l/", "reg");
        assert_eq!(r.verdict, Verdict::Valid, "{:?}", r.anomalies);
        let mut bad = ok.clone();
        bad.push(call(2, "acquire", json!(null), json!({"key": "l/b", "rev": 6}), 1));
        let r = check(&bad, Some(&reference), "l/", "reg");
        assert_eq!(r.verdict, Verdict::Invalid);
        assert!(r.anomalies[0].contains("deleted at revision 5"), "{:?}", r.anomalies);
    }

    #[test]
    fn fenced_writes_of_two_holders_must_not_interleave() {
        let reference = vec![
            ev(2, true, "l/a", "", 2),
            ev(3, true, "l/b", "", 3),
            ev(4, true, "reg", "l/a#0", 4),
            ev(5, true, "reg", "l/b#0", 5),
            ev(6, true, "reg", "l/a#1", 6),
        ];
        let r = check(&[], Some(&reference), "l/", "reg");
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(check(&[], Some(&reference[..4]), "l/", "reg").verdict, Verdict::Valid);
        assert_eq!(check(&[], None, "l/", "reg").verdict, Verdict::Unknown);
    }
}
