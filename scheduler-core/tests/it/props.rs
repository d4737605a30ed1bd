//! Property: a plan never oversubscribes an agent, never breaks a constraint, never
//! uses an agent that may not take work, and on small inputs places as many tasks as a
//! brute-force search over every assignment can.
//!
//! The model here is written apart from the crate's: constraints are checked from
//! Marathon's definitions over the plan replayed in order, and ports by counting.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use scheduler_core::{
    place, Agent, AgentState, Constraint, Field, Input, Operator, Plan, Resources, Running, Strategy as Placement,
    TaskGroup,
};

fn value<'a>(a: &'a Agent, f: &Field) -> Option<&'a str> {
    match f {
        Field::Hostname => Some(&a.hostname),
        Field::Label(l) => a.labels.get(l).map(String::as_str),
    }
}

fn full_match(pattern: &str, v: &str) -> bool {
    regex::Regex::new(&format!("^(?:{pattern})$")).unwrap().is_match(v)
}

/// Marathon's rule for one more task of a service on `agent`, given the agents its
/// tasks already sit on.
fn allows(c: &Constraint, agent: &Agent, placed_on: &[&Agent]) -> bool {
    let mine = value(agent, &c.field);
    let vals: Vec<Option<&str>> = placed_on.iter().map(|a| value(a, &c.field)).collect();
    if mine.is_none() {
        return matches!(c.op, Operator::Unlike(_));
    }
    let v = mine.unwrap();
    let same = vals.iter().filter(|x| **x == Some(v)).count();
    match &c.op {
        Operator::Unique => same == 0,
        Operator::Cluster(Some(want)) | Operator::Is(want) => v == want,
        Operator::Cluster(None) => vals.iter().all(|x| *x == Some(v)),
        Operator::Like(p) => full_match(p, v),
        Operator::Unlike(p) => !full_match(p, v),
        Operator::MaxPer(n) => (same as u32) < *n,
        Operator::GroupBy(n) => {
            let mut groups: BTreeMap<Option<&str>, usize> = BTreeMap::new();
            for x in &vals {
                *groups.entry(*x).or_insert(0) += 1;
            }
            let min = groups.values().copied().min().unwrap_or(0);
            same == 0 || (groups.len() >= n.unwrap_or(0) as usize && same == min)
        }
    }
}

fn may_work(a: &Agent) -> bool {
    a.state == AgentState::Active && !a.draining
}

/// Per agent: resources left, specific ports taken, any ports promised.
#[derive(Clone)]
struct Load {
    free: Resources,
    specific: BTreeSet<u16>,
    any: usize,
}

fn port_room(a: &Agent) -> usize {
    a.port_ranges.iter().flat_map(|&(b, e)| b..=e).filter(|p| !a.used_ports.contains(p)).count()
}

/// Whether `task` of `group` fits on agent `ai` given `loads`; updates them if so.
fn fits(input: &Input, loads: &mut [Load], ai: usize, g: &TaskGroup) -> bool {
    let a = &input.agents[ai];
    let l = &loads[ai];
    if !g.resources.fits(&l.free) {
        return false;
    }
    let mut specific = l.specific.clone();
    for &p in g.ports.iter().filter(|&&p| p != 0) {
        let in_range = a.port_ranges.iter().any(|&(b, e)| b <= p && p <= e);
        if !in_range || a.used_ports.contains(&p) || !specific.insert(p) {
            return false;
        }
    }
    let any = l.any + g.ports.iter().filter(|&&p| p == 0).count();
    if specific.len() + any > port_room(a) {
        return false;
    }
    loads[ai] = Load { free: l.free.saturating_sub(g.resources), specific, any };
    true
}

fn initial(input: &Input) -> (Vec<Load>, BTreeMap<String, Vec<usize>>) {
    let loads = input.agents.iter().map(|a| Load { free: a.free, specific: BTreeSet::new(), any: 0 }).collect();
    let mut on: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for r in &input.running {
        if let Some(i) = input.agents.iter().position(|a| a.id == r.agent) {
            on.entry(r.service.clone()).or_default().push(i);
        }
    }
    (loads, on)
}

