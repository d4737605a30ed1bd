//! One run: network and cluster up, clients and nemesis for `time` seconds, heal,
//! liveness phase, final reads, checks, report.

use crate::checker::{self, CheckResult, Verdict};
use crate::cluster::Cluster;
use crate::coordination::{self, Running};
use crate::history::{self, Op, OpType};
use crate::report;
use crate::schedule::{self, Fault, Nemesis, Target, Window};
use crate::workload::{self, Client, Kind, Shared};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Mutex;

#[derive(Debug, Clone)]
pub struct RunOpts {
    pub workload: Kind,
    pub nemeses: Vec<Nemesis>,
    pub nodes: usize,
    pub workers: usize,
    pub time_s: u64,
    pub seed: u64,
    pub canary: bool,
    pub concurrency: usize,
    pub rate: u64,
    pub client_timeout_ms: u64,
    pub liveness_s: u64,
    pub ops_per_key: u64,
    pub check_timeout_s: u64,
    pub out: PathBuf,
    pub bin: PathBuf,
    pub keep_data: bool,
}

/// A fault as it happened: the planned window, the nodes it hit, and when.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub nemesis: Nemesis,
    pub planned: Fault,
    pub description: String,
    /// Node indexes (0-based) the fault touched.
    pub nodes: Vec<usize>,
    /// Their registry/Raft ids at that moment (a rejoined master gets a new id).
    pub node_ids: Vec<u64>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub wall_start_ms: u64,
    pub wall_end_ms: u64,
    pub errors: Vec<String>,
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub workload: Kind,
    pub nemeses: Vec<String>,
    pub nodes: usize,
    pub workers: usize,
    pub seed: u64,
    pub time_s: u64,
    pub canary: bool,
    pub ops: report::OpCounts,
    pub longest_without_ok_s: f64,
    pub longest_without_ok_from_s: f64,
    pub liveness: Liveness,
    pub faults: Vec<Applied>,
    pub checks: Vec<CheckResult>,
    pub verdict: Verdict,
    pub valid: bool,
    pub report_dir: String,
}

#[derive(Debug, Serialize)]
pub struct Liveness {
    pub start_s: f64,
    pub ok: bool,
    pub missing: Vec<String>,
}

