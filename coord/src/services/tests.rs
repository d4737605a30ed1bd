use std::collections::BTreeMap;

use super::*;
use crate::ipam::tests::MemStore;
use crate::ipam::{parse_cidr, NetworkSpec};

struct World {
    s: Services,
    ipam: Ipam,
    store: MemStore,
    /// What take_changes wrote, as the store would hold it.
    disk: BTreeMap<Vec<u8>, Vec<u8>>,
    now: u64,
}

impl World {
    fn new() -> World {
        let mut w = World {
            s: Services::default(),
            ipam: Ipam::default(),
            store: MemStore(BTreeMap::new()),
            disk: BTreeMap::new(),
            now: 1_000,
        };
        let spec = NetworkSpec {
            name: "net".into(),
            subnets: vec![parse_cidr("10.9.0.0/29").unwrap()],
            gateways: vec![None],
            reserve: vec![],
            quarantine_ms: 60_000,
        };
        w.ipam.apply(0, &IpamCommand::CreateNetwork(spec), &mut w.store).unwrap();
        w
    }

    fn apply(&mut self, cmd: ServiceCommand) -> Result<ServicesOutput> {
        self.now += 10;
        let r = self.s.apply(self.now, &cmd, &mut self.ipam, &mut self.store);
        for (k, v) in self.s.take_changes() {
            match v {
                Some(v) => self.disk.insert(k, v),
                None => self.disk.remove(&k),
            };
        }
        r
    }

    fn launch(
        &mut self,
        service: &str,
        version: u64,
        agent: NodeId,
        n: usize,
    ) -> Vec<std::result::Result<(TaskId, Option<IpAddr>), String>> {
        let tasks = (0..n)
            .map(|_| LaunchTask { service: service.into(), version, agent, host: format!("h{agent}"), ports: vec![] })
            .collect();
        match self.apply(ServiceCommand::Launch { tasks }).unwrap() {
            ServicesOutput::Launched(v) => v,
            o => panic!("{o:?}"),
        }
    }

    fn report(&mut self, task: &str, agent: NodeId, state: TaskState, healthy: Option<bool>) -> u32 {
        let u = TaskUpdate { task_id: task.into(), agent, state, healthy, reason: String::new(), exit_code: None };
        match self.apply(ServiceCommand::Update { updates: vec![u] }).unwrap() {
            ServicesOutput::Count(n) => n,
            o => panic!("{o:?}"),
        }
    }

    fn holder(&mut self, task: &str) -> Option<IpAddr> {
        self.ipam.holding("net", task, &mut self.store).unwrap().map(|(_, a)| a)
    }

    /// The incrementally written records equal the full form, and load back the same.
    fn check_persistence(&self) {
        let full: BTreeMap<Vec<u8>, Vec<u8>> = self.s.records().into_iter().collect();
        assert_eq!(self.disk, full, "incremental writes differ from the full records");
        let loaded = Services::load(full.iter().map(|(k, v)| (&k[..], &v[..]))).unwrap();
        assert_eq!(loaded.records(), self.s.records());
        assert_eq!(loaded.by_agent, self.s.by_agent);
        assert_eq!(loaded.by_service, self.s.by_service);
    }
}

fn web(instances: u32) -> ServiceSpec {
    let mut s = ServiceSpec::new("/web", "serve");
    s.instances = instances;
    s.network = Some("net".into());
    s
}

#[test]
fn launch_names_tasks_from_the_log_and_addresses_them_in_the_same_entry() {
    let mut w = World::new();
    let out = w.apply(ServiceCommand::Put { spec: Box::new(web(2)), create: true, force: false }).unwrap();
    assert_eq!(out, ServicesOutput::Changed { id: "/web".into(), version: 1, deployment: Some(1) });
    let l = w.launch("/web", 1, 7, 2);
    let (a, ia) = l[0].clone().unwrap();
    let (b, ib) = l[1].clone().unwrap();
    assert_eq!((a.as_str(), b.as_str()), ("web.1", "web.2"));
    assert!(ia.is_some() && ib.is_some() && ia != ib, "distinct addresses: {ia:?} {ib:?}");
    assert_eq!(w.holder("web.1"), ia, "IPAM records the task as the owner");
    assert_eq!(w.s.tasks_on(7).count(), 2);
    w.check_persistence();
}

