//! The fault schedule: a pure function of (nemeses, node count, duration, seed).
//!
//! The same seed gives the same schedule, byte for byte (our own splitmix64 generator, so
//! no dependency upgrade can change it). What the schedule cannot fix in advance is which
//! node is the leader when a leader-targeted fault starts: that is resolved at run time
//! and written next to the planned fault in the report.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// splitmix64: tiny, fast, and fixed forever.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6a09_e667_f3bc_c908)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    /// Uniform in [lo, hi].
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// A nemesis the user can name on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nemesis {
    None,
    PartitionOne,
    PartitionMajority,
    PartitionMajoritiesRing,
    Primaries,
    Kill,
    Pause,
    Clock,
    Member,
    /// kill -9 a worker-only agent (its tasks keep running), restart it at heal.
    KillAgent,
}

impl Nemesis {
    pub const ALL: [Nemesis; 10] = [
        Nemesis::None,
        Nemesis::PartitionOne,
        Nemesis::PartitionMajority,
        Nemesis::PartitionMajoritiesRing,
        Nemesis::Primaries,
        Nemesis::Kill,
        Nemesis::Pause,
        Nemesis::Clock,
        Nemesis::Member,
        Nemesis::KillAgent,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Nemesis::None => "none",
            Nemesis::PartitionOne => "partition-one",
            Nemesis::PartitionMajority => "partition-majority",
            Nemesis::PartitionMajoritiesRing => "partition-majorities-ring",
            Nemesis::Primaries => "primaries",
            Nemesis::Kill => "kill",
            Nemesis::Pause => "pause",
            Nemesis::Clock => "clock",
            Nemesis::Member => "member",
            Nemesis::KillAgent => "kill-agent",
        }
    }
}

