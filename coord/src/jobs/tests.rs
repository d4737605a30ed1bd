use std::collections::BTreeMap;

use super::*;
use crate::ipam::tests::MemStore;
use crate::ipam::Ipam;
use crate::services::{ServiceCommand, TaskUpdate};

/// The jobs and services areas as the state machine drives them, with what their
/// changes wrote.
struct World {
    jobs: Jobs,
    services: Services,
    ipam: Ipam,
    store: MemStore,
    disk: BTreeMap<Vec<u8>, Vec<u8>>,
    now: u64,
}

const T0: u64 = 1_900_000_000_000;

impl World {
    fn new() -> World {
        World {
            jobs: Jobs::default(),
            services: Services::default(),
            ipam: Ipam::default(),
            store: MemStore(BTreeMap::new()),
            disk: BTreeMap::new(),
            now: T0,
        }
    }

    fn persist(&mut self) {
        let changes = self.jobs.take_changes().into_iter().chain(self.services.take_changes());
        for (k, v) in changes.collect::<Vec<_>>() {
            match v {
                Some(v) => self.disk.insert(k, v),
                None => self.disk.remove(&k),
            };
        }
    }

    fn job(&mut self, cmd: JobCommand) -> Result<JobsOutput> {
        let r = self.jobs.apply(self.now, &cmd, &mut self.services);
        self.persist();
        r
    }

    fn create(&mut self, spec: JobSpec) {
        self.job(JobCommand::Put { spec: Box::new(spec), create: true }).unwrap();
    }

    /// What the leader's loop does: tick, then launch every pending run on agent 1.
    fn tick_and_launch(&mut self) -> Vec<TaskId> {
        self.job(JobCommand::Tick).unwrap();
        let mut out = Vec::new();
        for w in self.jobs.wanted() {
            let task = LaunchTask { service: String::new(), version: 0, agent: 1, host: "h1".into(), ports: vec![] };
            let cmd = JobCommand::Launch { job: w.job, instant_ms: w.instant_ms, attempt: w.attempt, task };
            match self.job(cmd).unwrap() {
                JobsOutput::Launched(id) => out.push(id),
                o => panic!("{o:?}"),
            }
        }
        out
    }

    /// An agent's report that `task` ended with `code`, applied as the state machine
    /// applies it (services, then the jobs area in the same entry).
    fn report(&mut self, task: &str, state: TaskState, code: Option<i32>) {
        let u =
            TaskUpdate { task_id: task.into(), agent: 1, state, healthy: None, reason: String::new(), exit_code: code };
        self.services
            .apply(self.now, &ServiceCommand::Reports { reports: vec![vec![u]] }, &mut self.ipam, &mut self.store)
            .unwrap();
        for t in self.services.take_job_ends() {
            self.jobs.task_ended(self.now, &t, &mut self.services);
        }
        self.persist();
    }

    fn states(&self, job: &str) -> Vec<(u64, RunState)> {
        self.jobs.runs_of(job).map(|r| ((r.instant_ms - T0) / 1000, r.state)).collect()
    }

    /// Reloading from what was written gives the same jobs and runs.
    fn check_reload(&self) {
        let loaded =
            Jobs::load(self.disk.iter().filter(|(k, _)| k.starts_with(keys::PREFIX)).map(|(k, v)| (&k[..], &v[..])))
                .unwrap();
        assert_eq!(loaded.records(), self.jobs.records());
        assert_eq!(loaded.wanted(), self.jobs.wanted());
    }
}

fn every_5s(name: &str) -> JobSpec {
    let mut s = JobSpec::new(name, "echo run");
    s.schedule = format!("R/{}/PT5S", schedule::show(T0 + 5000, &jiff::tz::TimeZone::UTC));
    s
}

