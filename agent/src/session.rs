//! The agent's side of the registry: register, then hold a heartbeat session with the
//! leader, following it across failovers.
//!
//! The agent keeps the master list the leader pushes. When a session ends (the leader
//! died, stepped down, or stopped acknowledging), it tries the master it was told leads,
//! then every master, every 100–200 ms until one accepts the session. A NOT_FOUND answer
//! means the registry forgot this node: it registers again. A refusal to register
//! (removed, or the id belongs to another node) is final. The same code drives the
//! emulated agents of `cluster bench agents`.

use std::sync::Arc;
use std::time::Duration;

use client::{ClientError, Role};
use proto::clusterpb as pb;
use proto::clusterpb::registry_client::RegistryClient;
use proto::consts::LEADER_ADDR_HEADER;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// What an agent registers as.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node_id: u64,
    pub secret: String,
    pub name: String,
    pub addr: String,
    pub role: Role,
    pub resources: pb::Resources,
    pub labels: std::collections::HashMap<String, String>,
}

/// Gives a channel for a master address (the daemon opens one per master; the bench
/// shares a pool among its emulated agents).
pub type Connect = Arc<dyn Fn(&str) -> Result<Channel, ClientError> + Send + Sync>;

/// Called with the CA record digest the leader sends.
pub type OnCaRecord = Arc<dyn Fn(&str) + Send + Sync>;

/// Called with every master list the leader pushes.
pub type OnMasters = Arc<dyn Fn(&pb::MasterList) + Send + Sync>;

/// Callbacks for the daemon (persist the master list) and the bench (measure reattach).
#[derive(Default, Clone)]
pub struct Hooks {
    pub on_masters: Option<OnMasters>,
    /// Called with the leader's id each time a session opens.
    pub on_attach: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    /// Called with the cluster's CA record digest when the leader sends it (the session
    /// opened, or the CA changed): the node renews its certificate if it came from
    /// another record.
    pub on_ca_record: Option<OnCaRecord>,
    /// Notified when the node's certificate changed: the session ends and reopens on a
    /// new connection, so the leader sees the new certificate.
    pub restart: Option<Arc<tokio::sync::Notify>>,
}

/// Why `run` stopped: only a final refusal stops an agent.
#[derive(Debug, thiserror::Error)]
#[error("registration refused by the cluster: {0}")]
pub struct Refused(pub String);

enum End {
    Reregister,
    Retry,
    Fatal(String),
}

struct Agent {
    id: Identity,
    masters: Vec<String>,
    leader_hint: Option<String>,
    /// The master of a session that died without a word (transport error, no acks): it
    /// is tried last, after masters that can say who leads now.
    suspect: Option<String>,
    /// The leader of the last session, sent when reconnecting (see `prev_leader_id`).
    last_leader_id: u64,
    connect: Connect,
    hooks: Hooks,
}

fn leader_of(s: &Status) -> Option<String> {
    s.metadata().get(LEADER_ADDR_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn jitter_ms(lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rand::random_range(lo..hi))
}

/// Runs the agent until it is refused. `masters` seeds the master list.
pub async fn run(id: Identity, masters: Vec<String>, connect: Connect, hooks: Hooks) -> Result<(), Refused> {
    let mut a = Agent { id, masters, leader_hint: None, suspect: None, last_leader_id: 0, connect, hooks };
    'register: loop {
        match a.register().await {
            Ok(()) => {}
            Err(End::Fatal(m)) => return Err(Refused(m)),
            Err(_) => {
                tokio::time::sleep(jitter_ms(200, 400)).await;
                continue;
            }
        }
        loop {
            match a.session().await {
                End::Reregister => {
                    tokio::time::sleep(jitter_ms(100, 200)).await;
                    continue 'register;
                }
                End::Fatal(m) => return Err(Refused(m)),
                End::Retry => tokio::time::sleep(jitter_ms(100, 200)).await,
            }
        }
    }
}

