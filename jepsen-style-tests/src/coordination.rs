//! The coordination workloads' own clients: watchers (the `watch` workload's writers are
//! ordinary clients, see [`crate::workload`]), lock holders, lease keepers, campaigners
//! and observers. They record into the same history as every workload, and after the
//! heal [`Running::finish`] reads the committed history of their key range for the
//! checkers.
//!
//! Each canary is the bug its checker exists for: the watch canary drops the first event
//! after every resume (here, in the client); the lock and election canaries run the
//! masters with `--canary-lock-skip-reread` (etcd #11456); the lease canary runs them
//! with `--canary-lease-skip-checkpoint` (renewals a successor does not know of).

use crate::checker::election::{ObserverLog, Seen};
use crate::checker::kv_events::Ev;
use crate::checker::watch::WatcherLog;
use crate::checker::{self, CheckResult};
use crate::history::{Call, Op, OpType};
use crate::schedule::Rng;
use crate::workload::{self, Done, Kind, Shared};
use client::{GetOptions, WatchItem, WatchOptions};
use proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use proto::etcdserverpb::request_op::Request as ReqOp;
use proto::etcdserverpb::{Compare, PutRequest, RequestOp, TxnRequest};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// The watch workload's key range.
pub const WATCH_PREFIX: &str = "jepsen/w/";
/// The lock's name (its keys are `<name>/<lease hex>`) and the register it fences.
pub const LOCK_NAME: &str = "jepsen/l/lock";
pub const LOCK_REGISTER: &str = "jepsen/l/register";
const LOCK_RANGE: &str = "jepsen/l/";
/// Every lease's key is `<prefix><lease hex>`.
pub const LEASE_PREFIX: &str = "jepsen/lease/";
/// The election's name (its keys are `<name>/<lease hex>`).
pub const ELECTION: &str = "jepsen/e/x";
const ELECTION_RANGE: &str = "jepsen/e/";
/// The lease workload's TTL; its clients renew every quarter of it.
pub const LEASE_TTL_S: i64 = 4;
/// How long after TTL an abandoned lease's key may outlive its last renewal (or the
/// heal): one more TTL, since a renewal's checkpoint reaches 2 x TTL ahead and a new
/// leader honours it; a new leader's grace (one election timeout, 300 ms here); an
/// election after the heal (a few election timeouts); and the countdown's sweep and
/// commit. Documented in docs/jepsen.md.
pub const LEASE_BOUND_MS: u64 = LEASE_TTL_S as u64 * 1_000 + 3_000;
/// Process ids of the recorders that are not clients (the final reads).
const FINAL_PROCESS: u64 = 1_000_000;

/// What every client task needs.
#[derive(Clone)]
pub struct Ctx {
    pub sh: Arc<Shared>,
    pub stop: Arc<AtomicBool>,
    pub ips: Vec<String>,
    pub names: Vec<String>,
    pub canary: bool,
    pub concurrency: usize,
    pub seed: u64,
}

/// The workload's own tasks while the run goes on.
pub struct Running {
    kind: Kind,
    first_rev: i64,
    tasks: Vec<JoinHandle<()>>,
    /// Watchers and observers stop after the clients, once they caught up.
    followers_stop: tokio::sync::watch::Sender<bool>,
    followers: Vec<JoinHandle<()>>,
    watchers: Vec<Arc<Mutex<WatcherLog>>>,
    observers: Vec<Arc<Mutex<ObserverLog>>>,
}

/// What the checkers need besides the history.
pub struct Finished {
    pub kind: Kind,
    pub first_rev: i64,
    pub last_rev: i64,
    pub reference: Option<Vec<Ev>>,
    pub watchers: Vec<WatcherLog>,
    pub observers: Vec<ObserverLog>,
}

/// Records one operation: invocation, then its completion (or a timeout's), and retires
/// the process after an unknown outcome.
struct Proc {
    sh: Arc<Shared>,
    process: u64,
    step: u64,
    node: String,
}

