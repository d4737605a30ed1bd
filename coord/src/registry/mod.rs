//! The master registry inside the state machine: every agent that registered, its
//! resources, labels, liveness state and availability, and the committed sequence of
//! registry events that `Watch` replays.
//!
//! Liveness is decided by the leader (see [`crate::liveness`]) and only its decisions are
//! committed here, as compare-and-set transitions: a transition whose `from` state no
//! longer holds is skipped, so a deposed leader's late proposal changes nothing.
//!
//! Everything here is deterministic: ordered maps, the entry's leader-stamped time, no
//! clock. [`Registry::take_changes`] lists the records an apply touched so the store
//! persists exactly those; [`Registry::records`] and [`Registry::load`] are the full
//! encoding used by snapshots and at startup.

// State-machine code: deterministic on every member (see coord/clippy.toml).
#![deny(clippy::disallowed_types, clippy::disallowed_methods)]

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// Events kept for `Watch` replay; older ones are dropped deterministically.
pub const EVENTS_KEPT: usize = 100_000;
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY_BYTES: usize = 63;
pub const MAX_LABEL_VALUE_BYTES: usize = 255;
pub const MAX_NAME_BYTES: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NodeState {
    /// Recorded, no heartbeat session seen yet.
    Registered,
    Active,
    /// No heartbeat for `unreachable_after_ms`.
    Unreachable,
    /// Unreachable for a further `down_after_ms`.
    Down,
}

impl NodeState {
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeState::Registered => "registered",
            NodeState::Active => "active",
            NodeState::Unreachable => "unreachable",
            NodeState::Down => "down",
        }
    }

    /// Transitions the registry accepts: any state to active (a heartbeat), registered
    /// or active to unreachable, unreachable to down.
    pub fn can_become(&self, to: NodeState) -> bool {
        use NodeState::*;
        matches!(
            (self, to),
            (Registered | Unreachable | Down, Active) | (Registered | Active, Unreachable) | (Unreachable, Down)
        )
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Availability {
    Active,
    /// Keeps its work but receives no new work.
    Drain,
}

impl Availability {
    pub fn as_str(&self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Drain => "drain",
        }
    }

    pub fn parse(s: &str) -> Result<Availability, RegistryError> {
        match s {
            "active" => Ok(Availability::Active),
            "drain" => Ok(Availability::Drain),
            other => Err(RegistryError::Invalid(format!("unknown availability {other:?}: use active or drain"))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Manager,
    Worker,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }

    pub fn parse(s: &str) -> Result<Role, RegistryError> {
        match s {
            "manager" => Ok(Role::Manager),
            "worker" => Ok(Role::Worker),
            other => Err(RegistryError::Invalid(format!("unknown role {other:?}: use manager or worker"))),
        }
    }
}

/// What a node offers: whole units, ports as inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResources {
    pub cpus_milli: u64,
    pub memory_mb: u64,
    pub disk_mb: u64,
    /// Sorted, non-overlapping, inclusive.
    pub ports: Vec<(u16, u16)>,
}

impl NodeResources {
    pub fn validate(&self) -> Result<(), RegistryError> {
        let bad = |m: String| Err(RegistryError::Invalid(m));
        if self.cpus_milli == 0 {
            return bad("resources: cpus must be > 0".into());
        }
        if self.cpus_milli > 1_000_000 {
            return bad(format!("resources: {} cpus is more than 1000", self.cpus_milli as f64 / 1000.0));
        }
        if self.memory_mb == 0 {
            return bad("resources: memory must be > 0 MB".into());
        }
        if self.memory_mb > 1 << 40 || self.disk_mb > 1 << 50 {
            return bad("resources: memory or disk is implausibly large".into());
        }
        let mut prev_end: Option<u16> = None;
        for &(b, e) in &self.ports {
            if b == 0 || b > e {
                return bad(format!("resources: port range {b}-{e} is empty or starts at 0"));
            }
            if prev_end.is_some_and(|p| b <= p) {
                return bad(format!("resources: port range {b}-{e} overlaps or is out of order"));
            }
            prev_end = Some(e);
        }
        if self.ports.len() > 256 {
            return bad("resources: more than 256 port ranges".into());
        }
        Ok(())
    }
}

/// Checks label keys and values: `[A-Za-z0-9._/-]` keys starting and ending with an
/// alphanumeric, printable values, bounded sizes.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), RegistryError> {
    let bad = |m: String| Err(RegistryError::Invalid(m));
    if labels.len() > MAX_LABELS {
        return bad(format!("at most {MAX_LABELS} labels"));
    }
    for (k, v) in labels {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-');
        let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        if k.is_empty()
            || k.len() > MAX_LABEL_KEY_BYTES
            || !k.chars().all(ok_char)
            || !edge(k.chars().next())
            || !edge(k.chars().last())
        {
            return bad(format!(
                "label key {k:?}: 1-{MAX_LABEL_KEY_BYTES} characters of [A-Za-z0-9._/-], starting and ending with a letter or digit"
            ));
        }
        if v.len() > MAX_LABEL_VALUE_BYTES || v.chars().any(|c| c.is_control()) {
            return bad(format!(
                "label {k}: value must be at most {MAX_LABEL_VALUE_BYTES} bytes without control characters"
            ));
        }
    }
    Ok(())
}

