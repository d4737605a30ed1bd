//! The `tasks` workload's side of the cluster: the services it scales, the observation
//! of what runs after the heal (the leader's view, IPAM, and the task processes found in
//! every node's sandboxes and `/proc`), and the teardown of those processes, which
//! outlive their agents by design.

use crate::checker::tasks::{Final, Proc, TaskRow};
use crate::cluster::{master, Cluster};
use anyhow::{bail, Context, Result};
use client::{GetOptions, NetworkSpec};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

pub const NETWORK: &str = "jepsen-tasks";
pub const SERVICES: [&str; 3] = ["/jepsen/a", "/jepsen/b", "/jepsen/c"];
/// Every service starts with this many instances.
pub const INITIAL: u32 = 2;
/// Scales ask for 1..=MAX instances.
pub const MAX: u64 = 5;

fn app_json(id: &str) -> Vec<u8> {
    // Short backoff so that tasks lost in a fault come back within the liveness phase;
    // spread so that every faulted node runs some.
    serde_json::json!({
        "id": id,
        "cmd": "exec sleep 100000",
        "cpus": 0.01,
        "mem": 16,
        "instances": INITIAL,
        "networks": [{"mode": "container", "name": NETWORK}],
        "placement": "spread",
        "backoffSeconds": 1,
        "backoffFactor": 1.0,
        "maxLaunchDelaySeconds": 3,
        "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.5}
    })
    .to_string()
    .into_bytes()
}

