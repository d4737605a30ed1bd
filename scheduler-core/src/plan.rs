//! The planner: for each task in order, draw candidates from a seeded shuffle, keep the
//! first few that fit, score them and place on the best.
//!
//! Cost: a task scores at most k = max(2, ⌈log2 n⌉) agents (Nomad's rule), and an agent
//! that stops fitting a group is dropped from that group for good (resources only shrink
//! and every constraint but GROUP_BY only gets stricter as tasks are placed), so a
//! group costs about (its tasks × k + the agents it rejects), not tasks × agents. Static
//! constraints (IS, LIKE, UNLIKE, CLUSTER with a value) are answered from an index of
//! the agents by field value before any agent is drawn.
//!
//! A task is left unplaced only after every candidate was tried, and its reason counts
//! every agent's first failed check. When the greedy pass leaves tasks unplaced on a
//! small input, an exhaustive search looks for a plan that places more.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::constraint::Check;
use crate::world::{eligibility, field_value, Group, Reject, World};
use crate::{Field, Input, Placement, Plan, Strategy, Unplaced};

/// Inputs with at most this many tasks get the exhaustive search when greedy falls short.
pub const EXHAUSTIVE_MAX_TASKS: usize = 12;
/// Search nodes the exhaustive search may visit before it keeps the greedy plan.
pub const EXHAUSTIVE_BUDGET: u64 = 200_000;
/// ... and at most this many eligible agents: every node tries each agent and clones the
/// plan's state, so the search stays small only on small clusters.
pub const EXHAUSTIVE_MAX_AGENTS: usize = 16;

/// Plans `input`. Deterministic: the same input (seed included) gives the same plan.
pub fn place(input: &Input) -> Plan {
    Planner::new(input).run()
}

/// One task's outcome: the agent index and ports, or none.
type Outcome = Option<(u32, Vec<u16>)>;

struct Planner<'a> {
    input: &'a Input,
    world: World<'a>,
    groups: Vec<Result<Group<'a>, String>>,
    /// Indices of the agents that may receive work; a shared permutation that each
    /// unconstrained group shuffles lazily as it draws.
    eligible: Vec<u32>,
    /// Eligible agents by value, for the fields that static constraints look at.
    index: BTreeMap<Field, FieldIndex>,
    rng: ChaCha8Rng,
}

#[derive(Default)]
struct FieldIndex {
    by_value: BTreeMap<String, Vec<u32>>,
    missing: Vec<u32>,
}

/// The agents a group may still draw: `seq[pos..]` not drawn yet (shuffled lazily),
/// then `recycle`, agents that failed only GROUP_BY (which can pass later) or, under
/// spread, were scored already.
struct Cursor {
    seq: Vec<u32>,
    pos: usize,
    recycle: VecDeque<u32>,
}

impl Cursor {
    fn draw(&mut self, rng: &mut ChaCha8Rng) -> Option<u32> {
        let n = self.seq.len();
        if self.pos >= n {
            return None;
        }
        let j = self.pos + (rng.next_u64() % (n - self.pos) as u64) as usize;
        self.seq.swap(self.pos, j);
        self.pos += 1;
        Some(self.seq[self.pos - 1])
    }
}

/// Agent id → index in the input. Agents sorted by id (as the registry lists them) need
/// no table: a binary search over the input itself, which keeps a plan's fixed cost low.
enum AgentIndex {
    Sorted,
    /// (id, index), sorted by id; a duplicated id keeps its last index.
    Table(Vec<(u64, u32)>),
}

impl AgentIndex {
    fn new(agents: &[crate::Agent]) -> AgentIndex {
        if agents.windows(2).all(|w| w[0].id < w[1].id) {
            return AgentIndex::Sorted;
        }
        let mut t: Vec<(u64, u32)> = agents.iter().enumerate().map(|(i, a)| (a.id, i as u32)).collect();
        t.sort_by_key(|&(id, i)| (id, std::cmp::Reverse(i)));
        t.dedup_by_key(|&mut (id, _)| id);
        AgentIndex::Table(t)
    }

    /// Whether index `i` is the one its id maps to (not shadowed by a later duplicate).
    fn is_canonical(&self, agents: &[crate::Agent], i: u32) -> bool {
        matches!(self, AgentIndex::Sorted) || self.get(agents, agents[i as usize].id) == Some(i)
    }

    fn get(&self, agents: &[crate::Agent], id: u64) -> Option<u32> {
        match self {
            AgentIndex::Sorted => agents.binary_search_by_key(&id, |a| a.id).ok().map(|i| i as u32),
            AgentIndex::Table(t) => t.binary_search_by_key(&id, |&(id, _)| id).ok().map(|i| t[i].1),
        }
    }
}