/// A registration as the leader proposes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub node_id: NodeId,
    /// SHA-256 (hex) of the agent's secret: the log never carries the secret itself.
    pub secret_hash: String,
    pub name: String,
    pub addr: String,
    pub role: Role,
    pub resources: NodeResources,
    pub labels: BTreeMap<String, String>,
}

impl Registration {
    pub fn validate(&self) -> Result<(), RegistryError> {
        if self.node_id == 0 {
            return Err(RegistryError::Invalid("node id 0 is not a node".into()));
        }
        if self.secret_hash.len() != 64 {
            return Err(RegistryError::Invalid("node secret missing".into()));
        }
        if self.name.is_empty() || self.name.len() > MAX_NAME_BYTES {
            return Err(RegistryError::Invalid(format!("node name must be 1-{MAX_NAME_BYTES} bytes")));
        }
        self.resources.validate()?;
        validate_labels(&self.labels)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: NodeId,
    pub secret_hash: String,
    pub name: String,
    pub addr: String,
    pub role: Role,
    pub resources: NodeResources,
    pub labels: BTreeMap<String, String>,
    pub state: NodeState,
    pub availability: Availability,
    pub registered_at_ms: u64,
    pub state_since_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub node_id: NodeId,
    pub from: NodeState,
    pub to: NodeState,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Registered,
    Updated,
    State {
        from: NodeState,
        to: NodeState,
        reason: String,
    },
    Availability(Availability),
    Removed,
    /// The agent came back running a copy of a task that had been replaced (declared
    /// lost while it was away), and killed it.
    StaleTaskKilled {
        task: String,
        reason: String,
    },
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Registered => "registered",
            EventKind::Updated => "updated",
            EventKind::State { .. } => "state",
            EventKind::Availability(_) => "availability",
            EventKind::Removed => "removed",
            EventKind::StaleTaskKilled { .. } => "stale_task_killed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub index: u64,
    pub time_ms: u64,
    pub node_id: NodeId,
    pub kind: EventKind,
}

/// The registry's commands, one variant of the Raft log's `Command`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RegistryCommand {
    Register(Registration),
    /// Liveness decisions of the leader of `term`, batched; each applies only if `from`
    /// holds, and none applies from an entry of another term (a decision made in one
    /// leadership must not land in a later one, whose grace period it did not honour).
    Transitions {
        term: u64,
        transitions: Vec<Transition>,
    },
    SetAvailability {
        node_id: NodeId,
        availability: Availability,
    },
    Remove {
        node_id: NodeId,
        force: bool,
    },
}

