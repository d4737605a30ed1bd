//! `cluster bench agents`: N emulated agents against a running cluster. Each is the real
//! agent session code ([`crate::session`]) over the real gRPC protocol, sharing a pool of
//! connections (one per 100 agents), at the heartbeat period the leader asks for.
//!
//! Phases: join N worker ids, register and open sessions until every agent is active,
//! then a measured window of `--duration` seconds, optionally with kill -9 of the leader
//! (`--kill-leader-at`, the leader must run on this machine). Printed: the leader's CPU
//! use while steady, reattach times after the kill, and every unreachable or down
//! transition of an emulated agent (all of them are alive, so each one is false).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use client::{Client, Role};
use futures::StreamExt;
use proto::clusterpb as pb;
use proto::clusterpb::cluster_admin_client::ClusterAdminClient;
use serde_json::json;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::{percentile as pct, Options};
use crate::output::Format;
use crate::session;

const AGENTS_PER_CONN: usize = 100;

pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// Counts unreachable/down transitions of `ids` by following the registry events,
/// reconnecting to any endpoint (and resuming after the last event seen) when the
/// answering master dies.
fn watch_transitions(
    masters: Client,
    start: u64,
    ids: Arc<std::collections::BTreeSet<u64>>,
) -> Arc<Mutex<Vec<String>>> {
    let found = Arc::new(Mutex::new(Vec::new()));
    let out = found.clone();
    tokio::spawn(async move {
        let mut next = start;
        loop {
            for ep in masters.endpoints() {
                let Ok(mut s) = masters.at(ep).events(next, true).await else { continue };
                while let Some(Ok(e)) = s.next().await {
                    next = e.index + 1;
                    if e.kind == "state"
                        && ids.contains(&e.node_id)
                        && (e.to_state == "unreachable" || e.to_state == "down")
                    {
                        out.lock()
                            .unwrap()
                            .push(format!("node {} {} -> {} ({})", e.node_id, e.from_state, e.to_state, e.reason));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    found
}

/// Polls the surviving masters every 10 ms; resolves when one reports itself leader.
fn watch_election(masters: Vec<Client>) -> tokio::task::JoinHandle<Option<Instant>> {
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for m in &masters {
                if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), m.status()).await {
                    if s.state == "leader" {
                        return Some(Instant::now());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    })
}

/// Emulated agents joined through the real join path, each with a session of its own.
pub(crate) struct Emulated {
    pub ids: Vec<u64>,
    pub id_set: Arc<std::collections::BTreeSet<u64>>,
    /// Every master.
    pub masters: Client,
    /// Channels shared by the agents: (master address, slot) → channel.
    pub pool: Arc<Mutex<BTreeMap<(String, usize), Channel>>>,
    pub join_s: f64,
}

impl Emulated {
    /// The channel agent `i` uses to `addr` (one per `AGENTS_PER_CONN` agents).
    pub fn channel(&self, tls: &client::ClientTls, i: usize, addr: &str) -> Result<Channel, client::ClientError> {
        connect_pooled(&self.pool, tls, i / AGENTS_PER_CONN, addr)
    }
}

fn connect_pooled(
    pool: &Mutex<BTreeMap<(String, usize), Channel>>,
    tls: &client::ClientTls,
    slot: usize,
    addr: &str,
) -> Result<Channel, client::ClientError> {
    let mut p = pool.lock().expect("pool");
    let key = (addr.to_string(), slot);
    if let Some(c) = p.get(&key) {
        return Ok(c.clone());
    }
    let c = client::channel(addr, tls)?;
    p.insert(key, c.clone());
    Ok(c)
}

/// Joins `n` worker ids, then starts their sessions (at 5,000/s) with `on_attach(i)`
/// called whenever agent i opens a session with a leader.
pub(crate) async fn start_agents(
    a: &Options,
    n: usize,
    on_attach: impl Fn(usize) + Send + Sync + Clone + 'static,
) -> anyhow::Result<Emulated> {
    if n == 0 {
        bail!("--agents must be > 0");
    }
    let eps = a.client(a.endpoints.clone())?;
    let token = eps.token(Role::Worker).await?;
    let st = eps.leader_status().await?;
    let leader_addr = st.leader_addr.clone();
    let masters = a.client(st.members.iter().map(|m| m.addr.clone()))?;
    eprintln!("leader: node {} at {leader_addr} (pid {}); joining {n} emulated agents", st.node_id, st.pid);

    // Worker ids, through the real join path.
    let t0 = Instant::now();
    let leader_ch = a.channel(&leader_addr)?;
    // One key for every emulated agent: each still gets its own certificate.
    let (_key, csr) = client::pki::cert::new_key_and_csr()?;
    let ids: Vec<u64> = futures::stream::iter(0..n)
        .map(|i| {
            let (ch, token, csr) = (leader_ch.clone(), token.clone(), csr.clone());
            async move {
                let req = pb::JoinRequest { token, advertise_addr: emulated_addr(i), name: format!("emu-{i}"), csr };
                ClusterAdminClient::new(ch).join(req).await.map(|r| r.into_inner().node_id)
            }
        })
        .buffered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, tonic::Status>>()
        .map_err(client::ClientError::from)
        .context("joining emulated agents")?;
    let join_s = t0.elapsed().as_secs_f64();
    let id_set: Arc<std::collections::BTreeSet<u64>> = Arc::new(ids.iter().copied().collect());
    let pool: Arc<Mutex<BTreeMap<(String, usize), Channel>>> = Arc::default();
    let tls = a.agent_tls.clone().context("emulated agents need a master's node certificate")?;
    for (i, &id) in ids.iter().enumerate() {
        // Agents come up at 5,000/s, not all in the same millisecond.
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (pool, tls) = (pool.clone(), tls.clone());
        let connect: session::Connect =
            Arc::new(move |addr: &str| connect_pooled(&pool, &tls, i / AGENTS_PER_CONN, addr));
        let on_attach = on_attach.clone();
        let identity = session::Identity {
            node_id: id,
            secret: format!("emulated-agent-{id}-{}", rand::random::<u64>()),
            name: format!("emu-{i}"),
            addr: emulated_addr(i),
            role: Role::Worker,
            resources: pb::Resources {
                cpus_milli: 4000,
                memory_mb: 8192,
                disk_mb: 100_000,
                ports: vec![pb::PortRange { begin: 31000, end: 32000 }],
            },
            labels: [("emulated".to_string(), "true".to_string())].into(),
        };
        let hooks =
            session::Hooks { on_attach: Some(Arc::new(move |_leader: u64| on_attach(i))), ..Default::default() };
        let seeds = vec![leader_addr.clone()];
        tokio::spawn(async move {
            if let Err(e) = session::run(identity, seeds, connect, hooks).await {
                eprintln!("emulated agent {id} refused: {e}");
            }
        });
    }
    Ok(Emulated { ids, id_set, masters, pool, join_s })
}

/// Agent i's advertised address: its own loopback address, so each is its own host.
fn emulated_addr(i: usize) -> String {
    format!("127.{}.{}.{}:7000", 100 + i / 65536, (i / 256) % 256, i % 256)
}

/// Waits until every emulated agent is active in the registry (at most 300 s).
pub(crate) async fn wait_active(eps: &Client, id_set: &std::collections::BTreeSet<u64>) -> anyhow::Result<()> {
    let t1 = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(r) = eps.nodes().await {
            let active = r.nodes.iter().filter(|x| id_set.contains(&x.node_id) && x.state == "active").count();
            if active == id_set.len() {
                return Ok(());
            }
            if t1.elapsed() > Duration::from_secs(300) {
                bail!("only {active} of {} emulated agents became active within 300 s", id_set.len());
            }
        }
    }
}

pub async fn run(a: Options) -> anyhow::Result<()> {
    let n = a.agents;
    let eps = a.client(a.endpoints.clone())?;
    let bench_start = Instant::now();
    let attached_at: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let attaches = Arc::new(AtomicU64::new(0));
    let (at, count) = (attached_at.clone(), attaches.clone());
    let on_attach = move |i: usize| {
        at[i].store(bench_start.elapsed().as_micros() as u64 + 1, Ordering::Relaxed);
        count.fetch_add(1, Ordering::Relaxed);
    };
    let start_index = {
        // Transitions are counted from the newest registry event on.
        let leader = a.client(a.endpoints.clone())?;
        let mut last = 0;
        let mut s = leader.events(1, false).await?;
        while let Some(Ok(e)) = s.next().await {
            last = e.index;
        }
        last + 1
    };
    let emu = start_agents(&a, n, on_attach).await?;
    let (join_s, id_set, masters) = (emu.join_s, emu.id_set.clone(), emu.masters.clone());
    let false_transitions = watch_transitions(masters.clone(), start_index, id_set.clone());
    let conns = n.div_ceil(AGENTS_PER_CONN);
    let t1 = Instant::now();
    wait_active(&eps, &id_set).await?;
    let ramp_s = t1.elapsed().as_secs_f64();
    eprintln!(
        "{n} agents active ({join_s:.1} s to join, {ramp_s:.1} s to register and activate); measuring for {} s",
        a.duration_s
    );

    // Measured window, on the leader of now (the ramp may have moved leadership).
    let st = eps.leader_status().await?;
    let leader_addr = st.leader_addr.clone();
    let w0 = Instant::now();
    let cpu0 = cpu_seconds(st.pid);
    let kill_at = a.kill_leader_at_s.map(Duration::from_secs_f64);
    let mut killed_at: Option<Instant> = None;
    let mut elected: Option<tokio::task::JoinHandle<Option<Instant>>> = None;
    let mut cpu_steady: Option<f64> = None;
    let duration = Duration::from_secs_f64(a.duration_s);
    while w0.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let (Some(k), None) = (kill_at, killed_at) {
            if w0.elapsed() >= k {
                let now = eps.leader_status().await?;
                if now.pid != st.pid {
                    bail!(
                        "leadership moved during the steady window (node {} to {}): the leader was overloaded",
                        st.node_id,
                        now.node_id
                    );
                }
                cpu_steady = cpu_seconds(st.pid).zip(cpu0).map(|(c1, c0)| (c1 - c0) / w0.elapsed().as_secs_f64());
                // SAFETY: plain kill(2) of the leader's pid, which this machine runs.
                if unsafe { libc::kill(st.pid as i32, libc::SIGKILL) } != 0 {
                    bail!("kill -9 of leader pid {} failed: {}", st.pid, std::io::Error::last_os_error());
                }
                eprintln!("killed the leader (pid {}) at {:.1} s", st.pid, w0.elapsed().as_secs_f64());
                killed_at = Some(Instant::now());
                // Own connections: the registry watch must not share them.
                let survivors = masters.endpoints().iter().filter(|m| **m != leader_addr);
                elected = Some(watch_election(
                    survivors.map(|m| Client::new([m.clone()], a.tls.clone().expect("checked"))).collect(),
                ));
            }
        }
    }
    if cpu_steady.is_none() {
        cpu_steady = cpu_seconds(st.pid).zip(cpu0).map(|(c1, c0)| (c1 - c0) / w0.elapsed().as_secs_f64());
    }
    // Reattach: each agent's first session opened after the kill.
    let mut reattach_ms: Vec<f64> = Vec::new();
    let mut not_reattached = 0;
    let elected_at = match elected {
        Some(h) => h.await.ok().flatten(),
        None => None,
    };
    let election_ms = killed_at.zip(elected_at).map(|(k, e)| (e - k).as_secs_f64() * 1000.0);
    if let Some(k) = killed_at {
        let k_us = (k - bench_start).as_micros() as u64;
        for at in attached_at.iter() {
            let t = at.load(Ordering::Relaxed);
            if t > k_us {
                reattach_ms.push((t - k_us) as f64 / 1000.0);
            } else {
                not_reattached += 1;
            }
        }
        reattach_ms.sort_by(|x, y| x.partial_cmp(y).unwrap());
    }
    // Let transitions that were decided at the end of the window arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let false_list = false_transitions.lock().unwrap().clone();
    let new_leader = eps.leader_status().await.ok();
    let result = json!({
        "agents": n,
        "connections_per_master": conns,
        "join_seconds": join_s,
        "activate_seconds": ramp_s,
        "window_seconds": a.duration_s,
        "leader_cpu_percent_steady": cpu_steady.map(|c| (c * 1000.0).round() / 10.0),
        "killed_leader": killed_at.is_some(),
        "new_leader": new_leader.as_ref().and_then(|s| s.leader_id),
        "election_ms": election_ms,
        "reattach_ms_p50": pct(&reattach_ms, 0.5),
        "reattach_ms_p99": pct(&reattach_ms, 0.99),
        "reattach_ms_max": reattach_ms.last().copied(),
        "not_reattached": not_reattached,
        "false_transitions": false_list.len(),
        "sessions_opened": attaches.load(Ordering::Relaxed),
    });
    if a.output == Format::Json {
        println!("{result}");
    } else {
        println!("emulated agents            {n} ({conns} connections per master)");
        println!("leader CPU while steady    {}", result["leader_cpu_percent_steady"]);
        if killed_at.is_some() {
            println!(
                "new leader elected          {} ms after the kill",
                election_ms.map(|e| format!("{e:.0}")).unwrap_or("?".into())
            );
            println!(
                "reattach after leader kill p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, not reattached {not_reattached}",
                pct(&reattach_ms, 0.5),
                pct(&reattach_ms, 0.99),
                reattach_ms.last().copied().unwrap_or(f64::NAN)
            );
        }
        println!("false transitions          {}", false_list.len());
    }
    for f in false_list.iter().take(10) {
        eprintln!("false transition: {f}");
    }
    Ok(())
}