impl Proc {
    async fn run(
        &mut self,
        f: &str,
        key: Option<String>,
        input: Value,
        timeout: Duration,
        fut: impl std::future::Future<Output = Done>,
    ) -> Done {
        let mut inv = Op::invoke(self.process, f, key.clone(), input, self.sh.now_ns());
        inv.node = Some(self.node.clone());
        self.sh.record(inv);
        let d = match tokio::time::timeout(timeout, fut).await {
            Ok(d) => d,
            Err(_) => workload::failed(
                if matches!(f, "read") { OpType::Fail } else { OpType::Info },
                Value::Null,
                format!("client timeout after {timeout:?}"),
            ),
        };
        let mut done = Op::invoke(self.process, f, key, d.value.clone(), self.sh.now_ns());
        done.kind = d.kind;
        done.error = d.error.clone();
        done.node = Some(self.node.clone());
        self.sh.record(done);
        if d.kind == OpType::Info {
            self.process += self.step;
        }
        d
    }
}

fn hex(id: i64) -> String {
    format!("{id:x}")
}

async fn pause(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

impl Running {
    /// Starts the workload's tasks. For `watch` these are the watchers only: the writers
    /// are the run's ordinary clients.
    pub async fn start(kind: Kind, ctx: &Ctx) -> anyhow::Result<Running> {
        let m = crate::cluster::master(&ctx.ips[0]);
        let now = tokio::time::timeout(Duration::from_secs(30), m.get("jepsen/", GetOptions::default()))
            .await
            .map_err(|_| anyhow::anyhow!("reading the start revision timed out"))??;
        let first_rev = now.header.map_or(0, |h| h.revision) + 1;
        let mut r = Running {
            kind,
            first_rev,
            tasks: vec![],
            followers_stop: tokio::sync::watch::channel(false).0,
            followers: vec![],
            watchers: vec![],
            observers: vec![],
        };
        let n = ctx.ips.len();
        match kind {
            Kind::Watch => {
                for i in 0..n {
                    let log = Arc::new(Mutex::new(WatcherLog {
                        name: format!("watcher-{}", ctx.names[i]),
                        node: ctx.names[i].clone(),
                        ..Default::default()
                    }));
                    r.watchers.push(log.clone());
                    let ips: Vec<String> = (0..n).map(|j| ctx.ips[(i + j) % n].clone()).collect();
                    let (stop, canary) = (r.followers_stop.subscribe(), ctx.canary);
                    r.followers.push(tokio::spawn(watcher(ips, first_rev, canary, stop, log)));
                }
            }
            Kind::Election => {
                for i in 0..n {
                    let log = Arc::new(Mutex::new(ObserverLog {
                        name: format!("observer-{}", ctx.names[i]),
                        node: ctx.names[i].clone(),
                        ..Default::default()
                    }));
                    r.observers.push(log.clone());
                    let (ip, stop) = (ctx.ips[i].clone(), r.followers_stop.subscribe());
                    r.followers.push(tokio::spawn(observer(ip, stop, log)));
                }
            }
            _ => {}
        }
        for w in 0..ctx.concurrency {
            let node = w % n;
            let p = Proc {
                sh: ctx.sh.clone(),
                process: w as u64,
                step: ctx.concurrency as u64,
                node: ctx.names[node].clone(),
            };
            let m = crate::cluster::master(&ctx.ips[node]);
            let rng = Rng::new(ctx.seed.wrapping_mul(7919).wrapping_add(w as u64));
            let stop = ctx.stop.clone();
            match kind {
                Kind::Lock => r.tasks.push(tokio::spawn(lock_client(p, m, rng, stop))),
                Kind::Election => r.tasks.push(tokio::spawn(campaigner(p, m, rng, stop))),
                Kind::Lease => r.tasks.push(tokio::spawn(lease_client(p, m, rng, stop))),
                _ => {}
            }
        }
        Ok(r)
    }

    /// Waits for the clients (the caller has set `stop`), reads the committed history
    /// on `leader_ip`, lets the watchers and observers catch up with it, and stops them.
    pub async fn finish(self, sh: &Shared, leader_ip: Option<&str>) -> Finished {
        for t in self.tasks {
            let _ = t.await;
        }
        let mut last_rev = 0;
        let mut reference = None;
        if let Some(ip) = leader_ip {
            let range = match self.kind {
                Kind::Watch => Some(WATCH_PREFIX),
                Kind::Lock => Some(LOCK_RANGE),
                Kind::Election => Some(ELECTION_RANGE),
                _ => None,
            };
            if self.kind == Kind::Lease {
                // Every lease abandoned before the clients stopped is then due.
                pause(LEASE_TTL_S as u64 * 1_000 + LEASE_BOUND_MS).await;
                final_lease_read(sh, ip).await;
            }
            if let Some(prefix) = range {
                match committed(sh, ip, prefix, self.first_rev, self.kind == Kind::Watch).await {
                    Ok((evs, end)) => {
                        last_rev = end;
                        reference = Some(evs);
                    }
                    Err(e) => eprintln!("jepsen: reading the committed history: {e:#}"),
                }
            }
        }
        // The watchers have until then to reach the end of the history.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while last_rev > 0 && tokio::time::Instant::now() < deadline {
            let behind = self
                .watchers
                .iter()
                .any(|w| w.lock().expect("watcher log").events.last().map_or(0, |e| e.rev) < last_rev);
            if !behind {
                break;
            }
            pause(200).await;
        }
        if self.kind == Kind::Election {
            pause(2_000).await;
        }
        let _ = self.followers_stop.send(true);
        for f in self.followers {
            let _ = f.await;
        }
        Finished {
            kind: self.kind,
            first_rev: self.first_rev,
            last_rev,
            reference,
            watchers: self.watchers.iter().map(|w| w.lock().expect("watcher log").clone()).collect(),
            observers: self.observers.iter().map(|o| o.lock().expect("observer log").clone()).collect(),
        }
    }
}

