//! Services, their versions, deployments and tasks, as one state-machine area.
//!
//! Everything the scheduler relies on is here, in the log, so a new leader rebuilds its
//! view by reading the applied state (Marathon #1553, Chronos #411: a leader that acted
//! on its own memory killed or doubled tasks). The leader's loop ([`crate::scheduler`])
//! decides and proposes; apply only checks and records:
//! - users' changes (`Put`, `Scale`, `Restart`, `Remove`, `CancelDeployment`) make a new
//!   version and a deployment; one deployment per service at a time;
//! - `Launch` creates tasks with ids derived from the log (`<service>.<n>`, n from one
//!   counter) and, in the same entry, their overlay addresses, so a task never has an
//!   agent without an address;
//! - `Kill`, `Lost` and agents' status `Update`s move tasks forward only; the entry that
//!   ends a task releases its address into IPAM's quarantine and, for a failed or
//!   finished task of the current version, grows the service's launch backoff.
//!
//! Store keys (all under `s/`): `s/m` (counters), `s/a/<id>` (service), `s/v/<id>\0<ver>`
//! (the spec of each kept version), `s/t/<task id>` (task), `s/d/<deployment id>`.

// State-machine code: deterministic on every member (see coord/clippy.toml).
#![deny(clippy::disallowed_types, clippy::disallowed_methods)]

pub mod marathon;
pub mod spec;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use spec::ServiceSpec;

use crate::ipam::{Ipam, IpamCommand, IpamOutput, IpamStore};
use crate::types::NodeId;

pub type TaskId = String;

/// Ended tasks kept per service for `task ls` and the HTTP face; older ones are dropped.
pub const ENDED_KEPT: usize = 20;
/// Versions kept per service besides those that tasks still run (Marathon keeps all;
/// we bound it).
pub const VERSIONS_KEPT: usize = 20;
pub const MAX_REASON_BYTES: usize = 1024;
pub const MAX_BATCH: usize = 10_000;

/// Declared in lifecycle order: the live states (staging → starting → running → killing)
/// compare as they may follow one another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskState {
    /// Assigned and addressed; the agent has not started it yet.
    Staging,
    /// The agent is starting it.
    Starting,
    Running,
    /// The leader asked for it to stop.
    Killing,
    Finished,
    Failed,
    Killed,
    /// Its agent went down, or lost it.
    Lost,
}