impl RegistryCommand {
    pub fn name(&self) -> &'static str {
        match self {
            RegistryCommand::Register(_) => "register",
            RegistryCommand::Transitions { .. } => "transitions",
            RegistryCommand::SetAvailability { .. } => "set_availability",
            RegistryCommand::Remove { .. } => "remove_node",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RegistryOutput {
    Node(Box<NodeRecord>),
    /// How many of the proposed transitions applied.
    Transitions(u32),
    Removed,
}

/// Deterministic refusals of registry commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(String),
    #[error("node {0} is not registered")]
    UnknownNode(NodeId),
    #[error("node id {0} was never handed out by this cluster; join with a token first")]
    NeverJoined(NodeId),
    #[error("node {0} was removed from the cluster; join again with a token to come back")]
    Removed(NodeId),
    #[error("node id {0} is registered by another node (the node secret differs)")]
    IdTaken(NodeId),
    #[error("node {0} is {1}; drain and stop it first, or remove it with --force")]
    StillActive(NodeId, NodeState),
}

/// A change the store must persist: `Some` writes the record, `None` deletes it.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

#[derive(Debug, Clone, Default)]
struct Dirty {
    nodes: BTreeSet<NodeId>,
    removed: BTreeSet<NodeId>,
    events_added: Vec<u64>,
    events_dropped: Vec<u64>,
    counter: bool,
}

#[derive(Debug, Clone)]
pub struct Registry {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// Ids removed by an operator: never registered again.
    pub removed: BTreeSet<NodeId>,
    /// The retained tail of the event sequence, oldest first.
    pub events: VecDeque<Event>,
    /// Index the next event gets; the first event is 1.
    pub next_event: u64,
    events_kept: usize,
    dirty: Dirty,
}

impl PartialEq for Registry {
    fn eq(&self, o: &Registry) -> bool {
        self.nodes == o.nodes && self.removed == o.removed && self.events == o.events && self.next_event == o.next_event
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::with_retention(EVENTS_KEPT)
    }
}

/// Key layout inside the state machine's column family (prefix `g/`).
pub mod keys {
    pub const COUNTER: &[u8] = b"g/c";
    pub const NODE: &[u8] = b"g/n/";
    pub const REMOVED: &[u8] = b"g/x/";
    pub const EVENT: &[u8] = b"g/e/";
    pub const PREFIX: &[u8] = b"g/";

    pub fn with_id(prefix: &[u8], id: u64) -> Vec<u8> {
        let mut k = prefix.to_vec();
        k.extend_from_slice(&id.to_be_bytes());
        k
    }
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    crate::codec::encode(v).expect("registry records encode")
}

impl Registry {
    /// A registry that keeps `events_kept` events (tests use small numbers).
    pub fn with_retention(events_kept: usize) -> Registry {
        Registry {
            nodes: BTreeMap::new(),
            removed: BTreeSet::new(),
            events: VecDeque::new(),
            next_event: 1,
            events_kept: events_kept.max(1),
            dirty: Dirty::default(),
        }
    }

    /// Sets how many events are retained (tests; every member uses [`EVENTS_KEPT`]).
    pub fn set_events_kept(&mut self, n: usize) {
        self.events_kept = n.max(1);
    }

    pub fn last_event_index(&self) -> u64 {
        self.next_event - 1
    }

    /// Index of the oldest event still retained (`next_event` when none is).
    pub fn first_retained_index(&self) -> u64 {
        self.events.front().map(|e| e.index).unwrap_or(self.next_event)
    }

    /// Records that `node` killed its stale copy of `task` (see `Services`).
    pub fn record_stale_task_killed(&mut self, time_ms: u64, node: NodeId, task: String, reason: String) {
        self.push_event(time_ms, node, EventKind::StaleTaskKilled { task, reason });
    }

    fn push_event(&mut self, time_ms: u64, node_id: NodeId, kind: EventKind) {
        let index = self.next_event;
        self.next_event += 1;
        self.dirty.counter = true;
        self.events.push_back(Event { index, time_ms, node_id, kind });
        self.dirty.events_added.push(index);
        while self.events.len() > self.events_kept {
            let old = self.events.pop_front().expect("non-empty");
            self.dirty.events_dropped.push(old.index);
        }
    }

