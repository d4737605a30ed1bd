//! Cluster administration: join, leave, members, status and tokens.

use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::ServerState;
use proto::clusterpb as pb;
use proto::clusterpb::cluster_admin_client::ClusterAdminClient;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use super::{forwarded_request, is_forwarded};
use crate::command::{Command, Output};
use crate::error::CoordError;
use crate::node::CoordNode;
use crate::token::{cluster_digest, format_token, parse_token};
use crate::types::NodeInfo;

pub struct Admin {
    node: Arc<CoordNode>,
}

impl Admin {
    pub fn new(node: Arc<CoordNode>) -> Self {
        Admin { node }
    }

    /// The leader's admin client when this node is not the leader and may forward.
    fn forward_target(&self, forwarded: bool) -> Result<Option<ClusterAdminClient<Channel>>, Status> {
        Ok(self.node.forward_channel(forwarded)?.map(ClusterAdminClient::new))
    }

    fn members(&self) -> pb::MembersResponse {
        let m = self.node.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let last = m.last_log_index.unwrap_or(0);
        let leader = m.current_leader.unwrap_or(0);
        let members = membership
            .nodes()
            .map(|(id, n)| {
                let matched = match (&m.replication, *id == self.node.id) {
                    (_, true) => m.last_log_index,
                    (Some(r), false) => r.get(id).cloned().flatten().map(|l| l.index).or(Some(0)),
                    (None, false) => None,
                };
                pb::Member {
                    node_id: *id,
                    name: n.name.clone(),
                    addr: n.addr.clone(),
                    role: if voters.contains(id) { "voter" } else { "learner" }.into(),
                    is_leader: *id == leader,
                    matched_index: matched,
                    lag: if m.state == ServerState::Leader { matched.map(|x| last.saturating_sub(x)) } else { None },
                }
            })
            .collect();
        pb::MembersResponse { leader_id: leader, members }
    }
}

