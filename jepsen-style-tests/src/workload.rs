//! Workloads: what the clients do, how an answer maps to ok/fail/info, and the final
//! reads after the heal.
//!
//! Classification rule: a read that did not answer is a `fail` (it changed nothing). A
//! write whose request may have reached a master is `info` unless the answer proves it
//! had no effect (compare failed, invalid argument, pool exhausted) or the connection was
//! refused before anything was sent.

use crate::history::{Op, OpType};
use client::{ClientError, GetOptions, NetworkSpec};
use proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use proto::etcdserverpb::request_op::Request as ReqOp;
use proto::etcdserverpb::{Compare, PutRequest, RequestOp, TxnRequest};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::Code;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Linearizable read/write/cas registers on a few keys at a time (etcd KV API).
    Register,
    /// Unique adds (etcd puts under a prefix), then one final read.
    Set,
    /// Allocate and release overlay addresses for unique owners.
    Ipam,
    /// Agents on every node (and worker-only agents) heartbeating through the faults;
    /// clients list nodes. Checks that no healthy node is marked unreachable or down.
    Registry,
    /// Writers put and delete under one prefix while a watcher per master records every
    /// event, resuming on another master after each fault. Checks each watcher against
    /// the committed history.
    Watch,
    /// Clients take a lock (a lease each, some never renewed), make writes fenced by the
    /// lock's token, release. Checks grants and the fenced writes.
    Lock,
    /// Clients keep leases alive (and abandon some). Checks that none ends early and the
    /// abandoned ones end.
    Lease,
    /// Clients campaign, proclaim and resign while an observer per master watches.
    /// Checks leaders and observers against the committed history.
    Election,
    /// Clients scale three services up and down and list tasks while masters and agents
    /// are killed and partitioned. Checks after the heal that every service runs exactly
    /// its instance count, that no task runs twice, and that no IP is held twice.
    Tasks,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Register => "register",
            Kind::Set => "set",
            Kind::Ipam => "ipam",
            Kind::Registry => "registry",
            Kind::Watch => "watch",
            Kind::Lock => "lock",
            Kind::Lease => "lease",
            Kind::Election => "election",
            Kind::Tasks => "tasks",
        }
    }
    /// The operation types that must each succeed in the liveness phase.
    pub fn live_fs(self) -> &'static [&'static str] {
        match self {
            Kind::Register => &["read", "write", "cas"],
            Kind::Set => &["add"],
            Kind::Ipam => &["allocate", "release"],
            Kind::Registry => &["nodes"],
            Kind::Watch => &["put"],
            Kind::Lock => &["acquire"],
            Kind::Lease => &["keepalive"],
            Kind::Election => &["campaign"],
            Kind::Tasks => &["scale", "tasks"],
        }
    }

    /// Whether the workload's clients are its own (see [`crate::coordination`]) rather
    /// than the generic ones below.
    pub fn own_clients(self) -> bool {
        matches!(self, Kind::Lock | Kind::Lease | Kind::Election)
    }

    /// Flags every node of this workload's cluster gets.
    pub fn cluster_flags(self) -> &'static [&'static str] {
        match self {
            // Agents are declared down 5 s after their last heartbeat (not 15 s), so most
            // faults of 5-15 s get their tasks replaced, and the replaced copies must be
            // killed when the agent comes back.
            Kind::Tasks => {
                &["--agent-heartbeat-interval-ms", "500", "--unreachable-after-ms", "2500", "--down-after-ms", "2500"]
            }
            _ => &[],
        }
    }

    /// The node flag that turns on this workload's canary, if the canary is in the nodes
    /// (the watch canary is in the client; the tasks canary is in the agents).
    pub fn canary_flag(self) -> Option<&'static str> {
        match self {
            Kind::Register | Kind::Set | Kind::Ipam | Kind::Registry => Some("--canary-unsafe-local-reads"),
            Kind::Tasks => Some("--canary-keep-replaced-tasks"),
            Kind::Lock | Kind::Election => Some("--canary-lock-skip-reread"),
            Kind::Lease => Some("--canary-lease-skip-checkpoint"),
            Kind::Watch => None,
        }
    }
}

pub const NETWORK: &str = "jepsen";
pub const SET_PREFIX: &str = "jepsen/set/";

