//! `cluster bench ipam`: allocations committed through a running cluster.
//!
//! 1. single: `--clients` clients, each allocating one new owner per request, for
//!    `--duration` seconds: allocations/s and latency percentiles;
//! 2. batched: the same clients, each allocating `--batch` new owners per request (one
//!    log entry each): allocations/s and per-request latency;
//! 3. with `--fill`: an IPv4 /8 allocated to the last address, and 1,000,000 allocations
//!    in an IPv6 /64, with the leader's resident memory after each (VmRSS).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use client::{Client, ClientError, NetworkSpec};
use proto::clusterpb as pb;
use proto::clusterpb::ipam_client::IpamClient;
use serde_json::json;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::{percentile as pct, Options};
use crate::output::Format;

/// Resident memory of `pid` in MiB.
pub(crate) fn rss_mb(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

struct Phase {
    allocations: u64,
    seconds: f64,
    latencies_ms: Vec<f64>,
    /// Batches sent again after an `unavailable` answer.
    retries: u64,
}

impl Phase {
    fn json(&mut self) -> serde_json::Value {
        self.latencies_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        json!({
            "allocations": self.allocations,
            "per_second": (self.allocations as f64 / self.seconds).round(),
            "requests": self.latencies_ms.len(),
            "p50_ms": pct(&self.latencies_ms, 0.5),
            "p99_ms": pct(&self.latencies_ms, 0.99),
            "unavailable_retries": self.retries,
        })
    }
}

/// `clients` loops of `batch`-owner requests (1: `Allocate`, else `AllocateBatch`) for
/// `duration`, or until `limit` allocations when given.
/// `conns`: the TLS to reach a leader named in an answer, and the channels to load.
async fn load(
    conns: (&client::ClientTls, &[Channel]),
    network: &str,
    clients: usize,
    batch: usize,
    duration: Option<Duration>,
    limit: Option<u64>,
    tag: &str,
) -> anyhow::Result<Phase> {
    let (tls, chans) = conns;
    let done = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let lats: Arc<Mutex<Vec<f64>>> = Arc::default();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut cl = IpamClient::new(chans[c % chans.len()].clone()).max_decoding_message_size(256 << 20);
        let (done, stop, lats, network, tag) =
            (done.clone(), stop.clone(), lats.clone(), network.to_string(), tag.to_string());
        let retries = retries.clone();
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut mine = Vec::new();
            loop {
                if stop.load(Ordering::Relaxed) || duration.is_some_and(|d| t0.elapsed() >= d) {
                    break;
                }
                if let Some(l) = limit {
                    // Reserve the next batch; the last one may be short.
                    let start = done.fetch_add(batch as u64, Ordering::Relaxed);
                    if start >= l {
                        done.fetch_sub(batch as u64, Ordering::Relaxed);
                        break;
                    }
                    let take = (l - start).min(batch as u64) as usize;
                    if take < batch {
                        done.fetch_sub((batch - take) as u64, Ordering::Relaxed);
                    }
                    let owners: Vec<String> = (0..take).map(|i| format!("{tag}-{c}-{n}-{i}")).collect();
                    n += 1;
                    let s = Instant::now();
                    let req = pb::AllocateBatchRequest { network: network.clone(), owners, node_id: 0 };
                    // Allocation is idempotent per owner: a batch whose outcome is unknown
                    // (an election under load) is simply sent again, to the leader the
                    // answer names.
                    let mut tries = 0;
                    while let Err(e) = cl.allocate_batch(req.clone()).await {
                        tries += 1;
                        if e.code() != tonic::Code::Unavailable || tries > 600 {
                            return Err(e);
                        }
                        retries.fetch_add(1, Ordering::Relaxed);
                        let leader = e.metadata().get(proto::consts::LEADER_ADDR_HEADER).and_then(|v| v.to_str().ok());
                        if let Some(Ok(ch)) = leader.map(|l| client::channel(l, &tls)) {
                            cl = IpamClient::new(ch).max_decoding_message_size(256 << 20);
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    mine.push(s.elapsed().as_secs_f64() * 1000.0);
                    continue;
                }
                let s = Instant::now();
                if batch == 1 {
                    let owner = format!("{tag}-{c}-{n}");
                    cl.allocate(pb::AllocateRequest { network: network.clone(), owner, ..Default::default() }).await?;
                } else {
                    let owners: Vec<String> = (0..batch).map(|i| format!("{tag}-{c}-{n}-{i}")).collect();
                    cl.allocate_batch(pb::AllocateBatchRequest { network: network.clone(), owners, node_id: 0 })
                        .await?;
                }
                n += 1;
                mine.push(s.elapsed().as_secs_f64() * 1000.0);
                done.fetch_add(batch as u64, Ordering::Relaxed);
            }
            lats.lock().unwrap().extend(mine);
            Ok::<_, tonic::Status>(())
        }));
    }
    for t in tasks {
        t.await?.map_err(ClientError::from)?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let latencies_ms = std::mem::take(&mut *lats.lock().unwrap());
    Ok(Phase {
        allocations: done.load(Ordering::Relaxed),
        seconds,
        latencies_ms,
        retries: retries.load(Ordering::Relaxed),
    })
}

