//! The small text language the testdata files use to describe an [`Input`], and the
//! plan printed back. One line per item:
//!
//! ```text
//! agent 1 host=h1 cpus=4 mem=1024 disk=100 ports=31000-31009 labels=rack:r1,zone:a state=down drain used=31000
//! running web on=1 cpus=1 mem=128 ports=31001
//! group web n=3 cpus=0.5 mem=256 ports=0,8080 c=hostname:UNIQUE c=rack:GROUP_BY:2 placement=spread
//! ```
//!
//! A `running` line takes its resources and ports off its agent's free ones. Task ids are
//! `<service>.<n>`, numbered per service across groups.

use std::collections::BTreeMap;

use scheduler_core::{Agent, AgentState, Constraint, Input, Plan, Resources, Running, Strategy, TaskGroup};

fn cpus_milli(v: &str) -> Result<u64, String> {
    let f: f64 = v.parse().map_err(|_| format!("bad cpus {v:?}"))?;
    Ok((f * 1000.0).round() as u64)
}

fn num<T: std::str::FromStr>(k: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("bad {k}={v:?}"))
}

fn resources(kv: &[(&str, &str)]) -> Result<Resources, String> {
    let mut r = Resources::default();
    for &(k, v) in kv {
        match k {
            "cpus" => r.cpus_milli = cpus_milli(v)?,
            "mem" => r.mem_mb = num(k, v)?,
            "disk" => r.disk_mb = num(k, v)?,
            _ => {}
        }
    }
    Ok(r)
}

fn ports_list(v: &str) -> Result<Vec<u16>, String> {
    v.split(',').map(|p| num("port", p)).collect()
}

pub fn parse_input(header_args: &BTreeMap<String, String>, text: &str) -> Result<Input, String> {
    let mut input = Input {
        agents: Vec::new(),
        running: Vec::new(),
        groups: Vec::new(),
        seed: header_args.get("seed").map(|s| num("seed", s)).transpose()?.unwrap_or(1),
        sample_size: match header_args.get("sample").map(String::as_str) {
            None => None,
            Some("all") => Some(usize::MAX),
            Some(n) => Some(num("sample", n)?),
        },
    };
    let mut next_id: BTreeMap<String, u32> = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut words = line.split_whitespace();
        let kind = words.next().unwrap();
        let name = words.next().ok_or_else(|| format!("{kind}: needs a name or id"))?;
        let mut kv: Vec<(&str, &str)> = Vec::new();
        let mut flags: Vec<&str> = Vec::new();
        for w in words {
            match w.split_once('=') {
                Some(p) => kv.push(p),
                None => flags.push(w),
            }
        }
        let get = |k: &str| kv.iter().find(|(kk, _)| *kk == k).map(|(_, v)| *v);
        match kind {
            "agent" => {
                let total = resources(&kv)?;
                let mut labels = BTreeMap::new();
                if let Some(l) = get("labels") {
                    for pair in l.split(',') {
                        let (k, v) = pair.split_once(':').ok_or_else(|| format!("bad label {pair:?}"))?;
                        labels.insert(k.to_string(), v.to_string());
                    }
                }
                let port_ranges = match get("ports") {
                    None => Vec::new(),
                    Some(r) => r
                        .split(',')
                        .map(|r| {
                            let (b, e) = r.split_once('-').unwrap_or((r, r));
                            Ok((num("port", b)?, num("port", e)?))
                        })
                        .collect::<Result<_, String>>()?,
                };
                let id: u64 = num("agent id", name)?;
                input.agents.push(Agent {
                    id,
                    hostname: get("host").map(str::to_string).unwrap_or_else(|| format!("h{id}")),
                    labels,
                    total,
                    free: total,
                    port_ranges,
                    used_ports: get("used").map(ports_list).transpose()?.unwrap_or_default().into_iter().collect(),
                    state: match get("state") {
                        None | Some("active") => AgentState::Active,
                        Some("registered") => AgentState::Registered,
                        Some("unreachable") => AgentState::Unreachable,
                        Some("down") => AgentState::Down,
                        Some(s) => return Err(format!("bad state {s:?}")),
                    },
                    draining: flags.contains(&"drain"),
                });
            }
            "running" => {
                let on: u64 = num("on", get("on").ok_or("running: needs on=AGENT")?)?;
                let r = resources(&kv)?;
                let agent = input.agents.iter_mut().find(|a| a.id == on).ok_or_else(|| format!("no agent {on}"))?;
                agent.free = agent.free.saturating_sub(r);
                if let Some(p) = get("ports") {
                    agent.used_ports.extend(ports_list(p)?);
                }
                *next_id.entry(name.to_string()).or_insert(0) += 1;
                input.running.push(Running { service: name.to_string(), agent: on });
            }
            "group" => {
                let n: u32 = get("n").map(|v| num("n", v)).transpose()?.unwrap_or(1);
                let counter = next_id.entry(name.to_string()).or_insert(0);
                let task_ids = (0..n)
                    .map(|_| {
                        *counter += 1;
                        format!("{name}.{counter}")
                    })
                    .collect();
                let constraints = kv
                    .iter()
                    .filter(|(k, _)| *k == "c")
                    .map(|(_, v)| {
                        let parts: Vec<&str> = v.splitn(3, ':').collect();
                        Constraint::parse(&parts).map_err(|e| e.to_string())
                    })
                    .collect::<Result<_, _>>()?;
                input.groups.push(TaskGroup {
                    service: name.to_string(),
                    task_ids,
                    resources: resources(&kv)?,
                    ports: get("ports").map(ports_list).transpose()?.unwrap_or_default(),
                    constraints,
                    strategy: match get("placement") {
                        None | Some("binpack") => Strategy::Binpack,
                        Some("spread") => Strategy::Spread,
                        Some(s) => return Err(format!("bad placement {s:?}")),
                    },
                });
            }
            other => return Err(format!("unknown line kind {other:?}")),
        }
    }
    Ok(input)
}

pub fn render(plan: &Plan) -> String {
    let mut s = String::new();
    for p in &plan.placements {
        s.push_str(&format!("{} -> {}", p.task_id, p.agent));
        if !p.ports.is_empty() {
            let ports: Vec<String> = p.ports.iter().map(u16::to_string).collect();
            s.push_str(&format!(" ports={}", ports.join(",")));
        }
        s.push('\n');
    }
    for u in &plan.unplaced {
        s.push_str(&format!("unplaced {}: {}\n", u.task_id, u.reason));
    }
    s
}