/// Creates the network and the services, and waits until they run.
pub async fn setup(leader_ip: &str) -> Result<()> {
    let m = master(leader_ip);
    let spec = NetworkSpec {
        name: NETWORK.into(),
        subnets: vec!["10.201.0.0/16".into()],
        // Released addresses come back within a run, so a double hand-out would show.
        quarantine_ms: Some(2_000),
        ..Default::default()
    };
    tokio::time::timeout(Duration::from_secs(30), m.create_network(spec))
        .await
        .context("creating the tasks network timed out")??;
    for id in SERVICES {
        tokio::time::timeout(Duration::from_secs(30), m.create_service(app_json(id)))
            .await
            .with_context(|| format!("creating {id} timed out"))?
            .with_context(|| format!("creating {id}"))?;
    }
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let running = match tokio::time::timeout(Duration::from_secs(5), m.list_services()).await {
            Ok(Ok(s)) => s.iter().filter(|s| SERVICES.contains(&s.id.as_str())).map(|s| s.running).sum::<u32>(),
            _ => 0,
        };
        if running == INITIAL * SERVICES.len() as u32 {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("the services did not reach {INITIAL} running tasks each within 60 s ({running} running)");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Every node's live task processes, read from its sandboxes (`task.json`: pid and its
/// start time) and checked against `/proc`.
fn processes(c: &Cluster, ids: &BTreeMap<String, u64>) -> Vec<Proc> {
    let mut out = Vec::new();
    for n in &c.nodes {
        for r in records(&n.data_dir) {
            if !r["ended"].is_null() {
                continue;
            }
            let (Some(pid), Some(ticks)) = (r["pid"].as_i64(), r["start_ticks"].as_u64()) else { continue };
            if !alive(pid as i32, ticks) {
                continue;
            }
            out.push(Proc {
                node: n.name.clone(),
                agent: ids.get(&n.name).copied().unwrap_or(0),
                task: r["id"].as_str().unwrap_or("").to_string(),
                service: r["service"].as_str().unwrap_or("").to_string(),
                pid: pid as i32,
            });
        }
    }
    out
}

/// The task records in a data dir (the agent's `tasks/<id>/task.json`).
fn records(data_dir: &Path) -> Vec<serde_json::Value> {
    let Ok(rd) = std::fs::read_dir(data_dir.join("tasks")) else { return vec![] };
    rd.flatten()
        .filter_map(|e| std::fs::read(e.path().join("task.json")).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}

/// Whether `pid` is alive, not a zombie, and still the process that started at `ticks`
/// (field 22 of /proc/<pid>/stat), so a reused pid is not taken for the task.
fn alive(pid: i32, ticks: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else { return false };
    let mut f = rest.split_whitespace();
    let state = f.next().unwrap_or("Z");
    state != "Z" && state != "X" && f.nth(18).and_then(|t| t.parse::<u64>().ok()) == Some(ticks)
}

/// A listed task as the checker reads it.
pub fn row(t: proto::clusterpb::TaskInfo) -> TaskRow {
    TaskRow { id: t.id, service: t.service, agent: t.agent, ip: t.ip, state: t.state }
}

/// One observation: the leader's view after a read barrier, and the nodes' processes.
pub async fn observe(c: &Cluster, leader_ip: &str) -> Result<Final> {
    let m = master(leader_ip);
    let t = Duration::from_secs(10);
    // Lists answer from the contacted master's applied state; a linearizable read first
    // makes it apply everything committed.
    tokio::time::timeout(t, m.get("jepsen/barrier", GetOptions::default())).await.context("barrier")??;
    let services = tokio::time::timeout(t, m.list_services()).await.context("list services")??;
    let tasks = tokio::time::timeout(t, m.list_tasks("", 0, false)).await.context("list tasks")??;
    let net = tokio::time::timeout(t, m.inspect_network(NETWORK, 1_000_000)).await.context("inspect")??;
    let nodes = tokio::time::timeout(t, m.nodes()).await.context("nodes")??;
    let ids: BTreeMap<String, u64> = nodes.nodes.iter().map(|n| (n.name.clone(), n.node_id)).collect();
    Ok(Final {
        instances: services
            .iter()
            .filter(|s| SERVICES.contains(&s.id.as_str()))
            .map(|s| (s.id.clone(), s.instances))
            .collect(),
        tasks: tasks.into_iter().map(row).collect(),
        processes: processes(c, &ids),
        ipam: net.allocations.into_iter().map(|a| (a.owner, a.address)).collect(),
        converged_after_ms: None,
    })
}

/// Observes until the leader's view, the processes and IPAM agree (see
/// [`crate::checker::tasks::state_agrees`]), or `within` runs out; returns the last
/// observation.
pub async fn converge(c: &Cluster, leader_ip: &str, within: Duration) -> Final {
    let start = Instant::now();
    let mut last = Final::default();
    while start.elapsed() < within {
        match observe(c, leader_ip).await {
            Ok(mut f) => {
                if crate::checker::tasks::state_agrees(&f) {
                    f.converged_after_ms = Some(start.elapsed().as_millis() as u64);
                    return f;
                }
                last = f;
            }
            Err(e) => eprintln!("jepsen: observing the tasks: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    last
}

/// Kills every task process the nodes recorded (each leads its own process group, and
/// its cgroup holds any it forked) and removes their cgroups.
pub fn teardown(c: &Cluster) {
    let groups = |r: &serde_json::Value| -> Vec<std::path::PathBuf> {
        r["group"]["paths"]
            .as_object()
            .map(|m| m.values().filter_map(|p| p.as_str().map(Into::into)).collect())
            .unwrap_or_default()
    };
    let all: Vec<serde_json::Value> = c.nodes.iter().flat_map(|n| records(&n.data_dir)).collect();
    for r in &all {
        if let (Some(pid), Some(ticks)) = (r["pid"].as_i64(), r["start_ticks"].as_u64()) {
            if alive(pid as i32, ticks) {
                // SAFETY: kill(2) on a process group we checked is the task's.
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                }
            }
        }
        for g in groups(r) {
            // A v1 group left frozen by a killed agent holds its members' SIGKILL.
            let _ = std::fs::write(g.join("freezer.state"), "THAWED");
            for p in std::fs::read_to_string(g.join("cgroup.procs")).unwrap_or_default().lines() {
                if let Ok(p) = p.trim().parse::<i32>() {
                    // SAFETY: a member of the task's own cgroup.
                    unsafe {
                        libc::kill(p, libc::SIGKILL);
                    }
                }
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    for r in &all {
        for g in groups(r) {
            let _ = std::fs::remove_dir(&g);
            // The agent's own level (cluster-node-<id>), empty once its tasks are gone.
            if let Some(parent) = g.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}
