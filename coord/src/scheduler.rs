//! The leader's scheduler: each pass reads the applied state (services, tasks, the
//! registry), decides, and commits what it decided; then the next pass reads again. It
//! keeps nothing between passes that it acts on, so a new leader starts from the log
//! (Marathon #1553 and Chronos #411 were leaders acting on memory).
//!
//! [`decide`] is pure: the registry and the services area in, the commands out.
//! - Tasks on an agent that is down (the registry's grace is over) or removed are lost.
//!   An unreachable agent's tasks keep their place: it may come back.
//! - A task whose health checks failed (`healthy == Some(false)`) is killed; it will be
//!   replaced.
//! - Without tasks of an old version, a service is scaled: missing tasks are placed (not
//!   before the launch backoff allows), extra ones killed youngest first.
//! - With tasks of an old version (a deployment), new ones are placed up to
//!   `instances × (1 + maximumOverCapacity)` tasks in all, and old ones killed while at
//!   least ⌈instances × minimumHealthCapacity⌉ stay healthy. A strategy that allows
//!   neither (minimumHealthCapacity 1 and no room over capacity) kills one old task, so
//!   the deployment still moves.
//! - A deployment whose service runs exactly its instances, all of the target version
//!   and healthy, with nothing left stopping, is done.
//!
//! Placement goes through `scheduler-core`, with the agents' free resources computed
//! from the tasks not ended on them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Weak;
use std::time::Duration;

use scheduler_core::{AgentState, Input, Resources, Running, TaskGroup};
use tracing::{info, warn};

use crate::command::Command;
use crate::jobs::{self, JobCommand, Jobs};
use crate::node::{now_ms, CoordNode};
use crate::registry::{Availability, NodeRecord, NodeState, Registry};
use crate::services::{LaunchTask, ServiceCommand, Services, Task, TaskId, TaskState};
use crate::types::NodeId;

/// How often the loop runs when nothing is pending.
pub const PASS_INTERVAL_MS: u64 = 250;
/// Tasks one pass places at most (one log entry each batch of [`LAUNCH_BATCH`]).
pub const MAX_LAUNCHES_PER_PASS: usize = 50_000;
pub const LAUNCH_BATCH: usize = 5_000;

/// What one pass decided.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decision {
    pub lost: Vec<(NodeId, Vec<TaskId>, String)>,
    pub kills: Vec<(TaskId, String)>,
    pub launches: Vec<LaunchTask>,
    pub done: Vec<u64>,
    /// Services with tasks that could not be placed, and why.
    pub unplaced: Vec<(String, String)>,
    /// Jobs' runs placed: `JobCommand::Launch` entries.
    pub job_launches: Vec<JobCommand>,
    /// Some job has an instant due: commit a `JobCommand::Tick`.
    pub tick: bool,
}

impl Decision {
    pub fn is_empty(&self) -> bool {
        self.lost.is_empty()
            && self.kills.is_empty()
            && self.launches.is_empty()
            && self.done.is_empty()
            && self.job_launches.is_empty()
            && !self.tick
    }

    /// The entries to commit, in order: lost, kills, launches in batches, done.
    pub fn commands(&self) -> Vec<Command> {
        let mut out = Vec::new();
        for (agent, tasks, reason) in &self.lost {
            out.push(Command::Services(ServiceCommand::Lost {
                agent: *agent,
                tasks: tasks.clone(),
                reason: reason.clone(),
            }));
        }
        for chunk in self.kills.chunks(crate::services::MAX_BATCH) {
            out.push(Command::Services(ServiceCommand::Kill { tasks: chunk.to_vec() }));
        }
        for chunk in self.launches.chunks(LAUNCH_BATCH) {
            out.push(Command::Services(ServiceCommand::Launch { tasks: chunk.to_vec() }));
        }
        for id in &self.done {
            out.push(Command::Services(ServiceCommand::DeploymentDone { id: *id }));
        }
        out.extend(self.job_launches.iter().cloned().map(Command::Jobs));
        if self.tick {
            out.push(Command::Jobs(JobCommand::Tick));
        }
        out
    }
}

