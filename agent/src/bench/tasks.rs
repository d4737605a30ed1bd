//! `cluster bench tasks`: placement end to end. N emulated agents (the sessions of
//! `bench agents`) also take their assignments, each over its own `WatchAssignments`
//! stream, and acknowledge every new task as running with `ReportTasks`, retried until
//! it commits, as the task runner does (without starting processes). Then services
//! totalling `--tasks` instances are created at once, on an overlay network so that every
//! placement also takes an IP.
//!
//! Printed: placements committed per second (tasks in committed launch entries, from the
//! services' counts polled every 250 ms from the first create on), from the first create
//! and from the first placement seen; the time until every task runs, the leader's CPU
//! over that time, and its resident memory at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use proto::clusterpb as pb;
use proto::clusterpb::services_client::ServicesClient;
use serde_json::json;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::agents::{cpu_seconds, start_agents, wait_active};
use super::ipam::rss_mb;
use super::Options;
use crate::output::Format;

const NETWORK: &str = "bench-tasks";

/// Service sizes, largest first, cycling through a mix of constraints; the last one
/// takes what is left so the sizes add up to `total`.
fn services(total: usize) -> Vec<serde_json::Value> {
    const SIZES: [usize; 7] = [1000, 500, 200, 100, 50, 10, 1];
    let constraints = [
        json!([]),
        json!([["hostname", "UNIQUE"]]),
        json!([["hostname", "MAX_PER", "2"]]),
        json!([["emulated", "LIKE", "t.*"]]),
        json!([["hostname", "GROUP_BY"]]),
    ];
    let mut out = Vec::new();
    let (mut left, mut i) = (total, 0usize);
    while left > 0 {
        let n = SIZES[i % SIZES.len()].min(left);
        left -= n;
        out.push(json!({
            "id": format!("/bench/s{i}"),
            "cmd": "sleep 3600",
            "cpus": 0.1,
            "mem": 32,
            "instances": n,
            "constraints": constraints[i % constraints.len()],
            "networks": [{"mode": "container", "name": NETWORK}],
            "placement": if i % 2 == 0 { "binpack" } else { "spread" },
        }));
        i += 1;
    }
    out
}