fn ok_here(input: &Input, on: &BTreeMap<String, Vec<usize>>, ai: usize, g: &TaskGroup) -> bool {
    let placed: Vec<&Agent> = on.get(&g.service).map_or(vec![], |v| v.iter().map(|&i| &input.agents[i]).collect());
    may_work(&input.agents[ai]) && g.constraints.iter().all(|c| allows(c, &input.agents[ai], &placed))
}

/// The most tasks any assignment (in input order, each to an agent or to none) places.
fn brute_force(input: &Input) -> usize {
    let tasks: Vec<&TaskGroup> = input.groups.iter().flat_map(|g| g.task_ids.iter().map(move |_| g)).collect();
    let (loads, on) = initial(input);
    fn go(
        input: &Input,
        tasks: &[&TaskGroup],
        i: usize,
        loads: &mut Vec<Load>,
        on: &mut BTreeMap<String, Vec<usize>>,
        best: &mut usize,
        placed: usize,
    ) {
        if placed + (tasks.len() - i) <= *best {
            return;
        }
        if i == tasks.len() {
            *best = placed;
            return;
        }
        let g = tasks[i];
        for ai in 0..input.agents.len() {
            if !ok_here(input, on, ai, g) {
                continue;
            }
            let saved = loads[ai].clone();
            if fits(input, loads, ai, g) {
                on.entry(g.service.clone()).or_default().push(ai);
                go(input, tasks, i + 1, loads, on, best, placed + 1);
                on.get_mut(&g.service).unwrap().pop();
                loads[ai] = saved;
            }
        }
        go(input, tasks, i + 1, loads, on, best, placed);
    }
    let mut best = 0;
    go(input, &tasks, 0, &mut loads.clone(), &mut on.clone(), &mut best, 0);
    best
}

/// Replays `plan` in order against the model; panics on the first broken rule.
fn check_plan(input: &Input, plan: &Plan) {
    let (mut loads, mut on) = initial(input);
    let group_of: BTreeMap<&str, &TaskGroup> =
        input.groups.iter().flat_map(|g| g.task_ids.iter().map(move |t| (t.as_str(), g))).collect();
    let mut ports_on: BTreeMap<usize, BTreeSet<u16>> = BTreeMap::new();
    for p in &plan.placements {
        let g = group_of[p.task_id.as_str()];
        let ai = input.agents.iter().position(|a| a.id == p.agent).expect("placed on a known agent");
        let a = &input.agents[ai];
        assert!(may_work(a), "{} placed on agent {} that may not take work", p.task_id, a.id);
        assert!(ok_here(input, &on, ai, g), "{} on agent {} breaks a constraint {:?}", p.task_id, a.id, g.constraints);
        assert!(fits(input, &mut loads, ai, g), "{} oversubscribes agent {}", p.task_id, a.id);
        on.entry(g.service.clone()).or_default().push(ai);
        assert_eq!(p.ports.len(), g.ports.len(), "{}: one port per ask", p.task_id);
        for (&got, &asked) in p.ports.iter().zip(&g.ports) {
            assert!(asked == 0 || got == asked, "{}: asked port {asked}, got {got}", p.task_id);
            assert!(
                a.port_ranges.iter().any(|&(b, e)| b <= got && got <= e),
                "port {got} outside agent {}'s ranges",
                a.id
            );
            assert!(!a.used_ports.contains(&got), "port {got} on agent {} is held by a running task", a.id);
            assert!(ports_on.entry(ai).or_default().insert(got), "port {got} on agent {} given twice", a.id);
        }
    }
    for u in &plan.unplaced {
        assert!(!u.reason.is_empty(), "{} unplaced without a reason", u.task_id);
    }
    let mut seen: BTreeSet<&str> = plan.placements.iter().map(|p| p.task_id.as_str()).collect();
    for u in &plan.unplaced {
        assert!(seen.insert(&u.task_id), "{} both placed and unplaced", u.task_id);
    }
    assert_eq!(seen.len(), group_of.len(), "every task is placed or unplaced");
}

fn constraint() -> impl Strategy<Value = Constraint> {
    let field = prop_oneof![Just("hostname"), Just("rack")];
    let op = prop_oneof![
        Just(vec!["UNIQUE"]),
        Just(vec!["CLUSTER"]),
        Just(vec!["CLUSTER", "r1"]),
        Just(vec!["GROUP_BY"]),
        Just(vec!["GROUP_BY", "2"]),
        Just(vec!["LIKE", "r[1]|a"]),
        Just(vec!["UNLIKE", "r1"]),
        Just(vec!["MAX_PER", "1"]),
        Just(vec!["MAX_PER", "2"]),
        Just(vec!["IS", "r2"]),
        Just(vec!["IS", "a"]),
    ];
    (field, op).prop_map(|(f, op)| {
        let mut parts = vec![f];
        parts.extend(op);
        Constraint::parse(&parts).unwrap()
    })
}