async fn create(leader: &Client, name: &str, cidr: &str) -> anyhow::Result<()> {
    let spec = NetworkSpec {
        name: name.into(),
        subnets: vec![cidr.into()],
        quarantine_ms: Some(60_000),
        ..Default::default()
    };
    leader.create_network(spec).await.context("create network")?;
    Ok(())
}

pub async fn run(a: Options) -> anyhow::Result<()> {
    if a.batch == 0 || a.clients == 0 {
        bail!("--batch and --clients must be > 0");
    }
    let st = a.client(a.endpoints.clone())?.leader_status().await?;
    if st.leader_addr.is_empty() {
        bail!("no leader");
    }
    let conns = a.conns.unwrap_or(a.clients.min(8)).max(1);
    let chans: Vec<Channel> = (0..conns).map(|_| a.channel(&st.leader_addr)).collect::<Result<_, _>>()?;
    let leader = a.client([st.leader_addr.clone()])?;
    let tag = format!("b{}", rand::random::<u32>());
    let dur = Duration::from_secs_f64(a.duration_s);
    // Each phase gets its own network, so the numbers do not depend on the others.
    // Each phase gets its own network (a /10 of a random first octet), so the numbers do
    // not depend on each other, and reruns against the same cluster do not overlap.
    let base = rand::random_range(11u32..=250);
    let (n1, c1) = (format!("{tag}-1"), format!("{base}.0.0.0/10"));
    let (n2, c2) = (format!("{tag}-2"), format!("{base}.64.0.0/10"));
    let room = Some((1u64 << 22) - 3);
    create(&leader, &n1, &c1).await?;
    eprintln!("single: {} clients, 1 owner per request, {:.0} s", a.clients, a.duration_s);
    let mut single = load((leader.tls(), &chans), &n1, a.clients, 1, Some(dur), room, &tag).await?;
    create(&leader, &n2, &c2).await?;
    // More than 8 batches in flight only queue behind each other (and starve the
    // leader's heartbeats on 2 cores).
    let bclients = a.clients.min(8);
    eprintln!("batched: {bclients} clients, {} owners per request, {:.0} s", a.batch, a.duration_s);
    let mut batched = load((leader.tls(), &chans), &n2, bclients, a.batch, Some(dur), room, &tag).await?;
    let mut out = json!({
        "single": single.json(),
        "batched": batched.json(),
        "batch_size": a.batch,
        "clients": a.clients,
        "batched_clients": bclients,
        "leader_pid": st.pid,
    });
    if a.fill {
        let rss0 = rss_mb(st.pid);
        let (n8, c8) = (format!("{tag}-8"), "10.0.0.0/8".to_string());
        create(&leader, &n8, &c8).await.context("the /8 fill needs 10.0.0.0/8 free")?;
        let usable = (1u64 << 24) - 3;
        eprintln!("fill: {usable} allocations in {c8}");
        let mut fill = load((leader.tls(), &chans), &n8, bclients, a.batch, None, Some(usable), &tag).await?;
        let rss8 = rss_mb(st.pid);
        // The pool is full: one more must fail with "exhausted".
        let e = IpamClient::new(chans[0].clone())
            .allocate(pb::AllocateRequest {
                network: n8.clone(),
                owner: format!("{tag}-one-more"),
                ..Default::default()
            })
            .await;
        let exhausted = matches!(&e, Err(s) if s.code() == tonic::Code::ResourceExhausted);
        let (n6, c6) = (format!("{tag}-6"), format!("fd{:02x}:{:x}::/64", base % 256, rand::random::<u16>()));
        create(&leader, &n6, &c6).await?;
        eprintln!("fill: 1,000,000 allocations in {c6}");
        let mut fill6 = load((leader.tls(), &chans), &n6, bclients, a.batch, None, Some(1_000_000), &tag).await?;
        let rss6 = rss_mb(st.pid);
        out["fill_v4_slash8"] = json!({"allocations": fill.allocations, "per_second": fill.json()["per_second"],
            "unavailable_retries": fill.retries,
            "leader_rss_mb_before": rss0, "leader_rss_mb_after": rss8, "exhausted_after": exhausted});
        out["fill_v6_slash64_1m"] = json!({"allocations": fill6.allocations, "per_second": fill6.json()["per_second"],
            "unavailable_retries": fill6.retries,
            "leader_rss_mb_after": rss6});
    }
    if a.output == Format::Json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}
