//! scheduler-core alone: plans 100,000 tasks onto 10,000 agents and prints placements
//! per second and the process's peak memory. `make bench-scheduler` runs it.
//!
//! Services have 1 to 1,000 instances (log-uniform), 0 to 2 ports, and a mix of
//! constraints (none, hostname:UNIQUE, hostname:MAX_PER, rack:GROUP_BY, zone:IS,
//! rack:LIKE, disk:UNLIKE) under binpack or spread. Two ways to plan them:
//! - one plan for every service at once;
//! - one plan per service, each seeing what the earlier ones placed, as the leader's
//!   loop does when services arrive one by one.
//!
//! Options: `--agents N` (10000), `--tasks N` (100000), `--seed N` (1).

use std::collections::BTreeMap;
use std::time::Instant;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use scheduler_core::{place, Agent, AgentState, Constraint, Input, Plan, Resources, Running, Strategy, TaskGroup};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} wants a number, not {v:?}")))
        .unwrap_or(default)
}

fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    rng.next_u64() % n
}

fn agents(n: u64, rng: &mut ChaCha8Rng) -> Vec<Agent> {
    (0..n)
        .map(|i| {
            let total = Resources {
                cpus_milli: (16 + below(rng, 49)) * 1000,
                mem_mb: (32 + below(rng, 225)) * 1024,
                disk_mb: 500 * 1024,
            };
            let labels = [
                ("rack".to_string(), format!("r{}", i / 50)),
                ("zone".to_string(), format!("z{}", i % 4)),
                ("disk".to_string(), if i % 3 == 0 { "hdd" } else { "ssd" }.to_string()),
            ]
            .into();
            Agent {
                id: i + 1,
                hostname: format!("host-{i}"),
                labels,
                total,
                free: total,
                port_ranges: vec![(31000, 32000)],
                used_ports: Default::default(),
                state: AgentState::Active,
                draining: false,
            }
        })
        .collect()
}

fn services(tasks: u64, rng: &mut ChaCha8Rng) -> Vec<TaskGroup> {
    let mut out = Vec::new();
    let mut left = tasks;
    while left > 0 {
        // Log-uniform over 1..=1000: as many small services as big ones per decade.
        let exp = (below(rng, 3001) as f64) / 1000.0;
        let n = (10f64.powf(exp).round() as u64).clamp(1, 1000).min(left);
        left -= n;
        let id = format!("svc{}", out.len());
        let constraint = match below(rng, 20) {
            0..=7 => vec![],
            8..=10 => vec![vec!["hostname", "UNIQUE"]],
            11..=13 => vec![vec!["hostname", "MAX_PER", "2"]],
            14..=15 => vec![vec!["rack", "GROUP_BY", "10"]],
            16..=17 => vec![vec!["zone", "IS", ["z0", "z1", "z2", "z3"][below(rng, 4) as usize]]],
            18 => vec![vec!["rack", "LIKE", "r1[0-9]+"]],
            _ => vec![vec!["disk", "UNLIKE", "hdd"]],
        };
        out.push(TaskGroup {
            task_ids: (0..n).map(|i| format!("{id}.{i}")).collect(),
            service: id,
            resources: Resources {
                cpus_milli: 100 + below(rng, 20) * 100,
                mem_mb: 128 + below(rng, 16) * 128,
                disk_mb: 0,
            },
            ports: vec![0; below(rng, 3) as usize],
            constraints: constraint.iter().map(|c| Constraint::parse(c).unwrap()).collect(),
            strategy: if below(rng, 10) < 7 { Strategy::Binpack } else { Strategy::Spread },
        });
    }
    out
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Applies a plan to the agents, as the next input's free resources and ports.
fn commit(
    agents: &mut [Agent],
    by_id: &BTreeMap<u64, usize>,
    groups: &[TaskGroup],
    plan: &Plan,
    running: &mut Vec<Running>,
) {
    let spec: BTreeMap<&str, &TaskGroup> =
        groups.iter().flat_map(|g| g.task_ids.iter().map(move |t| (t.as_str(), g))).collect();
    for p in &plan.placements {
        let g = spec[p.task_id.as_str()];
        let a = &mut agents[by_id[&p.agent]];
        a.free = a.free.saturating_sub(g.resources);
        a.used_ports.extend(p.ports.iter().copied());
        running.push(Running { service: g.service.clone(), agent: p.agent });
    }
}

fn main() {
    let n_agents = arg("--agents", 10_000);
    let n_tasks = arg("--tasks", 100_000);
    let seed = arg("--seed", 1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let agents = agents(n_agents, &mut rng);
    let groups = services(n_tasks, &mut rng);
    let constrained = groups.iter().filter(|g| !g.constraints.is_empty()).count();
    println!(
        "scheduler-core: {} agents, {} tasks in {} services ({} with a constraint), seed {}",
        agents.len(),
        n_tasks,
        groups.len(),
        constrained,
        seed
    );

    // One plan for everything.
    let input = Input { agents: agents.clone(), running: vec![], groups: groups.clone(), seed, sample_size: None };
    let t = Instant::now();
    let plan = place(&input);
    let secs = t.elapsed().as_secs_f64();
    println!(
        "one plan:          {:>7} placed, {:>5} unplaced in {:>7.3} s = {:>9.0} placements/s",
        plan.placements.len(),
        plan.unplaced.len(),
        secs,
        plan.placements.len() as f64 / secs
    );
    if let Some(u) = plan.unplaced.first() {
        println!("  first unplaced: {} ({})", u.task_id, u.reason);
    }

    // One plan per service, each on what the earlier plans left.
    let mut agents_now = agents;
    let by_id: BTreeMap<u64, usize> = agents_now.iter().enumerate().map(|(i, a)| (a.id, i)).collect();
    let mut running_by_service: BTreeMap<String, Vec<Running>> = BTreeMap::new();
    let (mut placed, mut unplaced, mut plan_secs) = (0usize, 0usize, 0f64);
    let t_all = Instant::now();
    for g in &groups {
        let input = Input {
            agents: std::mem::take(&mut agents_now),
            running: running_by_service.remove(&g.service).unwrap_or_default(),
            groups: vec![g.clone()],
            seed,
            sample_size: None,
        };
        let t = Instant::now();
        let plan = place(&input);
        plan_secs += t.elapsed().as_secs_f64();
        placed += plan.placements.len();
        unplaced += plan.unplaced.len();
        let Input { agents, mut running, groups: gs, .. } = input;
        agents_now = agents;
        commit(&mut agents_now, &by_id, &gs, &plan, &mut running);
        running_by_service.insert(g.service.clone(), running);
    }
    println!(
        "plan per service:  {:>7} placed, {:>5} unplaced in {:>7.3} s = {:>9.0} placements/s ({:.3} s with committing)",
        placed,
        unplaced,
        plan_secs,
        placed as f64 / plan_secs,
        t_all.elapsed().as_secs_f64()
    );
    println!("peak RSS: {:.0} MiB", peak_rss_mb());
}