pub async fn run(o: RunOpts) -> Result<Summary> {
    let plan = schedule::plan(&o.nemeses, o.nodes, o.workers, o.time_s, o.seed);
    std::fs::create_dir_all(&o.out).with_context(|| format!("cannot create {}", o.out.display()))?;
    std::fs::write(o.out.join("schedule.json"), serde_json::to_vec_pretty(&plan)?)?;
    let faketime = o.nemeses.contains(&Nemesis::Clock);
    eprintln!("jepsen: starting {} masters and {} workers in network namespaces", o.nodes, o.workers);
    let mut flags: Vec<String> = o.workload.cluster_flags().iter().map(|f| f.to_string()).collect();
    if o.canary {
        flags.extend(o.workload.canary_flag().map(String::from));
    }
    let cluster = Cluster::start(&o.bin, &o.out, o.nodes, o.workers, flags, faketime).await?;
    let ips: Vec<String> = cluster.nodes.iter().map(|n| n.ip.clone()).collect();
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let leader = cluster.wait_healthy(Duration::from_secs(30)).await?;
    workload::setup(o.workload, &ips[leader]).await?;
    if o.workload == Kind::Tasks {
        if let Err(e) = crate::tasks::setup(&ips[leader]).await {
            crate::tasks::teardown(&cluster);
            return Err(e);
        }
    }
    let cluster = Arc::new(Mutex::new(cluster));

    let sh = Arc::new(Shared::new(o.workload, o.ops_per_key, Duration::from_millis(o.client_timeout_ms)));
    let stop = Arc::new(AtomicBool::new(false));
    eprintln!(
        "jepsen: {} clients, {} for {} s with {} fault windows (seed {}){}",
        o.concurrency,
        o.workload.name(),
        o.time_s,
        plan.len(),
        o.seed,
        if o.canary { ", CANARY ON" } else { "" }
    );
    let ctx = coordination::Ctx {
        sh: sh.clone(),
        stop: stop.clone(),
        ips: ips.clone(),
        names: names.clone(),
        canary: o.canary,
        concurrency: o.concurrency,
        seed: o.seed,
    };
    let own = match o.workload {
        Kind::Watch | Kind::Lock | Kind::Lease | Kind::Election => Some(Running::start(o.workload, &ctx).await?),
        _ => None,
    };
    let generic = if o.workload.own_clients() { 0 } else { o.concurrency };
    let mut clients = Vec::new();
    for w in 0..generic {
        let node = w % o.nodes;
        let mut c =
            Client::new(w as u64, names[node].clone(), &ips[node], o.seed.wrapping_mul(1000).wrapping_add(w as u64));
        let (sh, stop) = (sh.clone(), stop.clone());
        let think_ms = (2 * o.concurrency as u64 * 1000 / o.rate.max(1)).max(1);
        let conc = o.concurrency as u64;
        let think_seed = o.seed.rotate_left(32) ^ w as u64;
        clients.push(tokio::spawn(async move {
            let mut rng = schedule::Rng::new(think_seed);
            while !stop.load(Ordering::Relaxed) {
                let (f, key, value) = c.generate(&sh);
                let mut inv = Op::invoke(c.process, &f, key.clone(), value.clone(), sh.now_ns());
                inv.node = Some(c.node.clone());
                sh.record(inv);
                let d = c.invoke(&sh, &f, key.as_deref(), &value).await;
                let mut done = Op::invoke(c.process, &f, key, d.value, sh.now_ns());
                done.kind = d.kind;
                done.error = d.error;
                done.node = Some(c.node.clone());
                sh.record(done);
                if d.kind == OpType::Info {
                    c.process += conc;
                }
                tokio::time::sleep(Duration::from_millis(rng.below(think_ms))).await;
            }
        }));
    }

    // The nemesis follows the plan against the clock the clients use.
    let mut applied: Vec<Applied> = Vec::new();
    for w in &plan {
        sleep_until(&sh, w.start_ms).await;
        let mut a = apply(&cluster, w, &sh).await;
        eprintln!("jepsen: {:>6.1}s  start {}", a.start_ns as f64 / 1e9, a.description);
        sleep_until(&sh, w.end_ms).await;
        undo(&cluster, w, &mut a).await;
        a.end_ns = sh.now_ns();
        a.wall_end_ms = wall_ms();
        eprintln!("jepsen: {:>6.1}s  heal  {}", a.end_ns as f64 / 1e9, a.description);
        applied.push(a);
    }
    sleep_until(&sh, o.time_s * 1000).await;
    if let Err(e) = cluster.lock().await.heal_all().await {
        // The liveness phase will fail and say so; the history is still written.
        eprintln!("jepsen: heal failed: {e:#}");
    }
    let healed_ns = sh.now_ns();
    let leader = cluster.lock().await.wait_healthy(Duration::from_secs(60)).await;
    let live_start = sh.now_ns();
    eprintln!(
        "jepsen: {:>6.1}s  healed ({}); liveness phase of {} s",
        healed_ns as f64 / 1e9,
        match &leader {
            Ok(l) => format!("leader {}", names[*l]),
            Err(e) => format!("{e:#}"),
        },
        o.liveness_s
    );
    tokio::time::sleep(Duration::from_secs(o.liveness_s)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }

    let mut checks = Vec::new();
    let mut registry_input = None;
    let healthy = cluster.lock().await.wait_healthy(Duration::from_secs(30)).await;
    let finished = match own {
        Some(r) => Some(r.finish(&sh, healthy.as_ref().ok().map(|&l| ips[l].as_str())).await),
        None => None,
    };
    if let Ok(l) = healthy {
        if let Err(e) = workload::final_read(&sh, o.workload, &ips[l], 1_000_000).await {
            eprintln!("jepsen: {e:#}");
        }
        if o.workload == Kind::Registry {
            registry_input = Some(workload::registry_events(&ips[l]).await);
        }
    }
    let tasks_final = if o.workload == Kind::Tasks {
        let c = cluster.lock().await;
        let f = match &healthy {
            // Lost tasks come back after backoff (at most 3 s), stale copies are killed when
            // their agent reconnects: a minute is ample.
            Ok(l) => crate::tasks::converge(&c, &ips[*l], Duration::from_secs(60)).await,
            Err(_) => Default::default(),
        };
        std::fs::write(o.out.join("tasks-final.json"), serde_json::to_vec_pretty(&f)?)?;
        Some(f)
    } else {
        None
    };
    let node_ids: Vec<u64> = cluster.lock().await.nodes.iter().map(|n| n.id).collect();
    {
        let mut c = cluster.lock().await;
        c.stop_all();
        // Task processes outlive their agents by design.
        crate::tasks::teardown(&c);
        if !o.keep_data {
            let _ = std::fs::remove_dir_all(o.out.join("data"));
        }
    }
    crate::net::cleanup();

    let ops = std::mem::take(&mut *sh.ops.lock().expect("history"));
    history::write_jsonl(&o.out.join("history.jsonl"), &ops)?;
    std::fs::write(o.out.join("faults.json"), serde_json::to_vec_pretty(&applied)?)?;
    let calls = history::pair(&ops).context("the recorded history is malformed")?;
    eprintln!("jepsen: checking {} operations", calls.len());
    if let Some(f) = &finished {
        f.save(&o.out)?;
        checks.push(f.check(&calls, healed_ns));
    }
    match o.workload {
        Kind::Watch | Kind::Lock | Kind::Lease | Kind::Election => {}
        Kind::Register => checks.push(checker::register::check(&calls, Duration::from_secs(o.check_timeout_s))),
        Kind::Set => checks.push(checker::set::check(&calls)),
        Kind::Ipam => checks.push(checker::ipam::check(&calls)),
        Kind::Tasks => {
            let f = tasks_final.unwrap_or_default();
            checks.push(checker::tasks::check(&calls, &f, crate::tasks::INITIAL))
        }
        Kind::Registry => {
            let mut faults: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
            for a in &applied {
                // The ids at the time of the fault, and the current ones (a removed
                // master rejoins under a new id).
                let ids = a.node_ids.iter().copied().chain(a.nodes.iter().map(|&i| node_ids[i]));
                for id in ids {
                    faults.entry(id).or_default().push((a.wall_start_ms, a.wall_end_ms));
                }
            }
            let (trs, read) = match registry_input {
                Some(Ok(evs)) => {
                    let names = workload::names(&evs);
                    let trs = evs
                        .iter()
                        .filter(|e| !e.to_state.is_empty())
                        .map(|e| checker::registry::Transition {
                            node_id: e.node_id,
                            name: names.get(&e.node_id).cloned().unwrap_or_default(),
                            time_ms: e.time_ms,
                            from: e.from_state.clone(),
                            to: e.to_state.clone(),
                        })
                        .collect::<Vec<_>>();
                    (trs, true)
                }
                Some(Err(e)) => {
                    eprintln!("jepsen: registry events: {e:#}");
                    (vec![], false)
                }
                None => (vec![], false),
            };
            // unreachable_after (5 s) + down_after (10 s) + election and slack.
            checks.push(checker::registry::check(&trs, &faults, 20_000, read));
        }
    }
    let counts = report::counts(&calls);
    let (gap, gap_from) = report::longest_without_ok(&calls, healed_ns.max(live_start));
    let missing: Vec<String> = o
        .workload
        .live_fs()
        .iter()
        .filter(|f| !calls.iter().any(|c| c.f == **f && c.kind == OpType::Ok && c.invoke_ns >= live_start))
        .map(|f| f.to_string())
        .collect();
    let liveness = Liveness { start_s: live_start as f64 / 1e9, ok: missing.is_empty() && leader.is_ok(), missing };
    let mut verdict = checks.iter().fold(Verdict::Valid, |v, c| v.and(c.verdict));
    if !liveness.ok {
        verdict = verdict.and(Verdict::Invalid);
    }
    let summary = Summary {
        workload: o.workload,
        nemeses: o.nemeses.iter().map(|n| n.name().to_string()).collect(),
        nodes: o.nodes,
        workers: o.workers,
        seed: o.seed,
        time_s: o.time_s,
        canary: o.canary,
        ops: counts,
        longest_without_ok_s: gap as f64 / 1e9,
        longest_without_ok_from_s: gap_from as f64 / 1e9,
        liveness,
        faults: applied,
        checks,
        verdict,
        valid: verdict == Verdict::Valid,
        report_dir: o.out.display().to_string(),
    };
    std::fs::write(o.out.join("summary.json"), serde_json::to_vec_pretty(&summary)?)?;
    std::fs::write(o.out.join("latency.svg"), report::latency_svg(&calls, &summary, live_start))?;
    Ok(summary)
}