#[test]
fn a_full_network_refuses_the_task_and_spends_no_id() {
    let mut w = World::new();
    w.apply(ServiceCommand::Put { spec: Box::new(web(9)), create: true, force: false }).unwrap();
    // A /29 has 8 addresses: network, gateway and broadcast leave 5.
    let l = w.launch("/web", 1, 1, 6);
    assert_eq!(l.iter().filter(|r| r.is_ok()).count(), 5);
    assert!(l[5].as_ref().unwrap_err().contains("full"), "{:?}", l[5]);
    assert_eq!(w.s.tasks().count(), 5, "no task without an address");
    let next = w.launch("/other-missing", 1, 1, 1);
    assert!(next[0].as_ref().unwrap_err().contains("not found"));
    w.check_persistence();
}

#[test]
fn states_only_move_forward_and_only_from_the_tasks_agent() {
    let mut w = World::new();
    w.apply(ServiceCommand::Put { spec: Box::new(web(1)), create: true, force: false }).unwrap();
    w.launch("/web", 1, 3, 1);
    assert_eq!(w.report("web.1", 4, TaskState::Running, None), 0, "another agent's report is ignored");
    assert_eq!(w.report("web.1", 3, TaskState::Running, None), 1);
    assert_eq!(w.report("web.1", 3, TaskState::Running, None), 0, "a repeat changes nothing");
    assert_eq!(w.report("web.1", 3, TaskState::Starting, None), 0, "no moving back");
    assert_eq!(w.report("web.1", 3, TaskState::Running, Some(true)), 1);
    assert_eq!(w.s.task("web.1").unwrap().display_state(), "healthy");
    let ip = w.holder("web.1").unwrap();
    assert_eq!(w.report("web.1", 3, TaskState::Failed, None), 1);
    assert_eq!(w.holder("web.1"), None, "the end releases the address");
    assert!(w.s.task("web.1").unwrap().state.is_terminal());
    assert_eq!(w.report("web.1", 3, TaskState::Running, None), 0, "an ended task stays ended");
    // The released address sits in quarantine: the next task gets another one.
    let (_, next) = w.launch("/web", 1, 3, 1)[0].clone().unwrap();
    assert_ne!(next, Some(ip));
    w.check_persistence();
}

#[test]
fn backoff_grows_on_failures_not_on_kills_and_resets_with_a_new_version() {
    let mut w = World::new();
    let mut spec = web(1);
    spec.backoff = spec::Backoff { initial_ms: 1000, factor_permille: 2000, max_ms: 3000 };
    w.apply(ServiceCommand::Put { spec: Box::new(spec.clone()), create: true, force: false }).unwrap();
    let mut delays = vec![];
    for i in 1..=4 {
        w.launch("/web", 1, 1, 1);
        w.report(&format!("web.{i}"), 1, TaskState::Failed, None);
        let s = w.s.service("/web").unwrap();
        assert_eq!(s.delay_until_ms, w.now + s.delay_ms);
        delays.push(s.delay_ms);
    }
    assert_eq!(delays, vec![1000, 2000, 3000, 3000], "grows by the factor up to the maximum");
    w.launch("/web", 1, 1, 1);
    w.apply(ServiceCommand::Kill { tasks: vec![("web.5".into(), "scale down".into())] }).unwrap();
    w.report("web.5", 1, TaskState::Failed, None);
    assert_eq!(w.s.task("web.5").unwrap().state, TaskState::Killed, "an asked-for end is a kill");
    assert_eq!(w.s.service("/web").unwrap().delay_ms, 3000, "a kill does not grow the delay");
    spec.cmd = Some("serve --v2".into());
    w.apply(ServiceCommand::Put { spec: Box::new(spec), create: false, force: true }).unwrap();
    assert_eq!(w.s.service("/web").unwrap().delay_ms, 0, "a new version resets it");
    w.check_persistence();
}

#[test]
fn one_deployment_at_a_time_unless_forced_and_scale_keeps_the_version() {
    let mut w = World::new();
    w.apply(ServiceCommand::Put { spec: Box::new(web(2)), create: true, force: false }).unwrap();
    assert!(matches!(
        w.apply(ServiceCommand::Scale { id: "/web".into(), instances: 3, force: false }),
        Err(ServicesError::Locked { deployment: 1, .. })
    ));
    assert!(matches!(
        w.apply(ServiceCommand::Put { spec: Box::new(web(2)), create: true, force: false }),
        Err(ServicesError::Exists(_))
    ));
    w.apply(ServiceCommand::DeploymentDone { id: 1 }).unwrap();
    let out = w.apply(ServiceCommand::Scale { id: "/web".into(), instances: 3, force: false }).unwrap();
    assert_eq!(out, ServicesOutput::Changed { id: "/web".into(), version: 1, deployment: Some(2) });
    // An update that changes only instances is a scale too.
    let out = w.apply(ServiceCommand::Put { spec: Box::new(web(5)), create: false, force: true }).unwrap();
    assert_eq!(out, ServicesOutput::Changed { id: "/web".into(), version: 1, deployment: Some(3) });
    assert!(w.s.deployment(2).is_none(), "the forced change replaced deployment 2");
    let out = w.apply(ServiceCommand::Restart { id: "/web".into(), force: true }).unwrap();
    assert_eq!(out, ServicesOutput::Changed { id: "/web".into(), version: 2, deployment: Some(4) });
    assert_eq!(w.s.current_spec("/web").unwrap().instances, 5);
    // Rolling back the restart returns to version 1's config as a new version.
    let out = w.apply(ServiceCommand::CancelDeployment { id: 4, rollback: true }).unwrap();
    assert!(matches!(out, ServicesOutput::Changed { version: 3, .. }), "{out:?}");
    assert_eq!(w.s.spec("/web", 3).unwrap().cmd, w.s.spec("/web", 1).unwrap().cmd);
    w.check_persistence();
}

