//! Registry: no node is marked unreachable or down unless a fault touched it.
//!
//! A transition to `unreachable` or `down` committed at time t is false when its node
//! had no fault (killed, paused, cut off from the majority, removed) in the window
//! `[t - lookback, t]`, where lookback covers unreachable_after + down_after plus slack.
//! Times are the leader's clock in the event against the host's clock in fault windows:
//! both are wall clocks on one machine (the clock nemesis is not combined with this).

use super::CheckResult;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Transition {
    pub node_id: u64,
    pub name: String,
    pub time_ms: u64,
    pub from: String,
    pub to: String,
}

pub fn check(
    transitions: &[Transition],
    faults: &BTreeMap<u64, Vec<(u64, u64)>>,
    lookback_ms: u64,
    events_read: bool,
) -> CheckResult {
    let mut r = CheckResult::new("registry (no false unreachable/down transition)");
    if !events_read {
        r.verdict = super::Verdict::Unknown;
        r.anomalies.push("the registry events could not be read: nothing can be said".into());
        return r;
    }
    let mut counted = 0;
    let mut explained = 0;
    for t in transitions.iter().filter(|t| t.to == "unreachable" || t.to == "down") {
        counted += 1;
        let from = t.time_ms.saturating_sub(lookback_ms);
        let hit = faults.get(&t.node_id).is_some_and(|ws| ws.iter().any(|(s, e)| *s <= t.time_ms && *e >= from));
        if hit {
            explained += 1;
        } else {
            r.anomaly(format!(
                "node {} ({}) went {} -> {} at {} ms with no fault on it in the {} ms before",
                t.node_id, t.name, t.from, t.to, t.time_ms, lookback_ms
            ));
        }
    }
    r.stat("transitions_to_unreachable_or_down", counted);
    r.stat("explained_by_faults", explained);
    r.stat("false_transitions", counted - explained);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(node: u64, t: u64, to: &str) -> Transition {
        Transition { node_id: node, name: format!("n{node}"), time_ms: t, from: "active".into(), to: to.into() }
    }

    #[test]
    fn a_transition_needs_a_fault_on_that_node_shortly_before() {
        let faults = BTreeMap::from([(1, vec![(10_000, 20_000)])]);
        let ok = check(&[tr(1, 25_000, "unreachable"), tr(1, 30_000, "down")], &faults, 17_000, true);
        assert_eq!(ok.verdict, super::super::Verdict::Valid);
        let other_node = check(&[tr(2, 25_000, "unreachable")], &faults, 17_000, true);
        assert_eq!(other_node.verdict, super::super::Verdict::Invalid);
        let too_late = check(&[tr(1, 60_000, "unreachable")], &faults, 17_000, true);
        assert_eq!(too_late.verdict, super::super::Verdict::Invalid);
        let unread = check(&[], &faults, 17_000, false);
        assert_eq!(unread.verdict, super::super::Verdict::Unknown);
    }
}
