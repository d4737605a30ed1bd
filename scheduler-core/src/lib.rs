//! scheduler-core: pure placement. Agents, the tasks already running and the tasks to
//! place go in; a plan (task → agent, with ports) comes out, with a reason for every
//! task that could not be placed.
//!
//! - [`constraint`]: Marathon's constraints (`[field, OPERATOR, value]`), parsed and checked.
//! - [`plan`]: [`place`], the planner: sampled candidates, binpack or spread scoring, and
//!   an exhaustive search for small inputs that the greedy pass could not finish.
//! - `world` (private): the resources, ports and per-service counts a plan changes.
//!
//! Architecture invariant: this crate does no IO and knows nothing of Raft, gRPC or
//! RocksDB, and reads no clock: the same input and seed give the same plan. coord turns
//! its registry and task records into an [`Input`] and commits the [`Plan`] it gets back.

pub mod constraint;
pub mod plan;
mod world;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use constraint::{Constraint, ConstraintError, Field, Operator};
pub use plan::place;

/// An agent's node id, as the registry numbers it.
pub type AgentId = u64;

/// Scalar resources. CPU in thousandths of a core, as the registry counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpus_milli: u64,
    pub mem_mb: u64,
    pub disk_mb: u64,
}

impl Resources {
    pub fn saturating_sub(self, o: Resources) -> Resources {
        Resources {
            cpus_milli: self.cpus_milli.saturating_sub(o.cpus_milli),
            mem_mb: self.mem_mb.saturating_sub(o.mem_mb),
            disk_mb: self.disk_mb.saturating_sub(o.disk_mb),
        }
    }

    pub fn saturating_add(self, o: Resources) -> Resources {
        Resources {
            cpus_milli: self.cpus_milli.saturating_add(o.cpus_milli),
            mem_mb: self.mem_mb.saturating_add(o.mem_mb),
            disk_mb: self.disk_mb.saturating_add(o.disk_mb),
        }
    }

    /// Whether `self` fits into `free`.
    pub fn fits(&self, free: &Resources) -> bool {
        self.cpus_milli <= free.cpus_milli && self.mem_mb <= free.mem_mb && self.disk_mb <= free.disk_mb
    }
}

/// Whether an agent may receive work. Only `Active` agents that are not draining do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentState {
    Active,
    /// Recorded, but its agent has not connected yet.
    Registered,
    Unreachable,
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub id: AgentId,
    /// The host part of its advertised address, or the node's `--hostname`.
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub total: Resources,
    /// What the tasks already running on it leave.
    pub free: Resources,
    /// Sorted, non-overlapping, inclusive.
    pub port_ranges: Vec<(u16, u16)>,
    /// Ports the tasks already running on it hold.
    pub used_ports: BTreeSet<u16>,
    pub state: AgentState,
    pub draining: bool,
}

/// A task already running (or assigned): it counts for its service's constraints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub service: String,
    pub agent: AgentId,
}

/// How to choose among the agents a task fits on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Fill agents up: the fullest agent that fits wins (Nomad's default score).
    #[default]
    Binpack,
    /// The agent with the fewest tasks of this service wins, then the emptiest.
    Spread,
}

impl Strategy {
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Binpack => "binpack",
            Strategy::Spread => "spread",
        }
    }
}

/// Identical tasks of one service: one spec, several task ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskGroup {
    pub service: String,
    pub task_ids: Vec<String>,
    pub resources: Resources,
    /// One entry per port the task needs: 0 for any port of the agent's ranges, otherwise
    /// that port.
    pub ports: Vec<u16>,
    pub constraints: Vec<Constraint>,
    pub strategy: Strategy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    pub agents: Vec<Agent>,
    pub running: Vec<Running>,
    /// Placed in order, each group's tasks in order.
    pub groups: Vec<TaskGroup>,
    pub seed: u64,
    /// How many feasible agents to score per task. `None` is Nomad's rule,
    /// max(2, ⌈log2 n⌉) of the n candidates.
    pub sample_size: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub task_id: String,
    pub agent: AgentId,
    /// In the order the task asked for them.
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    pub task_id: String,
    /// Why no agent took it, counted over all agents, e.g. "3 agents lack memory,
    /// 2 agents fail hostname:UNIQUE".
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// In the order of the input's tasks.
    pub placements: Vec<Placement>,
    pub unplaced: Vec<Unplaced>,
}