#[test]
fn remove_kills_every_task_and_the_service_goes_with_the_last() {
    let mut w = World::new();
    w.apply(ServiceCommand::Put { spec: Box::new(web(2)), create: true, force: false }).unwrap();
    w.launch("/web", 1, 1, 1);
    w.launch("/web", 1, 2, 1);
    w.apply(ServiceCommand::Remove { id: "/web".into() }).unwrap();
    assert!(w.s.tasks().all(|t| t.state == TaskState::Killing));
    assert!(matches!(
        w.apply(ServiceCommand::Scale { id: "/web".into(), instances: 1, force: true }),
        Err(ServicesError::Deleting(_))
    ));
    w.report("web.1", 1, TaskState::Killed, None);
    assert!(w.s.service("/web").is_some());
    // Agent 2 went down: the leader marks its task lost, and that was the last one.
    let n = w.apply(ServiceCommand::Lost {
        agent: 2,
        tasks: vec!["web.2".into(), "web.1".into()],
        reason: "agent down".into(),
    });
    assert_eq!(n.unwrap(), ServicesOutput::Count(1), "only the task still on agent 2 and not ended");
    assert!(w.s.service("/web").is_none());
    assert_eq!(w.s.tasks().count(), 0);
    assert!(w.s.versions_of("/web").is_empty());
    assert_eq!(w.holder("web.2"), None);
    w.check_persistence();
}

#[test]
fn ended_tasks_and_versions_are_bounded() {
    let mut w = World::new();
    let mut spec = web(1);
    spec.network = None;
    w.apply(ServiceCommand::Put { spec: Box::new(spec.clone()), create: true, force: false }).unwrap();
    for i in 1..=(ENDED_KEPT as u64 + 5) {
        w.launch("/web", 1, 1, 1);
        w.report(&format!("web.{i}"), 1, TaskState::Finished, None);
    }
    assert_eq!(w.s.tasks().count(), ENDED_KEPT);
    w.launch("/web", 1, 1, 1);
    for i in 0..(VERSIONS_KEPT + 5) {
        spec.cmd = Some(format!("serve {i}"));
        w.apply(ServiceCommand::Put { spec: Box::new(spec.clone()), create: false, force: true }).unwrap();
    }
    let kept: Vec<u64> = w.s.versions_of("/web").iter().map(|(v, _)| *v).collect();
    assert_eq!(kept.len(), VERSIONS_KEPT);
    assert!(kept.contains(&1), "version 1 stays while a task runs it: {kept:?}");
    w.check_persistence();
}

#[test]
fn touched_names_only_the_agents_whose_tasks_changed_and_a_reload_names_all() {
    let mut w = World::new();
    w.apply(ServiceCommand::Put { spec: Box::new(web(2)), create: true, force: false }).unwrap();
    w.launch("/web", 1, 1, 1);
    w.launch("/web", 1, 2, 1);
    let mark = w.s.touched_mark();
    assert_eq!(w.s.touched_since(mark), AgentsTouched::Agents(vec![]));
    w.report("web.2", 2, TaskState::Running, None);
    assert_eq!(w.s.touched_since(mark), AgentsTouched::Agents(vec![2]));
    let mark = w.s.touched_mark();
    w.apply(ServiceCommand::Kill { tasks: vec![("web.1".into(), "scale down".into())] }).unwrap();
    assert_eq!(w.s.touched_since(mark), AgentsTouched::Agents(vec![1]));
    let loaded = Services::load(w.s.records().iter().map(|(k, v)| (&k[..], &v[..]))).unwrap();
    assert_eq!(loaded.touched_since(w.s.touched_mark()), AgentsTouched::All);
}