/// One emulated agent's task side: follows its assignments (reconnecting after errors)
/// and reports each task it has not yet acknowledged as running.
async fn acker(node_id: u64, ch: Channel, acked: Arc<AtomicU64>) {
    let mut c = ServicesClient::new(ch).max_decoding_message_size(64 << 20);
    let mut reported = std::collections::BTreeSet::new();
    loop {
        let stream = c.watch_assignments(pb::WatchAssignmentsRequest { node_id }).await;
        if let Ok(s) = stream {
            let mut s = s.into_inner();
            while let Some(Ok(a)) = s.next().await {
                let new: Vec<pb::TaskStatus> = a
                    .tasks
                    .iter()
                    .filter(|t| !t.kill && matches!(t.state.as_str(), "staging" | "starting"))
                    .filter(|t| !reported.contains(&t.id))
                    .map(|t| pb::TaskStatus { task_id: t.id.clone(), state: "running".into(), ..Default::default() })
                    .collect();
                if new.is_empty() {
                    continue;
                }
                let req = pb::ReportTasksRequest { node_id, statuses: new };
                // Acknowledged end to end: retried until a master says it committed.
                while c.report_tasks(req.clone()).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                acked.fetch_add(req.statuses.len() as u64, Ordering::Relaxed);
                reported.extend(req.statuses.into_iter().map(|s| s.task_id));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls the services every 250 ms until every task runs: when all were placed (staged
/// or running), when all ran, and (time, placed) samples.
async fn follow(
    eps: &client::Client,
    acked: &AtomicU64,
    t0: Instant,
    total: u64,
) -> anyhow::Result<(Option<f64>, Option<f64>, Vec<(f64, u64)>)> {
    let (mut placed_at, mut running_at) = (None, None);
    let mut last_print = Instant::now();
    let mut samples: Vec<(f64, u64)> = Vec::new();
    while running_at.is_none() {
        // Listing every service costs the leader a walk over all tasks: not too often.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(list) = eps.list_services().await else { continue };
        let ours = list.iter().filter(|s| s.id.starts_with("/bench/"));
        let (placed, running) =
            ours.fold((0u64, 0u64), |(p, r), s| (p + (s.staged + s.running) as u64, r + s.running as u64));
        let t = t0.elapsed().as_secs_f64();
        samples.push((t, placed));
        if placed_at.is_none() && placed >= total {
            placed_at = Some(t);
        }
        if running >= total {
            running_at = Some(t);
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            eprintln!("{t:6.1} s: {placed} placed, {running} running, {} acknowledged", acked.load(Ordering::Relaxed));
            last_print = Instant::now();
        }
        if t > 600.0 {
            bail!("not every task ran within 600 s: {placed} placed, {running} running");
        }
    }
    Ok((placed_at, running_at, samples))
}

pub async fn run(a: Options) -> anyhow::Result<()> {
    let (n, total) = (a.agents, a.tasks);
    if total == 0 {
        bail!("--tasks must be > 0");
    }
    let eps = a.client(a.endpoints.clone())?;
    let emu = start_agents(&a, n, |_| {}).await?;
    wait_active(&eps, &emu.id_set).await?;
    eprintln!("{n} agents active ({:.1} s to join); starting their assignment streams", emu.join_s);
    let tls = a.agent_tls.clone().context("emulated agents need a master's node certificate")?;
    let masters: Vec<String> = emu.masters.endpoints().to_vec();
    let acked = Arc::new(AtomicU64::new(0));
    for (i, &id) in emu.ids.iter().enumerate() {
        // Spread over the masters, as agents spread their reads.
        let ch = emu.channel(&tls, i, &masters[i % masters.len()])?;
        tokio::spawn(acker(id, ch, acked.clone()));
    }
    let spec = client::NetworkSpec {
        name: NETWORK.into(),
        // 1,048,574 addresses.
        subnets: vec!["10.64.0.0/12".into()],
        ..Default::default()
    };
    eps.create_network(spec).await.context("creating the tasks' network")?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let st = eps.leader_status().await?;
    let specs = services(total);
    eprintln!("creating {} services with {total} instances in all (leader pid {})", specs.len(), st.pid);
    let t0 = Instant::now();
    let cpu0 = cpu_seconds(st.pid);
    // Counted from the first create on, while the others are still being created: the
    // scheduler places the first services' tasks meanwhile.
    let poll = {
        let (eps, acked) = (eps.clone(), acked.clone());
        tokio::spawn(async move { follow(&eps, &acked, t0, total as u64).await })
    };
    let created: Vec<_> = futures::stream::iter(specs.iter())
        .map(|s| eps.create_service(s.to_string().into_bytes()))
        .buffer_unordered(16)
        .collect()
        .await;
    for r in created {
        r.context("creating a service")?;
    }
    let created_s = t0.elapsed().as_secs_f64();
    let (placed_at, running_at, samples) = poll.await.context("the progress poller panicked")??;
    let (placed_s, running_s) = (placed_at.unwrap_or(f64::NAN), running_at.unwrap_or(f64::NAN));
    let cpu = cpu_seconds(st.pid).zip(cpu0).map(|(c1, c0)| (c1 - c0) / running_s);
    // The placement rate from the first placement on (creating the services is the
    // clients' part).
    let first = samples.iter().find(|(_, p)| *p > 0).map_or(0.0, |(t, _)| *t);
    let result = json!({
        "agents": n,
        "tasks": total,
        "services": specs.len(),
        "create_seconds": created_s,
        "all_placed_seconds": placed_s,
        "placements_per_second": total as f64 / (placed_s - first).max(1e-3),
        "placements_per_second_from_create": total as f64 / placed_s,
        "all_running_seconds": running_s,
        "leader_cpu_percent": cpu.map(|c| (c * 1000.0).round() / 10.0),
        "leader_rss_mib": rss_mb(st.pid),
        "acknowledged": acked.load(Ordering::Relaxed),
    });
    if a.output == Format::Json {
        println!("{result}");
    } else {
        println!("emulated agents             {n}");
        println!("tasks                       {total} in {} services", specs.len());
        println!("all placed (committed)      {placed_s:.1} s: {:.0} placements/s", result["placements_per_second"]);
        println!("all running (acknowledged)  {running_s:.1} s");
        println!("leader CPU                  {}% of one core", result["leader_cpu_percent"]);
        println!("leader RSS                  {} MiB", result["leader_rss_mib"]);
    }
    Ok(())
}