impl Finished {
    /// Writes what the checkers read besides the history into the report folder.
    pub fn save(&self, dir: &std::path::Path) -> std::io::Result<()> {
        if let Some(r) = &self.reference {
            std::fs::write(dir.join("committed.json"), serde_json::to_vec(r)?)?;
        }
        if !self.watchers.is_empty() {
            std::fs::write(dir.join("watchers.json"), serde_json::to_vec(&self.watchers)?)?;
        }
        if !self.observers.is_empty() {
            std::fs::write(dir.join("observers.json"), serde_json::to_vec(&self.observers)?)?;
        }
        Ok(())
    }

    pub fn check(&self, calls: &[Call], healed_ns: u64) -> CheckResult {
        let reference = self.reference.as_deref();
        match self.kind {
            Kind::Watch => checker::watch::check(calls, reference, self.first_rev, self.last_rev, &self.watchers),
            Kind::Lock => checker::lock::check(calls, reference, &format!("{LOCK_NAME}/"), LOCK_REGISTER),
            Kind::Election => {
                checker::election::check(calls, reference, self.last_rev, &format!("{ELECTION}/"), &self.observers)
            }
            _ => checker::lease::check(calls, healed_ns, LEASE_BOUND_MS * 1_000_000),
        }
    }
}

/// Writes a last key into `prefix` (recorded, for the watch workload's acknowledged
/// writes) and reads every event from `from` up to it with a fresh watch on `ip`.
async fn committed(sh: &Shared, ip: &str, prefix: &str, from: i64, record: bool) -> anyhow::Result<(Vec<Ev>, i64)> {
    let m = crate::cluster::master(ip);
    let key = format!("{prefix}end");
    if record {
        sh.record(Op::invoke(FINAL_PROCESS + 1, "put", Some(key.clone()), json!("end"), sh.now_ns()));
    }
    let put = tokio::time::timeout(Duration::from_secs(30), m.put(key.clone(), "end")).await;
    let end = match put {
        Ok(Ok(r)) => r.header.map_or(0, |h| h.revision),
        Ok(Err(e)) => anyhow::bail!("the closing write failed: {e}"),
        Err(_) => anyhow::bail!("the closing write timed out"),
    };
    if record {
        let mut done = Op::invoke(FINAL_PROCESS + 1, "put", Some(key), json!({ "rev": end }), sh.now_ns());
        done.kind = OpType::Ok;
        sh.record(done);
    }
    let opts = WatchOptions { prefix: true, start_revision: from, prev_kv: true, ..Default::default() };
    let mut ws = m.watch(prefix, opts);
    let mut evs = Vec::new();
    let read = async {
        while evs.last().map_or(0, |e: &Ev| e.rev) < end {
            match ws.next().await? {
                WatchItem::Events(e) => evs.extend(e.iter().filter_map(Ev::from_pb)),
                WatchItem::Progress { .. } => {}
                WatchItem::Compacted { compact_revision } => {
                    anyhow::bail!("the history was compacted up to {compact_revision}")
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .map_err(|_| anyhow::anyhow!("reading the committed history timed out"))??;
    evs.retain(|e| e.rev <= end);
    Ok((evs, end))
}

/// One watcher of the whole prefix with prev_kv, from the run's first revision; it
/// moves to the next master whenever its stream breaks or its master loses the leader.
async fn watcher(
    ips: Vec<String>,
    from: i64,
    canary: bool,
    mut stop: tokio::sync::watch::Receiver<bool>,
    log: Arc<Mutex<WatcherLog>>,
) {
    let endpoints: Vec<String> = ips.iter().map(|ip| format!("{ip}:{}", crate::cluster::PORT)).collect();
    let c = crate::cluster::master(&ips[0]);
    let c = client::Client::with_settings(endpoints, c.tls().clone(), c.settings().clone());
    let opts =
        WatchOptions { prefix: true, start_revision: from, prev_kv: true, require_leader: true, ..Default::default() };
    let mut ws = c.watch(WATCH_PREFIX, opts);
    let mut resumes_seen = 0;
    loop {
        // Not a timeout around next(): connecting to a master may take longer than any
        // short poll, and would then never finish.
        let item = tokio::select! {
            i = ws.next() => i,
            _ = stop.wait_for(|s| *s) => return,
        };
        let mut l = log.lock().expect("watcher log");
        l.resumes = ws.resumes;
        match item {
            Ok(WatchItem::Events(e)) => {
                let mut evs: Vec<Ev> = e.iter().filter_map(Ev::from_pb).collect();
                if canary && ws.resumes > resumes_seen && !evs.is_empty() {
                    evs.remove(0);
                    l.dropped_by_canary += 1;
                }
                resumes_seen = ws.resumes;
                l.events.extend(evs);
            }
            Ok(WatchItem::Progress { .. }) => {}
            Ok(WatchItem::Compacted { compact_revision }) => {
                l.error = Some(format!("compacted at {compact_revision}"));
                return;
            }
            Err(e) => {
                l.error = Some(e.to_string());
                return;
            }
        }
    }
}

/// Observes the election on one master, again after every break.
async fn observer(ip: String, mut stop: tokio::sync::watch::Receiver<bool>, log: Arc<Mutex<ObserverLog>>) {
    let m = crate::cluster::master(&ip);
    loop {
        let opened = tokio::select! {
            o = m.observe(ELECTION.as_bytes()) => o,
            _ = stop.wait_for(|s| *s) => return,
        };
        let mut s = match opened {
            Ok(s) => s,
            Err(_) => {
                log.lock().expect("observer log").restarts += 1;
                pause(200).await;
                continue;
            }
        };
        loop {
            let m = tokio::select! {
                m = s.message() => m,
                _ = stop.wait_for(|s| *s) => return,
            };
            match m {
                Ok(Some(r)) => {
                    let Some(kv) = r.kv else { continue };
                    let mut l = log.lock().expect("observer log");
                    let stream = l.restarts;
                    l.seen.push(Seen {
                        stream,
                        key: String::from_utf8_lossy(&kv.key).into_owned(),
                        create_rev: kv.create_revision,
                        value: String::from_utf8_lossy(&kv.value).into_owned(),
                        rev: r.header.map_or(0, |h| h.revision),
                    });
                }
                _ => {
                    log.lock().expect("observer log").restarts += 1;
                    pause(200).await;
                    break;
                }
            }
        }
    }
}

/// A lease, kept alive in the background (not recorded) until dropped.
struct Session {
    id: i64,
    keeper: Option<JoinHandle<()>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(k) = self.keeper.take() {
            k.abort();
        }
    }
}

/// Grants a lease (recorded); `lazy` ones get no keepalives, so they may run out while
/// their owner waits in line: the case the lock and election canaries get wrong.
async fn session(p: &mut Proc, m: &client::Client, lazy: bool) -> Option<Session> {
    let ttl = if lazy { 2 } else { 3 };
    let mc = m.clone();
    let d = p
        .run("grant", None, json!({ "ttl": ttl, "lazy": lazy }), Duration::from_secs(2), async move {
            match mc.lease_grant(ttl, 0).await {
                Ok((id, t)) => workload::ok(json!({ "id": hex(id), "ttl": t })),
                Err(e) => workload::write_error(Value::Null, e),
            }
        })
        .await;
    if d.kind != OpType::Ok {
        pause(250).await;
        return None;
    }
    let id = i64::from_str_radix(d.value["id"].as_str()?, 16).ok()?;
    let keeper = (!lazy).then(|| {
        let m = m.clone();
        tokio::spawn(async move {
            loop {
                pause(1_000).await;
                if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_secs(1), m.lease_keep_alive_once(id)).await {
                    return;
                }
            }
        })
    });
    Some(Session { id, keeper })
}

/// Take the lock, make two writes to the register fenced by the lock key's create
/// revision, release.
async fn lock_client(mut p: Proc, m: client::Client, mut rng: Rng, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let lazy = rng.below(4) == 0;
        let Some(s) = session(&mut p, &m, lazy).await else { continue };
        let (mc, id) = (m.clone(), s.id);
        let d = p
            .run("acquire", Some(LOCK_NAME.into()), json!({ "lease": hex(id) }), Duration::from_secs(15), async move {
                match mc.lock(LOCK_NAME.as_bytes(), id).await {
                    Ok((key, rev)) => workload::ok(json!({ "key": String::from_utf8_lossy(&key), "rev": rev })),
                    Err(e) => workload::write_error(Value::Null, e),
                }
            })
            .await;
        if d.kind == OpType::Ok {
            let key = d.value["key"].as_str().unwrap_or_default().to_string();
            // The fencing token: the key's create revision, as this holder reads it.
            let read = tokio::time::timeout(Duration::from_secs(1), m.get(key.clone(), GetOptions::default()));
            let token = match read.await {
                Ok(Ok(r)) => r.kvs.first().map(|kv| kv.create_revision),
                _ => None,
            };
            if let Some(token) = token {
                for i in 0..2 {
                    let value = format!("{key}#{i}");
                    let t = fenced_put(&key, token, &value);
                    let mc = m.clone();
                    p.run("write", Some(LOCK_REGISTER.into()), json!(value), Duration::from_secs(1), async move {
                        match mc.txn(t).await {
                            Ok(r) if r.succeeded => workload::ok(json!({ "rev": r.header.map_or(0, |h| h.revision) })),
                            Ok(_) => workload::failed(OpType::Fail, Value::Null, "fence: the lock key is gone".into()),
                            Err(e) => workload::write_error(Value::Null, e),
                        }
                    })
                    .await;
                    pause(rng.below(300)).await;
                }
            }
            let mc = m.clone();
            let k = key.clone();
            p.run("release", Some(key), Value::Null, Duration::from_secs(2), async move {
                match mc.unlock(k.as_bytes()).await {
                    Ok(()) => workload::ok(Value::Null),
                    Err(e) => workload::write_error(Value::Null, e),
                }
            })
            .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), m.lease_revoke(s.id)).await;
        drop(s);
    }
}

