//! Cluster administration: join, leave, members, status and tokens.

use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::ServerState;
use proto::clusterpb as pb;
use proto::clusterpb::cluster_admin_client::ClusterAdminClient;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use super::{authz, channel_stream, leader_view, on_leader, unexpected, BoxStream};
use crate::command::{Command, Output};
use crate::error::CoordError;
use crate::node::CoordNode;
use crate::read::Consistency;
use crate::token::{format_token, parse_token};
use crate::types::NodeInfo;

pub struct Admin {
    node: Arc<CoordNode>,
}

impl Admin {
    pub fn new(node: Arc<CoordNode>) -> Self {
        Admin { node }
    }
}

/// The members with replication progress (known on the leader only).
fn members(node: &CoordNode) -> pb::MembersResponse {
    let m = node.metrics();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let last = m.last_log_index.unwrap_or(0);
    let leader = m.current_leader.unwrap_or(0);
    let members = membership
        .nodes()
        .map(|(id, n)| {
            let matched = match (&m.replication, *id == node.id) {
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

/// Tells a removed member directly, best effort and in the background: the leader stops
/// replicating to it, so it may never receive the configuration that excludes it. A
/// removed node that is down now is not told, and finds that no one replicates to it.
fn tell_removed(node: &CoordNode, node_id: u64, addr: &str) {
    let req = pb::RemovedRequest { node_id, cluster_id: node.cluster_id() };
    let ch = node.channel(addr);
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

#[tonic::async_trait]
impl pb::cluster_admin_server::ClusterAdmin for Admin {
    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let r = req.get_ref();
        let token = parse_token(&r.token).map_err(Status::invalid_argument)?;
        let (cluster, ca) = self.node.view(|v| (v.cluster().clone(), v.ca().cloned()));
        let (true, Some(ca)) = (cluster.is_initialized(), ca) else {
            return Err(Status::unavailable("the cluster has not recorded its identity yet; retry in a moment"));
        };
        if token.digest != ca.digest() {
            return Err(Status::permission_denied("token is for a different cluster (or from before a CA rotation)"));
        }
        let role = if pki::secret_eq(&token.secret, &cluster.manager_secret) {
            JoinRole::Manager
        } else if pki::secret_eq(&token.secret, &cluster.worker_secret) {
            JoinRole::Worker
        } else {
            return Err(Status::permission_denied("invalid join token: secret does not match (was it rotated?)"));
        };
        let addr: std::net::SocketAddr = r.advertise_addr.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "advertise address {:?} is not host:port with an IP address",
                r.advertise_addr
            ))
        })?;
        // Checked before an id is allocated: a refused join burns no node id.
        pki::cert::check_csr(&r.csr).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| {
                node.ensure_leader().await?;
                let m = node.metrics();
                if let Some((id, _)) =
                    m.membership_config.membership().nodes().find(|(_, n)| n.addr == r.advertise_addr)
                {
                    return Err(CoordError::AlreadyExists(format!(
                        "{} is already member {id} of this cluster; restart that node with `cluster start --data-dir …`, \
                         or if its data dir is gone, remove it first with `cluster leave {id}`",
                        r.advertise_addr
                    ))
                    .into());
                }
                let id = match node.write(Command::AllocNodeId { addr: r.advertise_addr.clone() }).await?.output {
                    Output::NodeId(id) => id,
                    o => return Err(unexpected(o)),
                };
                // Signed with the CA as this (the leader's) state holds it now.
                let cert_role = if role == JoinRole::Manager { pki::CertRole::Manager } else { pki::CertRole::Worker };
                let signed =
                    node.sign_node_cert(&cluster.cluster_id, id, cert_role, &[addr.ip().to_string()], &r.csr)?;
                if role == JoinRole::Manager {
                    let name = if r.name.is_empty() { format!("node-{id}") } else { r.name.clone() };
                    let info = NodeInfo { addr: r.advertise_addr.clone(), name };
                    node.add_learner(id, info).await?;
                }
                info!(id, role = role.as_str(), addr = %r.advertise_addr, "node joined");
                Ok(pb::JoinResponse {
                    node_id: id,
                    cluster_id: cluster.cluster_id.clone(),
                    role: role.as_str().into(),
                    members: members(node).members,
                    cert: signed.cert,
                    chain: signed.chain,
                    trusted: signed.trusted,
                    ca_record_digest: signed.record_digest,
                })
            },
            async |ch, r| ClusterAdminClient::new(ch).join(r).await,
        )
        .await
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn leave(&self, req: Request<pb::LeaveRequest>) -> Result<Response<pb::LeaveResponse>, Status> {
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| {
                node.ensure_leader().await?;
                let addr = node.metrics().membership_config.membership().get_node(&r.node_id).map(|n| n.addr.clone());
                node.remove_member(r.node_id).await?;
                info!(removed = r.node_id, "member left");
                // From now on its certificate is not honored. Recorded after the change
                // committed: a leader that leaves can still replicate its removal.
                if let Err(e) = node.write(Command::RetireMaster { node_id: r.node_id }).await {
                    tracing::warn!(node = r.node_id, "recording the departure failed ({e}); run `cluster leave` again");
                }
                if let Some(addr) = addr.filter(|_| r.node_id != node.id) {
                    tell_removed(node, r.node_id, &addr);
                }
                Ok(pb::LeaveResponse {})
            },
            async |ch, r| ClusterAdminClient::new(ch).leave(r).await,
        )
        .await
    }

    async fn removed(&self, req: Request<pb::RemovedRequest>) -> Result<Response<pb::RemovedResponse>, Status> {
        // Only a master that is still a member (as this node knows the membership) may
        // say so: the leader that removed this node, whose id this node may not know as
        // leader if it was cut off.
        let from = authz::caller(&req).and_then(|w| w.node_id);
        if !from.is_some_and(|id| id != self.node.id && self.node.is_member(id)) {
            return Err(Status::permission_denied(format!(
                "only another member may tell this node it was removed; this call came from node {}",
                from.map_or_else(|| "unknown".to_string(), |l| l.to_string()),
            )));
        }
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
        let node = &self.node;
        leader_view(node, req, |_| Ok(members(node)), async |ch, r| ClusterAdminClient::new(ch).members(r).await).await
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let m = self.node.metrics();
        let (leader_id, leader_addr) = self.node.leader();
        let (cluster_id, revision, compact) =
            self.node.view(|v| (v.cluster().cluster_id.clone(), v.revision(), v.compact_revision()));
        let voter = m.membership_config.membership().voter_ids().any(|v| v == self.node.id);
        let own = self.node.tls.identity();
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
            members: members(&self.node).members,
            from_leader: m.state == ServerState::Leader,
            pid: std::process::id(),
            cert_issuer: own.as_ref().map(|i| i.issuer.clone()).unwrap_or_default(),
            cert_not_after: own.map(|i| i.not_after_unix).unwrap_or_default(),
        }))
    }

    type SaveSnapshotStream = BoxStream<pb::SnapshotBytes>;

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn save_snapshot(
        &self,
        req: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        let node = &self.node;
        on_leader(
            node,
            req,
            async |_| {
                // Every write acknowledged before this call is applied here first.
                node.read(Consistency::Linearizable, |_| ()).await?;
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                let n = node.clone();
                tokio::task::spawn_blocking(move || {
                    let out = ChunkSender { tx: tx.clone(), buf: Vec::with_capacity(SNAPSHOT_CHUNK_BYTES) };
                    match n.export_snapshot(out) {
                        Ok(summary) => {
                            info!(
                                records = summary.records,
                                bytes = summary.file_bytes,
                                "snapshot streamed to a client"
                            )
                        }
                        Err(e) => {
                            let _ = tx.blocking_send(Err(Status::internal(format!("snapshot failed: {e}"))));
                        }
                    }
                });
                Ok(channel_stream(rx))
            },
            async |ch, r| {
                let s = ClusterAdminClient::new(ch).save_snapshot(r).await?.into_inner();
                Ok(Response::new(Box::pin(s) as BoxStream<pb::SnapshotBytes>))
            },
        )
        .await
    }

    async fn token(&self, req: Request<pb::TokenRequest>) -> Result<Response<pb::TokenResponse>, Status> {
        Ok(Response::new(pb::TokenResponse { token: token_of(&self.node, &req.into_inner().role)? }))
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn renew_cert(&self, req: Request<pb::RenewCertRequest>) -> Result<Response<pb::CertResponse>, Status> {
        let who = authz::caller(&req).cloned().ok_or_else(|| Status::unauthenticated("no certificate to renew"))?;
        // Signed on the leader, from a state that has every committed CA change: a
        // lagging follower would sign with a CA that may be on its way out. A follower
        // answers "not the leader" with the leader's address; the node asks there.
        self.node.read(Consistency::Linearizable, |_| ()).await?;
        let i = self.node.renew_node_cert(&who, &req.get_ref().csr)?;
        info!(renewed = who.name, role = %who.role, "node certificate renewed");
        Ok(Response::new(i.into()))
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn issue_cert(&self, req: Request<pb::IssueCertRequest>) -> Result<Response<pb::CertResponse>, Status> {
        let r = req.get_ref();
        let role = match r.role.as_str() {
            "admin" => pki::CertRole::Admin,
            "reader" => pki::CertRole::Reader,
            other => {
                return Err(Status::invalid_argument(format!(
                    "cannot issue a {other:?} certificate: use admin or reader"
                )))
            }
        };
        let validity = match r.validity_secs {
            0 => crate::certs::CLIENT_CERT_VALIDITY,
            s => std::time::Duration::from_secs(s),
        };
        let by = authz::caller(&req).map(|w| w.name.clone()).unwrap_or_default();
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| {
                // On the leader, from a state with every committed CA change.
                node.read(Consistency::Linearizable, |_| ()).await?;
                let i = node.issue_client_cert(role, &r.name, &r.csr, validity)?;
                info!(user = r.name, role = r.role, by, "client certificate issued");
                Ok(i.into())
            },
            async |ch, r| ClusterAdminClient::new(ch).issue_cert(r).await,
        )
        .await
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn rotate_token(&self, req: Request<pb::TokenRequest>) -> Result<Response<pb::TokenResponse>, Status> {
        // The role is checked before anything is written.
        token_of(&self.node, &req.get_ref().role)?;
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| {
                node.ensure_leader().await?;
                node.rotate_join_secret(&r.role, new_secret()).await?;
                info!(role = r.role, "join token rotated");
                Ok(pb::TokenResponse { token: token_of(node, &r.role)? })
            },
            async |ch, r| ClusterAdminClient::new(ch).rotate_token(r).await,
        )
        .await
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn renew_lease(
        &self,
        req: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        super::lease::renew(&self.node, req).await
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn issue_http_token(
        &self,
        req: Request<pb::IssueHttpTokenRequest>,
    ) -> Result<Response<pb::IssueHttpTokenResponse>, Status> {
        let r = req.get_ref();
        if r.role != "admin" && r.role != "reader" {
            return Err(Status::invalid_argument(format!("role {:?}: use admin or reader", r.role)));
        }
        if r.name.len() > 256 {
            return Err(Status::invalid_argument("name: at most 256 bytes"));
        }
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| {
                let (id, token, hash) = crate::http_token::draw();
                let t = crate::cluster::HttpToken {
                    id: id.clone(),
                    hash,
                    role: r.role.clone(),
                    name: r.name.clone(),
                    created_ms: 0,
                };
                node.write(Command::HttpToken(crate::cluster::HttpTokenCommand::Issue(t))).await?;
                info!(id, role = r.role, "HTTP token issued");
                Ok(pb::IssueHttpTokenResponse { id, token })
            },
            async |ch, r| ClusterAdminClient::new(ch).issue_http_token(r).await,
        )
        .await
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn revoke_http_token(
        &self,
        req: Request<pb::RevokeHttpTokenRequest>,
    ) -> Result<Response<pb::RevokeHttpTokenResponse>, Status> {
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| {
                node.write(Command::HttpToken(crate::cluster::HttpTokenCommand::Revoke { id: r.id.clone() })).await?;
                info!(id = r.id, "HTTP token revoked");
                Ok(pb::RevokeHttpTokenResponse {})
            },
            async |ch, r| ClusterAdminClient::new(ch).revoke_http_token(r).await,
        )
        .await
    }

    async fn list_http_tokens(
        &self,
        _: Request<pb::ListHttpTokensRequest>,
    ) -> Result<Response<pb::ListHttpTokensResponse>, Status> {
        let tokens = self.node.view(|v| {
            v.http_tokens()
                .values()
                .map(|t| pb::HttpTokenInfo {
                    id: t.id.clone(),
                    role: t.role.clone(),
                    name: t.name.clone(),
                    created_ms: t.created_ms,
                })
                .collect()
        });
        Ok(Response::new(pb::ListHttpTokensResponse { tokens }))
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn rotate_ca(&self, req: Request<pb::RotateCaRequest>) -> Result<Response<pb::RotateCaResponse>, Status> {
        let phase = req.get_ref().phase.clone();
        if phase != "start" && phase != "finish" {
            return Err(Status::invalid_argument(format!("unknown rotation phase {phase:?}: use start or finish")));
        }
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| {
                node.ensure_leader().await?;
                let record = match r.phase.as_str() {
                    "start" => node.start_ca_rotation().await?,
                    _ => {
                        if !r.force {
                            let behind = not_renewed(node).await;
                            if !behind.is_empty() {
                                return Err(Status::failed_precondition(format!(
                                    "not every node presents a certificate of the new CA yet ({}); finishing now \
                                     would cut them off. Wait (`cluster ca rotate` does), or force it",
                                    behind.join(", ")
                                )));
                            }
                        }
                        node.finish_ca_rotation().await?
                    }
                };
                let ca = pki::cert::Ca::from_der(record.cert.clone(), &record.key)
                    .map_err(|e| Status::internal(format!("the recorded CA is unusable: {e}")))?;
                info!(phase = r.phase, ca = ca.name(), "CA rotation step committed");
                Ok(pb::RotateCaResponse {
                    ca_name: ca.name(),
                    ca_digest: ca.digest(),
                    rotating: record.trusted.len() > 1,
                })
            },
            async |ch, r| ClusterAdminClient::new(ch).rotate_ca(r).await,
        )
        .await
    }
}

/// On the leader: the masters and live agents whose certificate does not come from the
/// signing CA. Masters are asked (1 s each; one that does not answer counts as behind);
/// agents as their heartbeat sessions showed them. Down agents are not counted: they
/// join again after a rotation.
async fn not_renewed(node: &CoordNode) -> Vec<String> {
    let Some(ca) = node.view(|v| v.ca().and_then(|c| pki::cert::common_name(&c.cert))) else {
        return vec!["the CA record".into()];
    };
    let mut behind = Vec::new();
    let members: Vec<(u64, String)> =
        node.metrics().membership_config.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
    for (id, addr) in &members {
        let issuer = if *id == node.id {
            node.tls.identity().map(|i| i.issuer)
        } else {
            let ask = async {
                let ch = node.channel(addr).ok()?;
                ClusterAdminClient::new(ch).status(pb::StatusRequest {}).await.ok().map(|r| r.into_inner().cert_issuer)
            };
            tokio::time::timeout(std::time::Duration::from_secs(1), ask).await.ok().flatten()
        };
        if issuer.as_deref() != Some(ca.as_str()) {
            behind.push(format!("master {id}"));
        }
    }
    let agents: Vec<u64> = node.view(|v| {
        v.registry()
            .nodes
            .values()
            .filter(|n| n.state != crate::registry::NodeState::Down && !members.iter().any(|(id, _)| *id == n.node_id))
            .map(|n| n.node_id)
            .collect()
    });
    let sessions = node.session_certs.lock().expect("session certs").clone();
    for id in agents {
        if sessions.get(&id).map(|(issuer, _)| issuer.as_str()) != Some(ca.as_str()) {
            behind.push(format!("agent {id}"));
        }
    }
    behind
}

/// The join token for `role` as the state holds it now.
fn token_of(node: &CoordNode, role: &str) -> Result<String, Status> {
    let (c, ca) = node.view(|v| (v.cluster().clone(), v.ca().cloned()));
    let (true, Some(ca)) = (c.is_initialized(), ca) else {
        return Err(Status::unavailable("the cluster has not recorded its identity yet; retry in a moment"));
    };
    let secret = match role {
        "manager" => c.manager_secret,
        "worker" => c.worker_secret,
        other => return Err(Status::invalid_argument(format!("unknown token role {other:?}: use manager or worker"))),
    };
    Ok(format_token(&ca.digest(), &secret))
}

impl From<crate::certs::Issued> for pb::CertResponse {
    fn from(i: crate::certs::Issued) -> pb::CertResponse {
        pb::CertResponse { cert: i.cert, chain: i.chain, trusted: i.trusted, ca_record_digest: i.record_digest }
    }
}

/// A new join secret, drawn by the leader and carried in the log entry.
fn new_secret() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 26)
}

/// What a join token lets the joiner become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JoinRole {
    /// A master: a Raft learner, promoted to voter once caught up.
    Manager,
    /// An agent only.
    Worker,
}

impl JoinRole {
    fn as_str(self) -> &'static str {
        match self {
            JoinRole::Manager => "manager",
            JoinRole::Worker => "worker",
        }
    }
}

const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Blocking writer that sends what is written as 1 MiB messages of a server stream; the
/// bounded channel holds the exporter back while the client is slow.
struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<Result<pb::SnapshotBytes, Status>>,
    buf: Vec<u8>,
}

impl ChunkSender {
    fn send(&mut self) -> std::io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(SNAPSHOT_CHUNK_BYTES));
        self.tx
            .blocking_send(Ok(pb::SnapshotBytes { data }))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl std::io::Write for ChunkSender {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = b.len().min(SNAPSHOT_CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() == SNAPSHOT_CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}
