//! Wing-Gong linearizability search with Lowe's memoization (and the "just-in-time"
//! linearization order of Horn & Kroening's refinement): walk the history's call and
//! return events in time order, linearize a pending call whenever the model accepts it
//! and the (linearized set, state) pair is new, and backtrack when a return is reached
//! whose call is still pending.
//!
//! Operations with an unknown outcome (info) have no return event: they may be
//! linearized anywhere after their invocation, or never. The search succeeds once every
//! operation that did return has been linearized.

use std::collections::HashSet;
use std::hash::Hash;
use std::time::Instant;

/// A sequential specification. `step` is `None` when the operation (with the output it
/// was observed to return) is impossible in this state.
pub trait Model: Clone + Eq + Hash + std::fmt::Debug {
    type Op: Clone + std::fmt::Debug;
    fn step(&self, op: &Self::Op) -> Option<Self>;
}

#[derive(Debug, Clone)]
pub struct Entry<O> {
    pub op: O,
    pub invoke_ns: u64,
    /// None: the outcome is unknown.
    pub complete_ns: Option<u64>,
    /// Index of the call in the caller's own list, carried into the anomaly report.
    pub id: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<M: Model> {
    Linearizable,
    /// No order exists. The report is taken at the deepest point the search reached.
    NotLinearizable {
        /// The operation whose return came while it could not be linearized.
        blocked: usize,
        /// Model state after the longest linearizable prefix found.
        state: M,
        /// How many operations that prefix held.
        linearized: usize,
    },
    /// The search did not finish in time: never a pass.
    Unknown {
        explored: u64,
    },
}

const NIL: usize = usize::MAX;
/// Memo entries kept before the search gives up (unknown) rather than exhaust memory.
const MAX_CACHE: usize = 20_000_000;

#[derive(Clone, Copy)]
enum Ev {
    Call(usize),
    Ret(usize),
}

pub fn check<M: Model>(init: M, entries: &[Entry<M::Op>], deadline: Instant) -> Outcome<M> {
    // Events in time order; a call sorts before a return at the same instant, which
    // treats the two as concurrent (the permissive reading).
    let mut evs: Vec<(u64, u8, Ev)> = Vec::with_capacity(entries.len() * 2);
    for (i, e) in entries.iter().enumerate() {
        evs.push((e.invoke_ns, 0, Ev::Call(i)));
        if let Some(t) = e.complete_ns {
            evs.push((t.max(e.invoke_ns), 1, Ev::Ret(i)));
        }
    }
    evs.sort_by_key(|(t, k, _)| (*t, *k));
    // Doubly linked list over event slots 1..=n; slot 0 is the head.
    let n = evs.len();
    let mut next = vec![NIL; n + 1];
    let mut prev = vec![NIL; n + 1];
    for s in 0..=n {
        next[s] = if s < n { s + 1 } else { NIL };
        prev[s] = if s > 0 { s - 1 } else { NIL };
    }
    let mut call_slot = vec![NIL; entries.len()];
    let mut ret_slot = vec![NIL; entries.len()];
    for (k, (_, _, ev)) in evs.iter().enumerate() {
        match ev {
            Ev::Call(i) => call_slot[*i] = k + 1,
            Ev::Ret(i) => ret_slot[*i] = k + 1,
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, s: usize| {
        next[prev[s]] = next[s];
        if next[s] != NIL {
            prev[next[s]] = prev[s];
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, s: usize| {
        next[prev[s]] = s;
        if next[s] != NIL {
            prev[next[s]] = s;
        }
    };

    let words = entries.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, M)> = HashSet::new();
    let mut stack: Vec<(usize, M)> = Vec::new();
    let mut state = init;
    let mut returns_left = entries.iter().filter(|e| e.complete_ns.is_some()).count();
    let mut slot = next[0];
    let mut explored: u64 = 0;
    let mut deepest: Option<(usize, M, usize)> = None;

    while returns_left > 0 {
        explored += 1;
        if explored.is_multiple_of(4096) && (Instant::now() >= deadline || cache.len() > MAX_CACHE) {
            return Outcome::Unknown { explored };
        }
        let ev = if slot == NIL { None } else { Some(evs[slot - 1].2) };
        match ev {
            Some(Ev::Call(i)) => {
                if let Some(s2) = state.step(&entries[i].op) {
                    linearized[i / 64] |= 1 << (i % 64);
                    if cache.insert((linearized.clone(), s2.clone())) {
                        stack.push((i, std::mem::replace(&mut state, s2)));
                        unlink(&mut next, &mut prev, call_slot[i]);
                        if ret_slot[i] != NIL {
                            unlink(&mut next, &mut prev, ret_slot[i]);
                            returns_left -= 1;
                        }
                        slot = next[0];
                        continue;
                    }
                    linearized[i / 64] &= !(1 << (i % 64));
                }
                slot = next[slot];
            }
            ret => {
                // A return whose call is still pending (or the end of the list): the
                // current prefix cannot be extended. Back up one linearized call.
                if let Some(Ev::Ret(i)) = ret {
                    if deepest.as_ref().is_none_or(|d| stack.len() > d.2) {
                        deepest = Some((i, state.clone(), stack.len()));
                    }
                }
                let Some((i, s_prev)) = stack.pop() else {
                    let (blocked, state, linearized) =
                        deepest.unwrap_or((entries.first().map(|_| 0).unwrap_or(0), state, 0));
                    return Outcome::NotLinearizable { blocked, state, linearized };
                };
                linearized[i / 64] &= !(1 << (i % 64));
                state = s_prev;
                if ret_slot[i] != NIL {
                    relink(&mut next, &mut prev, ret_slot[i]);
                    returns_left += 1;
                }
                relink(&mut next, &mut prev, call_slot[i]);
                slot = next[call_slot[i]];
            }
        }
    }
    Outcome::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::register::{RegOp, Register};
    use proptest::prelude::*;
    use std::time::Duration;

    /// Brute force: try every order of every subset that holds all returned operations,
    /// keeping real-time order (a before b when a returned before b was invoked).
    fn brute(entries: &[Entry<RegOp>]) -> bool {
        fn go(entries: &[Entry<RegOp>], used: &mut Vec<bool>, state: Register) -> bool {
            if entries.iter().zip(used.iter()).all(|(e, u)| *u || e.complete_ns.is_none()) {
                return true;
            }
            for i in 0..entries.len() {
                if used[i] {
                    continue;
                }
                // i may go next only if no unused operation returned before i was invoked.
                let blocked = entries
                    .iter()
                    .enumerate()
                    .any(|(j, e)| !used[j] && j != i && e.complete_ns.is_some_and(|c| c < entries[i].invoke_ns));
                if blocked {
                    continue;
                }
                if let Some(s2) = state.step(&entries[i].op) {
                    used[i] = true;
                    if go(entries, used, s2) {
                        return true;
                    }
                    used[i] = false;
                }
            }
            false
        }
        go(entries, &mut vec![false; entries.len()], Register(None))
    }

    fn arb_entry() -> impl Strategy<Value = Entry<RegOp>> {
        let op = prop_oneof![
            (0i64..3).prop_map(|v| RegOp::Read(Some(v))),
            Just(RegOp::Read(None)),
            (0i64..3).prop_map(RegOp::Write),
            (0i64..3, 0i64..3).prop_map(|(a, b)| RegOp::Cas(a, b)),
        ];
        (op, 0u64..20, 1u64..10, any::<bool>()).prop_map(|(op, start, len, info)| Entry {
            op,
            invoke_ns: start,
            // Reads with an unknown outcome are dropped by the register checker.
            complete_ns: if info && !matches!(op, RegOp::Read(_)) { None } else { Some(start + len) },
            id: 0,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn agrees_with_brute_force_on_small_histories(entries in proptest::collection::vec(arb_entry(), 1..7)) {
            let far = Instant::now() + Duration::from_secs(60);
            let fast = matches!(check(Register(None), &entries, far), Outcome::Linearizable);
            prop_assert_eq!(fast, brute(&entries), "{:?}", entries);
        }
    }
}