    /// Applies one command from an entry of `entry_term` stamped `time_ms`.
    /// `next_node_id` is the cluster's id counter: an id at or above it was never handed
    /// out. A refused command changes nothing.
    pub fn apply(
        &mut self,
        entry_term: u64,
        time_ms: u64,
        next_node_id: u64,
        cmd: &RegistryCommand,
    ) -> Result<RegistryOutput, RegistryError> {
        match cmd {
            RegistryCommand::Register(r) => self.register(time_ms, next_node_id, r),
            RegistryCommand::Transitions { term, .. } if *term != entry_term => Ok(RegistryOutput::Transitions(0)),
            RegistryCommand::Transitions { transitions, .. } => {
                let mut applied = 0;
                for t in transitions {
                    let Some(n) = self.nodes.get_mut(&t.node_id) else { continue };
                    if n.state != t.from || !t.from.can_become(t.to) {
                        continue;
                    }
                    n.state = t.to;
                    n.state_since_ms = time_ms;
                    self.dirty.nodes.insert(t.node_id);
                    let kind = EventKind::State { from: t.from, to: t.to, reason: t.reason.clone() };
                    self.push_event(time_ms, t.node_id, kind);
                    applied += 1;
                }
                Ok(RegistryOutput::Transitions(applied))
            }
            RegistryCommand::SetAvailability { node_id, availability } => {
                let n = self.nodes.get_mut(node_id).ok_or(RegistryError::UnknownNode(*node_id))?;
                if n.availability != *availability {
                    n.availability = *availability;
                    self.dirty.nodes.insert(*node_id);
                    self.push_event(time_ms, *node_id, EventKind::Availability(*availability));
                }
                Ok(RegistryOutput::Node(Box::new(self.nodes[node_id].clone())))
            }
            RegistryCommand::Remove { node_id, force } => {
                let n = self.nodes.get(node_id).ok_or(RegistryError::UnknownNode(*node_id))?;
                if n.state == NodeState::Active && !force {
                    return Err(RegistryError::StillActive(*node_id, n.state));
                }
                self.nodes.remove(node_id);
                self.removed.insert(*node_id);
                self.dirty.nodes.insert(*node_id);
                self.dirty.removed.insert(*node_id);
                self.push_event(time_ms, *node_id, EventKind::Removed);
                Ok(RegistryOutput::Removed)
            }
        }
    }

    fn register(&mut self, time_ms: u64, next_node_id: u64, r: &Registration) -> Result<RegistryOutput, RegistryError> {
        r.validate()?;
        if r.node_id >= next_node_id {
            return Err(RegistryError::NeverJoined(r.node_id));
        }
        if self.removed.contains(&r.node_id) {
            return Err(RegistryError::Removed(r.node_id));
        }
        let kind = match self.nodes.get_mut(&r.node_id) {
            Some(n) if n.secret_hash != r.secret_hash => return Err(RegistryError::IdTaken(r.node_id)),
            Some(n) => {
                let same = n.name == r.name
                    && n.addr == r.addr
                    && n.role == r.role
                    && n.resources == r.resources
                    && n.labels == r.labels;
                if same {
                    return Ok(RegistryOutput::Node(Box::new(n.clone())));
                }
                n.name = r.name.clone();
                n.addr = r.addr.clone();
                n.role = r.role;
                n.resources = r.resources.clone();
                n.labels = r.labels.clone();
                EventKind::Updated
            }
            None => {
                self.nodes.insert(
                    r.node_id,
                    NodeRecord {
                        node_id: r.node_id,
                        secret_hash: r.secret_hash.clone(),
                        name: r.name.clone(),
                        addr: r.addr.clone(),
                        role: r.role,
                        resources: r.resources.clone(),
                        labels: r.labels.clone(),
                        state: NodeState::Registered,
                        availability: Availability::Active,
                        registered_at_ms: time_ms,
                        state_since_ms: time_ms,
                    },
                );
                EventKind::Registered
            }
        };
        self.dirty.nodes.insert(r.node_id);
        self.push_event(time_ms, r.node_id, kind);
        Ok(RegistryOutput::Node(Box::new(self.nodes[&r.node_id].clone())))
    }