impl TaskState {
    pub fn is_terminal(&self) -> bool {
        matches!(self, TaskState::Finished | TaskState::Failed | TaskState::Killed | TaskState::Lost)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            TaskState::Staging => "staging",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Killing => "killing",
            TaskState::Finished => "finished",
            TaskState::Failed => "failed",
            TaskState::Killed => "killed",
            TaskState::Lost => "lost",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub service: String,
    /// The config version it runs.
    pub version: u64,
    pub agent: NodeId,
    pub host: String,
    pub ports: Vec<u16>,
    pub network: Option<String>,
    pub ip: Option<IpAddr>,
    pub state: TaskState,
    /// Health as the agent last reported it; `None` before the first result (or
    /// without health checks).
    pub healthy: Option<bool>,
    /// Why it is killing or ended.
    pub reason: String,
    pub exit_code: Option<i32>,
    /// Set when the leader asked for the kill: an end then counts as killed for backoff.
    pub kill_requested: bool,
    pub staged_ms: u64,
    /// First reported running; 0 before.
    pub started_ms: u64,
    pub ended_ms: u64,
    pub updated_ms: u64,
}

impl Task {
    /// State as users read it: running tasks with a health result show it.
    pub fn display_state(&self) -> &'static str {
        match (self.state, self.healthy) {
            (TaskState::Running, Some(true)) => "healthy",
            (TaskState::Running, Some(false)) => "unhealthy",
            (s, _) => s.as_str(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    /// The config version new tasks run (its spec is in the versions).
    pub version: u64,
    /// Versions are numbered per service from 1; the next one.
    pub next_version: u64,
    /// Target instance count (a scale changes it without a new config version).
    pub instances: u32,
    pub created_ms: u64,
    pub version_ms: u64,
    pub scaled_ms: u64,
    pub deployment: Option<u64>,
    /// Launch backoff: the current delay (0: none) and no launch before `delay_until_ms`
    /// (leader time).
    pub delay_ms: u64,
    pub delay_until_ms: u64,
    /// Removed by a user: its tasks are being killed; the record goes with the last one.
    pub deleting: bool,
    /// Ended tasks kept, oldest first.
    pub ended: VecDeque<TaskId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeploymentKind {
    Create,
    Update,
    Scale,
    Restart,
    Remove,
    Rollback,
}

impl DeploymentKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeploymentKind::Create => "create",
            DeploymentKind::Update => "update",
            DeploymentKind::Scale => "scale",
            DeploymentKind::Restart => "restart",
            DeploymentKind::Remove => "remove",
            DeploymentKind::Rollback => "rollback",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: u64,
    pub service: String,
    pub kind: DeploymentKind,
    /// `None` for a create.
    pub from_version: Option<u64>,
    pub from_instances: u32,
    pub to_version: u64,
    pub to_instances: u32,
    pub started_ms: u64,
}

/// One task the leader placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchTask {
    pub service: String,
    pub version: u64,
    pub agent: NodeId,
    pub host: String,
    pub ports: Vec<u16>,
}

/// What an agent reports about one of its tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskUpdate {
    pub task_id: TaskId,
    pub agent: NodeId,
    pub state: TaskState,
    pub healthy: Option<bool>,
    pub reason: String,
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceCommand {
    /// Create (`create`: the id must be new) or update (it must exist). A change while a
    /// deployment runs is refused unless `force`, which replaces that deployment.
    Put {
        spec: Box<ServiceSpec>,
        create: bool,
        force: bool,
    },
    Scale {
        id: String,
        instances: u32,
        force: bool,
    },
    /// A new config version equal to the current one: every task is replaced.
    Restart {
        id: String,
        force: bool,
    },
    Remove {
        id: String,
    },
    /// `rollback`: back to the deployment's old version and count (a rolled-back create
    /// removes the service); otherwise the deployment just stops where it is.
    CancelDeployment {
        id: u64,
        rollback: bool,
    },
    /// The leader: a deployment reached its target.
    DeploymentDone {
        id: u64,
    },
    /// The leader's placements, one entry per batch.
    Launch {
        tasks: Vec<LaunchTask>,
    },
    /// The leader: stop these tasks.
    Kill {
        tasks: Vec<(TaskId, String)>,
    },
    /// The leader: these tasks' agent is down (after the registry's grace), if they are
    /// still on it and running.
    Lost {
        agent: NodeId,
        tasks: Vec<TaskId>,
        reason: String,
    },
    /// Agents' status updates; idempotent, forward-only.
    Update {
        updates: Vec<TaskUpdate>,
    },
    /// Several agents' reports in one entry (the leader coalesces the reports that
    /// arrive together), applied in order as `Update` is, one count each; and, unlike
    /// `Update`, a report that a task declared lost has ended on its agent (a copy left
    /// running while the agent was cut off, killed on its return) is recorded once: in
    /// the task's reason and as a registry event (see `take_stale_kills`).
    Reports {
        reports: Vec<Vec<TaskUpdate>>,
    },
}

impl ServiceCommand {
    pub fn name(&self) -> &'static str {
        match self {
            ServiceCommand::Put { create: true, .. } => "service_create",
            ServiceCommand::Put { .. } => "service_update",
            ServiceCommand::Scale { .. } => "service_scale",
            ServiceCommand::Restart { .. } => "service_restart",
            ServiceCommand::Remove { .. } => "service_remove",
            ServiceCommand::CancelDeployment { .. } => "deployment_cancel",
            ServiceCommand::DeploymentDone { .. } => "deployment_done",
            ServiceCommand::Launch { .. } => "task_launch",
            ServiceCommand::Kill { .. } => "task_kill",
            ServiceCommand::Lost { .. } => "task_lost",
            ServiceCommand::Update { .. } | ServiceCommand::Reports { .. } => "task_update",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServicesOutput {
    /// The service's version after the change and the deployment it started, if any.
    Changed { id: String, version: u64, deployment: Option<u64> },
    /// Per launched task, in order: its id and address, or why not.
    Launched(Vec<std::result::Result<(TaskId, Option<IpAddr>), String>>),
    /// How many tasks changed.
    Count(u32),
    /// How many tasks each report of a `Reports` entry changed, in order.
    Counts(Vec<u32>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ServicesError {
    #[error("{0}")]
    Invalid(String),
    #[error("service {0:?} not found")]
    NotFound(String),
    #[error("service {0:?} already exists")]
    Exists(String),
    #[error("service {id:?} is locked by deployment {deployment}; wait for it, cancel it, or use --force")]
    Locked { id: String, deployment: u64 },
    #[error("service {0:?} is being removed")]
    Deleting(String),
    #[error("deployment {0} not found")]
    DeploymentNotFound(u64),
    #[error("storage error: {0}")]
    Storage(String),
}

type Result<T> = std::result::Result<T, ServicesError>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    next_task: u64,
    next_deployment: u64,
}

#[derive(Debug, Default)]
struct Dirty {
    meta: bool,
    services: BTreeSet<String>,
    versions: BTreeSet<(String, u64)>,
    tasks: BTreeSet<TaskId>,
    deployments: BTreeSet<u64>,
}

#[derive(Debug, Default)]
pub struct Services {
    meta: Meta,
    services: BTreeMap<String, Service>,
    versions: BTreeMap<(String, u64), ServiceSpec>,
    tasks: BTreeMap<TaskId, Task>,
    deployments: BTreeMap<u64, Deployment>,
    /// Derived: the tasks not ended, by agent and by service.
    by_agent: BTreeMap<NodeId, BTreeSet<TaskId>>,
    by_service: BTreeMap<String, BTreeSet<TaskId>>,
    dirty: Dirty,
    /// Stale copies recorded by the entry being applied; drained by the state machine
    /// into registry events, never persisted here.
    stale_kills: Vec<(NodeId, TaskId, String)>,
    /// Job tasks ended by the entry being applied; drained by the state machine into the
    /// jobs area in the same entry, never persisted here.
    job_ends: Vec<crate::jobs::EndedTask>,
    /// In memory only, never applied from nor snapshotted: which agents' tasks changed,
    /// so that each assignment stream wakes for its own agent only.
    touched: Touched,
}

/// Agent → the step (a count of `take_changes` calls that changed some task) at which its
/// tasks last changed. `epoch` tells this instance from one loaded later.
#[derive(Debug, Default)]
struct Touched {
    epoch: u64,
    step: u64,
    agents: BTreeMap<NodeId, u64>,
}

/// Tells apart the Services instances one process loads (each restart or snapshot
/// install makes a new one).
static LOAD_EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// What changed for assignment streams since a [`Services::touched_since`] mark.
#[derive(Debug, PartialEq, Eq)]
pub enum AgentsTouched {
    /// These agents' tasks changed.
    Agents(Vec<NodeId>),
    /// Another instance (reloaded): any agent may have changed.
    All,
}

pub mod keys {
    pub const PREFIX: &[u8] = b"s/";
    pub const META: &[u8] = b"s/m";
    pub const SERVICE: &[u8] = b"s/a/";
    pub const VERSION: &[u8] = b"s/v/";
    pub const TASK: &[u8] = b"s/t/";
    pub const DEPLOYMENT: &[u8] = b"s/d/";

    pub fn service(id: &str) -> Vec<u8> {
        [SERVICE, id.as_bytes()].concat()
    }

    pub fn version(id: &str, v: u64) -> Vec<u8> {
        [VERSION, id.as_bytes(), b"\0", &v.to_be_bytes()].concat()
    }

    pub fn task(id: &str) -> Vec<u8> {
        [TASK, id.as_bytes()].concat()
    }

    pub fn deployment(id: u64) -> Vec<u8> {
        [DEPLOYMENT, &id.to_be_bytes()[..]].concat()
    }
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    crate::codec::encode(v).expect("services records encode")
}

/// Ends a lost task's reason once its agent killed the copy that kept running.
pub const STALE_COPY_MARK: &str = "its agent came back and killed the copy left running";

pub(crate) fn clip(reason: &str) -> String {
    let mut end = reason.len().min(MAX_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

impl Services {
    // ---- reads ----

    pub fn service(&self, id: &str) -> Option<&Service> {
        self.services.get(id)
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    pub fn spec(&self, id: &str, version: u64) -> Option<&ServiceSpec> {
        self.versions.get(&(id.to_string(), version))
    }

    /// The service's current spec, with its current instance count.
    pub fn current_spec(&self, id: &str) -> Option<ServiceSpec> {
        let s = self.services.get(id)?;
        let mut spec = self.spec(id, s.version)?.clone();
        spec.instances = s.instances;
        Some(spec)
    }

    /// Kept versions of a service, oldest first.
    pub fn versions_of(&self, id: &str) -> Vec<(u64, &ServiceSpec)> {
        self.versions.range((id.to_string(), 0)..=(id.to_string(), u64::MAX)).map(|((_, v), s)| (*v, s)).collect()
    }

    /// Tasks ever launched (the counter task ids are made from): replicated, so its
    /// rate is the placement rate whichever master is asked.
    pub fn tasks_launched(&self) -> u64 {
        self.meta.next_task
    }

    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.get(id)
    }

    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }

    /// The service's tasks that have not ended.
    pub fn active_tasks_of<'a>(&'a self, service: &str) -> impl Iterator<Item = &'a Task> + 'a {
        self.by_service.get(service).into_iter().flatten().filter_map(|t| self.tasks.get(t))
    }

    /// Running and passing: with health checks, the last result was a pass; without,
    /// nothing reported a failure. The scheduler's rolls and the deployment progress
    /// shown to users both count with this.
    pub fn is_healthy(&self, t: &Task) -> bool {
        let checks = self.spec(&t.service, t.version).is_some_and(|s| !s.health_checks.is_empty());
        t.state == TaskState::Running && if checks { t.healthy == Some(true) } else { t.healthy != Some(false) }
    }

    /// Every task of the service, ended ones included.
    pub fn all_tasks_of<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks.values().filter(move |t| t.service == service)
    }

    /// The tasks not ended on `agent`.
    pub fn tasks_on<'a>(&'a self, agent: NodeId) -> impl Iterator<Item = &'a Task> + 'a {
        self.by_agent.get(&agent).into_iter().flatten().filter_map(|t| self.tasks.get(t))
    }

    /// Agents with tasks not ended.
    pub fn agents_with_tasks(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.by_agent.keys().copied()
    }

    pub fn deployments(&self) -> impl Iterator<Item = &Deployment> {
        self.deployments.values()
    }

    pub fn deployment(&self, id: u64) -> Option<&Deployment> {
        self.deployments.get(&id)
    }

    // ---- apply ----

    pub fn apply(
        &mut self,
        now_ms: u64,
        cmd: &ServiceCommand,
        ipam: &mut Ipam,
        store: &mut dyn IpamStore,
    ) -> Result<ServicesOutput> {
        match cmd {
            ServiceCommand::Put { spec, create, force } => self.put(now_ms, spec, *create, *force, ipam),
            ServiceCommand::Scale { id, instances, force } => self.scale(now_ms, id, *instances, *force),
            ServiceCommand::Restart { id, force } => {
                let spec = self.current_spec(id).ok_or_else(|| ServicesError::NotFound(id.clone()))?;
                self.check_unlocked(id, *force)?;
                self.new_version(now_ms, &spec, DeploymentKind::Restart)
            }
            ServiceCommand::Remove { id } => self.remove(now_ms, id),
            ServiceCommand::CancelDeployment { id, rollback } => self.cancel(now_ms, *id, *rollback),
            ServiceCommand::DeploymentDone { id } => {
                let d = self.deployments.remove(id).ok_or(ServicesError::DeploymentNotFound(*id))?;
                self.dirty.deployments.insert(*id);
                if let Some(s) = self.services.get_mut(&d.service) {
                    if s.deployment == Some(*id) {
                        s.deployment = None;
                        self.dirty.services.insert(d.service.clone());
                    }
                }
                self.prune_versions(&d.service);
                Ok(ServicesOutput::Count(1))
            }
            ServiceCommand::Launch { tasks } => self.launch(now_ms, tasks, ipam, store),
            ServiceCommand::Kill { tasks } => {
                if tasks.len() > MAX_BATCH {
                    return Err(ServicesError::Invalid(format!("at most {MAX_BATCH} tasks per entry")));
                }
                let mut n = 0;
                for (id, reason) in tasks {
                    if self.kill(now_ms, id, reason) {
                        n += 1;
                    }
                }
                Ok(ServicesOutput::Count(n))
            }
            ServiceCommand::Lost { agent, tasks, reason } => {
                let mut n = 0;
                for id in tasks {
                    let ok = self.tasks.get(id).is_some_and(|t| t.agent == *agent && !t.state.is_terminal());
                    if ok {
                        self.end(now_ms, id, TaskState::Lost, reason, None, ipam, store)?;
                        n += 1;
                    }
                }
                Ok(ServicesOutput::Count(n))
            }
            ServiceCommand::Update { updates } => {
                if updates.len() > MAX_BATCH {
                    return Err(ServicesError::Invalid(format!("at most {MAX_BATCH} updates per entry")));
                }
                let mut n = 0;
                for u in updates {
                    if self.update(now_ms, u, ipam, store)? {
                        n += 1;
                    }
                }
                Ok(ServicesOutput::Count(n))
            }
            ServiceCommand::Reports { reports } => {
                if reports.iter().map(Vec::len).sum::<usize>() > MAX_BATCH {
                    return Err(ServicesError::Invalid(format!("at most {MAX_BATCH} updates per entry")));
                }
                let mut counts = Vec::with_capacity(reports.len());
                for updates in reports {
                    let mut n = 0;
                    for u in updates {
                        if self.stale_copy_ended(now_ms, u) || self.update(now_ms, u, ipam, store)? {
                            n += 1;
                        }
                    }
                    counts.push(n);
                }
                Ok(ServicesOutput::Counts(counts))
            }
        }
    }

    fn check_unlocked(&self, id: &str, force: bool) -> Result<()> {
        let s = self.services.get(id).ok_or_else(|| ServicesError::NotFound(id.to_string()))?;
        if s.deleting {
            return Err(ServicesError::Deleting(id.to_string()));
        }
        match s.deployment {
            Some(d) if !force => Err(ServicesError::Locked { id: id.to_string(), deployment: d }),
            _ => Ok(()),
        }
    }

    fn put(
        &mut self,
        now_ms: u64,
        spec: &ServiceSpec,
        create: bool,
        force: bool,
        ipam: &Ipam,
    ) -> Result<ServicesOutput> {
        spec.validate().map_err(ServicesError::Invalid)?;
        if let Some(n) = &spec.network {
            if !ipam.networks.contains_key(n) {
                return Err(ServicesError::Invalid(format!("networks: network {n:?} not found")));
            }
        }
        match (self.services.contains_key(&spec.id), create) {
            (true, true) => return Err(ServicesError::Exists(spec.id.clone())),
            (false, false) => return Err(ServicesError::NotFound(spec.id.clone())),
            (false, true) => {
                self.services.insert(
                    spec.id.clone(),
                    Service {
                        id: spec.id.clone(),
                        version: 0,
                        next_version: 1,
                        instances: 0,
                        created_ms: now_ms,
                        version_ms: now_ms,
                        scaled_ms: now_ms,
                        deployment: None,
                        delay_ms: 0,
                        delay_until_ms: 0,
                        deleting: false,
                        ended: VecDeque::new(),
                    },
                );
                return self.new_version(now_ms, spec, DeploymentKind::Create);
            }
            (true, false) => self.check_unlocked(&spec.id, force)?,
        }
        let current = self.current_spec(&spec.id).expect("an existing service has its current spec");
        if current.same_config(spec) {
            return self.scale(now_ms, &spec.id, spec.instances, force);
        }
        self.new_version(now_ms, spec, DeploymentKind::Update)
    }

    /// Records `spec` as the service's next config version and starts a deployment to it.
    fn new_version(&mut self, now_ms: u64, spec: &ServiceSpec, kind: DeploymentKind) -> Result<ServicesOutput> {
        let s = self.services.get_mut(&spec.id).expect("caller checked the service exists");
        let from_version = (s.version != 0).then_some(s.version);
        let from_instances = s.instances;
        let version = s.next_version;
        s.next_version += 1;
        s.version = version;
        s.instances = spec.instances;
        s.version_ms = now_ms;
        s.scaled_ms = now_ms;
        // A new version starts its launches afresh (Marathon resets the delay).
        s.delay_ms = 0;
        s.delay_until_ms = 0;
        self.versions.insert((spec.id.clone(), version), spec.clone());
        self.dirty.versions.insert((spec.id.clone(), version));
        let d = self.start_deployment(now_ms, &spec.id, kind, from_version, from_instances, version, spec.instances);
        self.prune_versions(&spec.id);
        Ok(ServicesOutput::Changed { id: spec.id.clone(), version, deployment: Some(d) })
    }

    #[allow(clippy::too_many_arguments)]
    fn start_deployment(
        &mut self,
        now_ms: u64,
        id: &str,
        kind: DeploymentKind,
        from_version: Option<u64>,
        from_instances: u32,
        to_version: u64,
        to_instances: u32,
    ) -> u64 {
        self.meta.next_deployment += 1;
        self.dirty.meta = true;
        let did = self.meta.next_deployment;
        let s = self.services.get_mut(id).expect("caller checked the service exists");
        // A forced change replaces the running deployment.
        if let Some(old) = s.deployment.replace(did) {
            self.deployments.remove(&old);
            self.dirty.deployments.insert(old);
        }
        self.dirty.services.insert(id.to_string());
        self.deployments.insert(
            did,
            Deployment {
                id: did,
                service: id.to_string(),
                kind,
                from_version,
                from_instances,
                to_version,
                to_instances,
                started_ms: now_ms,
            },
        );
        self.dirty.deployments.insert(did);
        did
    }

    fn scale(&mut self, now_ms: u64, id: &str, instances: u32, force: bool) -> Result<ServicesOutput> {
        if instances > spec::MAX_INSTANCES {
            return Err(ServicesError::Invalid(format!("instances: at most {}", spec::MAX_INSTANCES)));
        }
        self.check_unlocked(id, force)?;
        let s = self.services.get_mut(id).expect("checked");
        let (version, from) = (s.version, s.instances);
        s.instances = instances;
        s.scaled_ms = now_ms;
        let d = self.start_deployment(now_ms, id, DeploymentKind::Scale, Some(version), from, version, instances);
        Ok(ServicesOutput::Changed { id: id.to_string(), version, deployment: Some(d) })
    }

    fn remove(&mut self, now_ms: u64, id: &str) -> Result<ServicesOutput> {
        let s = self.services.get_mut(id).ok_or_else(|| ServicesError::NotFound(id.to_string()))?;
        if s.deleting {
            return Ok(ServicesOutput::Changed { id: id.to_string(), version: s.version, deployment: s.deployment });
        }
        let (version, from) = (s.version, s.instances);
        s.deleting = true;
        s.instances = 0;
        let d = self.start_deployment(now_ms, id, DeploymentKind::Remove, Some(version), from, version, 0);
        let active: Vec<TaskId> = self.by_service.get(id).into_iter().flatten().cloned().collect();
        for t in active {
            self.kill(now_ms, &t, "service removed");
        }
        self.purge_if_done(id);
        Ok(ServicesOutput::Changed { id: id.to_string(), version, deployment: Some(d) })
    }

    fn cancel(&mut self, now_ms: u64, did: u64, rollback: bool) -> Result<ServicesOutput> {
        let d = self.deployments.get(&did).cloned().ok_or(ServicesError::DeploymentNotFound(did))?;
        if !rollback {
            self.deployments.remove(&did);
            self.dirty.deployments.insert(did);
            if let Some(s) = self.services.get_mut(&d.service) {
                s.deployment = None;
                self.dirty.services.insert(d.service.clone());
            }
            return Ok(ServicesOutput::Count(1));
        }
        match d.from_version {
            None => self.remove(now_ms, &d.service),
            Some(v) => {
                let s = self.services.get(&d.service).ok_or_else(|| ServicesError::NotFound(d.service.clone()))?;
                if s.deleting {
                    return Err(ServicesError::Deleting(d.service.clone()));
                }
                let mut spec = self.spec(&d.service, v).cloned().ok_or_else(|| {
                    ServicesError::Invalid(format!("version {v} of {:?} is no longer kept", d.service))
                })?;
                spec.instances = d.from_instances;
                if v == s.version {
                    // A scale: only the count goes back.
                    let s = self.services.get_mut(&d.service).expect("checked");
                    s.instances = d.from_instances;
                    let nd = self.start_deployment(
                        now_ms,
                        &d.service,
                        DeploymentKind::Rollback,
                        Some(v),
                        d.to_instances,
                        v,
                        d.from_instances,
                    );
                    return Ok(ServicesOutput::Changed { id: d.service, version: v, deployment: Some(nd) });
                }
                self.new_version(now_ms, &spec, DeploymentKind::Rollback)
            }
        }
    }

    fn launch(
        &mut self,
        now_ms: u64,
        tasks: &[LaunchTask],
        ipam: &mut Ipam,
        store: &mut dyn IpamStore,
    ) -> Result<ServicesOutput> {
        if tasks.len() > MAX_BATCH {
            return Err(ServicesError::Invalid(format!("at most {MAX_BATCH} tasks per entry")));
        }
        let mut out = Vec::with_capacity(tasks.len());
        // Live tasks per service, counted once per entry and then kept up to date: an
        // entry of 5,000 launches of one service must not count its tasks 5,000 times.
        let mut live_of: BTreeMap<String, usize> = BTreeMap::new();
        for lt in tasks {
            let Some(svc) = self.services.get(&lt.service) else {
                out.push(Err(format!("service {:?} not found", lt.service)));
                continue;
            };
            if svc.deleting {
                out.push(Err(format!("service {:?} is being removed", lt.service)));
                continue;
            }
            let Some(spec) = self.versions.get(&(lt.service.clone(), lt.version)) else {
                out.push(Err(format!("version {} of {:?} is not kept", lt.version, lt.service)));
                continue;
            };
            // A safety net under the scheduler: a launch that a timed-out write already
            // made, proposed again, must not take the service over its ceiling.
            let ceiling =
                svc.instances as usize + svc.instances as usize * spec.upgrade.max_over_permille as usize / 1000;
            let live = match live_of.get(&lt.service) {
                Some(n) => *n,
                None => {
                    let n = self.active_tasks_of(&lt.service).filter(|t| t.state != TaskState::Killing).count();
                    live_of.insert(lt.service.clone(), n);
                    n
                }
            };
            if live >= ceiling.max(svc.instances as usize) {
                out.push(Err(format!("service {:?} already runs {live} tasks, its ceiling", lt.service)));
                continue;
            }
            if lt.ports.len() != spec.ports.len() {
                out.push(Err(format!("{} ports given, the spec has {}", lt.ports.len(), spec.ports.len())));
                continue;
            }
            let id = format!("{}.{}", ServiceSpec::task_prefix(&lt.service), self.meta.next_task + 1);
            let network = spec.network.clone();
            let ip = match &network {
                None => None,
                Some(net) => {
                    let cmd =
                        IpamCommand::Allocate { network: net.clone(), owner: id.clone(), requested: None, node: None };
                    match ipam.apply(now_ms, &cmd, store) {
                        Ok(IpamOutput::Allocated { address, .. }) => Some(address),
                        Ok(_) => unreachable!("Allocate answers Allocated"),
                        Err(crate::ipam::IpamError::Storage(e)) => return Err(ServicesError::Storage(e)),
                        Err(e) => {
                            out.push(Err(format!("no address for the task: {e}")));
                            continue;
                        }
                    }
                }
            };
            self.meta.next_task += 1;
            self.dirty.meta = true;
            self.insert_staged(now_ms, &id, lt, network, ip);
            *live_of.entry(lt.service.clone()).or_default() += 1;
            out.push(Ok((id, ip)));
        }
        Ok(ServicesOutput::Launched(out))
    }

    /// Asks for `id` to stop; its agent kills it and reports the end.
    fn kill(&mut self, now_ms: u64, id: &str, reason: &str) -> bool {
        let Some(t) = self.tasks.get_mut(id) else { return false };
        if t.state.is_terminal() || t.state == TaskState::Killing {
            return false;
        }
        t.state = TaskState::Killing;
        t.kill_requested = true;
        t.reason = clip(reason);
        t.updated_ms = now_ms;
        self.dirty.tasks.insert(id.to_string());
        true
    }

    /// A report that a task the leader declared lost has ended on the agent it was on:
    /// the copy that kept running there was killed. Recorded once (the reason carries
    /// the mark), for [`Services::take_stale_kills`].
    fn stale_copy_ended(&mut self, now_ms: u64, u: &TaskUpdate) -> bool {
        let Some(t) = self.tasks.get_mut(&u.task_id) else { return false };
        if t.agent != u.agent
            || t.state != TaskState::Lost
            || !u.state.is_terminal()
            || u.state == TaskState::Lost
            || t.reason.ends_with(STALE_COPY_MARK)
        {
            return false;
        }
        t.reason = format!("{}; {STALE_COPY_MARK}", clip(&t.reason));
        t.updated_ms = now_ms;
        self.dirty.tasks.insert(u.task_id.clone());
        self.stale_kills.push((u.agent, u.task_id.clone(), clip(&u.reason)));
        true
    }

    /// The stale copies recorded since the last call: (agent, task, the agent's reason).
    pub fn take_stale_kills(&mut self) -> Vec<(NodeId, TaskId, String)> {
        std::mem::take(&mut self.stale_kills)
    }

    fn update(&mut self, now_ms: u64, u: &TaskUpdate, ipam: &mut Ipam, store: &mut dyn IpamStore) -> Result<bool> {
        let Some(t) = self.tasks.get_mut(&u.task_id) else { return Ok(false) };
        // A report from an agent the task is not on (a stale copy after a partition) or
        // about an ended task changes nothing: states only move forward.
        if t.agent != u.agent || t.state.is_terminal() {
            return Ok(false);
        }
        if u.state.is_terminal() {
            let state = if t.kill_requested && u.state != TaskState::Lost { TaskState::Killed } else { u.state };
            let reason = if u.reason.is_empty() && t.kill_requested { t.reason.clone() } else { u.reason.clone() };
            self.end(now_ms, &u.task_id, state, &reason, u.exit_code, ipam, store)?;
            return Ok(true);
        }
        let mut changed = false;
        // Both states are live here, and TaskState's order is their lifecycle order.
        if u.state > t.state && u.state != TaskState::Killing {
            t.state = u.state;
            if u.state == TaskState::Running && t.started_ms == 0 {
                t.started_ms = now_ms;
            }
            changed = true;
        }
        if u.healthy.is_some() && u.healthy != t.healthy && matches!(t.state, TaskState::Running | TaskState::Killing) {
            t.healthy = u.healthy;
            changed = true;
        }
        if changed {
            if !u.reason.is_empty() && !t.kill_requested {
                t.reason = clip(&u.reason);
            }
            t.updated_ms = now_ms;
            self.dirty.tasks.insert(u.task_id.clone());
        }
        Ok(changed)
    }

    /// Ends a task: its address goes to quarantine, and a failure of the current
    /// version that nobody asked for grows the launch backoff.
    #[allow(clippy::too_many_arguments)]
    fn end(
        &mut self,
        now_ms: u64,
        id: &str,
        state: TaskState,
        reason: &str,
        exit_code: Option<i32>,
        ipam: &mut Ipam,
        store: &mut dyn IpamStore,
    ) -> Result<()> {
        let t = self.tasks.get_mut(id).expect("caller checked the task");
        if let Some(net) = &t.network {
            if ipam.networks.contains_key(net) {
                let cmd = IpamCommand::Release { network: net.clone(), owner: Some(id.to_string()), address: None };
                match ipam.apply(now_ms, &cmd, store) {
                    Ok(_) => {}
                    Err(crate::ipam::IpamError::Storage(e)) => return Err(ServicesError::Storage(e)),
                    // Released by hand meanwhile: nothing to give back.
                    Err(_) => {}
                }
            }
        }
        t.state = state;
        t.reason = clip(reason);
        t.exit_code = exit_code;
        t.ended_ms = now_ms;
        t.updated_ms = now_ms;
        let (service, agent, version, asked) = (t.service.clone(), t.agent, t.version, t.kill_requested);
        self.dirty.tasks.insert(id.to_string());
        if let Some(set) = self.by_agent.get_mut(&agent) {
            set.remove(id);
            if set.is_empty() {
                self.by_agent.remove(&agent);
            }
        }
        if let Some(set) = self.by_service.get_mut(&service) {
            set.remove(id);
            if set.is_empty() {
                self.by_service.remove(&service);
            }
        }
        if let Some(s) = self.services.get_mut(&service) {
            if !asked && matches!(state, TaskState::Failed | TaskState::Finished) && version == s.version {
                let b = self.versions.get(&(service.clone(), version)).map(|v| v.backoff);
                if let Some(b) = b {
                    s.delay_ms = if s.delay_ms == 0 {
                        b.initial_ms
                    } else {
                        (s.delay_ms.saturating_mul(u64::from(b.factor_permille)) / 1000).min(b.max_ms)
                    };
                    s.delay_until_ms = now_ms.saturating_add(s.delay_ms);
                }
            }
            s.ended.push_back(id.to_string());
            while s.ended.len() > ENDED_KEPT {
                if let Some(old) = s.ended.pop_front() {
                    self.tasks.remove(&old);
                    self.dirty.tasks.insert(old);
                }
            }
            self.dirty.services.insert(service.clone());
        }
        if crate::jobs::job_of_service(&service).is_some() {
            let newest = self.versions_of(&service).last().map(|(v, _)| *v);
            self.drop_job_versions(&service, newest);
            let t = &self.tasks[id];
            self.job_ends.push(crate::jobs::EndedTask {
                id: id.to_string(),
                state,
                exit_code,
                reason: t.reason.clone(),
            });
        }
        self.prune_versions(&service);
        self.purge_if_done(&service);
        Ok(())
    }

    // ---- for the jobs area (a job's runs are tasks here, under `job:<name>`) ----

    /// Job tasks that ended since the last call.
    pub fn take_job_ends(&mut self) -> Vec<crate::jobs::EndedTask> {
        std::mem::take(&mut self.job_ends)
    }

    /// Records a job's task spec as `version` of task-service `id`; versions no task uses
    /// any more go.
    pub(crate) fn set_job_version(&mut self, id: &str, version: u64, spec: ServiceSpec) {
        self.versions.insert((id.to_string(), version), spec);
        self.dirty.versions.insert((id.to_string(), version));
        self.drop_job_versions(id, Some(version));
    }

    /// Drops a job's task-spec versions that no task not ended runs, but `keep`.
    pub(crate) fn drop_job_versions(&mut self, id: &str, keep: Option<u64>) {
        let used: BTreeSet<u64> = self.active_tasks_of(id).map(|t| t.version).chain(keep).collect();
        let all: Vec<u64> = self.versions_of(id).into_iter().map(|(v, _)| v).collect();
        for v in all.into_iter().filter(|v| !used.contains(v)) {
            self.versions.remove(&(id.to_string(), v));
            self.dirty.versions.insert((id.to_string(), v));
        }
    }

    /// Stops a task (a job's run when its job is removed).
    pub(crate) fn kill_task(&mut self, now_ms: u64, id: &str, reason: &str) -> bool {
        self.kill(now_ms, id, reason)
    }

    /// Forgets an ended task (a job run that left the job's history).
    pub(crate) fn forget_task(&mut self, id: &str) {
        if self.tasks.get(id).is_some_and(|t| t.state.is_terminal()) {
            self.tasks.remove(id);
            self.dirty.tasks.insert(id.to_string());
        }
    }

    /// Creates a job run's task `id` as placed in `lt` (the jobs area checked that the
    /// attempt is due). Job tasks have no overlay address.
    pub(crate) fn launch_job_task(&mut self, now_ms: u64, id: &str, lt: &LaunchTask) -> Result<()> {
        let spec = self
            .versions
            .get(&(lt.service.clone(), lt.version))
            .ok_or_else(|| ServicesError::Invalid(format!("version {} of {:?} is not kept", lt.version, lt.service)))?;
        if lt.ports.len() != spec.ports.len() {
            return Err(ServicesError::Invalid(format!(
                "{} ports given, the spec has {}",
                lt.ports.len(),
                spec.ports.len()
            )));
        }
        if self.tasks.contains_key(id) {
            return Err(ServicesError::Invalid(format!("task {id} exists already")));
        }
        self.insert_staged(now_ms, id, lt, None, None);
        Ok(())
    }

    /// Records task `id` as placed in `lt`, staging, in the tasks and their indexes: a
    /// service's launch and a job run's attempt both start here.
    fn insert_staged(&mut self, now_ms: u64, id: &str, lt: &LaunchTask, network: Option<String>, ip: Option<IpAddr>) {
        let task = Task {
            id: id.to_string(),
            service: lt.service.clone(),
            version: lt.version,
            agent: lt.agent,
            host: lt.host.clone(),
            ports: lt.ports.clone(),
            network,
            ip,
            state: TaskState::Staging,
            healthy: None,
            reason: String::new(),
            exit_code: None,
            kill_requested: false,
            staged_ms: now_ms,
            started_ms: 0,
            ended_ms: 0,
            updated_ms: now_ms,
        };
        self.by_agent.entry(lt.agent).or_default().insert(id.to_string());
        self.by_service.entry(lt.service.clone()).or_default().insert(id.to_string());
        self.tasks.insert(id.to_string(), task);
        self.dirty.tasks.insert(id.to_string());
    }

    /// A removed service goes once its last task has ended.
    fn purge_if_done(&mut self, id: &str) {
        let done = self.services.get(id).is_some_and(|s| s.deleting) && !self.by_service.contains_key(id);
        if !done {
            return;
        }
        let s = self.services.remove(id).expect("checked");
        self.dirty.services.insert(id.to_string());
        for t in s.ended {
            self.tasks.remove(&t);
            self.dirty.tasks.insert(t);
        }
        if let Some(d) = s.deployment {
            self.deployments.remove(&d);
            self.dirty.deployments.insert(d);
        }
        let versions: Vec<u64> = self.versions_of(id).into_iter().map(|(v, _)| v).collect();
        for v in versions {
            self.versions.remove(&(id.to_string(), v));
            self.dirty.versions.insert((id.to_string(), v));
        }
    }

    /// Keeps the versions that the service, its deployment or a task not ended uses, and
    /// the newest others up to [`VERSIONS_KEPT`].
    fn prune_versions(&mut self, id: &str) {
        // A job's versions follow the job (`drop_job_versions`): it has no service record
        // here to say which one is current.
        if crate::jobs::job_of_service(id).is_some() {
            return;
        }
        let kept = self.versions_of(id).len();
        if kept <= VERSIONS_KEPT {
            return;
        }
        let mut used: BTreeSet<u64> = self.active_tasks_of(id).map(|t| t.version).collect();
        if let Some(s) = self.services.get(id) {
            used.insert(s.version);
            if let Some(d) = s.deployment.and_then(|d| self.deployments.get(&d)) {
                used.extend(d.from_version);
                used.insert(d.to_version);
            }
        }
        let mut spare = kept - VERSIONS_KEPT;
        let all: Vec<u64> = self.versions_of(id).into_iter().map(|(v, _)| v).collect();
        for v in all {
            if spare == 0 {
                break;
            }
            if !used.contains(&v) {
                self.versions.remove(&(id.to_string(), v));
                self.dirty.versions.insert((id.to_string(), v));
                spare -= 1;
            }
        }
    }

    // ---- persistence ----

    /// The records the applies since the last call touched: `(key, Some(value))` to
    /// write, `(key, None)` to delete.
    pub fn take_changes(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let d = std::mem::take(&mut self.dirty);
        let agents: BTreeSet<NodeId> = d.tasks.iter().filter_map(|id| self.tasks.get(id)).map(|t| t.agent).collect();
        if !agents.is_empty() {
            self.touched.step += 1;
            for a in agents {
                self.touched.agents.insert(a, self.touched.step);
            }
        }
        let mut out = Vec::new();
        if d.meta {
            out.push((keys::META.to_vec(), Some(enc(&self.meta))));
        }
        for id in d.services {
            out.push((keys::service(&id), self.services.get(&id).map(enc)));
        }
        for (id, v) in d.versions {
            out.push((keys::version(&id, v), self.versions.get(&(id.clone(), v)).map(enc)));
        }
        for id in d.tasks {
            out.push((keys::task(&id), self.tasks.get(&id).map(enc)));
        }
        for id in d.deployments {
            out.push((keys::deployment(id), self.deployments.get(&id).map(enc)));
        }
        out
    }

    /// Every record, as `take_changes` would have written them.
    pub fn records(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = vec![(keys::META.to_vec(), enc(&self.meta))];
        out.extend(self.services.values().map(|s| (keys::service(&s.id), enc(s))));
        out.extend(self.versions.iter().map(|((id, v), s)| (keys::version(id, *v), enc(s))));
        out.extend(self.tasks.values().map(|t| (keys::task(&t.id), enc(t))));
        out.extend(self.deployments.values().map(|d| (keys::deployment(d.id), enc(d))));
        out
    }

    /// Rebuilds the area from its records (any order).
    /// The mark to pass to [`Services::touched_since`] next: (epoch, step).
    pub fn touched_mark(&self) -> (u64, u64) {
        (self.touched.epoch, self.touched.step)
    }

    /// The agents whose tasks changed after `mark` was taken.
    pub fn touched_since(&self, mark: (u64, u64)) -> AgentsTouched {
        if mark.0 != self.touched.epoch {
            return AgentsTouched::All;
        }
        AgentsTouched::Agents(self.touched.agents.iter().filter(|(_, s)| **s > mark.1).map(|(a, _)| *a).collect())
    }

    pub fn load<'a>(records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> std::io::Result<Services> {
        use crate::codec::decode;
        let mut s = Services::default();
        s.touched.epoch = LOAD_EPOCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for (k, v) in records {
            if k == keys::META {
                s.meta = decode(v)?;
            } else if k.starts_with(keys::SERVICE) {
                let svc: Service = decode(v)?;
                s.services.insert(svc.id.clone(), svc);
            } else if k.starts_with(keys::VERSION) {
                let spec: ServiceSpec = decode(v)?;
                let ver = k.len().checked_sub(8).map(|i| u64::from_be_bytes(k[i..].try_into().expect("8 bytes")));
                let ver = ver.ok_or_else(|| std::io::Error::other("corrupt service version key"))?;
                s.versions.insert((spec.id.clone(), ver), spec);
            } else if k.starts_with(keys::TASK) {
                let t: Task = decode(v)?;
                s.tasks.insert(t.id.clone(), t);
            } else if k.starts_with(keys::DEPLOYMENT) {
                let d: Deployment = decode(v)?;
                s.deployments.insert(d.id, d);
            }
        }
        for t in s.tasks.values().filter(|t| !t.state.is_terminal()) {
            s.by_agent.entry(t.agent).or_default().insert(t.id.clone());
            s.by_service.entry(t.service.clone()).or_default().insert(t.id.clone());
        }
        Ok(s)
    }
}