#[test]
fn each_instant_is_decided_once_and_a_second_tick_does_nothing() {
    let mut w = World::new();
    w.create(every_5s("a"));
    assert!(!w.jobs.due(w.now));
    w.now = T0 + 5000;
    assert!(w.jobs.due(w.now));
    let tasks = w.tick_and_launch();
    assert_eq!(tasks, vec![task_id("a", T0 + 5000, 1)]);
    // The same tick again (a retried write, or a new leader's first tick): nothing new.
    assert_eq!(w.job(JobCommand::Tick).unwrap(), JobsOutput::Count(0));
    assert!(w.tick_and_launch().is_empty());
    // The same launch again is refused: the attempt is not due any more.
    let task = LaunchTask { service: String::new(), version: 0, agent: 1, host: "h1".into(), ports: vec![] };
    let again = JobCommand::Launch { job: "a".into(), instant_ms: T0 + 5000, attempt: 1, task };
    assert!(matches!(w.job(again), Err(JobsError::Conflict(_))));
    w.report(&tasks[0], TaskState::Finished, Some(0));
    assert_eq!(w.states("a"), vec![(5, RunState::Succeeded)]);
    assert_eq!(w.jobs.job("a").unwrap().success_count, 1);
    w.check_reload();
}

#[test]
fn an_instant_missed_by_more_than_epsilon_is_recorded_as_skipped() {
    let mut w = World::new();
    let mut s = every_5s("a");
    s.epsilon_ms = 3000;
    s.concurrent = true;
    w.create(s);
    // No leader from 5 s to 16 s: 5 and 10 are more than 3 s late, 15 is 1 s late.
    w.now = T0 + 16_000;
    let tasks = w.tick_and_launch();
    assert_eq!(tasks, vec![task_id("a", T0 + 15_000, 1)]);
    assert_eq!(w.states("a"), vec![(5, RunState::Skipped), (10, RunState::Skipped), (15, RunState::Running)]);
    let skipped = w.jobs.run("a", T0 + 5000).unwrap();
    assert!(skipped.reason.contains("more than epsilon"), "{}", skipped.reason);
    assert_eq!(w.jobs.job("a").unwrap().skipped_count, 2);
    w.check_reload();
}

#[test]
fn catch_up_once_runs_only_the_newest_missed_instant() {
    let mut w = World::new();
    let mut s = every_5s("a");
    s.missed = Missed::CatchUpOnce;
    s.epsilon_ms = 1000;
    w.create(s);
    w.now = T0 + 22_000;
    let tasks = w.tick_and_launch();
    assert_eq!(tasks, vec![task_id("a", T0 + 20_000, 1)]);
    assert_eq!(
        w.states("a"),
        vec![(5, RunState::Skipped), (10, RunState::Skipped), (15, RunState::Skipped), (20, RunState::Running)]
    );
}

#[test]
fn a_run_is_tried_again_up_to_retries_then_fails() {
    let mut w = World::new();
    let mut s = every_5s("a");
    s.retries = 1;
    w.create(s);
    w.now = T0 + 5000;
    let t1 = w.tick_and_launch();
    w.report(&t1[0], TaskState::Failed, Some(3));
    let r = w.jobs.run("a", T0 + 5000).unwrap();
    assert_eq!(r.state, RunState::Pending);
    assert!(r.reason.contains("exited with 3"), "{}", r.reason);
    let t2 = w.tick_and_launch();
    assert_eq!(t2, vec![task_id("a", T0 + 5000, 2)]);
    // Lost counts as a failed attempt too.
    w.report(&t2[0], TaskState::Lost, None);
    let r = w.jobs.run("a", T0 + 5000).unwrap();
    assert_eq!((r.state, r.attempts), (RunState::Failed, 2));
    assert_eq!(r.tasks, vec![t1[0].clone(), t2[0].clone()]);
    assert_eq!(w.jobs.job("a").unwrap().error_count, 1);
    // A non-zero exit reported as finished is a failure as well.
    w.now = T0 + 10_000;
    let t3 = w.tick_and_launch();
    w.report(&t3[0], TaskState::Finished, Some(1));
    assert_eq!(w.jobs.run("a", T0 + 10_000).unwrap().state, RunState::Pending);
    w.check_reload();
}

