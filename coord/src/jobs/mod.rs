//! Jobs (Chronos): commands that run on a schedule or after their parents, as one
//! state-machine area.
//!
//! Every decision about a run is an entry in the log, so a leader change can neither
//! run an instant twice nor lose one (Chronos #371: runs doubled after an election; #411
//! and #818: running tasks kept in memory; #811: dependency state lost):
//! - a run is keyed by (job, scheduled instant). The leader's `Tick` entry decides every
//!   instant that is due at the entry's time, once: it runs, or it is recorded as
//!   skipped with the reason (missed by more than `epsilon`, covered by a catch-up run,
//!   or a run still going when `concurrent` is false). The job's next instant moves past
//!   it in the same entry, so a second `Tick` finds nothing to do;
//! - a run's attempt is launched by a `Launch` entry naming (job, instant, attempt): a
//!   second one for the same attempt is refused. Its task lives in the services area
//!   (task-service `job:<name>`, task id `job-<name>.<instant>.<attempt>`), so it goes
//!   through the same placement, agents and status reports as a service's task;
//! - the entry that ends a run's task (an agent's report, or the leader's "lost")
//!   records the outcome: success, another attempt (up to `retries`), or failure;
//! - a success starts, in that same entry, each child job whose parents' latest runs
//!   have all succeeded since the child last ran, and records which parent runs
//!   satisfied it.
//!
//! Store keys (all under `j/`): `j/j/<name>` (job), `j/r/<name>\0<instant>` (run).

// State-machine code: deterministic on every member (see coord/clippy.toml).
#![deny(clippy::disallowed_types, clippy::disallowed_methods)]

pub mod schedule;
pub mod spec;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

pub use spec::{JobSpec, Missed};

use crate::services::{clip, LaunchTask, Services, ServicesError, TaskId, TaskState};
use crate::types::NodeId;

/// Ended runs (succeeded, failed, skipped) kept per job, for `job history`; older ones go
/// with their tasks.
pub const HISTORY_KEPT: usize = 100;
/// Instants one `Tick` decides per job at most (a job missed for a long time is caught
/// up over several entries).
pub const MAX_INSTANTS_PER_TICK: usize = 1_000;
/// Runs of one job that may wait for placement at once; an instant due while this many
/// wait is skipped (recorded, with the reason) rather than queued without end.
pub const MAX_PENDING_RUNS: usize = 10;
/// Instants one `Tick` decides over all jobs at most; the rest wait for the next one.
pub const MAX_INSTANTS_PER_ENTRY: usize = 10_000;
/// Prefix of the task-service id under which a job's runs are tasks.
pub const TASK_SERVICE_PREFIX: &str = "job:";

/// `job:<name>`: the services area's id for a job's tasks (never a service id: those
/// start with `/`).
pub fn task_service(name: &str) -> String {
    format!("{TASK_SERVICE_PREFIX}{name}")
}

/// The job a task-service id names.
pub fn job_of_service(service: &str) -> Option<&str> {
    service.strip_prefix(TASK_SERVICE_PREFIX)
}

/// `job-<name>.<instant>.<attempt>`: the task of one attempt of one run.
pub fn task_id(name: &str, instant_ms: u64, attempt: u32) -> TaskId {
    format!("job-{name}.{instant_ms}.{attempt}")
}

