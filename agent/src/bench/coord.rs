//! `cluster bench watch|leases|expiry`: etcd v3 Watch and Lease loads that drive cluster
//! and etcd alike (raw etcd protocol, so the same numbers mean the same thing).
//!
//! - `watch`: `--watchers` watchers of one prefix, spread over every endpoint (streams of
//!   up to 100 watchers each, as etcd's client multiplexes them), while one writer puts
//!   `--rate` keys per second into the prefix on the leader. Each value carries the time
//!   its put was due, so every delivered event gives a put-to-event latency that counts
//!   a put the system let start late.
//! - `leases`: `--leases` leases of `--ttl` seconds kept alive (each renewed every third
//!   of its TTL, as etcd's client does, over KeepAlive streams on every endpoint) while
//!   `--clients` clients put on the leader. Reports puts/s and the KeepAlive round trip.
//! - `expiry`: `--leases` leases, each with one key, granted so that they all run out at
//!   the same second; reports how long after that second the last key is gone, and the
//!   puts/s of `--clients` clients before and during the storm.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use proto::consts::prefix_range_end;
use proto::etcdserverpb as epb;
use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::lease_client::LeaseClient;
use serde_json::json;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::etcd::find_leader;
use super::Options;
use crate::output::Format;

/// Each put's completion time and latency (µs).
type PutTimes = Vec<(Instant, u32)>;

/// Watchers per Watch stream.
const WATCHERS_PER_STREAM: usize = 100;
/// KeepAlive streams per endpoint.
const KEEPALIVE_STREAMS_PER_ENDPOINT: usize = 4;
/// Concurrent grants (and puts) while setting leases up.
const SETUP_CONCURRENCY: usize = 64;

fn chan(a: &Options, addr: &str) -> anyhow::Result<Channel> {
    a.channel(addr).map_err(|e| anyhow::anyhow!(e.to_string()))
}

/// The value at fraction `p` of sorted latencies (µs), in ms.
fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

fn report(a: &Options, j: serde_json::Value, line: String) {
    if a.output == Format::Json {
        println!("{j}");
    } else {
        println!("{line}");
    }
}

/// Only what the watch load reads of etcd's `WatchResponse` (field numbers from etcd's
/// rpc.proto and kv.proto). At 1,000 watchers the load generator decodes a million
/// events a second on the same cores as the servers; skipping the header, keys and
/// previous versions, and taking values without a copy, keeps it from being what is
/// measured. Both systems are read through it.
mod lean {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WatchResponse {
        #[prost(bool, tag = "3")]
        pub created: bool,
        #[prost(bool, tag = "4")]
        pub canceled: bool,
        #[prost(string, tag = "6")]
        pub cancel_reason: String,
        #[prost(message, repeated, tag = "11")]
        pub events: Vec<Event>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        #[prost(message, optional, tag = "2")]
        pub kv: Option<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(bytes = "bytes", tag = "5")]
        pub value: prost::bytes::Bytes,
    }
}

/// Etcd's `Watch` call, answered in [`lean`] messages.
async fn lean_watch(
    ch: Channel,
    requests: impl futures::Stream<Item = epb::WatchRequest> + Send + 'static,
) -> Result<tonic::Streaming<lean::WatchResponse>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(ch).max_decoding_message_size(64 << 20);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
    let codec = tonic_prost::ProstCodec::<epb::WatchRequest, lean::WatchResponse>::default();
    Ok(grpc.streaming(tonic::Request::new(requests), path, codec).await?.into_inner())
}

/// Opens one Watch stream with `n` watchers of `prefix`, waiting until each is created.
async fn open_watchers(
    ch: Channel,
    prefix: &[u8],
    n: usize,
) -> anyhow::Result<(mpsc::Sender<epb::WatchRequest>, tonic::Streaming<lean::WatchResponse>)> {
    let (tx, rx) = mpsc::channel(n + 1);
    // Every create is queued before the call: a gRPC server may hold its response
    // headers back until it has something to answer, so awaiting the call first could
    // wait forever.
    for _ in 0..n {
        let create =
            epb::WatchCreateRequest { key: prefix.to_vec(), range_end: prefix_range_end(prefix), ..Default::default() };
        let req = epb::WatchRequest { request_union: Some(epb::watch_request::RequestUnion::CreateRequest(create)) };
        tx.send(req).await.map_err(|_| anyhow::anyhow!("watch stream closed"))?;
    }
    let out = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let mut s = lean_watch(ch, out).await?;
    let mut created = 0;
    while created < n {
        let r = s.message().await?.context("the watch stream ended while creating watchers")?;
        if r.canceled {
            bail!("a watcher was refused: {}", r.cancel_reason);
        }
        if r.created {
            created += 1;
        }
    }
    Ok((tx, s))
}