/// Shared by all clients of a run.
pub struct Shared {
    pub kind: Kind,
    pub start: Instant,
    pub ops: Mutex<Vec<Op>>,
    counter: AtomicU64,
    pub ops_per_key: u64,
    pub keys_at_once: u64,
    pub timeout: Duration,
}

impl Shared {
    pub fn new(kind: Kind, ops_per_key: u64, timeout: Duration) -> Shared {
        Shared {
            kind,
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
            ops_per_key,
            keys_at_once: 3,
            timeout,
        }
    }
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    pub fn record(&self, op: Op) {
        self.ops.lock().expect("history").push(op);
    }
}

/// One client: a process id (replaced after an info), the node it talks to, its own
/// generator state.
pub struct Client {
    pub process: u64,
    pub node: String,
    master: client::Client,
    rng: crate::schedule::Rng,
    /// IPAM owners this client holds and may release.
    held: Vec<String>,
}

pub struct Done {
    pub kind: OpType,
    pub value: Value,
    pub error: Option<String>,
}

pub(crate) fn ok(value: Value) -> Done {
    Done { kind: OpType::Ok, value, error: None }
}

/// The status exactly as the master or the transport gave it, which the rules below read
/// (a client pinned to one master adds nothing to it).
fn raw(e: ClientError) -> tonic::Status {
    match e.status() {
        Some(s) => s.clone(),
        None => tonic::Status::new(e.code(), e.message()),
    }
}

pub(crate) fn read_error(e: ClientError) -> Done {
    let s = raw(e);
    failed(OpType::Fail, Value::Null, format!("{:?}: {}", s.code(), s.message()))
}

/// Whether the request certainly never reached a server.
fn never_sent(s: &tonic::Status) -> bool {
    let mut text = s.message().to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(s);
    while let Some(e) = src {
        text.push_str(&e.to_string());
        src = e.source();
    }
    s.code() == Code::Unavailable && (text.contains("Connection refused") || text.contains("tcp connect error"))
}

pub(crate) fn failed(kind: OpType, value: Value, e: String) -> Done {
    Done { kind, value, error: Some(e) }
}

/// The outcome of a write that returned an error.
pub(crate) fn write_error(value: Value, e: ClientError) -> Done {
    let s = raw(e);
    let definite = never_sent(&s)
        || matches!(
            s.code(),
            Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::ResourceExhausted
                | Code::NotFound
                | Code::AlreadyExists
        );
    let e = format!("{:?}: {}", s.code(), s.message());
    failed(if definite { OpType::Fail } else { OpType::Info }, value, e)
}

impl Client {
    pub fn new(process: u64, node: String, ip: &str, seed: u64) -> Client {
        Client { process, node, master: crate::cluster::master(ip), rng: crate::schedule::Rng::new(seed), held: vec![] }
    }

    /// Picks the next operation: (f, key, value).
    pub fn generate(&mut self, sh: &Shared) -> (String, Option<String>, Value) {
        let n = sh.counter.fetch_add(1, Ordering::Relaxed);
        match sh.kind {
            Kind::Register => {
                // A few keys live at once; each gets about ops_per_key operations so the
                // per-key search stays small (the search is fast at about 200-2,000 per key).
                let group = n / (sh.ops_per_key * sh.keys_at_once);
                let key = format!("jepsen/r/{}", group * sh.keys_at_once + self.rng.below(sh.keys_at_once));
                let r = self.rng.below(10);
                if r < 4 {
                    ("read".into(), Some(key), Value::Null)
                } else if r < 7 {
                    ("write".into(), Some(key), json!(self.rng.below(5)))
                } else {
                    ("cas".into(), Some(key), json!([self.rng.below(5), self.rng.below(5)]))
                }
            }
            Kind::Set => ("add".into(), Some("set".into()), json!(n)),
            Kind::Ipam => {
                if !self.held.is_empty() && self.rng.below(10) < 3 {
                    let i = self.rng.below(self.held.len() as u64) as usize;
                    let owner = self.held.swap_remove(i);
                    ("release".into(), Some(owner), Value::Null)
                } else {
                    ("allocate".into(), Some(format!("o{n}")), Value::Null)
                }
            }
            Kind::Registry => ("nodes".into(), None, Value::Null),
            Kind::Watch => {
                let key = format!("{}{}", crate::coordination::WATCH_PREFIX, self.rng.below(8));
                if self.rng.below(10) == 0 {
                    ("delete".into(), Some(key), Value::Null)
                } else {
                    ("put".into(), Some(key), json!(n))
                }
            }
            Kind::Tasks => {
                // One op in ten scales, to 1..=MAX: scale-downs kill the youngest tasks, so
                // the oldest live long enough to be on an agent when it fails, and to be
                // replaced.
                if self.rng.below(10) != 0 {
                    ("tasks".into(), None, Value::Null)
                } else {
                    let s = crate::tasks::SERVICES[self.rng.below(crate::tasks::SERVICES.len() as u64) as usize];
                    ("scale".into(), Some(s.into()), json!(1 + self.rng.below(crate::tasks::MAX)))
                }
            }
            Kind::Lock | Kind::Lease | Kind::Election => ("none".into(), None, Value::Null),
        }
    }

