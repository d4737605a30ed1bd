//! What a plan changes as it goes: each agent's free resources and ports, and each
//! service's task counts per agent and per constraint value. Cloned whole by the
//! exhaustive search, so it stays small and flat.

use std::collections::{BTreeMap, BTreeSet};

use crate::constraint::{Compiled, ValueCounts};
use crate::{Agent, AgentState, Field, Resources, TaskGroup};

/// Why an agent cannot take a task: the first check it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Reject {
    Down,
    Unreachable,
    NotConnected,
    Draining,
    /// Its port ranges are reversed, overlap or are out of order (the registry refuses
    /// such records; this guards a hand-made input).
    BadPortRanges,
    Cpus,
    Memory,
    Disk,
    Ports,
    /// The index of the failed constraint in the group.
    Constraint(usize),
}

impl Reject {
    /// "agent(s) …": the singular and plural phrase.
    pub fn phrase(&self, group: &Group) -> (String, String) {
        let (one, many) = match self {
            Reject::Down => ("is down", "are down"),
            Reject::Unreachable => ("is unreachable", "are unreachable"),
            Reject::NotConnected => ("has not connected yet", "have not connected yet"),
            Reject::Draining => ("is draining", "are draining"),
            Reject::BadPortRanges => ("has invalid port ranges", "have invalid port ranges"),
            Reject::Cpus => ("lacks cpus", "lack cpus"),
            Reject::Memory => ("lacks memory", "lack memory"),
            Reject::Disk => ("lacks disk", "lack disk"),
            Reject::Ports => ("lacks ports", "lack ports"),
            Reject::Constraint(i) => {
                let l = &group.constraints[*i].label;
                return (format!("fails {l}"), format!("fail {l}"));
            }
        };
        (one.to_string(), many.to_string())
    }
}

/// Whether an agent may receive work at all, and if not why.
pub(crate) fn eligibility(a: &Agent) -> Result<(), Reject> {
    match a.state {
        AgentState::Down => Err(Reject::Down),
        AgentState::Unreachable => Err(Reject::Unreachable),
        AgentState::Registered => Err(Reject::NotConnected),
        AgentState::Active if a.draining => Err(Reject::Draining),
        AgentState::Active => {
            let r = &a.port_ranges;
            let sorted = r.iter().all(|&(b, e)| b <= e) && r.windows(2).all(|w| w[0].1 < w[1].0);
            if sorted {
                Ok(())
            } else {
                Err(Reject::BadPortRanges)
            }
        }
    }
}

pub(crate) fn field_value<'a>(a: &'a Agent, f: &Field) -> Option<&'a str> {
    match f {
        Field::Hostname => Some(a.hostname.as_str()),
        Field::Label(k) => a.labels.get(k).map(String::as_str),
    }
}

/// A task group with its constraints compiled, and which service it counts under.
pub(crate) struct Group<'a> {
    pub spec: &'a TaskGroup,
    pub service: usize,
    pub constraints: Vec<Compiled>,
    /// The ports this group asks for by number.
    pub specific_ports: BTreeSet<u16>,
}

#[derive(Debug, Clone)]
struct Slot {
    free: Resources,
    /// Held by running tasks and by the specific ports of placed ones.
    used_ports: BTreeSet<u16>,
    /// Ports in the ranges not in `used_ports`.
    free_port_count: u64,
    /// "Any" ports promised to placed tasks, chosen only when the plan is done
    /// ([`World::take_any_port`]): a choice made earlier could take a port that a later
    /// task asks for by number.
    any_promised: u64,
    /// The last port handed out by `take_any_port`: the next is above it.
    last_any: Option<u16>,
}

#[derive(Debug, Clone, Default)]
struct ServiceCounts {
    per_agent: BTreeMap<u32, u32>,
    per_field: BTreeMap<Field, ValueCounts>,
}

#[derive(Debug, Clone)]
pub(crate) struct World<'a> {
    agents: &'a [Agent],
    /// Filled on an agent's first placement; until then the agent's own record is the
    /// truth, so a plan that touches few agents does not copy every agent's ports.
    slots: Vec<Option<Slot>>,
    services: Vec<ServiceCounts>,
}

fn free_port_count(a: &Agent) -> u64 {
    // A reversed range is empty (and BTreeSet::range would panic on it).
    let ranges = || a.port_ranges.iter().filter(|&&(b, e)| b <= e);
    let size: u64 = ranges().map(|&(b, e)| u64::from(e - b) + 1).sum();
    let used: u64 = ranges().map(|&(b, e)| a.used_ports.range(b..=e).count() as u64).sum();
    size.saturating_sub(used)
}

fn in_ranges(ranges: &[(u16, u16)], p: u16) -> bool {
    ranges.iter().any(|&(b, e)| b <= p && p <= e)
}

