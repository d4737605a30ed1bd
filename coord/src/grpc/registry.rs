//! The registry service: registration, the heartbeat session, node listing and
//! operations, and the registry event stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use proto::clusterpb as pb;
use proto::clusterpb::registry_client::RegistryClient;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, instrument};

use super::quota::StreamKind;
use super::{authz, channel_stream, leader_view, on_leader, unexpected, BoxStream};
use crate::command::{Command, Output};
use crate::error::CoordError;
use crate::node::{CoordNode, MastersView};
use crate::registry::{
    Availability, Event, EventKind, NodeRecord, NodeResources, Registration, RegistryCommand, RegistryError,
    RegistryOutput, Role,
};

/// How long a new session may take to send its first heartbeat.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Events copied per read of the state during a watch replay.
const WATCH_BATCH: usize = 1024;
/// How long a follower holds a reconnecting agent while the masters elect a leader.
const LEADER_WAIT: Duration = Duration::from_secs(2);

pub struct RegistryService {
    node: Arc<CoordNode>,
}

pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn resources_from_pb(r: Option<pb::Resources>) -> Result<NodeResources, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("resources missing"))?;
    let mut ports = Vec::with_capacity(r.ports.len());
    for p in r.ports {
        let (Ok(b), Ok(e)) = (u16::try_from(p.begin), u16::try_from(p.end)) else {
            return Err(Status::invalid_argument(format!("port range {}-{} is outside 1-65535", p.begin, p.end)));
        };
        ports.push((b, e));
    }
    Ok(NodeResources { cpus_milli: r.cpus_milli, memory_mb: r.memory_mb, disk_mb: r.disk_mb, ports })
}

pub fn resources_to_pb(r: &NodeResources) -> pb::Resources {
    pb::Resources {
        cpus_milli: r.cpus_milli,
        memory_mb: r.memory_mb,
        disk_mb: r.disk_mb,
        ports: r.ports.iter().map(|&(b, e)| pb::PortRange { begin: b as u32, end: e as u32 }).collect(),
    }
}

fn bad(e: RegistryError) -> Status {
    CoordError::Apply(e.into()).into()
}

impl RegistryService {
    pub fn new(node: Arc<CoordNode>) -> Self {
        RegistryService { node }
    }

    async fn write(&self, cmd: RegistryCommand) -> Result<RegistryOutput, Status> {
        match self.node.write(Command::Registry(cmd)).await?.output {
            Output::Registry(o) => Ok(o),
            o => Err(unexpected(o)),
        }
    }

    fn masters(&self) -> pb::MasterList {
        let v = self.node.masters();
        let leader = v.leader.unwrap_or(0);
        let masters: Vec<pb::Master> = v
            .nodes
            .into_iter()
            .map(|m| pb::Master { node_id: m.id, is_leader: m.id == leader, name: m.name, addr: m.addr })
            .collect();
        let leader_addr = masters.iter().find(|x| x.is_leader).map(|x| x.addr.clone()).unwrap_or_default();
        pb::MasterList { leader_id: leader, leader_addr, term: self.node.current_term(), masters }
    }

    fn node_info(&self, n: &NodeRecord, leader_view: bool, masters: &MastersView) -> pb::NodeInfo {
        let raft_role = match masters.get(n.node_id) {
            Some(m) if m.voter => "voter",
            Some(_) => "learner",
            None => "",
        };
        let view = if leader_view { self.node.liveness.view(n.node_id, tokio::time::Instant::now()) } else { None };
        let cert = match leader_view {
            true => self.node.session_certs.lock().expect("session certs").get(&n.node_id).cloned(),
            false => None,
        };
        pb::NodeInfo {
            node_id: n.node_id,
            name: n.name.clone(),
            addr: n.addr.clone(),
            role: n.role.as_str().into(),
            state: n.state.as_str().into(),
            availability: n.availability.as_str().into(),
            resources: Some(resources_to_pb(&n.resources)),
            labels: n.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            registered_at_ms: n.registered_at_ms,
            state_since_ms: n.state_since_ms,
            last_heartbeat_age_ms: view.map(|v| v.last_heartbeat_age.as_millis() as u64),
            connected_to: view.filter(|v| v.connected).map(|_| self.node.id),
            raft_role: raft_role.into(),
            is_leader: masters.leader == Some(n.node_id),
            cert_issuer: cert.as_ref().map(|c| c.0.clone()).unwrap_or_default(),
            cert_not_after: cert.map(|c| c.1).unwrap_or_default(),
        }
    }