    pub async fn invoke(&mut self, sh: &Shared, f: &str, key: Option<&str>, value: &Value) -> Done {
        let fut = self.call(f, key, value);
        match tokio::time::timeout(sh.timeout, fut).await {
            Ok(d) => d,
            Err(_) => {
                let kind = if matches!(f, "read" | "nodes" | "tasks") { OpType::Fail } else { OpType::Info };
                failed(kind, value.clone(), format!("client timeout after {:?}", sh.timeout))
            }
        }
    }

    async fn call(&mut self, f: &str, key: Option<&str>, value: &Value) -> Done {
        let key = key.unwrap_or("").to_string();
        let m = &self.master;
        match f {
            "read" => match m.get(key, GetOptions::default()).await {
                Ok(r) => {
                    let v = r.kvs.first().and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse::<i64>().ok());
                    ok(v.map_or(Value::Null, |v| json!(v)))
                }
                Err(e) => read_error(e),
            },
            "write" => {
                let v = value.as_i64().unwrap_or_default();
                match m.put(key, v.to_string()).await {
                    Ok(_) => ok(value.clone()),
                    Err(e) => write_error(value.clone(), e),
                }
            }
            "cas" => {
                let old = value[0].as_i64().unwrap_or_default();
                let new = value[1].as_i64().unwrap_or_default();
                let t = TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Value as i32,
                        key: key.clone().into_bytes(),
                        range_end: vec![],
                        target_union: Some(TargetUnion::Value(old.to_string().into_bytes())),
                    }],
                    success: vec![RequestOp {
                        request: Some(ReqOp::RequestPut(PutRequest {
                            key: key.into_bytes(),
                            value: new.to_string().into_bytes(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![],
                };
                match m.txn(t).await {
                    Ok(r) if r.succeeded => ok(value.clone()),
                    Ok(_) => failed(OpType::Fail, value.clone(), "compare failed".into()),
                    Err(e) => write_error(value.clone(), e),
                }
            }
            "add" => {
                let n = value.as_i64().unwrap_or_default();
                match m.put(format!("{SET_PREFIX}{n:012}"), n.to_string()).await {
                    Ok(_) => ok(value.clone()),
                    Err(e) => write_error(value.clone(), e),
                }
            }
            "allocate" => match m.allocate(NETWORK, &key, None, None).await {
                Ok(r) => {
                    self.held.push(key);
                    ok(json!(r.address))
                }
                Err(e) => write_error(Value::Null, e),
            },
            // Nothing released is recorded as "", as the wire says it.
            "release" => match m.release(NETWORK, Some(&key), None).await {
                Ok(released) => ok(json!(released.unwrap_or_default())),
                Err(e) => write_error(Value::Null, e),
            },
            // The watch workload's writes answer with their revision, which its checker
            // finds in the committed history.
            "put" => match m.put(key, value.to_string()).await {
                Ok(r) => ok(json!({ "rev": r.header.map_or(0, |h| h.revision) })),
                Err(e) => write_error(Value::Null, e),
            },
            "delete" => match m.delete(key, false).await {
                Ok(r) => ok(json!({ "rev": r.header.map_or(0, |h| h.revision), "deleted": r.deleted })),
                Err(e) => write_error(Value::Null, e),
            },
            // Forced: a scale replaces a deployment still under way, as an operator's would.
            "scale" => match m.scale_service(&key, value.as_u64().unwrap_or_default() as u32, true).await {
                Ok(_) => ok(value.clone()),
                Err(e) => write_error(value.clone(), e),
            },
            "tasks" => match m.list_tasks("", 0, false).await {
                Ok(ts) => ok(Value::Array(
                    ts.into_iter().map(|t| crate::checker::tasks::row_json(&crate::tasks::row(t))).collect(),
                )),
                Err(e) => read_error(e),
            },
            "nodes" => match m.nodes().await {
                Ok(r) => ok(json!(r.nodes.len())),
                Err(e) => read_error(e),
            },
            other => failed(OpType::Fail, Value::Null, format!("unknown operation {other}")),
        }
    }
}

/// Per-workload setup once the cluster is up.
pub async fn setup(kind: Kind, leader_ip: &str) -> anyhow::Result<()> {
    if kind == Kind::Ipam {
        let spec = NetworkSpec {
            name: NETWORK.into(),
            subnets: vec!["10.200.0.0/16".into()],
            // Short quarantine so released addresses are handed out again within a run.
            quarantine_ms: Some(2_000),
            ..Default::default()
        };
        let master = crate::cluster::master(leader_ip);
        let create = master.create_network(spec);
        tokio::time::timeout(Duration::from_secs(30), create)
            .await
            .map_err(|_| anyhow::anyhow!("creating the test network timed out"))??;
    }
    Ok(())
}

/// The final read after the heal, recorded into the history as a `read` by its own
/// process. Only for set and ipam; retried until it answers.
pub async fn final_read(sh: &Shared, kind: Kind, leader_ip: &str, process: u64) -> anyhow::Result<()> {
    let f = "read";
    let key = match kind {
        Kind::Set => "set",
        Kind::Ipam => NETWORK,
        _ => return Ok(()),
    };
    for _ in 0..20 {
        sh.record(Op::invoke(process, f, Some(key.into()), Value::Null, sh.now_ns()));
        let master = crate::cluster::master(leader_ip);
        let read = async {
            match kind {
                Kind::Set => {
                    let keys = GetOptions { prefix: true, keys_only: true, ..Default::default() };
                    master
                        .get(SET_PREFIX, keys)
                        .await
                        .map(|r| {
                            let v: Vec<i64> = r
                                .kvs
                                .iter()
                                .filter_map(|kv| {
                                    std::str::from_utf8(&kv.key).ok()?.strip_prefix(SET_PREFIX)?.parse().ok()
                                })
                                .collect();
                            json!(v)
                        })
                        .map_err(|e| raw(e).message().to_string())
                }
                _ => {
                    // InspectNetwork answers from the contacted master's applied state. A
                    // linearizable etcd read on the same master first waits until it has
                    // applied everything committed (ReadIndex), so the inspect sees it all.
                    master
                        .get("jepsen/barrier", GetOptions::default())
                        .await
                        .map_err(|e| format!("read barrier: {}", raw(e).message()))?;
                    let r =
                        master.inspect_network(NETWORK, 1_000_000).await.map_err(|e| raw(e).message().to_string())?;
                    if r.truncated {
                        return Err("inspect truncated".into());
                    }
                    let m: serde_json::Map<String, Value> =
                        r.allocations.into_iter().map(|a| (a.owner, json!(a.address))).collect();
                    Ok(Value::Object(m))
                }
            }
        };
        let res: Result<Value, String> = match tokio::time::timeout(Duration::from_secs(30), read).await {
            Ok(r) => r,
            Err(_) => Err("final read timed out after 30 s".into()),
        };
        match res {
            Ok(v) => {
                sh.record(Op {
                    kind: OpType::Ok,
                    value: v,
                    ..Op::invoke(process, f, Some(key.into()), Value::Null, sh.now_ns())
                });
                return Ok(());
            }
            Err(e) => {
                sh.record(Op {
                    kind: OpType::Fail,
                    error: Some(e),
                    ..Op::invoke(process, f, Some(key.into()), Value::Null, sh.now_ns())
                });
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    anyhow::bail!("the final read never succeeded")
}

/// Registry events as committed (read from the leader after the heal).
pub async fn registry_events(leader_ip: &str) -> anyhow::Result<Vec<proto::clusterpb::RegistryEvent>> {
    let master = crate::cluster::master(leader_ip);
    let read = master.events_until_now(1);
    let events = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .map_err(|_| anyhow::anyhow!("registry watch timed out"))??;
    Ok(events)
}

/// Node names by registry id, for messages.
pub fn names(events: &[proto::clusterpb::RegistryEvent]) -> BTreeMap<u64, String> {
    events.iter().filter_map(|e| Some((e.node_id, e.node.as_ref()?.name.clone()))).collect()
}