/// What a task takes of its agent: its version's cpus, memory and disk.
pub fn task_resources(services: &Services, t: &Task) -> Resources {
    services
        .spec(&t.service, t.version)
        .map(|s| Resources { cpus_milli: s.cpus_milli, mem_mb: s.mem_mb, disk_mb: s.disk_mb })
        .unwrap_or_default()
}

/// The host part of an advertised address (`10.0.0.5:2379`, `[fd00::1]:2379`).
pub fn host_of(addr: &str) -> String {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    match addr.rsplit_once(':') {
        Some((h, _)) => h.to_string(),
        None => addr.to_string(),
    }
}

/// A node's host name for placement: the `hostname` label (`--hostname`) when it has
/// one, else the host part of its advertised address.
pub fn hostname(n: &NodeRecord) -> String {
    match n.labels.get("hostname") {
        Some(h) => h.clone(),
        None => host_of(&n.addr),
    }
}

/// Youngest first: Marathon's default kill selection.
fn youngest_first(a: &&Task, b: &&Task) -> std::cmp::Ordering {
    b.staged_ms.cmp(&a.staged_ms).then(b.id.cmp(&a.id))
}

/// One pass over the applied state at leader time `now_ms`.
pub fn decide(services: &Services, registry: &Registry, now_ms: u64, seed: u64, max_launches: usize) -> Decision {
    prepare(services, registry, now_ms, seed, max_launches).finish()
}

/// What a pass read from the state; [`Prepared::finish`] places the launches without it,
/// so the leader holds the state lock only while reading, not while placing.
pub struct Prepared {
    d: Decision,
    placement: Option<Placement>,
    no_room_escape: Vec<(String, TaskId)>,
}

/// The placement problem, built from the state.
struct Placement {
    input: Input,
    version_of: BTreeMap<String, u64>,
}

impl Prepared {
    pub fn finish(self) -> Decision {
        let mut d = self.d;
        if let Some(p) = self.placement {
            p.place(&mut d);
        }
        for (service, old) in self.no_room_escape {
            if !d.launches.iter().any(|l| l.service == service) {
                d.kills.push((old, "replaced by a new version (no room to place a new one)".into()));
            }
        }
        d
    }
}

/// The reading half of [`decide`].
pub fn prepare(services: &Services, registry: &Registry, now_ms: u64, seed: u64, max_launches: usize) -> Prepared {
    prepare_with_jobs(services, registry, &Jobs::default(), now_ms, seed, max_launches)
}