pub async fn watch(a: Options) -> anyhow::Result<()> {
    if a.watchers == 0 || a.rate <= 0.0 || a.duration_s <= 0.0 {
        bail!("--watchers, --rate and --duration must be positive");
    }
    let prefix = format!("bench-watch/{}/", std::process::id()).into_bytes();
    let leader = find_leader(&a).await?;
    let start = Instant::now();
    let streams = a.watchers.div_ceil(WATCHERS_PER_STREAM);
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for s in 0..streams {
        let n = WATCHERS_PER_STREAM.min(a.watchers - s * WATCHERS_PER_STREAM);
        let ep = &a.endpoints[s % a.endpoints.len()];
        let (tx, mut rx) =
            open_watchers(chan(&a, ep)?, &prefix, n).await.with_context(|| format!("watching on {ep}"))?;
        senders.push(tx);
        let (delivered, stop) = (delivered.clone(), stop.clone());
        receivers.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let m = tokio::time::timeout(Duration::from_millis(200), rx.message()).await;
                let r = match m {
                    Err(_) => continue,
                    Ok(Ok(Some(r))) => r,
                    Ok(_) => break,
                };
                let now = start.elapsed();
                for e in &r.events {
                    let Some(kv) = &e.kv else { continue };
                    if kv.value.len() >= 8 {
                        let sent = u64::from_be_bytes(kv.value[..8].try_into().expect("8 bytes"));
                        lat.push(micros(now.saturating_sub(Duration::from_micros(sent))));
                    }
                }
                delivered.fetch_add(r.events.len() as u64, Ordering::Relaxed);
            }
            lat
        }));
    }
    // The writer: an open loop at --rate, up to 256 puts in flight, on a thread and
    // runtime of its own so that the receivers' decoding does not hold its schedule
    // back. Each value carries the time its put was due, not when it went out: a put
    // that a busy system let start late is late for its watchers too (the open-loop
    // rule, as wrk2 measures).
    let kv = KvClient::new(chan(&a, &leader)?);
    let puts = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let count = (a.rate * a.duration_s) as u64;
    let delivered_before = delivered.load(Ordering::Relaxed);
    let writer = {
        let (puts, errors, prefix, rate, value_size) =
            (puts.clone(), errors.clone(), prefix.clone(), a.rate, a.value_size);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let inflight = Arc::new(tokio::sync::Semaphore::new(256));
                for i in 0..count {
                    let due = t0 + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                    let permit = inflight.clone().acquire_owned().await.expect("semaphore");
                    let mut kv = kv.clone();
                    let mut value = (due.duration_since(start).as_micros() as u64).to_be_bytes().to_vec();
                    value.resize(value_size.max(8), b'x');
                    let key = [prefix.as_slice(), format!("{:06}", i % 1000).as_bytes()].concat();
                    let (puts, errors) = (puts.clone(), errors.clone());
                    tokio::spawn(async move {
                        match kv.put(epb::PutRequest { key, value, ..Default::default() }).await {
                            Ok(_) => puts.fetch_add(1, Ordering::Relaxed),
                            Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                        };
                        drop(permit);
                    });
                }
                let _ = inflight.acquire_many(256).await;
            });
            Ok::<_, std::io::Error>(())
        })
    };
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .context("the writer thread")?
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?
        .context("the writer's runtime")?;
    let wrote = t0.elapsed().as_secs_f64();
    let want = puts.load(Ordering::Relaxed) * a.watchers as u64;
    // Let the watchers drain, for at most 10 s.
    let drain = Instant::now();
    while delivered.load(Ordering::Relaxed) - delivered_before < want && drain.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    drop(senders);
    let mut lat: Vec<u32> = Vec::new();
    for r in receivers {
        lat.extend(r.await.context("a watch receiver panicked")?);
    }
    lat.sort_unstable();
    let got = delivered.load(Ordering::Relaxed) - delivered_before;
    let puts = puts.load(Ordering::Relaxed);
    let eps = got as f64 / elapsed;
    report(
        &a,
        json!({"op": "watch", "clients": 1, "watchers": a.watchers, "streams": streams, "rate": a.rate, "puts": puts,
               "put_errors": errors.load(Ordering::Relaxed), "write_seconds": wrote, "seconds": elapsed,
               "events_expected": want, "events_delivered": got, "events_per_sec": eps,
               "p50_ms": pct(&lat, 0.5), "p99_ms": pct(&lat, 0.99), "max_ms": pct(&lat, 1.0)}),
        format!(
            "watch: {} watchers on {streams} streams, {puts} puts in {wrote:.1}s: {got}/{want} events in {elapsed:.1}s = {eps:.0} events/s, put-to-event p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            a.watchers,
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 1.0)
        ),
    );
    Ok(())
}

