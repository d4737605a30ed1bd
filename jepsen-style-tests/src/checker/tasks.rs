//! Tasks: services scaled during faults end with exactly their instance count running,
//! no task runs twice, and no overlay IP is held by two tasks.
//!
//! Inputs: the history (`scale` writes with key = service and value = instances;
//! `tasks` reads answering the non-ended tasks as `[id, service, agent, ip, state]`
//! rows, taken from any master) and a [`Final`] observation made after the heal, once
//! the cluster had time to converge: the leader's view and what actually runs on every
//! node, read from the agents' sandboxes and `/proc`.
//!
//! - **instances**: the final instance count of each service was asked by a scale that
//!   nothing acknowledged later superseded (or is the initial one if no scale was
//!   acknowledged), and exactly that many processes of the service run, and the leader
//!   has exactly that many tasks, all running;
//! - **no task twice**: no task id has a live process on two nodes, and every live task
//!   process is a task the leader places on that node (a replaced copy that was not
//!   killed is an anomaly), and every task the leader has running has its process;
//! - **no IP twice**: no snapshot read during the run shows one IP on two tasks, the
//!   final tasks' IPs are distinct, and IPAM holds each one for exactly that task.

use super::{secs, CheckResult, Verdict};
use crate::history::{Call, OpType};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A task as the leader lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRow {
    pub id: String,
    pub service: String,
    pub agent: u64,
    pub ip: String,
    pub state: String,
}

/// A live task process found on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proc {
    pub node: String,
    pub agent: u64,
    pub task: String,
    pub service: String,
    pub pid: i32,
}

/// What the cluster looked like once it converged (or when the wait for it ran out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Final {
    /// Service → instances in its current spec (read after a read barrier).
    pub instances: BTreeMap<String, u32>,
    /// The leader's non-ended tasks.
    pub tasks: Vec<TaskRow>,
    pub processes: Vec<Proc>,
    /// Owner → address in the tasks' network.
    pub ipam: BTreeMap<String, String>,
    /// Seconds from the heal until the observation agreed with itself; None if it never did.
    pub converged_after_ms: Option<u64>,
}

fn is_running(state: &str) -> bool {
    matches!(state, "running" | "healthy")
}

/// The row shape `tasks` reads answer with.
pub fn row_json(t: &TaskRow) -> serde_json::Value {
    serde_json::json!([t.id, t.service, t.agent, t.ip, t.state])
}

fn row_from(v: &serde_json::Value) -> Option<TaskRow> {
    Some(TaskRow {
        id: v.get(0)?.as_str()?.to_string(),
        service: v.get(1)?.as_str()?.to_string(),
        agent: v.get(2)?.as_u64()?,
        ip: v.get(3)?.as_str()?.to_string(),
        state: v.get(4)?.as_str()?.to_string(),
    })
}

/// The instance counts the final state may show for `service`.
fn allowed_final(calls: &[Call], service: &str, initial: u32) -> BTreeSet<u64> {
    let scales: Vec<&Call> = calls
        .iter()
        .filter(|c| c.f == "scale" && c.key.as_deref() == Some(service) && c.kind != OpType::Fail)
        .collect();
    let mut allowed = BTreeSet::new();
    let any_ok = scales.iter().any(|c| c.kind == OpType::Ok);
    if !any_ok {
        allowed.insert(initial as u64);
    }
    for w in &scales {
        // An acknowledged scale that began after `w` ended was applied after it.
        let superseded =
            w.complete_ns.is_some_and(|end| scales.iter().any(|o| o.kind == OpType::Ok && o.invoke_ns > end));
        if !superseded {
            if let Some(v) = w.input.as_u64() {
                allowed.insert(v);
            }
        }
    }
    allowed
}

pub fn check(calls: &[Call], fin: &Final, initial: u32) -> CheckResult {
    let mut r = CheckResult::new("tasks (exact instances, no task twice, no IP twice)");
    // IPs during the run, from every snapshot read.
    let mut reads = 0;
    for c in calls.iter().filter(|c| c.f == "tasks" && c.kind == OpType::Ok) {
        let Some(rows) = c.output.as_array() else {
            r.verdict = r.verdict.and(Verdict::Unknown);
            r.anomalies.push(format!("a tasks read at {} is not a list", secs(c.invoke_ns)));
            continue;
        };
        reads += 1;
        let mut by_ip: BTreeMap<String, String> = BTreeMap::new();
        for row in rows.iter().filter_map(row_from) {
            if row.ip.is_empty() {
                continue;
            }
            if let Some(other) = by_ip.insert(row.ip.clone(), row.id.clone()) {
                r.anomaly(format!(
                    "the tasks read at {} from {} shows {} on both {other} and {}",
                    secs(c.invoke_ns),
                    c.node.as_deref().unwrap_or("?"),
                    row.ip,
                    row.id
                ));
            }
        }
    }
    r.stat("snapshot_reads", reads);
    let scales = calls.iter().filter(|c| c.f == "scale").count();
    r.stat("scales", scales);
    r.stat("scales_ok", calls.iter().filter(|c| c.f == "scale" && c.kind == OpType::Ok).count());
    r.stat("final_tasks", fin.tasks.len());
    r.stat("final_processes", fin.processes.len());
    r.stat("converged_after_ms", fin.converged_after_ms.map_or(serde_json::Value::Null, |v| v.into()));
    if fin.instances.is_empty() {
        r.verdict = r.verdict.and(Verdict::Unknown);
        r.anomalies.push("the final state could not be read: nothing can be said about it".into());
        return r;
    }

    for (service, &want) in &fin.instances {
        let allowed = allowed_final(calls, service, initial);
        if !allowed.contains(&(want as u64)) {
            r.anomaly(format!(
                "{service} ends at {want} instances, which no surviving scale asked for (allowed {allowed:?})"
            ));
        }
    }
    check_state(fin, &mut r);
    if fin.converged_after_ms.is_none() && r.verdict == Verdict::Valid {
        r.anomaly("the cluster never converged after the heal".into());
    }
    r
}