/// [`prepare`], with the jobs area: a `Tick` when an instant is due, and the pending
/// runs placed like a service's missing tasks.
pub fn prepare_with_jobs(
    services: &Services,
    registry: &Registry,
    jobs: &Jobs,
    now_ms: u64,
    seed: u64,
    max_launches: usize,
) -> Prepared {
    let mut d = Decision { tick: jobs.due(now_ms), ..Decision::default() };
    // Agents gone: their tasks are lost.
    let mut gone: BTreeSet<TaskId> = BTreeSet::new();
    for agent in services.agents_with_tasks() {
        let why = match registry.nodes.get(&agent) {
            None => Some("agent removed"),
            Some(n) if n.state == NodeState::Down => Some("agent down"),
            _ => None,
        };
        if let Some(why) = why {
            let tasks: Vec<TaskId> = services.tasks_on(agent).map(|t| t.id.clone()).collect();
            gone.extend(tasks.iter().cloned());
            d.lost.push((agent, tasks, why.to_string()));
        }
    }
    // Per service: kills, launches wanted, deployments done.
    let mut wanted: Vec<(String, u64, usize)> = Vec::new();
    // Rolling services whose only way forward is a launch: if none of theirs is placed,
    // one old task goes (service, that task).
    let mut no_room_escape: Vec<(String, TaskId)> = Vec::new();
    for svc in services.services() {
        if svc.deleting {
            continue;
        }
        let active: Vec<&Task> = services.active_tasks_of(&svc.id).filter(|t| !gone.contains(&t.id)).collect();
        let stopping = active.iter().filter(|t| t.state == TaskState::Killing).count();
        let mut live: Vec<&Task> = active.iter().copied().filter(|t| t.state != TaskState::Killing).collect();
        // Failed health checks: replace.
        live.retain(|t| {
            if t.healthy == Some(false) {
                d.kills.push((t.id.clone(), "failed health checks".into()));
                false
            } else {
                true
            }
        });
        let target = svc.instances as usize;
        let (mut new, mut old): (Vec<&Task>, Vec<&Task>) = live.iter().partition(|t| t.version == svc.version);
        let launch_allowed = svc.delay_until_ms <= now_ms;
        if old.is_empty() {
            if new.len() > target {
                new.sort_by(youngest_first);
                for t in &new[..new.len() - target] {
                    d.kills.push((t.id.clone(), "scaled down".into()));
                }
            } else if new.len() < target && launch_allowed {
                wanted.push((svc.id.clone(), svc.version, target - new.len()));
            }
            let settled = new.len() == target && stopping == 0 && new.iter().all(|t| services.is_healthy(t));
            if let Some(dep) = svc.deployment {
                if settled {
                    d.done.push(dep);
                }
            }
            continue;
        }
        // Rolling from old versions to the current one.
        let spec = services.spec(&svc.id, svc.version);
        let (min_permille, over_permille) = spec
            .map_or((1000, 1000), |s| (s.upgrade.min_health_permille as usize, s.upgrade.max_over_permille as usize));
        let min_healthy = (target * min_permille).div_ceil(1000);
        let max_total = target + target * over_permille / 1000;
        let mut healthy = live.iter().filter(|t| services.is_healthy(t)).count();
        let launch = target.saturating_sub(new.len()).min(max_total.saturating_sub(live.len()));
        if launch > 0 && launch_allowed {
            wanted.push((svc.id.clone(), svc.version, launch));
        }
        // Old tasks that are not healthy cost no health: they go first.
        old.sort_by(|a, b| services.is_healthy(a).cmp(&services.is_healthy(b)).then(youngest_first(a, b)));
        let mut killed = 0;
        for t in &old {
            let h = services.is_healthy(t);
            if !h || healthy > min_healthy {
                d.kills.push((t.id.clone(), "replaced by a new version".into()));
                killed += 1;
                if h {
                    healthy -= 1;
                }
            }
        }
        // No room over capacity for another new task, none on its way to healthy, and no
        // old one may go: take one old task down anyway, or the deployment never moves.
        // The same when launches are allowed but none can be placed (checked below).
        let waiting = killed == 0 && new.len() < target && new.iter().all(|t| services.is_healthy(t));
        if let (true, Some(t)) = (waiting, old.first()) {
            if launch == 0 {
                d.kills.push((t.id.clone(), "replaced by a new version (no room to roll)".into()));
            } else {
                no_room_escape.push((svc.id.clone(), t.id.clone()));
            }
        }
    }
    let runs = jobs.wanted();
    let placement = (!wanted.is_empty() || !runs.is_empty())
        .then(|| placement(services, registry, seed, max_launches, &wanted, &runs, &gone));
    Prepared { d, placement, no_room_escape }
}