/// (job, instant, attempt) from a task id made by [`task_id`].
pub fn parse_task_id(id: &str) -> Option<(&str, u64, u32)> {
    let rest = id.strip_prefix("job-")?;
    let (rest, attempt) = rest.rsplit_once('.')?;
    let (name, instant) = rest.rsplit_once('.')?;
    Some((name, instant.parse().ok()?, attempt.parse().ok()?))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trigger {
    Schedule,
    /// `job run` (Chronos' `PUT /v1/scheduler/job/{name}`).
    Manual,
    /// The parent runs (job, instant) whose success started it.
    Parents(Vec<(String, u64)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    /// Waiting for a placement (first attempt or a retry).
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

impl RunState {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Skipped => "skipped",
        }
    }

    pub fn is_ended(&self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Failed | RunState::Skipped)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub job: String,
    /// The scheduled instant (Unix ms); for a manual or dependent run, when it was
    /// started. With the job, the run's key.
    pub instant_ms: u64,
    pub trigger: Trigger,
    pub state: RunState,
    /// Attempts launched so far.
    pub attempts: u32,
    /// Every attempt's task, oldest first (their logs stay reachable while the run is
    /// kept).
    pub tasks: Vec<TaskId>,
    pub agent: NodeId,
    pub host: String,
    pub exit_code: Option<i32>,
    /// Why it was skipped, retried or failed.
    pub reason: String,
    pub created_ms: u64,
    /// The last attempt's launch.
    pub started_ms: u64,
    pub ended_ms: u64,
    /// The job's task-spec version of the last attempt.
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub spec: JobSpec,
    /// The task-spec version new attempts run (kept in the services area's versions).
    pub version: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The next scheduled instant not yet decided: (its index in an ISO schedule, Unix
    /// ms). `None`: no more (a finished `R<n>`, or no schedule).
    pub next: Option<(u64, u64)>,
    /// For a dependent job: per parent, that parent's `success_count` when a run of this
    /// job last started on its success (at creation: its count then). A parent that has
    /// succeeded since counts more; successes are told apart by their order, not by
    /// their runs' instants (an older run may succeed after a newer one).
    pub consumed: BTreeMap<String, u64>,
    /// The instant of the run that succeeded last (the most recent success, whichever
    /// instant it served).
    pub last_success: Option<u64>,
    pub last_success_ms: u64,
    pub last_error_ms: u64,
    pub success_count: u64,
    pub error_count: u64,
    pub skipped_count: u64,
    pub errors_since_success: u64,
    /// Ended runs kept, oldest first.
    pub history: VecDeque<u64>,
    /// Removed: its tasks are being killed; the record goes with the last one.
    pub deleting: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobCommand {
    /// Create (`create`: the name must be new) or replace a job's spec.
    Put {
        spec: Box<JobSpec>,
        create: bool,
    },
    Remove {
        name: String,
    },
    /// A user: run now.
    Run {
        name: String,
    },
    /// The leader: decide every instant due at this entry's time.
    Tick,
    /// The leader placed an attempt of a pending run.
    Launch {
        job: String,
        instant_ms: u64,
        attempt: u32,
        task: LaunchTask,
    },
}

impl JobCommand {
    pub fn name(&self) -> &'static str {
        match self {
            JobCommand::Put { create: true, .. } => "job_create",
            JobCommand::Put { .. } => "job_update",
            JobCommand::Remove { .. } => "job_remove",
            JobCommand::Run { .. } => "job_run",
            JobCommand::Tick => "job_tick",
            JobCommand::Launch { .. } => "job_launch",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobsOutput {
    Job {
        name: String,
        version: u64,
    },
    /// A run started (job, instant).
    Run {
        job: String,
        instant_ms: u64,
    },
    /// Instants decided (run or skipped).
    Count(u32),
    Launched(TaskId),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum JobsError {
    #[error("{0}")]
    Invalid(String),
    #[error("job {0:?} not found")]
    NotFound(String),
    #[error("job {0:?} already exists")]
    Exists(String),
    #[error("job {0:?} is being removed")]
    Deleting(String),
    #[error("{0}")]
    Conflict(String),
    #[error("storage error: {0}")]
    Storage(String),
}

type Result<T> = std::result::Result<T, JobsError>;

impl From<ServicesError> for JobsError {
    fn from(e: ServicesError) -> JobsError {
        match e {
            ServicesError::Storage(s) => JobsError::Storage(s),
            other => JobsError::Invalid(other.to_string()),
        }
    }
}

/// A job task that ended, as the services area saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedTask {
    pub id: TaskId,
    pub state: TaskState,
    pub exit_code: Option<i32>,
    pub reason: String,
}

/// A pending run the scheduler should place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub job: String,
    pub instant_ms: u64,
    pub attempt: u32,
    pub version: u64,
}

#[derive(Debug, Default)]
struct Dirty {
    jobs: BTreeSet<String>,
    runs: BTreeSet<(String, u64)>,
}

#[derive(Debug, Default)]
pub struct Jobs {
    jobs: BTreeMap<String, Job>,
    runs: BTreeMap<(String, u64), Run>,
    /// Derived: runs not ended, and the task of each running one.
    active: BTreeMap<String, BTreeSet<u64>>,
    by_task: BTreeMap<TaskId, (String, u64)>,
    dirty: Dirty,
    /// Tasks of runs that just left a job's history, for the services area to forget
    /// within the same entry.
    forgotten: Vec<TaskId>,
}

pub mod keys {
    pub const PREFIX: &[u8] = b"j/";
    pub const JOB: &[u8] = b"j/j/";
    pub const RUN: &[u8] = b"j/r/";

    pub fn job(name: &str) -> Vec<u8> {
        [JOB, name.as_bytes()].concat()
    }

    pub fn run(name: &str, instant_ms: u64) -> Vec<u8> {
        [RUN, name.as_bytes(), b"\0", &instant_ms.to_be_bytes()].concat()
    }
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    crate::codec::encode(v).expect("jobs records encode")
}

/// The first instant of `spec`'s schedule at or after `from_ms`, with its index.
fn first_instant(spec: &JobSpec, created_ms: u64, from_ms: u64) -> Result<Option<(u64, u64)>> {
    let tz = schedule::zone(&spec.time_zone).map_err(JobsError::Invalid)?;
    if !spec.schedule.is_empty() {
        let iso = schedule::parse_iso(&spec.schedule, &tz, created_ms).map_err(JobsError::Invalid)?;
        return iso.first_at_or_after(from_ms).map_err(JobsError::Invalid);
    }
    if !spec.cron.is_empty() {
        let schedule::Schedule::Cron { cron, tz } =
            schedule::parse_cron(&spec.cron, &tz).map_err(JobsError::Invalid)?
        else {
            unreachable!("parse_cron gives a cron schedule")
        };
        return Ok(schedule::cron_next(&cron, &tz, from_ms.saturating_sub(1)).map(|t| (0, t)));
    }
    Ok(None)
}

/// The instant after `(k, at)`.
fn following(spec: &JobSpec, created_ms: u64, k: u64, at: u64) -> Option<(u64, u64)> {
    let tz = schedule::zone(&spec.time_zone).ok()?;
    if !spec.schedule.is_empty() {
        let iso = schedule::parse_iso(&spec.schedule, &tz, created_ms).ok()?;
        return iso.instant(k + 1).map(|t| (k + 1, t));
    }
    if !spec.cron.is_empty() {
        let schedule::Schedule::Cron { cron, tz } = schedule::parse_cron(&spec.cron, &tz).ok()? else { return None };
        return schedule::cron_next(&cron, &tz, at).map(|t| (0, t));
    }
    None
}

impl Jobs {
    // ---- reads ----

    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.get(name)
    }

    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    pub fn run(&self, name: &str, instant_ms: u64) -> Option<&Run> {
        self.runs.get(&(name.to_string(), instant_ms))
    }

    /// A job's kept runs, oldest first.
    pub fn runs_of<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Run> + 'a {
        self.runs.range((name.to_string(), 0)..=(name.to_string(), u64::MAX)).map(|(_, r)| r)
    }

    /// A job's runs not ended.
    pub fn active_runs_of<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Run> + 'a {
        let name = name.to_string();
        let instants: Vec<u64> = self.active.get(&name).into_iter().flatten().copied().collect();
        instants.into_iter().filter_map(move |i| self.runs.get(&(name.clone(), i)))
    }

    /// Whether a `Tick` at `now_ms` would decide something.
    pub fn due(&self, now_ms: u64) -> bool {
        self.jobs.values().any(|j| !j.spec.disabled && !j.deleting && j.next.is_some_and(|(_, t)| t <= now_ms))
    }

    /// Pending runs, each with the attempt to launch next.
    pub fn wanted(&self) -> Vec<Wanted> {
        let mut out = Vec::new();
        for (name, instants) in &self.active {
            let Some(job) = self.jobs.get(name) else { continue };
            if job.deleting {
                continue;
            }
            for i in instants {
                if let Some(r) = self.runs.get(&(name.clone(), *i)) {
                    if r.state == RunState::Pending {
                        out.push(Wanted {
                            job: name.clone(),
                            instant_ms: *i,
                            attempt: r.attempts + 1,
                            version: job.version,
                        });
                    }
                }
            }
        }
        out
    }

    // ---- apply ----

    pub fn apply(&mut self, now_ms: u64, cmd: &JobCommand, services: &mut Services) -> Result<JobsOutput> {
        let r = self.apply_inner(now_ms, cmd, services);
        for f in std::mem::take(&mut self.forgotten) {
            services.forget_task(&f);
        }
        r
    }

    fn apply_inner(&mut self, now_ms: u64, cmd: &JobCommand, services: &mut Services) -> Result<JobsOutput> {
        match cmd {
            JobCommand::Put { spec, create } => self.put(now_ms, spec, *create, services),
            JobCommand::Remove { name } => self.remove(now_ms, name, services),
            JobCommand::Run { name } => {
                let job = self.jobs.get(name).ok_or_else(|| JobsError::NotFound(name.clone()))?;
                if job.deleting {
                    return Err(JobsError::Deleting(name.clone()));
                }
                if !job.spec.concurrent {
                    if let Some(i) = self.active.get(name).and_then(|s| s.iter().next()) {
                        return Err(JobsError::Conflict(format!(
                            "job {name:?} has a run going (instant {i}) and concurrent is false; wait for it"
                        )));
                    }
                }
                let instant = self.free_instant(name, now_ms);
                self.start_run(now_ms, name, instant, Trigger::Manual, None);
                Ok(JobsOutput::Run { job: name.clone(), instant_ms: instant })
            }
            JobCommand::Tick => Ok(JobsOutput::Count(self.tick(now_ms))),
            JobCommand::Launch { job, instant_ms, attempt, task } => {
                self.launch(now_ms, job, *instant_ms, *attempt, task, services)
            }
        }
    }

    fn put(&mut self, now_ms: u64, spec: &JobSpec, create: bool, services: &mut Services) -> Result<JobsOutput> {
        spec.validate().map_err(JobsError::Invalid)?;
        for p in &spec.parents {
            match self.jobs.get(p) {
                None => return Err(JobsError::Invalid(format!("parents: job {p:?} not found"))),
                Some(j) if j.deleting => {
                    return Err(JobsError::Invalid(format!("parents: job {p:?} is being removed")))
                }
                _ => {}
            }
            if self.depends_on(p, &spec.name) {
                return Err(JobsError::Invalid(format!(
                    "parents: {p:?} already runs after {:?}; that would be a cycle",
                    spec.name
                )));
            }
        }
        let name = spec.name.clone();
        match (self.jobs.get(&name), create) {
            (Some(j), true) if j.deleting => return Err(JobsError::Deleting(name)),
            (Some(_), true) => return Err(JobsError::Exists(name)),
            (None, false) => return Err(JobsError::NotFound(name)),
            (Some(j), false) if j.deleting => return Err(JobsError::Deleting(name)),
            _ => {}
        }
        let (created_ms, version, old) = match self.jobs.get(&name) {
            Some(j) => (j.created_ms, j.version + 1, Some(j.clone())),
            None => (now_ms, 1, None),
        };
        let next = match &old {
            Some(o) if o.spec.same_timing(spec) => o.next,
            _ => first_instant(spec, created_ms, now_ms)?,
        };
        let timed = !spec.schedule.is_empty() || !spec.cron.is_empty();
        if timed && next.is_none() && !spec.disabled && old.as_ref().is_none_or(|o| !o.spec.same_timing(spec)) {
            return Err(JobsError::Invalid(format!(
                "{}: no instant of it is still to come; it would never run",
                if spec.schedule.is_empty() { "cron" } else { "schedule" }
            )));
        }
        // A new child counts only parent runs that succeed from now on.
        let consumed = spec
            .parents
            .iter()
            .map(|p| {
                let prior = old.as_ref().and_then(|o| o.consumed.get(p).copied());
                let latest = self.jobs.get(p).map_or(0, |j| j.success_count);
                (p.clone(), prior.unwrap_or(latest))
            })
            .collect();
        let job = match old {
            Some(mut j) => {
                j.spec = spec.clone();
                j.version = version;
                j.updated_ms = now_ms;
                j.next = next;
                j.consumed = consumed;
                j
            }
            None => Job {
                spec: spec.clone(),
                version,
                created_ms,
                updated_ms: now_ms,
                next,
                consumed,
                last_success: None,
                last_success_ms: 0,
                last_error_ms: 0,
                success_count: 0,
                error_count: 0,
                skipped_count: 0,
                errors_since_success: 0,
                history: VecDeque::new(),
                deleting: false,
            },
        };
        self.jobs.insert(name.clone(), job);
        self.dirty.jobs.insert(name.clone());
        services.set_job_version(&task_service(&name), version, spec.task_spec());
        Ok(JobsOutput::Job { name, version })
    }

    /// Whether `job` runs after `ancestor`, directly or through other jobs.
    fn depends_on(&self, job: &str, ancestor: &str) -> bool {
        let mut todo = vec![job.to_string()];
        let mut seen = BTreeSet::new();
        while let Some(j) = todo.pop() {
            if j == ancestor {
                return true;
            }
            if seen.insert(j.clone()) {
                if let Some(job) = self.jobs.get(&j) {
                    todo.extend(job.spec.parents.iter().cloned());
                }
            }
        }
        false
    }

    fn remove(&mut self, now_ms: u64, name: &str, services: &mut Services) -> Result<JobsOutput> {
        let job = self.jobs.get(name).ok_or_else(|| JobsError::NotFound(name.to_string()))?;
        let version = job.version;
        if let Some(child) = self.jobs.values().find(|j| !j.deleting && j.spec.parents.iter().any(|p| p == name)) {
            return Err(JobsError::Conflict(format!(
                "job {name:?} is a parent of {:?}; remove that job or change its parents first",
                child.spec.name
            )));
        }
        if job.deleting {
            return Ok(JobsOutput::Job { name: name.to_string(), version });
        }
        let job = self.jobs.get_mut(name).expect("checked");
        job.deleting = true;
        job.updated_ms = now_ms;
        self.dirty.jobs.insert(name.to_string());
        let active: Vec<u64> = self.active.get(name).into_iter().flatten().copied().collect();
        for i in active {
            let key = (name.to_string(), i);
            let Some(r) = self.runs.get_mut(&key) else { continue };
            match r.state {
                RunState::Running => {
                    if let Some(t) = r.tasks.last() {
                        services.kill_task(now_ms, t, "job removed");
                    }
                }
                RunState::Pending => {
                    r.state = RunState::Failed;
                    r.reason = "job removed before it was placed".into();
                    r.ended_ms = now_ms;
                    self.dirty.runs.insert(key.clone());
                    self.unset_active(name, i);
                    self.ended(name, i);
                }
                _ => {}
            }
        }
        self.purge_if_done(name, services);
        Ok(JobsOutput::Job { name: name.to_string(), version })
    }

    /// A removed job goes once it has no run going.
    fn purge_if_done(&mut self, name: &str, services: &mut Services) {
        let done = self.jobs.get(name).is_some_and(|j| j.deleting) && !self.active.contains_key(name);
        if !done {
            return;
        }
        self.jobs.remove(name);
        self.dirty.jobs.insert(name.to_string());
        let keys: Vec<(String, u64)> =
            self.runs.range((name.to_string(), 0)..=(name.to_string(), u64::MAX)).map(|(k, _)| k.clone()).collect();
        for k in keys {
            if let Some(r) = self.runs.remove(&k) {
                for t in &r.tasks {
                    services.forget_task(t);
                }
            }
            self.dirty.runs.insert(k);
        }
        services.drop_job_versions(&task_service(name), None);
    }

    /// `now_ms`, or the next millisecond free for this job's run key.
    fn free_instant(&self, name: &str, now_ms: u64) -> u64 {
        let mut i = now_ms;
        while self.runs.contains_key(&(name.to_string(), i)) {
            i += 1;
        }
        i
    }

    fn unset_active(&mut self, name: &str, instant: u64) {
        if let Some(s) = self.active.get_mut(name) {
            s.remove(&instant);
            if s.is_empty() {
                self.active.remove(name);
            }
        }
    }

    /// Records a new run: pending; or skipped, for the reason `skip` gives, or when the
    /// job does not overlap runs and one is going, or too many wait.
    fn start_run(&mut self, now_ms: u64, name: &str, instant: u64, trigger: Trigger, skip: Option<String>) -> RunState {
        let Some(job) = self.jobs.get(name) else { return RunState::Skipped };
        let going = self.active.get(name).and_then(|s| s.iter().next().copied());
        let mut run = Run {
            job: name.to_string(),
            instant_ms: instant,
            trigger,
            state: RunState::Pending,
            attempts: 0,
            tasks: Vec::new(),
            agent: 0,
            host: String::new(),
            exit_code: None,
            reason: String::new(),
            created_ms: now_ms,
            started_ms: 0,
            ended_ms: 0,
            version: job.version,
        };
        let waiting = self.active.get(name).map_or(0, |s| {
            s.iter()
                .filter(|i| self.runs.get(&(name.to_string(), **i)).is_some_and(|r| r.state == RunState::Pending))
                .count()
        });
        if let Some(reason) = skip {
            run.state = RunState::Skipped;
            run.reason = reason;
            run.ended_ms = now_ms;
        } else if let (false, Some(g)) = (job.spec.concurrent, going) {
            let placed = self.runs.get(&(name.to_string(), g)).is_some_and(|r| r.state == RunState::Running);
            run.state = RunState::Skipped;
            run.reason = if placed {
                format!("the run of {g} was still going and concurrent is false")
            } else {
                format!("the run of {g} was still waiting for an agent with room and concurrent is false")
            };
            run.ended_ms = now_ms;
        } else if waiting >= MAX_PENDING_RUNS {
            run.state = RunState::Skipped;
            run.reason = format!("{waiting} runs were already waiting for an agent with room");
            run.ended_ms = now_ms;
        }
        let state = run.state;
        let key = (name.to_string(), instant);
        self.runs.insert(key.clone(), run);
        self.dirty.runs.insert(key);
        if state == RunState::Pending {
            self.active.entry(name.to_string()).or_default().insert(instant);
        } else {
            self.ended(name, instant);
        }
        state
    }

    /// Bookkeeping of a run that just ended: counts, history (and what falls out of it).
    fn ended(&mut self, name: &str, instant: u64) {
        let Some(r) = self.runs.get(&(name.to_string(), instant)) else { return };
        let (state, at) = (r.state, r.ended_ms);
        let Some(job) = self.jobs.get_mut(name) else { return };
        match state {
            RunState::Succeeded => {
                job.success_count += 1;
                job.errors_since_success = 0;
                job.last_success_ms = at;
                job.last_success = Some(instant);
            }
            RunState::Failed => {
                job.error_count += 1;
                job.errors_since_success += 1;
                job.last_error_ms = at;
            }
            RunState::Skipped => job.skipped_count += 1,
            _ => {}
        }
        job.history.push_back(instant);
        let mut dropped = Vec::new();
        while job.history.len() > HISTORY_KEPT {
            if let Some(old) = job.history.pop_front() {
                dropped.push(old);
            }
        }
        self.dirty.jobs.insert(name.to_string());
        for old in dropped {
            let key = (name.to_string(), old);
            if let Some(r) = self.runs.remove(&key) {
                self.forgotten.extend(r.tasks);
            }
            self.dirty.runs.insert(key);
        }
    }

    fn tick(&mut self, now_ms: u64) -> u32 {
        let names: Vec<String> = self
            .jobs
            .values()
            .filter(|j| !j.spec.disabled && !j.deleting && j.next.is_some_and(|(_, t)| t <= now_ms))
            .map(|j| j.spec.name.clone())
            .collect();
        let mut decided = 0;
        for name in names {
            if decided as usize >= MAX_INSTANTS_PER_ENTRY {
                break;
            }
            for _ in 0..MAX_INSTANTS_PER_TICK.min(MAX_INSTANTS_PER_ENTRY - decided as usize) {
                let job = self.jobs.get(&name).expect("listed above");
                let Some((k, at)) = job.next.filter(|(_, t)| *t <= now_ms) else { break };
                let after = following(&job.spec, job.created_ms, k, at);
                let late = now_ms - at;
                let (policy, epsilon) = (job.spec.missed, job.spec.epsilon_ms);
                let skip = match policy {
                    Missed::Skip => {
                        (late > epsilon).then(|| format!("missed by {} ms, more than epsilon ({} ms)", late, epsilon))
                    }
                    Missed::CatchUpOnce => after.filter(|(_, t)| *t <= now_ms).map(|_| {
                        "missed; a later instant is also due, and only the newest missed one runs".to_string()
                    }),
                };
                let job = self.jobs.get_mut(&name).expect("listed above");
                job.next = after;
                self.dirty.jobs.insert(name.clone());
                if self.runs.contains_key(&(name.clone(), at)) {
                    // A manual run took this millisecond: the instant is decided already.
                    continue;
                }
                self.start_run(now_ms, &name, at, Trigger::Schedule, skip);
                decided += 1;
            }
        }
        decided
    }

    fn launch(
        &mut self,
        now_ms: u64,
        name: &str,
        instant: u64,
        attempt: u32,
        lt: &LaunchTask,
        services: &mut Services,
    ) -> Result<JobsOutput> {
        let job = self.jobs.get(name).ok_or_else(|| JobsError::NotFound(name.to_string()))?;
        if job.deleting {
            return Err(JobsError::Deleting(name.to_string()));
        }
        let version = job.version;
        let key = (name.to_string(), instant);
        let r = self.runs.get(&key).ok_or_else(|| JobsError::Invalid(format!("job {name:?} has no run {instant}")))?;
        if r.state != RunState::Pending || r.attempts + 1 != attempt {
            return Err(JobsError::Conflict(format!(
                "run {instant} of {name:?} is {} after {} attempts: attempt {attempt} is not due",
                r.state.as_str(),
                r.attempts
            )));
        }
        let id = task_id(name, instant, attempt);
        let mut lt = lt.clone();
        lt.service = task_service(name);
        lt.version = version;
        services.launch_job_task(now_ms, &id, &lt).map_err(|e| match e {
            ServicesError::Storage(s) => JobsError::Storage(s),
            other => JobsError::Conflict(other.to_string()),
        })?;
        let r = self.runs.get_mut(&key).expect("checked");
        r.state = RunState::Running;
        r.attempts = attempt;
        r.tasks.push(id.clone());
        r.agent = lt.agent;
        r.host = lt.host.clone();
        r.started_ms = now_ms;
        r.version = version;
        self.dirty.runs.insert(key.clone());
        self.by_task.insert(id.clone(), key);
        Ok(JobsOutput::Launched(id))
    }

    /// A job task ended (the services area reported it in the same entry): the run
    /// succeeds, tries again, or fails; a success starts the children it satisfies.
    pub fn task_ended(&mut self, now_ms: u64, t: &EndedTask, services: &mut Services) {
        let Some(key) = self.by_task.remove(&t.id) else { return };
        let (name, instant) = key.clone();
        let Some(job) = self.jobs.get(&name) else { return };
        let (retries, deleting) = (job.spec.retries, job.deleting);
        let Some(r) = self.runs.get_mut(&key) else { return };
        if r.state != RunState::Running || r.tasks.last() != Some(&t.id) {
            return;
        }
        r.exit_code = t.exit_code;
        self.dirty.runs.insert(key.clone());
        let ok = t.state == TaskState::Finished && t.exit_code.unwrap_or(0) == 0;
        if ok {
            r.state = RunState::Succeeded;
            r.reason.clear();
            r.ended_ms = now_ms;
        } else {
            let what = match (t.state, t.exit_code) {
                (TaskState::Lost, _) => format!("lost: {}", t.reason),
                (_, Some(c)) if t.reason.is_empty() || t.reason.contains("exit") => format!("exited with {c}"),
                (_, Some(c)) => format!("exited with {c}: {}", t.reason),
                (s, None) => format!("{}: {}", s.as_str(), t.reason),
            };
            if !deleting && r.attempts <= retries {
                r.state = RunState::Pending;
                r.reason = clip(&format!(
                    "attempt {} {what}; trying again ({} of {retries} retries left)",
                    r.attempts,
                    retries + 1 - r.attempts
                ));
            } else {
                r.state = RunState::Failed;
                r.reason = clip(&format!("attempt {} {what}", r.attempts));
                r.ended_ms = now_ms;
            }
        }
        let state = r.state;
        if state.is_ended() {
            self.unset_active(&name, instant);
            self.ended(&name, instant);
        }
        if state == RunState::Succeeded {
            self.start_children(now_ms, &name);
        }
        if state.is_ended() {
            // Parents that succeeded while this run went on are taken up now.
            self.start_if_satisfied(now_ms, &name);
        }
        for f in std::mem::take(&mut self.forgotten) {
            services.forget_task(&f);
        }
        self.purge_if_done(&name, services);
    }

    /// After `parent` succeeded: each child whose parents have all succeeded since its
    /// last run starts one run, recording which parent runs satisfied it.
    fn start_children(&mut self, now_ms: u64, parent: &str) {
        let children: Vec<String> = self
            .jobs
            .values()
            .filter(|j| j.spec.parents.iter().any(|p| p == parent))
            .map(|j| j.spec.name.clone())
            .collect();
        for c in children {
            self.start_if_satisfied(now_ms, &c);
        }
    }

    /// Starts a run of dependent job `c` if every parent has succeeded since its last
    /// run, and a run may start now (not removed or disabled; without `concurrent`, none
    /// going). Its parents' successes are consumed only by a run that starts, so a
    /// success that comes while a run is going is taken up when that run ends.
    fn start_if_satisfied(&mut self, now_ms: u64, c: &str) {
        let Some(child) = self.jobs.get(c) else { return };
        if child.deleting || child.spec.disabled || child.spec.parents.is_empty() {
            return;
        }
        if !child.spec.concurrent && self.active.contains_key(c) {
            return;
        }
        let mut by = Vec::new();
        let mut counts = Vec::new();
        for p in &child.spec.parents {
            let Some(pj) = self.jobs.get(p) else { return };
            if pj.success_count <= child.consumed.get(p).copied().unwrap_or(0) {
                return;
            }
            by.push((p.clone(), pj.last_success.unwrap_or(0)));
            counts.push((p.clone(), pj.success_count));
        }
        let child = self.jobs.get_mut(c).expect("checked");
        for (p, n) in counts {
            child.consumed.insert(p, n);
        }
        self.dirty.jobs.insert(c.to_string());
        let instant = self.free_instant(c, now_ms);
        self.start_run(now_ms, c, instant, Trigger::Parents(by), None);
    }

    // ---- persistence ----

    pub fn take_changes(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let d = std::mem::take(&mut self.dirty);
        let mut out = Vec::new();
        for name in d.jobs {
            out.push((keys::job(&name), self.jobs.get(&name).map(enc)));
        }
        for (name, i) in d.runs {
            out.push((keys::run(&name, i), self.runs.get(&(name.clone(), i)).map(enc)));
        }
        out
    }

    pub fn records(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = self.jobs.values().map(|j| (keys::job(&j.spec.name), enc(j))).collect();
        out.extend(self.runs.values().map(|r| (keys::run(&r.job, r.instant_ms), enc(r))));
        out
    }

    pub fn load<'a>(records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> std::io::Result<Jobs> {
        use crate::codec::decode;
        let mut s = Jobs::default();
        for (k, v) in records {
            if k.starts_with(keys::JOB) {
                let j: Job = decode(v)?;
                s.jobs.insert(j.spec.name.clone(), j);
            } else if k.starts_with(keys::RUN) {
                let r: Run = decode(v)?;
                s.runs.insert((r.job.clone(), r.instant_ms), r);
            }
        }
        for r in s.runs.values().filter(|r| !r.state.is_ended()) {
            s.active.entry(r.job.clone()).or_default().insert(r.instant_ms);
            if r.state == RunState::Running {
                if let Some(t) = r.tasks.last() {
                    s.by_task.insert(t.clone(), (r.job.clone(), r.instant_ms));
                }
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests;