/// Whether the observed state agrees with itself: what the convergence wait polls for.
pub fn state_agrees(fin: &Final) -> bool {
    let mut r = CheckResult::new("");
    check_state(fin, &mut r);
    !fin.instances.is_empty() && r.verdict == Verdict::Valid
}

/// The checks on the final state alone: instances, no task twice, no IP twice.
fn check_state(fin: &Final, r: &mut CheckResult) {
    // Instances.
    for (service, &want) in &fin.instances {
        let procs = fin.processes.iter().filter(|p| &p.service == service).count();
        if procs != want as usize {
            r.anomaly(format!("{service}: {procs} task processes run on the nodes, the spec says {want}"));
        }
        let tasks: Vec<&TaskRow> = fin.tasks.iter().filter(|t| &t.service == service).collect();
        let running = tasks.iter().filter(|t| is_running(&t.state)).count();
        if running != want as usize || tasks.len() != running {
            r.anomaly(format!(
                "{service}: the leader has {} tasks, {running} running, the spec says {want}",
                tasks.len()
            ));
        }
    }
    for p in &fin.processes {
        if !fin.instances.contains_key(&p.service) {
            r.anomaly(format!("{} (pid {} on {}) runs for unknown service {}", p.task, p.pid, p.node, p.service));
        }
    }

    // No task twice.
    let mut nodes_of: BTreeMap<&str, Vec<&Proc>> = BTreeMap::new();
    for p in &fin.processes {
        nodes_of.entry(&p.task).or_default().push(p);
    }
    for (task, ps) in &nodes_of {
        if ps.len() > 1 {
            let at: Vec<String> = ps.iter().map(|p| format!("{} (pid {})", p.node, p.pid)).collect();
            r.anomaly(format!("task {task} runs {} times: {}", ps.len(), at.join(", ")));
        }
    }
    let leader: BTreeMap<&str, &TaskRow> = fin.tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    for p in &fin.processes {
        match leader.get(p.task.as_str()) {
            Some(t) if t.agent == p.agent => {}
            Some(t) => r.anomaly(format!(
                "task {} runs on {} (agent {}), the leader placed it on agent {}",
                p.task, p.node, p.agent, t.agent
            )),
            None => r.anomaly(format!(
                "task {} still runs on {} (pid {}) but the leader no longer has it: a copy nobody killed",
                p.task, p.node, p.pid
            )),
        }
    }
    for t in fin.tasks.iter().filter(|t| is_running(&t.state)) {
        if !fin.processes.iter().any(|p| p.task == t.id && p.agent == t.agent) {
            r.anomaly(format!("the leader has {} {} on agent {}, but no such process runs", t.id, t.state, t.agent));
        }
    }

    // No IP twice.
    let mut ips: BTreeMap<&str, &str> = BTreeMap::new();
    for t in &fin.tasks {
        if let Some(other) = ips.insert(&t.ip, &t.id) {
            r.anomaly(format!("{} is the IP of both {other} and {}", t.ip, t.id));
        }
        match fin.ipam.get(&t.id) {
            Some(a) if *a == t.ip => {}
            Some(a) => r.anomaly(format!("{} has IP {}, IPAM gives its owner {a}", t.id, t.ip)),
            None => r.anomaly(format!("{} has IP {}, which IPAM does not hold for it", t.id, t.ip)),
        }
    }
    let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
    for (owner, addr) in &fin.ipam {
        if let Some(other) = owners.insert(addr, owner) {
            r.anomaly(format!("IPAM gives {addr} to both {other} and {owner}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn call(f: &str, key: Option<&str>, input: Value, output: Value, kind: OpType, t: (u64, Option<u64>)) -> Call {
        Call {
            process: 0,
            f: f.into(),
            key: key.map(String::from),
            input,
            output,
            kind,
            invoke_ns: t.0,
            complete_ns: t.1,
            gave_up_ns: t.1,
            node: Some("n1".into()),
            error: None,
        }
    }

    fn task(id: &str, agent: u64, ip: &str) -> TaskRow {
        TaskRow { id: id.into(), service: "/s".into(), agent, ip: ip.into(), state: "running".into() }
    }

    fn proc_(task: &str, agent: u64) -> Proc {
        Proc { node: format!("n{agent}"), agent, task: task.into(), service: "/s".into(), pid: 100 + agent as i32 }
    }

    fn good() -> Final {
        Final {
            instances: BTreeMap::from([("/s".into(), 2)]),
            tasks: vec![task("s.1", 1, "10.0.0.1"), task("s.2", 2, "10.0.0.2")],
            processes: vec![proc_("s.1", 1), proc_("s.2", 2)],
            ipam: BTreeMap::from([("s.1".into(), "10.0.0.1".into()), ("s.2".into(), "10.0.0.2".into())]),
            converged_after_ms: Some(1_000),
        }
    }

    fn scale(v: u64, kind: OpType, t: (u64, Option<u64>)) -> Call {
        call("scale", Some("/s"), json!(v), json!(v), kind, t)
    }

    #[test]
    fn a_converged_cluster_that_matches_its_last_scale_is_valid() {
        let calls = vec![scale(5, OpType::Ok, (1, Some(2))), scale(2, OpType::Ok, (3, Some(4)))];
        assert_eq!(check(&calls, &good(), 3).verdict, Verdict::Valid);
        // No acknowledged scale: the initial count, or any unknown one.
        assert_eq!(check(&[], &good(), 2).verdict, Verdict::Valid);
        assert_eq!(check(&[scale(2, OpType::Info, (1, None))], &good(), 3).verdict, Verdict::Valid);
    }

    #[test]
    fn a_superseded_or_failed_scale_cannot_be_the_end_state() {
        let superseded = vec![scale(2, OpType::Ok, (1, Some(2))), scale(5, OpType::Ok, (3, Some(4)))];
        assert_eq!(check(&superseded, &good(), 3).verdict, Verdict::Invalid);
        let failed = vec![scale(2, OpType::Fail, (1, Some(2)))];
        assert_eq!(check(&failed, &good(), 3).verdict, Verdict::Invalid);
        // Concurrent acknowledged scales: either may win.
        let concurrent = vec![scale(2, OpType::Ok, (1, Some(4))), scale(5, OpType::Ok, (2, Some(3)))];
        assert_eq!(check(&concurrent, &good(), 3).verdict, Verdict::Valid);
    }

    #[test]
    fn too_few_or_too_many_processes_are_caught() {
        let mut f = good();
        f.processes.pop();
        assert_eq!(check(&[], &f, 2).verdict, Verdict::Invalid);
        let mut f = good();
        f.processes.push(proc_("s.3", 3));
        assert_eq!(check(&[], &f, 2).verdict, Verdict::Invalid);
    }

    #[test]
    fn a_task_on_two_nodes_or_on_the_wrong_node_is_caught() {
        let mut f = good();
        f.processes.push(proc_("s.1", 3));
        let r = check(&[], &f, 2);
        assert_eq!(r.verdict, Verdict::Invalid);
        assert!(r.anomalies.iter().any(|a| a.contains("runs 2 times")), "{:?}", r.anomalies);
        let mut f = good();
        f.processes[0].agent = 3;
        assert_eq!(check(&[], &f, 2).verdict, Verdict::Invalid);
    }

    #[test]
    fn an_ip_held_twice_is_caught_in_snapshots_in_the_end_state_and_in_ipam() {
        let rows = json!([row_json(&task("s.1", 1, "10.0.0.9")), row_json(&task("s.2", 2, "10.0.0.9"))]);
        let snap = call("tasks", None, Value::Null, rows, OpType::Ok, (1, Some(2)));
        assert_eq!(check(&[snap], &good(), 2).verdict, Verdict::Invalid);
        let mut f = good();
        f.tasks[1].ip = "10.0.0.1".into();
        f.ipam.insert("s.2".into(), "10.0.0.1".into());
        assert_eq!(check(&[], &f, 2).verdict, Verdict::Invalid);
        let mut f = good();
        f.ipam.insert("someone".into(), "10.0.0.2".into());
        assert_eq!(check(&[], &f, 2).verdict, Verdict::Invalid);
        let mut f = good();
        f.ipam.remove("s.2");
        assert_eq!(check(&[], &f, 2).verdict, Verdict::Invalid);
    }

    #[test]
    fn no_final_state_is_unknown_and_no_convergence_is_invalid() {
        assert_eq!(check(&[], &Final::default(), 2).verdict, Verdict::Unknown);
        let mut f = good();
        f.converged_after_ms = None;
        assert_eq!(check(&[], &f, 2).verdict, Verdict::Invalid);
    }
}