#[test]
fn without_concurrent_an_instant_during_a_run_is_skipped_with_the_reason() {
    let mut w = World::new();
    w.create(every_5s("a"));
    w.now = T0 + 5000;
    w.tick_and_launch();
    w.now = T0 + 10_000;
    assert!(w.tick_and_launch().is_empty());
    let r = w.jobs.run("a", T0 + 10_000).unwrap();
    assert_eq!(r.state, RunState::Skipped);
    assert!(r.reason.contains("concurrent is false"), "{}", r.reason);
    // A manual run is refused while one is going, with the reason.
    assert!(matches!(w.job(JobCommand::Run { name: "a".into() }), Err(JobsError::Conflict(_))));
}

#[test]
fn a_child_runs_once_per_successful_parent_run_and_records_which() {
    let mut w = World::new();
    w.create(every_5s("p"));
    let mut c = JobSpec::new("c", "echo child");
    c.parents = vec!["p".into()];
    w.create(c);
    w.now = T0 + 5000;
    let t = w.tick_and_launch();
    w.now += 100;
    w.report(&t[0], TaskState::Finished, Some(0));
    // The child's run was created by the same entry as the parent's success.
    let runs: Vec<&Run> = w.jobs.runs_of("c").collect();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].trigger, Trigger::Parents(vec![("p".into(), T0 + 5000)]));
    assert_eq!(runs[0].state, RunState::Pending);
    // A repeated report of the same success starts nothing more.
    w.report(&t[0], TaskState::Finished, Some(0));
    assert_eq!(w.jobs.runs_of("c").count(), 1);
    let child = w.tick_and_launch();
    assert_eq!(child.len(), 1);
    w.report(&child[0], TaskState::Finished, Some(0));
    // A failed parent run starts no child.
    w.now = T0 + 10_000;
    let mut p = every_5s("p");
    p.retries = 0;
    w.job(JobCommand::Put { spec: Box::new(p), create: false }).unwrap();
    let t = w.tick_and_launch();
    w.report(&t[0], TaskState::Failed, Some(1));
    assert_eq!(w.jobs.runs_of("c").count(), 1);
    w.check_reload();
    // Cycles and unknown parents are refused; a parent with children cannot go.
    let mut p2 = every_5s("p");
    p2.schedule.clear();
    p2.parents = vec!["c".into()];
    assert!(
        matches!(w.job(JobCommand::Put { spec: Box::new(p2), create: false }), Err(JobsError::Invalid(e)) if e.contains("cycle"))
    );
    let mut orphan = JobSpec::new("o", "x");
    orphan.parents = vec!["nope".into()];
    assert!(matches!(w.job(JobCommand::Put { spec: Box::new(orphan), create: true }), Err(JobsError::Invalid(_))));
    assert!(matches!(w.job(JobCommand::Remove { name: "p".into() }), Err(JobsError::Conflict(_))));
}

#[test]
fn a_removed_job_kills_its_run_and_goes_with_it() {
    let mut w = World::new();
    w.create(every_5s("a"));
    w.now = T0 + 5000;
    let t = w.tick_and_launch();
    w.job(JobCommand::Remove { name: "a".into() }).unwrap();
    assert_eq!(w.services.task(&t[0]).unwrap().state, TaskState::Killing);
    assert!(w.jobs.job("a").unwrap().deleting);
    assert!(w.tick_and_launch().is_empty());
    w.report(&t[0], TaskState::Killed, None);
    assert!(w.jobs.job("a").is_none());
    assert_eq!(w.jobs.runs_of("a").count(), 0);
    assert!(w.services.task(&t[0]).is_none());
    assert!(w.services.versions_of("job:a").is_empty());
    assert!(!w.disk.keys().any(|k| k.starts_with(keys::PREFIX)), "records left behind");
}