#[test]
fn launches_stop_at_the_ceiling_within_one_entry_and_across_entries() {
    let mut w = World::new();
    let mut spec = web(2);
    spec.network = None;
    spec.upgrade.max_over_permille = 500;
    w.apply(ServiceCommand::Put { spec: Box::new(spec), create: true, force: false }).unwrap();
    // Ceiling: 2 + 2 × 0.5 = 3.
    let r = w.launch("/web", 1, 1, 5);
    assert_eq!(r.iter().filter(|x| x.is_ok()).count(), 3, "{r:?}");
    assert!(r[3].as_ref().unwrap_err().contains("ceiling"), "{r:?}");
    let again = w.launch("/web", 1, 1, 1);
    assert!(again[0].is_err(), "{again:?}");
    // A task being killed does not count.
    w.apply(ServiceCommand::Kill { tasks: vec![("web.1".into(), "scale down".into())] }).unwrap();
    assert!(w.launch("/web", 1, 1, 1)[0].is_ok());
    w.check_persistence();
}

#[test]
fn coalesced_reports_apply_in_order_and_count_each_report_alone() {
    let mut w = World::new();
    w.apply(ServiceCommand::Put { spec: Box::new(web(2)), create: true, force: false }).unwrap();
    w.launch("/web", 1, 3, 1);
    w.launch("/web", 1, 4, 1);
    let up = |task: &str, agent, state| TaskUpdate {
        task_id: task.into(),
        agent,
        state,
        healthy: None,
        reason: String::new(),
        exit_code: None,
    };
    let reports = vec![
        vec![up("web.1", 3, TaskState::Running)],
        // The same report again (a retry that was coalesced with its first try), then
        // another agent's.
        vec![up("web.1", 3, TaskState::Running)],
        vec![up("web.2", 4, TaskState::Running), up("web.2", 4, TaskState::Failed)],
        vec![],
    ];
    let out = w.apply(ServiceCommand::Reports { reports }).unwrap();
    assert_eq!(out, ServicesOutput::Counts(vec![1, 0, 2, 0]));
    assert_eq!(w.s.task("web.1").unwrap().state, TaskState::Running);
    assert!(w.s.task("web.2").unwrap().state.is_terminal(), "the later update of one report applies after the earlier");
    assert_eq!(w.holder("web.2"), None);
    // Too many updates in all: refused whole, nothing changes.
    let before = w.s.task("web.1").unwrap().clone();
    let many = vec![vec![up("web.1", 3, TaskState::Failed)], vec![up("web.9", 3, TaskState::Running); MAX_BATCH]];
    assert!(matches!(w.apply(ServiceCommand::Reports { reports: many }), Err(ServicesError::Invalid(_))));
    assert_eq!(w.s.task("web.1").unwrap(), &before);
    w.check_persistence();
}

#[test]
fn a_lost_tasks_copy_killed_on_its_agents_return_is_recorded_once() {
    let mut w = World::new();
    w.apply(ServiceCommand::Put { spec: Box::new(web(1)), create: true, force: false }).unwrap();
    w.launch("/web", 1, 3, 1);
    w.report("web.1", 3, TaskState::Running, None);
    w.apply(ServiceCommand::Lost { agent: 3, tasks: vec!["web.1".into()], reason: "agent down".into() }).unwrap();
    let killed = |agent| TaskUpdate {
        task_id: "web.1".into(),
        agent,
        state: TaskState::Killed,
        healthy: None,
        reason: "no longer assigned to this node".into(),
        exit_code: None,
    };
    // An `Update` (the older entry) records nothing, so that old logs replay as before.
    assert_eq!(w.report("web.1", 3, TaskState::Killed, None), 0);
    assert!(w.s.take_stale_kills().is_empty());
    // Another agent's word about it is not the copy's end.
    let out = w.apply(ServiceCommand::Reports { reports: vec![vec![killed(4)]] }).unwrap();
    assert_eq!(out, ServicesOutput::Counts(vec![0]));
    let out = w.apply(ServiceCommand::Reports { reports: vec![vec![killed(3)], vec![killed(3)]] }).unwrap();
    assert_eq!(out, ServicesOutput::Counts(vec![1, 0]), "once, even when repeated");
    assert_eq!(w.s.take_stale_kills(), vec![(3, "web.1".to_string(), "no longer assigned to this node".to_string())]);
    let t = w.s.task("web.1").unwrap();
    assert_eq!(t.state, TaskState::Lost, "still lost: the end state does not move");
    assert!(t.reason.starts_with("agent down; ") && t.reason.ends_with(STALE_COPY_MARK), "{}", t.reason);
    w.apply(ServiceCommand::Reports { reports: vec![vec![killed(3)]] }).unwrap();
    assert!(w.s.take_stale_kills().is_empty(), "a retry after the commit records nothing");
    w.check_persistence();
}