/// Grants `n` leases on `leader`; `ttl_for` gives each its TTL when it is asked for.
/// With `key_prefix`, each also gets one key.
async fn grant_many(
    a: &Options,
    leader: &str,
    n: usize,
    ttl_for: impl Fn() -> i64 + Send + Sync + 'static,
    key_prefix: Option<Vec<u8>>,
) -> anyhow::Result<Vec<i64>> {
    let ttl_for = Arc::new(ttl_for);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..SETUP_CONCURRENCY.min(n) {
        let ch = chan(a, leader)?;
        let (ttl_for, next, key_prefix) = (ttl_for.clone(), next.clone(), key_prefix.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lc, mut kv) = (LeaseClient::new(ch.clone()), KvClient::new(ch));
            let mut ids = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n as u64 {
                let r = lc.lease_grant(epb::LeaseGrantRequest { ttl: ttl_for(), id: 0 }).await?.into_inner();
                if let Some(p) = &key_prefix {
                    let key = [p.as_slice(), format!("{w:02}-{:08}", ids.len()).as_bytes()].concat();
                    kv.put(epb::PutRequest { key, value: b"x".to_vec(), lease: r.id, ..Default::default() }).await?;
                }
                ids.push(r.id);
            }
            Ok::<_, tonic::Status>(ids)
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.context("a grant task panicked")?.context("granting leases")?);
    }
    Ok(ids)
}