/// cpus, memory and disk units, hostname, rack, ports in range, state draw, draining,
/// ports held by running tasks.
type AgentDraw = (u64, u64, u64, &'static str, Option<&'static str>, u16, u8, bool, Vec<u16>);

fn agent() -> impl Strategy<Value = AgentDraw> {
    (
        1u64..=4,
        1u64..=4,
        0u64..=2,
        prop_oneof![Just("a"), Just("b"), Just("c")],
        prop_oneof![Just(None), Just(Some("r1")), Just(Some("r2"))],
        0u16..=3,
        0u8..10,
        proptest::bool::weighted(0.1),
        proptest::collection::vec(100u16..=102, 0..=1),
    )
}

fn input() -> impl Strategy<Value = Input> {
    let agents = proptest::collection::vec(agent(), 1..=4);
    let groups = proptest::collection::vec(
        (
            0usize..2,
            1usize..=3,
            0u64..=3,
            0u64..=2,
            proptest::collection::vec(prop_oneof![Just(0u16), Just(100), Just(101)], 0..=2),
            proptest::collection::vec(constraint(), 0..=2),
            proptest::bool::ANY,
        ),
        1..=3,
    );
    let running = proptest::collection::vec((0usize..2, 0usize..4), 0..=2);
    (agents, groups, running, any::<u64>(), prop_oneof![Just(None), Just(Some(1usize)), Just(Some(usize::MAX))])
        .prop_map(|(agents, groups, running, seed, sample_size)| {
            let agents: Vec<Agent> = agents
                .into_iter()
                .enumerate()
                .map(|(i, (c, m, d, host, rack, nports, st, drain, used))| {
                    let total = Resources { cpus_milli: c * 1000, mem_mb: m * 256, disk_mb: d * 100 };
                    Agent {
                        id: i as u64 + 1,
                        hostname: host.to_string(),
                        labels: rack.map(|r| [("rack".to_string(), r.to_string())].into()).unwrap_or_default(),
                        total,
                        free: total,
                        port_ranges: if nports == 0 { vec![] } else { vec![(100, 99 + nports)] },
                        used_ports: used.into_iter().collect(),
                        state: match st {
                            0 => AgentState::Down,
                            1 => AgentState::Unreachable,
                            _ => AgentState::Active,
                        },
                        draining: drain,
                    }
                })
                .collect();
            let mut next: BTreeMap<String, usize> = BTreeMap::new();
            let groups: Vec<TaskGroup> = groups
                .into_iter()
                .map(|(svc, n, c, m, mut ports, constraints, spread)| {
                    let service = format!("s{svc}");
                    ports.sort();
                    ports.dedup_by(|a, b| *a != 0 && a == b);
                    let counter = next.entry(service.clone()).or_insert(0);
                    let task_ids = (0..n)
                        .map(|_| {
                            *counter += 1;
                            format!("{service}.{counter}")
                        })
                        .collect();
                    TaskGroup {
                        service,
                        task_ids,
                        resources: Resources { cpus_milli: c * 500, mem_mb: m * 256, disk_mb: 0 },
                        ports,
                        constraints,
                        strategy: if spread { Placement::Spread } else { Placement::Binpack },
                    }
                })
                .collect();
            let n_agents = agents.len();
            let running = running
                .into_iter()
                .map(|(svc, a)| Running { service: format!("s{svc}"), agent: (a % n_agents) as u64 + 1 })
                .collect();
            Input { agents, running, groups, seed, sample_size }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn plans_are_valid_and_as_full_as_brute_force(input in input()) {
        let plan = place(&input);
        check_plan(&input, &plan);
        let best = brute_force(&input);
        prop_assert_eq!(plan.placements.len(), best, "brute force places {} of the tasks, the plan {}: {:?}", best, plan.placements.len(), plan.unplaced);
        prop_assert_eq!(&plan, &place(&input), "not deterministic");
    }
}