/// The placement problem of the wanted launches, for scheduler-core.
fn placement(
    services: &Services,
    registry: &Registry,
    seed: u64,
    max_launches: usize,
    wanted: &[(String, u64, usize)],
    runs: &[jobs::Wanted],
    gone: &BTreeSet<TaskId>,
) -> Placement {
    let mut agents = Vec::with_capacity(registry.nodes.len());
    let mut running = Vec::new();
    for n in registry.nodes.values() {
        let total = Resources {
            cpus_milli: n.resources.cpus_milli,
            mem_mb: n.resources.memory_mb,
            disk_mb: n.resources.disk_mb,
        };
        let mut used = Resources::default();
        let mut ports = BTreeSet::new();
        for t in services.tasks_on(n.node_id).filter(|t| !gone.contains(&t.id)) {
            used = used.saturating_add(task_resources(services, t));
            ports.extend(t.ports.iter().copied());
            if t.state != TaskState::Killing {
                running.push(Running { service: t.service.clone(), agent: n.node_id });
            }
        }
        agents.push(scheduler_core::Agent {
            id: n.node_id,
            hostname: hostname(n),
            labels: n.labels.clone(),
            total,
            free: total.saturating_sub(used),
            port_ranges: n.resources.ports.clone(),
            used_ports: ports,
            state: match n.state {
                NodeState::Active => AgentState::Active,
                NodeState::Registered => AgentState::Registered,
                NodeState::Unreachable => AgentState::Unreachable,
                NodeState::Down => AgentState::Down,
            },
            draining: n.availability == Availability::Drain,
        });
    }
    let mut groups = Vec::new();
    let mut budget = max_launches;
    for (id, version, n) in wanted {
        let Some(spec) = services.spec(id, *version) else { continue };
        let n = (*n).min(budget);
        if n == 0 {
            break;
        }
        budget -= n;
        groups.push(TaskGroup {
            service: id.clone(),
            task_ids: (0..n).map(|i| format!("{id}#{version}#{i}")).collect(),
            resources: Resources { cpus_milli: spec.cpus_milli, mem_mb: spec.mem_mb, disk_mb: spec.disk_mb },
            ports: spec.ports.iter().map(|p| p.port).collect(),
            constraints: spec.constraints.clone(),
            strategy: spec.placement,
        });
    }
    // One group per job; each pending run is a task named by its run and attempt.
    let mut by_job: BTreeMap<&str, Vec<&jobs::Wanted>> = BTreeMap::new();
    for r in runs {
        by_job.entry(r.job.as_str()).or_default().push(r);
    }
    for (job, runs) in by_job {
        let id = jobs::task_service(job);
        let version = runs[0].version;
        let Some(spec) = services.spec(&id, version) else { continue };
        let n = runs.len().min(budget);
        if n == 0 {
            break;
        }
        budget -= n;
        groups.push(TaskGroup {
            service: id.clone(),
            task_ids: runs[..n].iter().map(|r| format!("{id}#{version}#{}.{}", r.instant_ms, r.attempt)).collect(),
            resources: Resources { cpus_milli: spec.cpus_milli, mem_mb: spec.mem_mb, disk_mb: spec.disk_mb },
            ports: spec.ports.iter().map(|p| p.port).collect(),
            constraints: spec.constraints.clone(),
            strategy: spec.placement,
        });
    }
    let input = Input { agents, running, groups, seed, sample_size: None };
    let version_of = wanted.iter().map(|(id, v, _)| (id.clone(), *v)).collect();
    Placement { input, version_of }
}

impl Placement {
    /// Places with scheduler-core and turns the plan into launches.
    fn place(self, d: &mut Decision) {
        let Placement { input, version_of } = self;
        let plan = scheduler_core::place(&input);
        let host: BTreeMap<NodeId, &scheduler_core::Agent> = input.agents.iter().map(|a| (a.id, a)).collect();
        for p in plan.placements {
            let mut parts = p.task_id.split('#');
            let service = parts.next().unwrap_or_default().to_string();
            if let Some(job) = jobs::job_of_service(&service) {
                let version = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                let run = parts.next().and_then(|r| r.split_once('.'));
                let Some((Ok(instant_ms), Ok(attempt))) = run.map(|(i, a)| (i.parse(), a.parse())) else { continue };
                let task = LaunchTask {
                    service: service.clone(),
                    version,
                    agent: p.agent,
                    host: host.get(&p.agent).map(|a| a.hostname.clone()).unwrap_or_default(),
                    ports: p.ports,
                };
                d.job_launches.push(JobCommand::Launch { job: job.to_string(), instant_ms, attempt, task });
                continue;
            }
            let Some(version) = version_of.get(service.as_str()).copied() else { continue };
            d.launches.push(LaunchTask {
                service,
                version,
                agent: p.agent,
                host: host.get(&p.agent).map(|a| a.hostname.clone()).unwrap_or_default(),
                ports: p.ports,
            });
        }
        let mut seen = BTreeSet::new();
        for u in plan.unplaced {
            let service = u.task_id.split('#').next().unwrap_or_default().to_string();
            if seen.insert(service.clone()) {
                d.unplaced.push((service, u.reason));
            }
        }
    }
}