#[test]
fn history_is_bounded_and_the_dropped_runs_tasks_go_too() {
    let mut w = World::new();
    let mut s = every_5s("a");
    s.epsilon_ms = 1000;
    w.create(s);
    let mut first = None;
    for i in 1..=(HISTORY_KEPT as u64 + 5) {
        w.now = T0 + 5000 * i;
        let t = w.tick_and_launch();
        first.get_or_insert(t[0].clone());
        w.report(&t[0], TaskState::Finished, Some(0));
    }
    assert_eq!(w.jobs.runs_of("a").count(), HISTORY_KEPT);
    assert!(w.services.task(first.as_ref().unwrap()).is_none());
    assert_eq!(w.jobs.job("a").unwrap().success_count, HISTORY_KEPT as u64 + 5);
    w.check_reload();
}

#[test]
fn task_ids_name_their_run() {
    assert_eq!(parse_task_id(&task_id("my-job_1", 17, 2)), Some(("my-job_1", 17, 2)));
    assert_eq!(parse_task_id("web.3"), None);
    assert_eq!(job_of_service("job:x"), Some("x"));
    assert_eq!(job_of_service("/x"), None);
}

/// Drives a job through leader time hour by hour, as the leader's loop would, and returns
/// the instants it ran, shown in its zone.
fn runs_over(spec: JobSpec, from: &str, hours: u64) -> Vec<String> {
    let mut w = World::new();
    let from = from.parse::<jiff::Timestamp>().unwrap().as_millisecond() as u64;
    w.now = from;
    let tz = schedule::zone(&spec.time_zone).unwrap();
    let name = spec.name.clone();
    w.create(spec);
    for h in 0..hours {
        w.now = from + h * 3_600_000;
        for t in w.tick_and_launch() {
            w.report(&t, TaskState::Finished, Some(0));
        }
    }
    w.jobs
        .runs_of(&name)
        .map(|r| {
            assert_eq!(r.state, RunState::Succeeded, "{r:?}");
            schedule::show(r.instant_ms, &tz)
        })
        .collect()
}

#[test]
fn a_daily_0230_job_runs_on_its_zones_calendar_across_daylight_saving_changes() {
    // Europe/Berlin moves clocks forward on 2030-03-31 (02:00 → 03:00) and back on
    // 2030-10-27 (03:00 → 02:00).
    let mut s = JobSpec::new("nightly", "true");
    s.schedule = "R/2030-03-29T02:30:00/P1D".into();
    s.time_zone = "Europe/Berlin".into();
    s.epsilon_ms = 3_600_000;
    assert_eq!(
        runs_over(s.clone(), "2030-03-28T12:00:00Z", 24 * 4),
        [
            "2030-03-29T02:30:00+01:00[Europe/Berlin]",
            "2030-03-30T02:30:00+01:00[Europe/Berlin]",
            "2030-03-31T03:30:00+02:00[Europe/Berlin]",
            "2030-04-01T02:30:00+02:00[Europe/Berlin]",
        ]
    );
    s.schedule = "R/2030-10-25T02:30:00/P1D".into();
    assert_eq!(
        runs_over(s, "2030-10-24T12:00:00Z", 24 * 4),
        [
            "2030-10-25T02:30:00+02:00[Europe/Berlin]",
            "2030-10-26T02:30:00+02:00[Europe/Berlin]",
            // 02:30 happens twice that night: it runs once, at the first.
            "2030-10-27T02:30:00+02:00[Europe/Berlin]",
            "2030-10-28T02:30:00+01:00[Europe/Berlin]",
        ]
    );
    // The same with cron, in New York, whose clocks go back at 02:00 on 2030-11-03 (to
    // 01:00): 02:30 comes once that night, already at the winter offset.
    let mut s = JobSpec::new("nightly", "true");
    s.cron = "30 2 * * *".into();
    s.time_zone = "America/New_York".into();
    s.epsilon_ms = 3_600_000;
    let runs = runs_over(s, "2030-11-01T12:00:00Z", 24 * 4);
    assert_eq!(
        runs,
        [
            "2030-11-02T02:30:00-04:00[America/New_York]",
            "2030-11-03T02:30:00-05:00[America/New_York]",
            "2030-11-04T02:30:00-05:00[America/New_York]",
            "2030-11-05T02:30:00-05:00[America/New_York]",
        ]
    );
}