fn fenced_put(lock_key: &str, token: i64, value: &str) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: lock_key.as_bytes().to_vec(),
            range_end: vec![],
            target_union: Some(TargetUnion::CreateRevision(token)),
        }],
        success: vec![RequestOp {
            request: Some(ReqOp::RequestPut(PutRequest {
                key: LOCK_REGISTER.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    }
}

/// Campaign, proclaim twice, then resign (or revoke the lease, or for a lazy lease let
/// it run out).
async fn campaigner(mut p: Proc, m: client::Client, mut rng: Rng, stop: Arc<AtomicBool>) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let lazy = rng.below(4) == 0;
        let Some(s) = session(&mut p, &m, lazy).await else { continue };
        let (mc, value) = (m.clone(), format!("p{}-{n}-0", p.process));
        let v = value.clone();
        let mut leader = None;
        let d = p
            .run("campaign", None, json!(value), Duration::from_secs(15), async {
                match mc.campaign(ELECTION.as_bytes(), s.id, v.as_bytes()).await {
                    Ok((l, rev)) => {
                        let out = json!({
                            "key": String::from_utf8_lossy(&l.key),
                            "create_rev": l.rev,
                            "rev": rev,
                            "lease": hex(l.lease),
                        });
                        leader = Some(l);
                        workload::ok(out)
                    }
                    Err(e) => workload::write_error(Value::Null, e),
                }
            })
            .await;
        if let (OpType::Ok, Some(l)) = (d.kind, leader) {
            for i in 1..=2 {
                pause(rng.below(300)).await;
                let value = format!("p{}-{n}-{i}", p.process);
                let (mc, l, v) = (m.clone(), l.clone(), value.clone());
                p.run("proclaim", Some(ELECTION.into()), json!(value), Duration::from_secs(1), async move {
                    match mc.proclaim(l, v.as_bytes()).await {
                        Ok(rev) => workload::ok(json!({ "rev": rev })),
                        Err(e) => workload::write_error(Value::Null, e),
                    }
                })
                .await;
            }
            if !lazy && rng.below(3) > 0 {
                let mc = m.clone();
                p.run("resign", Some(ELECTION.into()), Value::Null, Duration::from_secs(2), async move {
                    match mc.resign(l).await {
                        Ok(()) => workload::ok(Value::Null),
                        Err(e) => workload::write_error(Value::Null, e),
                    }
                })
                .await;
            }
        }
        if !lazy {
            let _ = tokio::time::timeout(Duration::from_secs(1), m.lease_revoke(s.id)).await;
        }
        drop(s);
    }
}

/// A lease with a key on it, renewed every quarter of its TTL and read between; then
/// revoked, or abandoned (one in three) to run out by itself.
async fn lease_client(mut p: Proc, m: client::Client, mut rng: Rng, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let mc = m.clone();
        let d = p
            .run("grant", None, json!({ "ttl": LEASE_TTL_S }), Duration::from_secs(2), async move {
                match mc.lease_grant(LEASE_TTL_S, 0).await {
                    Ok((id, t)) => workload::ok(json!({ "id": hex(id), "ttl": t })),
                    Err(e) => workload::write_error(Value::Null, e),
                }
            })
            .await;
        let Some(id) = d.value["id"].as_str().and_then(|s| i64::from_str_radix(s, 16).ok()) else {
            pause(200).await;
            continue;
        };
        let key = format!("{LEASE_PREFIX}{}", hex(id));
        let put = TxnRequest {
            compare: vec![],
            success: vec![RequestOp {
                request: Some(ReqOp::RequestPut(PutRequest {
                    key: key.clone().into_bytes(),
                    value: b"kept".to_vec(),
                    lease: id,
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        let mc = m.clone();
        let attached = p
            .run("attach", Some(hex(id)), Value::Null, Duration::from_secs(1), async move {
                match mc.txn(put).await {
                    Ok(_) => workload::ok(Value::Null),
                    Err(e) => workload::write_error(Value::Null, e),
                }
            })
            .await
            .kind
            == OpType::Ok;
        let life_ms = rng.range(3_000, 12_000);
        let abandon = rng.below(3) == 0;
        let born = tokio::time::Instant::now();
        let tick = LEASE_TTL_S as u64 * 250;
        let mut ended = false;
        while !stop.load(Ordering::Relaxed) && born.elapsed() < Duration::from_millis(life_ms) {
            pause(tick).await;
            let mc = m.clone();
            let d = p
                .run("keepalive", Some(hex(id)), Value::Null, Duration::from_secs(1), async move {
                    match mc.lease_keep_alive_once(id).await {
                        Ok(ttl) => workload::ok(json!({ "ttl": ttl })),
                        Err(e) => workload::write_error(Value::Null, e),
                    }
                })
                .await;
            if d.kind == OpType::Ok && d.value["ttl"] == 0 {
                ended = true;
                break;
            }
            if attached {
                let (mc, k) = (m.clone(), key.clone());
                let d = p
                    .run("read", Some(hex(id)), Value::Null, Duration::from_secs(1), async move {
                        match mc.get(k, GetOptions::default()).await {
                            Ok(r) => workload::ok(json!({ "present": !r.kvs.is_empty() })),
                            Err(e) => workload::read_error(e),
                        }
                    })
                    .await;
                if d.kind == OpType::Ok && d.value["present"] == false {
                    ended = true;
                    break;
                }
            }
        }
        if ended {
            continue;
        }
        if abandon {
            p.run("abandon", Some(hex(id)), Value::Null, Duration::from_secs(1), async { workload::ok(Value::Null) })
                .await;
        } else {
            let mc = m.clone();
            p.run("revoke", Some(hex(id)), Value::Null, Duration::from_secs(1), async move {
                match mc.lease_revoke(id).await {
                    Ok(()) => workload::ok(Value::Null),
                    Err(e) => workload::write_error(Value::Null, e),
                }
            })
            .await;
        }
    }
}

/// Which lease keys exist after the heal, recorded as a `final-read`.
async fn final_lease_read(sh: &Shared, ip: &str) {
    let m = crate::cluster::master(ip);
    for _ in 0..20 {
        sh.record(Op::invoke(FINAL_PROCESS, "final-read", None, Value::Null, sh.now_ns()));
        let keys = GetOptions { prefix: true, keys_only: true, ..Default::default() };
        let r = tokio::time::timeout(Duration::from_secs(10), m.get(LEASE_PREFIX, keys)).await;
        let mut done = Op::invoke(FINAL_PROCESS, "final-read", None, Value::Null, sh.now_ns());
        match r {
            Ok(Ok(r)) => {
                let ids: Vec<String> = r
                    .kvs
                    .iter()
                    .filter_map(|kv| Some(std::str::from_utf8(&kv.key).ok()?.strip_prefix(LEASE_PREFIX)?.to_string()))
                    .collect();
                done.kind = OpType::Ok;
                done.value = json!({ "present": ids });
                sh.record(done);
                return;
            }
            Ok(Err(e)) => done.error = Some(e.to_string()),
            Err(_) => done.error = Some("timed out".into()),
        }
        done.kind = OpType::Fail;
        sh.record(done);
        pause(500).await;
    }
}