    /// True when applying `r` would change nothing (the leader then skips the write).
    pub fn is_unchanged(&self, r: &Registration) -> bool {
        self.nodes.get(&r.node_id).is_some_and(|n| {
            n.secret_hash == r.secret_hash
                && n.name == r.name
                && n.addr == r.addr
                && n.role == r.role
                && n.resources == r.resources
                && n.labels == r.labels
        })
    }

    /// The records touched since the last call, as key/value changes to persist.
    pub fn take_changes(&mut self) -> Vec<Change> {
        let d = std::mem::take(&mut self.dirty);
        let mut out = Vec::new();
        for id in d.nodes {
            let k = keys::with_id(keys::NODE, id);
            out.push((k, self.nodes.get(&id).map(enc)));
        }
        for id in d.removed {
            out.push((keys::with_id(keys::REMOVED, id), Some(Vec::new())));
        }
        // An event added and dropped by the same batch is deleted, never written.
        let added: BTreeSet<u64> = d.events_added.into_iter().collect();
        for i in d.events_dropped {
            out.push((keys::with_id(keys::EVENT, i), None));
        }
        for e in self.events.iter().filter(|e| added.contains(&e.index)) {
            out.push((keys::with_id(keys::EVENT, e.index), Some(enc(e))));
        }
        if d.counter {
            out.push((keys::COUNTER.to_vec(), Some(self.next_event.to_be_bytes().to_vec())));
        }
        out
    }

    /// True when some apply left changes that `take_changes` has not returned yet.
    pub fn has_changes(&self) -> bool {
        let d = &self.dirty;
        d.counter || !d.nodes.is_empty() || !d.removed.is_empty() || !d.events_dropped.is_empty()
    }

    /// Every record, as the store holds them (ascending key order).
    pub fn records(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = vec![(keys::COUNTER.to_vec(), self.next_event.to_be_bytes().to_vec())];
        for e in &self.events {
            out.push((keys::with_id(keys::EVENT, e.index), enc(e)));
        }
        for (id, n) in &self.nodes {
            out.push((keys::with_id(keys::NODE, *id), enc(n)));
        }
        for id in &self.removed {
            out.push((keys::with_id(keys::REMOVED, *id), Vec::new()));
        }
        out.sort();
        out
    }

    /// Rebuilds a registry from its records (any key outside `g/` is ignored).
    pub fn load<'a>(records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> std::io::Result<Registry> {
        use crate::codec::decode;
        let corrupt =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("corrupt registry {what}"));
        let id_of = |k: &[u8], p: &[u8]| -> std::io::Result<u64> {
            let b: [u8; 8] = k[p.len()..].try_into().map_err(|_| corrupt("key"))?;
            Ok(u64::from_be_bytes(b))
        };
        let mut r = Registry::default();
        for (k, v) in records {
            if k == keys::COUNTER {
                r.next_event = u64::from_be_bytes(v.try_into().map_err(|_| corrupt("counter"))?);
            } else if k.starts_with(keys::NODE) {
                let n: NodeRecord = decode(v)?;
                if n.node_id != id_of(k, keys::NODE)? {
                    return Err(corrupt("node key"));
                }
                r.nodes.insert(n.node_id, n);
            } else if k.starts_with(keys::REMOVED) {
                r.removed.insert(id_of(k, keys::REMOVED)?);
            } else if k.starts_with(keys::EVENT) {
                r.events.push_back(decode(v)?);
            }
        }
        r.events.make_contiguous().sort_by_key(|e| e.index);
        Ok(r)
    }
}