impl fmt::Display for Nemesis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Nemesis {
    type Err = String;
    fn from_str(s: &str) -> Result<Nemesis, String> {
        Nemesis::ALL.iter().copied().find(|n| n.name() == s).ok_or_else(|| {
            format!(
                "unknown nemesis {s:?}; choose from {}",
                Nemesis::ALL.iter().map(|n| n.name()).collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// Which node a process fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Whichever node leads when the fault starts.
    Leader,
    /// A fixed node, 0-based.
    Node(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// Traffic between the groups is dropped both ways; `grudge[i]` lists the nodes node i
    /// may not hear from. `primaries` is resolved at run time (leader cut off alone).
    Partition {
        shape: String,
        grudge: Vec<Vec<usize>>,
    },
    /// Cut the leader off from everyone.
    Primaries,
    Kill {
        target: Target,
    },
    Pause {
        target: Target,
    },
    /// Shift one node's wall clock (CLOCK_REALTIME) by offset_ms.
    Clock {
        node: usize,
        offset_ms: i64,
    },
    /// Remove a master from the Raft group, then wipe it and join it again.
    Member {
        target: Target,
    },
    /// kill -9 worker-only agent `worker` (0-based among the workers), restart at heal.
    KillAgent {
        worker: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub nemesis: Nemesis,
    pub start_ms: u64,
    pub end_ms: u64,
    pub fault: Fault,
}

/// Fault windows for a run of `time_s` seconds: 5 s quiet, then cycles of a fault of
/// 5-15 s followed by 4-10 s of healed cluster, taking the nemeses in turn. Everything
/// is healed by `time_s`. `kill-agent` needs `workers` > 0 and is skipped without.
pub fn plan(nemeses: &[Nemesis], nodes: usize, workers: usize, time_s: u64, seed: u64) -> Vec<Window> {
    let mut rng = Rng::new(seed);
    let active: Vec<Nemesis> = nemeses
        .iter()
        .copied()
        .filter(|n| *n != Nemesis::None && !(*n == Nemesis::KillAgent && workers == 0))
        .collect();
    let mut out = Vec::new();
    if active.is_empty() || nodes == 0 {
        return out;
    }
    let end = time_s * 1000;
    let mut t = 5_000;
    let mut i = 0;
    loop {
        let nemesis = active[i % active.len()];
        i += 1;
        let dur = rng.range(5_000, 15_000);
        if t + dur > end {
            break;
        }
        let fault = match nemesis {
            Nemesis::KillAgent => Fault::KillAgent { worker: rng.below(workers as u64) as usize },
            _ => fault_for(nemesis, nodes, &mut rng),
        };
        out.push(Window { nemesis, start_ms: t, end_ms: t + dur, fault });
        t += dur + rng.range(4_000, 10_000);
    }
    out
}

fn target(nodes: usize, rng: &mut Rng) -> Target {
    // Half the time the leader: leader faults are where consensus bugs live.
    if rng.below(2) == 0 {
        Target::Leader
    } else {
        Target::Node(rng.below(nodes as u64) as usize)
    }
}

/// Every node in `a` holds a grudge against every node in `b` and vice versa.
fn grudge_between(nodes: usize, groups: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut g = vec![Vec::new(); nodes];
    for (gi, a) in groups.iter().enumerate() {
        for (gj, b) in groups.iter().enumerate() {
            if gi != gj {
                for &x in a {
                    g[x].extend(b.iter().copied());
                }
            }
        }
    }
    for v in &mut g {
        v.sort_unstable();
    }
    g
}

fn fault_for(n: Nemesis, nodes: usize, rng: &mut Rng) -> Fault {
    match n {
        Nemesis::PartitionOne => {
            let x = rng.below(nodes as u64) as usize;
            let rest: Vec<usize> = (0..nodes).filter(|&i| i != x).collect();
            Fault::Partition { shape: "one".into(), grudge: grudge_between(nodes, &[vec![x], rest]) }
        }
        Nemesis::PartitionMajority => {
            let mut order: Vec<usize> = (0..nodes).collect();
            rng.shuffle(&mut order);
            let (minority, majority) = order.split_at(nodes / 2);
            let (mut a, mut b) = (minority.to_vec(), majority.to_vec());
            a.sort_unstable();
            b.sort_unstable();
            Fault::Partition { shape: "majority".into(), grudge: grudge_between(nodes, &[a, b]) }
        }
        Nemesis::PartitionMajoritiesRing => {
            // Nodes on a shuffled ring each hear only their nearest neighbours, so every
            // node sees a majority but no two majorities are the same.
            let mut ring: Vec<usize> = (0..nodes).collect();
            rng.shuffle(&mut ring);
            let reach = nodes / 2; // neighbours on each side that stay visible
            let mut g = vec![Vec::new(); nodes];
            for (pos, &x) in ring.iter().enumerate() {
                for (qos, &y) in ring.iter().enumerate() {
                    let d = pos.abs_diff(qos);
                    let d = d.min(nodes - d);
                    if x != y && d > reach.div_ceil(2).max(1) {
                        g[x].push(y);
                    }
                }
                g[x].sort_unstable();
            }
            Fault::Partition { shape: "majorities-ring".into(), grudge: g }
        }
        Nemesis::Primaries => Fault::Primaries,
        Nemesis::Kill => Fault::Kill { target: target(nodes, rng) },
        Nemesis::Pause => Fault::Pause { target: target(nodes, rng) },
        Nemesis::Clock => {
            let node = rng.below(nodes as u64) as usize;
            let secs = rng.range(2, 60) as i64;
            let sign = if rng.below(2) == 0 { -1 } else { 1 };
            Fault::Clock { node, offset_ms: sign * secs * 1000 }
        }
        Nemesis::Member => Fault::Member { target: target(nodes, rng) },
        Nemesis::None | Nemesis::KillAgent => unreachable!("filtered out or planned by the caller"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule_other_seed_other_schedule() {
        let all = [Nemesis::PartitionMajority, Nemesis::Kill, Nemesis::Pause, Nemesis::Clock];
        let a = plan(&all, 5, 0, 120, 7);
        let b = plan(&all, 5, 0, 120, 7);
        assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
        assert!(a.len() >= 5, "{a:?}");
        assert_ne!(a, plan(&all, 5, 0, 120, 8));
    }

    #[test]
    fn windows_are_ordered_disjoint_and_end_in_time() {
        for seed in 0..200 {
            let w = plan(&[Nemesis::Pause, Nemesis::PartitionOne], 5, 0, 60, seed);
            for pair in w.windows(2) {
                assert!(pair[0].end_ms < pair[1].start_ms);
            }
            assert!(w.iter().all(|x| x.start_ms >= 5_000 && x.end_ms <= 60_000));
        }
    }

    #[test]
    fn partitions_are_symmetric_and_majority_splits_two_three() {
        for seed in 0..100 {
            for n in [Nemesis::PartitionOne, Nemesis::PartitionMajority, Nemesis::PartitionMajoritiesRing] {
                let Fault::Partition { grudge, .. } = fault_for(n, 5, &mut Rng::new(seed)) else { panic!() };
                for (x, g) in grudge.iter().enumerate() {
                    assert!(!g.contains(&x));
                    for &y in g {
                        assert!(grudge[y].contains(&x), "{n}: {grudge:?}");
                    }
                }
                if n == Nemesis::PartitionMajority {
                    let cut: Vec<usize> = grudge.iter().map(|g| g.len()).collect();
                    assert_eq!(cut.iter().filter(|&&c| c == 3).count(), 2, "{grudge:?}");
                    assert_eq!(cut.iter().filter(|&&c| c == 2).count(), 3, "{grudge:?}");
                }
                if n == Nemesis::PartitionMajoritiesRing {
                    // Everyone still hears a majority (itself included), nobody hears all.
                    assert!(grudge.iter().all(|g| 5 - g.len() >= 3 && !g.is_empty()), "{grudge:?}");
                }
            }
        }
    }

    #[test]
    fn kill_agent_hits_workers_only_and_is_skipped_without_them() {
        let w = plan(&[Nemesis::KillAgent, Nemesis::Kill], 3, 2, 120, 5);
        assert!(w.iter().any(|x| matches!(x.fault, Fault::KillAgent { worker } if worker < 2)), "{w:?}");
        let none = plan(&[Nemesis::KillAgent, Nemesis::Kill], 3, 0, 120, 5);
        assert!(none.iter().all(|x| x.nemesis == Nemesis::Kill), "{none:?}");
        // Adding kill-agent to a run leaves other nemeses' schedules for a seed alone
        // when it is not named.
        assert_eq!(plan(&[Nemesis::Kill], 3, 0, 60, 9), plan(&[Nemesis::Kill], 3, 4, 60, 9));
    }

    #[test]
    fn nemesis_names_round_trip() {
        for n in Nemesis::ALL {
            assert_eq!(n.name().parse::<Nemesis>().unwrap(), n);
        }
        assert!("partition-everything".parse::<Nemesis>().is_err());
    }
}