async fn sleep_until(sh: &Shared, ms: u64) {
    let now = sh.now_ns() / 1_000_000;
    if ms > now {
        tokio::time::sleep(Duration::from_millis(ms - now)).await;
    }
}

async fn resolve(c: &Cluster, t: Target) -> usize {
    match t {
        Target::Node(i) => i,
        Target::Leader => c.leader().await.unwrap_or(0),
    }
}

/// Nodes that hear fewer than a majority of masters under a grudge table.
fn cut_off(grudge: &[Vec<usize>], shape: &str) -> Vec<usize> {
    let n = grudge.len();
    if shape == "majorities-ring" {
        return (0..n).collect();
    }
    (0..n).filter(|&i| n - grudge[i].len() <= n / 2).collect()
}

async fn apply(cluster: &Arc<Mutex<Cluster>>, w: &Window, sh: &Shared) -> Applied {
    let mut c = cluster.lock().await;
    let mut a = Applied {
        nemesis: w.nemesis,
        planned: w.fault.clone(),
        description: String::new(),
        nodes: vec![],
        node_ids: vec![],
        start_ns: sh.now_ns(),
        end_ns: 0,
        wall_start_ms: wall_ms(),
        wall_end_ms: 0,
        errors: vec![],
    };
    let name = |c: &Cluster, i: usize| c.nodes[i].name.clone();
    let res: Result<()> = async {
        match &w.fault {
            Fault::Partition { shape, grudge } => {
                for (i, g) in grudge.iter().enumerate() {
                    c.net.set_grudge(i, g)?;
                }
                a.nodes = cut_off(grudge, shape);
                let groups: Vec<String> = grudge
                    .iter()
                    .enumerate()
                    .map(|(i, g)| {
                        format!("{}!{}", name(&c, i), g.iter().map(|&j| name(&c, j)).collect::<Vec<_>>().join("/"))
                    })
                    .collect();
                a.description = format!("partition {shape}: {}", groups.join(" "));
            }
            Fault::Primaries => {
                let l = c.leader().await.unwrap_or(0);
                let n = c.masters;
                for i in 0..n {
                    let g: Vec<usize> = if i == l { (0..n).filter(|&j| j != l).collect() } else { vec![l] };
                    c.net.set_grudge(i, &g)?;
                }
                a.nodes = vec![l];
                a.description = format!("primaries: leader {} cut off from all", name(&c, l));
            }
            Fault::Kill { target } => {
                let i = resolve(&c, *target).await;
                c.kill(i);
                a.nodes = vec![i];
                a.description =
                    format!("kill -9 {}{}", name(&c, i), if *target == Target::Leader { " (leader)" } else { "" });
            }
            Fault::Pause { target } => {
                let i = resolve(&c, *target).await;
                c.signal(i, libc::SIGSTOP);
                a.nodes = vec![i];
                a.description =
                    format!("SIGSTOP {}{}", name(&c, i), if *target == Target::Leader { " (leader)" } else { "" });
            }
            Fault::Clock { node, offset_ms } => {
                c.set_clock(*node, *offset_ms)?;
                a.nodes = vec![*node];
                a.description = format!("clock of {} {:+} ms", name(&c, *node), offset_ms);
            }
            Fault::KillAgent { worker } => {
                let i = c.masters + worker;
                if i >= c.nodes.len() {
                    anyhow::bail!("kill-agent: there is no worker w{}", worker + 1);
                }
                c.kill(i);
                a.nodes = vec![i];
                a.description = format!("kill -9 agent {}", name(&c, i));
            }
            Fault::Member { target } => {
                let i = resolve(&c, *target).await;
                a.nodes = vec![i];
                a.description = format!(
                    "remove master {}{}",
                    name(&c, i),
                    if *target == Target::Leader { " (leader)" } else { "" }
                );
                c.leave(i).await?;
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = res {
        eprintln!("jepsen: nemesis error: {e:#}");
        a.errors.push(format!("{e:#}"));
    }
    a.node_ids = a.nodes.iter().map(|&i| c.nodes[i].id).collect();
    a
}

async fn undo(cluster: &Arc<Mutex<Cluster>>, w: &Window, a: &mut Applied) {
    let mut c = cluster.lock().await;
    let res: Result<()> = async {
        match &w.fault {
            Fault::Partition { .. } | Fault::Primaries => c.net.heal()?,
            Fault::Kill { .. } | Fault::KillAgent { .. } => {
                for &i in &a.nodes {
                    c.restart(i)?;
                }
            }
            Fault::Pause { .. } => {
                for &i in &a.nodes {
                    c.signal(i, libc::SIGCONT);
                }
            }
            Fault::Clock { node, .. } => c.set_clock(*node, 0)?,
            Fault::Member { .. } => {
                for &i in &a.nodes {
                    if c.nodes[i].removed {
                        c.rejoin(i).await?;
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = res {
        eprintln!("jepsen: nemesis error while healing: {e:#}");
        a.errors.push(format!("heal: {e:#}"));
    }
}