    fn local_nodes(&self, only: u64) -> Result<pb::NodesResponse, Status> {
        let masters = self.node.masters();
        let leader_view = masters.state == ServerState::Leader;
        let records: Vec<NodeRecord> = self
            .node
            .view(|v| v.registry().nodes.values().filter(|n| only == 0 || n.node_id == only).cloned().collect());
        let mut out: BTreeMap<u64, pb::NodeInfo> =
            records.iter().map(|n| (n.node_id, self.node_info(n, leader_view, &masters))).collect();
        // Masters without an agent (--no-worker) are listed too.
        for m in &masters.nodes {
            if out.contains_key(&m.id) || (only != 0 && m.id != only) {
                continue;
            }
            out.insert(
                m.id,
                pb::NodeInfo {
                    node_id: m.id,
                    name: m.name.clone(),
                    addr: m.addr.clone(),
                    role: "manager".into(),
                    state: "no-agent".into(),
                    raft_role: if m.voter { "voter" } else { "learner" }.into(),
                    is_leader: masters.leader == Some(m.id),
                    ..Default::default()
                },
            );
        }
        if only != 0 && out.is_empty() {
            return Err(Status::not_found(format!("node {only} is neither a master nor a registered agent")));
        }
        Ok(pb::NodesResponse {
            nodes: out.into_values().collect(),
            from_leader: leader_view,
            leader_id: masters.leader.unwrap_or(0),
            term: self.node.current_term(),
        })
    }

    fn event_pb(&self, e: &Event) -> pb::RegistryEvent {
        let node = self.node.view(|v| v.registry().nodes.get(&e.node_id).cloned());
        let (from_state, to_state, reason) = match &e.kind {
            EventKind::State { from, to, reason } => {
                (from.as_str().to_string(), to.as_str().to_string(), reason.clone())
            }
            EventKind::StaleTaskKilled { task, reason } => {
                (String::new(), String::new(), format!("task {task}: {reason}"))
            }
            _ => Default::default(),
        };
        pb::RegistryEvent {
            index: e.index,
            time_ms: e.time_ms,
            node_id: e.node_id,
            kind: e.kind.name().into(),
            from_state,
            to_state,
            node: node.map(|n| self.node_info(&n, false, &self.node.masters())),
            reason,
        }
    }

    /// Events with index >= `from`, or OUT_OF_RANGE if some of them were discarded.
    fn events_from(&self, from: u64) -> Result<Vec<Event>, Status> {
        self.node.view(|v| {
            let reg = v.registry();
            let first = reg.first_retained_index();
            if from < first && from <= reg.last_event_index() {
                return Err(Status::out_of_range(format!(
                    "registry events before {first} were discarded; watch from {first} or from 0 for the current nodes"
                )));
            }
            // Retained events are contiguous: skip straight to `from`, copy at most a
            // batch (the state lock is held meanwhile).
            let skip = from.saturating_sub(first) as usize;
            Ok(reg.events.iter().skip(skip).take(WATCH_BATCH).cloned().collect())
        })
    }

    /// Returns when this node leads; answers NOT_LEADER with the leader's address when
    /// another node leads. While the leader is unknown, or is still the one the agent
    /// lost (`prev_leader`), waits for the election (up to `LEADER_WAIT`), so that agents
    /// reconnecting after a leader died do not poll the masters.
    async fn await_leader(&self, prev_leader: u64) -> Result<(), Status> {
        use openraft::async_runtime::watch::WatchReceiver;
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        let mut server = self.node.raft.server_metrics();
        loop {
            let (state, leader) = {
                let m = server.borrow_watched();
                (m.state, m.current_leader)
            };
            if state == ServerState::Leader {
                return Ok(());
            }
            let settled = matches!(leader, Some(l) if l != prev_leader || prev_leader == 0);
            if settled || tokio::time::Instant::now() >= deadline {
                return Err(match self.node.leader() {
                    (Some(id), addr) if id != self.node.id => {
                        CoordError::NotLeader { leader_id: Some(id), leader_addr: addr }
                    }
                    _ => CoordError::Unavailable("no leader: the cluster is electing or has lost quorum".into()),
                }
                .into());
            }
            if tokio::time::timeout_at(deadline, server.changed()).await.is_ok_and(|r| r.is_err()) {
                return Err(Status::unavailable("node shutting down"));
            }
        }
    }