async fn revoke_all(a: &Options, leader: &str, ids: Vec<i64>) {
    let ids = Arc::new(Mutex::new(ids));
    let mut tasks = Vec::new();
    for _ in 0..SETUP_CONCURRENCY {
        let Ok(ch) = chan(a, leader) else { return };
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut lc = LeaseClient::new(ch);
            loop {
                let Some(id) = ids.lock().expect("ids").pop() else { return };
                let _ = lc.lease_revoke(epb::LeaseRevokeRequest { id }).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Closed-loop puts on `leader` by `clients` clients until `stop`; returns the
/// latencies (µs) with the time each completed.
fn spawn_puts(
    a: &Options,
    leader: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<PutTimes>>> {
    let conns = clients.clamp(1, 8);
    let channels: Vec<Channel> = (0..conns).map(|_| chan(a, leader)).collect::<anyhow::Result<_>>()?;
    let value = vec![b'x'; a.value_size];
    Ok((0..clients)
        .map(|i| {
            let mut kv = KvClient::new(channels[i % conns].clone());
            let (stop, value, keys) = (stop.clone(), value.clone(), a.keys.max(1));
            tokio::spawn(async move {
                let mut out = Vec::with_capacity(1 << 16);
                let mut k = i as u64;
                while !stop.load(Ordering::Relaxed) {
                    k = (k + 7919) % keys;
                    let key = format!("bench/{k:08}").into_bytes();
                    let t = Instant::now();
                    match kv.put(epb::PutRequest { key, value: value.clone(), ..Default::default() }).await {
                        Ok(_) => out.push((Instant::now(), micros(t.elapsed()))),
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                out
            })
        })
        .collect())
}

async fn collect_puts(tasks: Vec<tokio::task::JoinHandle<PutTimes>>) -> anyhow::Result<PutTimes> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("a put client panicked")?);
    }
    Ok(all)
}

pub async fn leases(a: Options) -> anyhow::Result<()> {
    if a.leases == 0 || a.ttl_s <= 0 || a.duration_s <= 0.0 {
        bail!("--leases, --ttl and --duration must be positive");
    }
    let leader = find_leader(&a).await?;
    let t = Instant::now();
    let ttl = a.ttl_s;
    let ids = grant_many(&a, &leader, a.leases, move || ttl, None).await?;
    let granted_s = t.elapsed().as_secs_f64();
    eprintln!("bench leases: granted {} leases of {ttl} s in {granted_s:.1}s", ids.len());
    // KeepAlive streams on every endpoint; each renews its leases every TTL/3, evenly
    // spread, and times each answer.
    let n_streams = KEEPALIVE_STREAMS_PER_ENDPOINT * a.endpoints.len();
    let stop = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(AtomicU64::new(0));
    let mut kas = Vec::new();
    for s in 0..n_streams {
        let mine: Vec<i64> = ids.iter().copied().skip(s).step_by(n_streams).collect();
        if mine.is_empty() {
            continue;
        }
        let ch = chan(&a, &a.endpoints[s % a.endpoints.len()])?;
        let (tx, rx) = mpsc::channel::<epb::LeaseKeepAliveRequest>(1024);
        let out = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
        let sent: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
        let period = Duration::from_secs_f64(ttl as f64 / 3.0 / mine.len() as f64);
        let (stop_s, sent_s) = (stop.clone(), sent.clone());
        // The sender runs before the call is awaited: the first request must be on its
        // way for a server that sends its headers with its first answer.
        let sender = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for id in mine.iter().cycle() {
                if stop_s.load(Ordering::Relaxed) {
                    break;
                }
                tick.tick().await;
                sent_s.lock().expect("sent").insert(*id, Instant::now());
                if tx.send(epb::LeaseKeepAliveRequest { id: *id }).await.is_err() {
                    break;
                }
            }
        });
        let mut answers = LeaseClient::new(ch).lease_keep_alive(out).await?.into_inner();
        let (stop_r, lost) = (stop.clone(), lost.clone());
        let receiver = tokio::spawn(async move {
            let mut lat: Vec<(Instant, u32)> = Vec::new();
            while !stop_r.load(Ordering::Relaxed) {
                let r = match tokio::time::timeout(Duration::from_millis(200), answers.next()).await {
                    Err(_) => continue,
                    Ok(Some(Ok(r))) => r,
                    Ok(_) => break,
                };
                if r.ttl <= 0 {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(t) = sent.lock().expect("sent").remove(&r.id) {
                    lat.push((Instant::now(), micros(t.elapsed())));
                }
            }
            lat
        });
        kas.push((sender, receiver));
    }
    // One TTL of keepalives alone, so that every lease has been renewed (and, here,
    // checkpointed) once before anything is measured; then the puts alongside.
    tokio::time::sleep(Duration::from_secs(ttl as u64)).await;
    let put_stop = Arc::new(AtomicBool::new(false));
    let measure = Instant::now();
    let puts = spawn_puts(&a, &leader, a.clients, put_stop.clone())?;
    tokio::time::sleep(Duration::from_secs_f64(a.duration_s)).await;
    put_stop.store(true, Ordering::Relaxed);
    let elapsed = measure.elapsed().as_secs_f64();
    let mut put_lat: Vec<u32> = collect_puts(puts).await?.into_iter().map(|(_, l)| l).collect();
    stop.store(true, Ordering::Relaxed);
    let mut ka_lat: Vec<u32> = Vec::new();
    for (s, r) in kas {
        let _ = s.await;
        ka_lat.extend(
            r.await
                .context("a keepalive receiver panicked")?
                .into_iter()
                .filter(|(t, _)| *t >= measure)
                .map(|(_, l)| l),
        );
    }
    revoke_all(&a, &leader, ids).await;
    put_lat.sort_unstable();
    ka_lat.sort_unstable();
    let put_rate = put_lat.len() as f64 / elapsed;
    let ka_rate = ka_lat.len() as f64 / elapsed;
    let lost = lost.load(Ordering::Relaxed);
    report(
        &a,
        json!({"op": "leases", "leases": a.leases, "ttl_s": ttl, "clients": a.clients, "seconds": elapsed,
               "grant_seconds": granted_s, "puts_per_sec": put_rate, "put_p50_ms": pct(&put_lat, 0.5),
               "put_p99_ms": pct(&put_lat, 0.99), "keepalives_per_sec": ka_rate,
               "keepalive_p50_ms": pct(&ka_lat, 0.5), "keepalive_p99_ms": pct(&ka_lat, 0.99),
               "leases_lost": lost}),
        format!(
            "leases: {} kept alive (TTL {ttl} s, {ka_rate:.0} keepalives/s, p50 {:.2} ms, p99 {:.2} ms, {lost} lost) with {} clients putting {put_rate:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
            a.leases,
            pct(&ka_lat, 0.5),
            pct(&ka_lat, 0.99),
            a.clients,
            pct(&put_lat, 0.5),
            pct(&put_lat, 0.99)
        ),
    );
    Ok(())
}

pub async fn expiry(a: Options) -> anyhow::Result<()> {
    if a.leases == 0 || a.expire_after_s < 0.0 {
        bail!("--leases must be positive and --expire-after not negative");
    }
    let leader = find_leader(&a).await?;
    let prefix = format!("bench-expiry/{}/", std::process::id()).into_bytes();
    let expire_after = if a.expire_after_s > 0.0 {
        Duration::from_secs_f64(a.expire_after_s)
    } else {
        // Time a sample of grants (each with its key), and allow twice the time that
        // rate gives for all of them, plus 15 s: the same load took one system 54 s on
        // one day and the other 192 s on another.
        let sample = (a.leases / 50).clamp(1, 2_000);
        let t = Instant::now();
        let probe = format!("bench-expiry-probe/{}/", std::process::id()).into_bytes();
        let ids = grant_many(&a, &leader, sample, || 3_600, Some(probe)).await?;
        let per_lease = t.elapsed().as_secs_f64() / sample as f64;
        revoke_all(&a, &leader, ids).await;
        let d = Duration::from_secs_f64(per_lease * a.leases as f64 * 2.0 + 15.0);
        eprintln!(
            "bench expiry: {sample} sample grants took {:.2} ms each; expiring in {:.0}s",
            per_lease * 1e3,
            d.as_secs_f64()
        );
        d
    };
    // Every lease's TTL is the whole seconds left until one common instant, so they
    // all run out within the same second.
    let at = Instant::now() + expire_after;
    let t = Instant::now();
    let ids = grant_many(
        &a,
        &leader,
        a.leases,
        move || at.saturating_duration_since(Instant::now()).as_secs_f64().ceil().max(1.0) as i64,
        Some(prefix.clone()),
    )
    .await?;
    let granted_s = t.elapsed().as_secs_f64();
    eprintln!("bench expiry: granted {} leases with a key each in {granted_s:.1}s", ids.len());
    if Instant::now() + Duration::from_secs(3) > at {
        bail!("granting took {granted_s:.1}s, too close to the expiry: raise --expire-after");
    }
    let mut kv = KvClient::new(chan(&a, &leader)?);
    let count = |kv: &mut KvClient<Channel>| {
        let req = epb::RangeRequest {
            key: prefix.clone(),
            range_end: prefix_range_end(&prefix),
            count_only: true,
            ..Default::default()
        };
        let mut kv = kv.clone();
        async move { kv.range(req).await.map(|r| r.into_inner().count) }
    };
    let before = count(&mut kv).await?;
    // Puts from 3 s before the instant (the baseline) until the keys are gone.
    let put_stop = Arc::new(AtomicBool::new(false));
    tokio::time::sleep_until((at - Duration::from_secs(3)).into()).await;
    let puts = spawn_puts(&a, &leader, a.clients, put_stop.clone())?;
    tokio::time::sleep_until(at.into()).await;
    let limit = Duration::from_secs(300);
    let gone_after = loop {
        let left = count(&mut kv).await.unwrap_or(i64::MAX);
        if left == 0 {
            break Some(at.elapsed());
        }
        if at.elapsed() > limit {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let storm_end = Instant::now();
    put_stop.store(true, Ordering::Relaxed);
    let puts = collect_puts(puts).await?;
    let base: Vec<u32> = puts.iter().filter(|(t, _)| *t < at).map(|(_, l)| *l).collect();
    let mut storm: Vec<u32> = puts.iter().filter(|(t, _)| *t >= at && *t <= storm_end).map(|(_, l)| *l).collect();
    storm.sort_unstable();
    let storm_s = storm_end.duration_since(at).as_secs_f64().max(1e-3);
    let base_rate = base.len() as f64 / 3.0;
    let storm_rate = storm.len() as f64 / storm_s;
    let gone_s = gone_after.map(|d| d.as_secs_f64());
    report(
        &a,
        json!({"op": "expiry", "leases": a.leases, "keys": before, "grant_seconds": granted_s,
               "all_gone_after_s": gone_s, "clients": a.clients, "puts_per_sec_before": base_rate,
               "puts_per_sec_during": storm_rate, "put_p99_ms_during": pct(&storm, 0.99)}),
        format!(
            "expiry: {} leases ({before} keys) ran out at once; all keys gone {} after; puts/s {base_rate:.0} before, {storm_rate:.0} during (p99 {:.2} ms)",
            a.leases,
            gone_s.map_or("NOT within 300 s".to_string(), |s| format!("{s:.2} s")),
            pct(&storm, 0.99)
        ),
    );
    if gone_after.is_none() {
        bail!("the keys of expired leases were not all gone within {}s", limit.as_secs());
    }
    Ok(())
}