/// Resolves when `n` is notified; never without one.
async fn restart(n: &Option<Arc<tokio::sync::Notify>>) {
    match n {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

impl Agent {
    fn ca_record(&self, digest: &str) {
        if let (false, Some(f)) = (digest.is_empty(), &self.hooks.on_ca_record) {
            f(digest);
        }
    }

    /// Masters to try: the believed leader first, a master that went silent last.
    fn candidates(&self) -> Vec<String> {
        let mut c: Vec<String> = self.leader_hint.iter().cloned().collect();
        for m in &self.masters {
            if !c.contains(m) && self.suspect.as_ref() != Some(m) {
                c.push(m.clone());
            }
        }
        if let Some(s) = &self.suspect {
            if !c.contains(s) {
                c.push(s.clone());
            }
        }
        c
    }

    fn learn(&mut self, list: &pb::MasterList) {
        if !list.masters.is_empty() {
            self.masters = list.masters.iter().map(|m| m.addr.clone()).collect();
        }
        if !list.leader_addr.is_empty() {
            self.leader_hint = Some(list.leader_addr.clone());
        }
        if list.leader_id != 0 {
            self.last_leader_id = list.leader_id;
        }
        if let Some(f) = &self.hooks.on_masters {
            f(list);
        }
    }

    async fn register(&mut self) -> Result<(), End> {
        let req = pb::RegisterRequest {
            node_id: self.id.node_id,
            node_secret: self.id.secret.clone(),
            name: self.id.name.clone(),
            addr: self.id.addr.clone(),
            role: self.id.role.as_str().into(),
            resources: Some(self.id.resources.clone()),
            labels: self.id.labels.clone(),
        };
        let mut queue = self.candidates();
        let mut i = 0;
        while i < queue.len() && i < 16 {
            let addr = queue[i].clone();
            i += 1;
            let Ok(ch) = (self.connect)(&addr) else { continue };
            let mut client = RegistryClient::new(ch);
            match tokio::time::timeout(Duration::from_secs(10), client.register(req.clone())).await {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    if r.changed {
                        tracing::info!(node = self.id.node_id, via = %addr, "registered with the cluster");
                    }
                    let leader = r.masters.iter().find(|m| m.is_leader);
                    let list = pb::MasterList {
                        leader_id: leader.map(|m| m.node_id).unwrap_or(0),
                        leader_addr: leader.map(|m| m.addr.clone()).unwrap_or_default(),
                        term: 0,
                        masters: r.masters,
                    };
                    self.learn(&list);
                    return Ok(());
                }
                Ok(Err(s)) => match s.code() {
                    Code::Unavailable => {
                        if let Some(l) = leader_of(&s) {
                            if !queue[i..].contains(&l) {
                                queue.insert(i, l);
                            }
                        }
                    }
                    Code::PermissionDenied | Code::FailedPrecondition | Code::InvalidArgument | Code::NotFound => {
                        return Err(End::Fatal(s.message().to_string()))
                    }
                    _ => tracing::debug!(via = %addr, "register failed: {}", s.message()),
                },
                Err(_) => tracing::debug!(via = %addr, "register timed out"),
            }
        }
        Err(End::Retry)
    }

    /// Opens a session with whichever master leads, and heartbeats until it ends.
    async fn session(&mut self) -> End {
        let mut queue = self.candidates();
        let mut i = 0;
        while i < queue.len() && i < 16 {
            let addr = queue[i].clone();
            i += 1;
            let Ok(ch) = (self.connect)(&addr) else { continue };
            let (tx, rx) = mpsc::channel::<pb::HeartbeatRequest>(4);
            let first = pb::HeartbeatRequest {
                node_id: self.id.node_id,
                node_secret: self.id.secret.clone(),
                seq: 1,
                prev_leader_id: self.last_leader_id,
            };
            let _ = tx.try_send(first);
            let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
            let mut client = RegistryClient::new(ch);
            // A follower may hold the call while the masters elect (up to 2 s); a hung
            // master must not hold the agent much longer than that.
            let mut inbound = match tokio::time::timeout(Duration::from_millis(2500), client.heartbeat(outbound)).await
            {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(s)) => match s.code() {
                    Code::Unavailable => {
                        if let Some(l) = leader_of(&s) {
                            if l != addr && !queue[i..].contains(&l) {
                                queue.insert(i, l);
                            }
                        }
                        continue;
                    }
                    Code::NotFound => return End::Reregister,
                    Code::PermissionDenied => return End::Fatal(s.message().to_string()),
                    _ => continue,
                },
                Err(_) => continue,
            };
            // The leader answers the first heartbeat with the master list.
            let first = match tokio::time::timeout(Duration::from_secs(2), inbound.message()).await {
                Ok(Ok(Some(r))) => r,
                Ok(Err(s)) if s.code() == Code::NotFound => return End::Reregister,
                _ => continue,
            };
            if let Some(list) = &first.masters {
                self.learn(list);
            }
            self.ca_record(&first.ca_record_digest);
            self.leader_hint = Some(addr.clone());
            self.suspect = None;
            if let Some(f) = &self.hooks.on_attach {
                f(first.masters.as_ref().map(|m| m.leader_id).unwrap_or(0));
            }
            tracing::info!(node = self.id.node_id, leader = %addr, "heartbeat session open");
            return self.heartbeat(tx, inbound, first.heartbeat_interval_ms.max(10)).await;
        }
        End::Retry
    }

    async fn heartbeat(
        &mut self,
        tx: mpsc::Sender<pb::HeartbeatRequest>,
        mut inbound: tonic::Streaming<pb::HeartbeatResponse>,
        interval_ms: u64,
    ) -> End {
        let mut interval_ms = interval_ms;
        let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
        tick.tick().await;
        let mut seq = 1u64;
        let mut last_ack = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // A leader that stopped answering (partitioned, paused) is left after
                    // three missed acknowledgements.
                    if last_ack.elapsed() > Duration::from_millis(3 * interval_ms) {
                        tracing::info!(node = self.id.node_id, "leader stopped acknowledging heartbeats; reconnecting");
                        self.suspect = self.leader_hint.take();
                        return End::Retry;
                    }
                    seq += 1;
                    let beat = pb::HeartbeatRequest { node_id: self.id.node_id, node_secret: String::new(), seq, prev_leader_id: 0 };
                    if tx.send(beat).await.is_err() {
                        return End::Retry;
                    }
                }
                _ = restart(&self.hooks.restart) => {
                    tracing::info!(node = self.id.node_id, "certificate renewed; reopening the session on a new connection");
                    return End::Retry;
                }
                msg = inbound.message() => match msg {
                    Ok(Some(r)) => {
                        last_ack = Instant::now();
                        if let Some(list) = &r.masters {
                            self.learn(list);
                        }
                        self.ca_record(&r.ca_record_digest);
                        if r.heartbeat_interval_ms >= 10 && r.heartbeat_interval_ms != interval_ms {
                            interval_ms = r.heartbeat_interval_ms;
                            tick = tokio::time::interval(Duration::from_millis(interval_ms));
                        }
                    }
                    Ok(None) => {
                        self.suspect = self.leader_hint.take();
                        return End::Retry;
                    }
                    Err(s) => {
                        tracing::info!(node = self.id.node_id, "heartbeat session ended: {}", s.message());
                        return match s.code() {
                            Code::NotFound => End::Reregister,
                            _ => {
                                let previous = self.leader_hint.take();
                                match leader_of(&s) {
                                    // The master says who leads now.
                                    Some(l) => self.leader_hint = Some(l),
                                    // It said nothing useful (transport error, stepped down).
                                    None => self.suspect = previous,
                                }
                                End::Retry
                            }
                        }
                    }
                }
            }
        }
    }
}