#[tonic::async_trait]
impl pb::cluster_admin_server::ClusterAdmin for Admin {
    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let forwarded = is_forwarded(&req);
        let r = req.into_inner();
        let token = parse_token(&r.token).map_err(Status::invalid_argument)?;
        let cluster = self.node.cluster();
        if cluster.cluster_id.is_empty() {
            return Err(Status::unavailable("the cluster has not recorded its identity yet; retry in a moment"));
        }
        if token.digest != cluster_digest(&cluster.cluster_id) {
            return Err(Status::permission_denied("token is for a different cluster"));
        }
        let role = if token.secret == cluster.manager_secret {
            "manager"
        } else if token.secret == cluster.worker_secret {
            "worker"
        } else {
            return Err(Status::permission_denied("invalid join token: secret does not match (was it rotated?)"));
        };
        if r.advertise_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "advertise address {:?} is not host:port with an IP address",
                r.advertise_addr
            )));
        }
        if let Some(mut c) = self.forward_target(forwarded)? {
            return c.join(forwarded_request(r)).await;
        }
        let m = self.node.metrics();
        if let Some((id, _)) = m.membership_config.membership().nodes().find(|(_, n)| n.addr == r.advertise_addr) {
            return Err(CoordError::AlreadyExists(format!(
                "{} is already member {id} of this cluster; restart that node with `cluster start --data-dir …`, \
                 or if its data dir is gone, remove it first with `cluster leave {id}`",
                r.advertise_addr
            ))
            .into());
        }
        let resp = self.node.write(Command::AllocNodeId { addr: r.advertise_addr.clone() }).await?;
        let Ok(Output::NodeId(id)) = resp.result else {
            return Err(Status::internal(format!("unexpected answer to node id allocation: {:?}", resp.result)));
        };
        if role == "manager" {
            let name = if r.name.is_empty() { format!("node-{id}") } else { r.name.clone() };
            let info = NodeInfo { addr: r.advertise_addr.clone(), name };
            self.node.add_learner(id, info).await?;
        }
        info!(id, role, addr = %r.advertise_addr, "node joined");
        Ok(Response::new(pb::JoinResponse {
            node_id: id,
            cluster_id: cluster.cluster_id,
            role: role.into(),
            members: self.members().members,
        }))
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn leave(&self, req: Request<pb::LeaveRequest>) -> Result<Response<pb::LeaveResponse>, Status> {
        let forwarded = is_forwarded(&req);
        let r = req.into_inner();
        if let Some(mut c) = self.forward_target(forwarded)? {
            return c.leave(forwarded_request(r)).await;
        }
        let addr = self.node.metrics().membership_config.membership().get_node(&r.node_id).map(|n| n.addr.clone());
        self.node.remove_member(r.node_id).await?;
        info!(removed = r.node_id, "member left");
        // Best effort, in the background: a removed node that is down now is not told, and
        // simply finds that no one replicates to it any more.
        if let Some(addr) = addr.filter(|_| r.node_id != self.node.id) {
            let req = pb::RemovedRequest { node_id: r.node_id, cluster_id: self.node.cluster_id() };
            let ch = self.node.channel(&addr);
            tokio::spawn(async move {
                let Ok(ch) = ch else { return };
                for _ in 0..5 {
                    let mut client = ClusterAdminClient::new(ch.clone());
                    let call = client.removed(req.clone());
                    if let Ok(Ok(_)) = tokio::time::timeout(std::time::Duration::from_secs(1), call).await {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                tracing::warn!(node = req.node_id, "could not tell the removed node; it stays up until stopped");
            });
        }
        Ok(Response::new(pb::LeaveResponse {}))
    }

    async fn removed(&self, req: Request<pb::RemovedRequest>) -> Result<Response<pb::RemovedResponse>, Status> {
        let r = req.into_inner();
        let cluster_id = self.node.cluster_id();
        if r.node_id != self.node.id || r.cluster_id != cluster_id {
            return Err(Status::failed_precondition(format!(
                "this is node {} of cluster {cluster_id}, not node {} of cluster {}",
                self.node.id, r.node_id, r.cluster_id
            )));
        }
        info!("told by the leader that this node was removed from the cluster");
        self.node.mark_removed();
        Ok(Response::new(pb::RemovedResponse {}))
    }

    async fn members(&self, req: Request<pb::MembersRequest>) -> Result<Response<pb::MembersResponse>, Status> {
        let forwarded = is_forwarded(&req);
        // The leader knows replication progress; ask it when it can be reached.
        if let Ok(Some(mut c)) = self.forward_target(forwarded) {
            if let Ok(r) = c.members(forwarded_request(pb::MembersRequest {})).await {
                return Ok(r);
            }
        }
        Ok(Response::new(self.members()))
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let m = self.node.metrics();
        let (leader_id, leader_addr) = self.node.leader();
        let (cluster_id, revision, compact) = {
            let st = self.node.state.read().expect("sm lock");
            (st.cluster.cluster_id.clone(), st.kv.revision, st.kv.compact_revision)
        };
        let voter = m.membership_config.membership().voter_ids().any(|v| v == self.node.id);
        let state = match m.state {
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Follower if voter => "follower",
            ServerState::Follower | ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        Ok(Response::new(pb::StatusResponse {
            node_id: self.node.id,
            cluster_id,
            state: state.into(),
            leader_id,
            leader_addr: leader_addr.unwrap_or_default(),
            term: m.current_term,
            last_log_index: m.last_log_index,
            commit_index: m.local_committed.map(|l| l.index),
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            revision,
            compact_revision: compact,
            members: self.members().members,
            from_leader: m.state == ServerState::Leader,
            pid: std::process::id(),
        }))
    }

    async fn token(&self, req: Request<pb::TokenRequest>) -> Result<Response<pb::TokenResponse>, Status> {
        let role = req.into_inner().role;
        let c = self.node.cluster();
        if c.cluster_id.is_empty() {
            return Err(Status::unavailable("the cluster has not recorded its identity yet; retry in a moment"));
        }
        let secret = match role.as_str() {
            "manager" => c.manager_secret,
            "worker" => c.worker_secret,
            other => {
                return Err(Status::invalid_argument(format!("unknown token role {other:?}: use manager or worker")))
            }
        };
        Ok(Response::new(pb::TokenResponse { token: format_token(&c.cluster_id, &secret) }))
    }
}