#[test]
fn an_older_parent_run_succeeding_after_a_newer_one_still_starts_a_child_run() {
    let mut w = World::new();
    let mut p = every_5s("p");
    p.concurrent = true;
    w.create(p);
    let mut c = JobSpec::new("c", "echo child");
    c.parents = vec!["p".into()];
    c.concurrent = true;
    w.create(c);
    w.now = T0 + 5000;
    let t5 = w.tick_and_launch();
    w.now = T0 + 10_000;
    let t10 = w.tick_and_launch();
    // The newer run succeeds first, then the older one.
    w.report(&t10[0], TaskState::Finished, Some(0));
    w.report(&t5[0], TaskState::Finished, Some(0));
    let triggers: Vec<Trigger> = w.jobs.runs_of("c").map(|r| r.trigger.clone()).collect();
    assert_eq!(
        triggers,
        vec![Trigger::Parents(vec![("p".into(), T0 + 10_000)]), Trigger::Parents(vec![("p".into(), T0 + 5000)])]
    );
}

#[test]
fn a_parent_success_during_a_childs_run_is_taken_up_when_that_run_ends() {
    let mut w = World::new();
    let mut p = every_5s("p");
    p.concurrent = true;
    w.create(p);
    let mut c = JobSpec::new("c", "echo child");
    c.parents = vec!["p".into()];
    w.create(c);
    w.now = T0 + 5000;
    let t = w.tick_and_launch();
    w.report(&t[0], TaskState::Finished, Some(0));
    let child = w.tick_and_launch();
    assert_eq!(child.len(), 1);
    // The parent succeeds again while the child (not concurrent) still runs.
    w.now = T0 + 10_000;
    let t = w.tick_and_launch();
    let t: Vec<&TaskId> = t.iter().filter(|id| id.starts_with("job-p.")).collect();
    w.report(t[0], TaskState::Finished, Some(0));
    assert_eq!(w.jobs.runs_of("c").count(), 1, "no second child run while one goes");
    w.report(&child[0], TaskState::Finished, Some(0));
    let runs: Vec<&Run> = w.jobs.runs_of("c").collect();
    assert_eq!(runs.len(), 2, "the second parent success starts one when the first child run ends");
    assert_eq!(runs[1].state, RunState::Pending);
    w.check_reload();
}

#[test]
fn a_run_that_cannot_be_placed_does_not_queue_without_end() {
    let mut w = World::new();
    let mut s = every_5s("a");
    s.concurrent = true;
    w.create(s);
    for i in 1..=(MAX_PENDING_RUNS as u64 + 3) {
        w.now = T0 + 5000 * i;
        w.job(JobCommand::Tick).unwrap();
    }
    assert_eq!(w.jobs.wanted().len(), MAX_PENDING_RUNS);
    let last = w.jobs.run("a", T0 + 5000 * (MAX_PENDING_RUNS as u64 + 3)).unwrap();
    assert_eq!(last.state, RunState::Skipped);
    assert!(last.reason.contains("already waiting"), "{}", last.reason);
}

#[test]
fn a_schedule_with_nothing_left_to_run_is_refused() {
    let mut w = World::new();
    let mut s = JobSpec::new("old", "true");
    s.schedule = "R2/2001-01-01T00:00:00Z/PT1H".into();
    let e = w.job(JobCommand::Put { spec: Box::new(s), create: true }).unwrap_err();
    assert!(e.to_string().contains("would never run"), "{e}");
    assert!(w.jobs.job("old").is_none());
    // R<n> with a calendar period, created near its end, still finds its last runs.
    let mut s = JobSpec::new("monthly", "true");
    s.schedule = "R40/2030-02-01T00:00:00Z/P1M".into();
    w.now = "2033-04-15T00:00:00Z".parse::<jiff::Timestamp>().unwrap().as_millisecond() as u64;
    w.create(s);
    let next = w.jobs.job("monthly").unwrap().next.unwrap();
    assert_eq!((next.0, schedule::show_utc(next.1)), (39, "2033-05-01T00:00:00Z".to_string()));
}