/// Whether a scheduler entry went through; a refusal by the state machine counts, since
/// the other entries still stand on their own.
fn committed<T>(r: Result<T, crate::error::CoordError>) -> bool {
    match r {
        Ok(_) => true,
        Err(crate::error::CoordError::Apply(e)) => {
            warn!("a scheduler decision was refused: {e}");
            true
        }
        Err(e) => {
            warn!("committing a scheduler decision failed; the next pass decides again: {e}");
            false
        }
    }
}

/// The loop: one pass at a time, each reading the state its predecessor's entries left.
pub(crate) async fn scheduler_loop(weak: Weak<CoordNode>) {
    let mut tick = tokio::time::interval(Duration::from_millis(PASS_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_unplaced: BTreeMap<String, String> = BTreeMap::new();
    loop {
        tick.tick().await;
        let Some(node) = weak.upgrade() else { return };
        if !node.is_leader() {
            continue;
        }
        // Everything committed before (a predecessor's entries, our last pass) applied.
        if node.read_barrier().await.is_err() {
            continue;
        }
        let started = std::time::Instant::now();
        // Reading holds the state lock (and so holds up apply); placing does not.
        let prepared = node.view_long(|v| {
            let seed = v.last_applied_index();
            prepare_with_jobs(v.services(), v.registry(), v.jobs(), now_ms(), seed, MAX_LAUNCHES_PER_PASS)
        });
        let decision = crate::node::blocking(|| prepared.finish());
        let decide_ms = started.elapsed().as_millis() as u64;
        crate::metrics::global().placement.observe(started.elapsed().as_secs_f64());
        crate::metrics::global().placements.inc_by((decision.launches.len() + decision.job_launches.len()) as u64);
        let unplaced: BTreeMap<String, String> = decision.unplaced.iter().cloned().collect();
        for (s, why) in &unplaced {
            if last_unplaced.get(s) != Some(why) {
                warn!(service = %s, reason = %why, "tasks wait for room");
            }
        }
        last_unplaced = unplaced;
        if decision.is_empty() {
            continue;
        }
        info!(
            lost = decision.lost.iter().map(|l| l.1.len()).sum::<usize>(),
            kills = decision.kills.len(),
            launches = decision.launches.len(),
            done = decision.done.len(),
            job_launches = decision.job_launches.len(),
            tick = decision.tick,
            decide_ms,
            "scheduler pass"
        );
        // Lost and kill entries go first, one at a time: launches may need the room they
        // free. Launch entries are independent of one another, so they are proposed
        // together and their replication and apply overlap.
        let (launches, others): (Vec<Command>, Vec<Command>) = decision.commands().into_iter().partition(|c| {
            matches!(c, Command::Services(ServiceCommand::Launch { .. }) | Command::Jobs(JobCommand::Launch { .. }))
        });
        let (first, last): (Vec<Command>, Vec<Command>) =
            others.into_iter().partition(|c| !matches!(c, Command::Services(ServiceCommand::DeploymentDone { .. })));
        let mut ok = true;
        for cmd in first {
            ok = committed(node.write(cmd).await);
            if !ok {
                break;
            }
        }
        if ok {
            let results = futures::future::join_all(launches.into_iter().map(|c| node.write(c))).await;
            // Every result is logged, so no short circuit.
            let each: Vec<bool> = results.into_iter().map(committed).collect();
            ok = each.iter().all(|b| *b);
        }
        if ok {
            // Finished deployments are independent of one another too.
            futures::future::join_all(last.into_iter().map(|c| async { committed(node.write(c).await) })).await;
        }
        info!(ok, total_ms = started.elapsed().as_millis() as u64, "scheduler pass committed");
        // More may be waiting (a big scale): go again without waiting for the tick.
        tick.reset_immediately();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ipam::tests::MemStore;
    use crate::ipam::Ipam;
    use crate::registry::{NodeResources, Role};
    use crate::services::{ServiceSpec, ServicesOutput, TaskUpdate};

    struct Sim {
        services: Services,
        registry: Registry,
        ipam: Ipam,
        store: MemStore,
        now: u64,
    }

    impl Sim {
        fn new(agents: u64) -> Sim {
            let mut registry = Registry::default();
            for id in 1..=agents {
                registry.nodes.insert(
                    id,
                    NodeRecord {
                        node_id: id,
                        secret_hash: String::new(),
                        name: format!("node-{id}"),
                        addr: format!("127.0.0.{id}:2379"),
                        role: Role::Worker,
                        resources: NodeResources {
                            cpus_milli: 4000,
                            memory_mb: 4096,
                            disk_mb: 1000,
                            ports: vec![(31000, 31100)],
                        },
                        labels: BTreeMap::new(),
                        state: NodeState::Active,
                        availability: Availability::Active,
                        registered_at_ms: 0,
                        state_since_ms: 0,
                    },
                );
            }
            Sim {
                services: Services::default(),
                registry,
                ipam: Ipam::default(),
                store: MemStore(BTreeMap::new()),
                now: 1_000,
            }
        }

        fn cmd(&mut self, c: ServiceCommand) -> ServicesOutput {
            self.now += 100;
            self.services.apply(self.now, &c, &mut self.ipam, &mut self.store).unwrap()
        }

        /// One scheduler pass, committed.
        fn pass(&mut self) -> Decision {
            self.now += 100;
            let d = decide(&self.services, &self.registry, self.now, 7, MAX_LAUNCHES_PER_PASS);
            for c in d.commands() {
                let Command::Services(c) = c else { unreachable!() };
                self.cmd(c);
            }
            d
        }

        /// Agents start what they were given and report it healthy; killing ones end.
        fn agents_report(&mut self) {
            let updates: Vec<TaskUpdate> = self
                .services
                .tasks()
                .filter(|t| !t.state.is_terminal())
                .map(|t| TaskUpdate {
                    task_id: t.id.clone(),
                    agent: t.agent,
                    state: if t.state == TaskState::Killing { TaskState::Killed } else { TaskState::Running },
                    healthy: Some(true),
                    reason: String::new(),
                    exit_code: None,
                })
                .collect();
            if !updates.is_empty() {
                self.cmd(ServiceCommand::Update { updates });
            }
        }

        fn healthy(&self, id: &str) -> usize {
            self.services.active_tasks_of(id).filter(|t| self.services.is_healthy(t)).count()
        }
    }

    fn spec(instances: u32) -> ServiceSpec {
        let mut s = ServiceSpec::new("/web", "serve");
        s.instances = instances;
        s.cpus_milli = 500;
        s.mem_mb = 64;
        s.ports = vec![crate::services::spec::PortDef {
            port: 0,
            name: None,
            protocol: "tcp".into(),
            labels: BTreeMap::new(),
        }];
        s.constraints = vec![scheduler_core::Constraint::parse(&["hostname", "MAX_PER", "2"]).unwrap()];
        s
    }

    #[test]
    fn a_new_service_is_placed_then_its_deployment_finishes_once_healthy() {
        let mut sim = Sim::new(4);
        sim.cmd(ServiceCommand::Put { spec: Box::new(spec(6)), create: true, force: false });
        let d = sim.pass();
        assert_eq!(d.launches.len(), 6);
        let mut per_agent: BTreeMap<NodeId, usize> = BTreeMap::new();
        for l in &d.launches {
            *per_agent.entry(l.agent).or_default() += 1;
            assert_eq!(l.ports.len(), 1);
        }
        assert!(per_agent.values().all(|&n| n <= 2), "hostname:MAX_PER:2 holds: {per_agent:?}");
        assert!(sim.pass().is_empty(), "launched tasks are not launched again while staging");
        sim.agents_report();
        let d = sim.pass();
        assert_eq!(d.done, vec![1], "healthy at the target: the deployment is done");
        assert!(sim.pass().is_empty(), "a settled service needs nothing: a new leader's first pass changes nothing");
    }

    #[test]
    fn a_down_agents_tasks_are_lost_and_replaced_elsewhere_an_unreachable_ones_are_not() {
        let mut sim = Sim::new(4);
        sim.cmd(ServiceCommand::Put { spec: Box::new(spec(6)), create: true, force: false });
        sim.pass();
        sim.agents_report();
        sim.pass();
        let victim = sim.services.tasks().next().unwrap().agent;
        let on_victim = sim.services.tasks_on(victim).count();
        sim.registry.nodes.get_mut(&victim).unwrap().state = NodeState::Unreachable;
        assert!(sim.pass().is_empty(), "unreachable: tasks keep their place");
        sim.registry.nodes.get_mut(&victim).unwrap().state = NodeState::Down;
        let d = sim.pass();
        assert_eq!(d.lost.len(), 1);
        assert_eq!(d.lost[0].1.len(), on_victim);
        assert_eq!(d.launches.len(), on_victim, "replaced in the same pass");
        assert!(d.launches.iter().all(|l| l.agent != victim));
        sim.agents_report();
        let mut per_agent: BTreeMap<NodeId, usize> = BTreeMap::new();
        for t in sim.services.active_tasks_of("/web") {
            *per_agent.entry(t.agent).or_default() += 1;
        }
        assert_eq!(per_agent.values().sum::<usize>(), 6);
        assert!(per_agent.values().all(|&n| n <= 2), "{per_agent:?}");
    }

    #[test]
    fn a_rolling_update_keeps_the_minimum_healthy_and_ends_on_the_new_version() {
        let mut sim = Sim::new(4);
        sim.cmd(ServiceCommand::Put { spec: Box::new(spec(6)), create: true, force: false });
        sim.pass();
        sim.agents_report();
        sim.pass();
        let mut v2 = spec(6);
        v2.cmd = Some("serve --v2".into());
        v2.upgrade.min_health_permille = 500;
        sim.cmd(ServiceCommand::Put { spec: Box::new(v2), create: false, force: false });
        for round in 0..20 {
            let d = sim.pass();
            assert!(sim.healthy("/web") >= 3, "round {round}: {} healthy", sim.healthy("/web"));
            if d.done.len() == 1 {
                break;
            }
            sim.agents_report();
            assert!(sim.healthy("/web") >= 3, "round {round}");
        }
        let active: Vec<&Task> = sim.services.active_tasks_of("/web").collect();
        assert_eq!(active.len(), 6);
        assert!(active.iter().all(|t| t.version == 2 && sim.services.is_healthy(t)));
        assert!(sim.services.service("/web").unwrap().deployment.is_none());
    }

    #[test]
    fn failed_tasks_wait_out_the_backoff_and_extra_ones_go_youngest_first() {
        let mut sim = Sim::new(2);
        sim.cmd(ServiceCommand::Put { spec: Box::new(spec(1)), create: true, force: false });
        sim.pass();
        let t = sim.services.tasks().next().unwrap().clone();
        sim.cmd(ServiceCommand::Update {
            updates: vec![TaskUpdate {
                task_id: t.id,
                agent: t.agent,
                state: TaskState::Failed,
                healthy: None,
                reason: "exit 1".into(),
                exit_code: Some(1),
            }],
        });
        assert!(sim.pass().launches.is_empty(), "within the 1 s backoff");
        sim.now += 1_000;
        assert_eq!(sim.pass().launches.len(), 1, "after it");
        sim.agents_report();
        sim.pass();
        sim.cmd(ServiceCommand::Scale { id: "/web".into(), instances: 3, force: true });
        sim.pass();
        sim.agents_report();
        sim.cmd(ServiceCommand::Scale { id: "/web".into(), instances: 1, force: true });
        let youngest: Vec<TaskId> = {
            let mut v: Vec<&Task> = sim.services.active_tasks_of("/web").collect();
            v.sort_by(youngest_first);
            v.iter().take(2).map(|t| t.id.clone()).collect()
        };
        let d = sim.pass();
        let mut killed: Vec<TaskId> = d.kills.iter().map(|k| k.0.clone()).collect();
        killed.sort();
        let mut want = youngest.clone();
        want.sort();
        assert_eq!(killed, want);
    }

    #[test]
    fn a_roll_with_no_room_to_place_still_moves() {
        // Two agents, one task per host, instances 2 under the default strategy (keep all
        // healthy, up to 2 extra): no new task fits until an old one goes.
        let mut sim = Sim::new(2);
        let mut s = spec(2);
        s.constraints = vec![scheduler_core::Constraint::parse(&["hostname", "UNIQUE"]).unwrap()];
        sim.cmd(ServiceCommand::Put { spec: Box::new(s.clone()), create: true, force: false });
        sim.pass();
        sim.agents_report();
        sim.pass();
        s.cmd = Some("serve --v2".into());
        sim.cmd(ServiceCommand::Put { spec: Box::new(s), create: false, force: false });
        for _ in 0..20 {
            if !sim.pass().done.is_empty() {
                break;
            }
            sim.agents_report();
        }
        let active: Vec<&Task> = sim.services.active_tasks_of("/web").collect();
        assert_eq!(active.len(), 2);
        assert!(active.iter().all(|t| t.version == 2), "the roll finished");
        assert!(sim.services.service("/web").unwrap().deployment.is_none());
    }

    #[test]
    fn a_launch_proposed_twice_does_not_overshoot() {
        let mut sim = Sim::new(2);
        sim.cmd(ServiceCommand::Put { spec: Box::new(spec(2)), create: true, force: false });
        let d = decide(&sim.services, &sim.registry, sim.now, 7, MAX_LAUNCHES_PER_PASS);
        for _ in 0..2 {
            // A timed-out write that committed after all, then the same decision again.
            for c in d.commands() {
                let Command::Services(c) = c else { unreachable!() };
                sim.cmd(c);
            }
        }
        // The ceiling is instances × (1 + maximumOverCapacity) = 4.
        assert_eq!(sim.services.active_tasks_of("/web").count(), 4);
        let third = decide(&sim.services, &sim.registry, sim.now, 7, MAX_LAUNCHES_PER_PASS);
        let mut extra = third.clone();
        extra.launches = d.launches.clone();
        for c in extra.commands() {
            let Command::Services(c) = c else { unreachable!() };
            sim.cmd(c);
        }
        assert!(sim.services.active_tasks_of("/web").filter(|t| t.state != TaskState::Killing).count() <= 4);
    }

    #[test]
    fn hostnames_come_from_the_label_or_the_address() {
        let sim = Sim::new(1);
        let mut n = sim.registry.nodes[&1].clone();
        assert_eq!(hostname(&n), "127.0.0.1");
        n.addr = "[fd00::1]:2379".into();
        assert_eq!(hostname(&n), "fd00::1");
        n.labels.insert("hostname".into(), "box-a".into());
        assert_eq!(hostname(&n), "box-a");
    }
}