impl<'a> World<'a> {
    /// `services[i]` lists the fields the constraints of service i look at; `running`
    /// is already mapped to (service index, agent index).
    pub fn new(agents: &'a [Agent], fields: Vec<BTreeSet<Field>>, running: &[(usize, u32)]) -> World<'a> {
        let slots = vec![None; agents.len()];
        let services = fields
            .into_iter()
            .map(|fs| ServiceCounts {
                per_agent: BTreeMap::new(),
                per_field: fs.into_iter().map(|f| (f, ValueCounts::default())).collect(),
            })
            .collect();
        let mut w = World { agents, slots, services };
        for &(s, a) in running {
            w.count(s, a);
        }
        w
    }

    fn slot_mut(&mut self, agent: u32) -> &mut Slot {
        let a = &self.agents[agent as usize];
        self.slots[agent as usize].get_or_insert_with(|| Slot {
            free: a.free,
            used_ports: a.used_ports.clone(),
            free_port_count: free_port_count(a),
            any_promised: 0,
            last_any: None,
        })
    }

    fn count(&mut self, service: usize, agent: u32) {
        let a = &self.agents[agent as usize];
        let svc = &mut self.services[service];
        *svc.per_agent.entry(agent).or_insert(0) += 1;
        for (f, counts) in svc.per_field.iter_mut() {
            counts.add(field_value(a, f));
        }
    }

    pub fn tasks_of_service_on(&self, service: usize, agent: u32) -> u32 {
        self.services[service].per_agent.get(&agent).copied().unwrap_or(0)
    }

    /// Whether agent `agent` can take one more task of `g`. Static constraints are
    /// skipped when the caller drew the agent from candidates that already pass them.
    pub fn check(&self, agent: u32, g: &Group, with_static: bool) -> Result<(), Reject> {
        let a = &self.agents[agent as usize];
        let slot = self.slots[agent as usize].as_ref();
        let free = slot.map_or(&a.free, |s| &s.free);
        let want = &g.spec.resources;
        if want.cpus_milli > free.cpus_milli {
            return Err(Reject::Cpus);
        }
        if want.mem_mb > free.mem_mb {
            return Err(Reject::Memory);
        }
        if want.disk_mb > free.disk_mb {
            return Err(Reject::Disk);
        }
        if !g.spec.ports.is_empty() {
            let used = slot.map_or(&a.used_ports, |s| &s.used_ports);
            let mut specific = 0u64;
            for &p in &g.specific_ports {
                if !in_ranges(&a.port_ranges, p) || used.contains(&p) {
                    return Err(Reject::Ports);
                }
                specific += 1;
            }
            let any = g.spec.ports.iter().filter(|&&p| p == 0).count() as u64;
            let (room, promised) =
                slot.map_or_else(|| (free_port_count(a), 0), |s| (s.free_port_count, s.any_promised));
            if specific + any + promised > room {
                return Err(Reject::Ports);
            }
        }
        let svc = &self.services[g.service];
        for (i, c) in g.constraints.iter().enumerate() {
            let v = field_value(a, &c.field);
            if c.is_static() {
                if with_static && !c.static_ok(v) {
                    return Err(Reject::Constraint(i));
                }
                continue;
            }
            if !c.dynamic_ok(v, &svc.per_field[&c.field]) {
                return Err(Reject::Constraint(i));
            }
        }
        Ok(())
    }

    /// Places one task of `g` on `agent` (which passed `check`). Returns its ports, with
    /// 0 for each "any" port still to be chosen by [`World::take_any_port`].
    pub fn apply(&mut self, agent: u32, g: &Group) -> Vec<u16> {
        let slot = self.slot_mut(agent);
        slot.free = slot.free.saturating_sub(g.spec.resources);
        for &p in &g.specific_ports {
            slot.used_ports.insert(p);
            slot.free_port_count -= 1;
        }
        slot.any_promised += g.spec.ports.iter().filter(|&&p| p == 0).count() as u64;
        self.count(g.service, agent);
        g.spec.ports.clone()
    }

    /// Chooses one promised "any" port on `agent`: the lowest free one above the last
    /// chosen. Call once per promise, after every placement of the plan is made.
    pub fn take_any_port(&mut self, agent: u32) -> u16 {
        let a = &self.agents[agent as usize];
        let slot = self.slots[agent as usize].as_mut().expect("a promise was made by apply");
        let above = slot.last_any.map_or(0, |p| u32::from(p) + 1);
        let p = a
            .port_ranges
            .iter()
            .flat_map(|&(b, e)| (u32::from(b).max(above)..=u32::from(e)).map(|p| p as u16))
            .find(|p| !slot.used_ports.contains(p))
            .expect("check counted a free port for every promise");
        slot.used_ports.insert(p);
        slot.last_any = Some(p);
        p
    }

    /// Nomad's binpack score of `agent` after one more task of `g`: 20 − (10^free_cpu +
    /// 10^free_mem), free as fractions of the total. Higher is fuller.
    pub fn binpack_score(&self, agent: u32, g: &Group) -> f64 {
        let a = &self.agents[agent as usize];
        let free = self.slots[agent as usize].as_ref().map_or(a.free, |s| s.free).saturating_sub(g.spec.resources);
        let frac = |free: u64, total: u64| if total == 0 { 0.0 } else { (free as f64 / total as f64).min(1.0) };
        let fc = frac(free.cpus_milli, a.total.cpus_milli);
        let fm = frac(free.mem_mb, a.total.mem_mb);
        20.0 - (10f64.powf(fc) + 10f64.powf(fm))
    }

    /// How many of the service's tasks share `agent`'s value of each GROUP_BY field:
    /// the lower, the more even the spread.
    pub fn group_by_load(&self, agent: u32, g: &Group) -> u64 {
        let a = &self.agents[agent as usize];
        let svc = &self.services[g.service];
        g.constraints
            .iter()
            .filter(|c| !c.failure_is_permanent())
            .map(|c| match field_value(a, &c.field) {
                Some(v) => u64::from(svc.per_field[&c.field].get(v)),
                None => 0,
            })
            .sum()
    }
}