    /// Checks the first message of a heartbeat session: a registered node and its secret.
    fn check_session(&self, first: &pb::HeartbeatRequest) -> Result<(), Status> {
        self.node.view(|v| Self::check_session_in(v.registry(), first))
    }

    fn check_session_in(reg: &crate::registry::Registry, first: &pb::HeartbeatRequest) -> Result<(), Status> {
        let id = first.node_id;
        if reg.removed.contains(&id) {
            return Err(Status::not_found(format!(
                "node {id} was removed from the cluster; register again (which fails: join again with a token)"
            )));
        }
        match reg.nodes.get(&id) {
            None => Err(Status::not_found(format!("node {id} is not registered; register again"))),
            Some(n) if n.secret_hash != secret_hash(&first.node_secret) => Err(Status::permission_denied(format!(
                "node {id} is registered by another node (the node secret differs)"
            ))),
            Some(_) => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl pb::registry_server::Registry for RegistryService {
    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = req.get_ref();
        let who = authz::caller(&req);
        authz::acts_as(who, r.node_id)?;
        if r.node_secret.is_empty() {
            return Err(Status::invalid_argument("node_secret is required"));
        }
        let reg = Registration {
            node_id: r.node_id,
            secret_hash: secret_hash(&r.node_secret),
            name: r.name.clone(),
            addr: r.addr.clone(),
            role: Role::parse(&r.role).map_err(bad)?,
            resources: resources_from_pb(r.resources.clone())?,
            labels: r.labels.clone().into_iter().collect(),
        };
        reg.validate().map_err(bad)?;
        // A worker's certificate registers a worker; only a master's registers a master.
        if who.is_some_and(|w| w.role != pki::CertRole::Manager) && reg.role != Role::Worker {
            return Err(Status::permission_denied("a worker certificate registers a worker, not a master"));
        }
        on_leader(
            &self.node,
            req,
            async |_| {
                self.node.ensure_leader().await?;
                if !self.node.view(|v| v.cluster().is_initialized()) {
                    return Err(Status::unavailable(
                        "the cluster has not recorded its identity yet; retry in a moment",
                    ));
                }
                // An unchanged registration (an agent restarting) writes nothing.
                let unchanged = self.node.view(|v| {
                    let reg_state = v.registry();
                    reg_state.is_unchanged(&reg).then(|| reg_state.nodes[&reg.node_id].clone())
                });
                let (record, changed) = match unchanged {
                    Some(n) => (n, false),
                    None => match self.write(RegistryCommand::Register(reg)).await? {
                        RegistryOutput::Node(n) => (*n, true),
                        o => return Err(Status::internal(format!("unexpected registry output {o:?}"))),
                    },
                };
                if changed {
                    info!(node = record.node_id, name = %record.name, "agent registered");
                }
                Ok(pb::RegisterResponse {
                    node: Some(self.node_info(&record, true, &self.node.masters())),
                    changed,
                    masters: self.masters().masters,
                })
            },
            async |ch, r| RegistryClient::new(ch).register(r).await,
        )
        .await
    }

    type HeartbeatStream = BoxStream<pb::HeartbeatResponse>;

    async fn heartbeat(
        &self,
        req: Request<Streaming<pb::HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        let who = authz::caller(&req).cloned();
        let mut inbound = req.into_inner();
        let first = match tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => return Err(Status::invalid_argument("heartbeat stream closed before its first message")),
            Ok(Err(s)) => return Err(s),
            Err(_) => return Err(Status::deadline_exceeded("no first heartbeat within 5 s")),
        };
        // Within a session the id cannot change (checked per message below).
        authz::acts_as(who.as_ref(), first.node_id)?;
        let slot = self.node.streams.acquire(StreamKind::Heartbeat, who.as_ref())?;
        // What the node itself presents (not a master forwarding for it): shown by
        // `cluster node ls`, and what `cluster ca rotate` waits on.
        if let Some(w) = who.as_ref().filter(|w| w.node_id == Some(first.node_id)) {
            self.node
                .session_certs
                .lock()
                .expect("session certs")
                .insert(first.node_id, (w.issuer.clone(), w.not_after_unix));
        }
        // Sessions are held by the leader only: agents must follow it.
        self.await_leader(first.prev_leader_id).await?;
        self.check_session(&first)?;
        let id = first.node_id;
        let sid = self.node.liveness.open_session(id, tokio::time::Instant::now());
        debug!(agent = id, session = sid, "heartbeat session opened");
        let interval_ms = self.node.config.agent_heartbeat_interval_ms;
        let (tx, rx) = mpsc::channel(16);
        let mut masters = self.masters();
        let mut ca_record = self.node.ca_record_digest();
        let _ = tx
            .send(Ok(pb::HeartbeatResponse {
                ack_seq: first.seq,
                masters: Some(masters.clone()),
                heartbeat_interval_ms: interval_ms,
                ca_record_digest: ca_record.clone(),
            }))
            .await;
        let node = self.node.clone();
        let svc = RegistryService::new(node.clone());
        // The session belongs to this leadership (term) only. Subscribed before the check
        // below, so a loss of leadership after `await_leader` is not missed.
        let term = self.node.current_term();
        let mut server = self.node.raft.server_metrics();
        let idle = Duration::from_millis(self.node.config.unreachable_after_ms);
        tokio::spawn(async move {
            let _slot = slot;
            use openraft::async_runtime::watch::WatchReceiver;
            let leads = |node: &CoordNode| node.is_leader() && node.current_term() == term;
            let not_leader = |node: &CoordNode| -> Status {
                let (leader_id, leader_addr) = node.leader();
                match leader_id {
                    Some(l) if l != node.id => CoordError::NotLeader { leader_id, leader_addr }.into(),
                    _ => Status::unavailable("this master no longer leads; reconnect"),
                }
            };
            if !leads(&node) {
                let _ = tx.send(Err(not_leader(&node))).await;
            }
            while leads(&node) {
                tokio::select! {
                    msg = tokio::time::timeout(idle, inbound.message()) => {
                        let m = match msg {
                            Ok(Ok(Some(m))) => m,
                            Err(_) => {
                                let _ = tx.send(Err(Status::deadline_exceeded("no heartbeat within unreachable_after_ms; session closed"))).await;
                                break;
                            }
                            _ => break,
                        };
                        if m.node_id != id {
                            let _ = tx.send(Err(Status::invalid_argument("node_id changed within a session"))).await;
                            break;
                        }
                        // The session outlives the certificate it opened with.
                        if let Some(Err(s)) = who.as_ref().map(|w| authz::still_stands(&node, w)) {
                            let _ = tx.send(Err(s)).await;
                            break;
                        }
                        if !node.view(|v| v.registry().nodes.contains_key(&id)) {
                            let _ = tx.send(Err(Status::not_found(format!("node {id} is no longer registered; register again")))).await;
                            break;
                        }
                        // A leader cut off from the other masters may already be replaced;
                        // acknowledging would keep agents away from the new leader.
                        if !node.quorum_contact() {
                            let _ = tx.send(Err(Status::unavailable("this leader lost contact with a quorum of masters; reconnect"))).await;
                            break;
                        }
                        node.liveness.beat(id, sid, tokio::time::Instant::now());
                        // Applies do not wake this loop: a CA change rides on the next ack.
                        let ca_now = node.view(|v| (v.ca_digest() != ca_record).then(|| v.ca_digest().to_string()));
                        if let Some(d) = &ca_now {
                            ca_record = d.clone();
                        }
                        let ack = pb::HeartbeatResponse {
                            ack_seq: m.seq,
                            masters: None,
                            heartbeat_interval_ms: interval_ms,
                            ca_record_digest: ca_now.unwrap_or_default(),
                        };
                        if tx.send(Ok(ack)).await.is_err() {
                            break;
                        }
                    }
                    changed = server.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        if !leads(&node) {
                            let _ = tx.send(Err(not_leader(&node))).await;
                            break;
                        }
                        let now = svc.masters();
                        if now.masters != masters.masters || now.leader_id != masters.leader_id {
                            masters = now;
                            let push = pb::HeartbeatResponse {
                                ack_seq: 0,
                                masters: Some(masters.clone()),
                                heartbeat_interval_ms: interval_ms,
                                ca_record_digest: String::new(),
                            };
                            if tx.send(Ok(push)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
            node.liveness.close_session(id, sid);
            debug!(agent = id, session = sid, "heartbeat session closed");
        });
        Ok(Response::new(channel_stream(rx)))
    }

    async fn nodes(&self, req: Request<pb::NodesRequest>) -> Result<Response<pb::NodesResponse>, Status> {
        // Heartbeat ages and sessions are known to the leader only.
        leader_view(
            &self.node,
            req,
            |r| self.local_nodes(r.node_id),
            async |ch, r| RegistryClient::new(ch).nodes(r).await,
        )
        .await
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn set_availability(
        &self,
        req: Request<pb::SetAvailabilityRequest>,
    ) -> Result<Response<pb::NodeInfo>, Status> {
        let availability = Availability::parse(&req.get_ref().availability).map_err(bad)?;
        on_leader(
            &self.node,
            req,
            async |r| match self.write(RegistryCommand::SetAvailability { node_id: r.node_id, availability }).await? {
                RegistryOutput::Node(n) => Ok(self.node_info(&n, true, &self.node.masters())),
                o => Err(Status::internal(format!("unexpected registry output {o:?}"))),
            },
            async |ch, r| RegistryClient::new(ch).set_availability(r).await,
        )
        .await
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let id = req.get_ref().node_id;
        if self.node.masters().get(id).is_some() {
            return Err(Status::failed_precondition(format!(
                "node {id} is a master; remove it from the Raft group first with `cluster leave {id}`"
            )));
        }
        on_leader(
            &self.node,
            req,
            async |r| {
                self.write(RegistryCommand::Remove { node_id: r.node_id, force: r.force }).await?;
                info!(removed = r.node_id, force = r.force, "agent removed from the registry");
                Ok(pb::RemoveNodeResponse {})
            },
            async |ch, r| RegistryClient::new(ch).remove_node(r).await,
        )
        .await
    }

    type WatchStream = BoxStream<pb::RegistryEvent>;

    async fn watch(&self, req: Request<pb::WatchRegistryRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let slot = self.node.streams.acquire(StreamKind::Watch, authz::caller(&req))?;
        let r = req.into_inner();
        let mut rx = self.node.registry_events.subscribe();
        let (tx, out) = mpsc::channel(256);
        let mut next = r.start_index;
        let mut initial = Vec::new();
        if next == 0 {
            (next, initial) = self
                .node
                .view(|v| (v.registry().last_event_index() + 1, v.registry().nodes.values().cloned().collect()));
        }
        // Checked now, so a bad start index fails the call rather than the stream.
        let mut batch = self.events_from(next)?;
        let svc = RegistryService::new(self.node.clone());
        tokio::spawn(async move {
            let _slot = slot;
            for n in initial {
                let e = pb::RegistryEvent {
                    node_id: n.node_id,
                    kind: "initial".into(),
                    node: Some(svc.node_info(&n, false, &svc.node.masters())),
                    ..Default::default()
                };
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            loop {
                let full = batch.len() == WATCH_BATCH;
                for e in &batch {
                    if tx.send(Ok(svc.event_pb(e))).await.is_err() {
                        return;
                    }
                    next = e.index + 1;
                }
                if !full && !r.follow {
                    return;
                }
                if !full {
                    tokio::select! {
                        changed = rx.changed() => if changed.is_err() { return },
                        _ = tx.closed() => return,
                    }
                }
                batch = match svc.events_from(next) {
                    Ok(b) => b,
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(channel_stream(out)))
    }
}
