//! Election: at most one leader at any revision, leaders in the order of their keys'
//! create revisions, and observers that see the leaders in that order.
//!
//! - every campaign that answered ok at revision R names a key that, in the committed
//!   history, exists at R and has the lowest create revision of the election's keys
//!   (so no two campaigners lead at one revision: a term is a leader key's create
//!   revision, and it has one leader);
//! - campaigns taken in answer-revision order have non-decreasing create revisions, and
//!   two wins with one create revision are the same key;
//! - every observer's answer at revision R names the key first in line at R, with the
//!   value it had at R; each observer's leaders come with non-decreasing create
//!   revisions and answer revisions (never back to an older leader);
//! - every acknowledged proclamation is in the committed history.

use super::kv_events::{Ev, Timeline};
use super::{CheckResult, Verdict};
use crate::history::{Call, OpType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One answer an observer received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Which of the observer's streams (restarts before it) gave the answer.
    #[serde(default)]
    pub stream: u64,
    pub key: String,
    pub create_rev: i64,
    pub value: String,
    /// The answer's header revision.
    pub rev: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ObserverLog {
    pub name: String,
    pub node: String,
    pub seen: Vec<Seen>,
    /// How many times its stream broke and it observed again.
    pub restarts: u64,
}

/// `last_rev`: the end of the committed history read; answers after it are not judged.
pub fn check(
    calls: &[Call],
    reference: Option<&[Ev]>,
    last_rev: i64,
    prefix: &str,
    observers: &[ObserverLog],
) -> CheckResult {
    let mut r = CheckResult::new("election (one leader per revision, in create-revision order, observed in order)");
    let Some(reference) = reference else {
        r.verdict = Verdict::Unknown;
        r.anomalies.push("the committed history could not be read: nothing can be said".into());
        return r;
    };
    let t = Timeline::new(reference, prefix);

    let mut wins: Vec<(i64, i64, String, u64)> = Vec::new();
    for c in calls.iter().filter(|c| c.f == "campaign" && c.kind == OpType::Ok) {
        let key = c.output["key"].as_str().unwrap_or_default().to_string();
        let create = c.output["create_rev"].as_i64().unwrap_or_default();
        let rev = c.output["rev"].as_i64().unwrap_or_default();
        if let Some(why) = t.why_not_first(&key, Some(create), rev) {
            r.anomaly(format!("process {} won with {key} at revision {rev}, but {why}", c.process));
        }
        wins.push((rev, create, key, c.process));
    }
    wins.sort();
    let mut terms: BTreeMap<i64, String> = BTreeMap::new();
    for w in wins.windows(2) {
        if w[1].1 < w[0].1 {
            r.anomaly(format!(
                "leaders out of order: {} (created at {}) won at {} after {} (created at {}) won at {}",
                w[1].2, w[1].1, w[1].0, w[0].2, w[0].1, w[0].0
            ));
        }
    }
    for (_, create, key, _) in &wins {
        if let Some(other) = terms.insert(*create, key.clone()) {
            if &other != key {
                r.anomaly(format!("two leaders for the term of revision {create}: {other} and {key}"));
            }
        }
    }
    r.stat("wins", wins.len());
    r.stat("terms", terms.len());

    let by_rev: BTreeMap<i64, &Ev> = reference.iter().map(|e| (e.rev, e)).collect();
    let mut proclaimed = 0;
    for c in calls.iter().filter(|c| c.f == "proclaim" && c.kind == OpType::Ok) {
        proclaimed += 1;
        let rev = c.output["rev"].as_i64().unwrap_or_default();
        let value = c.input.as_str().unwrap_or_default();
        match by_rev.get(&rev) {
            Some(e) if e.put && e.value == value => {
                // Only the leader may proclaim: its key is first in line just before.
                if t.first_at(rev - 1).is_none_or(|(k, _)| k != e.key) {
                    r.anomaly(format!("{} proclaimed {value} at revision {rev} while it did not lead", e.key));
                }
            }
            _ => r.anomaly(format!(
                "acknowledged proclamation {value} at revision {rev} is not in the committed history"
            )),
        }
    }
    r.stat("proclamations", proclaimed);

    let mut answers = 0;
    for o in observers {
        answers += o.seen.len();
        let mut last: Option<&Seen> = None;
        for s in o.seen.iter().filter(|s| s.rev <= last_rev) {
            // A new stream may be served by a master that lost its data and rejoined
            // (the member fault): order is judged within each stream.
            if last.is_some_and(|p| p.stream != s.stream) {
                last = None;
            }
            match t.first_at(s.rev) {
                Some((k, l)) if k == s.key && l.create_rev == s.create_rev && l.value == s.value => {}
                first => r.anomaly(format!(
                    "{}: saw {} = {:?} (created at {}) lead at revision {}, but first in line was {:?}",
                    o.name, s.key, s.value, s.create_rev, s.rev, first
                )),
            }
            if let Some(p) = last {
                if s.create_rev < p.create_rev || s.rev < p.rev {
                    r.anomaly(format!(
                        "{}: went back from {} (created at {}, revision {}) to {} (created at {}, revision {})",
                        o.name, p.key, p.create_rev, p.rev, s.key, s.create_rev, s.rev
                    ));
                }
            }
            last = Some(s);
        }
    }
    r.stat("observers", observers.len());
    r.stat("observed_answers", answers);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(rev: i64, put: bool, key: &str, value: &str, create: i64) -> Ev {
        Ev { rev, put, key: key.into(), value: value.into(), create_rev: create, prev: None }
    }

    fn win(process: u64, key: &str, create: i64, rev: i64) -> Call {
        Call {
            process,
            f: "campaign".into(),
            key: None,
            input: json!(null),
            output: json!({"key": key, "create_rev": create, "rev": rev}),
            kind: OpType::Ok,
            invoke_ns: 0,
            complete_ns: Some(1),
            gave_up_ns: Some(1),
            node: None,
            error: None,
        }
    }

    fn seen(key: &str, create: i64, value: &str, rev: i64) -> Seen {
        Seen { stream: 0, key: key.into(), create_rev: create, value: value.into(), rev }
    }

    #[test]
    fn leaders_and_observers_follow_the_create_order() {
        let reference = vec![
            ev(2, true, "e/a", "a0", 2),
            ev(3, true, "e/b", "b0", 3),
            ev(4, true, "e/a", "a1", 2),
            ev(5, false, "e/a", "", 0),
        ];
        let wins = vec![win(1, "e/a", 2, 2), win(2, "e/b", 3, 5)];
        let obs = ObserverLog {
            name: "o".into(),
            seen: vec![seen("e/a", 2, "a0", 2), seen("e/a", 2, "a1", 4), seen("e/b", 3, "b0", 5)],
            ..Default::default()
        };
        let r = check(&wins, Some(&reference), 5, "e/", std::slice::from_ref(&obs));
        assert_eq!(r.verdict, Verdict::Valid, "{:?}", r.anomalies);

        // b told it leads while a still did.
        let early = vec![win(1, "e/a", 2, 2), win(2, "e/b", 3, 4)];
        assert_eq!(check(&early, Some(&reference), 5, "e/", &[]).verdict, Verdict::Invalid);
        // An observer that goes back to a.
        let mut back = obs.clone();
        back.seen.push(seen("e/a", 2, "a1", 4));
        assert_eq!(check(&wins, Some(&reference), 5, "e/", &[back]).verdict, Verdict::Invalid);
        // An observer that names a stale value.
        let stale = ObserverLog { seen: vec![seen("e/a", 2, "a0", 4)], ..obs };
        assert_eq!(check(&wins, Some(&reference), 5, "e/", &[stale]).verdict, Verdict::Invalid);
    }
}