fn sample_size(input: &Input, n: usize) -> usize {
    let log2_ceil = if n <= 1 { 0 } else { (usize::BITS - (n - 1).leading_zeros()) as usize };
    input.sample_size.unwrap_or(log2_ceil.max(2)).max(1)
}

impl<'a> Planner<'a> {
    fn new(input: &'a Input) -> Planner<'a> {
        let agent_index = AgentIndex::new(&input.agents);
        let mut service_index: BTreeMap<&str, usize> = BTreeMap::new();
        let mut fields: Vec<BTreeSet<Field>> = Vec::new();
        let mut static_fields: BTreeSet<Field> = BTreeSet::new();
        let mut groups = Vec::with_capacity(input.groups.len());
        for spec in &input.groups {
            let next = service_index.len();
            let service = *service_index.entry(spec.service.as_str()).or_insert(next);
            if service == fields.len() {
                fields.push(BTreeSet::new());
            }
            let group = (|| {
                let mut constraints = Vec::with_capacity(spec.constraints.len());
                for c in &spec.constraints {
                    constraints.push(c.compile().map_err(|e| format!("invalid constraint {c}: {e}"))?);
                }
                let mut specific_ports = BTreeSet::new();
                for &p in spec.ports.iter().filter(|&&p| p != 0) {
                    if !specific_ports.insert(p) {
                        return Err(format!("asks for port {p} twice"));
                    }
                }
                Ok(Group { spec, service, constraints, specific_ports })
            })();
            if let Ok(g) = &group {
                for c in &g.constraints {
                    if c.is_static() {
                        static_fields.insert(c.field.clone());
                    } else {
                        fields[service].insert(c.field.clone());
                    }
                }
            }
            groups.push(group);
        }
        let running: Vec<(usize, u32)> = input
            .running
            .iter()
            .filter_map(|r| Some((*service_index.get(r.service.as_str())?, agent_index.get(&input.agents, r.agent)?)))
            .collect();
        let world = World::new(&input.agents, fields, &running);
        // A duplicated agent id counts once: the last record wins, as in the index.
        let eligible: Vec<u32> = (0..input.agents.len() as u32)
            .filter(|&i| {
                let a = &input.agents[i as usize];
                eligibility(a).is_ok() && agent_index.is_canonical(&input.agents, i)
            })
            .collect();
        let mut index = BTreeMap::new();
        for f in static_fields {
            let mut fi = FieldIndex::default();
            for &i in &eligible {
                match field_value(&input.agents[i as usize], &f) {
                    Some(v) => fi.by_value.entry(v.to_string()).or_insert_with(Vec::new).push(i),
                    None => fi.missing.push(i),
                }
            }
            index.insert(f, fi);
        }
        Planner { input, world, groups, eligible, index, rng: ChaCha8Rng::seed_from_u64(input.seed) }
    }

    /// The agents that pass every static constraint of `g`, or `None` if it has none.
    fn static_candidates(&self, g: &Group) -> Option<Vec<u32>> {
        let mut best: Option<Vec<u32>> = None;
        for c in g.constraints.iter().filter(|c| c.is_static()) {
            let fi = &self.index[&c.field];
            let mut set: Vec<u32> = match &c.check {
                Check::Is(v) => fi.by_value.get(v).cloned().unwrap_or_default(),
                _ => {
                    let mut s: Vec<u32> = fi
                        .by_value
                        .iter()
                        .filter(|(v, _)| c.static_ok(Some(v)))
                        .flat_map(|(_, agents)| agents.iter().copied())
                        .collect();
                    if c.static_ok(None) {
                        s.extend(fi.missing.iter().copied());
                    }
                    s
                }
            };
            if best.as_ref().is_none_or(|b| set.len() < b.len()) {
                set.sort_unstable();
                best = Some(set);
            }
        }
        let mut set = best?;
        let agents = &self.input.agents;
        set.retain(|&i| {
            g.constraints
                .iter()
                .filter(|c| c.is_static())
                .all(|c| c.static_ok(field_value(&agents[i as usize], &c.field)))
        });
        Some(set)
    }

    fn run(mut self) -> Plan {
        let total_tasks: usize = self.input.groups.iter().map(|g| g.task_ids.len()).sum();
        let small = total_tasks <= EXHAUSTIVE_MAX_TASKS && self.eligible.len() <= EXHAUSTIVE_MAX_AGENTS;
        let before = small.then(|| self.world.clone());
        let mut outcomes: Vec<Vec<Outcome>> = Vec::with_capacity(self.groups.len());
        let mut reasons: Vec<Option<String>> = Vec::with_capacity(self.groups.len());
        for gi in 0..self.groups.len() {
            let (o, r) = self.run_group(gi);
            outcomes.push(o);
            reasons.push(r);
        }
        let placed = |o: &[Vec<Outcome>]| o.iter().flatten().filter(|x| x.is_some()).count();
        if let Some(before) = before {
            let greedy = placed(&outcomes);
            if greedy < total_tasks && self.groups.iter().all(|g| g.is_ok()) {
                if let Some((world, better)) = self.exhaustive(before, greedy) {
                    self.world = world;
                    outcomes = better;
                    reasons = (0..self.groups.len()).map(|gi| Some(self.explain(gi))).collect();
                }
            }
        }
        // Now that every placement is made, choose the "any" ports, in plan order.
        for o in outcomes.iter_mut().flatten().flatten() {
            for p in o.1.iter_mut().filter(|p| **p == 0) {
                *p = self.world.take_any_port(o.0);
            }
        }
        let mut plan = Plan::default();
        for (gi, spec) in self.input.groups.iter().enumerate() {
            for (ti, task_id) in spec.task_ids.iter().enumerate() {
                match &outcomes[gi][ti] {
                    Some((a, ports)) => plan.placements.push(Placement {
                        task_id: task_id.clone(),
                        agent: self.input.agents[*a as usize].id,
                        ports: ports.clone(),
                    }),
                    None => plan
                        .unplaced
                        .push(Unplaced { task_id: task_id.clone(), reason: reasons[gi].clone().unwrap_or_default() }),
                }
            }
        }
        plan
    }

    fn run_group(&mut self, gi: usize) -> (Vec<Outcome>, Option<String>) {
        let n_tasks = self.input.groups[gi].task_ids.len();
        let candidates = match &self.groups[gi] {
            Ok(g) => self.static_candidates(g),
            Err(e) => return (vec![None; n_tasks], Some(e.clone())),
        };
        let shared = candidates.is_none();
        let seq = candidates.unwrap_or_else(|| std::mem::take(&mut self.eligible));
        let k = sample_size(self.input, seq.len());
        let mut pool: Vec<u32> = Vec::with_capacity(k.min(seq.len()));
        let mut cursor = Cursor { seq, pos: 0, recycle: VecDeque::new() };
        let mut out = Vec::with_capacity(n_tasks);
        let mut reason = None;
        for _ in 0..n_tasks {
            match self.place_one(gi, &mut cursor, &mut pool, k) {
                Some(o) => out.push(Some(o)),
                None => {
                    // Nothing changed since: the group's remaining tasks fail the same way.
                    reason = Some(self.explain(gi));
                    out.resize(n_tasks, None);
                    break;
                }
            }
        }
        if shared {
            self.eligible = cursor.seq;
        }
        (out, reason)
    }

    fn place_one(&mut self, gi: usize, cursor: &mut Cursor, pool: &mut Vec<u32>, k: usize) -> Outcome {
        let Ok(g) = &self.groups[gi] else { return None };
        let world = &mut self.world;
        // Agents recycled during this task go behind this budget, so none is tried twice.
        let mut recycled_budget = cursor.recycle.len();
        let keep =
            |a: u32, pool: &mut Vec<u32>, recycle: &mut VecDeque<u32>, world: &World| match world.check(a, g, false) {
                Ok(()) => pool.push(a),
                Err(Reject::Constraint(i)) if !g.constraints[i].failure_is_permanent() => recycle.push_back(a),
                Err(_) => {}
            };
        let old: Vec<u32> = std::mem::take(pool);
        for a in old {
            keep(a, pool, &mut cursor.recycle, world);
        }
        while pool.len() < k {
            let next = match cursor.draw(&mut self.rng) {
                Some(a) => a,
                None if recycled_budget > 0 => {
                    recycled_budget -= 1;
                    match cursor.recycle.pop_front() {
                        Some(a) => a,
                        None => break,
                    }
                }
                None => break,
            };
            keep(next, pool, &mut cursor.recycle, world);
        }
        let best_at =
            (1..pool.len()).fold(
                0,
                |best, i| {
                    if compare(world, g, pool[i], pool[best]) == Ordering::Greater {
                        i
                    } else {
                        best
                    }
                },
            );
        let best = *pool.get(best_at)?;
        let ports = world.apply(best, g);
        if g.spec.strategy == Strategy::Spread {
            // Fresh agents first for the next task; these come back after the rest.
            pool.remove(best_at);
            cursor.recycle.extend(pool.drain(..));
            cursor.recycle.push_back(best);
        }
        Some((best, ports))
    }

    /// Why no agent takes another task of group `gi` now: every agent's first failed
    /// check, counted.
    fn explain(&self, gi: usize) -> String {
        let Ok(g) = &self.groups[gi] else { return String::new() };
        let mut tally: BTreeMap<Reject, u32> = BTreeMap::new();
        for (i, a) in self.input.agents.iter().enumerate() {
            let r = eligibility(a).and_then(|_| self.world.check(i as u32, g, true));
            if let Err(r) = r {
                *tally.entry(r).or_insert(0) += 1;
            }
        }
        if self.input.agents.is_empty() {
            return "no agents".to_string();
        }
        let mut rows: Vec<(Reject, u32)> = tally.into_iter().collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        if rows.is_empty() {
            return "no agent fits".to_string();
        }
        rows.iter()
            .map(|(r, n)| {
                let (one, many) = r.phrase(g);
                if *n == 1 {
                    format!("1 agent {one}")
                } else {
                    format!("{n} agents {many}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Depth-first over every assignment of the input's tasks, in order, to an agent or
    /// to none; returns a plan that places more than `greedy`, if it finds one within
    /// the budget.
    fn exhaustive(&self, start: World<'a>, greedy: usize) -> Option<(World<'a>, Vec<Vec<Outcome>>)> {
        let flat: Vec<usize> = self
            .groups
            .iter()
            .enumerate()
            .flat_map(|(gi, g)| std::iter::repeat_n(gi, g.as_ref().map_or(0, |g| g.spec.task_ids.len())))
            .collect();
        let mut agents: Vec<u32> = self.eligible.clone();
        agents.sort_unstable();
        let mut s = Search {
            planner: self,
            flat: &flat,
            agents: &agents,
            budget: EXHAUSTIVE_BUDGET,
            cur: Vec::with_capacity(flat.len()),
            best: None,
            best_placed: greedy,
        };
        s.go(&start, 0, 0);
        let (world, assignment) = s.best?;
        let mut out: Vec<Vec<Outcome>> = self.groups.iter().map(|_| Vec::new()).collect();
        for (gi, o) in flat.iter().zip(assignment) {
            out[*gi].push(o);
        }
        Some((world, out))
    }
}

struct Search<'p, 'a> {
    planner: &'p Planner<'a>,
    flat: &'p [usize],
    agents: &'p [u32],
    budget: u64,
    cur: Vec<Outcome>,
    best: Option<(World<'a>, Vec<Outcome>)>,
    best_placed: usize,
}

impl<'a> Search<'_, 'a> {
    fn go(&mut self, world: &World<'a>, i: usize, placed: usize) {
        if self.budget == 0 || placed + (self.flat.len() - i) <= self.best_placed {
            return;
        }
        self.budget -= 1;
        if i == self.flat.len() {
            self.best_placed = placed;
            self.best = Some((world.clone(), self.cur.clone()));
            return;
        }
        let Ok(g) = &self.planner.groups[self.flat[i]] else { return };
        for &a in self.agents {
            if world.check(a, g, true).is_ok() {
                let mut w = world.clone();
                let ports = w.apply(a, g);
                self.cur.push(Some((a, ports)));
                self.go(&w, i + 1, placed + 1);
                self.cur.pop();
                if self.best_placed == self.flat.len() {
                    return;
                }
            }
        }
        self.cur.push(None);
        self.go(world, i + 1, placed);
        self.cur.pop();
    }
}

/// Which of two feasible agents is the better home for the next task of `g`. GROUP_BY
/// evenness first (Marathon only forbids the worst imbalance; with every agent in view we
/// can aim for even), then the strategy.
fn compare(world: &World, g: &Group, a: u32, b: u32) -> Ordering {
    let even = world.group_by_load(b, g).cmp(&world.group_by_load(a, g));
    if even != Ordering::Equal {
        return even;
    }
    let (sa, sb) = (world.binpack_score(a, g), world.binpack_score(b, g));
    match g.spec.strategy {
        Strategy::Binpack => sa.total_cmp(&sb),
        Strategy::Spread => {
            let (ta, tb) = (world.tasks_of_service_on(g.service, a), world.tasks_of_service_on(g.service, b));
            tb.cmp(&ta).then(sb.total_cmp(&sa))
        }
    }
}
