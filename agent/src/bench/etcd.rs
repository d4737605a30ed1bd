//! `cluster bench put|get`: a closed-loop load generator over the etcd v3 API.
//!
//! Each client keeps one request in flight and picks keys uniformly from `--keys`.
//! Reported: throughput, p50/p99 latency, and the longest gap between two successful
//! operations (seen across all clients), which shows stalls such as a leader change.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use proto::etcdserverpb as epb;
use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::maintenance_client::MaintenanceClient;
use rand::Rng;
use serde_json::json;
use tonic::transport::Channel;

use super::{Options, Target};
use crate::output::Format;

/// The request each client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvOp {
    Put,
    Get,
}

/// Finds the endpoint whose member id is the leader, asking Maintenance.Status.
pub(crate) async fn find_leader(a: &Options) -> anyhow::Result<String> {
    let endpoints = &a.endpoints;
    for _ in 0..50 {
        for e in endpoints {
            let Ok(ch) = a.channel(e) else { continue };
            if let Ok(r) = MaintenanceClient::new(ch).status(epb::StatusRequest {}).await {
                let r = r.into_inner();
                if r.leader != 0 && r.header.map(|h| h.member_id) == Some(r.leader) {
                    return Ok(e.clone());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no endpoint of {endpoints:?} reports itself as leader")
}

struct Shared {
    start: Instant,
    last_ok_us: AtomicU64,
    max_gap_us: AtomicU64,
    errors: AtomicU64,
}

impl Shared {
    fn ok(&self) {
        let now = self.start.elapsed().as_micros() as u64;
        let prev = self.last_ok_us.fetch_max(now, Ordering::Relaxed);
        if now > prev {
            self.max_gap_us.fetch_max(now - prev, Ordering::Relaxed);
        }
    }
}

pub async fn run(op: KvOp, a: Options) -> anyhow::Result<()> {
    if a.clients == 0 || a.keys == 0 || a.duration_s <= 0.0 {
        bail!("--clients, --keys and --duration must be positive");
    }
    let targets = match a.target {
        Target::Leader => vec![find_leader(&a).await?],
        Target::All => a.endpoints.clone(),
    };
    let conns = a.conns.unwrap_or(a.clients.min(8)).max(1);
    let channels: Vec<Channel> = (0..conns)
        .map(|i| {
            // connect_lazy shares nothing between Channels, so each is its own TCP connection.
            a.channel(&targets[i % targets.len()]).map_err(|e| anyhow::anyhow!(e.to_string()))
        })
        .collect::<anyhow::Result<_>>()?;
    let shared = Arc::new(Shared {
        start: Instant::now(),
        last_ok_us: AtomicU64::new(0),
        max_gap_us: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let deadline = Instant::now() + Duration::from_secs_f64(a.duration_s);
    let value = vec![b'x'; a.value_size];
    let mut tasks = Vec::new();
    for i in 0..a.clients {
        let mut kv = KvClient::new(channels[i % channels.len()].clone()).max_decoding_message_size(64 << 20);
        let shared = shared.clone();
        let value = value.clone();
        let (keys, serializable) = (a.keys, a.serializable);
        tasks.push(tokio::spawn(async move {
            let mut lat_us: Vec<u32> = Vec::with_capacity(1 << 16);
            while Instant::now() < deadline {
                let key = format!("bench/{:08}", rand::rng().random_range(0..keys)).into_bytes();
                let t = Instant::now();
                let res = match op {
                    KvOp::Put => {
                        kv.put(epb::PutRequest { key, value: value.clone(), ..Default::default() }).await.map(|_| ())
                    }
                    KvOp::Get => {
                        kv.range(epb::RangeRequest { key, serializable, ..Default::default() }).await.map(|_| ())
                    }
                };
                match res {
                    Ok(()) => {
                        lat_us.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        shared.ok();
                    }
                    Err(_) => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            lat_us
        }));
    }
    let mut all: Vec<u32> = Vec::new();
    for t in tasks {
        all.extend(t.await.context("bench client panicked")?);
    }
    let elapsed = shared.start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return f64::NAN;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i] as f64 / 1000.0
    };
    let ops = all.len();
    let tput = ops as f64 / elapsed;
    let gap_ms = shared.max_gap_us.load(Ordering::Relaxed) as f64 / 1000.0;
    let errors = shared.errors.load(Ordering::Relaxed);
    let name = match op {
        KvOp::Put => "put",
        KvOp::Get if a.serializable => "get-serializable",
        KvOp::Get => "get",
    };
    if a.output == Format::Json {
        println!(
            "{}",
            json!({"op": name, "clients": a.clients, "conns": conns, "ops": ops, "seconds": elapsed,
                   "ops_per_sec": tput, "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0),
                   "max_gap_ms": gap_ms, "errors": errors, "targets": targets})
        );
    } else {
        println!(
            "{name}: clients={} conns={conns} ops={ops} in {elapsed:.1}s = {tput:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, longest gap {gap_ms:.1} ms, errors {errors}",
            a.clients,
            pct(0.50),
            pct(0.99),
            pct(1.0)
        );
    }
    Ok(())
}
