//! Watch: every watcher's events equal the committed history of its key range, from the
//! run's first revision to the last revision it reached: in order, none duplicated, none
//! missing, each with the right `prev_kv`.
//!
//! The committed history is read after the heal (a fresh watch from the first revision
//! on a healthy master). It is first checked on its own: its `prev_kv`s follow from
//! replaying it (the range is empty when the run starts), every acknowledged put and
//! delete is in it at the revision its answer named, and every put in it was attempted
//! and not refused.

use super::kv_events::Ev;
use super::{CheckResult, Verdict};
use crate::history::{Call, OpType};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What one watcher saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WatcherLog {
    pub name: String,
    /// The master it started on.
    pub node: String,
    pub events: Vec<Ev>,
    /// How many times it moved to another stream.
    pub resumes: u64,
    /// Events the canary threw away (one after each resume).
    pub dropped_by_canary: u64,
    /// The error it stopped on, if it did not stop when told to.
    pub error: Option<String>,
}

pub fn check(
    calls: &[Call],
    reference: Option<&[Ev]>,
    first_rev: i64,
    last_rev: i64,
    watchers: &[WatcherLog],
) -> CheckResult {
    let mut r =
        CheckResult::new("watch (each watcher saw the committed history: ordered, unique, no gap, right prev_kv)");
    let Some(reference) = reference else {
        r.verdict = Verdict::Unknown;
        r.anomalies.push("the committed history could not be read: nothing can be said".into());
        return r;
    };
    r.stat("committed_events", reference.len());
    r.stat("first_revision", first_rev);
    r.stat("last_revision", last_rev);

    // The reference on its own: strictly increasing revisions (each write here touches
    // one key) and prev_kv as a replay gives it.
    let mut model: BTreeMap<&str, &str> = BTreeMap::new();
    let mut prev_rev = first_rev - 1;
    for e in reference {
        if e.rev <= prev_rev {
            r.anomaly(format!("committed history: revision {} after {}", e.rev, prev_rev));
        }
        prev_rev = e.rev;
        let want = model.get(e.key.as_str()).map(|v| v.to_string());
        if e.prev != want {
            r.anomaly(format!(
                "committed history: {} at {} has prev_kv {:?}, the replay gives {:?}",
                e.key, e.rev, e.prev, want
            ));
        }
        if e.put {
            model.insert(&e.key, &e.value);
        } else {
            model.remove(e.key.as_str());
        }
    }
    let by_rev: BTreeMap<i64, &Ev> = reference.iter().map(|e| (e.rev, e)).collect();

    // Acknowledged writes are there; nothing is there that was not attempted.
    let mut attempted: BTreeSet<(String, String)> = BTreeSet::new();
    let mut deletes: BTreeSet<String> = BTreeSet::new();
    let (mut acked, mut lost) = (0, 0);
    for c in calls {
        let key = c.key.clone().unwrap_or_default();
        match (c.f.as_str(), c.kind) {
            ("put", kind) => {
                if kind != OpType::Fail {
                    attempted.insert((key.clone(), text(&c.input)));
                }
                if kind == OpType::Ok {
                    acked += 1;
                    let rev = c.output["rev"].as_i64().unwrap_or_default();
                    let found = by_rev.get(&rev).is_some_and(|e| e.put && e.key == key && e.value == text(&c.input));
                    if !found {
                        lost += 1;
                        r.anomaly(format!(
                            "acknowledged put {key}={} at revision {rev} is not in the committed history",
                            c.input
                        ));
                    }
                }
            }
            ("delete", OpType::Fail) => {}
            ("delete", kind) if kind != OpType::Ok => {
                deletes.insert(key);
            }
            ("delete", _) => {
                deletes.insert(key.clone());
                acked += 1;
                let rev = c.output["rev"].as_i64().unwrap_or_default();
                if c.output["deleted"].as_i64().unwrap_or_default() > 0 {
                    let found = by_rev.get(&rev).is_some_and(|e| !e.put && e.key == key);
                    if !found {
                        lost += 1;
                        r.anomaly(format!(
                            "acknowledged delete of {key} at revision {rev} is not in the committed history"
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    for e in reference {
        if e.put && !attempted.contains(&(e.key.clone(), e.value.clone())) {
            r.anomaly(format!(
                "committed history: {}={} at {} was never attempted (or was refused)",
                e.key, e.value, e.rev
            ));
        }
        if !e.put && !deletes.contains(&e.key) {
            r.anomaly(format!(
                "committed history: {} deleted at {} though no delete of it was attempted",
                e.key, e.rev
            ));
        }
    }
    r.stat("acknowledged_writes", acked);
    r.stat("lost_writes", lost);

    // Each watcher against the reference.
    let (mut delivered, mut gaps, mut dups, mut wrong, mut resumes) = (0usize, 0usize, 0usize, 0usize, 0u64);
    for w in watchers {
        delivered += w.events.len();
        resumes += w.resumes;
        let mut last = first_rev - 1;
        let mut seen: BTreeSet<i64> = BTreeSet::new();
        // Writes that committed after the history was read (a late unknown write) are
        // not judged.
        for e in w.events.iter().filter(|e| e.rev <= last_rev) {
            if e.rev <= last {
                if seen.contains(&e.rev) {
                    dups += 1;
                    r.anomaly(format!("{}: revision {} delivered twice", w.name, e.rev));
                } else {
                    r.anomaly(format!("{}: revision {} delivered after {}", w.name, e.rev, last));
                }
                continue;
            }
            // Everything committed between the last event and this one was skipped.
            for (rev, _) in by_rev.range(last + 1..e.rev) {
                gaps += 1;
                r.anomaly(format!("{}: revision {rev} was never delivered (next was {})", w.name, e.rev));
            }
            last = e.rev;
            seen.insert(e.rev);
            match by_rev.get(&e.rev) {
                None => {
                    wrong += 1;
                    r.anomaly(format!("{}: {} at {} is not in the committed history", w.name, e.key, e.rev));
                }
                Some(c) if !c.same_write(e) => {
                    wrong += 1;
                    r.anomaly(format!("{}: revision {} is {:?}, committed {:?}", w.name, e.rev, e, c));
                }
                Some(c) if c.prev != e.prev => {
                    wrong += 1;
                    r.anomaly(format!(
                        "{}: {} at {} came with prev_kv {:?}, not {:?}",
                        w.name, e.key, e.rev, e.prev, c.prev
                    ));
                }
                Some(_) => {}
            }
        }
        if last < last_rev {
            let missing = by_rev.range(last + 1..=last_rev).count();
            if missing > 0 {
                gaps += missing;
                r.anomaly(format!(
                    "{}: stopped at revision {last}, {missing} committed events short of {last_rev}{}",
                    w.name,
                    w.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
                ));
            }
        }
    }
    r.stat("watchers", watchers.len());
    r.stat("events_delivered", delivered);
    r.stat("resumes", resumes);
    r.stat("missed_events", gaps);
    r.stat("duplicated_events", dups);
    r.stat("wrong_events", wrong);
    r
}

/// A put's value as written: a number's digits, a string's text.
fn text(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), String::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn put(rev: i64, key: &str, v: i64, prev: Option<i64>) -> Ev {
        Ev { rev, put: true, key: key.into(), value: v.to_string(), create_rev: rev, prev: prev.map(|p| p.to_string()) }
    }

    fn acked(key: &str, v: i64, rev: i64) -> Call {
        Call {
            process: 0,
            f: "put".into(),
            key: Some(key.into()),
            input: json!(v),
            output: json!({ "rev": rev }),
            kind: OpType::Ok,
            invoke_ns: 0,
            complete_ns: Some(1),
            gave_up_ns: Some(1),
            node: None,
            error: None,
        }
    }

    fn watcher(events: Vec<Ev>) -> WatcherLog {
        WatcherLog { name: "w".into(), events, ..Default::default() }
    }

    #[test]
    fn a_watcher_must_see_every_committed_event_once_in_order() {
        let reference = vec![put(5, "a", 1, None), put(6, "b", 2, None), put(8, "a", 3, Some(1))];
        let calls = vec![acked("a", 1, 5), acked("b", 2, 6), acked("a", 3, 8)];
        let good = check(&calls, Some(&reference), 5, 8, &[watcher(reference.clone())]);
        assert_eq!(good.verdict, Verdict::Valid, "{:?}", good.anomalies);

        let gap = check(&calls, Some(&reference), 5, 8, &[watcher(vec![reference[0].clone(), reference[2].clone()])]);
        assert_eq!(gap.verdict, Verdict::Invalid);
        let dup = [reference[0].clone(), reference[1].clone(), reference[1].clone(), reference[2].clone()];
        assert_eq!(check(&calls, Some(&reference), 5, 8, &[watcher(dup.to_vec())]).verdict, Verdict::Invalid);
        let short = check(&calls, Some(&reference), 5, 8, &[watcher(reference[..2].to_vec())]);
        assert_eq!(short.verdict, Verdict::Invalid);
        let mut bad_prev = reference.clone();
        bad_prev[2].prev = None;
        assert_eq!(check(&calls, Some(&reference), 5, 8, &[watcher(bad_prev)]).verdict, Verdict::Invalid);
    }

    #[test]
    fn the_committed_history_must_hold_every_acknowledged_write() {
        let reference = vec![put(5, "a", 1, None)];
        let lost = check(&[acked("a", 1, 5), acked("a", 2, 6)], Some(&reference), 5, 6, &[]);
        assert_eq!(lost.verdict, Verdict::Invalid);
        let never = check(&[], Some(&reference), 5, 5, &[]);
        assert_eq!(never.verdict, Verdict::Invalid);
        assert_eq!(check(&[], None, 5, 5, &[]).verdict, Verdict::Unknown);
    }
}
